// The Hopper (sm_90a, wgmma) LS flash-attention forward, every variant of
// it (LSGPT_ATTENTION_SM90_FORWARD = base, ws, ws_persistent, ws_dynamic), against the
// sm_80 kernel it replaces (LSGPT_ATTENTION_SM80=1 selects that one) and
// against the CPU backend in double precision ("cpu64"), on fresh random
// bf16-exact inputs: out, the row log-sum-exp, the per-head max logit and,
// with the span decomposition's cross basis on q, kbar = P K. The
// warp-specialised variants own 128 queries a block at D 128 and 192 at D 64
// (two or three consumer warpgroups): T 1, 7 and 100 leave the later
// warpgroups empty or partly past T, and local heads at w 100 and 256 make
// the warpgroups' bands differ by a tile. ws loads with TMA: its
// zero fill past T and past the real head dim (48, 96) is the copy
// engine's out-of-bounds fill, checked by the same cases; ws_persistent
// walks several query blocks per block wherever there are more than the
// GPU's multiprocessors (T 4096: 32 per (batch row, head), B = 1, 2-4
// heads, so only on the larger cases; the Persistent test covers more).
//
// Tolerances (normwise ||a - b|| / ||b||):
//   vs cpu64: out, kbar 1e-2, lse and max_logit 1e-5 (as
//     test_cuda_attention.cpp).
//   vs sm_80: out, kbar 2e-3, lse and max_logit 1e-6. Both kernels round the same
//     f32 quantities to bf16 (P, out) and differ only in the order of their
//     f32 sums (wgmma against mma.sync), so a difference is an occasional
//     one-ulp rounding flip (~1e-4 normwise); a layout or mask bug is O(1).
//
// Without a GPU every test skips with "no CUDA GPU: ..."; on a GPU that is
// not compute capability 9.0 the parity tests skip ("not a Hopper GPU").
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "../../support/numeric.h"
#include "core/error.h"
#include "cuda_test_util.h"
#include "hopper_test_util.h"
#include "ops/backend.h"

#ifdef LSGPT_HAVE_CUDA
#include "ops/cuda/cuda_backend.h"
#endif

namespace lsgpt {
namespace {
namespace test_cuda_attention_forward_sm90 {

using testing::relative_error;
using namespace cuda_test;

struct ForwardResult {
  std::vector<float> out, lse, max_logit, kbar;
};

ForwardResult run_forward(Backend& be, const AttentionSpec& spec, const std::vector<float>& qkv) {
  const size_t BT = size_t(spec.B) * spec.T, C = spec.C();
  const DType w = be.dtype(), a = be.acc_dtype();
  Buffer qkv_b = make_buffer(be, w, BT * 3 * C, &qkv);
  Buffer out_b = make_buffer(be, w, BT * C, nullptr);
  Buffer lse_b = make_buffer(be, a, size_t(spec.B) * spec.n_head * spec.T, nullptr);
  Buffer max_b = make_buffer(be, a, spec.n_head, nullptr);
  Buffer kbar_b = make_buffer(be, w, spec.span.needs_kbar() ? BT * C : 0, nullptr);
  be.attention_forward(out_b.mem.get(), lse_b.mem.get(), max_b.mem.get(),
                       spec.span.needs_kbar() ? kbar_b.mem.get() : nullptr, qkv_b.mem.get(), spec);
  be.sync();
  return {fetch(be, out_b), fetch(be, lse_b), fetch(be, max_b), fetch(be, kbar_b)};
}

// B batch rows of T tokens, n_head heads of head_dim D, the first n_local
// of them local with a window of 100 keys.
AttentionSpec small_spec(int B, int T, int D, int n_head, int n_local) {
  AttentionSpec spec;
  spec.B = B, spec.T = T, spec.head_dim = D, spec.n_head = n_head, spec.n_local = n_local;
  spec.window = 100;
  return spec;
}

struct Setting {
  std::string name;
  int local_heads;  // -1: all but one, -2: half
  int window;       // 0: 100 at T >= 1000, else 5
  bool kbar = false;
};

using Case = ParityCase<Setting>;

std::vector<Case> all_cases() {
  const std::vector<Setting> settings = {
      {"MHSA", 0, 1},
      {"LS", -1, 0},
      {"LS100", -1, 100},  // all but one head local at w = 100, at every T
      {"LSHalf256", -2, 256},
      {"LSHalfWide", -2, 70},
      {"LSLongWindow", -1, 300},  // a band over several 64-key tiles, cut mid-tile
      {"KbarLS", -1, 0, true},
      {"KbarMHSA", 0, 1, true},
  };
  return parity_cases(settings, settings[1], settings[2]);
}

AttentionSpec spec_of(const Case& c) {
  const int window = c.setting.window ? c.setting.window : (c.T >= 1000 ? 100 : 5);
  AttentionSpec spec = parity_spec(c.T, c.D, c.setting.local_heads, window);
  if (c.setting.kbar) spec.span.q = {true, SpanBasis::cross, 1.5, 0.7};  // the forward needs kbar
  return spec;
}

// One variant's results against the sm_80 kernel's and cpu64's.
void expect_matches(const ForwardResult& sm90, const ForwardResult& sm80, const ForwardResult& ref,
                    const AttentionSpec& spec) {
  EXPECT_LE(relative_error(sm90.out, ref.out), kBf16Tolerance) << "out vs cpu64";
  EXPECT_LE(relative_error(sm90.lse, ref.lse), kF32Tolerance) << "lse vs cpu64";
  EXPECT_LE(relative_error(sm90.max_logit, ref.max_logit), kF32Tolerance) << "max_logit vs cpu64";
  EXPECT_LE(relative_error(sm90.out, sm80.out), 2e-3) << "out vs sm_80";
  EXPECT_LE(relative_error(sm90.lse, sm80.lse), 1e-6) << "lse vs sm_80";
  EXPECT_LE(relative_error(sm90.max_logit, sm80.max_logit), 1e-6) << "max_logit vs sm_80";
  if (spec.span.needs_kbar()) {
    EXPECT_LE(relative_error(sm90.kbar, ref.kbar), kBf16Tolerance) << "kbar vs cpu64";
    EXPECT_LE(relative_error(sm90.kbar, sm80.kbar), 2e-3) << "kbar vs sm_80";
  }
}

class CudaAttentionForwardSm90 : public ::testing::TestWithParam<Case> {};

TEST_P(CudaAttentionForwardSm90, MatchesSm80AndCpu64) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  const AttentionSpec spec = spec_of(GetParam());
  const size_t BT = size_t(spec.B) * spec.T, C = spec.C();
  const uint64_t seed = uint64_t(spec.T) * 7919 + spec.head_dim * 31 + spec.n_local + spec.window;
  // Logits of a few units: softmax neither uniform nor one-hot.
  const auto qkv = bf16_values(BT * 3 * C, seed, -2, 2);

  ForwardResult sm80;
  {
    ScopedEnv env(kForceSm80, "1");
#ifdef LSGPT_HAVE_CUDA
    ASSERT_FALSE(cuda_attention_forward_uses_sm90(*cuda, spec));
#endif
    sm80 = run_forward(*cuda, spec, qkv);
  }
  std::unique_ptr<Backend> cpu64 = make_backend("cpu64");
  const ForwardResult ref = run_forward(*cpu64, spec, qkv);

  ScopedEnv env(kForceSm80, nullptr);
  for (const char* variant : kSm90ForwardVariants) {
    SCOPED_TRACE(std::string(kSm90Forward) + "=" + variant);
    ScopedEnv choose(kSm90Forward, variant);
#ifdef LSGPT_HAVE_CUDA
    ASSERT_TRUE(cuda_attention_forward_uses_sm90(*cuda, spec))
        << "a compute capability 9.0 GPU did not select the wgmma forward";
#endif
    expect_matches(run_forward(*cuda, spec, qkv), sm80, ref, spec);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaAttentionForwardSm90, ::testing::ValuesIn(all_cases()),
                         [](const auto& info) { return parity_case_name(info.param); });

// Same inputs, same bits: no atomics in the new kernel either.
TEST(CudaAttentionForwardSm90Dispatch, Deterministic) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  ScopedEnv env(kForceSm80, nullptr);
  for (const char* variant : kSm90ForwardVariants)
  for (int D : {64, 128}) {
    SCOPED_TRACE(std::string(kSm90Forward) + "=" + variant);
    ScopedEnv choose(kSm90Forward, variant);
    AttentionSpec spec = small_spec(2, 1000, D, 4, 3);
    spec.span.q = {true, SpanBasis::cross, 1.5, 0.7};  // kbar as well
    const auto qkv = bf16_values(size_t(spec.B) * spec.T * 3 * spec.C(), 61 + D, -2, 2);
    const ForwardResult a = run_forward(*cuda, spec, qkv);
    const ForwardResult b = run_forward(*cuda, spec, qkv);
    EXPECT_EQ(a.out, b.out);
    EXPECT_EQ(a.lse, b.lse);
    EXPECT_EQ(a.max_logit, b.max_logit);
    EXPECT_EQ(a.kbar, b.kbar);
  }
}

// ws_persistent and ws_dynamic with several query blocks per block (512
// items at D 128 and 352 at D 64, against the H200's 132 multiprocessors:
// the K/V ring, the two Q stages and the O staging tiles all wrap around
// across items) against ws, the same kernel with one item per block: the
// same arithmetic per item, so the same bits; and against the sm_80
// kernel, as the parity tests. ws_dynamic runs twice with a launch of
// another item count between (T 1000: 192 items at D 64, 256 at D 128,
// also more than the multiprocessors, so taken from the counter): a launch
// that did not leave its counter at zero would make the next skip items,
// whose out and lse rows would stay NaN (make_buffer's poison).
TEST(CudaAttentionForwardSm90Dispatch, PersistentMatchesOneBlockPerItem) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  ScopedEnv env(kForceSm80, nullptr);
  for (int D : {64, 128}) {
    SCOPED_TRACE("D " + std::to_string(D));
    AttentionSpec spec = small_spec(8, 2048, D, 4, 3);
    spec.span.q = {true, SpanBasis::cross, 1.5, 0.7};  // kbar as well
    const auto qkv = bf16_values(size_t(spec.B) * spec.T * 3 * spec.C(), 97 + D, -2, 2);
    ForwardResult one_per_item, persistent, dynamic, dynamic_again, short_dynamic, short_ws, sm80;
    AttentionSpec short_spec = spec;
    short_spec.T = 1000;
    const auto short_qkv =
        bf16_values(size_t(short_spec.B) * short_spec.T * 3 * short_spec.C(), 7 + D, -2, 2);
    {
      ScopedEnv choose(kSm90Forward, "ws");
      one_per_item = run_forward(*cuda, spec, qkv);
      short_ws = run_forward(*cuda, short_spec, short_qkv);
    }
    {
      ScopedEnv choose(kSm90Forward, "ws_persistent");
      persistent = run_forward(*cuda, spec, qkv);
    }
    {
      ScopedEnv choose(kSm90Forward, "ws_dynamic");
      dynamic = run_forward(*cuda, spec, qkv);
      short_dynamic = run_forward(*cuda, short_spec, short_qkv);
      dynamic_again = run_forward(*cuda, spec, qkv);
    }
    for (const ForwardResult* r : {&dynamic, &dynamic_again}) {
      EXPECT_EQ(r->out, one_per_item.out);
      EXPECT_EQ(r->lse, one_per_item.lse);
      EXPECT_EQ(r->max_logit, one_per_item.max_logit);
      EXPECT_EQ(r->kbar, one_per_item.kbar);
    }
    EXPECT_EQ(short_dynamic.out, short_ws.out);
    EXPECT_EQ(short_dynamic.lse, short_ws.lse);
    EXPECT_EQ(short_dynamic.kbar, short_ws.kbar);
    EXPECT_EQ(short_dynamic.max_logit, short_ws.max_logit);
    {
      ScopedEnv force(kForceSm80, "1");
      sm80 = run_forward(*cuda, spec, qkv);
    }
    EXPECT_EQ(persistent.out, one_per_item.out);
    EXPECT_EQ(persistent.lse, one_per_item.lse);
    EXPECT_EQ(persistent.max_logit, one_per_item.max_logit);
    EXPECT_EQ(persistent.kbar, one_per_item.kbar);
    EXPECT_LE(relative_error(persistent.out, sm80.out), 2e-3) << "out vs sm_80";
    EXPECT_LE(relative_error(persistent.lse, sm80.lse), 1e-6) << "lse vs sm_80";
    EXPECT_LE(relative_error(persistent.max_logit, sm80.max_logit), 1e-6) << "max_logit vs sm_80";
    EXPECT_LE(relative_error(persistent.kbar, sm80.kbar), 2e-3) << "kbar vs sm_80";
  }
}

// The ws kernels write out with TMA stores, which need a 16-byte aligned
// out; the op asks for 4 bytes. An out 4 bytes into its allocation (and T
// 1000, so the last block's rows run past T) must give the same values
// through the fallback (base, plain stores), and nothing may be written
// before or after it (the poison stays NaN).
TEST(CudaAttentionForwardSm90Dispatch, OutNotAlignedForTmaFallsBack) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  ScopedEnv env(kForceSm80, nullptr);
  for (const char* variant : {"ws", "ws_persistent", "ws_dynamic"})
  for (int D : {64, 128}) {
    SCOPED_TRACE(std::string(variant) + " D " + std::to_string(D));
    ScopedEnv choose(kSm90Forward, variant);
    AttentionSpec spec = small_spec(2, 1000, D, 4, 3);
    const size_t BT = size_t(spec.B) * spec.T, C = spec.C();
    const auto qkv = bf16_values(BT * 3 * C, 43 + D, -2, 2);
    const ForwardResult aligned = run_forward(*cuda, spec, qkv);
    const DType w = cuda->dtype(), a = cuda->acc_dtype();
    Buffer qkv_b = make_buffer(*cuda, w, BT * 3 * C, &qkv);
    Buffer out_b = make_buffer(*cuda, w, BT * C + 8, nullptr);  // poisoned
    Buffer lse_b = make_buffer(*cuda, a, size_t(spec.B) * spec.n_head * spec.T, nullptr);
    Buffer max_b = make_buffer(*cuda, a, spec.n_head, nullptr);
    void* out = static_cast<std::byte*>(out_b.mem.get()) + 2 * dtype_size(w);  // 4 bytes in
    cuda->attention_forward(out, lse_b.mem.get(), max_b.mem.get(), nullptr, qkv_b.mem.get(),
                            spec);
    cuda->sync();
    std::vector<float> shifted(BT * C);
    cuda->download_f32(shifted.data(), out, w, BT * C);
    EXPECT_LE(relative_error(shifted, aligned.out), 2e-3);
    const std::vector<float> whole = fetch(*cuda, out_b);
    for (size_t i : {size_t(0), size_t(1), BT * C + 2, BT * C + 7})
      EXPECT_TRUE(std::isnan(whole[i])) << "element " << i << " outside out was written";
    EXPECT_LE(relative_error(fetch(*cuda, lse_b), aligned.lse), 1e-6);
  }
}

// One work item in all (B 1, one head, T 100: a single block takes it from
// the counter, then needs one more turn to see that none is left, which is
// where it waits for its O store before exiting): the same bits as ws, and
// the counter left at zero for the launch after it.
TEST(CudaAttentionForwardSm90Dispatch, OneItemFromTheCounter) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  ScopedEnv env(kForceSm80, nullptr);
  for (int D : {64, 128}) {
    SCOPED_TRACE("D " + std::to_string(D));
    const AttentionSpec spec = small_spec(1, 100, D, 1, 0);
    const auto qkv = bf16_values(size_t(spec.T) * 3 * spec.C(), 3 + D, -2, 2);
    ForwardResult ws, once, twice;
    {
      ScopedEnv choose(kSm90Forward, "ws");
      ws = run_forward(*cuda, spec, qkv);
    }
    ScopedEnv choose(kSm90Forward, "ws_dynamic");
    once = run_forward(*cuda, spec, qkv);
    twice = run_forward(*cuda, spec, qkv);
    for (const ForwardResult* r : {&once, &twice}) {
      EXPECT_EQ(r->out, ws.out);
      EXPECT_EQ(r->lse, ws.lse);
      EXPECT_EQ(r->max_logit, ws.max_logit);
    }
  }
}

#ifdef LSGPT_HAVE_CUDA
// Which kernel runs: with or without kbar (span) the wgmma one, head dims up
// to 32 stay on sm_80, and LSGPT_ATTENTION_SM80 takes 0 or 1 only.
TEST(CudaAttentionForwardSm90Dispatch, ChoosesTheKernel) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  const AttentionSpec spec = dispatch_spec(64);
  AttentionSpec span = spec;
  span.span.q = {true, SpanBasis::cross, 1.5, 0.7};  // kbar as well
  expect_dispatch_choices(
      [&](const AttentionSpec& s) { return cuda_attention_forward_uses_sm90(*cuda, s); }, spec,
      span);
}

// LSGPT_ATTENTION_SM90_FORWARD takes auto, base, ws, ws_persistent,
// ws_dynamic or nothing; any other value is an error on every GPU (like LSGPT_ATTENTION_SM80), both
// where the dispatch is asked and where the forward runs.
TEST(CudaAttentionForwardSm90Dispatch, RefusesAnUnknownVariant) {
  REQUIRE_CUDA(cuda);
  const AttentionSpec spec = dispatch_spec(64);
  ScopedEnv env(kForceSm80, nullptr);
  auto dispatch = [&] { cuda_attention_forward_uses_sm90(*cuda, spec); };
  expect_variants_accepted(kSm90Forward, kSm90ForwardVariants, dispatch);
  ScopedEnv bad(kSm90Forward, "fa3");
  const std::string expected =
      "LSGPT_ATTENTION_SM90_FORWARD must be auto, base, ws, ws_persistent or ws_dynamic, got "
      "'fa3'";
  expect_refusal(dispatch, expected, "the dispatch");
  const auto qkv = bf16_values(size_t(spec.B) * spec.T * 3 * spec.C(), 5, -2, 2);
  expect_refusal([&] { run_forward(*cuda, spec, qkv); }, expected, "attention_forward");
}
#endif

}  // namespace test_cuda_attention_forward_sm90
}  // namespace
}  // namespace lsgpt
