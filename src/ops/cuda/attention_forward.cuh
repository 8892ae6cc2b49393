// What the LS flash-attention forward kernels share: their parameters, the
// query block size (all write one max-logit partial per 64 queries, so one
// reduction serves all), the steps the two one-warpgroup kernels (sm_80 and
// the base Hopper one) take alike, and the Hopper kernels' entry points, which
// attention_forward.cu dispatches to (docs/CUDA.md, "Forward on Hopper").
#pragma once

#include <cuda_bf16.h>

#include <optional>

#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/attention_sm90_choice.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"

namespace lsgpt::cuda::attn {

constexpr int kForwardBlockM = 64;  // queries per block
constexpr int kForwardBlockN = 64;  // keys per tile

struct ForwardParams {
  const __nv_bfloat16* qkv;
  __nv_bfloat16* out;
  __nv_bfloat16* kbar;
  float* lse;
  float* max_partials;  // [B * n_head, n_query_blocks]
  // ws_dynamic's item counter (CudaContext::ItemCounter::attention_forward).
  int* item_counter = nullptr;
  int T, n_head, head_dim, C, n_local, window, n_query_blocks;
  float scale, scale_log2;
};

// What a block of one warpgroup (the sm_80 and the base Hopper kernel) works
// on: 64 queries of one (batch row, head) and the key tiles of their band.
struct ForwardBlock {
  int q_block, bh, b, h, q0;
  size_t qkv_row;  // elements between tokens in qkv
  const __nv_bfloat16 *q_base, *k_base, *v_base;
  HeadMask mask;
  int tile_begin, tile_end;  // inclusive

  __device__ __forceinline__ explicit ForwardBlock(const ForwardParams& p)
      // Later query blocks have more keys on global heads: start them first.
      : q_block(p.n_query_blocks - 1 - blockIdx.x),
        bh(blockIdx.y),
        b(bh / p.n_head),
        h(bh % p.n_head),
        q0(q_block * kForwardBlockM),
        qkv_row(size_t(3) * p.C),
        q_base(p.qkv + size_t(b) * p.T * qkv_row + h * p.head_dim),
        k_base(q_base + p.C),
        v_base(q_base + 2 * p.C),
        mask{h < p.n_local, p.window} {
    const int key_lo = mask.local ? max(0, q0 - p.window + 1) : 0;
    const int key_hi = min(p.T, q0 + kForwardBlockM);  // exclusive
    tile_begin = key_lo / kForwardBlockN, tile_end = (key_hi - 1) / kForwardBlockN;
  }
};

// The helpers below read this thread's tiles in the m16n8 accumulator layout
// through accessors, since the kernels keep them differently: s(nb, e) is
// element e of S's n8 block nb, o(db, e) and kbar(db, e) likewise for O and
// kbar; e < 2 is row row_a, else row_b = row_a + 8.

// S set to -inf where the LS mask hides the key (the tile starts at key k0).
template <typename S>
__device__ __forceinline__ void mask_scores(S s, const HeadMask& mask, int row_a, int row_b,
                                            int quad, int k0) {
#pragma unroll
  for (int nb = 0; nb < kForwardBlockN / 8; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int i = e < 2 ? row_a : row_b;
      const int j = k0 + nb * 8 + quad * 2 + (e & 1);
      if (!mask.visible(i, j)) s(nb, e) = -INFINITY;
    }
}

// Online softmax of one S tile: new row maxima, S replaced by exp(S - max),
// row sums rescaled and updated; on_alpha(r, alpha) gets row r's
// alpha = exp(old max - new max), for what was accumulated before.
template <typename S, typename OnAlpha>
__device__ __forceinline__ void online_softmax(S s, OnAlpha on_alpha, float (&row_max)[2],
                                               float (&row_sum)[2], float scale_log2) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float m = row_max[r];
#pragma unroll
    for (int nb = 0; nb < kForwardBlockN / 8; ++nb)
      m = fmaxf(m, fmaxf(s(nb, 2 * r), s(nb, 2 * r + 1)));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
    // A row that has seen only masked keys keeps max -inf; subtract 0 then.
    const float base = m == -INFINITY ? 0.f : m * scale_log2;
    const float alpha = exp2_ftz(row_max[r] * scale_log2 - base);
    row_max[r] = m;
    row_sum[r] *= alpha;
    on_alpha(r, alpha);
#pragma unroll
    for (int nb = 0; nb < kForwardBlockN / 8; ++nb)
#pragma unroll
      for (int e = 2 * r; e < 2 * r + 2; ++e) {
        s(nb, e) = exp2_ftz(s(nb, e) * scale_log2 - base);
        row_sum[r] += s(nb, e);
      }
  }
}

// Row r (0: row_a, 1: row_b) of O and, when kKbar, of kbar times alpha.
template <int D, bool kKbar, typename O, typename Kbar>
__device__ __forceinline__ void rescale_row(O o, Kbar kbar, int r, float alpha) {
#pragma unroll
  for (int db = 0; db < D / 8; ++db) {
    o(db, 2 * r) *= alpha, o(db, 2 * r + 1) *= alpha;
    if constexpr (kKbar) kbar(db, 2 * r) *= alpha, kbar(db, 2 * r + 1) *= alpha;
  }
}

// Row r (0: row_a, 1: row_b) of an accumulator, times inv, as bf16 pairs at
// dst; only the columns below the real head dim.
template <int D, typename Acc>
__device__ __forceinline__ void store_acc_row(__nv_bfloat16* dst, Acc acc, int r, int quad,
                                              float inv, int head_dim) {
#pragma unroll
  for (int db = 0; db < D / 8; ++db) {
    const int col = db * 8 + quad * 2;
    if (db * 8 < head_dim)
      *reinterpret_cast<__nv_bfloat162*>(dst + col) =
          __floats2bfloat162_rn(acc(db, 2 * r) * inv, acc(db, 2 * r + 1) * inv);
  }
}

// 1 / l for a row's softmax sum l (>= 1 for a row below T: its largest
// term is 1) and the row's log-sum-exp from its largest logit: the
// hardware's approximate reciprocal and log2 (MUFU.RCP, MUFU.LG2;
// __fdividef is within 2 ulp, __logf within 2^-21.4 absolute near l = 1
// and 3 ulp beyond), not the IEEE division and logf: about 25
// instructions a row and a slow-path call in the ws forward's epilogue
// (SASS, 2026-12-01). Every forward kernel's epilogue uses both, so they
// round alike.
__device__ __forceinline__ float row_normaliser(float l) { return __fdividef(1.0f, l); }
__device__ __forceinline__ float row_lse(float max_logit, float l) {
  return max_logit + __logf(l);
}

// Row r's (0: row_a, 1: row_a + 8) softmax sum: this thread's share and
// its quad's three others.
__device__ __forceinline__ float quad_row_sum(const float (&row_sum)[2], int r) {
  float l = row_sum[r];
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  return l;
}

// Writes the lse of `row` (below T; quad 0's thread) from its largest raw
// q.k and sum l, for batch row and head bh; returns its largest logit.
__device__ __forceinline__ float write_row_lse(const ForwardParams& p, int bh, int row, int quad,
                                               float raw_max, float l) {
  const float max_logit = raw_max * p.scale;
  if (quad == 0) p.lse[size_t(bh) * p.T + row] = row_lse(max_logit, l);
  return max_logit;
}

// The epilogue of the sm_80 and base forwards (ws stages O for a TMA store,
// attention_forward_consumer.cuh): normalises and writes this thread's
// rows of out (and kbar) and lse for batch row b, head h; returns the largest
// logit among them (-inf if none is below T). bh = b * n_head + h comes from
// the caller: the one-warpgroup kernels take it from blockIdx, and rebuilt
// here it changed their code.
template <int D, bool kKbar, typename O, typename Kbar>
__device__ __forceinline__ float store_rows(const ForwardParams& p, int b, int h, int bh,
                                           int row_a, int quad, const float (&row_max)[2],
                                           const float (&row_sum)[2], O o, Kbar kbar) {
  const int T = p.T;
  float block_max = -INFINITY;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = quad_row_sum(row_sum, r);
    const int row = row_a + 8 * r;
    if (row >= T) continue;
    const float inv = row_normaliser(l);
    const size_t offset = (size_t(b) * T + row) * p.C + h * p.head_dim;
    store_acc_row<D>(p.out + offset, o, r, quad, inv, p.head_dim);
    if constexpr (kKbar) store_acc_row<D>(p.kbar + offset, kbar, r, quad, inv, p.head_dim);
    block_max = fmaxf(block_max, write_row_lse(p, bh, row, quad, row_max[r], l));
  }
  return block_max;
}

// The block's max-logit partial, from each thread's largest logit, for a
// ForwardBlock kernel. `warp_maxima`: shared, one float per warp.
__device__ __forceinline__ void write_max_partial(const ForwardParams& p, const ForwardBlock& blk,
                                                  float thread_max, float* warp_maxima) {
  const float warp_best = warp_max(thread_max);
  if (threadIdx.x % kWarpSize == 0) warp_maxima[threadIdx.x / kWarpSize] = warp_best;
  __syncthreads();
  if (threadIdx.x == 0) {
    float m = warp_maxima[0];
    for (int w = 1; w < kThreads / kWarpSize; ++w) m = fmaxf(m, warp_maxima[w]);
    p.max_partials[size_t(blk.bh) * p.n_query_blocks + blk.q_block] = m;
  }
}

// Launches a ForwardBlock kernel: one block per (query block, batch row and
// head).
template <typename Kernel>
void launch_forward_blocks(CudaContext& ctx, Kernel kernel, size_t smem_bytes,
                           const ForwardParams& p, int B) {
  CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes)));
  const dim3 grid(p.n_query_blocks, B * p.n_head);
  launch_kernel(ctx, kernel, grid, kThreads, smem_bytes, p);
}

// attention_forward_sm90.cu: the wgmma (sm_90a) forward, kbar = P K too when
// with_kbar (span decomposition).
// Whether it can run here: a compute capability 9.0 GPU, a build that carries
// its sm_90a code, and a head dim that pads to 64 or 128.
bool sm90_forward_supported(const CudaContext& ctx, int head_dim);
void launch_forward_sm90(CudaContext& ctx, const ForwardParams& p, int B, bool with_kbar);

// attention_forward_sm90_ws.cu: warp-specialised, a producer warpgroup
// loading with TMA into a ring of mbarrier-guarded stages and two (D 128)
// or three (D 64) consumer warpgroups of 64 queries with the softmax of
// tile j overlapping P V of tile j - 1. `variant`: ws (one block per query
// block), ws_persistent (one block per multiprocessor, each taking every
// gridDim.x-th query block) or ws_dynamic (the same, each taking the next
// query block no block has taken yet from p.item_counter); the same bits.
// out is written by TMA stores: p.out must be 16-byte aligned (the tensor
// map's encoding fails otherwise, an error; the dispatch runs base there).
void launch_forward_sm90_ws(CudaContext& ctx, const ForwardParams& p, int B, bool with_kbar,
                            Sm90ForwardVariant variant);

// Which Hopper forward runs: LSGPT_ATTENTION_SM90_FORWARD = auto (also unset
// or empty: choose_sm90_forward picks by shape), base, ws, ws_persistent or
// ws_dynamic to force one; any other value is an error. nullopt means auto. Read at
// every call (defined in attention_forward.cu) so one binary can time every
// variant. A forced ws variant still runs base where out is not 16-byte
// aligned (launch_forward_sm90_ws).
std::optional<Sm90ForwardVariant> sm90_forward_override();

}  // namespace lsgpt::cuda::attn
