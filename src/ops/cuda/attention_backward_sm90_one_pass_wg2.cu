// One-pass LS flash-attention backward for Hopper with two warpgroups a
// block (sm_90a; LSGPT_ATTENTION_SM90_BACKWARD=one_pass_wg2, not the
// default). attention_backward_sm90_one_pass.cu's algorithm, with the change
// FlashAttention-3 makes to cut its dQ atomics: a block owns 128 keys, 64 per
// warpgroup (each with its own K and V tiles, as wg2 in
// attention_backward_sm90.cu), and walks the union of its warpgroups' bands
// with every Q, dO, lse and delta tile shared (copied by all 256 threads,
// double-buffered by cp.async).
//
// Per query tile each warpgroup forms S^T, dP^T, dV, dK (and qbar) for its 64
// keys exactly as one_pass, and stores its dS^T fragments transposed
// (stmatrix .trans) into its own dS tile (the tile's queries x its 64 keys).
// A warpgroup the tile does not concern (its keys past T, or the tile outside
// its band) runs the masked step all the same: every P and dS of it is zero,
// so its dS tile adds nothing, and it costs no time, since the other
// warpgroup computes on the tile and both meet at the next barrier. Then the
// block forms the tile's dQ partial over all 128 keys as ONE product per
// output element, so one float atomic per dQ element per 128 keys instead of
// per 64 (half one_pass's atomic traffic on global heads, where every key
// block adds into every later query row).
//
// The product is dQ^T = K^T dS^T (m = head dim, n = queries, k = keys: K read
// M-major from its tile, dS K-major from the dS tiles; four k16 steps for
// each warpgroup's keys, accumulated in one set of registers). The
// transposed form is what lets two warpgroups split it along whole wgmma
// shapes: at D 128 warpgroup w takes the 64-row panel w of D for all the
// tile's queries (m64 n64, or m64 n16 with the 16-query tiles of qbar); at
// D 64 it takes all of D for half the tile's queries (m64 n32). The plain
// dQ = dS K form would need m32 slices (not a wgmma shape) or N-major K
// slices of 32 columns, half a 128-byte swizzle atom. The price: the
// accumulator holds dQ^T, whose adjacent elements are not adjacent in a dQ
// row, so the adds are scalar red.global.add.f32 (one_pass's are v2).
//
// Barriers per tile: the prefetch's (the Q, dO stage has landed), one after
// both dS tiles are stored (the product reads the other warpgroup's), one at
// the end (the next tile's dS stores and prefetch overwrite what this one
// read; each warpgroup waited for its own product before it). A warpgroup
// with nothing to compute still reaches all three.
//
// The rest is one_pass's: dq_accum summed by red.global.add and finished by
// its finish kernel (run_one_pass); dK and dV bit-reproducible, dQ not.
// docs/CUDA.md, "Backward on Hopper: one pass, two warpgroups".
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
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/wgmma.cuh"

namespace lsgpt::cuda::attn {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kWarpgroups = 2;
constexpr int kBlockThreads = kWarpgroups * kThreads;
constexpr int kKeysPerWarpgroup = 64;  // the m64 of the key-side products
constexpr int kKeysPerBlock = kWarpgroups * kKeysPerWarpgroup;

template <int D, bool kQbar>
struct OnePassWg2Shape {
  static_assert(D == 64 || D == 128, "the wgmma backward is built for D = 64 and 128");
  // Queries per tile (the n of S^T), as one_pass: 16 when dK, dV and qbar
  // must all stay in registers.
  static constexpr int kQueryTile = D == 128 && kQbar ? 16 : 64;
  // A warpgroup's slice of dQ^T: the n of its product (see the top).
  static constexpr int kSliceQueries = kDqSliceQueries<D, kQueryTile>;
  static_assert(kSliceQueries % 16 == 0, "the n of the slice's wgmma: 16, 32 or 64");
  static constexpr int kKeyBytes = sw128_tile_bytes<kKeysPerWarpgroup, D>();
  static constexpr int kQueryTileBytes = sw128_tile_bytes<kQueryTile, D>();
  static constexpr int kDsBytes = sw128_tile_bytes<kQueryTile, kKeysPerWarpgroup>();
  // Each warpgroup's K, V and dS; two stages of Q and dO, two of lse and
  // delta; room to align the start to a swizzle atom.
  static constexpr size_t kSmemBytes = kWarpgroups * (2 * size_t(kKeyBytes) + kDsBytes) +
                                       4 * size_t(kQueryTileBytes) +
                                       sizeof(float) * 4 * kQueryTile + kAtomBytes;
  static_assert(kSmemBytes <= 227 * 1024, "over the opt-in shared memory of one block");
};

#if LSGPT_SM90A_DEVICE

// *addr += x when `valid`, as a reduction (no return value, so no round
// trip); predicated rather than branched, so that no divergent code sits
// between the warpgroup's wgmma.
__device__ __forceinline__ void red_add(float* addr, float x, bool valid) {
  asm volatile(
      "{\n.reg .pred p;\n"
      "setp.ne.b32 p, %2, 0;\n"
      "@p red.global.add.f32 [%0], %1;\n}\n" ::"l"(addr),
      "f"(x), "r"(int(valid))
      : "memory");
}

// The block's dQ += dS K for the tile's kQ queries (from query i0), this
// warpgroup's slice of it, added into dq_tile (row i0 of the head's fp32
// rows, D floats each). key_tiles and ds_tiles: the first warpgroup's K and
// dS tiles (the second's follow as the block's shared memory lays them out).
template <int D, bool kQbar>
__device__ __forceinline__ void add_query_gradient(float* dq_tile, uint32_t ds_tiles,
                                                   uint32_t key_tiles, int wg, int i0, int T) {
  using Shape = OnePassWg2Shape<D, kQbar>;
  constexpr int kN = Shape::kSliceQueries;
  const int lane = threadIdx.x % kWarpSize, warp = (threadIdx.x / kWarpSize) % 4;
  const int group = lane >> 2, quad = lane & 3;
  const int d0 = D == 128 ? wg * kPanelCols : 0;  // the slice's first column of D
  const int q0 = D == 128 ? 0 : wg * kN;          // and its first query of the tile
  float acc[kN / 2];
  zero(acc);
  fence_operands(acc);
  wgmma_fence();
  issue_dq_slice<D, Shape::kQueryTile>(acc, key_tiles, ds_tiles, wg);
  wgmma_commit();
  wgmma_wait<0>();
  fence_operands(acc);
  // Element 4 nb + e: column d0 + 16 warp + group + 8 (e >> 1) of D, query
  // q0 + 2 quad + nb * 8 + (e & 1) of the tile. One base address and
  // constant offsets, so that no per-element addresses take registers.
  const int q_thread = q0 + 2 * quad;
  float* base = dq_tile + size_t(q_thread) * D + d0 + 16 * warp + group;
  const int rows_left = T - i0 - q_thread;  // this thread's queries below T
#pragma unroll
  for (int nb = 0; nb < kN / 8; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int q = nb * 8 + (e & 1);
      red_add(base + q * D + 8 * (e >> 1), acc[4 * nb + e], q < rows_left);
    }
}

template <int D, bool kSpan, bool kQbar>
__device__ void one_pass_wg2_key_block(const BackwardParams& p, float* dq_accum,
                                       unsigned char* smem) {
  using Shape = OnePassWg2Shape<D, kQbar>;
  constexpr int kQ = Shape::kQueryTile;
  const int wg = warpgroup_index();
  const int wg_thread = int(threadIdx.x) % kThreads;
  // Each warpgroup's K and V, then each one's dS, then the block's stages.
  bf16* k_tile = reinterpret_cast<bf16*>(smem + 2 * wg * Shape::kKeyBytes);
  bf16* v_tile = reinterpret_cast<bf16*>(smem + (2 * wg + 1) * Shape::kKeyBytes);
  unsigned char* ds_tiles = smem + kWarpgroups * 2 * Shape::kKeyBytes;
  const QueryStages<kQ, D, kBlockThreads> stages(ds_tiles + kWarpgroups * Shape::kDsBytes);

  const int lane = threadIdx.x % kWarpSize, warp = wg_thread / kWarpSize;
  const int group = lane >> 2, quad = lane & 3;
  const int bh = blockIdx.y, b = bh / p.n_head, h = bh % p.n_head;
  const int T = p.T;
  const int block_k0 = blockIdx.x * kKeysPerBlock;
  const int k0 = block_k0 + wg * kKeysPerWarpgroup;  // this warpgroup's keys
  const HeadRows rows = head_rows(p, bh, b, h);
  float* dq_head = dq_accum + size_t(bh) * T * D;
  const HeadMask mask{h < p.n_local, p.window};

  // The block walks the union of its warpgroups' bands (as wg2); a
  // warpgroup takes the branch-free step on its own tiles only (none when
  // its keys are all past T) and the masked one, all zeros, on the others.
  const QueryTileRange tiles = query_tiles_seeing<kQ>(mask, block_k0, kKeysPerBlock, T);
  const QueryTileRange my_tiles =
      k0 < T ? query_tiles_seeing<kQ>(mask, k0, kKeysPerWarpgroup, T) : QueryTileRange{1, 0};

  // Rows past T are zero-filled: a warpgroup past T adds zeros to dQ.
  load_key_tiles<kKeysPerWarpgroup, D>(k_tile, v_tile, p, rows, k0, wg_thread);
  stages.load(p, rows, tiles.first, 0);
  cp_async_commit();

  float dk[D / 2] = {}, dv[D / 2] = {}, qbar[kQbar ? D / 2 : 1] = {}, colsum[2] = {};
  const int key_row = k0 + warp * 16 + group;  // and key_row + 8
  const uint32_t key_tiles_addr = smem_address(smem);
  const uint32_t k_offset = smem_address(k_tile) - key_tiles_addr;
  const uint32_t v_offset = smem_address(v_tile) - key_tiles_addr;
  const uint32_t ds_tiles_offset = smem_address(ds_tiles) - key_tiles_addr;

  for (int tile = tiles.first; tile <= tiles.last; ++tile) {
    const int stage = (tile - tiles.first) & 1;
    prefetch_then_wait(tile < tiles.last, [&] { stages.load(p, rows, tile + 1, stage ^ 1); });
    const QueryTile query_tile = stages.tile(stage);
    const int i0 = tile * kQ;
    // Every tile address from one value the compiler cannot see through, so
    // that it rebuilds the loop-invariant wgmma descriptors of K and V in
    // each iteration instead of holding them (registers D 128 cannot spare).
    const uint32_t smem_base = opaque(key_tiles_addr);
    const uint32_t k_addr = smem_base + k_offset, v_addr = smem_base + v_offset;
    const uint32_t ds_tiles_addr = smem_base + ds_tiles_offset;
    const uint32_t ds_addr = ds_tiles_addr + wg * Shape::kDsBytes;

    // Masked instantiation for tiles the mask cuts or that run past T,
    // branch-free one for the rest. The previous tile's dQ product, the last
    // reader of the dS tiles, was waited for before the previous iteration's
    // closing barrier.
    auto step = [&](auto masked) {
      one_pass_key_step<D, kKeysPerWarpgroup, kQ, decltype(masked)::value, kQbar>(
          dv, dk, qbar, colsum, k_addr, v_addr, ds_addr, query_tile, p, i0, mask, key_row, quad);
    };
    // Uniform in a warpgroup, and no barrier inside: a warpgroup off its own
    // tiles takes the masked step, all zeros.
    const bool mine = tile >= my_tiles.first && tile <= my_tiles.last;
    if (!mine || mask.tile_needs_mask(i0, kQ, k0, kKeysPerWarpgroup) || i0 + kQ > T)
      step(std::true_type{});
    else
      step(std::false_type{});
    fence_proxy_async_shared();  // stmatrix wrote the dS tiles that wgmma reads next
    __syncthreads();             // and the product reads both warpgroups' tiles
    add_query_gradient<D, kQbar>(dq_head + size_t(i0) * D, ds_tiles_addr, smem_base, wg, i0, T);
    __syncthreads();  // the next iteration's prefetch and dS stores overwrite this one's tiles
  }

  finish_wgmma_key_rows<D, kSpan, kQbar>(p, dk, dv, qbar, colsum, key_row, rows, quad);
}

#endif  // LSGPT_SM90A_DEVICE

template <int D, bool kSpan, bool kQbar>
__global__ void __launch_bounds__(kBlockThreads)
    attention_backward_one_pass_wg2_kernel(const BackwardParams p, float* dq_accum) {
  wait_for_previous_grid();
  allow_next_grid();
#if LSGPT_SM90A_DEVICE
  extern __shared__ __align__(16) unsigned char smem_raw[];
  one_pass_wg2_key_block<D, kSpan, kQbar>(p, dq_accum, align_to_atom(smem_raw));
#else
  (void)p, (void)dq_accum;
  __trap();  // only the sm_90a binary has this kernel; the host never launches it elsewhere
#endif
}

}  // namespace

void launch_backward_sm90_one_pass_wg2(CudaContext& ctx, const BackwardParams& p, int B,
                                       bool span, bool qbar, float* dq_accum) {
  dispatch_backward(p, span, qbar, [&](auto d, auto span_c, auto qbar_c) {
    constexpr int D = decltype(d)::value;
    constexpr bool kQbar = decltype(qbar_c)::value;
    run_one_pass(ctx, p, B, span, dq_accum,
                 attention_backward_one_pass_wg2_kernel<D, decltype(span_c)::value, kQbar>,
                 kBlockThreads, kKeysPerBlock, OnePassWg2Shape<D, kQbar>::kSmemBytes);
  });
}

}  // namespace lsgpt::cuda::attn
