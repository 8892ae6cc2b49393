#include "train/trainer.h"

#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "core/stop_signals.h"
#include "data/batch_sampler.h"
#include "data/token_file.h"
#include "dist/communicator.h"
#include "dist/data_parallel.h"
#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "io/standard_output.h"
#include "model/gpt.h"
#include "ops/backend.h"
#include "train/adagc.h"
#include "train/evaluate.h"
#include "train/plot.h"
#include "train/progress.h"
#include "train/run_setup.h"

namespace lsgpt {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// "nan-grad@12" -> {kind, step}; the fault fires before the update of that
// (1-based) step. Only for testing the non-finite handling, (error@STEP
// or error@STEP:RANK: an error on one rank, rank 0 by default) the way one
// rank's failure stops a data-parallel run, and (signal@STEP[:RANK]: a
// SIGTERM raised in one rank as that step starts) the stop on a signal.
struct Fault {
  std::string kind;
  long step = -1;
  int rank = 0;
};

Fault parse_fault(const std::string& s) {
  Fault f;
  if (s.empty()) return f;
  const auto at = s.find('@');
  if (at == std::string::npos)
    fail("--fault must look like nan-grad@STEP, nan-param@STEP, error@STEP[:RANK] or "
         "signal@STEP[:RANK]");
  f.kind = s.substr(0, at);
  if (f.kind != "nan-grad" && f.kind != "nan-param" && f.kind != "error" && f.kind != "signal")
    fail("--fault kind must be nan-grad, nan-param, error or signal, got '", f.kind, "'");
  const auto colon = s.find(':', at);
  try {
    size_t used = 0;
    const std::string step = s.substr(at + 1, colon == std::string::npos ? colon : colon - at - 1);
    f.step = std::stol(step, &used);
    if (used != step.size()) throw std::invalid_argument(step);
    if (colon != std::string::npos) {
      if (f.kind != "error" && f.kind != "signal")
        fail("--fault: only error@STEP and signal@STEP take a :RANK");
      const std::string rank = s.substr(colon + 1);
      f.rank = std::stoi(rank, &used);
      if (used != rank.size()) throw std::invalid_argument(rank);
    }
  } catch (const std::logic_error&) {
    fail("--fault step or rank in '", s, "' is not a number");
  }
  return f;
}

using MaxLogits = std::vector<std::vector<float>>;

json max_logit_json(const MaxLogits& max_logits) {
  json layers = json::array();
  for (const auto& layer : max_logits) {
    json heads = json::array();
    for (float m : layer) heads.push_back(std::isfinite(m) ? json(m) : json(nullptr));
    layers.push_back(heads);
  }
  return layers;
}

float overall_max(const MaxLogits& max_logits) {
  float m = -INFINITY;
  for (const auto& layer : max_logits)
    for (float x : layer) m = std::max(m, x);
  return m;
}

// Progress lines are output like any other: when they cannot be written the
// run stops rather than train on unobserved.
void flush_progress() {
  try {
    flush_stdout();
  } catch (const Error& e) {
    fail(e.what(), " (while printing training progress; --quiet prints none)");
  }
}

// The largest attention logits over every rank's micro-batches.
MaxLogits max_over_ranks(const MaxLogits& local, Communicator& comm) {
  if (comm.size() == 1) return local;
  std::vector<float> flat;
  for (const auto& layer : local) flat.insert(flat.end(), layer.begin(), layer.end());
  std::vector<float> all(flat.size() * comm.size());
  comm.all_gather_host(flat.data(), all.data(), flat.size() * sizeof(float));
  MaxLogits out = local;
  size_t i = 0;
  for (auto& layer : out)
    for (float& m : layer) {
      for (int r = 0; r < comm.size(); ++r) m = std::max(m, all[r * flat.size() + i]);
      ++i;
    }
  return out;
}

// Every rank's micro-batch losses, summed in global micro-batch order
// (k = j*N + r within a step), as one rank with all the micro-batches sums them.
double loss_over_ranks(const std::vector<double>& local, Communicator& comm, int accum) {
  std::vector<double> all(local.size() * comm.size());
  comm.all_gather_host(local.data(), all.data(), local.size() * sizeof(double));
  double loss = 0;
  for (size_t j = 0; j < local.size(); ++j)
    for (int r = 0; r < comm.size(); ++r) loss += all[r * local.size() + j] / accum;
  return loss;
}

// Whether the run stops before --steps, which every rank follows (a save
// takes every rank): rank 0's `time_up` (its clock against --max-time;
// false where only a signal is asked about), or a stop signal that any
// rank received (mpirun forwards one to every rank, a scheduler may signal
// only some), named by the lowest such rank's.
struct EarlyStop {
  bool time_up = false;
  int signal = 0;  // 0: none
};

EarlyStop agree_on_early_stop(bool time_up, Communicator& comm) {
  const char mine[2] = {char(time_up), char(ScopedStopSignals::received())};
  std::vector<char> all(2 * size_t(comm.size()));
  comm.all_gather_host(mine, all.data(), 2);
  EarlyStop e;
  e.time_up = all[0] != 0;
  for (int r = 0; r < comm.size() && e.signal == 0; ++r) e.signal = all[2 * size_t(r) + 1];
  return e;
}

// The end of a run stopped by SIGINT or SIGTERM, once its checkpoint is
// saved (unless the last steps were not finite): nothing slower first, no
// final evaluation (a scheduler's grace period after SIGTERM is short),
// then one error naming the signal and how to resume. Every rank waits
// until rank 0 has written the file, then all end alike (AgreedError: no
// rank's exit cuts rank 0's write short, one line is printed); from the
// barrier on a signal ends the process as usual.
[[noreturn]] void stop_after_signal(MetricsLog* metrics, Communicator& comm,
                                    std::optional<ScopedStopSignals>& handlers, int signal,
                                    long step, long steps, bool saved,
                                    const std::string& checkpoint) {
  if (metrics) metrics->close();
  const char here = 1;
  std::vector<char> all(size_t(comm.size()));
  comm.all_gather_host(&here, all.data(), 1);  // a barrier: rank 0 has saved
  handlers.reset();
  if (comm.rank() != 0) throw AgreedError("");
  std::ostringstream os;
  os << "training stopped by " << ScopedStopSignals::name(signal) << " after step " << step;
  if (saved)
    os << " of " << steps << "; the checkpoint holds it: continue with lsgpt train --resume "
       << checkpoint;
  else
    os << "; no checkpoint written (the last steps were not finite)";
  throw AgreedError(os.str());
}

void print_banner(const Backend& backend, const Communicator& comm, const ModelConfig& mc,
                  const TrainConfig& tc, int T, long step, bool resuming) {
  std::printf("lsgpt train: %s | %zu parameters | %d layers x %d heads (local per layer:",
              backend.name().c_str(), mc.num_parameters(), mc.n_layer, mc.n_head);
  for (int n : mc.n_local) std::printf(" %d", n);
  std::printf(") w=%d | span %s", mc.window, mc.span.to_string().c_str());
  if (mc.qk_norm) std::printf(" | QK-norm");
  if (mc.z_loss > 0) std::printf(" | z-loss %g", mc.z_loss);
  if (tc.adagc) std::printf(" | AdaGC");
  std::printf("\n");
  std::printf("  batch %d x %d tokens x %d accum = %ld tokens/step | steps %ld%s\n",
              tc.batch_size, T, tc.grad_accum, long(tc.batch_size) * T * tc.grad_accum, tc.steps,
              resuming ? (" | resuming at step " + std::to_string(step)).c_str() : "");
  if (comm.size() > 1)
    std::printf("  data parallel: %d ranks (%s) x %d micro-batches each, ZeRO-1 sharded AdamW\n",
                comm.size(), comm.name().c_str(), tc.grad_accum / comm.size());
  std::printf("  data %s | valid %s | windows %s | run %s\n", tc.train_data.c_str(),
              tc.valid_data.c_str(), tc.sampler.c_str(), tc.out_dir.c_str());
  flush_progress();
}

// --grad-accum counts one rank's micro-batches; a run records the micro-batches
// of the whole step (over all ranks), so its checkpoint resumes on any number
// of ranks that divides them.
TrainOptions for_world(TrainOptions o, int ranks) {
  if (ranks == 1) return o;
  o.train.grad_accum *= ranks;
  if (o.explicit_train.contains("grad_accum"))
    o.explicit_train["grad_accum"] = o.explicit_train["grad_accum"].get<int>() * ranks;
  return o;
}

// The model as the training loop drives it: through the data-parallel
// wrapper (ZeRO-1 shards) where there is one, else on its own.
struct Trainee {
  GPT& model;
  DataParallel* dp;

  void begin_step() { dp ? dp->begin_step() : model.zero_grad(); }
  double micro_step(const int32_t* inputs, const int32_t* targets, int B, int T, double weight,
                    bool last) {
    return dp ? dp->micro_step(inputs, targets, B, T, weight, last)
              : model.forward_backward(inputs, targets, B, T, weight);
  }
  void poison_gradient() { dp ? dp->poison_gradient() : model.poison_gradient(); }
  std::vector<double> tensor_sum_squares() {
    return dp ? dp->tensor_sum_squares() : model.grad_sum_squares();
  }
  double grad_norm() { return dp ? dp->grad_norm() : model.grad_norm(); }
  void adamw_step(const AdamWSettings& s, std::span<const double> tensor_scale = {}) {
    dp ? dp->adamw_step(s, tensor_scale) : model.adamw_step(s, tensor_scale);
  }
  void snapshot(Checkpoint& ck) {
    ck.params = dp ? dp->parameters() : model.parameters();
    ck.adam_m = dp ? dp->adam_m() : model.adam_m();
    ck.adam_v = dp ? dp->adam_v() : model.adam_v();
  }
};

// The starting weights (and, on the single-GPU path, AdamW moments): the
// checkpoint's when resuming, --init-from's, or GPT-2's random ones.
void start_model(GPT& model, const RunSetup& setup, const TrainOptions& options, bool parallel) {
  if (setup.resuming) {
    model.set_parameters(setup.start.params);
    if (!parallel) model.set_adam_state(setup.start.adam_m, setup.start.adam_v);
  } else if (!options.init_from.empty()) {
    model.set_parameters(setup.start.params);
    if (!parallel) model.init_optimizer();
  } else {
    model.init_random(setup.train.seed);
    if (!parallel) model.init_optimizer();
  }
}

// The run directory with its config.json, and the metrics log (appended
// to when resuming in place). A run it replaces (--overwrite) loses its
// checkpoint first, so that no later failure leaves the new run's
// metrics beside the old run's checkpoint; a checkpoint.ckpt that is not
// a regular file (a link to /dev/null that discards them) is the user's
// and stays. Rank 0 only.
std::unique_ptr<MetricsLog> open_run_directory(const ModelConfig& mc, const TrainConfig& tc,
                                               const RunSetup& setup,
                                               const TrainOptions& options) {
  std::error_code dir_error;
  std::filesystem::create_directories(tc.out_dir, dir_error);
  if (dir_error) fail("cannot create the run directory '", tc.out_dir, "': ", dir_error.message());
  const bool in_place = resumes_in_place(setup, options);
  if (!in_place) {
    const std::string old = tc.out_dir + "/checkpoint.ckpt";
    std::error_code ec;
    if (std::filesystem::symlink_status(old, ec).type() == std::filesystem::file_type::regular &&
        !std::filesystem::remove(old, ec) && ec)
      fail("cannot remove the replaced run's '", old, "': ", ec.message());
  }
  auto metrics = std::make_unique<MetricsLog>(tc.out_dir + "/metrics.jsonl", in_place);
  write_file_atomic(tc.out_dir + "/config.json",
                    json{{"model", mc.to_json()}, {"train", tc.to_json()}}.dump(2));
  return metrics;
}

// One step's loss, z-loss term and per-head largest logits, over all ranks.
struct StepLosses {
  double loss = 0, z_loss = 0;
  MaxLogits max_logits;
};

// Where a step's micro-batches come from: this rank's share of them.
struct MicroBatches {
  TrainBatches& batches;
  int B, T, accum, world, rank;
  std::vector<int32_t> inputs, targets;
};

// Forward and backward over this rank's micro-batches of `step`, the
// gradients accumulated (and, data parallel, reduced).
StepLosses run_micro_batches(Trainee& trainee, MicroBatches& mb, Communicator& comm,
                             const TrainConfig& tc, const ModelConfig& mc, long step) {
  std::vector<double> losses(mb.accum), z(mb.accum);
  for (int j = 0; j < mb.accum; ++j) {
    // Global micro-batch k = step*G + j*N + r: the ranks' micro-batches of a
    // step together are the batches one rank would read.
    mb.batches.fill(uint64_t(step) * tc.grad_accum + uint64_t(j) * mb.world + mb.rank,
                    mb.inputs.data(), mb.targets.data());
    losses[j] = trainee.micro_step(mb.inputs.data(), mb.targets.data(), mb.B, mb.T,
                                   1.0 / tc.grad_accum, j == mb.accum - 1);
    z[j] = trainee.model.last_z_loss();
  }
  StepLosses out;
  out.loss = loss_over_ranks(losses, comm, tc.grad_accum);
  out.z_loss = mc.z_loss > 0 ? loss_over_ranks(z, comm, tc.grad_accum) : 0.0;
  out.max_logits = max_over_ranks(trainee.model.max_logits(), comm);
  return out;
}

struct Update {
  double norm = 0;
  bool finite = false;  // loss, z-loss and norm finite: the update was made
  int clipped_tensors = 0;
};

// The gradient norm, then the AdamW update with AdaGC's per-tensor or the
// global clipping; no update where anything is non-finite.
Update clip_and_update(Trainee& trainee, AdaGC& adagc, const TrainConfig& tc,
                       const StepLosses& losses, long step, double lr) {
  Update u;
  // AdaGC needs each tensor's norm; global clipping only their total.
  std::vector<double> tensor_sq;
  if (tc.adagc) {
    tensor_sq = trainee.tensor_sum_squares();
    for (double sq : tensor_sq) u.norm += sq;
    u.norm = std::sqrt(u.norm);
  } else {
    u.norm = trainee.grad_norm();
  }
  u.finite = std::isfinite(losses.loss) && std::isfinite(losses.z_loss) && std::isfinite(u.norm);
  if (!u.finite) return u;
  AdamWSettings s;
  s.lr = lr, s.beta1 = tc.beta1, s.beta2 = tc.beta2, s.eps = tc.eps;
  s.weight_decay = tc.weight_decay;
  s.step = step + 1;
  if (tc.adagc) {
    const std::vector<double> scales = adagc.scales(tensor_sq, step);
    u.clipped_tensors = adagc.last_clipped();
    trainee.adamw_step(s, scales);
  } else {
    s.grad_scale = (tc.clip > 0 && u.norm > tc.clip) ? tc.clip / u.norm : 1.0;
    trainee.adamw_step(s);
  }
  return u;
}

// The metrics record of a finished step (`step` counts it).
json train_record(const StepLosses& l, const Update& u, const TrainConfig& tc,
                  const ModelConfig& mc, long step, double lr, double tokens_per_s,
                  double train_seconds) {
  json rec{{"type", "train"},
           {"step", step},
           {"loss", std::isfinite(l.loss) ? json(l.loss) : json(nullptr)},
           {"lr", lr},
           {"grad_norm", std::isfinite(u.norm) ? json(u.norm) : json(nullptr)},
           {"tokens_per_s", tokens_per_s},
           {"train_seconds", train_seconds},
           {"max_logit", max_logit_json(l.max_logits)}};
  if (!u.finite) rec["skipped"] = true;
  // "loss" is the cross-entropy alone; the z-loss term is logged beside it.
  if (mc.z_loss > 0) rec["z_loss"] = std::isfinite(l.z_loss) ? json(l.z_loss) : json(nullptr);
  if (tc.adagc) rec["adagc_clipped"] = u.clipped_tensors;
  return rec;
}

// A skipped step's warning (rank 0), and the stop once --max-nonfinite
// steps in a row were skipped.
void handle_nonfinite(const StepLosses& l, const Update& u, const TrainConfig& tc, long step,
                      int nonfinite_run, bool lead, const std::string& ckpt_path) {
  if (lead)
    std::fprintf(stderr,
                 "warning: step %ld: non-finite %s (loss %g, grad norm %g); update skipped "
                 "(%d in a row, limit %d)\n",
                 step, std::isfinite(l.loss) ? "gradient" : "loss", l.loss, u.norm, nonfinite_run,
                 tc.max_nonfinite);
  if (nonfinite_run >= tc.max_nonfinite)
    fail("training stopped: ", nonfinite_run,
         " consecutive steps had a non-finite loss or gradient (last at step ", step,
         "). The last good state is in '", ckpt_path,
         "' if a checkpoint was written; try a lower --lr or a smaller --clip.");
}

void print_step_line(const StepLosses& l, const Update& u, const TrainConfig& tc, long step,
                     double lr, double tokens_per_step, const Throughput& speed, double dt) {
  const double eta = speed.seconds_per_step() * double(tc.steps - step);
  std::printf("step %6ld/%ld | loss %.4f | lr %.2e | norm %6.3f | %8.0f tok/s | "
              "%5.0f ms/step | max logit %5.2f | ETA %s\n",
              step, tc.steps, l.loss, lr, u.norm, tokens_per_step / speed.seconds_per_step(),
              1000 * dt, overall_max(l.max_logits), format_duration(eta).c_str());
  flush_progress();
}

json eval_record(const EvalResult& ev, long step, double train_seconds) {
  return json{{"type", "eval"},
              {"step", step},
              {"val_loss", ev.loss},
              {"val_ppl", ev.perplexity},
              {"val_tokens", ev.tokens},
              {"train_seconds", train_seconds}};
}

void print_summary(const TrainResult& r, const EvalResult& final_eval, const std::string& out_dir) {
  std::printf("done: %ld steps in %s (%.0f tok/s) | final val loss %.4f | val ppl %.2f "
              "(%ld tokens)%s\n",
              r.steps, format_duration(r.seconds).c_str(), r.tokens_per_second, final_eval.loss,
              final_eval.perplexity, final_eval.tokens, r.stopped_early ? " | stopped early" : "");
  std::printf("checkpoint: %s\nmetrics:    %s\n", r.checkpoint.c_str(), r.metrics.c_str());
  for (const std::string& png : plot_run(r.metrics, out_dir))
    std::printf("plot:       %s\n", png.c_str());
  flush_progress();
}
}  // namespace

TrainResult train_model(const TrainOptions& options_given) {
  const int world = launched_by_mpi() ? init_mpi().size : 1;
  const TrainOptions options = for_world(options_given, world);
  RunSetup setup = setup_run(options);
  const ModelConfig& mc = setup.model;
  const TrainConfig& tc = setup.train;
  const bool resuming = setup.resuming;
  const Fault fault = parse_fault(tc.fault);
  const int B = tc.batch_size;
  const int T = tc.seq_len ? tc.seq_len : mc.seq_len;
  if (T > mc.seq_len)
    fail("--train-seq-len ", T, " exceeds the model's context of ", mc.seq_len, " positions");
  if (tc.grad_accum % world != 0)
    fail("the run takes ", tc.grad_accum, " micro-batches per step, which ", world,
         " ranks cannot share equally; resume it on a number of ranks that divides ",
         tc.grad_accum, " (or pass --grad-accum per rank)");
  const int accum = tc.grad_accum / world;  // this rank's micro-batches per step

  const RunData data = open_run_data(setup);
  const TokenFile& valid_file = data.valid;
  // Refuses files shorter than T+1.
  TrainBatches batches(data.train, B, T, tc.seed, parse_window_sampling(tc.sampler), mc.eot_token);
  EvalBatches(valid_file, B, T, 1);                  // same check for validation, up front

  select_local_device(tc.device);
  std::unique_ptr<Backend> backend = make_backend(tc.device);
  std::unique_ptr<Communicator> comm = make_communicator(*backend, tc.device);
  const int rank = comm->rank();
  const bool lead = rank == 0;  // the one rank that prints and writes files
  if (lead) refuse_replacing_a_run(setup, options);
  const bool quiet = options.quiet || !lead;
  // Data-parallel path (ZeRO-1 shards; also one rank on the CPU, so one rank
  // and N ranks run the same arithmetic), or CUDA's single-GPU path with the
  // model's own optimizer.
  const bool parallel = world > 1 || backend->dtype() == backend->acc_dtype();
  GPT model(mc, *backend, parallel ? plan_shards(make_param_layout(mc).total, world).padded() : 0);
  model.set_step_graphs(GPT::step_graphs_wanted());
  start_model(model, setup, options, parallel);
  long step = resuming ? setup.start.step : 0;
  const json state = resuming ? setup.start.state : json::object();
  AdaGC adagc({tc.adagc_warmup, tc.adagc_lambda_abs, tc.adagc_lambda_rel, tc.adagc_beta},
              model.layout().tensors.size());
  if (tc.adagc && resuming) {
    if (!state.contains("adagc_gamma"))
      fail("checkpoint '", options.resume, "' holds no AdaGC state; resume it without --adagc");
    adagc.load_state(state["adagc_gamma"]);
  }
  std::unique_ptr<DataParallel> dp;
  if (parallel)
    dp = std::make_unique<DataParallel>(model, *comm,
                                        resuming ? setup.start.adam_m : std::vector<float>{},
                                        resuming ? setup.start.adam_v : std::vector<float>{});
  setup.start = Checkpoint{};  // release the host copy
  Trainee trainee{model, dp.get()};
  long skipped = state.value("skipped", 0L);
  int nonfinite_run = state.value("nonfinite", 0);
  double elapsed_before = state.value("elapsed", 0.0);
  // Seconds spent in optimizer steps alone (no evaluation or checkpoint
  // writes), over the whole run including the part before a resume: what
  // "GPU-seconds to reach a validation loss" is measured in.
  double train_seconds = state.value("train_seconds", 0.0);

  // From here, before the run folder is written, a SIGINT or SIGTERM ends
  // the step under way, saves and stops; the handlers go once the last
  // checkpoint is written.
  std::optional<ScopedStopSignals> stop_signals(std::in_place);
  const std::string ckpt_path = tc.out_dir + "/checkpoint.ckpt";
  std::unique_ptr<MetricsLog> metrics;
  if (lead) metrics = open_run_directory(mc, tc, setup, options);
  auto log = [&](const json& record) {
    if (metrics) metrics->write(record);
  };

  // Every rank takes part (the shards are gathered); rank 0 writes.
  long saved_step = -1;
  auto save = [&](long steps_done, double elapsed) {
    saved_step = steps_done;
    Checkpoint ck;
    ck.model = mc;
    ck.train = tc.to_json();
    ck.step = steps_done;
    ck.state = json{{"batches", uint64_t(steps_done) * tc.grad_accum},
                    {"skipped", skipped},
                    {"nonfinite", nonfinite_run},
                    {"elapsed", elapsed},
                    {"train_seconds", train_seconds}};
    if (tc.adagc) ck.state["adagc_gamma"] = adagc.state_json();
    trainee.snapshot(ck);
    if (lead) save_checkpoint(ckpt_path, ck);
  };

  const long tokens_per_step = long(B) * T * tc.grad_accum;
  if (!quiet) print_banner(*backend, *comm, mc, tc, T, step, resuming);

  MicroBatches micro{batches, B, T, accum, world, rank,
                     std::vector<int32_t>(size_t(B) * T), std::vector<int32_t>(size_t(B) * T)};
  const auto t0 = Clock::now();
  Throughput speed;
  TrainResult result;
  double last_loss = NAN;
  const long start_step = step;
  EarlyStop early_stop;
  while (step < tc.steps) {
    early_stop =
        agree_on_early_stop(tc.max_time > 0 && seconds_since(t0) >= tc.max_time, *comm);
    if ((tc.stop_at > 0 && step >= tc.stop_at) || early_stop.time_up || early_stop.signal) {
      result.stopped_early = true;
      break;
    }
    const auto step_start = Clock::now();
    const double lr = learning_rate(tc, step);
    if (fault.step == step + 1 && fault.kind == "error" && fault.rank == rank)
      fail("injected fault (--fault ", tc.fault, ") on rank ", rank, " at step ", step + 1);
    if (fault.step == step + 1 && fault.kind == "nan-param") model.poison_parameter();
    if (fault.step == step + 1 && fault.kind == "signal" && fault.rank == rank) raise(SIGTERM);
    trainee.begin_step();
    model.reset_max_logits();
    const StepLosses losses = run_micro_batches(trainee, micro, *comm, tc, mc, step);
    if (fault.step == step + 1 && fault.kind == "nan-grad") trainee.poison_gradient();
    const Update update = clip_and_update(trainee, adagc, tc, losses, step, lr);
    if (update.finite) nonfinite_run = 0;
    else ++skipped, ++nonfinite_run;
    ++step;
    backend->sync();
    const double dt = std::chrono::duration<double>(Clock::now() - step_start).count();
    speed.add(dt);
    train_seconds += dt;
    last_loss = losses.loss;
    log(train_record(losses, update, tc, mc, step, lr, tokens_per_step / dt, train_seconds));
    if (!update.finite) handle_nonfinite(losses, update, tc, step, nonfinite_run, lead, ckpt_path);
    if (!quiet && (step % tc.log_every == 0 || step == start_step + 1))
      print_step_line(losses, update, tc, step, lr, double(tokens_per_step), speed, dt);
    if (tc.eval_every > 0 && step % tc.eval_every == 0 && step < tc.steps) {
      // Every rank holds the same parameters; each evaluates the same
      // batches, rank 0 reports. A stop signal on any rank cuts it short
      // on all before the same batch (the loop's next check stops the run).
      const EvalResult ev = evaluate_tokens(model, valid_file, B, T, tc.eval_batches, [&] {
        return agree_on_early_stop(false, *comm).signal != 0;
      });
      if (!ev.interrupted) log(eval_record(ev, step, train_seconds));
      if (!quiet && !ev.interrupted) {
        std::printf("eval  step %ld | val loss %.4f | val ppl %.2f (%ld tokens)\n", step,
                    ev.loss, ev.perplexity, ev.tokens);
        flush_progress();
      }
    }
    if (tc.checkpoint_every > 0 && step % tc.checkpoint_every == 0 && step < tc.steps &&
        nonfinite_run == 0)
      save(step, elapsed_before + seconds_since(t0));
  }

  // A signal during the last step still stops the run before its final
  // evaluation.
  if (early_stop.signal == 0) early_stop.signal = agree_on_early_stop(false, *comm).signal;
  const double seconds = seconds_since(t0);
  // Saved before the final evaluation, once a step (a periodic save at a
  // signal's step is not repeated).
  const bool finite = nonfinite_run == 0;
  if (finite && saved_step != step) save(step, elapsed_before + seconds);
  if (early_stop.signal)
    stop_after_signal(metrics.get(), *comm, stop_signals, early_stop.signal, step, tc.steps,
                      finite, ckpt_path);
  stop_signals.reset();  // a signal now ends the process: the checkpoint is written
  const EvalResult final_eval =
      evaluate_tokens(model, valid_file, B, T, tc.final_eval_batches);
  json final_record = eval_record(final_eval, step, train_seconds);
  final_record["final"] = true;
  log(final_record);
  if (metrics) metrics->close();

  result.steps = step;
  result.skipped = skipped;
  result.last_loss = last_loss;
  result.val_loss = final_eval.loss;
  result.val_perplexity = final_eval.perplexity;
  result.seconds = seconds;
  result.tokens_per_second =
      step > start_step ? double(step - start_step) * tokens_per_step / seconds : 0;
  result.checkpoint = ckpt_path;
  result.metrics = tc.out_dir + "/metrics.jsonl";
  if (!quiet) print_summary(result, final_eval, tc.out_dir);
  return result;
}

}  // namespace lsgpt
