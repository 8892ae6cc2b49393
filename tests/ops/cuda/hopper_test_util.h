// Helpers shared by the tests of the Hopper (sm_90a, wgmma) attention
// kernels: the switch back to the sm_80 kernels (LSGPT_ATTENTION_SM80) for
// one scope, the variant switches (LSGPT_ATTENTION_SM90_FORWARD, _BACKWARD),
// the skip on a GPU that is not compute capability 9.0, the parity cases'
// shapes, and the checks that a switch takes its values and refuses others.
// ScopedEnv (core/env_switch.h) also serves the other CUDA path switches
// (LSGPT_CUDA_DBIAS).
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/env_switch.h"
#include "core/error.h"
#include "ops/attention_spec.h"

#ifdef LSGPT_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lsgpt::cuda_test {

using ::lsgpt::ScopedEnv;

constexpr const char* kForceSm80 = "LSGPT_ATTENTION_SM80";
// Which Hopper forward runs (attention_forward.cuh): every kernel it can
// force ("auto", also taken, picks one of them by shape).
constexpr const char* kSm90Forward = "LSGPT_ATTENTION_SM90_FORWARD";
constexpr const char* kSm90ForwardVariants[] = {"base", "ws", "ws_persistent", "ws_dynamic"};
// The same for the Hopper backward (attention_backward.cuh).
constexpr const char* kSm90Backward = "LSGPT_ATTENTION_SM90_BACKWARD";
constexpr const char* kSm90BackwardVariants[] = {
    "base",    "wg2",         "ws", "one_pass", "one_pass_wg2", "ws_band",
    "ws_one_pass", "ws_one_pass_ordered"};
// The variants that sum dQ by float atomics (not bit-reproducible).
inline bool sums_dq_by_atomics(const std::string& variant) {
  return variant == "one_pass" || variant == "one_pass_wg2" || variant == "ws_one_pass";
}
// ws_band's run length in key blocks (attention_backward.cuh).
constexpr const char* kSm90BandRun = "LSGPT_ATTENTION_SM90_BAND_RUN";
// How ws hands out its items (striding or a counter).
constexpr const char* kSm90WsSchedule = "LSGPT_ATTENTION_SM90_WS_SCHEDULE";
// ws's items in groups of this many (batch row, head) pairs.
constexpr const char* kSm90HeadGroup = "LSGPT_ATTENTION_SM90_HEAD_GROUP";
constexpr const char* kSm90OnePassBlocks = "LSGPT_ATTENTION_SM90_ONE_PASS_BLOCKS";
// Whether the span's cross basis on k runs as a pass of its own.
constexpr const char* kSm90KeyDirection = "LSGPT_ATTENTION_SM90_KEY_DIRECTION";
// The order the two-pass Hopper backward starts its blocks in.
constexpr const char* kSm90BackwardOrder = "LSGPT_ATTENTION_SM90_BACKWARD_ORDER";

// "" on a compute capability 9.0 GPU, else why the Hopper kernels cannot run.
inline std::string why_not_hopper() {
#ifdef LSGPT_HAVE_CUDA
  int device = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&device) != cudaSuccess || cudaGetDeviceProperties(&prop, device) != cudaSuccess)
    return "cannot read the device properties";
  if (prop.major == 9 && prop.minor == 0) return "";
  return std::string(prop.name) + " has compute capability " + std::to_string(prop.major) + "." +
         std::to_string(prop.minor);
#else
  return "no CUDA backend in this build";
#endif
}

// One parity case: a setting (heads, window, span) at sequence length T and
// head dim D.
template <typename Setting>
struct ParityCase {
  Setting setting;
  int T, D;
};

// Every setting at T 1, 7 (a block partly past T), 100, 1000 and 4096, head
// dims 64 and 128, and two head dims padded to a kernel size (zero-filled
// columns must add nothing): `at48` at T 1000, `at96` at T 100.
template <typename Setting>
std::vector<ParityCase<Setting>> parity_cases(const std::vector<Setting>& settings,
                                              const Setting& at48, const Setting& at96) {
  std::vector<ParityCase<Setting>> cases;
  for (const Setting& s : settings)
    for (int T : {1, 7, 100, 1000, 4096})
      for (int D : {64, 128}) cases.push_back({s, T, D});
  cases.push_back({at48, 1000, 48});
  cases.push_back({at96, 100, 96});
  return cases;
}

// The test name of a parity case.
template <typename Setting>
std::string parity_case_name(const ParityCase<Setting>& c) {
  return c.setting.name + "_T" + std::to_string(c.T) + "_D" + std::to_string(c.D);
}

// A parity case's shape: 4 heads at D 64, 2 above; B 1 from T 1000, else 2;
// local_heads -1: all but one, -2: half, -3: all, else that many.
inline AttentionSpec parity_spec(int T, int D, int local_heads, int window) {
  AttentionSpec spec;
  spec.T = T;
  spec.head_dim = D;
  spec.n_head = D <= 64 ? 4 : 2;
  spec.B = T >= 1000 ? 1 : 2;
  const int L = local_heads;
  spec.n_local = L == -1 ? spec.n_head - 1 : L == -2 ? spec.n_head / 2 : L == -3 ? spec.n_head : L;
  spec.window = window;
  return spec;
}

// The dispatch tests' shape: one local head of two at w 8, T 64.
inline AttentionSpec dispatch_spec(int head_dim) {
  AttentionSpec spec;
  spec.B = 1, spec.T = 64, spec.head_dim = head_dim, spec.n_head = 2, spec.n_local = 1;
  spec.window = 8;
  return spec;
}

// `call` throws an Error whose message holds `expected`; `what` names the
// call in the failure.
template <typename Call>
void expect_refusal(Call call, const std::string& expected, const std::string& what) {
  try {
    call();
    ADD_FAILURE() << "accepted by " << what << ": " << expected;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
  }
}

// The variant switch `name` takes each of `variants`, "" (auto) and "auto":
// `uses_sm90`, the dispatch query, does not throw under any of them.
template <typename UsesSm90, size_t N>
void expect_variants_accepted(const char* name, const char* const (&variants)[N],
                              UsesSm90 uses_sm90) {
  for (const char* variant : variants) {
    ScopedEnv choose(name, variant);
    EXPECT_NO_THROW(uses_sm90()) << variant;
  }
  {
    ScopedEnv empty(name, "");
    EXPECT_NO_THROW(uses_sm90()) << "empty means auto";
  }
  ScopedEnv choose(name, "auto");
  EXPECT_NO_THROW(uses_sm90());
}

// Which kernel the dispatch query `uses_sm90(spec)` picks on a Hopper GPU:
// the wgmma one with LSGPT_ATTENTION_SM80 unset or 0, also for `with_span`
// (the span decomposition), the sm_80 one for head dims up to 32; and
// LSGPT_ATTENTION_SM80 takes 0 or 1 only.
template <typename UsesSm90>
void expect_dispatch_choices(UsesSm90 uses_sm90, const AttentionSpec& spec,
                             const AttentionSpec& with_span) {
  ScopedEnv env(kForceSm80, nullptr);
  EXPECT_TRUE(uses_sm90(spec));
  {
    ScopedEnv zero(kForceSm80, "0");
    EXPECT_TRUE(uses_sm90(spec));
  }
  EXPECT_TRUE(uses_sm90(with_span)) << "span runs on the wgmma kernel";
  AttentionSpec small = spec;
  small.head_dim = 32;
  EXPECT_FALSE(uses_sm90(small));
  ScopedEnv bad(kForceSm80, "yes");
  expect_refusal([&] { uses_sm90(spec); }, "LSGPT_ATTENTION_SM80 must be 0 or 1, got 'yes'",
                 "the dispatch");
}

#define REQUIRE_HOPPER()                                                         \
  if (const std::string why_ = ::lsgpt::cuda_test::why_not_hopper(); !why_.empty()) \
  GTEST_SKIP() << "not a Hopper GPU (the wgmma kernels need compute capability 9.0): " << why_

}  // namespace lsgpt::cuda_test
