// What the two LS flash-attention forward kernels share: their parameters,
// the query block size (both write one max-logit partial per 64 queries, so
// one reduction serves both), and the Hopper kernel's entry points, which
// attention_forward.cu dispatches to (docs/CUDA.md, "Forward on Hopper").
#pragma once

#include <cuda_bf16.h>

#include <optional>

#include "ops/cuda/attention_sm90_choice.h"
#include "ops/cuda/cuda_context.h"

namespace lsgpt::cuda::attn {

constexpr int kForwardBlockM = 64;  // queries per block
constexpr int kForwardBlockN = 64;  // keys per tile

struct ForwardParams {
  const __nv_bfloat16* qkv;
  __nv_bfloat16* out;
  __nv_bfloat16* kbar;
  float* lse;
  float* max_partials;  // [B * n_head, n_query_blocks]
  int T, n_head, head_dim, C, n_local, window, n_query_blocks;
  float scale, scale_log2;
};

// attention_forward_sm90.cu: the wgmma (sm_90a) forward, kbar = P K too when
// with_kbar (span decomposition).
// Whether it can run here: a compute capability 9.0 GPU, a build that carries
// its sm_90a code, and a head dim that pads to 64 or 128.
bool sm90_forward_supported(const CudaContext& ctx, int head_dim);
void launch_forward_sm90(CudaContext& ctx, const ForwardParams& p, int B, bool with_kbar);

// attention_forward_sm90_ws.cu: warp-specialised, a producer warpgroup
// loading with TMA into a ring of mbarrier-guarded stages and two consumer
// warpgroups (128 queries) with the softmax of tile j overlapping P V of tile
// j - 1; `persistent`: one block per multiprocessor walking many query
// blocks, else one block per query block.
void launch_forward_sm90_ws(CudaContext& ctx, const ForwardParams& p, int B, bool with_kbar,
                            bool persistent);

// Which Hopper forward runs: LSGPT_ATTENTION_SM90_FORWARD = auto (also unset
// or empty: choose_sm90_forward picks by shape), base, ws or ws_persistent
// to force one; any other value is an error. nullopt means auto. Read at
// every call (defined in attention_forward.cu) so one binary can time every
// variant.
std::optional<Sm90ForwardVariant> sm90_forward_override();

}  // namespace lsgpt::cuda::attn
