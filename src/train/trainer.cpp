#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"
#include "data/batch_sampler.h"
#include "data/token_file.h"
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
// (1-based) step. Only for testing the non-finite handling.
struct Fault {
  std::string kind;
  long step = -1;
};

Fault parse_fault(const std::string& s) {
  Fault f;
  if (s.empty()) return f;
  const auto at = s.find('@');
  if (at == std::string::npos) fail("--fault must look like nan-grad@STEP or nan-param@STEP");
  f.kind = s.substr(0, at);
  if (f.kind != "nan-grad" && f.kind != "nan-param")
    fail("--fault kind must be nan-grad or nan-param, got '", f.kind, "'");
  try {
    f.step = std::stol(s.substr(at + 1));
  } catch (const std::exception&) {
    fail("--fault step in '", s, "' is not a number");
  }
  return f;
}

json max_logit_json(const GPT& model) {
  json layers = json::array();
  for (const auto& layer : model.max_logits()) {
    json heads = json::array();
    for (float m : layer) heads.push_back(std::isfinite(m) ? json(m) : json(nullptr));
    layers.push_back(heads);
  }
  return layers;
}

float overall_max(const GPT& model) {
  float m = -INFINITY;
  for (const auto& layer : model.max_logits())
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

void print_banner(const Backend& backend, const ModelConfig& mc, const TrainConfig& tc, int T,
                  long step, bool resuming) {
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
  std::printf("  data %s | valid %s | windows %s | run %s\n", tc.train_data.c_str(),
              tc.valid_data.c_str(), tc.sampler.c_str(), tc.out_dir.c_str());
  flush_progress();
}

}  // namespace

TrainResult train_model(const TrainOptions& options) {
  RunSetup setup = setup_run(options);
  const ModelConfig& mc = setup.model;
  const TrainConfig& tc = setup.train;
  const bool resuming = setup.resuming;
  const Fault fault = parse_fault(tc.fault);
  const int B = tc.batch_size;
  const int T = tc.seq_len ? tc.seq_len : mc.seq_len;
  if (T > mc.seq_len)
    fail("--seq-len ", T, " exceeds the model's context of ", mc.seq_len, " positions");

  const RunData data = open_run_data(setup);
  const TokenFile& valid_file = data.valid;
  // Refuses files shorter than T+1.
  TrainBatches batches(data.train, B, T, tc.seed, parse_window_sampling(tc.sampler), mc.eot_token);
  EvalBatches(valid_file, B, T, 1);                  // same check for validation, up front

  std::unique_ptr<Backend> backend = make_backend(tc.device);
  GPT model(mc, *backend);
  long step = 0;
  json state = json::object();
  if (resuming) {
    model.set_parameters(setup.start.params);
    model.set_adam_state(setup.start.adam_m, setup.start.adam_v);
    step = setup.start.step;
    state = setup.start.state;
  } else if (!options.init_from.empty()) {
    model.set_parameters(setup.start.params);
    model.init_optimizer();
  } else {
    model.init_random(tc.seed);
    model.init_optimizer();
  }
  AdaGC adagc({tc.adagc_warmup, tc.adagc_lambda_abs, tc.adagc_lambda_rel, tc.adagc_beta},
              model.layout().tensors.size());
  if (tc.adagc && resuming) {
    if (!state.contains("adagc_gamma"))
      fail("checkpoint '", options.resume, "' holds no AdaGC state; resume it without --adagc");
    adagc.load_state(state["adagc_gamma"]);
  }
  setup.start = Checkpoint{};  // release the host copy
  long skipped = state.value("skipped", 0L);
  int nonfinite_run = state.value("nonfinite", 0);
  double elapsed_before = state.value("elapsed", 0.0);

  std::error_code dir_error;
  std::filesystem::create_directories(tc.out_dir, dir_error);
  if (dir_error)
    fail("cannot create the run directory '", tc.out_dir, "': ", dir_error.message());
  const std::string ckpt_path = tc.out_dir + "/checkpoint.ckpt";
  MetricsLog metrics(tc.out_dir + "/metrics.jsonl", resuming);
  write_file_atomic(tc.out_dir + "/config.json",
                    json{{"model", mc.to_json()}, {"train", tc.to_json()}}.dump(2));

  auto save = [&](long steps_done, double elapsed) {
    Checkpoint ck;
    ck.model = mc;
    ck.train = tc.to_json();
    ck.step = steps_done;
    ck.state = json{{"batches", uint64_t(steps_done) * tc.grad_accum},
                    {"skipped", skipped},
                    {"nonfinite", nonfinite_run},
                    {"elapsed", elapsed}};
    if (tc.adagc) ck.state["adagc_gamma"] = adagc.state_json();
    ck.params = model.parameters();
    ck.adam_m = model.adam_m();
    ck.adam_v = model.adam_v();
    save_checkpoint(ckpt_path, ck);
  };

  const long tokens_per_step = long(B) * T * tc.grad_accum;
  if (!options.quiet) print_banner(*backend, mc, tc, T, step, resuming);

  std::vector<int32_t> inputs(size_t(B) * T), targets(size_t(B) * T);
  const auto t0 = Clock::now();
  Throughput speed;
  TrainResult result;
  double last_loss = NAN;
  const long start_step = step;
  while (step < tc.steps) {
    if (tc.stop_at > 0 && step >= tc.stop_at) {
      result.stopped_early = true;
      break;
    }
    if (tc.max_time > 0 && seconds_since(t0) >= tc.max_time) {
      result.stopped_early = true;
      break;
    }
    const auto step_start = Clock::now();
    const double lr = learning_rate(tc, step);
    if (fault.step == step + 1 && fault.kind == "nan-param") model.poison_parameter();
    model.zero_grad();
    model.reset_max_logits();
    double loss = 0, z_loss = 0;
    for (int micro = 0; micro < tc.grad_accum; ++micro) {
      batches.fill(uint64_t(step) * tc.grad_accum + micro, inputs.data(), targets.data());
      loss += model.forward_backward(inputs.data(), targets.data(), B, T,
                                     1.0 / tc.grad_accum) / tc.grad_accum;
      z_loss += model.last_z_loss() / tc.grad_accum;
    }
    if (fault.step == step + 1 && fault.kind == "nan-grad") model.poison_gradient();
    // AdaGC needs each tensor's norm; global clipping only their total.
    std::vector<double> tensor_sq;
    double norm = 0;
    if (tc.adagc) {
      tensor_sq = model.grad_sum_squares();
      for (double sq : tensor_sq) norm += sq;
      norm = std::sqrt(norm);
    } else {
      norm = model.grad_norm();
    }
    const bool finite = std::isfinite(loss) && std::isfinite(z_loss) && std::isfinite(norm);
    int clipped_tensors = 0;
    if (finite) {
      nonfinite_run = 0;
      AdamWSettings s;
      s.lr = lr, s.beta1 = tc.beta1, s.beta2 = tc.beta2, s.eps = tc.eps;
      s.weight_decay = tc.weight_decay;
      s.step = step + 1;
      if (tc.adagc) {
        const std::vector<double> scales = adagc.scales(tensor_sq, step);
        clipped_tensors = adagc.last_clipped();
        model.adamw_step(s, scales);
      } else {
        s.grad_scale = (tc.clip > 0 && norm > tc.clip) ? tc.clip / norm : 1.0;
        model.adamw_step(s);
      }
    } else {
      ++skipped, ++nonfinite_run;
    }
    ++step;
    backend->sync();
    const double dt = std::chrono::duration<double>(Clock::now() - step_start).count();
    speed.add(dt);
    last_loss = loss;
    json rec{{"type", "train"},
             {"step", step},
             {"loss", std::isfinite(loss) ? json(loss) : json(nullptr)},
             {"lr", lr},
             {"grad_norm", std::isfinite(norm) ? json(norm) : json(nullptr)},
             {"tokens_per_s", tokens_per_step / dt},
             {"max_logit", max_logit_json(model)}};
    if (!finite) rec["skipped"] = true;
    // "loss" is the cross-entropy alone; the z-loss term is logged beside it.
    if (mc.z_loss > 0) rec["z_loss"] = std::isfinite(z_loss) ? json(z_loss) : json(nullptr);
    if (tc.adagc) rec["adagc_clipped"] = clipped_tensors;
    metrics.write(rec);
    if (!finite) {
      std::fprintf(stderr,
                   "warning: step %ld: non-finite %s (loss %g, grad norm %g); update skipped "
                   "(%d in a row, limit %d)\n",
                   step, std::isfinite(loss) ? "gradient" : "loss", loss, norm, nonfinite_run,
                   tc.max_nonfinite);
      if (nonfinite_run >= tc.max_nonfinite)
        fail("training stopped: ", nonfinite_run,
             " consecutive steps had a non-finite loss or gradient (last at step ", step,
             "). The last good state is in '", ckpt_path,
             "' if a checkpoint was written; try a lower --lr or a smaller --clip.");
    }
    if (!options.quiet && (step % tc.log_every == 0 || step == start_step + 1)) {
      const double eta = speed.seconds_per_step() * double(tc.steps - step);
      std::printf("step %6ld/%ld | loss %.4f | lr %.2e | norm %6.3f | %8.0f tok/s | "
                  "%5.0f ms/step | max logit %5.2f | ETA %s\n",
                  step, tc.steps, loss, lr, norm, tokens_per_step / speed.seconds_per_step(),
                  1000 * dt, overall_max(model), format_duration(eta).c_str());
      flush_progress();
    }
    if (tc.eval_every > 0 && step % tc.eval_every == 0 && step < tc.steps) {
      const EvalResult ev = evaluate_tokens(model, valid_file, B, T, tc.eval_batches);
      metrics.write(json{{"type", "eval"},
                         {"step", step},
                         {"val_loss", ev.loss},
                         {"val_ppl", ev.perplexity},
                         {"val_tokens", ev.tokens}});
      if (!options.quiet) {
        std::printf("eval  step %ld | val loss %.4f | val ppl %.2f (%ld tokens)\n", step,
                    ev.loss, ev.perplexity, ev.tokens);
        flush_progress();
      }
    }
    if (tc.checkpoint_every > 0 && step % tc.checkpoint_every == 0 && step < tc.steps &&
        nonfinite_run == 0)
      save(step, elapsed_before + seconds_since(t0));
  }

  const double seconds = seconds_since(t0);
  const EvalResult final_eval =
      evaluate_tokens(model, valid_file, B, T, tc.final_eval_batches);
  metrics.write(json{{"type", "eval"},
                     {"step", step},
                     {"val_loss", final_eval.loss},
                     {"val_ppl", final_eval.perplexity},
                     {"val_tokens", final_eval.tokens},
                     {"final", true}});
  if (nonfinite_run == 0) save(step, elapsed_before + seconds);
  metrics.close();

  result.steps = step;
  result.skipped = skipped;
  result.last_loss = last_loss;
  result.val_loss = final_eval.loss;
  result.val_perplexity = final_eval.perplexity;
  result.seconds = seconds;
  result.tokens_per_second =
      step > start_step ? double(step - start_step) * tokens_per_step / seconds : 0;
  result.checkpoint = ckpt_path;
  result.metrics = metrics.path();
  if (!options.quiet) {
    std::printf("done: %ld steps in %s (%.0f tok/s) | final val loss %.4f | val ppl %.2f "
                "(%ld tokens)%s\n",
                step, format_duration(seconds).c_str(), result.tokens_per_second,
                final_eval.loss, final_eval.perplexity, final_eval.tokens,
                result.stopped_early ? " | stopped early" : "");
    std::printf("checkpoint: %s\nmetrics:    %s\n", ckpt_path.c_str(), metrics.path().c_str());
    for (const std::string& png : plot_run(metrics.path(), tc.out_dir))
      std::printf("plot:       %s\n", png.c_str());
    flush_progress();
  }
  return result;
}

}  // namespace lsgpt
