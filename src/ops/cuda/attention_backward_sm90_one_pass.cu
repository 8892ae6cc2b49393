// One-pass LS flash-attention backward for Hopper (sm_90a;
// LSGPT_ATTENTION_SM90_BACKWARD=one_pass, not the default): the contract of
// attention_backward.cu, FlashAttention-2/3 style. Only key blocks: one per
// (batch row, head, 64 keys), walking the query tiles that see its keys (all
// later ones on global heads, the band [k0, k0 + 63 + window) on local heads)
// and forming S^T, dP^T once per tile pair for all three gradients: 5 matrix
// products instead of the base kernel's 7.
//
// Per query tile, as the base kernel's key blocks (the same helpers,
// attention_backward_sm90.cuh): S^T = K Q^T, dP^T = V dO^T; P^T, dS^T in the
// accumulator (= A register) layout; dV += P^T dO, dK += dS^T Q (and qbar)
// from registers. dQ = dS K needs dS with the queries as the m index, the
// transpose of what the registers hold: stmatrix .trans writes dS^T's bf16
// A fragments into a 64 x 64 shared tile as dS (rows the queries, K-major in
// the keys), and dQ's tile comes out of wgmma with dS and K (N-major) both
// read from shared memory, one 64-column panel of D at a time so that only
// 32 more accumulator registers are live beside dK and dV.
//
// Each key block adds its share of dQ into an fp32 buffer (B, head, T, D) by
// red.global.add.v2.f32; a second kernel scales those sums by tau, applies
// the span projection of q (finish_query_row, as the base query blocks) and
// writes the bf16 dQ rows of dqkv.
//
// Determinism: the float additions into a dQ row arrive in whatever order
// the key blocks reach them, so dQ (and everything trained from it) is not
// bit-reproducible run to run with this variant; dK and dV are (each row
// finished by one block). docs/CUDA.md, "Backward on Hopper: one pass".
//
// The device code exists only in the sm_90a compilation; the compute_80 PTX
// carries a body that traps, and the host launches it only where
// sm90_backward_supported says the base kernel's sm_90a code is loaded (the
// same binary carries both).
#include <cstdint>
#include <type_traits>

#include "ops/cuda/attention_backward.cuh"
#include "ops/cuda/attention_backward_sm90.cuh"
#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/wgmma.cuh"

namespace lsgpt::cuda::attn {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kKeysPerBlock = 64;  // the m64 of the key-side products, the k of dQ = dS K
constexpr int kDsRows = 64;        // the dS tile's rows: the m64 of dQ = dS K
constexpr int kFinishRowsPerBlock = kThreads / 4;  // finish_dq_kernel: a quad of lanes a row

template <int D, bool kQbar>
struct OnePassShape {
  static_assert(D == 64 || D == 128, "the wgmma backward is built for D = 64 and 128");
  // Queries per tile (the n of S^T), as the base kernel: 16 when the three
  // D-wide accumulators dK, dV and qbar must stay in registers. The dQ
  // product still has 64 rows then; the 48 past the tile are not added.
  static constexpr int kQueryTile = kKeyBlockQueryTile<D, kQbar>;
  static constexpr int kKeyBytes = sw128_tile_bytes<kKeysPerBlock, D>();
  static constexpr int kQueryTileBytes = sw128_tile_bytes<kQueryTile, D>();
  static constexpr int kDsBytes = sw128_tile_bytes<kDsRows, kKeysPerBlock>();
  // K, V, dS, two stages of Q and dO, two of lse and delta; room to align
  // the start to a swizzle atom.
  static constexpr size_t kSmemBytes = 2 * size_t(kKeyBytes) + kDsBytes +
                                       4 * size_t(kQueryTileBytes) +
                                       sizeof(float) * 4 * kQueryTile + kAtomBytes;
  static_assert(kSmemBytes <= 227 * 1024, "over the opt-in shared memory of one block");
};

#if LSGPT_SM90A_DEVICE

// *addr += (x, y) when `valid`, as one vectorised reduction (no return
// value, so no round trip); predicated rather than branched, so that no
// divergent code sits between the warpgroup's wgmma.
__device__ __forceinline__ void red_add_v2(float* addr, float x, float y, bool valid) {
  asm volatile(
      "{\n.reg .pred p;\n"
      "setp.ne.b32 p, %3, 0;\n"
      "@p red.global.add.v2.f32 [%0], {%1, %2};\n}\n" ::"l"(addr),
      "f"(x), "f"(y), "r"(int(valid))
      : "memory");
}

// dQ += dS K for the tile's kQ queries (starting at query i0), added into
// dq_tile (row i0 of the head's fp32 rows, D floats each). dS comes from the
// shared tile (K-major: the k index is the block's keys), K is read N-major,
// one 64-column panel of D at a time. Accumulator rows past kQ (the dS tile
// rows this tile did not write) or at or past T add nothing.
template <int D, int kQ>
__device__ __forceinline__ void add_query_gradient(float* dq_tile, uint32_t ds_addr,
                                                   uint32_t k_addr, int i0, int T) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int group = lane >> 2, quad = lane & 3;
#pragma unroll
  for (int panel = 0; panel < D / kPanelCols; ++panel) {
    const uint32_t k_panel = k_addr + panel * kKeysPerBlock * kSwizzleRowBytes;
    float acc[kPanelCols / 2];
    zero(acc);
    fence_operands(acc);
    wgmma_fence();
#pragma unroll
    for (int kc = 0; kc < kKeysPerBlock / 16; ++kc)
      wgmma_ss<kPanelCols, Major::K, Major::MN>(acc, k_major_descriptor<kDsRows>(ds_addr, kc),
                                                n_major_descriptor<kKeysPerBlock>(k_panel, kc),
                                                kc > 0);
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(acc);
    // Element 4 nb + e: row 16 warp + group + 8 (e >> 1), column
    // panel * 64 + nb * 8 + 2 quad + (e & 1).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = warp * 16 + group + 8 * r;
      const bool valid = row < kQ && i0 + row < T;
      float* dst = dq_tile + size_t(row) * D + panel * kPanelCols + quad * 2;
#pragma unroll
      for (int nb = 0; nb < kPanelCols / 8; ++nb)
        red_add_v2(dst + nb * 8, acc[4 * nb + 2 * r], acc[4 * nb + 2 * r + 1], valid);
    }
  }
}

template <int D, bool kSpan, bool kQbar>
__device__ void one_pass_key_block(const BackwardParams& p, float* dq_accum,
                                   unsigned char* smem) {
  using Shape = OnePassShape<D, kQbar>;
  constexpr int kQ = Shape::kQueryTile;
  bf16* k_tile = reinterpret_cast<bf16*>(smem);
  bf16* v_tile = reinterpret_cast<bf16*>(smem + Shape::kKeyBytes);
  unsigned char* ds_tile = smem + 2 * Shape::kKeyBytes;
  const QueryStages<kQ, D, kThreads> stages(ds_tile + Shape::kDsBytes);

  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int group = lane >> 2, quad = lane & 3;
  const int bh = blockIdx.y, b = bh / p.n_head, h = bh % p.n_head;
  const int T = p.T;
  const int k0 = blockIdx.x * kKeysPerBlock;
  const HeadRows rows = head_rows(p, bh, b, h);
  float* dq_head = dq_accum + size_t(bh) * T * D;
  const HeadMask mask{h < p.n_local, p.window};
  const QueryTileRange tiles = query_tiles_seeing<kQ>(mask, k0, kKeysPerBlock, T);

  load_key_tiles<kKeysPerBlock, D>(k_tile, v_tile, p, rows, k0, threadIdx.x);
  stages.load(p, rows, tiles.first, 0);
  cp_async_commit();

  float dk[D / 2] = {}, dv[D / 2] = {}, qbar[kQbar ? D / 2 : 1] = {}, colsum[2] = {};
  const int key_row = k0 + warp * 16 + group;  // and key_row + 8
  const uint32_t k_addr = smem_address(k_tile), v_addr = smem_address(v_tile);
  const uint32_t ds_addr = smem_address(ds_tile);

  for (int tile = tiles.first; tile <= tiles.last; ++tile) {
    const int stage = (tile - tiles.first) & 1;
    prefetch_then_wait(tile < tiles.last, [&] { stages.load(p, rows, tile + 1, stage ^ 1); });
    const QueryTile query_tile = stages.tile(stage);
    const int i0 = tile * kQ;

    // Masked instantiation for tiles the mask cuts or that run past T,
    // branch-free one for the rest. The previous tile's dQ product, the last
    // reader of the dS tile, was waited for before the previous iteration's
    // closing barrier.
    auto step = [&](auto masked) {
      one_pass_key_step<D, kKeysPerBlock, kQ, decltype(masked)::value, kQbar>(
          dv, dk, qbar, colsum, k_addr, v_addr, ds_addr, query_tile, p, i0, mask, key_row, quad);
      fence_proxy_async_shared();  // stmatrix wrote the dS tile that wgmma reads next
      __syncthreads();
      add_query_gradient<D, kQ>(dq_head + size_t(i0) * D, ds_addr, k_addr, i0, T);
    };
    // Uniform over the block, so both paths reach the barrier inside.
    if (mask.tile_needs_mask(i0, kQ, k0, kKeysPerBlock) || i0 + kQ > T)
      step(std::true_type{});
    else
      step(std::false_type{});
    __syncthreads();  // the next iteration's prefetch and dS store overwrite this stage's tiles
  }

  finish_wgmma_key_rows<D, kSpan, kQbar>(p, dk, dv, qbar, colsum, key_row, rows, quad);
}

#endif  // LSGPT_SM90A_DEVICE

template <int D, bool kSpan, bool kQbar>
__global__ void __launch_bounds__(kThreads)
    attention_backward_one_pass_kernel(const BackwardParams p, float* dq_accum) {
  wait_for_previous_grid();
  allow_next_grid();
#if LSGPT_SM90A_DEVICE
  extern __shared__ __align__(16) unsigned char smem_raw[];
  one_pass_key_block<D, kSpan, kQbar>(p, dq_accum, align_to_atom(smem_raw));
#else
  (void)p, (void)dq_accum;
  __trap();  // only the sm_90a binary has this kernel; the host never launches it elsewhere
#endif
}

// dQ rows from the fp32 sums: scaled by tau, projected (span on q) and
// stored as bf16 by finish_query_row, whose row layout (a quad of lanes a
// row, lane `quad` holding columns 8 db + 2 quad + {0, 1}) this kernel reads
// the sums in. Plain CUDA: it needs no sm_90a code.
template <int D, bool kSpan>
__global__ void __launch_bounds__(kThreads)
    finish_dq_kernel(const BackwardParams p, const float* dq_accum) {
  wait_for_previous_grid();
  allow_next_grid();
  constexpr int kDBlocks = D / 8;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int group = lane >> 2, quad = lane & 3;
  const int bh = blockIdx.y, b = bh / p.n_head, h = bh % p.n_head;
  const int i = blockIdx.x * kFinishRowsPerBlock + warp * 8 + group;
  const float* row = dq_accum + (size_t(bh) * p.T + i) * D;
  float g[2 * kDBlocks];
#pragma unroll
  for (int db = 0; db < kDBlocks; ++db) {
    const float2 x = i < p.T ? *reinterpret_cast<const float2*>(row + db * 8 + quad * 2)
                             : make_float2(0.f, 0.f);
    g[2 * db] = x.x * p.scale, g[2 * db + 1] = x.y * p.scale;
  }
  const bf16* q_base = p.qkv + size_t(b) * p.T * (size_t(3) * p.C) + h * p.head_dim;
  finish_query_row<kDBlocks, kSpan>(p, g, i, b, h, q_base, quad);
}

template <int D, bool kSpan>
void launch_finish_dq(CudaContext& ctx, const BackwardParams& p, int B, const float* dq_accum) {
  const dim3 finish_grid(ceil_div(p.T, kFinishRowsPerBlock), B * p.n_head);
  launch_kernel(ctx, finish_dq_kernel<D, kSpan>, finish_grid, kThreads, 0, p, dq_accum);
}

}  // namespace

size_t one_pass_dq_floats(int B, int T, int n_head, int head_dim) {
  return size_t(B) * n_head * T * padded_head_dim(head_dim);
}

void run_one_pass(CudaContext& ctx, const BackwardParams& p, int B, bool span, float* dq_accum,
                  OnePassKernel kernel, int block_threads, int keys_per_block, size_t smem_bytes) {
  const size_t dq_bytes = sizeof(float) * one_pass_dq_floats(B, p.T, p.n_head, p.head_dim);
  CUDA_CHECK(cudaMemsetAsync(dq_accum, 0, dq_bytes, ctx.stream()));
  CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes)));
  // Block x = 0 holds the first keys, which the most queries see on global
  // heads: the longest blocks start first.
  const dim3 grid(ceil_div(p.T, keys_per_block), B * p.n_head);
  launch_kernel(ctx, kernel, grid, block_threads, smem_bytes, p, dq_accum);
  // The finishing kernel depends on the head dim and span only (qbar is the
  // key side's).
  dispatch_backward(p, span, false, [&](auto d, auto span_c, auto) {
    launch_finish_dq<decltype(d)::value, decltype(span_c)::value>(ctx, p, B, dq_accum);
  });
}

void launch_backward_sm90_one_pass(CudaContext& ctx, const BackwardParams& p, int B, bool span,
                                   bool qbar, float* dq_accum) {
  dispatch_backward(p, span, qbar, [&](auto d, auto span_c, auto qbar_c) {
    constexpr int D = decltype(d)::value;
    constexpr bool kQbar = decltype(qbar_c)::value;
    run_one_pass(ctx, p, B, span, dq_accum,
                 attention_backward_one_pass_kernel<D, decltype(span_c)::value, kQbar>, kThreads,
                 kKeysPerBlock, OnePassShape<D, kQbar>::kSmemBytes);
  });
}

}  // namespace lsgpt::cuda::attn
