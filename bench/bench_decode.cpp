// Inference speed of the engine (src/infer/engine.h): prefill time of one
// prompt and decode time per step of a full batch of equal-length sequences,
// greedy, on random weights and random tokens, with the KV cache size and the
// peak device memory. The lsgpt half of bench/decode_vs_torch.sh (its PyTorch
// peer is bench/decode_torch.py, which prints the same JSON keys). A benchmark
// program, not a test:
//   bench_decode [--device cpu|cuda] [--config FILE] [--seq-len N] [--modes ls,mhsa]
//                [--n-local N] [--window W] [--batch 1,8,64] [--context 1024,4096]
//                [--steps N] [--warmup N] [--prefill-repeats N] [--seed N]
//                [--no-graphs] [--json FILE]
// Without --config the model is GPT-2 small (12 layers, 12 heads, width 768,
// vocabulary 50257) with 32768 positions. --modes: "ls" makes every head but
// one local (or --n-local of them) with window --window (default: the
// config's); "mhsa" makes every head global; "config" keeps the config's heads.
//
// For each mode and context C (ascending):
//  - prefill: add() of one request with a prompt of C tokens, timed from a
//    synchronised device to the return of add() followed by a sync; the median
//    of --prefill-repeats such adds after one warm-up add (each its own slot of
//    one engine, so nothing is freed or rebuilt in between).
//  - decode, for each batch B: an engine of B slots and max_context C; B
//    requests of P = C - (warmup + steps) - 1 random tokens each; --warmup
//    step() calls, then --steps timed step() calls, so the timed steps feed
//    positions just below C ("the sequences sit at context C"). step() returns
//    only once the new token ids are on the host, so wall-clock time is right.
//    ms_per_token: median step; mean_ms_per_token: total / steps;
//    tokens_per_s: B * steps / total.
// One JSON line per measurement on stdout (and into --json FILE); a
// measurement that does not fit (the engine or an allocation throws) gives a
// line with "status": "oom" (or "error") and the message, and the run goes on.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <new>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "infer/engine.h"
#include "io/standard_output.h"
#include "model/gpt.h"

using namespace lsgpt;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  std::string device = "cpu";
  std::string config;  // empty: GPT-2 small with 32768 positions
  int seq_len = 0;     // 0: the config's (32768 for the built-in shape)
  std::vector<std::string> modes = {"ls", "mhsa"};
  int n_local = -1;    // -1: n_head - 1 in mode ls
  int window = 0;      // 0: the config's
  std::vector<int> batches = {1, 8, 64};
  std::vector<int> contexts = {1024, 4096, 16384, 32768};
  int steps = 64, warmup = 8, prefill_repeats = 3;
  uint64_t seed = 1;
  bool graphs = true;
  std::string json_path;
};

double mib(size_t bytes) { return double(bytes) / (1 << 20); }
// null where the backend does not track its memory (the CPU).
json peak_mib(Backend& be) {
  const size_t peak = be.peak_memory_bytes();
  return peak ? json(std::round(mib(peak) * 100.0) / 100.0) : json(nullptr);
}
double round2(double x) { return std::round(x * 100.0) / 100.0; }
double round3(double x) { return std::round(x * 1000.0) / 1000.0; }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

class Reporter {
 public:
  explicit Reporter(const std::string& path) : path_(path) {
    if (!path.empty()) {
      file_.open(path);
      if (!file_) fail("cannot write ", path);
    }
  }
  void emit(const json& j) {
    const std::string line = j.dump();
    write_stdout(line + "\n");  // throws when standard output is lost
    if (file_.is_open()) {
      file_ << line << "\n";
      file_.flush();
      if (!file_) fail("cannot write ", path_);
    }
  }

 private:
  std::string path_;
  std::ofstream file_;
};

ModelConfig base_config(const Options& o) {
  ModelConfig cfg;
  if (!o.config.empty()) {
    // As given (from the working directory), else relative to the source tree
    // (so `--config configs/default.json` works from anywhere).
    const std::string in_tree = std::string(LSGPT_SOURCE_DIR) + "/" + o.config;
    const std::string path = std::filesystem::exists(o.config) || o.config.starts_with("/")
                                 ? o.config
                                 : in_tree;
    cfg = ModelConfig::load(path);
  } else {
    cfg.n_layer = 12;
    cfg.n_head = 12;
    cfg.d_model = 768;
    cfg.seq_len = 32768;
    cfg.vocab_size = 50257;
    cfg.window = 100;
    cfg.n_local = {11};
  }
  if (o.seq_len > 0) cfg.seq_len = o.seq_len;
  if (o.window > 0) cfg.window = o.window;
  return cfg;
}

ModelConfig mode_config(ModelConfig cfg, const std::string& mode, const Options& o) {
  if (mode == "mhsa") {
    cfg.n_local = {0};
  } else if (mode == "ls") {
    cfg.n_local = {o.n_local >= 0 ? o.n_local : ModelConfig::default_n_local(cfg.n_head)};
  } else if (mode != "config") {
    fail("unknown mode '", mode, "' (ls, mhsa or config)");
  }
  if (cfg.n_local.size() == 1) cfg.n_local.assign(cfg.n_layer, cfg.n_local[0]);
  cfg.normalize_and_validate();
  return cfg;
}

std::vector<int32_t> random_prompt(std::mt19937_64& rng, int n, int vocab) {
  std::vector<int32_t> p(n);
  for (auto& t : p) t = int32_t(rng() % uint64_t(vocab));
  return p;
}

SequenceRequest greedy_request(std::vector<int32_t> prompt, int max_new, uint64_t seed) {
  SequenceRequest r;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0.0;
  r.seed = seed;
  r.max_new_tokens = max_new;
  return r;
}

json base_record(const Options& o, const ModelConfig& cfg, const std::string& mode,
                 const char* kind, int batch, int context) {
  const int n_local = cfg.n_local.empty() ? 0 : cfg.n_local[0];
  return json{{"side", "lsgpt"},
              {"kind", kind},
              {"mode", mode},
              {"device", o.device},
              {"n_layer", cfg.n_layer},
              {"n_head", cfg.n_head},
              {"d_model", cfg.d_model},
              {"n_local", n_local},
              {"window", n_local > 0 ? json(cfg.window) : json(nullptr)},
              {"batch", batch},
              {"context", context},
              {"graphs", o.graphs && o.device == "cuda"},  // the CPU has none
              {"status", "ok"}};
}

// Runs `body`; on a failure fills status/note instead. An allocation that
// does not fit is reported as "oom".
template <typename F>
void guarded(json& rec, F&& body) {
  try {
    body();
  } catch (const std::bad_alloc&) {
    rec["status"] = "oom";
    rec["note"] = "host out of memory";
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    std::string lower = msg;
    std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
    const bool oom = lower.find("memory") != std::string::npos ||
                     lower.find("does not fit") != std::string::npos;
    rec["status"] = oom ? "oom" : "error";
    rec["note"] = msg;
  }
}

void measure_prefill(const Options& o, const ModelConfig& cfg, const std::string& mode,
                     Backend& be, GPT& model, int context, Reporter& out) {
  json rec = base_record(o, cfg, mode, "prefill", 1, context);
  rec["prompt"] = context;
  guarded(rec, [&] {
    EngineOptions eo;
    eo.max_batch = 1 + o.prefill_repeats;  // one slot per add: nothing is freed in between
    eo.max_context = context;
    eo.use_graphs = o.graphs;
    be.sync();
    be.reset_peak_memory();
    InferenceEngine engine(model, eo);
    std::mt19937_64 rng(o.seed * 1000003 + uint64_t(context));
    std::vector<double> ms;
    for (int r = 0; r < 1 + o.prefill_repeats; ++r) {
      SequenceRequest req = greedy_request(random_prompt(rng, context, cfg.vocab_size), 1, r + 1);
      be.sync();
      const auto t0 = Clock::now();
      engine.add(req);
      be.sync();
      const double dt = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      if (r > 0) ms.push_back(dt);  // the first add is the warm-up
    }
    const double m = median(ms);
    rec["prefill_ms"] = round3(m);
    rec["prefill_tokens_per_s"] = std::round(context / (m / 1e3));
    rec["repeats"] = int(ms.size());
    // The prefilled sequence's own cache (the engine holds a slot per repeat).
    rec["kv_cache_mib"] =
        round2(mib(InferenceEngine::kv_cache_bytes(cfg, 1, context, dtype_size(be.dtype()))));
    rec["peak_mib"] = peak_mib(be);
  });
  out.emit(rec);
}

void measure_decode(const Options& o, const ModelConfig& cfg, const std::string& mode,
                    Backend& be, GPT& model, int batch, int context, Reporter& out) {
  json rec = base_record(o, cfg, mode, "decode", batch, context);
  const int n_steps = o.warmup + o.steps;
  const int prompt = context - n_steps - 1;
  rec["prompt"] = prompt;
  rec["steps"] = o.steps;
  rec["warmup"] = o.warmup;
  const size_t kv = InferenceEngine::kv_cache_bytes(cfg, batch, context, dtype_size(be.dtype()));
  rec["kv_cache_mib"] = round2(mib(kv));
  if (prompt < 1) {
    rec["status"] = "skipped";
    rec["note"] = "context too short for warmup + steps";
    out.emit(rec);
    return;
  }
  guarded(rec, [&] {
    EngineOptions eo;
    eo.max_batch = batch;
    eo.max_context = context;
    eo.use_graphs = o.graphs;
    be.sync();
    be.reset_peak_memory();
    InferenceEngine engine(model, eo);
    rec["engine_mib"] = round2(mib(engine.memory_bytes()));
    std::mt19937_64 rng(o.seed * 7919 + uint64_t(context) * 31 + uint64_t(batch));
    const auto f0 = Clock::now();
    for (int b = 0; b < batch; ++b)
      engine.add(greedy_request(random_prompt(rng, prompt, cfg.vocab_size), n_steps + 2, b + 1));
    be.sync();
    rec["fill_ms"] = round2(std::chrono::duration<double, std::milli>(Clock::now() - f0).count());
    for (int i = 0; i < o.warmup; ++i) engine.step();
    std::vector<double> ms;
    size_t short_steps = 0;
    const auto t0 = Clock::now();
    for (int i = 0; i < o.steps; ++i) {
      const auto s0 = Clock::now();
      const std::vector<TokenEvent> events = engine.step();
      ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - s0).count());
      if (int(events.size()) != batch) ++short_steps;
    }
    const double total_s = std::chrono::duration<double>(Clock::now() - t0).count();
    be.sync();
    rec["ms_per_token"] = round3(median(ms));
    rec["mean_ms_per_token"] = round3(total_s * 1e3 / o.steps);
    rec["tokens_per_s"] = std::round(double(batch) * o.steps / total_s);
    rec["peak_mib"] = peak_mib(be);
    if (short_steps) rec["note"] = std::to_string(short_steps) + " steps returned fewer events than the batch";
  });
  out.emit(rec);
}

// Returns 0 when the run should go on, else the exit status (help: 0 too,
// via `done`).
int parse_arguments(int argc, char** argv, Options& o, bool& done) {
  CLI::App app{"Inference speed of lsgpt's engine (prefill and decode), one JSON line per "
               "measurement"};
  app.add_option("--device", o.device, "cpu or cuda")->capture_default_str();
  app.add_option("--config", o.config, "model config JSON (default: GPT-2 small, 32768 positions)");
  app.add_option("--seq-len", o.seq_len, "positions of the model")->check(CLI::Range(1, 1 << 30));
  app.add_option("--modes,--mode", o.modes, "ls, mhsa, config")->delimiter(',');
  app.add_option("--n-local", o.n_local, "local heads in mode ls (default n_head - 1)");
  app.add_option("--window", o.window, "local window in mode ls (default: the config's)");
  app.add_option("--batch", o.batches, "batch sizes, e.g. 1,8,64")->delimiter(',');
  app.add_option("--context", o.contexts, "contexts, e.g. 1024,4096")->delimiter(',');
  app.add_option("--steps", o.steps, "timed decode steps")->check(CLI::Range(1, 1 << 30));
  app.add_option("--warmup", o.warmup, "untimed decode steps first")->check(CLI::Range(0, 1 << 30));
  app.add_option("--prefill-repeats", o.prefill_repeats, "timed prefills (median)")
      ->check(CLI::Range(1, 1 << 30));
  app.add_option("--seed", o.seed, "weights and prompts");
  app.add_flag("!--no-graphs", o.graphs, "run the decode step without CUDA graphs");
  app.add_option("--json", o.json_path, "also write the JSON lines to this file");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    done = true;
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "bench_decode: %s (see bench_decode --help)\n", e.what());
    return 2;
  }
  for (int v : o.batches)
    if (v < 1) return done = true, std::fprintf(stderr, "bench_decode: --batch %d: must be >= 1\n", v), 2;
  for (int v : o.contexts)
    if (v < 1)
      return done = true, std::fprintf(stderr, "bench_decode: --context %d: must be >= 1\n", v), 2;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  bool done = false;
  const int status = parse_arguments(argc, argv, o, done);
  if (done) return status;
  if (o.batches.empty() || o.contexts.empty() || o.modes.empty()) {
    std::fprintf(stderr, "bench_decode: --batch, --context and --modes must not be empty\n");
    return 2;
  }
  // Ascending contexts: the model's activations, sized for the largest prompt
  // so far, then never exceed what the current measurement needs itself.
  std::sort(o.contexts.begin(), o.contexts.end());
  std::sort(o.batches.begin(), o.batches.end());

  try {
    Reporter out(o.json_path);
    const ModelConfig base = base_config(o);
    for (const std::string& mode : o.modes) {
      const ModelConfig cfg = mode_config(base, mode, o);
      auto backend = make_backend(o.device);
      GPT model(cfg, *backend);
      model.init_random(o.seed);
      for (int context : o.contexts) {
        if (context < 1 || context > cfg.seq_len) {
          json rec = base_record(o, cfg, mode, "prefill", 1, context);
          rec["status"] = "skipped";
          rec["note"] = "context outside 1..seq_len (" + std::to_string(cfg.seq_len) + ")";
          out.emit(rec);
          continue;
        }
        measure_prefill(o, cfg, mode, *backend, model, context, out);
        for (int batch : o.batches) measure_decode(o, cfg, mode, *backend, model, batch, context, out);
      }
    }
    close_stdout();  // output that never arrived is a failure
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_decode: %s\n", e.what());
    return 1;
  }
  return 0;
}
