// A training run's recorded history, read back from its directory
// (metrics.jsonl and config.json as the trainer writes them; the settings in
// checkpoint.ckpt where config.json is missing) for reports.
// Reading is forgiving where the trainer's own files can be damaged (a run
// killed mid-write, a disk that filled up, hand edits): such problems become
// notes and the rest is kept. A missing directory or metrics file is an error.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace lsgpt {

struct TrainRecord {
  long step = 0;
  double loss = 0, lr = 0, grad_norm = 0;  // NaN where the record has null or nothing
  double tokens_per_s = 0;                 // NaN where missing
  double train_seconds = 0;                // cumulative optimizer-step time; NaN in older runs
  bool skipped = false;                    // the trainer skipped the update (non-finite)
  std::vector<std::vector<double>> max_logit;  // [layer][head]; NaN for null
};

struct EvalRecord {
  long step = 0;
  double val_loss = 0;
  double val_ppl = 0;        // NaN where missing
  double train_seconds = 0;  // NaN where missing (older runs)
  bool final = false;        // the end-of-run evaluation
};

struct RunMetrics {
  std::string dir;
  std::vector<TrainRecord> train;
  std::vector<EvalRecord> eval;
  // config.json, else the settings in checkpoint.ckpt; null when neither reads.
  nlohmann::json config;
  std::vector<std::string> notes;
  int n_layer = 0;  // the most layers any record has
  int n_head = 0;   // the most heads any layer has
};

RunMetrics read_run_metrics(const std::string& dir);

}  // namespace lsgpt
