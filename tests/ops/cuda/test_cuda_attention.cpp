// The CUDA LS flash-attention (forward, backward with the span decomposition,
// decoding) against the CPU backend in double precision ("cpu64") on fresh
// random inputs. Both backends see the same bf16-representable inputs, so the
// measured error is the kernels' own: bf16 tensor-core products with f32
// accumulation, P and dS rounded to bf16 before their second product.
//
// Tolerances (normwise ||cuda - cpu64|| / ||cpu64||):
//   out, kbar, dq, dk, dv (bf16): 1e-2. Rounding the output alone gives
//     ~2e-3 (unit roundoff 2^-9); bf16 P and dS add about as much again.
//   lse, max_logit (f32 by design): 1e-5. They come from f32 sums of exact
//     bf16 x bf16 products, so anything above ~1e-6 is a bug.
// Gradients that vanish in exact arithmetic (at T = 1, P = 1 and dq = dk = 0)
// are measured against an RMS floor of 1e-3 instead of their own zero norm.
// Every output buffer starts as NaN, so an unwritten element fails.
//
// Without a GPU (CI) or without the CUDA backend in the build every test
// skips with "no CUDA GPU: ...".
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "../../support/numeric.h"
#include "core/dtype.h"
#include "core/error.h"
#include "ops/backend.h"
#include "cuda_test_util.h"

namespace lsgpt {
namespace {
namespace test_cuda_attention {

using testing::relative_error;
using namespace cuda_test;

struct AttentionResult {
  std::vector<float> out, lse, max_logit, kbar, dqkv;
};

// `out_offset`: out starts that many elements into its buffer (and `out`
// is returned with them in front), to test an out that is not 16-byte aligned.
AttentionResult run_attention(Backend& be, const AttentionSpec& spec,
                              const std::vector<float>& qkv, const std::vector<float>& dout,
                              size_t out_offset = 0) {
  const size_t BT = size_t(spec.B) * spec.T, C = spec.C();
  const DType w = be.dtype(), a = be.acc_dtype();
  Buffer qkv_b = make_buffer(be, w, BT * 3 * C, &qkv);
  Buffer dout_b = make_buffer(be, w, BT * C, &dout);
  Buffer out_b = make_buffer(be, w, BT * C + out_offset, nullptr);
  void* out = static_cast<char*>(out_b.mem.get()) + out_offset * dtype_size(w);
  Buffer lse_b = make_buffer(be, a, size_t(spec.B) * spec.n_head * spec.T, nullptr);
  Buffer max_b = make_buffer(be, a, spec.n_head, nullptr);
  Buffer kbar_b = make_buffer(be, w, spec.span.needs_kbar() ? BT * C : 0, nullptr);
  Buffer dqkv_b = make_buffer(be, w, BT * 3 * C, nullptr);
  void* kbar = spec.span.needs_kbar() ? kbar_b.mem.get() : nullptr;
  be.attention_forward(out, lse_b.mem.get(), max_b.mem.get(), kbar, qkv_b.mem.get(), spec);
  be.attention_backward(dqkv_b.mem.get(), nullptr, dout_b.mem.get(), qkv_b.mem.get(), out,
                        lse_b.mem.get(), kbar, spec);
  be.sync();
  return {fetch(be, out_b), fetch(be, lse_b), fetch(be, max_b), fetch(be, kbar_b),
          fetch(be, dqkv_b)};
}

struct Setting {
  std::string name;
  int local_heads;  // -1: all but one
  int window;       // 0: 100 at T >= 1000, else 5
  SpanLayer span;
};

SpanLayer span_cross() {
  SpanLayer s;
  s.q = {true, SpanBasis::cross, 1.5, 0.7};
  s.k = {true, SpanBasis::cross, 0.5, 1.3};
  return s;
}
SpanLayer span_self() {
  SpanLayer s;
  s.q = {true, SpanBasis::self, 2.0, 0.8};
  s.k = {true, SpanBasis::self, 0.6, 1.1};
  s.v = {true, SpanBasis::self, 1.7, 0.9};
  return s;
}
SpanLayer span_mixed() {  // cross on q without qbar, self on k and v
  SpanLayer s;
  s.q = {true, SpanBasis::cross, 0.5, 1.0};
  s.k = {true, SpanBasis::self, 1.5, 1.0};
  s.v = {true, SpanBasis::self, 0.75, 1.2};
  return s;
}

struct Case {
  Setting setting;
  int T, D;
};

std::vector<Case> all_cases() {
  const std::vector<Setting> settings = {
      {"MHSA", 0, 1, {}},
      {"LS", -1, 0, {}},
      {"LSHalfWide", -2, 70, {}},
      {"SpanCrossLS", -1, 0, span_cross()},
      {"SpanSelfLS", -1, 0, span_self()},
      {"SpanMixedMHSA", 0, 1, span_mixed()},
  };
  std::vector<Case> cases;
  for (const Setting& s : settings)
    for (int T : {1, 7, 100, 1000})
      for (int D : {64, 128}) cases.push_back({s, T, D});
  return cases;
}

AttentionSpec spec_of(const Case& c) {
  AttentionSpec spec;
  spec.T = c.T;
  spec.head_dim = c.D;
  spec.n_head = c.D == 64 ? 4 : 2;
  spec.B = c.T >= 1000 ? 1 : 2;
  const int L = c.setting.local_heads;
  spec.n_local = L == -1 ? spec.n_head - 1 : L == -2 ? spec.n_head / 2 : L;
  spec.window = c.setting.window ? c.setting.window : (c.T >= 1000 ? 100 : 5);
  spec.span = c.setting.span;
  return spec;
}

class CudaAttentionVsCpu64 : public ::testing::TestWithParam<Case> {};

TEST_P(CudaAttentionVsCpu64, ForwardAndBackward) {
  REQUIRE_CUDA(cuda);
  const AttentionSpec spec = spec_of(GetParam());
  const size_t BT = size_t(spec.B) * spec.T, C = spec.C();
  const uint64_t seed = uint64_t(spec.T) * 1000 + spec.head_dim + spec.n_local;
  // Logits of a few units: softmax neither uniform nor one-hot.
  const auto qkv = bf16_values(BT * 3 * C, seed, -2, 2);
  const auto dout = bf16_values(BT * C, seed + 1, -1, 1);
  std::unique_ptr<Backend> cpu64 = make_backend("cpu64");
  const AttentionResult got = run_attention(*cuda, spec, qkv, dout);
  const AttentionResult ref = run_attention(*cpu64, spec, qkv, dout);

  EXPECT_LE(relative_error(got.out, ref.out), kBf16Tolerance) << "out";
  EXPECT_LE(relative_error(got.lse, ref.lse), kF32Tolerance) << "lse";
  EXPECT_LE(relative_error(got.max_logit, ref.max_logit), kF32Tolerance) << "max_logit";
  if (spec.span.needs_kbar()) {
    EXPECT_LE(relative_error(got.kbar, ref.kbar), kBf16Tolerance) << "kbar";
  }
  const char* names[3] = {"dq", "dk", "dv"};
  for (int part = 0; part < 3; ++part)
    EXPECT_LE(floored_error(qkv_part(got.dqkv, part, C), qkv_part(ref.dqkv, part, C)),
              kBf16Tolerance)
        << names[part];
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaAttentionVsCpu64, ::testing::ValuesIn(all_cases()),
                         [](const auto& info) {
                           return info.param.setting.name + "_T" + std::to_string(info.param.T) +
                                  "_D" + std::to_string(info.param.D);
                         });

AttentionSpec long_ls_spec(int D) {
  AttentionSpec spec;
  spec.B = 2, spec.T = 1000, spec.head_dim = D, spec.n_head = 4, spec.n_local = 3;
  spec.window = 100;
  return spec;
}

// Fixed inputs and configuration give the same bits every time (no atomics):
// what makes a resumed run reproduce an uninterrupted one.
TEST(CudaAttention, Deterministic) {
  REQUIRE_CUDA(cuda);
  for (int D : {64, 128}) {
    AttentionSpec spec = long_ls_spec(D);
    spec.span = span_cross();
    spec.span.v = {true, SpanBasis::self, 1.2, 0.9};
    const size_t BT = size_t(spec.B) * spec.T, C = spec.C();
    const auto qkv = bf16_values(BT * 3 * C, 21, -2, 2);
    const auto dout = bf16_values(BT * C, 22, -1, 1);
    const AttentionResult a = run_attention(*cuda, spec, qkv, dout);
    const AttentionResult b = run_attention(*cuda, spec, qkv, dout);
    EXPECT_EQ(a.out, b.out);
    EXPECT_EQ(a.lse, b.lse);
    EXPECT_EQ(a.kbar, b.kbar);
    EXPECT_EQ(a.dqkv, b.dqkv);
  }
}

// Span switched on with all alphas 1 is the canonical gradient: the projection
// then computes 1 * g + 0 * u, which is g exactly.
TEST(CudaAttention, SpanWithUnitAlphasIsCanonical) {
  REQUIRE_CUDA(cuda);
  for (int D : {64, 128}) {
    AttentionSpec plain = long_ls_spec(D);
    AttentionSpec unit = plain;
    unit.span.q = {true, SpanBasis::cross, 1.0, 1.0};
    unit.span.k = {true, SpanBasis::cross, 1.0, 1.0};
    unit.span.v = {true, SpanBasis::self, 1.0, 1.0};
    const size_t BT = size_t(plain.B) * plain.T, C = plain.C();
    const auto qkv = bf16_values(BT * 3 * C, 31, -2, 2);
    const auto dout = bf16_values(BT * C, 32, -1, 1);
    const AttentionResult a = run_attention(*cuda, plain, qkv, dout);
    const AttentionResult b = run_attention(*cuda, unit, qkv, dout);
    EXPECT_EQ(a.out, b.out);
    EXPECT_EQ(a.lse, b.lse);
    EXPECT_LE(relative_error(b.dqkv, a.dqkv), 1e-6);
    // And a non-trivial setting does change the gradient.
    unit.span.q.alpha_par = 2.0;
    const AttentionResult c = run_attention(*cuda, unit, qkv, dout);
    EXPECT_GT(relative_error(c.dqkv, a.dqkv), 1e-3);
  }
}

// The backward's delta kernel reads out with 16-byte loads where out is
// 16-byte aligned and with 4-byte loads where it is only 4-byte aligned (the
// attention ops' stated requirement). Both give the same gradient up to the
// order of delta's f32 sums.
TEST(CudaAttention, BackwardWithOutOnlyFourByteAligned) {
  REQUIRE_CUDA(cuda);
  for (int D : {64, 128}) {
    const AttentionSpec spec = long_ls_spec(D);
    const size_t BT = size_t(spec.B) * spec.T, C = spec.C();
    const auto qkv = bf16_values(BT * 3 * C, 35, -2, 2);
    const auto dout = bf16_values(BT * C, 36, -1, 1);
    const AttentionResult aligned = run_attention(*cuda, spec, qkv, dout);
    const AttentionResult shifted = run_attention(*cuda, spec, qkv, dout, 2);  // 4 bytes in
    EXPECT_EQ(std::vector<float>(shifted.out.begin() + 2, shifted.out.end()), aligned.out);
    EXPECT_LE(relative_error(shifted.dqkv, aligned.dqkv), 1e-3);
    double norm2 = 0;
    for (float g : aligned.dqkv) norm2 += double(g) * g;
    EXPECT_GT(norm2, 1.0) << "a vanishing gradient would make the comparison empty";
  }
}

// A key that every query all but ignores (logit ~92 below the others): its
// attention column sum is subnormal. qbar's normaliser 1/sum then overflowed
// and, with the bf16 product flushing those weights to zero, 0 * inf turned
// the whole dK NaN (an H200 training run, 2026-11-30). Such a key has no
// direction on either backend and its gradient stays finite and canonical.
TEST(CudaAttention, SpanCrossWithAnIgnoredKeyStaysFinite) {
  REQUIRE_CUDA(cuda);
  AttentionSpec spec;
  spec.B = 1, spec.T = 64, spec.n_head = 1, spec.head_dim = 64, spec.n_local = 0;
  spec.span = span_cross();
  const size_t T = spec.T, C = spec.C(), ignored = 40;
  std::vector<float> qkv = bf16_values(T * 3 * C, 41, -0.05, 0.05);
  for (size_t i = 0; i < T; ++i)
    for (size_t d = 0; d < C; ++d) {
      qkv[i * 3 * C + d] += 2.0f;  // every query along a = (2, ..., 2)
      if (i == ignored) qkv[i * 3 * C + C + d] = -5.75f;  // k = -2.875 a: logit -92
    }
  for (float& x : qkv) x = from_bf16(to_bf16(x));
  const auto dout = bf16_values(T * C, 42, -1, 1);
  std::unique_ptr<Backend> cpu64 = make_backend("cpu64");
  const AttentionResult got = run_attention(*cuda, spec, qkv, dout);
  const AttentionResult ref = run_attention(*cpu64, spec, qkv, dout);
  for (float g : got.dqkv) ASSERT_TRUE(std::isfinite(g));
  const char* names[3] = {"dq", "dk", "dv"};
  for (int part = 0; part < 3; ++part)
    EXPECT_LE(floored_error(qkv_part(got.dqkv, part, C), qkv_part(ref.dqkv, part, C)),
              kBf16Tolerance)
        << names[part];
}

// Token-by-token decoding over the KV cache (local ring buffers wrapping many
// times) reproduces the forward pass row by row, and cpu64's decode.
TEST(CudaAttention, DecodeMatchesForward) {
  REQUIRE_CUDA(cuda);
  std::unique_ptr<Backend> cpu64 = make_backend("cpu64");
  for (int D : {32, 64, 128}) {
    DecodeSpec ds;
    ds.B = 3, ds.n_head = 4, ds.head_dim = D, ds.n_local = 2, ds.window = 7;
    const int T = 40;
    ds.max_T = T + 5;
    const int B = ds.B, C = ds.C();
    const auto qkv_steps = bf16_values(size_t(T) * B * 3 * C, 40 + D, -2, 2);  // [T, B, 3C]

    auto decode_all = [&](Backend& be) {
      const DType w = be.dtype();
      Buffer qkv_b = make_buffer(be, w, qkv_steps.size(), &qkv_steps);
      Buffer kl = make_buffer(be, w, size_t(B) * ds.n_local * ds.local_slots() * D, nullptr);
      Buffer vl = make_buffer(be, w, kl.n, nullptr);
      Buffer kg = make_buffer(be, w, size_t(B) * (ds.n_head - ds.n_local) * ds.max_T * D, nullptr);
      Buffer vg = make_buffer(be, w, kg.n, nullptr);
      Buffer out = make_buffer(be, w, size_t(T) * B * C, nullptr);
      const size_t es = dtype_size(w);
      for (int pos = 0; pos < T; ++pos) {
        DecodeSpec step = ds;
        step.pos = pos;
        be.attention_decode(static_cast<char*>(out.mem.get()) + size_t(pos) * B * C * es,
                            kl.mem.get(), vl.mem.get(), kg.mem.get(), vg.mem.get(),
                            static_cast<const char*>(qkv_b.mem.get()) + size_t(pos) * B * 3 * C * es,
                            step);
      }
      return fetch(be, out);
    };
    const std::vector<float> got = decode_all(*cuda);
    const std::vector<float> ref = decode_all(*cpu64);
    EXPECT_LE(relative_error(got, ref), kBf16Tolerance) << "decode vs cpu64, D=" << D;

    // The same tokens as one sequence through the CUDA forward.
    AttentionSpec spec;
    spec.B = B, spec.T = T, spec.n_head = ds.n_head, spec.head_dim = D;
    spec.n_local = ds.n_local, spec.window = ds.window;
    std::vector<float> qkv_seq(qkv_steps.size());
    for (int t = 0; t < T; ++t)
      for (int b = 0; b < B; ++b)
        std::memcpy(&qkv_seq[(size_t(b) * T + t) * 3 * C], &qkv_steps[(size_t(t) * B + b) * 3 * C],
                    3 * C * sizeof(float));
    const std::vector<float> dout(size_t(B) * T * C, 1.0f);
    const AttentionResult fwd = run_attention(*cuda, spec, qkv_seq, dout);
    std::vector<float> fwd_steps(got.size());
    for (int t = 0; t < T; ++t)
      for (int b = 0; b < B; ++b)
        std::memcpy(&fwd_steps[(size_t(t) * B + b) * C], &fwd.out[(size_t(b) * T + t) * C],
                    C * sizeof(float));
    EXPECT_LE(relative_error(got, fwd_steps), kBf16Tolerance) << "decode vs forward, D=" << D;
  }
}

TEST(CudaBackend, OutOfMemoryIsOneClearError) {
  REQUIRE_CUDA(cuda);
  try {
    cuda->alloc(size_t(1) << 50);  // 1 PiB
    FAIL() << "a 1 PiB allocation succeeded";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("out of GPU memory: requested 1073741824 MiB, free "), std::string::npos)
        << msg;
    EXPECT_NE(msg.find(" MiB of "), std::string::npos) << msg;
  }
  // The failed allocation leaves the backend usable.
  DeviceBuffer ok(*cuda, 1 << 20);
  cuda->zero(ok.get(), 1 << 20);
  cuda->sync();
}

TEST(CudaBackend, UnsupportedHeadDimIsOneClearError) {
  REQUIRE_CUDA(cuda);
  AttentionSpec spec;
  spec.B = 1, spec.T = 4, spec.n_head = 2, spec.head_dim = 12;
  DeviceBuffer qkv(*cuda, 2 * 4 * 3 * 24), out(*cuda, 2 * 4 * 24), lse(*cuda, 4 * 8),
      max_logit(*cuda, 8);
  try {
    cuda->attention_forward(out.get(), lse.get(), max_logit.get(), nullptr, qkv.get(), spec);
    FAIL() << "head_dim 12 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim 12 is not supported"), std::string::npos)
        << e.what();
  }
}

TEST(CudaBackend, ReportsItsTypes) {
  REQUIRE_CUDA(cuda);
  EXPECT_EQ(cuda->name(), "cuda");
  EXPECT_EQ(cuda->dtype(), DType::bf16);
  EXPECT_EQ(cuda->acc_dtype(), DType::f32);
}

}  // namespace test_cuda_attention
}  // namespace
}  // namespace lsgpt
