// The CUDA sampling op against the CPU backend ("cpu", whose op is the plain
// reference of ops/cpu/sampling.cpp) on the same bf16-exact logits, at the
// GPT-2 vocabulary (V = 50257 padded to Vp = 50304, padding filled with huge
// values that must never be read) and at a small odd shape that takes the
// unvectorised path. Settings: greedy, temperature 1, top_k 40, top_p 0.9,
// top_k + top_p, mixed in one batch with an idle row, over several steps
// (the op advances each row's step itself).
//
// The backends share every choice of the rule exactly (integer thresholds);
// only expf/logf may round differently, so a token may differ only where the
// CPU's Gumbel scores of the two candidates are within 1e-4 (a near-tie),
// and that must stay rare. Greedy must match exactly. A row with a NaN gets
// token -2 on the GPU and keeps its step and bookkeeping.
//
// Without a GPU (or without the CUDA backend in the build) every test skips
// with "no CUDA GPU: ...".
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "cuda_test_util.h"
#include "ops/backend.h"
#include "ops/sampling_noise.h"
#include "ops/sampling_spec.h"

namespace lsgpt {
namespace {
namespace test_cuda_sampling {

using namespace cuda_test;

// One backend's copy of a batch: logits, the SampleParams table, tokens and
// the advance/next_input bookkeeping, all in backend memory.
class Batch {
 public:
  Batch(Backend& be, const std::vector<float>& logits, const std::vector<SampleParams>& params,
        int V, int Vp)
      : be_(be),
        B_(int(params.size())),
        V_(V),
        Vp_(Vp),
        logits_(make_buffer(be, be.dtype(), logits.size(), &logits)),
        params_(be, params.size() * sizeof(SampleParams)),
        tokens_(be, params.size() * sizeof(int32_t)),
        advance_(be, params.size() * sizeof(int32_t)),
        next_(be, params.size() * sizeof(int32_t)) {
    be.upload(params_.get(), params.data(), params.size() * sizeof(SampleParams));
    std::vector<int32_t> advance(B_), next(B_, -5);
    for (int b = 0; b < B_; ++b) advance[b] = 100 + b;
    be.upload(advance_.get(), advance.data(), B_ * sizeof(int32_t));
    be.upload(next_.get(), next.data(), B_ * sizeof(int32_t));
  }

  std::vector<int32_t> step() {
    be_.sample_tokens(static_cast<int32_t*>(tokens_.get()), logits_.mem.get(),
                      static_cast<SampleParams*>(params_.get()), B_, V_, Vp_,
                      static_cast<int32_t*>(advance_.get()), static_cast<int32_t*>(next_.get()));
    return ints(tokens_);
  }
  std::vector<int32_t> advance() { return ints(advance_); }
  std::vector<int32_t> next_input() { return ints(next_); }
  std::vector<SampleParams> params() {
    std::vector<SampleParams> p(B_);
    be_.download(p.data(), params_.get(), B_ * sizeof(SampleParams));
    return p;
  }

 private:
  std::vector<int32_t> ints(const DeviceBuffer& buf) {
    std::vector<int32_t> v(B_);
    be_.download(v.data(), buf.get(), B_ * sizeof(int32_t));
    return v;
  }
  Backend& be_;
  int B_, V_, Vp_;
  Buffer logits_;
  DeviceBuffer params_, tokens_, advance_, next_;
};

SampleParams row(float temperature, int top_k, float top_p, uint64_t seed, int active = 1) {
  SampleParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.active = active;
  p.seed = seed;
  p.step = seed % 7;  // rows start at different steps
  return p;
}

// The Gumbel score of token i as the CPU computes it.
float score(const std::vector<float>& logits, int Vp, int b, const SampleParams& p, uint64_t step,
            int i) {
  const float y = logits[size_t(b) * Vp + i] / p.temperature;
  return y + sampling_gumbel(sampling_uniform(p.seed, step, uint32_t(i)));
}

struct Tally {
  int compared = 0, near_ties = 0;
};

// Runs `steps` steps of the batch on both backends and compares tokens and
// bookkeeping.
void compare(Backend& cuda, Backend& cpu, const std::vector<float>& logits,
             const std::vector<SampleParams>& params, int V, int Vp, int steps, Tally& tally) {
  const int B = int(params.size());
  Batch gpu(cuda, logits, params, V, Vp), ref(cpu, logits, params, V, Vp);
  for (int s = 0; s < steps; ++s) {
    const std::vector<int32_t> got = gpu.step(), want = ref.step();
    for (int b = 0; b < B; ++b) {
      const SampleParams& p = params[b];
      if (!p.active) {
        EXPECT_EQ(got[b], -1) << "idle row " << b;
        continue;
      }
      ASSERT_TRUE(want[b] >= 0 && want[b] < V) << want[b];
      ++tally.compared;
      if (got[b] == want[b]) continue;
      ASSERT_TRUE(got[b] >= 0 && got[b] < V) << "row " << b << " step " << s << ": " << got[b];
      ASSERT_GT(p.temperature, 0.0f) << "greedy differs: row " << b << " step " << s << " cuda "
                                     << got[b] << " cpu " << want[b];
      const uint64_t step = p.step + s;
      const float gap = score(logits, Vp, b, p, step, want[b]) -
                        score(logits, Vp, b, p, step, got[b]);
      EXPECT_LT(std::fabs(gap), 1e-4f)
          << "row " << b << " step " << s << " (T " << p.temperature << ", top_k " << p.top_k
          << ", top_p " << p.top_p << "): cuda " << got[b] << " cpu " << want[b]
          << ", Gumbel score gap " << gap;
      ++tally.near_ties;
    }
  }
  const std::vector<SampleParams> pg = gpu.params(), pr = ref.params();
  EXPECT_EQ(gpu.advance(), ref.advance());
  EXPECT_EQ(gpu.next_input(), ref.next_input());
  const std::vector<int32_t> advance = gpu.advance();
  for (int b = 0; b < B; ++b) {
    const int n = params[b].active ? steps : 0;
    EXPECT_EQ(pg[b].step, params[b].step + n) << b;
    EXPECT_EQ(pr[b].step, params[b].step + n) << b;
    EXPECT_EQ(advance[b], 100 + b + n) << b;
    EXPECT_EQ(pg[b].seed, params[b].seed);
  }
}

std::vector<float> random_logits(int B, int V, int Vp, uint64_t seed, double scale) {
  std::vector<float> z = bf16_values(size_t(B) * Vp, seed, -scale, scale);
  for (int b = 0; b < B; ++b)
    for (int v = V; v < Vp; ++v) z[size_t(b) * Vp + v] = 30000.0f + float(v % 7);
  return z;
}

class CudaSampling : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why_not;
    cuda_ = cuda_backend(why_not);
    if (!cuda_) GTEST_SKIP() << "no CUDA GPU: " << why_not;
    cpu_ = make_backend("cpu");
  }
  std::unique_ptr<Backend> cuda_, cpu_;
};

TEST_F(CudaSampling, MatchesTheCpuAtTheGpt2Vocabulary) {
  const int V = 50257, Vp = 50304, steps = 12;
  Tally tally;
  for (uint64_t seed : {1, 2}) {
    // Scale 6: a spread like GPT-2's logits; bf16 rounding makes many exact
    // ties, which the tie rules must settle alike.
    std::vector<float> z = random_logits(5, V, Vp, 1000 + seed, 6.0);
    z[size_t(0) * Vp + 777] = z[size_t(0) * Vp + 40000] = 20.0f;  // a tied maximum
    const std::vector<std::vector<SampleParams>> batches = {
        {row(0, 0, 1, seed), row(1, 0, 1, seed + 10), row(1, 40, 1, seed + 20),
         row(1, 0, 0.9f, seed + 30, 0), row(1, 0, 0.9f, seed + 40)},
        {row(0.8f, 40, 0.9f, seed + 50), row(0, 40, 0.9f, seed + 60),
         row(1.3f, 40, 1, seed + 70), row(1, 0, 1, seed + 80, 0), row(0.7f, 0, 0.5f, seed + 90)},
        {row(1, 1, 1, seed), row(2, 50257, 1, seed), row(1, 0, 0.0f, seed),
         row(1, 50256, 0.999f, seed), row(0.05f, 3, 0.9f, seed)},
    };
    for (const auto& params : batches) compare(*cuda_, *cpu_, z, params, V, Vp, steps, tally);
  }
  EXPECT_GT(tally.compared, 300);
  EXPECT_LE(tally.near_ties, 2) << "of " << tally.compared;
}

TEST_F(CudaSampling, MatchesTheCpuUnvectorised) {
  const int V = 997, Vp = 1001, steps = 30;  // Vp % 8 != 0: element loads
  Tally tally;
  const std::vector<float> z = random_logits(4, V, Vp, 77, 3.0);
  const std::vector<SampleParams> params = {row(0, 0, 1, 1), row(1, 40, 0.9f, 2),
                                            row(1, 0, 1, 3, 0), row(0.9f, 0, 0.8f, 4)};
  compare(*cuda_, *cpu_, z, params, V, Vp, steps, tally);
  EXPECT_LE(tally.near_ties, 1) << "of " << tally.compared;
}

TEST_F(CudaSampling, IsDeterministic) {
  const int V = 50257, Vp = 50304;
  const std::vector<float> z = random_logits(3, V, Vp, 5, 6.0);
  const std::vector<SampleParams> params = {row(1, 0, 1, 9), row(1, 40, 0.9f, 9),
                                            row(0.7f, 0, 0.9f, 9)};
  Batch a(*cuda_, z, params, V, Vp), b(*cuda_, z, params, V, Vp);
  for (int s = 0; s < 20; ++s) ASSERT_EQ(a.step(), b.step()) << "step " << s;
}

TEST_F(CudaSampling, NaNRowGetsMinusTwoAndKeepsItsBookkeeping) {
  const int V = 50257, Vp = 50304;
  std::vector<float> z = random_logits(3, V, Vp, 6, 6.0);
  z[size_t(1) * Vp + 12345] = std::numeric_limits<float>::quiet_NaN();
  z[size_t(2) * Vp + 50300] = std::numeric_limits<float>::quiet_NaN();  // padding: ignored
  for (float temperature : {0.0f, 1.0f}) {
    const std::vector<SampleParams> params = {row(temperature, 0, 1, 1),
                                              row(temperature, 40, 0.9f, 2),
                                              row(temperature, 0, 1, 3)};
    Batch gpu(*cuda_, z, params, V, Vp);
    const std::vector<int32_t> tokens = gpu.step();
    EXPECT_GE(tokens[0], 0);
    EXPECT_EQ(tokens[1], -2);
    EXPECT_GE(tokens[2], 0);
    const std::vector<SampleParams> after = gpu.params();
    EXPECT_EQ(after[0].step, params[0].step + 1);
    EXPECT_EQ(after[1].step, params[1].step);
    EXPECT_EQ(gpu.advance(), (std::vector<int32_t>{101, 101, 103}));
    const std::vector<int32_t> next = gpu.next_input();
    EXPECT_EQ(next[1], -5);
  }
}

}  // namespace test_cuda_sampling
}  // namespace
}  // namespace lsgpt
