// Training settings: everything about a run that is not the model's shape.
// Stored in checkpoints so --resume continues with exactly the same schedule.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace lsgpt {

// What a token file holds, independent of the path that reaches it: its token
// count and TokenFile::fnv1a64(). tokens == 0: not recorded (checkpoints
// written before lsgpt recorded it).
struct DataIdentity {
  uint64_t tokens = 0;
  uint64_t fnv1a64 = 0;
  bool known() const { return tokens > 0; }
  bool operator==(const DataIdentity&) const = default;
  std::string to_string() const;  // "2400000 tokens, FNV-1a 64 0123456789abcdef"
};

struct TrainConfig {
  std::string device = "cpu";
  std::string train_data;  // token files made by `lsgpt prepare`; absolute once a run starts
  std::string valid_data;
  DataIdentity train_id, valid_id;  // filled in when a run starts
  std::string out_dir = "runs/default";
  int batch_size = 8;
  int seq_len = 0;  // 0: the model's context length
  int grad_accum = 1;
  long steps = 1000;
  double lr = 1e-3;
  double min_lr_ratio = 0.1;  // cosine decays to lr * min_lr_ratio
  long warmup = 50;
  double weight_decay = 0.1;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double clip = 1.0;  // global-norm clipping; 0 disables
  // AdaGC per-tensor adaptive clipping (train/adagc.h), replacing `clip` when on.
  bool adagc = false;
  long adagc_warmup = 100;
  double adagc_lambda_abs = 1.0, adagc_lambda_rel = 1.05, adagc_beta = 0.98;
  long eval_every = 100;
  long eval_batches = 20;  // during training
  long final_eval_batches = 0;  // the evaluation at the end; 0: the whole validation file
  long checkpoint_every = 250;
  long log_every = 10;
  uint64_t seed = 1337;
  // Where training windows start (data/batch_sampler.h): "uniform" over the
  // file, or "documents": inside one document where it is long enough.
  std::string sampler = "uniform";
  double max_time = 0;  // seconds; 0: no limit. Stops cleanly, with a checkpoint.
  long stop_at = 0;     // stop after this many steps (keeping the schedule of `steps`); 0: off
  int max_nonfinite = 3;  // consecutive skipped steps before the run is stopped
  std::string fault;      // testing only: "nan-grad@STEP" or "nan-param@STEP"

  void validate() const;
  nlohmann::json to_json() const;
  static TrainConfig from_json(const nlohmann::json& j);
  // Settings that define the loss sequence; a resumed run must not change them.
  nlohmann::json schedule_json() const;
};

// Linear warm-up from lr/warmup to lr over `warmup` steps, then cosine decay
// to lr * min_lr_ratio at `steps`. `step` is 0-based.
double learning_rate(const TrainConfig& c, long step);

}  // namespace lsgpt
