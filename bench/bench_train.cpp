// Training throughput (forward + backward + AdamW) of whole models, in
// tokens/s, on random tokens. A benchmark program, not a test:
//   bench_train [--device cpu|cuda] [--steps N] [--config FILE --batch B --seq T]...
// Without --config it measures the default config and GPT-2 small (LS and
// MHSA) at T = 1024.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/gpt.h"

using namespace lsgpt;

namespace {

struct Case {
  std::string config;
  int B, T;
};

double measure(const Case& c, const std::string& device, int steps, int warmup) {
  ModelConfig cfg = ModelConfig::load(std::string(LSGPT_SOURCE_DIR) + "/" + c.config);
  auto backend = make_backend(device);
  GPT model(cfg, *backend);
  model.init_random(1);
  model.init_optimizer();
  std::mt19937 rng(7);
  std::vector<int32_t> in(size_t(c.B) * c.T), tg(size_t(c.B) * c.T);
  AdamWSettings s;
  s.lr = 1e-4;
  double seconds = 0;
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
    if (i >= warmup) seconds += dt;
  }
  return double(steps) * c.B * c.T / seconds;
}

}  // namespace

int main(int argc, char** argv) {
  std::string device = "cpu";
  int steps = 3, warmup = 1;
  std::vector<Case> cases;
  for (int i = 1; i < argc; ++i) {
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (!std::strcmp(argv[i], "--device")) device = next();
    else if (!std::strcmp(argv[i], "--steps")) steps = std::stoi(next());
    else if (!std::strcmp(argv[i], "--warmup")) warmup = std::stoi(next());
    else if (!std::strcmp(argv[i], "--case")) {
      // --case CONFIG:B:T
      const std::string spec = next();
      const auto a = spec.find(':'), b = spec.rfind(':');
      cases.push_back({spec.substr(0, a), std::stoi(spec.substr(a + 1, b - a - 1)),
                       std::stoi(spec.substr(b + 1))});
    } else {
      std::fprintf(stderr, "usage: bench_train [--device cpu|cuda] [--steps N] [--warmup N] "
                           "[--case configs/x.json:B:T]...\n");
      return 2;
    }
  }
  if (cases.empty()) {
    cases = {{"configs/default.json", 8, 256},
             {"configs/gpt2-small.json", 1, 1024},
             {"configs/gpt2-small-mhsa.json", 1, 1024}};
  }
  try {
    std::printf("| config | device | batch x T | tokens/s |\n|---|---|---|---|\n");
    for (const Case& c : cases) {
      const double tps = measure(c, device, steps, warmup);
      std::printf("| %s | %s | %d x %d | %.0f |\n", c.config.c_str(), device.c_str(), c.B, c.T,
                  tps);
      std::fflush(stdout);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_train: %s\n", e.what());
    return 1;
  }
  return 0;
}
