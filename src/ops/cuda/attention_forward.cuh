// What the two LS flash-attention forward kernels share: their parameters,
// the query block size (both write one max-logit partial per 64 queries, so
// one reduction serves both), and the Hopper kernel's entry points, which
// attention_forward.cu dispatches to (docs/CUDA.md, "Forward on Hopper").
#pragma once

#include <cuda_bf16.h>

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

// attention_forward_sm90_wg2.cu: the same contract with two consumer
// warpgroups (128 queries) per block sharing the K/V tiles; with `overlap`
// the softmax of tile j runs while P V of tile j - 1 is on the tensor cores.
// Runs wherever launch_forward_sm90 does (same build, same check).
void launch_forward_sm90_wg2(CudaContext& ctx, const ForwardParams& p, int B, bool with_kbar,
                             bool overlap);

// attention_forward_sm90_ws.cu: warp-specialised, a producer warpgroup
// loading with TMA into a ring of mbarrier-guarded stages and two consumer
// warpgroups in wg2_overlap's order; `persistent`: one block per
// multiprocessor walking many query blocks, else one block per query block.
void launch_forward_sm90_ws(CudaContext& ctx, const ForwardParams& p, int B, bool with_kbar,
                            bool persistent);

// Which Hopper forward runs: LSGPT_ATTENTION_SM90_FORWARD = base (the
// one-warpgroup kernel, attention_forward_sm90.cu), wg2 (two warpgroups,
// each wgmma waited for at once), wg2_overlap (two warpgroups, softmax
// overlapping P V), ws (wg2_overlap's consumers fed by a TMA producer) or
// ws_persistent (ws with one block per multiprocessor). Unset or empty:
// base, until measurements choose; any other value is an error. Read at
// every call (defined in attention_forward.cu) so one binary can time every
// variant.
enum class Sm90ForwardVariant { base, wg2, wg2_overlap, ws, ws_persistent };
Sm90ForwardVariant sm90_forward_variant();

}  // namespace lsgpt::cuda::attn
