// The multi-tensor AdamW (Backend::adamw_update_segments, one launch per
// step) against the per-tensor kernel it replaces: the same bits in the f32
// master weights, both moments and the bf16 working copy, with per-tensor
// gradient scales (AdaGC, per-tensor clipping) and a weight-decay mask, on
// fresh random data; segments that start unaligned, gaps that must stay
// untouched, and more segments than one launch takes. A host double-precision
// AdamW checks that both paths did update (agreeing by doing nothing would
// pass the bitwise comparison). Then the same at the model level, through
// GPT::adamw_step with LSGPT_CUDA_ADAMW=per-tensor as the reference.
// Skips with "no CUDA GPU: ..." where there is none.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "../../support/numeric.h"
#include "cuda_test_util.h"
#include "model/gpt.h"
#include "ops/backend.h"

namespace lsgpt {
namespace {
namespace test_cuda_adamw {

using namespace cuda_test;

// The optimizer's flat buffers on the device, and their host copies.
struct State {
  std::vector<float> param, master, grad, m, v;
};

struct DeviceState {
  Buffer param, master, grad, m, v;
  DeviceState(Backend& be, const State& s)
      : param(make_buffer(be, DType::bf16, s.param.size(), &s.param)),
        master(make_buffer(be, DType::f32, s.master.size(), &s.master)),
        grad(make_buffer(be, DType::bf16, s.grad.size(), &s.grad)),
        m(make_buffer(be, DType::f32, s.m.size(), &s.m)),
        v(make_buffer(be, DType::f32, s.v.size(), &s.v)) {}
  State fetch_all(Backend& be) const {
    return {fetch(be, param), fetch(be, master), fetch(be, grad), fetch(be, m), fetch(be, v)};
  }
};

State random_state(size_t n, uint64_t seed) {
  State s;
  s.master = testing::random_vector<float>(n, seed, -1, 1);
  s.param = s.master;
  for (float& x : s.param) x = from_bf16(to_bf16(x));
  s.grad = bf16_values(n, seed + 1, -2, 2);
  s.m = testing::random_vector<float>(n, seed + 2, -0.1, 0.1);
  s.v = testing::random_vector<float>(n, seed + 3, 1e-6, 0.01);
  return s;
}

// Segments of the given lengths, each after a gap of gaps[i] elements;
// AdaGC-like scales in (0.05, 1], decay on every other segment.
std::vector<AdamWSegment> make_segments(const std::vector<size_t>& lengths,
                                        const std::vector<size_t>& gaps, uint64_t seed,
                                        size_t& total) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> scale(0.05, 1.0);
  std::vector<AdamWSegment> segs;
  size_t at = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    at += gaps[i % gaps.size()];
    AdamWSegment s;
    s.begin = at, s.end = at + lengths[i];
    s.weight_decay = i % 2 ? 0.0 : 0.1;
    s.grad_scale = 0.7 * scale(rng);  // a global clip factor times the tensor's own
    segs.push_back(s);
    at = s.end;
  }
  total = at + 3;  // a tail past the last segment, which must stay untouched
  return segs;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// AdamW in double on the host, as the CPU reference computes it.
void host_adamw(State& s, const std::vector<AdamWSegment>& segs, const AdamWSettings& a) {
  const double c1 = 1 - std::pow(a.beta1, double(a.step));
  const double c2 = 1 - std::pow(a.beta2, double(a.step));
  for (const AdamWSegment& seg : segs)
    for (size_t i = seg.begin; i < seg.end; ++i) {
      const double g = seg.grad_scale * s.grad[i];
      const double m = a.beta1 * s.m[i] + (1 - a.beta1) * g;
      const double v = a.beta2 * s.v[i] + (1 - a.beta2) * g * g;
      const double w = s.master[i];
      s.m[i] = float(m), s.v[i] = float(v);
      s.master[i] = float(w - a.lr * (m / c1 / (std::sqrt(v / c2) + a.eps) + seg.weight_decay * w));
    }
}

class CudaAdamW : public ::testing::Test {
 protected:
  void SetUp() override {
    unsetenv("LSGPT_CUDA_ADAMW");
    std::string why_not;
    cuda_ = cuda_backend(why_not);
    if (!cuda_) GTEST_SKIP() << "no CUDA GPU: " << why_not;
  }
  void TearDown() override { unsetenv("LSGPT_CUDA_ADAMW"); }

  // Two AdamW steps both ways from the same random state; expects the same
  // bits, untouched gaps, and agreement with the host reference.
  void check(const std::vector<AdamWSegment>& segs, size_t total, uint64_t seed,
             size_t param_offset) {
    Backend& be = *cuda_;
    const State init = random_state(total + param_offset, seed);
    DeviceState per_tensor(be, init), multi(be, init);
    AdamWSettings s;
    s.lr = 3e-3, s.beta1 = 0.9, s.beta2 = 0.95, s.eps = 1e-8;
    State want = init;
    for (long step = 1; step <= 2; ++step) {
      s.step = step;
      auto at = [&](const Buffer& b, size_t i) {
        return static_cast<char*>(b.mem.get()) + (i + param_offset) * dtype_size(b.type);
      };
      for (const AdamWSegment& seg : segs) {
        AdamWSettings t = s;
        t.weight_decay = seg.weight_decay, t.grad_scale = seg.grad_scale;
        be.adamw_update(at(per_tensor.param, seg.begin), at(per_tensor.master, seg.begin),
                        at(per_tensor.grad, seg.begin), at(per_tensor.m, seg.begin),
                        at(per_tensor.v, seg.begin), seg.end - seg.begin, t);
      }
      be.adamw_update_segments(at(multi.param, 0), at(multi.master, 0), at(multi.grad, 0),
                               at(multi.m, 0), at(multi.v, 0), segs.data(), segs.size(), s);
      std::vector<AdamWSegment> shifted = segs;
      for (AdamWSegment& seg : shifted) seg.begin += param_offset, seg.end += param_offset;
      host_adamw(want, shifted, s);
    }
    be.sync();
    const State a = per_tensor.fetch_all(be), b = multi.fetch_all(be);
    EXPECT_TRUE(same_bits(a.master, b.master)) << "master weights differ";
    EXPECT_TRUE(same_bits(a.m, b.m)) << "first moments differ";
    EXPECT_TRUE(same_bits(a.v, b.v)) << "second moments differ";
    EXPECT_TRUE(same_bits(a.param, b.param)) << "bf16 working copies differ";
    for (size_t i = 0; i < b.param.size(); ++i)
      ASSERT_EQ(b.param[i], from_bf16(to_bf16(b.master[i]))) << "working copy at " << i;
    // Outside the segments nothing moves.
    std::vector<char> inside(init.master.size(), 0);
    for (const AdamWSegment& seg : segs)
      std::fill_n(inside.begin() + seg.begin + param_offset, seg.end - seg.begin, 1);
    for (size_t i = 0; i < inside.size(); ++i)
      if (!inside[i]) {
        ASSERT_EQ(b.master[i], init.master[i]) << "master outside the segments at " << i;
        ASSERT_EQ(b.m[i], init.m[i]) << "m outside the segments at " << i;
      }
    EXPECT_LE(testing::relative_error(b.master, want.master), kF32Tolerance);
    EXPECT_LE(testing::relative_error(b.m, want.m), kF32Tolerance);
    EXPECT_LE(testing::relative_error(b.v, want.v), kF32Tolerance);
  }

  std::unique_ptr<Backend> cuda_;
};

TEST_F(CudaAdamW, OneLaunchMatchesPerTensorBitForBit) {
  // Large aligned tensors over many blocks, GPT-2-like biases and gains,
  // odd lengths and gaps that leave later segments unaligned.
  const std::vector<size_t> lengths = {size_t(1) << 20, 768, 3 * 768, 7, 64, 64, 65536 + 3,
                                       1, 9000, 2 * 8192 + 5, 768};
  size_t total = 0;
  const auto segs = make_segments(lengths, {0, 0, 11, 0, 5}, 61, total);
  check(segs, total, 62, 0);
}

TEST_F(CudaAdamW, UnalignedBuffersAndManyLaunches) {
  // More segments than one launch's table holds (512), short and of random
  // length, on buffers that start 3 elements past an allocation (so the
  // 16-byte path is off for the whole call).
  std::mt19937_64 rng(71);
  std::vector<size_t> lengths(700);
  for (size_t& n : lengths) n = 1 + rng() % 40;
  size_t total = 0;
  const auto segs = make_segments(lengths, {0, 2}, 72, total);
  check(segs, total, 73, 3);
}

TEST_F(CudaAdamW, ModelStepMatchesThePerTensorSwitch) {
  // QK-norm gains and LayerNorm parameters are undecayed, matrices decayed;
  // per-tensor scales as AdaGC gives them.
  ModelConfig cfg;
  cfg.n_layer = 2, cfg.n_head = 4, cfg.d_model = 256, cfg.seq_len = 64, cfg.vocab_size = 500;
  cfg.n_local = {3};
  cfg.window = 16;
  cfg.qk_norm = true;
  cfg.normalize_and_validate();
  const int B = 2, T = cfg.seq_len;
  const auto inputs = testing::random_tokens(size_t(B) * T, cfg.vocab_size, 81);
  const auto targets = testing::random_tokens(size_t(B) * T, cfg.vocab_size, 82);
  GPT ref(cfg, *cuda_), multi(cfg, *cuda_);
  ref.init_random(83), multi.init_random(83);
  const size_t n_tensors = ref.layout().tensors.size();
  std::vector<double> scales = testing::random_vector<double>(n_tensors, 84, 0.05, 1.0);
  AdamWSettings s;
  s.lr = 1e-3, s.weight_decay = 0.1;
  for (long step = 1; step <= 3; ++step) {
    s.step = step;
    for (GPT* model : {&ref, &multi}) {
      model->zero_grad();
      model->forward_backward(inputs.data(), targets.data(), B, T, 1.0);
    }
    ASSERT_TRUE(same_bits(ref.gradients(), multi.gradients())) << "gradients differ at " << step;
    s.grad_scale = 1.0 / ref.grad_norm();
    setenv("LSGPT_CUDA_ADAMW", "per-tensor", 1);
    ref.adamw_step(s, scales);
    unsetenv("LSGPT_CUDA_ADAMW");
    multi.adamw_step(s, scales);
  }
  const size_t n = ref.layout().total;
  std::vector<float> work_ref(n), work_multi(n);
  cuda_->download_f32(work_ref.data(), ref.parameter_buffer(), DType::bf16, n);
  cuda_->download_f32(work_multi.data(), multi.parameter_buffer(), DType::bf16, n);
  EXPECT_TRUE(same_bits(ref.parameters(), multi.parameters())) << "master weights differ";
  EXPECT_TRUE(same_bits(work_ref, work_multi)) << "bf16 working copies differ";
  EXPECT_TRUE(same_bits(ref.adam_m(), multi.adam_m())) << "first moments differ";
  EXPECT_TRUE(same_bits(ref.adam_v(), multi.adam_v())) << "second moments differ";
  // The steps did move the weights.
  GPT initial(cfg, *cuda_);
  initial.init_random(83);
  EXPECT_GT(testing::relative_error(multi.parameters(), initial.parameters()), 1e-4);
}

}  // namespace test_cuda_adamw
}  // namespace
}  // namespace lsgpt
