// LS flash-attention forward for Hopper (sm_90a) with two consumer
// warpgroups per block: the contract of attention_forward_sm90.cu (local
// heads walk only the key tiles of their band, global heads are causal; out,
// the row log-sum-exp, one max-logit partial per 64 queries, kbar = P K in
// the kKbar instantiation; zero fill past T and past the real head dim) and
// its wgmma building blocks (wgmma.cuh), reorganised for throughput:
//
// - A block is 2 warpgroups (8 warps) owning 128 queries, 64 each, that
//   share every K/V tile: one copy of a tile feeds twice the MMA work, and
//   while one warpgroup runs its softmax the other's wgmma can use the
//   tensor cores. The block walks the union of its warpgroups' bands; a
//   warpgroup computes only on the tiles of its own band (on a local head
//   each skips one of the block's four tiles), and one whose 64 rows are all
//   past T computes nothing.
// - Policy::kOverlap (FlashAttention-3's intra-warpgroup overlap): at tile
//   j a warpgroup issues S_j = Q K_j^T, then O += P_{j-1} V_{j-1} (the
//   previous tile's P, kept as bf16 A fragments), and waits with
//   wgmma.wait_group 1, which leaves only the P V group pending: the
//   softmax of S_j runs while the tensor cores do P_{j-1} V_{j-1}. Then
//   wait_group 0, rescale O by the new max, and S_j becomes P_j. The last
//   tile's P V goes out one iteration after the walk (the block's loop
//   runs one step past its last tile). Tiles j and j-1 are both being read
//   at step j, so the load of j+1 needs a third stage.
//   Without kOverlap each tile's S, softmax, P V run in turn, every wgmma
//   waited for at once (the one-warpgroup kernel's order), two stages.
// - Loads: all 256 threads copy each K/V tile with cp.async, one tile
//   ahead; each warpgroup copies its own Q tile. One __syncthreads per tile
//   both publishes tile j and tells every thread that all wgmma reading the
//   stage about to be refilled have completed (each warpgroup waits for its
//   products within a step).
//
// The steps of one warpgroup are attention_forward_consumer.cuh's; the
// warp-specialised variant with TMA loads is attention_forward_sm90_ws.cu
// (docs/CUDA.md, "Forward on Hopper: variants").
//
// The device code exists only in the sm_90a compilation; the compute_80 PTX
// carries a body that traps, and the host never launches it there (the
// dispatch checks the loaded binary, attention_forward_sm90.cu).
#include <cstdint>

#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/attention_forward.cuh"
#include "ops/cuda/attention_forward_consumer.cuh"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/wgmma.cuh"

namespace lsgpt::cuda::attn {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kWarpgroups = 2;
constexpr int kWgThreads = kThreads;  // one warpgroup: 4 warps
constexpr int kCtaThreads = kWarpgroups * kWgThreads;
constexpr int kCtaRows = kWarpgroups * kWgRows;

// The one-warpgroup kernel's order with two warpgroups: S, softmax, P V per tile.
struct SerialPolicy {
  static constexpr bool kOverlap = false;
  static constexpr int kStages = 2;
};
// S_j issued with P_{j-1} V_{j-1}; the softmax of S_j overlaps the latter.
struct OverlapPolicy {
  static constexpr bool kOverlap = true;
  static constexpr int kStages = 3;
};

template <int D, class Policy>
struct Wg2Shape {
  static_assert(D == 64 || D == 128, "the wgmma forward is built for D = 64 and 128");
  static constexpr int kTileBytes = sw128_tile_bytes<kTileKeys, D>();  // one K or V tile
  static constexpr int kQBytes = sw128_tile_bytes<kWgRows, D>();       // one warpgroup's Q
  // Both Q tiles, the K and V stages, and room to align the start to a swizzle atom:
  // D 128: 32 + 2 x 3 x 16 + 1 KiB = 129 KiB with three stages (one block per
  // multiprocessor), 97 KiB with two (two); D 64: 65 KiB or 49 KiB.
  static constexpr size_t kSmemBytes =
      kWarpgroups * size_t(kQBytes) + 2 * Policy::kStages * size_t(kTileBytes) + kAtomBytes;
  static_assert(kSmemBytes <= 227 * 1024, "over the opt-in shared memory of one block");
  // Overlapping, step j reads tiles j (S) and j - 1 (P V) while j + 1 loads.
  static_assert(Policy::kStages >= (Policy::kOverlap ? 3 : 2), "too few stages for the policy");
};

// Blocks per multiprocessor that the registers must allow: 2 caps a thread
// at 65536 / (256 x 2) = 128 registers. Only where that costs no spill
// (ptxas 13.0): D 64 serial without kbar (126). D 64 overlapped would spill
// (8 bytes; 160 with kbar, and its wgmma serialized), so it stays at one
// block of 8 warps per multiprocessor, as every D 128 instantiation.
template <int D, bool kKbar, class Policy>
constexpr int kMinBlocks = D == 64 && !kKbar && !Policy::kOverlap ? 2 : 1;

template <int D, bool kKbar, class Policy>
__global__ void __launch_bounds__(kCtaThreads, (kMinBlocks<D, kKbar, Policy>))
    attention_forward_sm90_wg2_kernel(const ForwardParams p) {
#if LSGPT_SM90A_DEVICE
  using Shape = Wg2Shape<D, Policy>;
  constexpr int kStages = Policy::kStages;
  constexpr int kTileElems = Shape::kTileBytes / 2;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ float warp_maxima[kCtaThreads / kWarpSize];
  unsigned char* smem = align_to_atom(smem_raw);

  // Read through a shuffle so that ptxas sees a warp-uniform value (as
  // CUTLASS's canonical_warp_group_idx): branches on the warpgroup's band
  // then do not count as divergent, which would serialize the wgmma pipeline.
  const int wg = __shfl_sync(0xffffffffu, int(threadIdx.x) / kWgThreads, 0);
  const int wg_thread = threadIdx.x % kWgThreads;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  bf16* q_tile = reinterpret_cast<bf16*>(smem + wg * Shape::kQBytes);
  bf16* k_tiles = reinterpret_cast<bf16*>(smem + kWarpgroups * Shape::kQBytes);
  bf16* v_tiles = k_tiles + kStages * kTileElems;

  // Later query blocks have more keys on global heads: start them first.
  const int cta_block = gridDim.x - 1 - blockIdx.x;
  const int bh = blockIdx.y, b = bh / p.n_head, h = bh % p.n_head;
  const int cta_q0 = cta_block * kCtaRows, q0 = cta_q0 + wg * kWgRows;
  const int T = p.T;
  const size_t qkv_row = size_t(3) * p.C;
  const bf16* q_base = p.qkv + size_t(b) * T * qkv_row + h * p.head_dim;
  const bf16* k_base = q_base + p.C;
  const bf16* v_base = q_base + 2 * p.C;
  const HeadMask mask{h < p.n_local, p.window};

  // The block's tiles: the union of both warpgroups' bands.
  const int cta_begin = (mask.local ? max(0, cta_q0 - p.window + 1) : 0) / kTileKeys;
  const int cta_end = (min(T, cta_q0 + kCtaRows) - 1) / kTileKeys;
  // This warpgroup's; empty (begin > end) when all its rows are past T.
  int my_begin = 1, my_end = 0;
  if (q0 < T) {
    my_begin = (mask.local ? max(0, q0 - p.window + 1) : 0) / kTileKeys;
    my_end = (min(T, q0 + kWgRows) - 1) / kTileKeys;
  }

  auto load_kv = [&](int tile) {
    const int stage = (tile - cta_begin) % kStages;
    load_tile_sw128<kTileKeys, D, kCtaThreads>(k_tiles + stage * kTileElems, k_base, qkv_row,
                                               tile * kTileKeys, T, p.head_dim, threadIdx.x);
    load_tile_sw128<kTileKeys, D, kCtaThreads>(v_tiles + stage * kTileElems, v_base, qkv_row,
                                               tile * kTileKeys, T, p.head_dim, threadIdx.x);
  };
  auto k_addr = [&](int tile) {
    return smem_address(k_tiles + ((tile - cta_begin) % kStages) * kTileElems);
  };
  auto v_addr = [&](int tile) {
    return smem_address(v_tiles + ((tile - cta_begin) % kStages) * kTileElems);
  };
  load_tile_sw128<kWgRows, D, kWgThreads>(q_tile, q_base, qkv_row, q0, T, p.head_dim, wg_thread);
  load_kv(cta_begin);
  cp_async_commit();

  ConsumerWarpgroup<D, kKbar> consumer(q0, wg_thread, smem_address(q_tile), mask, p.scale_log2);

  // With overlap the walk runs one step past the last tile: that step only
  // issues the last tile's P V.
  const int walk_end = Policy::kOverlap ? cta_end + 1 : cta_end;
  for (int t = cta_begin; t <= walk_end; ++t) {
    if (t <= cta_end) {
      cp_async_wait<0>();          // tile t, this thread's copies
      fence_proxy_async_shared();  // cp.async wrote what wgmma reads next
      // Everyone's copies of tile t are in; everyone finished step t - 1, so
      // the stage of tile t + 1 - kStages is read by no wgmma any more.
      __syncthreads();
      if (t < cta_end) {
        load_kv(t + 1);
        cp_async_commit();
      }
    }
    const bool has_s = t >= my_begin && t <= my_end;  // uniform in the warpgroup
    if constexpr (Policy::kOverlap) {
      const bool has_pv = t - 1 >= my_begin && t - 1 <= my_end;
      if (has_s && has_pv)
        consumer.overlapped(t, k_addr(t), v_addr(t - 1), k_addr(t - 1));
      else if (has_s)  // the warpgroup's first tile: nothing to overlap
        consumer.first(t, k_addr(t));
      else if (has_pv)  // one step past its last tile
        consumer.last(v_addr(t - 1), k_addr(t - 1));
    } else if (has_s) {
      consumer.serial(t, k_addr(t), v_addr(t));
    }
  }

  // Epilogue: out (and kbar), lse, and one max-logit partial per warpgroup.
  const float wg_max = warp_max(consumer.store(p, b, h));
  if (lane == 0) warp_maxima[warp] = wg_max;
  __syncthreads();
  const int q_block = cta_block * kWarpgroups + wg;
  if (wg_thread == 0 && q_block < p.n_query_blocks) {
    float m = warp_maxima[wg * 4];
    for (int w = 1; w < 4; ++w) m = fmaxf(m, warp_maxima[wg * 4 + w]);
    p.max_partials[size_t(bh) * p.n_query_blocks + q_block] = m;
  }
#else
  __trap();  // only the sm_90a binary has this kernel; the host never launches it elsewhere
#endif
}

template <int D, bool kKbar, class Policy>
void launch(CudaContext& ctx, const ForwardParams& p, int B) {
  using Shape = Wg2Shape<D, Policy>;
  auto kernel = attention_forward_sm90_wg2_kernel<D, kKbar, Policy>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(Shape::kSmemBytes)));
  const dim3 grid(ceil_div(p.T, kCtaRows), B * p.n_head);
  kernel<<<grid, kCtaThreads, Shape::kSmemBytes, ctx.stream()>>>(p);
  CUDA_CHECK_LAUNCH();
}

template <class Policy>
void launch_policy(CudaContext& ctx, const ForwardParams& p, int B, bool with_kbar) {
  if (padded_head_dim(p.head_dim) == 64)
    with_kbar ? launch<64, true, Policy>(ctx, p, B) : launch<64, false, Policy>(ctx, p, B);
  else
    with_kbar ? launch<128, true, Policy>(ctx, p, B) : launch<128, false, Policy>(ctx, p, B);
}

}  // namespace

void launch_forward_sm90_wg2(CudaContext& ctx, const ForwardParams& p, int B, bool with_kbar,
                             bool overlap) {
  overlap ? launch_policy<OverlapPolicy>(ctx, p, B, with_kbar)
          : launch_policy<SerialPolicy>(ctx, p, B, with_kbar);
}

}  // namespace lsgpt::cuda::attn
