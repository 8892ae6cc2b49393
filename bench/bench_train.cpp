// Training throughput (forward + backward + global-norm clipping + AdamW) of
// whole models, in tokens/s over the median step, on random tokens, and the
// peak device memory where the backend tracks it. A benchmark program, not a
// test:
//   bench_train [--device cpu|cuda] [--steps N] [--warmup N] [--case CONFIG:B:T]...
//               [--json FILE]
// Without --case it measures the default config and GPT-2 small (LS and MHSA)
// at T = 1024.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/gpt.h"

using namespace lsgpt;

namespace {

struct Case {
  std::string config;
  int B, T;
};

struct Result {
  double tokens_per_s, step_ms, peak_gib;
};

Result measure(const Case& c, const std::string& device, int steps, int warmup) {
  // Relative config paths name files in the source tree, so the program runs from anywhere.
  const std::string path = c.config.starts_with("/") ? c.config
                                                     : std::string(LSGPT_SOURCE_DIR) + "/" + c.config;
  ModelConfig cfg = ModelConfig::load(path);
  auto backend = make_backend(device);
  backend->reset_peak_memory();
  GPT model(cfg, *backend);
  model.init_random(1);
  model.init_optimizer();
  model.set_step_graphs(GPT::step_graphs_wanted());
  std::mt19937 rng(7);
  std::vector<int32_t> in(size_t(c.B) * c.T), tg(size_t(c.B) * c.T);
  AdamWSettings s;
  s.lr = 1e-4;
  std::vector<double> seconds;
  for (int i = 0; i < warmup + steps; ++i) {
    for (auto& t : in) t = int32_t(rng() % cfg.vocab_size);
    for (auto& t : tg) t = int32_t(rng() % cfg.vocab_size);
    backend->sync();
    const auto t0 = std::chrono::steady_clock::now();
    model.zero_grad();
    model.forward_backward(in.data(), tg.data(), c.B, c.T, 1.0);
    s.grad_scale = std::min(1.0, 1.0 / model.grad_norm());
    s.step = i + 1;
    model.adamw_step(s);
    backend->sync();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i >= warmup) seconds.push_back(dt);
  }
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];
  return {c.B * c.T / median, median * 1e3, double(backend->peak_memory_bytes()) / (1 << 30)};
}

}  // namespace

int main(int argc, char** argv) {
  std::string device = "cpu", json_path;
  int steps = 3, warmup = 1;
  std::vector<Case> cases;
  for (int i = 1; i < argc; ++i) {
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (!std::strcmp(argv[i], "--device")) device = next();
    else if (!std::strcmp(argv[i], "--steps")) steps = std::stoi(next());
    else if (!std::strcmp(argv[i], "--warmup")) warmup = std::stoi(next());
    else if (!std::strcmp(argv[i], "--json")) json_path = next();
    else if (!std::strcmp(argv[i], "--case")) {
      // --case CONFIG:B:T
      const std::string spec = next();
      const auto a = spec.find(':'), b = spec.rfind(':');
      cases.push_back({spec.substr(0, a), std::stoi(spec.substr(a + 1, b - a - 1)),
                       std::stoi(spec.substr(b + 1))});
    } else {
      std::fprintf(stderr, "usage: bench_train [--device cpu|cuda] [--steps N] [--warmup N] "
                           "[--case configs/x.json:B:T]... [--json FILE]\n");
      return 2;
    }
  }
  if (cases.empty()) {
    cases = {{"configs/default.json", 8, 256},
             {"configs/gpt2-small.json", 1, 1024},
             {"configs/gpt2-small-mhsa.json", 1, 1024}};
  }
  if (steps < 1 || warmup < 0) {
    std::fprintf(stderr, "bench_train: --steps must be >= 1 and --warmup >= 0\n");
    return 2;
  }
  try {
    nlohmann::json all = nlohmann::json::array();
    std::printf("| config | device | batch x T | tokens/s | step ms | peak memory GiB |\n"
                "|---|---|---|---|---|---|\n");
    for (const Case& c : cases) {
      const Result r = measure(c, device, steps, warmup);
      std::printf("| %s | %s | %d x %d | %.0f | %.2f | %s |\n", c.config.c_str(), device.c_str(),
                  c.B, c.T, r.tokens_per_s, r.step_ms,
                  r.peak_gib > 0 ? std::to_string(r.peak_gib).substr(0, 5).c_str() : "-");
      std::fflush(stdout);
      all.push_back({{"config", c.config}, {"device", device}, {"B", c.B}, {"T", c.T},
                     {"tokens_per_s", r.tokens_per_s}, {"step_ms", r.step_ms},
                     {"peak_memory_gib", r.peak_gib}});
    }
    if (!json_path.empty()) {
      std::ofstream out(json_path);
      out << all.dump(1) << "\n";
      if (!out) fail("cannot write ", json_path);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_train: %s\n", e.what());
    return 1;
  }
  return 0;
}
