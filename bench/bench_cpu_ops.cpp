// Times each CPU op at the shapes of one GPT-2 small layer (T = 1024 tokens,
// C = 768) and the classifier over the padded GPT-2 vocabulary, so the cost
// of a training step can be split by op. Usage: bench_cpu_ops [tokens] [reps]
// Prints milliseconds per call (median of reps) and GFLOP/s for the matmuls,
// then one layer's non-attention ops back to back against the sum of their
// separate times: the gap is what switching between OpenBLAS's threads and
// OpenMP's costs.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "ops/cpu/adamw.h"
#include "ops/cpu/classifier.h"
#include "ops/cpu/embedding.h"
#include "ops/cpu/gelu.h"
#include "ops/cpu/layernorm.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/residual.h"

namespace {

std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

int reps = 5;

// Median wall time of fn over reps calls, after one warm-up call.
double time_ms(const std::function<void()>& fn) {
  fn();
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const auto t1 = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void report(const std::string& name, double ms, double flops = 0) {
  if (flops > 0)
    std::printf("%-34s %9.2f ms  %7.1f GFLOP/s\n", name.c_str(), ms, flops / ms * 1e-6);
  else
    std::printf("%-34s %9.2f ms\n", name.c_str(), ms);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace lsgpt;
  const int N = argc > 1 ? std::atoi(argv[1]) : 1024;
  reps = argc > 2 ? std::atoi(argv[2]) : 5;
  const int C = 768, V = 50257, Vp = 50304;
  std::printf("N = %d tokens, C = %d, OpenMP threads %d\n", N, C, omp_get_max_threads());

  auto x = random_floats(size_t(N) * C, 1);
  auto y = random_floats(size_t(N) * C, 2);
  auto out = random_floats(size_t(N) * 4 * C, 3);
  auto pre = random_floats(size_t(N) * 4 * C, 4);
  auto dout = random_floats(size_t(N) * 4 * C, 5);
  auto dinp = random_floats(size_t(N) * 4 * C, 6);

  // Matmuls of one layer: qkv (C -> 3C), attention projection (C -> C),
  // MLP up with fused GELU (C -> 4C) and down (4C -> C).
  struct Mm {
    const char* name;
    int C, OC;
    bool gelu;
  };
  const Mm layer[] = {Mm{"qkv  768->2304", C, 3 * C, false}, Mm{"proj 768->768", C, C, false},
                      Mm{"fc   768->3072 +gelu", C, 4 * C, true},
                      Mm{"fc2  3072->768", 4 * C, C, false}};
  double separate_ms = 0;
  for (const Mm& m : layer) {
    auto inp = random_floats(size_t(N) * m.C, 7);
    auto w = random_floats(size_t(m.OC) * m.C, 8, 0.05f);
    auto b = random_floats(m.OC, 9);
    auto dw = random_floats(w.size(), 10), db = random_floats(m.OC, 11);
    auto di = random_floats(inp.size(), 12);
    const double flops = 2.0 * N * m.C * m.OC;
    const double fwd = time_ms([&] {
      cpu::matmul_forward(out.data(), m.gelu ? pre.data() : nullptr, inp.data(), w.data(), b.data(),
                          N, m.C, m.OC);
    });
    report(std::string("matmul fwd ") + m.name, fwd, flops);
    const double bwd = time_ms([&] {
      cpu::matmul_backward(di.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                           m.gelu ? pre.data() : nullptr, static_cast<const float*>(nullptr), N,
                           m.C, m.OC);
    });
    report(std::string("matmul bwd ") + m.name, bwd, 2 * flops);
    separate_ms += fwd + bwd;
  }

  auto lnw = random_floats(C, 13), lnb = random_floats(C, 14);
  std::vector<float> mean(N), rstd(N);
  auto dlnw = random_floats(C, 15), dlnb = random_floats(C, 16);
  auto ln_fwd = [&] {
    cpu::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), lnw.data(), lnb.data(), N,
                           C);
  };
  auto ln_bwd = [&] {
    cpu::layernorm_backward<float>(dinp.data(), dlnw.data(), dlnb.data(), nullptr, dout.data(),
                                   x.data(), lnw.data(), mean.data(), rstd.data(), N, C);
  };
  const double ln_ms = time_ms(ln_fwd) + time_ms(ln_bwd);
  report("layernorm fwd", time_ms(ln_fwd));
  report("layernorm bwd", time_ms(ln_bwd));
  const size_t n4 = size_t(N) * 4 * C;
  report("gelu fwd (N x 4C)", time_ms([&] { cpu::gelu_forward(out.data(), pre.data(), n4); }));
  report("gelu bwd (N x 4C)",
         time_ms([&] { cpu::gelu_backward(dinp.data(), pre.data(), dout.data(), n4); }));
  report("residual fwd",
         time_ms([&] { cpu::residual_forward(y.data(), x.data(), dout.data(), size_t(N) * C); }));
  report("add_inplace", time_ms([&] { cpu::add_inplace(y.data(), x.data(), size_t(N) * C); }));
  {
    // One layer without attention, as the model calls it: 2 layernorms
    // forward and backward, the 4 matmuls forward and backward, 2 residual
    // adds, 2 gradient adds.
    std::vector<std::vector<float>> ws, dws, bs, dbs, ins, dis;
    for (const Mm& m : layer) {
      ws.push_back(random_floats(size_t(m.OC) * m.C, 30, 0.05f));
      dws.push_back(random_floats(size_t(m.OC) * m.C, 31));
      bs.push_back(random_floats(m.OC, 32));
      dbs.push_back(random_floats(m.OC, 33));
      ins.push_back(random_floats(size_t(N) * m.C, 34));
      dis.push_back(random_floats(size_t(N) * m.C, 35));
    }
    double add_ms = time_ms([&] { cpu::add_inplace(y.data(), x.data(), size_t(N) * C); });
    const double together = time_ms([&] {
      for (int i = 0; i < 4; ++i) {
        if (i % 2 == 0) ln_fwd();
        cpu::matmul_forward(out.data(), layer[i].gelu ? pre.data() : nullptr, ins[i].data(),
                            ws[i].data(), bs[i].data(), N, layer[i].C, layer[i].OC);
        if (i % 2 == 1) cpu::residual_forward(y.data(), x.data(), dout.data(), size_t(N) * C);
      }
      for (int i = 3; i >= 0; --i) {
        if (i % 2 == 1) cpu::add_inplace(y.data(), x.data(), size_t(N) * C);
        cpu::matmul_backward(dis[i].data(), dws[i].data(), dbs[i].data(), dout.data(),
                             ins[i].data(), ws[i].data(), layer[i].gelu ? pre.data() : nullptr,
                             static_cast<const float*>(nullptr), N, layer[i].C, layer[i].OC);
        if (i % 2 == 0) ln_bwd();
      }
    });
    report("one layer without attention", together);
    report("  sum of its ops timed apart", separate_ms + 2 * ln_ms + 4 * add_ms);
  }

  {
    auto wte = random_floats(size_t(Vp) * C, 17), wpe = random_floats(size_t(N) * C, 18);
    std::vector<int32_t> tokens(N);
    std::mt19937 rng(19);
    for (auto& t : tokens) t = int32_t(rng() % V);
    report("embedding fwd", time_ms([&] {
             cpu::embedding_forward(y.data(), tokens.data(), wte.data(), wpe.data(), 1, N, C, 0);
           }));
    report("embedding bwd", time_ms([&] {
             cpu::embedding_backward(wte.data(), wpe.data(), x.data(), tokens.data(), 1, N, C);
           }));
    // The tied classifier: logits = x @ wte^T, then softmax cross-entropy.
    auto logits = random_floats(size_t(N) * Vp, 20, 4.0f);
    const auto logits0 = logits;
    std::vector<float> losses(N);
    report("classifier matmul fwd (C -> Vp)", time_ms([&] {
             cpu::matmul_forward(logits.data(), static_cast<float*>(nullptr), x.data(), wte.data(),
                                 static_cast<const float*>(nullptr), N, C, Vp);
           }),
           2.0 * N * C * Vp);
    report("softmax_cross_entropy +grad", time_ms([&] {
             std::copy(logits0.begin(), logits0.end(), logits.begin());
             cpu::softmax_cross_entropy(losses.data(), logits.data(), tokens.data(), N, V, Vp,
                                        1.0 / N, true);
           }));
    report("  (of which: copying the logits)",
           time_ms([&] { std::copy(logits0.begin(), logits0.end(), logits.begin()); }));
  }

  {
    const size_t n = size_t(4) * C * C;  // one MLP matrix, 2.4M parameters
    auto p = random_floats(n, 21), g = random_floats(n, 22), m = random_floats(n, 23);
    auto v = random_floats(n, 24, 0.01f);
    for (auto& e : v) e = std::abs(e);
    AdamWSettings s;
    s.lr = 1e-4, s.weight_decay = 0.1;
    report("adamw (2.4M params)",
           time_ms([&] { cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), n, s); }));
    double sink = 0;
    report("sum_squares (2.4M)", time_ms([&] { sink += cpu::sum_squares(g.data(), n); }));
    if (sink < 0) std::printf("%g\n", sink);
  }
  return 0;
}
