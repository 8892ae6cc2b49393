// LS flash-attention backward for Hopper (sm_90a): the contract of
// attention_backward.cu (dQ, dK, dV from qkv, dout, the forward's lse, delta
// and, with the span decomposition, kbar; local heads in their band, global
// heads causal, all in one launch) with the matrix products on warpgroup MMA
// (wgmma.mma_async m64nNk16, bf16 in, f32 accumulate). The design is the
// sm_80 kernel's: two kinds of blocks told apart by blockIdx.x, each
// finishing its gradient rows alone, so no atomics and bit-reproducible
// results, at the price of computing S and dP in both kinds.
//
// A block is one warpgroup (4 warps).
// - Key blocks own 64 keys (the m64 of every product) and walk the query
//   tiles that see them. S^T = K Q^T and dP^T = V dO^T read K, V (loaded
//   once) and the Q, dO tile from shared memory, all K-major; P^T and
//   dS^T = P^T o (dP^T - delta) then sit in the accumulator layout, which is
//   the A register layout, so dV += P^T dO, dK += dS^T Q (and qbar += P^T Q)
//   take them from registers and read dO, Q N-major (the forward's P V
//   pattern). Computing the transposed products directly is why no P or dS
//   tile ever goes through shared memory.
// - Query blocks own 64 queries and walk the key tiles of their band:
//   S = Q K^T, dP = dO V^T (shared K-major operands), dQ += dS K with dS
//   from registers and K read N-major (the forward's kbar += P K).
// Tiles are in wgmma.cuh's 128-byte swizzle, filled by cp.async (zero fill
// past T and the real head dim) and double-buffered as in the sm_80 kernel.
//
// The device code exists only in the sm_90a compilation; the compute_80 PTX
// carries a body that traps, and the host never launches it there
// (sm90_backward_supported checks the loaded binary).
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

constexpr int kKeysPerBlock = 64;     // keys per warpgroup in key blocks: the m64 of their products
constexpr int kQueriesPerBlock = 64;  // queries per warpgroup in query blocks: the same
constexpr int kKeyTile = kQueryBlockKeyTile;  // keys per tile in query blocks

// kWarpgroups per block (1: the base kernel; 2: the wg2 variant). Each
// warpgroup owns its 64 keys (key blocks) or 64 queries (query blocks), with
// its own K/V or Q/dO tile; the tiles the block walks (Q/dO or K/V) are
// shared, copied by all its threads.
template <int D, bool kQbar, int kWarpgroups>
struct Sm90BackwardShape {
  static_assert(D == 64 || D == 128, "the wgmma backward is built for D = 64 and 128");
  static_assert(kWarpgroups == 1 || kWarpgroups == 2, "one or two warpgroups a block");
  static constexpr int kBlockThreads = kWarpgroups * kThreads;
  static constexpr int kQueryTile = kKeyBlockQueryTile<D, kQbar>;
  static constexpr int kKeyBytes = sw128_tile_bytes<kKeysPerBlock, D>();
  static constexpr int kQueryTileBytes = sw128_tile_bytes<kQueryTile, D>();
  // K, V (each warpgroup's), two stages of Q and dO, two stages of lse and delta.
  static constexpr size_t kKeyBlockSmem = 2 * kWarpgroups * size_t(kKeyBytes) +
                                          4 * size_t(kQueryTileBytes) +
                                          sizeof(float) * 4 * kQueryTile;
  static constexpr int kQBytes = sw128_tile_bytes<kQueriesPerBlock, D>();
  static constexpr int kKeyTileBytes = sw128_tile_bytes<kKeyTile, D>();
  // Q, dO (each warpgroup's), two stages of K and V.
  static constexpr size_t kQueryBlockSmem =
      2 * kWarpgroups * size_t(kQBytes) + 4 * size_t(kKeyTileBytes);
  // And room to align the start to a swizzle atom.
  static constexpr size_t kSmemBytes =
      (kKeyBlockSmem > kQueryBlockSmem ? kKeyBlockSmem : kQueryBlockSmem) + kAtomBytes;
  static_assert(kSmemBytes <= 227 * 1024, "over the opt-in shared memory of one block");
};

#if LSGPT_SM90A_DEVICE

// Which (batch row, head) a thread block works on. Blocks start in grid
// order, x fastest. Batch-major, the grid is (block, head, batch row): every
// head of batch row 0 first, as the kernel first ran. With global_first (the
// default) it is (block, batch row, head slot), the global heads' slots
// first, so every global head's long causal walks start before the local
// heads' short bands, which then fill in behind them, instead of the last
// batch row's global heads starting last and running alone at the end.
struct BlockHead {
  int b, h, bh;
};

__device__ __forceinline__ BlockHead block_head(const BackwardParams& p) {
  if (!p.global_first) {
    const int h = blockIdx.y, b = blockIdx.z;
    return {b, h, b * p.n_head + h};
  }
  const int b = blockIdx.y, slot = blockIdx.z, n_global = p.n_head - p.n_local;
  const int h = slot < n_global ? p.n_local + slot : slot - n_global;
  return {b, h, b * p.n_head + h};
}

template <int D, bool kSpan, bool kQbar, int kWarpgroups>
__device__ void key_block(const BackwardParams& p, unsigned char* smem, int key_block_index) {
  using Shape = Sm90BackwardShape<D, kQbar, kWarpgroups>;
  constexpr int kQ = Shape::kQueryTile;
  // One warpgroup: constants, so the base kernel's code is what it was.
  const int wg = kWarpgroups == 1 ? 0 : warpgroup_index();
  const int wg_thread = kWarpgroups == 1 ? int(threadIdx.x) : int(threadIdx.x) % kThreads;
  // This warpgroup's K and V; the block's Q, dO stages after all of them.
  bf16* k_tile = reinterpret_cast<bf16*>(smem + 2 * wg * Shape::kKeyBytes);
  bf16* v_tile = reinterpret_cast<bf16*>(smem + (2 * wg + 1) * Shape::kKeyBytes);
  const QueryStages<kQ, D, Shape::kBlockThreads> stages(smem + 2 * kWarpgroups * Shape::kKeyBytes);

  const int lane = threadIdx.x % kWarpSize, warp = wg_thread / kWarpSize;
  const int group = lane >> 2, quad = lane & 3;
  const BlockHead head = block_head(p);
  const int bh = head.bh, b = head.b, h = head.h;
  const int T = p.T;
  const int block_k0 = key_block_index * kWarpgroups * kKeysPerBlock;
  const int k0 = block_k0 + wg * kKeysPerBlock;  // this warpgroup's keys
  const HeadRows rows = head_rows(p, bh, b, h);
  const HeadMask mask{h < p.n_local, p.window};

  // The block walks the union of its warpgroups' bands; a warpgroup
  // computes on its own tiles only, and one whose keys are all past T on
  // none.
  const QueryTileRange tiles =
      query_tiles_seeing<kQ>(mask, block_k0, kWarpgroups * kKeysPerBlock, T);
  const QueryTileRange my_tiles =
      k0 < T ? query_tiles_seeing<kQ>(mask, k0, kKeysPerBlock, T) : QueryTileRange{1, 0};

  load_key_tiles<kKeysPerBlock, D>(k_tile, v_tile, p, rows, k0, wg_thread);
  stages.load(p, rows, tiles.first, 0);
  cp_async_commit();

  float dk[D / 2] = {}, dv[D / 2] = {}, qbar[kQbar ? D / 2 : 1] = {}, colsum[2] = {};
  const int key_row = k0 + warp * 16 + group;  // and key_row + 8
  const uint32_t k_addr = smem_address(k_tile), v_addr = smem_address(v_tile);

  for (int tile = tiles.first; tile <= tiles.last; ++tile) {
    const int stage = (tile - tiles.first) & 1;
    prefetch_then_wait(tile < tiles.last, [&] { stages.load(p, rows, tile + 1, stage ^ 1); });
    const QueryTile query_tile = stages.tile(stage);
    const int i0 = tile * kQ;

    // Only this warpgroup's tiles (a uniform branch in it).
    const bool mine = kWarpgroups == 1 || (tile >= my_tiles.first && tile <= my_tiles.last);
    if (mine)
      key_tile_step<D, kKeysPerBlock, kQ, kQbar>(dv, dk, qbar, colsum, k_addr, v_addr, query_tile,
                                                 p, i0, k0, mask, key_row, quad);
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }

  finish_wgmma_key_rows<D, kSpan, kQbar>(p, dk, dv, qbar, colsum, key_row, rows, quad);
}

template <int D, bool kSpan, bool kQbar, int kWarpgroups>
__device__ void query_block(const BackwardParams& p, unsigned char* smem, int query_block_index) {
  using Shape = Sm90BackwardShape<D, kQbar, kWarpgroups>;
  constexpr int kKeyTileElems = Shape::kKeyTileBytes / 2;
  constexpr int kBlockThreads = Shape::kBlockThreads;
  // One warpgroup: constants, so the base kernel's code is what it was.
  const int wg = kWarpgroups == 1 ? 0 : warpgroup_index();
  const int wg_thread = kWarpgroups == 1 ? int(threadIdx.x) : int(threadIdx.x) % kThreads;
  // This warpgroup's Q and dO; the block's K, V stages after all of them.
  bf16* q_tile = reinterpret_cast<bf16*>(smem + 2 * wg * Shape::kQBytes);
  bf16* do_tile = reinterpret_cast<bf16*>(smem + (2 * wg + 1) * Shape::kQBytes);
  bf16* k_tiles =
      reinterpret_cast<bf16*>(smem + 2 * kWarpgroups * Shape::kQBytes);  // 2 stages
  bf16* v_tiles = k_tiles + 2 * kKeyTileElems;                         // 2 stages

  const int lane = threadIdx.x % kWarpSize, warp = wg_thread / kWarpSize;
  const int group = lane >> 2, quad = lane & 3;
  const BlockHead head = block_head(p);
  const int bh = head.bh, b = head.b, h = head.h;
  const int T = p.T;
  const int block_q0 = query_block_index * kWarpgroups * kQueriesPerBlock;
  const int q0 = block_q0 + wg * kQueriesPerBlock;  // this warpgroup's queries
  const size_t qkv_row = size_t(3) * p.C;
  const bf16* q_base = p.qkv + size_t(b) * T * qkv_row + h * p.head_dim;
  const bf16* k_base = q_base + p.C;
  const bf16* v_base = q_base + 2 * p.C;
  const bf16* do_base = p.dout + size_t(b) * T * p.C + h * p.head_dim;
  const HeadMask mask{h < p.n_local, p.window};

  // Local heads: only the keys of the band, [q0 - window + 1, q0 + 64). The
  // block walks the union of its warpgroups' bands; a warpgroup computes on
  // its own tiles only, and one whose queries are all past T on none.
  const int block_key_lo = mask.local ? max(0, block_q0 - p.window + 1) : 0;
  const int block_key_hi = min(T, block_q0 + kWarpgroups * kQueriesPerBlock);  // exclusive
  const int tile_begin = block_key_lo / kKeyTile, tile_end = (block_key_hi - 1) / kKeyTile;
  int my_begin = 1, my_end = 0;
  if (q0 < T) {
    my_begin = (mask.local ? max(0, q0 - p.window + 1) : 0) / kKeyTile;
    my_end = (min(T, q0 + kQueriesPerBlock) - 1) / kKeyTile;
  }
  auto load_key_tile = [&](int tile, int stage) {
    const int elems = stage * kKeyTileElems, j0 = tile * kKeyTile;
    load_tile_sw128<kKeyTile, D, kBlockThreads>(k_tiles + elems, k_base, qkv_row, j0, T,
                                                p.head_dim, threadIdx.x);
    load_tile_sw128<kKeyTile, D, kBlockThreads>(v_tiles + elems, v_base, qkv_row, j0, T,
                                                p.head_dim, threadIdx.x);
  };

  load_tile_sw128<kQueriesPerBlock, D>(q_tile, q_base, qkv_row, q0, T, p.head_dim, wg_thread);
  load_tile_sw128<kQueriesPerBlock, D>(do_tile, do_base, p.C, q0, T, p.head_dim, wg_thread);
  load_key_tile(tile_begin, 0);
  cp_async_commit();

  const int row_a = q0 + warp * 16 + group;  // and row_a + 8
  float lse_log2[2], delta[2];
  load_query_stats(lse_log2, delta, p, bh, row_a);
  float dq[D / 2];
  zero(dq);
  const uint32_t q_addr = smem_address(q_tile), do_addr = smem_address(do_tile);

  for (int tile = tile_begin; tile <= tile_end; ++tile) {
    const int stage = (tile - tile_begin) & 1;
    prefetch_then_wait(tile < tile_end, [&] { load_key_tile(tile + 1, stage ^ 1); });
    const uint32_t k_addr = smem_address(k_tiles + stage * kKeyTileElems);
    const uint32_t v_addr = smem_address(v_tiles + stage * kKeyTileElems);
    const int j0 = tile * kKeyTile;

    // Only this warpgroup's tiles (a uniform branch in it).
    const bool mine = kWarpgroups == 1 || (tile >= my_begin && tile <= my_end);
    if (mine)
      query_tile_step<D>(dq, q_addr, k_addr, do_addr, v_addr, p, q0, j0, lse_log2, delta, mask,
                         row_a, quad);
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }

  finish_query_rows<D / 8, kSpan>(
      p, [&](int db, int i) { return dq[4 * db + i]; }, row_a, b, h, q_base, quad);
}

#endif  // LSGPT_SM90A_DEVICE

template <int D, bool kSpan, bool kQbar, int kWarpgroups>
__global__ void __launch_bounds__(kWarpgroups* kThreads)
    attention_backward_sm90_kernel(const BackwardParams p) {
  wait_for_previous_grid();
  allow_next_grid();
#if LSGPT_SM90A_DEVICE
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = align_to_atom(smem_raw);
  if (int(blockIdx.x) < p.n_key_blocks)
    key_block<D, kSpan, kQbar, kWarpgroups>(p, smem, blockIdx.x);
  else  // the last query blocks have the most keys on global heads: start them first
    query_block<D, kSpan, kQbar, kWarpgroups>(
        p, smem, p.n_query_blocks - 1 - (int(blockIdx.x) - p.n_key_blocks));
#else
  __trap();  // only the sm_90a binary has this kernel; the host never launches it elsewhere
#endif
}

// Whether the loaded binary of the kernel came from sm_90a code (the
// compute_80 PTX, JIT-compiled on a Hopper GPU, would run the trapping body).
template <int D>
bool kernel_has_sm90a_code() {
  static const bool has = [] {
    cudaFuncAttributes attributes{};
    CUDA_CHECK(
        cudaFuncGetAttributes(&attributes, attention_backward_sm90_kernel<D, false, false, 1>));
    return attributes.ptxVersion >= 90 && attributes.binaryVersion >= 90;
  }();
  return has;
}

template <int D, bool kSpan, bool kQbar, int kWarpgroups>
void launch(CudaContext& ctx, const BackwardParams& p, int B) {
  using Shape = Sm90BackwardShape<D, kQbar, kWarpgroups>;
  auto kernel = attention_backward_sm90_kernel<D, kSpan, kQbar, kWarpgroups>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(Shape::kSmemBytes)));
  // This kernel's block sizes, whatever the caller counted with.
  BackwardParams q = p;
  q.n_key_blocks = ceil_div(p.T, kWarpgroups * kKeysPerBlock);
  q.n_query_blocks = ceil_div(p.T, kWarpgroups * kQueriesPerBlock);
  q.global_first = sm90_backward_global_first();
  const unsigned blocks = q.n_key_blocks + q.n_query_blocks;
  const dim3 grid = q.global_first ? dim3(blocks, B, p.n_head) : dim3(blocks, p.n_head, B);
  launch_kernel(ctx, kernel, grid, Shape::kBlockThreads, Shape::kSmemBytes, q);
}

}  // namespace

bool sm90_backward_supported(const CudaContext& ctx, int head_dim) {
  if (ctx.compute_capability() != 90) return false;
  const int D = padded_head_dim(head_dim);
  if (D == 64) return kernel_has_sm90a_code<64>();
  if (D == 128) return kernel_has_sm90a_code<128>();
  return false;
}

void launch_backward_sm90(CudaContext& ctx, const BackwardParams& p, int B, bool span, bool qbar,
                          bool wg2) {
  auto with_warpgroups = [&](auto warpgroups) {
    dispatch_backward(p, span, qbar, [&](auto d, auto span_c, auto qbar_c) {
      launch<decltype(d)::value, decltype(span_c)::value, decltype(qbar_c)::value,
             decltype(warpgroups)::value>(ctx, p, B);
    });
  };
  wg2 ? with_warpgroups(std::integral_constant<int, 2>{})
      : with_warpgroups(std::integral_constant<int, 1>{});
}

}  // namespace lsgpt::cuda::attn
