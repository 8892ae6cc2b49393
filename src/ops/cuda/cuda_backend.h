// The CUDA backend's one entry point. Plain C++ (no CUDA headers), so that
// backend_factory.cpp and the tests include it with g++.
#pragma once

#include <memory>

#include "ops/backend.h"

namespace lsgpt {

// bf16 parameters, activations and gradients; f32 statistics, optimizer state
// and master weights. Throws lsgpt::Error when no usable GPU is present
// ("no CUDA GPU found: ...") or when the GPU is older than the build targets.
std::unique_ptr<Backend> make_cuda_backend();

// The cudaStream_t a CUDA backend enqueues every op on (as void*, so this
// header needs no CUDA include), for timing with events; null for any other
// backend.
void* cuda_stream_of(Backend& backend);

// Whether this backend's attention_forward(spec) runs the Hopper (wgmma)
// kernel: a compute capability 9.0 GPU, head dim over 32, and
// LSGPT_ATTENTION_SM80 unset or 0. False for any other backend.
bool cuda_attention_forward_uses_sm90(Backend& backend, const AttentionSpec& spec);
// The same for attention_backward(spec) (attention_backward_sm90.cu).
bool cuda_attention_backward_uses_sm90(Backend& backend, const AttentionSpec& spec);
// The kernel the CUDA backend's last attention_backward ran, for tests and
// benchmark reports: "sm80" (also before the first), or the Hopper
// variant's LSGPT_ATTENTION_SM90_BACKWARD name ("ws", "ws_one_pass", ...):
// what ran after the fallbacks (ws_one_pass with qbar runs one_pass_wg2).
const char* cuda_last_attention_backward_kernel();
// Whether that call formed the span's cross basis on k in a pass of its own
// first (the key-direction pass, LSGPT_ATTENTION_SM90_KEY_DIRECTION).
bool cuda_last_attention_backward_ran_key_direction_pass();

// How the CUDA backend's last matmul_backward with a bias gradient got it,
// for tests and benchmark reports: "bgradb-f32" or "bgradb-bf16" (cuBLASLt's
// BGRADB epilogue writing a vector of that type), "column-sum" (the separate
// pass), or "none" before the first.
const char* cuda_last_dbias_path();

}  // namespace lsgpt
