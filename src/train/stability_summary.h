// Per-run stability statistics for `lsgpt report --summary`: what a stability
// study (attention kind, stabilisers, learning-rate sweep, several seeds)
// tabulates, computed from a run's metrics.jsonl and config.json.
//
// Definitions (the constants are SpikeOptions/StabilityOptions fields; the
// defaults below are the study's):
//  - Spike step: a recorded training step t with a finite loss is a spike
//    step when at least `min_finite` (20) of the previous `window` (50)
//    recorded steps have finite losses and loss_t - m > max(`min_excess`
//    (0.3 nats), `mad_factor` (6) * 1.4826 * MAD), with m and MAD the median
//    and median absolute deviation of those previous finite losses (1.4826 *
//    MAD estimates a normal standard deviation). A non-finite (skipped) step
//    is also a spike step. Spike steps fewer than `merge_gap` (10) steps
//    after the previous spike step belong to its event; an event is reported
//    by its first step and its largest excess loss_t - m.
//  - Diverged: the run ended on non-finite values (its last training record
//    is skipped and there is no final evaluation), or the final validation
//    loss is non-finite, or it exceeds the best earlier validation loss by
//    more than `divergence_margin` (1.0 nat).
//  - Incomplete: no final evaluation and not diverged (killed or stopped).
//  - Throughput: the median tokens/s over recorded steps after the first
//    `speed_skip` (10) records (all of them when there are no more).
//  - Time to target: the first intermediate evaluation with val_loss <=
//    target: its step and train_seconds (cumulative time in optimizer
//    steps). The final evaluation counts only in a run without intermediate
//    ones: it usually reads the whole validation file, the intermediate ones
//    the same first batches each time, and the two losses differ.
//  - Setting group: runs whose config.json is equal once train.seed,
//    train.out_dir and every path-like field (keys ending in _data, _dir,
//    _path or _file, and string values holding a '/') are removed.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "train/run_metrics.h"

namespace lsgpt {

struct SpikeOptions {
  int window = 50;
  int min_finite = 20;
  double min_excess = 0.3;  // nats
  double mad_factor = 6.0;
  long merge_gap = 10;      // steps
};

struct StabilityOptions {
  SpikeOptions spikes;
  double divergence_margin = 1.0;  // nats over the best earlier validation loss
  size_t speed_skip = 10;          // records left out of the throughput median
  std::optional<double> target_loss;
};

struct SpikeEvent {
  long step = 0;       // first spike step of the event
  long spike_steps = 0;
  long nonfinite_steps = 0;
  double max_excess = 0;  // NaN when every step of the event is non-finite
};

struct RunStability {
  std::string name, dir;  // name: the directory's basename
  // Settings from config.json ("?" / NaN where unknown).
  std::string attention, stabilisers;
  double lr = 0, seed = 0;
  long steps = 0;       // train.steps from config.json; else the last recorded step
  long last_step = 0;   // the last recorded training step
  double final_val_loss = 0, final_val_ppl = 0;  // NaN without a final evaluation
  std::vector<SpikeEvent> spikes;
  double max_spike_excess = 0;  // NaN when there is no finite spike step
  bool diverged = false, incomplete = false;
  std::string diverged_reason;  // empty unless diverged
  std::vector<double> max_logit_per_layer;  // max over steps and heads; NaN if none finite
  double peak_max_logit = 0;  // NaN if none finite
  long peak_max_logit_step = 0;
  double median_tokens_per_s = 0;  // NaN if none recorded
  bool target_reached = false;
  long target_step = 0;
  double target_seconds = 0;  // NaN when reached by a record without train_seconds
  nlohmann::json group_config;  // config.json less seed and paths (null if unknown)
};

struct StabilityGroup {
  std::string attention, stabilisers;
  double lr = 0;
  std::vector<size_t> runs;  // indices into the run list
  double mean_final_val_loss = 0, min_final_val_loss = 0, max_final_val_loss = 0;  // finite ones
  long spike_events = 0;
  long diverged = 0;
};

// Spike steps of a loss sequence, merged into events (indices are records).
std::vector<SpikeEvent> find_spikes(const std::vector<TrainRecord>& train, const SpikeOptions& o);

RunStability summarise_run(const RunMetrics& run, const StabilityOptions& o);

// Groups in order of first appearance; runs without settings form their own group.
std::vector<StabilityGroup> group_runs(const std::vector<RunStability>& runs);

// One paragraph stating the definitions with the constants in use.
std::string stability_definitions(const StabilityOptions& o);

std::string summary_markdown(const std::vector<RunStability>& runs,
                             const std::vector<StabilityGroup>& groups,
                             const StabilityOptions& o);

nlohmann::json summary_json(const std::vector<RunStability>& runs,
                            const std::vector<StabilityGroup>& groups,
                            const StabilityOptions& o);

}  // namespace lsgpt
