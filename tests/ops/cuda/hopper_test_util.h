// Helpers shared by the tests of the Hopper (sm_90a, wgmma) attention
// kernels: the switch back to the sm_80 kernels (LSGPT_ATTENTION_SM80) for
// one scope, the variant switches (LSGPT_ATTENTION_SM90_FORWARD, _BACKWARD),
// and the skip on a GPU that is not compute capability 9.0.
// ScopedEnv (core/env_switch.h) also serves the other CUDA path switches
// (LSGPT_CUDA_DBIAS).
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "core/env_switch.h"

#ifdef LSGPT_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lsgpt::cuda_test {

using ::lsgpt::ScopedEnv;

constexpr const char* kForceSm80 = "LSGPT_ATTENTION_SM80";
// Which Hopper forward runs (attention_forward.cuh): every kernel it can
// force ("auto", also taken, picks one of them by shape).
constexpr const char* kSm90Forward = "LSGPT_ATTENTION_SM90_FORWARD";
constexpr const char* kSm90ForwardVariants[] = {"base", "ws", "ws_persistent"};
// The same for the Hopper backward (attention_backward.cuh).
constexpr const char* kSm90Backward = "LSGPT_ATTENTION_SM90_BACKWARD";
constexpr const char* kSm90BackwardVariants[] = {"base", "wg2", "one_pass", "one_pass_wg2"};
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

#define REQUIRE_HOPPER()                                                         \
  if (const std::string why_ = ::lsgpt::cuda_test::why_not_hopper(); !why_.empty()) \
  GTEST_SKIP() << "not a Hopper GPU (the wgmma kernels need compute capability 9.0): " << why_

}  // namespace lsgpt::cuda_test
