// The span decomposition's cross basis on k as a pass of its own (sm_90a):
// u_j = qbar_j / colsum_j, qbar = P^T Q, for every key row (docs/SPAN.md;
// attention_backward.cuh, launch_key_direction_sm90). The backward then
// reads u_j where the self basis reads k_j, so every Hopper backward runs
// span cross on k without qbar's D-wide accumulator beside dK and dV: at
// D 128 that accumulator left ws one consumer warpgroup a block, and base
// 16-query tiles.
//
// A block is one warpgroup owning 64 keys of one (batch row, head), as the
// backward's key blocks: it walks the query tiles that see its keys (local
// heads only their band), Q double-buffered by cp.async, and per tile forms
// S^T = K Q^T (K, Q K-major in shared memory), P^T from the saved lse in
// the accumulator layout (key_softmax without dS, adding the column sums),
// then qbar += P^T Q with P^T from registers and Q read N-major: the
// backward's key-block step with dP, dV and dK left out.
//
// The device code exists only in the sm_90a compilation; the compute_80 PTX
// carries a body that traps, and the host launches it only where
// sm90_backward_supported says the sm_90a code is loaded.
#include <cstdint>
#include <type_traits>

#include "ops/cuda/attention_backward.cuh"
#include "ops/cuda/attention_backward_sm90.cuh"
#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/wgmma.cuh"

namespace lsgpt::cuda::attn {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kKeys = 64;  // a block's keys: the m64 of its products
constexpr int kQ = 64;     // queries a walked tile

template <int D>
struct KeyDirectionShape {
  static_assert(D == 64 || D == 128, "the wgmma kernels are built for D = 64 and 128");
  static constexpr int kKeyBytes = sw128_tile_bytes<kKeys, D>();
  static constexpr int kQueryBytes = sw128_tile_bytes<kQ, D>();
  // K, two stages of Q, two of lse; room to align the start to a swizzle atom.
  static constexpr size_t kSmemBytes =
      size_t(kKeyBytes) + 2 * size_t(kQueryBytes) + sizeof(float) * 2 * kQ + kAtomBytes;
};

#if LSGPT_SM90A_DEVICE

// S^T = K Q^T for the tile: m64 (keys) x kQ, reduced over D.
template <int D>
__device__ __forceinline__ void key_scores(float (&s)[kQ / 2], uint32_t k_addr, uint32_t q_addr) {
  discard_operands(s);
  wgmma_fence();
#pragma unroll
  for (int kc = 0; kc < D / 16; ++kc)
    wgmma_ss<kQ>(s, k_major_descriptor<kKeys>(k_addr, kc), k_major_descriptor<kQ>(q_addr, kc),
                 kc > 0);
  wgmma_commit();
  wgmma_wait<0>();
  fence_operands(s);
}

// Key rows key_row and key_row + 8 (this thread's): u = qbar / colsum (0
// where the sum is about 0, inverse_column_sum), stored as bf16 below T.
template <int D>
__device__ __forceinline__ void store_key_directions(const BackwardParams& p, bf16* head_out,
                                                     const float (&qbar)[D / 2],
                                                     const float (&colsum)[2], int key_row,
                                                     int quad) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float inv = inverse_column_sum(colsum[r]);
    const int j = key_row + 8 * r;
    float u[D / 4];
#pragma unroll
    for (int db = 0; db < D / 8; ++db)
#pragma unroll
      for (int e = 0; e < 2; ++e) u[2 * db + e] = qbar[4 * db + 2 * r + e] * inv;
    if (j < p.T) store_row_pairs<D / 8>(head_out + size_t(j) * p.C, u, p.head_dim, quad);
  }
}

#endif  // LSGPT_SM90A_DEVICE

// Grid (key blocks, B, head slots), the global heads' slots first: their
// long causal walks start before the local heads' bands fill in behind.
template <int D>
__global__ void __launch_bounds__(kThreads)
    attention_key_direction_sm90_kernel(const BackwardParams p, bf16* direction) {
  wait_for_previous_grid();
  allow_next_grid();
#if LSGPT_SM90A_DEVICE
  using Shape = KeyDirectionShape<D>;
  constexpr int kQueryElems = Shape::kQueryBytes / 2;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = align_to_atom(smem_raw);
  bf16* k_tile = reinterpret_cast<bf16*>(smem);
  bf16* q_tiles = reinterpret_cast<bf16*>(smem + Shape::kKeyBytes);  // 2 stages
  float* lse_tiles = reinterpret_cast<float*>(smem + Shape::kKeyBytes + 2 * Shape::kQueryBytes);

  const int b = blockIdx.y, slot = blockIdx.z, n_global = p.n_head - p.n_local;
  const int h = slot < n_global ? p.n_local + slot : slot - n_global;
  const HeadRows rows = head_rows(p, b * p.n_head + h, b, h);
  const HeadMask mask{h < p.n_local, p.window};
  const int k0 = blockIdx.x * kKeys;
  const QueryTileRange tiles = query_tiles_seeing<kQ>(mask, k0, kKeys, p.T);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int group = lane >> 2, quad = lane & 3;
  const int key_row = k0 + warp * 16 + group;  // and key_row + 8

  auto load_stage = [&](int tile, int stage) {
    const int i0 = tile * kQ;
    load_tile_sw128<kQ, D>(q_tiles + stage * kQueryElems, rows.q_base, rows.qkv_row, i0, p.T,
                           p.head_dim);
    for (int i = threadIdx.x; i < kQ; i += kThreads)
      lse_tiles[stage * kQ + i] = i0 + i < p.T ? rows.lse_row[i0 + i] * kLog2e : 0.f;
  };
  load_tile_sw128<kKeys, D>(k_tile, rows.k_base, rows.qkv_row, k0, p.T, p.head_dim);
  load_stage(tiles.first, 0);
  cp_async_commit();

  float qbar[D / 2] = {}, colsum[2] = {};
  const uint32_t k_addr = smem_address(k_tile);
  for (int tile = tiles.first; tile <= tiles.last; ++tile) {
    const int stage = (tile - tiles.first) & 1;
    prefetch_then_wait(tile < tiles.last, [&] { load_stage(tile + 1, stage ^ 1); });
    const uint32_t q_addr = smem_address(q_tiles + stage * kQueryElems);
    const int i0 = tile * kQ;
    auto step = [&](auto masked) {
      float s[kQ / 2], no_dp[kQ / 2];
      key_scores<D>(s, k_addr, q_addr);
      key_softmax<kQ, decltype(masked)::value, true, true, false>(
          s, no_dp, colsum, lse_tiles + stage * kQ, nullptr, p.scale_log2, i0, p.T, mask,
          key_row, quad);
      uint32_t a_p[kQ / 16][4];
      a_fragments<kQ>(a_p, s);
      // qbar += P^T Q: the query blocks' dQ += dS K product (A from
      // registers, 64 rows read N-major), on P^T and Q.
      static_assert(kQ == kQueryBlockKeyTile, "query_gradient's k is 64 rows");
      query_gradient<D>(qbar, a_p, q_addr);
    };
    if (mask.tile_needs_mask(i0, kQ, k0, kKeys) || i0 + kQ > p.T)
      step(std::true_type{});
    else
      step(std::false_type{});
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }
  bf16* head_out = direction + size_t(b) * p.T * p.C + size_t(h) * p.head_dim;
  store_key_directions<D>(p, head_out, qbar, colsum, key_row, quad);
#else
  (void)p, (void)direction;
  __trap();  // only the sm_90a binary has this kernel; the host never launches it elsewhere
#endif
}

template <int D>
void launch(CudaContext& ctx, const BackwardParams& p, int B, bf16* direction) {
  using Shape = KeyDirectionShape<D>;
  auto kernel = attention_key_direction_sm90_kernel<D>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(Shape::kSmemBytes)));
  const dim3 grid(unsigned(ceil_div(p.T, kKeys)), unsigned(B), unsigned(p.n_head));
  launch_kernel(ctx, kernel, grid, kThreads, Shape::kSmemBytes, p, direction);
}

}  // namespace

void launch_key_direction_sm90(CudaContext& ctx, const BackwardParams& p, int B,
                               bf16* direction) {
  if (padded_head_dim(p.head_dim) == 64)
    launch<64>(ctx, p, B, direction);
  else
    launch<128>(ctx, p, B, direction);
}

}  // namespace lsgpt::cuda::attn
