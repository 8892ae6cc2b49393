// The Hopper (sm_90a, wgmma) LS flash-attention backward, each variant
// (LSGPT_ATTENTION_SM90_BACKWARD = base: one warpgroup a block, wg2: two,
// 128 keys or queries a block, ws: base's blocks fed by TMA producer warps,
// persistent, one_pass: key blocks only, dQ by atomics,
// one_pass_wg2: the same with two warpgroups, 128 keys, a block, ws_band:
// ws with local heads in band runs, one pass with dQ summed in order,
// ws_one_pass: one_pass_wg2 warp-specialised, dQ by red.v4 in its own layout),
// against the sm_80 kernel
// (LSGPT_ATTENTION_SM80=1 selects that one) and against the CPU backend in
// double precision ("cpu64"), on fresh random bf16-exact inputs: dQ, dK, dV,
// with and without the span decomposition. At T 1, 7 and 100 the second
// warpgroup of wg2 and one_pass_wg2 is empty or partly past T; local heads
// make the two warpgroups' bands differ. Both CUDA backwards
// start from the same forward outputs (out, lse, kbar, from the sm_80
// forward), so their comparison measures the backward alone; cpu64 runs its
// own forward.
//
// Each CUDA run also sums dqkv's columns into the qkv bias gradient
// (dqkv_colsum: in the row epilogues, or one_pass's pass over dqkv),
// checked against the column sums of the dqkv it wrote.
//
// Tolerances (normwise, against an RMS floor of 1e-3 where a gradient
// vanishes in exact arithmetic, as test_cuda_attention.cpp):
//   vs cpu64: 1e-2 (bf16 P and dS, bf16 outputs; as test_cuda_attention.cpp).
//   vs sm_80: 2e-3. Both kernels round the same f32 quantities to bf16 (P,
//     dS, the gradients) and differ only in the order of their f32 sums
//     (wgmma against mma.sync), so a difference is an occasional one-ulp
//     rounding flip (~1e-4 normwise); a layout, mask or band bug is O(1).
//     one_pass too: its dQ is the same f32 sum of the same bf16 dS K
//     products, only split by key block and added by atomics (one_pass_wg2:
//     by blocks of 128 keys, as dQ^T = K^T dS^T; ws_band: one product a key
//     block, added in key-block order).
//
// Without a GPU every test skips with "no CUDA GPU: ..."; on a GPU that is
// not compute capability 9.0 they skip with "not a Hopper GPU".
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "../../support/numeric.h"
#include "core/error.h"
#include "cuda_test_util.h"
#include "hopper_test_util.h"
#include "ops/backend.h"

#ifdef LSGPT_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "multiprocessor_hold.h"
#include "ops/cuda/cuda_backend.h"
#endif

namespace lsgpt {
namespace {
namespace test_cuda_attention_backward_sm90 {

using namespace cuda_test;

// The forward's outputs on one backend, kept on the device for the backward.
struct Forward {
  Buffer qkv, dout, out, lse, max_logit, kbar;
};

Forward run_forward(Backend& be, const AttentionSpec& spec, const std::vector<float>& qkv,
                    const std::vector<float>& dout) {
  const size_t BT = size_t(spec.B) * spec.T, C = spec.C();
  const DType w = be.dtype(), a = be.acc_dtype();
  Forward f{make_buffer(be, w, BT * 3 * C, &qkv),
            make_buffer(be, w, BT * C, &dout),
            make_buffer(be, w, BT * C, nullptr),
            make_buffer(be, a, size_t(spec.B) * spec.n_head * spec.T, nullptr),
            make_buffer(be, a, spec.n_head, nullptr),
            make_buffer(be, w, spec.span.needs_kbar() ? BT * C : 0, nullptr)};
  be.attention_forward(f.out.mem.get(), f.lse.mem.get(), f.max_logit.mem.get(),
                       spec.span.needs_kbar() ? f.kbar.mem.get() : nullptr, f.qkv.mem.get(), spec);
  return f;
}

// The forward on the sm_80 kernel, so that these tests measure the wgmma
// backward alone (test_cuda_attention_forward_sm90.cpp covers the forward).
Forward run_forward_sm80(Backend& be, const AttentionSpec& spec, const std::vector<float>& qkv,
                         const std::vector<float>& dout) {
  ScopedEnv env(kForceSm80, "1");
  return run_forward(be, spec, qkv, dout);
}

// The same on fresh bf16-exact inputs: qkv from `seed` in [-2, 2], dout
// from seed + 1 in [-1, 1].
Forward random_forward_sm80(Backend& be, const AttentionSpec& spec, uint64_t seed) {
  const size_t BT = size_t(spec.B) * spec.T, C = spec.C();
  return run_forward_sm80(be, spec, bf16_values(BT * 3 * C, seed, -2, 2),
                          bf16_values(BT * C, seed + 1, -1, 1));
}

// The qkv bias gradient's buffer starts from these values (the op adds to it).
std::vector<float> bias_start(size_t C) { return bf16_values(3 * C, 5, -1, 1); }

struct Gradients {
  std::vector<float> dqkv;  // [B, T, 3C]
  std::vector<float> bias;  // dqkv_colsum [3C], from bias_start
};

// dqkv [B, T, 3C] from the forward's outputs (a fresh NaN-poisoned buffer,
// so an unwritten element fails) and, with `bias`, the column sums added to
// bias_start. With `bias` a call before it runs another kernel that fills
// the same part sums (sm_80 before a Hopper kernel, Hopper's base before
// sm_80) on other data (the forward's out as dout): a part the kernel under
// test fails to write keeps that call's sum and shows as a wrong bias. (The
// same kernel would leave the same parts unwritten, and an earlier variant
// on the same data would leave nearly the right sums there.)
Gradients run_gradients(Backend& be, const AttentionSpec& spec, const Forward& f, bool bias) {
  Buffer dqkv = make_buffer(be, be.dtype(), f.qkv.n, nullptr);
  const std::vector<float> start = bias_start(spec.C());
  Buffer colsum = make_buffer(be, be.dtype(), bias ? start.size() : 0, &start);
  void* kbar = spec.span.needs_kbar() ? f.kbar.mem.get() : nullptr;
  void* colsum_ptr = bias ? colsum.mem.get() : nullptr;
  if (bias) {
    const char* forced = std::getenv(kForceSm80);
    const bool sm80 = forced && std::string(forced) == "1";
    ScopedEnv other_kernel(kForceSm80, sm80 ? nullptr : "1");
    ScopedEnv other_variant(kSm90Backward, "base");
    Buffer other = make_buffer(be, be.dtype(), start.size(), &start);
    be.attention_backward(dqkv.mem.get(), other.mem.get(), f.out.mem.get(), f.qkv.mem.get(),
                          f.out.mem.get(), f.lse.mem.get(), kbar, spec);
  }
  be.attention_backward(dqkv.mem.get(), colsum_ptr, f.dout.mem.get(), f.qkv.mem.get(),
                        f.out.mem.get(), f.lse.mem.get(), kbar, spec);
  be.sync();
  return {fetch(be, dqkv), fetch(be, colsum)};
}

std::vector<float> run_backward(Backend& be, const AttentionSpec& spec, const Forward& f) {
  return run_gradients(be, spec, f, false).dqkv;
}

// Runs the backward with LSGPT_ATTENTION_SM80 unset (sm90: true) or 1, and
// checks that the kernel asked for is the one taken; with the bias sums.
Gradients run_backward_on(Backend& be, const AttentionSpec& spec, const Forward& f, bool sm90) {
  ScopedEnv env(kForceSm80, sm90 ? nullptr : "1");
#ifdef LSGPT_HAVE_CUDA
  if (cuda_attention_backward_uses_sm90(be, spec) != sm90)
    fail(sm90 ? "a compute capability 9.0 GPU did not select the wgmma backward"
              : "LSGPT_ATTENTION_SM80=1 did not select the sm_80 backward");
#endif
  return run_gradients(be, spec, f, true);
}

// The bias sums against the column sums of the same call's dqkv, in double:
// the kernels sum the f32 rows before their bf16 rounding, in part sums of
// 16 rows, and round the result to bf16 (about 2e-3 normwise at most); a
// missing or stale part of 16 rows is several percent.
void expect_bias_sums(const Gradients& g, size_t C) {
  std::vector<double> sums(3 * C);
  const std::vector<float> start = bias_start(C);
  for (size_t c = 0; c < 3 * C; ++c) sums[c] = start[c];
  for (size_t i = 0; i < g.dqkv.size(); ++i) sums[i % (3 * C)] += g.dqkv[i];
  EXPECT_LE(floored_error(g.bias, std::vector<float>(sums.begin(), sums.end())), 5e-3)
      << "dqkv_colsum against the column sums of dqkv";
}

SpanLayer span_cross() {  // cross on q (kbar) and k (qbar): both extra products
  SpanLayer s;
  s.q = {true, SpanBasis::cross, 1.5, 0.7};
  s.k = {true, SpanBasis::cross, 0.5, 1.3};
  return s;
}
SpanLayer span_self() {  // the kSpan instantiation without qbar, v projected too
  SpanLayer s;
  s.q = {true, SpanBasis::self, 2.0, 0.8};
  s.k = {true, SpanBasis::self, 0.6, 1.1};
  s.v = {true, SpanBasis::self, 1.7, 0.9};
  return s;
}

struct Setting {
  std::string name;
  int local_heads;  // -1: all but one, -2: half, -3: all
  int window;
  SpanLayer span;
};

using Case = ParityCase<Setting>;

std::vector<Case> all_cases() {
  const std::vector<Setting> settings = {
      {"MHSA", 0, 1, {}},
      {"LS", -1, 100, {}},         // 11 of 12 local at w = 100 (here all heads but one)
      {"LSHalfWide", -2, 256, {}},  // half the heads local at w = 256
      {"LSNarrow", -1, 5, {}},      // a band much narrower than a tile: every mask edge
      {"AllLocal", -3, 200, {}},    // every head local; bands end mid-block of 128 keys
      {"SpanCrossLS", -1, 100, span_cross()},
      {"SpanSelfMHSA", 0, 1, span_self()},
  };
  return parity_cases(settings, settings[1], settings[4]);
}

AttentionSpec spec_of(const Case& c) {
  AttentionSpec spec = parity_spec(c.T, c.D, c.setting.local_heads, c.setting.window);
  spec.span = c.setting.span;
  return spec;
}

class CudaAttentionBackwardSm90 : public ::testing::TestWithParam<Case> {};

TEST_P(CudaAttentionBackwardSm90, MatchesSm80AndCpu64) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  const AttentionSpec spec = spec_of(GetParam());
  const size_t BT = size_t(spec.B) * spec.T, C = spec.C();
  const uint64_t seed = uint64_t(spec.T) * 6151 + spec.head_dim * 37 + spec.n_local * 5 +
                        spec.window + (spec.span.any() ? 1 : 0);
  // Logits of a few units: softmax neither uniform nor one-hot.
  const auto qkv = bf16_values(BT * 3 * C, seed, -2, 2);
  const auto dout = bf16_values(BT * C, seed + 1, -1, 1);

  const Forward f = run_forward_sm80(*cuda, spec, qkv, dout);
  const Gradients sm80_run = run_backward_on(*cuda, spec, f, false);
  expect_bias_sums(sm80_run, C);
  const std::vector<float>& sm80 = sm80_run.dqkv;
  std::unique_ptr<Backend> cpu64 = make_backend("cpu64");
  const std::vector<float> ref = run_backward(*cpu64, spec, run_forward(*cpu64, spec, qkv, dout));

  for (const char* variant : kSm90BackwardVariants) {
    SCOPED_TRACE(std::string(kSm90Backward) + "=" + variant);
    ScopedEnv choose(kSm90Backward, variant);
    const Gradients sm90_run = run_backward_on(*cuda, spec, f, true);
    expect_bias_sums(sm90_run, C);
    const std::vector<float>& sm90 = sm90_run.dqkv;
    const char* names[3] = {"dq", "dk", "dv"};
    for (int part = 0; part < 3; ++part) {
      const std::vector<float> got = qkv_part(sm90, part, C);
      EXPECT_LE(floored_error(got, qkv_part(ref, part, C)), kBf16Tolerance)
          << names[part] << " vs cpu64";
      EXPECT_LE(floored_error(got, qkv_part(sm80, part, C)), 2e-3) << names[part] << " vs sm_80";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaAttentionBackwardSm90, ::testing::ValuesIn(all_cases()),
                         [](const auto& info) { return parity_case_name(info.param); });

// Same inputs, same bits: dQ, dK, dV each finished by one block, no atomics.
// one_pass, one_pass_wg2 and ws_one_pass sum dQ by float atomics in a
// varying order: there only dK and dV must repeat bit for bit, dQ within
// rounding (2e-3, as against sm_80). With span cross on k (qbar) and
// without it, since ws_one_pass runs one_pass_wg2 with qbar.
TEST(CudaAttentionBackwardSm90Dispatch, Deterministic) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  SpanLayer cross = span_cross();
  cross.v = {true, SpanBasis::self, 1.2, 0.9};
  for (const char* variant : kSm90BackwardVariants)
  for (const SpanLayer& span : {cross, span_self()})
  for (int D : {64, 128}) {
    SCOPED_TRACE(std::string(kSm90Backward) + "=" + variant + ", qbar " +
                 std::to_string(span.k.basis == SpanBasis::cross));
    ScopedEnv choose(kSm90Backward, variant);
    AttentionSpec spec;
    spec.B = 2, spec.T = 1000, spec.head_dim = D, spec.n_head = 4, spec.n_local = 3;
    spec.window = 100;
    spec.span = span;
    const size_t BT = size_t(spec.B) * spec.T, C = spec.C();
    const auto qkv = bf16_values(BT * 3 * C, 71 + D, -2, 2);
    const auto dout = bf16_values(BT * C, 72 + D, -1, 1);
    const Forward f = run_forward_sm80(*cuda, spec, qkv, dout);
    const Gradients run_a = run_backward_on(*cuda, spec, f, true);
    const Gradients run_b = run_backward_on(*cuda, spec, f, true);
    const std::vector<float>& a = run_a.dqkv;
    const std::vector<float>& b = run_b.dqkv;
    if (!sums_dq_by_atomics(variant)) {
      EXPECT_EQ(a, b) << "D " << D;
      EXPECT_EQ(run_a.bias, run_b.bias) << "bias sums, D " << D;
      continue;
    }
    EXPECT_LE(floored_error(qkv_part(a, 0, C), qkv_part(b, 0, C)), 2e-3) << "dq, D " << D;
    EXPECT_EQ(qkv_part(a, 1, C), qkv_part(b, 1, C)) << "dk, D " << D;
    EXPECT_EQ(qkv_part(a, 2, C), qkv_part(b, 2, C)) << "dv, D " << D;
  }
}

// The shapes of a test that holds one variant's dK and dV bit for bit
// against another's: batch rows (more at the longest T), heads, local
// heads (w 70), the T values, and the inputs' seed.
struct KeySideCase {
  int B, B_longest, n_head, n_local;
  std::initializer_list<int> Ts;
  uint64_t seed;
};

// `variant`'s dK and dV against `reference`'s bit for bit, dQ (other sums
// of the same products) within rounding, at D 64 and 128, each T, spans
// off, self and cross.
void expect_key_side_bits(Backend& cuda, const char* reference, const char* variant,
                          const KeySideCase& c) {
  const SpanLayer spans[] = {SpanLayer{}, span_self(), span_cross()};
  const int longest = *std::max_element(c.Ts.begin(), c.Ts.end());
  for (int D : {64, 128})
    for (int T : c.Ts)
      for (const SpanLayer& span : spans) {
        AttentionSpec spec;
        spec.B = T == longest ? c.B_longest : c.B, spec.T = T, spec.head_dim = D;
        spec.n_head = c.n_head, spec.n_local = c.n_local, spec.window = 70;
        spec.span = span;
        SCOPED_TRACE("D " + std::to_string(D) + ", T " + std::to_string(T) + ", span " +
                     std::to_string(span.any()));
        const size_t BT = size_t(spec.B) * spec.T, C = spec.C();
        const auto qkv = bf16_values(BT * 3 * C, c.seed + D + T, -2, 2);
        const auto dout = bf16_values(BT * C, c.seed + 1 + D + T, -1, 1);
        const Forward f = run_forward_sm80(cuda, spec, qkv, dout);
        std::vector<float> ref, got;
        {
          ScopedEnv choose(kSm90Backward, reference);
          ref = run_backward_on(cuda, spec, f, true).dqkv;
        }
        {
          ScopedEnv choose(kSm90Backward, variant);
          got = run_backward_on(cuda, spec, f, true).dqkv;
        }
        EXPECT_LE(floored_error(qkv_part(got, 0, C), qkv_part(ref, 0, C)), 2e-3) << "dq";
        EXPECT_EQ(qkv_part(got, 1, C), qkv_part(ref, 1, C)) << "dk";
        EXPECT_EQ(qkv_part(got, 2, C), qkv_part(ref, 2, C)) << "dv";
      }
}

// one_pass_wg2 forms dK, dV (and qbar) with one_pass's products in one_pass's
// order; the tiles it walks beyond a warpgroup's band take the masked step,
// which adds exact zeros. So its dK and dV equal one_pass's bit for bit, and
// a tile skipped or walked twice, or a warpgroup's keys crossed, shows here
// exactly; dQ (other sums of the same products) within rounding.
TEST(CudaAttentionBackwardSm90Dispatch, OnePassWg2MatchesOnePass) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  expect_key_side_bits(*cuda, "one_pass", "one_pass_wg2", {2, 2, 3, 2, {7, 200, 1000}, 91});
}

// ws_one_pass forms dK and dV with one_pass_wg2's products in its order,
// over the same tiles (a warpgroup off its band taking the masked step), so
// they are its bits; a tile skipped or walked twice, a ring stage or fixed
// slot read before it landed or after it was refilled, or the consumers'
// keys crossed shows here exactly. dQ (the same products summed in another
// layout and order) within rounding: a wrong slice, element or query in the
// fragment-major sums is O(1). Several items a block (B 4, 5 heads at T
// 2000: 320 items of 128 keys on at most 132 blocks, so three rounds of
// block_item, the third forward again) exercise the ring and the fixed
// slots across items; T 7 and 200 leave the second warpgroup's
// keys past T or partly so. With span cross (qbar) ws_one_pass runs
// one_pass_wg2 itself, which this also checks.
TEST(CudaAttentionBackwardSm90Dispatch, WsOnePassMatchesOnePassWg2) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  expect_key_side_bits(*cuda, "one_pass_wg2", "ws_one_pass", {2, 4, 5, 3, {7, 200, 2000}, 191});
}

// ws_one_pass_ordered adds each query tile's dQ slices in key-block order,
// each block waiting for its turn: two runs give the same bits, dQ, dK and
// dV, and match one_pass_wg2's within rounding (dK and dV are other sums:
// the walk runs from the last tile down). Many rounds of items (B 4, 6
// heads at T 4096: 768 items of 128 keys), local heads whose bands make a
// tile's contributors a run that does not start at block 0 (w 70 and 300),
// T not a multiple of the tile, and one key block a head (T 100, where no
// turn is waited for). With span cross on k it runs ws at D 64 (qbar in
// its key blocks), bit-reproducible too, and itself at D 128 (after the
// key-direction pass).
TEST(CudaAttentionBackwardSm90Dispatch, WsOnePassOrderedRepeatsBitForBit) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  for (int D : {64, 128})
    for (int T : {100, 1999, 4096})
      for (int window : {70, 300})
        for (const SpanLayer& span : {SpanLayer{}, span_self(), span_cross()}) {
          AttentionSpec spec;
          spec.B = T == 4096 ? 4 : 2, spec.T = T, spec.head_dim = D, spec.n_head = 6;
          spec.n_local = 4, spec.window = window, spec.span = span;
          SCOPED_TRACE("D " + std::to_string(D) + ", T " + std::to_string(T) + ", w " +
                       std::to_string(window) + ", span " + std::to_string(span.any()));
          const size_t BT = size_t(spec.B) * spec.T, C = spec.C();
          const auto qkv = bf16_values(BT * 3 * C, 301 + D + T + window, -2, 2);
          const auto dout = bf16_values(BT * C, 302 + D + T + window, -1, 1);
          const Forward f = run_forward_sm80(*cuda, spec, qkv, dout);
          std::vector<float> ref, a, b;
          {
            ScopedEnv choose(kSm90Backward, "one_pass_wg2");
            ref = run_backward_on(*cuda, spec, f, true).dqkv;
          }
          {
            ScopedEnv choose(kSm90Backward, "ws_one_pass_ordered");
            a = run_backward_on(*cuda, spec, f, true).dqkv;
            b = run_backward_on(*cuda, spec, f, true).dqkv;
            const bool qbar = span.k.basis == SpanBasis::cross && span.k.enabled && D == 64;
            EXPECT_EQ(std::string(cuda_last_attention_backward_kernel()),
                      qbar ? "ws" : "ws_one_pass_ordered");
          }
          EXPECT_EQ(a, b) << "two runs";
          for (int part : {0, 1, 2})
            EXPECT_LE(floored_error(qkv_part(a, part, C), qkv_part(ref, part, C)), 2e-3)
                << "part " << part;
        }
}

// The ordered one pass's order is the key blocks', not the schedule's: its
// bits are the same on one block (every item in turn, no turn ever waited
// for), on 7 and on every multiprocessor
// (LSGPT_ATTENTION_SM90_ONE_PASS_BLOCKS), where two runs alone would catch
// a broken order only by chance. MHSA and LS (local bands of 300 keys)
// with several key blocks walking each tile.
TEST(CudaAttentionBackwardSm90Dispatch, WsOnePassOrderedBitsDoNotDependOnTheGrid) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  ScopedEnv choose(kSm90Backward, "ws_one_pass_ordered");
  for (int D : {64, 128})
    for (int n_local : {0, 4}) {
      AttentionSpec spec;
      spec.B = 2, spec.T = 1999, spec.head_dim = D, spec.n_head = 6;
      spec.n_local = n_local, spec.window = 300;
      SCOPED_TRACE("D " + std::to_string(D) + ", local " + std::to_string(n_local));
      const Forward f = random_forward_sm80(*cuda, spec, 401 + D + n_local);
      std::vector<float> all;
      {
        ScopedEnv cap(kSm90OnePassBlocks, nullptr);
        all = run_backward_on(*cuda, spec, f, true).dqkv;
        EXPECT_EQ(std::string(cuda_last_attention_backward_kernel()), "ws_one_pass_ordered");
      }
      for (const char* blocks : {"1", "7"}) {
        ScopedEnv cap(kSm90OnePassBlocks, blocks);
        EXPECT_EQ(run_backward_on(*cuda, spec, f, true).dqkv, all) << blocks << " blocks";
      }
    }
}

// With all but three multiprocessors held by a kernel on another stream (as
// NCCL's on the data-parallel trainer's communication stream may hold
// some), the ordered one pass finishes while the hold lasts, with the same
// bits: its blocks take every item from a counter, so a running block
// never waits for an item of a block that is not. With items handed out
// by block index it could wait until the hold ended (and, on an MPS share
// that never ends, trap at its 60 s limit). Everything is allocated and
// the launch configured before the hold: a cudaFree would wait for it.
TEST(CudaAttentionBackwardSm90Dispatch, WsOnePassOrderedFinishesWithMostMultiprocessorsHeld) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
#ifdef LSGPT_HAVE_CUDA
  ScopedEnv choose(kSm90Backward, "ws_one_pass_ordered");
  int device = 0, multiprocessors = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device),
            cudaSuccess);
  ASSERT_GT(multiprocessors, 3);
  for (int D : {64, 128}) {
    SCOPED_TRACE("D " + std::to_string(D));
    AttentionSpec spec;
    spec.B = 2, spec.T = 1999, spec.head_dim = D, spec.n_head = 6;
    const Forward f = random_forward_sm80(*cuda, spec, 431 + D);
    const std::vector<float> free_gpu = run_backward(*cuda, spec, f);
    EXPECT_EQ(std::string(cuda_last_attention_backward_kernel()), "ws_one_pass_ordered");
    Buffer dqkv = make_buffer(*cuda, cuda->dtype(), f.qkv.n, nullptr);
    {
      MultiprocessorHold hold(multiprocessors - 3, 30.0);
      cuda->attention_backward(dqkv.mem.get(), nullptr, f.dout.mem.get(), f.qkv.mem.get(),
                               f.out.mem.get(), f.lse.mem.get(), nullptr, spec);
      cuda->sync();
      EXPECT_TRUE(hold.holding()) << "the backward finished only once the hold had ended";
    }
    EXPECT_EQ(fetch(*cuda, dqkv), free_gpu);
  }
#endif
}

// A shape of the tests that hold a variant against base, with its span.
struct VariantCase {
  int B, T, D, n_head, n_local, window;
};

AttentionSpec variant_spec(const VariantCase& c, const SpanLayer& span) {
  AttentionSpec spec;
  spec.B = c.B, spec.T = c.T, spec.head_dim = c.D, spec.n_head = c.n_head;
  spec.n_local = c.n_local, spec.window = c.window, spec.span = span;
  return spec;
}

std::string variant_trace(const VariantCase& c, const SpanLayer& span) {
  return "B " + std::to_string(c.B) + ", T " + std::to_string(c.T) + ", D " +
         std::to_string(c.D) + ", local " + std::to_string(c.n_local) + "/" +
         std::to_string(c.n_head) + ", w " + std::to_string(c.window) + ", span " +
         std::to_string(span.any()) +
         (span.any() && span.k.basis == SpanBasis::cross ? " cross" : "");
}

// For every shape and span: the sm_80 forward on fresh inputs (seeded by
// seed0 + T), base's backward and `variant`'s from it, handed to
// check(spec, forward, base, variant's).
template <size_t kShapes, size_t kSpans, typename Check>
void against_base(Backend& cuda, const VariantCase (&shapes)[kShapes],
                  const SpanLayer (&spans)[kSpans], uint64_t seed0, const char* variant,
                  Check check) {
  for (const VariantCase& sh : shapes)
    for (const SpanLayer& span : spans) {
      const AttentionSpec spec = variant_spec(sh, span);
      SCOPED_TRACE(variant_trace(sh, span));
      const Forward f = random_forward_sm80(cuda, spec, seed0 + sh.T);
      Gradients base;
      {
        ScopedEnv choose(kSm90Backward, "base");
        base = run_backward_on(cuda, spec, f, true);
      }
      ScopedEnv choose(kSm90Backward, variant);
      check(spec, f, base, run_backward_on(cuda, spec, f, true));
    }
}

// ws runs base's key and query blocks (the same products in the same order)
// with its tiles loaded by TMA instead of cp.async, from persistent blocks
// in another order: the same bits as base, for every mask (a local window
// of 1 among them), span setting, head dim (48 and 96 padded: columns past
// the real head dim zero-filled by the copy engine), T past and within a
// block, B > 1 (the TMA coordinates of the batch row), and at D 64 and 128
// more items than the grid has consumers on a 132-multiprocessor GPU (the
// ring's and the fixed slots' phases carried across items). At D 64 (and
// 48) without qbar the shapes where band rows carry a quarter of the work
// or more (T 7, T 300 with w 100, D 48 at T 1000, all local at T 2048 with
// 5 items a consumer) run the two-slot buffering (ws_backward_short_walks),
// the others the one-slot one; each with its items handed out by striding
// and from the counter (LSGPT_ATTENTION_SM90_WS_SCHEDULE).
TEST(CudaAttentionBackwardSm90Dispatch, WsMatchesBase) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  const SpanLayer spans[] = {SpanLayer{}, span_self(), span_cross()};
  const VariantCase shapes[] = {{2, 7, 64, 3, 2, 70},     {3, 300, 64, 4, 3, 100},
                                {1, 1000, 128, 4, 3, 100}, {2, 200, 128, 3, 0, 1},
                                {2, 1000, 48, 3, 2, 256},  {1, 100, 96, 2, 1, 5},
                                {4, 4096, 64, 4, 3, 100},  {1, 129, 128, 2, 2, 1000},
                                {4, 4096, 128, 4, 3, 100}, {2, 300, 64, 3, 2, 1},
                                {8, 2048, 64, 4, 4, 100}};
  auto same_as_base = [](const AttentionSpec& spec, const Gradients& base, const Gradients& ws) {
    const size_t C = spec.C();
    const char* names[3] = {"dq", "dk", "dv"};
    for (int part = 0; part < 3; ++part)
      EXPECT_EQ(qkv_part(ws.dqkv, part, C), qkv_part(base.dqkv, part, C)) << names[part];
    // The same rows in the same part sums: the bias too.
    EXPECT_EQ(ws.bias, base.bias) << "bias sums";
  };
  auto check = [&](const AttentionSpec& spec, const Forward& f, const Gradients& base,
                   const Gradients& ws) {
    same_as_base(spec, base, ws);
    // Items by striding or from the counter, in one group or in groups
    // of 3 heads (the last one smaller where the pairs are not a multiple
    // of 3): which consumer computes an item, never how.
    for (const char* schedule : {"static", "dynamic"})
      for (const char* group : {"0", "3"}) {
        SCOPED_TRACE(std::string(schedule) + ", head group " + group);
        ScopedEnv set(kSm90WsSchedule, schedule);
        ScopedEnv set_group(kSm90HeadGroup, group);
        same_as_base(spec, base, run_backward_on(*cuda, spec, f, true));
      }
  };
  against_base(*cuda, shapes, spans, 97, "ws", check);
}

// ws_band runs the two-pass items of global heads as ws does, and a local
// head's key blocks with base's products in base's order: dK and dV equal
// base's bit for bit, a tile skipped, walked twice or a halo block taken
// for one of the run's own shows there. Its dQ takes dS from the key
// side's S^T and dP^T (other products than the query blocks' S and dP,
// summed over D in another order), so it is within rounding of base's; it
// adds the key blocks' shares in key-block order whatever the runs, so
// runs of 1 (every tile's earlier key blocks in the halo), 2, 3, 5 and the
// default give the same bits, as a part sum lost at a run's edge, a slot
// read before it was written (it holds another tile's or another call's
// sums) or a tile finished by the wrong key block would not. Shapes: T
// within and past one block, windows of 1, 2, 5, 66, 100, 130 and 200
// (bands of 1 to 5 tiles; 2, 66 and 130 each the first of its tile count,
// so the slot count is the smallest it can be), a window past T, span
// off, self (dK along k) and cross on q only (qbar, cross on k, is not
// band work: it runs ws), D 48 and 40 (padded), global heads between, and
// more runs than the grid has consumers.
TEST(CudaAttentionBackwardSm90Dispatch, WsBandMatchesBase) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  SpanLayer cross_q;
  cross_q.q = {true, SpanBasis::cross, 1.5, 0.7};
  const SpanLayer spans[] = {SpanLayer{}, span_self(), cross_q};
  const VariantCase shapes[] = {
      {2, 7, 64, 3, 2, 70},     {3, 300, 64, 4, 3, 100},  {2, 1000, 48, 3, 2, 200},
      {1, 100, 40, 2, 1, 5},    {2, 300, 64, 3, 3, 1},    {1, 129, 64, 2, 2, 1000},
      {2, 300, 64, 3, 2, 2},    {1, 500, 64, 2, 2, 66},   {1, 700, 64, 3, 2, 130},
      {8, 2048, 64, 4, 4, 100}, {2, 1024, 64, 12, 11, 100}};
  auto check = [&](const AttentionSpec& spec, const Forward& f, const Gradients& base,
                   const Gradients& band) {
    const size_t C = spec.C();
    expect_bias_sums(band, C);
    EXPECT_LE(floored_error(qkv_part(band.dqkv, 0, C), qkv_part(base.dqkv, 0, C)), 2e-3) << "dq";
    EXPECT_EQ(qkv_part(band.dqkv, 1, C), qkv_part(base.dqkv, 1, C)) << "dk";
    EXPECT_EQ(qkv_part(band.dqkv, 2, C), qkv_part(base.dqkv, 2, C)) << "dv";
    for (const char* run : {"1", "2", "3", "5"}) {
      ScopedEnv length(kSm90BandRun, run);
      const Gradients other = run_backward_on(*cuda, spec, f, true);
      EXPECT_EQ(other.dqkv, band.dqkv) << "runs of " << run;
      EXPECT_EQ(other.bias, band.bias) << "bias sums, runs of " << run;
    }
  };
  against_base(*cuda, shapes, spans, 197, "ws_band", check);
}

// The span's cross basis on k from its own pass (u_j = qbar_j / colsum_j
// as bf16, launch_key_direction_sm90) against qbar accumulated in the
// backward's key blocks (the fused form, itself checked against the CPU's
// float64 backward in MatchesSm80AndCpu64): the same dQ bits (the pass
// touches only dK), the same dV bits at D 64 (at D 128 the fused base walks
// 16-query tiles, so other sums), dK within rounding. A wrong column sum,
// a key row or head crossed, a band tile missed, the mask or lse misread
// would move dK by O(1) against 2e-3. T 7 (one tile, rows past T), 100 and
// 1000; global heads and local ones at w 70 and 300, base and ws, and by
// default (which runs the pass at D 128 only, and what follows it:
// ws_one_pass_ordered's kSpan instance at T 16k is checked in
// WsOnePassOrderedRepeatsBitForBit).
TEST(CudaAttentionBackwardSm90Dispatch, KeyDirectionPassMatchesQbarInTheKernels) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  for (int D : {64, 128})
    for (int T : {7, 100, 1000})
      for (int window : {70, 300})
        for (const char* variant : {"base", "ws", "auto"}) {
          AttentionSpec spec;
          spec.B = 2, spec.T = T, spec.head_dim = D, spec.n_head = 4, spec.n_local = 2;
          spec.window = window, spec.span = span_cross();
          SCOPED_TRACE("D " + std::to_string(D) + ", T " + std::to_string(T) + ", w " +
                       std::to_string(window) + ", " + variant);
          const size_t C = spec.C();
          const Forward f = random_forward_sm80(*cuda, spec, 501 + D + T + window);
          ScopedEnv choose(kSm90Backward, variant);
          std::vector<float> fused, pass;
          {
            ScopedEnv set(kSm90KeyDirection, "fused");
            fused = run_backward_on(*cuda, spec, f, true).dqkv;
            EXPECT_FALSE(cuda_last_attention_backward_ran_key_direction_pass());
          }
          {
            ScopedEnv set(kSm90KeyDirection, "pass");
            pass = run_backward_on(*cuda, spec, f, true).dqkv;
            EXPECT_TRUE(cuda_last_attention_backward_ran_key_direction_pass());
          }
          EXPECT_EQ(qkv_part(pass, 0, C), qkv_part(fused, 0, C)) << "dq";
          EXPECT_LE(floored_error(qkv_part(pass, 1, C), qkv_part(fused, 1, C)), 2e-3) << "dk";
          if (D == 64)
            EXPECT_EQ(qkv_part(pass, 2, C), qkv_part(fused, 2, C)) << "dv";
          else
            EXPECT_LE(floored_error(qkv_part(pass, 2, C), qkv_part(fused, 2, C)), 2e-3) << "dv";
        }
}

#ifdef LSGPT_HAVE_CUDA
// Which kernel runs: with or without span the wgmma one, head dims up to 32
// stay on sm_80, and LSGPT_ATTENTION_SM80 takes 0 or 1 only.
TEST(CudaAttentionBackwardSm90Dispatch, ChoosesTheKernel) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  const AttentionSpec spec = dispatch_spec(128);
  AttentionSpec span = spec;
  span.span = span_cross();
  auto uses_sm90 = [&](const AttentionSpec& s) {
    return cuda_attention_backward_uses_sm90(*cuda, s);
  };
  expect_dispatch_choices(uses_sm90, spec, span);
  ScopedEnv one(kForceSm80, "1");
  EXPECT_FALSE(uses_sm90(spec));
}

// The forward a switch test's backward runs on (dispatch_spec(64)).
Forward switch_test_forward(Backend& cuda, const AttentionSpec& spec) {
  return random_forward_sm80(cuda, spec, 3);
}

// `bad` in switch `name` is an error with `expected` in the message on
// every GPU, both where the dispatch is asked and where the backward runs.
void expect_switch_refused(Backend& cuda, const AttentionSpec& spec, const Forward& f,
                           const char* name, const char* bad, const std::string& expected) {
  SCOPED_TRACE(bad);
  ScopedEnv set_bad(name, bad);
  expect_refusal([&] { cuda_attention_backward_uses_sm90(cuda, spec); }, expected, "the dispatch");
  expect_refusal([&] { run_backward(cuda, spec, f); }, expected, "attention_backward");
}

// A backward switch: each of `accepted` (and unset, empty, auto) is taken
// where the dispatch is asked; `bad` is refused (expect_switch_refused).
template <size_t N>
void check_backward_switch(Backend& cuda, const char* name, const char* const (&accepted)[N],
                           const char* bad, const std::string& expected) {
  const AttentionSpec spec = dispatch_spec(64);
  ScopedEnv env(kForceSm80, nullptr);
  expect_variants_accepted(name, accepted, [&] { cuda_attention_backward_uses_sm90(cuda, spec); });
  expect_switch_refused(cuda, spec, switch_test_forward(cuda, spec), name, bad, expected);
}

TEST(CudaAttentionBackwardSm90Dispatch, RefusesAnUnknownVariant) {
  REQUIRE_CUDA(cuda);
  check_backward_switch(
      *cuda, kSm90Backward, kSm90BackwardVariants, "ws_persistent",
      "LSGPT_ATTENTION_SM90_BACKWARD must be auto, base, wg2, ws, one_pass, one_pass_wg2, "
      "ws_band, ws_one_pass or ws_one_pass_ordered, got 'ws_persistent'");
}

// LSGPT_ATTENTION_DETERMINISTIC=0 lets the shape rules take ws_one_pass
// (MHSA at T 16384 here, choose_sm90_backward); unset, empty or 1 take the
// ordered one pass there, whose bits repeat; a forced variant wins over
// either; with qbar ws_one_pass runs one_pass_wg2; anything else is
// refused. What ran is read back after each call
// (cuda_last_attention_backward_kernel, set where the kernel is launched),
// and the gradients are one_pass_wg2's: ws_one_pass's dK, dV its bits and
// dQ within rounding; the ordered one pass's all within rounding (its walk
// runs from the last tile down, so dK and dV are other sums).
TEST(CudaAttentionBackwardSm90Dispatch, NonDeterministicSwitchPicksWsOnePass) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  constexpr const char* kDeterministic = "LSGPT_ATTENTION_DETERMINISTIC";
  ScopedEnv env(kForceSm80, nullptr);
  ScopedEnv variant(kSm90Backward, nullptr);
  AttentionSpec spec;
  spec.B = 1, spec.T = 16384, spec.head_dim = 64, spec.n_head = 1, spec.n_local = 0;
  const size_t C = spec.C();
  const Forward f = random_forward_sm80(*cuda, spec, 301);
  auto ran = [&] { return std::string(cuda_last_attention_backward_kernel()); };
  std::vector<float> ordered;
  for (const char* deterministic : {static_cast<const char*>(nullptr), "", "1"}) {
    ScopedEnv set(kDeterministic, deterministic);
    const std::vector<float> g = run_backward(*cuda, spec, f);
    EXPECT_EQ(ran(), "ws_one_pass_ordered") << (deterministic ? deterministic : "unset");
    if (ordered.empty()) ordered = g;
    EXPECT_EQ(g, ordered) << "the ordered one pass's bits repeat";
  }
  std::vector<float> allowed, wg2;
  {
    ScopedEnv set(kDeterministic, "0");
    allowed = run_backward(*cuda, spec, f);
    EXPECT_EQ(ran(), "ws_one_pass");
    {
      ScopedEnv base(kSm90Backward, "base");
      run_backward(*cuda, spec, f);
      EXPECT_EQ(ran(), "base");
    }
    AttentionSpec qbar = dispatch_spec(64);
    qbar.span = span_cross();
    ScopedEnv one_pass(kSm90Backward, "ws_one_pass");
    run_backward(*cuda, qbar, switch_test_forward(*cuda, qbar));
    EXPECT_EQ(ran(), "one_pass_wg2");
  }
  {
    ScopedEnv one_pass(kSm90Backward, "one_pass_wg2");
    wg2 = run_backward(*cuda, spec, f);
  }
  EXPECT_LE(floored_error(qkv_part(allowed, 0, C), qkv_part(wg2, 0, C)), 2e-3) << "dq";
  EXPECT_EQ(qkv_part(allowed, 1, C), qkv_part(wg2, 1, C)) << "dk";
  EXPECT_EQ(qkv_part(allowed, 2, C), qkv_part(wg2, 2, C)) << "dv";
  EXPECT_LE(floored_error(qkv_part(ordered, 0, C), qkv_part(wg2, 0, C)), 2e-3) << "ordered dq";
  EXPECT_LE(floored_error(qkv_part(ordered, 1, C), qkv_part(wg2, 1, C)), 2e-3) << "ordered dk";
  EXPECT_LE(floored_error(qkv_part(ordered, 2, C), qkv_part(wg2, 2, C)), 2e-3) << "ordered dv";
  expect_switch_refused(*cuda, dispatch_spec(64), switch_test_forward(*cuda, dispatch_spec(64)),
                        kDeterministic, "no",
                        "LSGPT_ATTENTION_DETERMINISTIC must be 1 or 0, got 'no'");
}

// A whole-number switch's bad values (env_whole_number) are refused.
void check_whole_number_switch(Backend& cuda, const char* name,
                               std::initializer_list<const char*> bad_values,
                               const std::string& expected_prefix) {
  const AttentionSpec spec = dispatch_spec(64);
  ScopedEnv env(kForceSm80, nullptr);
  const Forward f = switch_test_forward(cuda, spec);
  for (const char* bad : bad_values)
    expect_switch_refused(cuda, spec, f, name, bad, expected_prefix + bad + "'");
}

// The pass runs by default where key_direction_pass_pays says (span cross
// on k at D 128), never for the self basis or without span; the switch
// forces either form and refuses anything else.
TEST(CudaAttentionBackwardSm90Dispatch, KeyDirectionSwitch) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  ScopedEnv env(kForceSm80, nullptr);
  auto ran_pass = [&](int D, const SpanLayer& span) {
    AttentionSpec spec = dispatch_spec(D);
    spec.span = span;
    run_backward(*cuda, spec, switch_test_forward(*cuda, spec));
    return cuda_last_attention_backward_ran_key_direction_pass();
  };
  EXPECT_TRUE(ran_pass(128, span_cross()));
  EXPECT_FALSE(ran_pass(64, span_cross()));
  EXPECT_FALSE(ran_pass(128, span_self()));
  EXPECT_FALSE(ran_pass(128, SpanLayer{}));
  {
    ScopedEnv set(kSm90KeyDirection, "pass");
    EXPECT_TRUE(ran_pass(64, span_cross()));
    EXPECT_FALSE(ran_pass(64, span_self()));
  }
  {
    ScopedEnv set(kSm90KeyDirection, "fused");
    EXPECT_FALSE(ran_pass(128, span_cross()));
  }
  const AttentionSpec spec = dispatch_spec(64);
  expect_switch_refused(*cuda, spec, switch_test_forward(*cuda, spec), kSm90KeyDirection, "yes",
                        "LSGPT_ATTENTION_SM90_KEY_DIRECTION must be auto, pass or fused, got 'yes'");
}

// The run length is a whole number of key blocks from 1, the head group
// of heads from 0, the one pass's block cap of blocks from 1.
TEST(CudaAttentionBackwardSm90Dispatch, RefusesABadBandRunHeadGroupOrBlockCap) {
  REQUIRE_CUDA(cuda);
  check_whole_number_switch(*cuda, kSm90BandRun,
                            {"0", "-3", "+8", " 8", "2x", "four", "99999999999"},
                            "LSGPT_ATTENTION_SM90_BAND_RUN must be a whole number of key blocks "
                            "from 1 to 1048576, got '");
  check_whole_number_switch(*cuda, kSm90HeadGroup, {"-1", "+4", "4x", "1048577"},
                            "LSGPT_ATTENTION_SM90_HEAD_GROUP must be a whole number of heads "
                            "from 0 to 1048576, got '");
  check_whole_number_switch(*cuda, kSm90OnePassBlocks, {"0", "-1", "+7", "7x", "1048577"},
                            "LSGPT_ATTENTION_SM90_ONE_PASS_BLOCKS must be a whole number of "
                            "blocks from 1 to 1048576, got '");
}

// The block order's and ws's item schedule's switches: their values taken,
// anything else refused.
TEST(CudaAttentionBackwardSm90Dispatch, RefusesAnUnknownOrderOrSchedule) {
  REQUIRE_CUDA(cuda);
  constexpr const char* kOrders[] = {"batch_major", "global_first"};
  check_backward_switch(*cuda, kSm90BackwardOrder, kOrders, "heads_first",
                        "LSGPT_ATTENTION_SM90_BACKWARD_ORDER must be auto, batch_major or "
                        "global_first, got 'heads_first'");
  constexpr const char* kSchedules[] = {"static", "dynamic"};
  check_backward_switch(*cuda, kSm90WsSchedule, kSchedules, "sometimes",
                        "LSGPT_ATTENTION_SM90_WS_SCHEDULE must be auto, static or dynamic, got "
                        "'sometimes'");
}

// The block order changes when a gradient row is computed, never how: base
// and wg2 give the same bits in either order, with local and global heads
// mixed (the global ones last, as the model has them), all global, and
// with the span decomposition.
TEST(CudaAttentionBackwardSm90Dispatch, GlobalFirstOrderMatchesBatchMajor) {
  REQUIRE_CUDA(cuda);
  REQUIRE_HOPPER();
  const SpanLayer spans[] = {SpanLayer{}, span_cross()};
  for (const char* variant : {"base", "wg2"})
    for (int D : {64, 128})
      for (int n_local : {0, 3})
        for (const SpanLayer& span : spans) {
          AttentionSpec spec;
          spec.B = 3, spec.T = 300, spec.head_dim = D, spec.n_head = 4, spec.n_local = n_local;
          spec.window = 100, spec.span = span;
          SCOPED_TRACE(std::string(variant) + ", D " + std::to_string(D) + ", local " +
                       std::to_string(n_local) + ", span " + std::to_string(span.any()));
          const Forward f = random_forward_sm80(*cuda, spec, 95 + D);
          ScopedEnv choose(kSm90Backward, variant);
          Gradients batch_major;
          {
            ScopedEnv order(kSm90BackwardOrder, "batch_major");
            batch_major = run_backward_on(*cuda, spec, f, true);
          }
          ScopedEnv order(kSm90BackwardOrder, "global_first");
          const Gradients global_first = run_backward_on(*cuda, spec, f, true);
          EXPECT_EQ(global_first.dqkv, batch_major.dqkv);
          EXPECT_EQ(global_first.bias, batch_major.bias);
        }
}
#endif

}  // namespace test_cuda_attention_backward_sm90
}  // namespace
}  // namespace lsgpt
