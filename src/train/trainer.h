// The training loop: AdamW with warm-up + cosine decay, global-norm clipping,
// gradient accumulation, periodic evaluation and atomic checkpoints.
//
// Non-finite values: when a step's loss or gradient norm is NaN or infinite,
// the update is skipped (parameters and optimizer state stay as they were),
// the batch counts as consumed, a warning is printed and logged. After
// max_nonfinite consecutive skipped steps the run stops with an error; the
// last checkpoint written is the last good state, and no checkpoint of a
// broken state is ever written.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "model/config.h"
#include "train/train_config.h"

namespace lsgpt {

struct TrainOptions {
  ModelConfig model;      // a new run's model; with resume or init_from the checkpoint's is used
  TrainConfig train;
  std::string resume;     // checkpoint to continue (model, optimizer, step, data position)
  // With resume: the training settings the user gave explicitly (TrainConfig
  // JSON keys). They override the checkpoint's, except that settings defining
  // the loss sequence (TrainConfig::schedule_json) may not change, and data
  // files given again must hold the recorded data (train/run_setup.h).
  nlohmann::json explicit_train = nlohmann::json::object();
  // With resume or init_from: the model settings the user gave explicitly
  // (ModelConfig JSON keys, e.g. {"window": 64}). Resume refuses any change;
  // init_from applies changes that keep the weights' shape.
  nlohmann::json explicit_model = nlohmann::json::object();
  std::string init_from;  // checkpoint whose weights start a new run
  bool quiet = false;     // no progress lines (metrics are still written)
  // Start in an out_dir that already holds a run (its checkpoint.ckpt or
  // metrics.jsonl), replacing it; without it that is refused
  // (refuse_replacing_a_run in train/run_setup.h).
  bool overwrite = false;
};

struct TrainResult {
  long steps = 0;  // optimizer steps done, including resumed ones
  long skipped = 0;
  double last_loss = 0;
  double val_loss = 0, val_perplexity = 0;
  double seconds = 0;
  double tokens_per_second = 0;
  std::string checkpoint;
  std::string metrics;
  bool stopped_early = false;  // by --max-time or --stop-at
};

TrainResult train_model(const TrainOptions& options);

}  // namespace lsgpt
