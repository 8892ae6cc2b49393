// LS flash-attention forward for Hopper (sm_90a): the semantics of
// attention_forward.cu (one launch for all heads, local heads walk only the
// key tiles of their band, global heads are causal; out, the row
// log-sum-exp, per-block max-logit partials, and in the kKbar instantiation
// kbar = P K for the span decomposition) with the matrix products on
// warpgroup MMA (wgmma.mma_async m64nNk16, bf16 in, f32 accumulate). A block
// is one warpgroup (4 warps) owning 64 queries: S = Q K^T reads Q and K from
// shared memory through matrix descriptors, O += P V takes P from registers
// (the S accumulator layout is the A register layout) and V from shared
// memory read N-major (kbar += P K reads the K tile the same way). Tiles
// sit in shared memory in the 128-byte swizzled layout wgmma expects; they
// are copied with cp.async (zero fill past T and past the real head dim),
// double-buffered as in the sm_80 kernel. The wgmma, descriptor and tile
// helpers live in wgmma.cuh (the backward uses them too).
//
// This is the `base` variant of LSGPT_ATTENTION_SM90_FORWARD, chosen for
// D 64 when short band rows carry much of the work (attention_sm90_choice.h).
// Two or three consumer warpgroups with the softmax overlapped with P V, fed by TMA
// from a producer warpgroup, are attention_forward_sm90_ws.cu (docs/CUDA.md,
// "Forward on Hopper: variants").
//
// The device code exists only in the sm_90a compilation; the compute_80 PTX
// carries a body that traps, and the host never launches it there
// (sm90_forward_supported checks the loaded binary).
#include <cstdint>
#include <type_traits>

#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/attention_forward.cuh"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/wgmma.cuh"

namespace lsgpt::cuda::attn {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kBlockM = kForwardBlockM;
constexpr int kBlockN = kForwardBlockN;

template <int D>
struct Sm90Shape {
  static_assert(D == 64 || D == 128, "the wgmma forward is built for D = 64 and 128");
  static constexpr int kTileBytes = sw128_tile_bytes<kBlockN, D>();  // one K or V tile
  static constexpr int kQBytes = sw128_tile_bytes<kBlockM, D>();
  // Q, 2 K stages, 2 V stages, and room to align the start to a swizzle atom.
  static constexpr size_t kSmemBytes = size_t(kQBytes) + 4 * size_t(kTileBytes) + kAtomBytes;
};

template <int D, bool kKbar>
__global__ void __launch_bounds__(kThreads) attention_forward_sm90_kernel(const ForwardParams p) {
  wait_for_previous_grid();
  allow_next_grid();
#if LSGPT_SM90A_DEVICE
  using Shape = Sm90Shape<D>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ float warp_maxima[kThreads / kWarpSize];
  unsigned char* smem = align_to_atom(smem_raw);
  bf16* q_tile = reinterpret_cast<bf16*>(smem);
  bf16* k_tiles = reinterpret_cast<bf16*>(smem + Shape::kQBytes);  // 2 stages
  bf16* v_tiles = reinterpret_cast<bf16*>(smem + Shape::kQBytes + 2 * Shape::kTileBytes);
  constexpr int kTileElems = Shape::kTileBytes / 2;

  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int group = lane >> 2, quad = lane & 3;
  const ForwardBlock blk(p);
  const int T = p.T;

  load_tile_sw128<kBlockM, D>(q_tile, blk.q_base, blk.qkv_row, blk.q0, T, p.head_dim);
  load_tile_sw128<kBlockN, D>(k_tiles, blk.k_base, blk.qkv_row, blk.tile_begin * kBlockN,
                              T, p.head_dim);
  load_tile_sw128<kBlockN, D>(v_tiles, blk.v_base, blk.qkv_row, blk.tile_begin * kBlockN,
                              T, p.head_dim);
  cp_async_commit();

  // Accumulator layout of m64nN (as mma.sync m16n8 per warp): warp w holds
  // rows 16w + group and 16w + group + 8; element 4j + e is n8 block j,
  // column 2 quad + (e & 1), the second row when e >= 2.
  float o_acc[D / 2];
  float kbar_acc[kKbar ? D / 2 : 1];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o_acc[i] = 0.f;
#pragma unroll
  for (int i = 0; i < (kKbar ? D / 2 : 1); ++i) kbar_acc[i] = 0.f;
  auto o_at = [&](int db, int e) -> float& { return o_acc[4 * db + e]; };
  auto kbar_at = [&](int db, int e) -> float& { return kbar_acc[4 * db + e]; };
  float row_max[2] = {-INFINITY, -INFINITY};  // raw q.k units
  float row_sum[2] = {0.f, 0.f};               // this lane's share
  const int row_a = blk.q0 + warp * 16 + group, row_b = row_a + 8;
  const uint32_t q_addr = smem_address(q_tile);

  for (int tile = blk.tile_begin; tile <= blk.tile_end; ++tile) {
    const int stage = (tile - blk.tile_begin) & 1;
    prefetch_then_wait(tile < blk.tile_end, [&] {
      const int next = (stage ^ 1) * kTileElems, j0 = (tile + 1) * kBlockN;
      load_tile_sw128<kBlockN, D>(k_tiles + next, blk.k_base, blk.qkv_row, j0, T, p.head_dim);
      load_tile_sw128<kBlockN, D>(v_tiles + next, blk.v_base, blk.qkv_row, j0, T, p.head_dim);
    });
    const uint32_t k_addr = smem_address(k_tiles + stage * kTileElems);
    const uint32_t v_addr = smem_address(v_tiles + stage * kTileElems);
    const int k0 = tile * kBlockN;

    // One instantiation with the mask for tiles it cuts, one without for the
    // rest, as in the sm_80 kernel.
    auto attend = [&](auto masked) {
      constexpr bool kMasked = decltype(masked)::value;
      // S = Q K^T: 64 x 64, D / 16 k-steps, the first overwriting S.
      float s[kBlockN / 2];  // not cleared: the first k-step's scale-d 0 ignores it
      discard_operands(s);
      wgmma_fence();
#pragma unroll
      for (int kc = 0; kc < D / 16; ++kc)
        wgmma_ss<kBlockN>(s, k_major_descriptor<kBlockM>(q_addr, kc),
                          k_major_descriptor<kBlockN>(k_addr, kc), kc > 0);
      wgmma_commit();
      wgmma_wait<0>();
      fence_operands(s);

      auto s_at = [&](int nb, int e) -> float& { return s[4 * nb + e]; };
      if constexpr (kMasked) mask_scores(s_at, blk.mask, row_a, row_b, quad, k0);
      online_softmax(
          s_at, [&](int r, float alpha) { rescale_row<D, kKbar>(o_at, kbar_at, r, alpha); },
          row_max, row_sum, p.scale_log2);

      // O += P V: P as bf16 A fragments (the m64k16 A register layout is the
      // accumulator layout of two n8 blocks), V N-major from shared memory.
      uint32_t a[kBlockN / 16][4];
      a_fragments<kBlockN>(a, s);
      fence_operands(o_acc);
      if constexpr (kKbar) fence_operands(kbar_acc);
      wgmma_fence();
#pragma unroll
      for (int kc = 0; kc < kBlockN / 16; ++kc) {
        wgmma_rs<D>(o_acc, a[kc], n_major_descriptor<kBlockN>(v_addr, kc));
        // kbar += P K: the K tile has V's layout, so it is read N-major too.
        if constexpr (kKbar) wgmma_rs<D>(kbar_acc, a[kc], n_major_descriptor<kBlockN>(k_addr, kc));
      }
      wgmma_commit();
      wgmma_wait<0>();
      fence_operands(o_acc);
      if constexpr (kKbar) fence_operands(kbar_acc);
    };
    if (blk.mask.tile_needs_mask(blk.q0, kBlockM, k0, kBlockN))
      attend(std::true_type{});
    else
      attend(std::false_type{});
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }

  // Epilogue: normalise, write O (and kbar), lse, and this block's max logit.
  const float block_max =
      store_rows<D, kKbar>(p, blk.b, blk.h, blk.bh, row_a, quad, row_max, row_sum, o_at,
                           kbar_at);
  write_max_partial(p, blk, block_max, warp_maxima);
#else
  __trap();  // only the sm_90a binary has this kernel; the host never launches it elsewhere
#endif
}

// Whether the loaded binary of `kernel` came from sm_90a code (the compute_80
// PTX, JIT-compiled on a Hopper GPU, would run the trapping body).
template <int D>
bool kernel_has_sm90a_code() {
  static const bool has = [] {
    cudaFuncAttributes attributes{};
    CUDA_CHECK(cudaFuncGetAttributes(&attributes, attention_forward_sm90_kernel<D, false>));
    return attributes.ptxVersion >= 90 && attributes.binaryVersion >= 90;
  }();
  return has;
}

template <int D, bool kKbar>
void launch(CudaContext& ctx, const ForwardParams& p, int B) {
  launch_forward_blocks(ctx, attention_forward_sm90_kernel<D, kKbar>, Sm90Shape<D>::kSmemBytes, p,
                        B);
}

}  // namespace

bool sm90_forward_supported(const CudaContext& ctx, int head_dim) {
  if (ctx.compute_capability() != 90) return false;
  const int D = padded_head_dim(head_dim);
  if (D == 64) return kernel_has_sm90a_code<64>();
  if (D == 128) return kernel_has_sm90a_code<128>();
  return false;
}

void launch_forward_sm90(CudaContext& ctx, const ForwardParams& p, int B, bool with_kbar) {
  if (padded_head_dim(p.head_dim) == 64)
    with_kbar ? launch<64, true>(ctx, p, B) : launch<64, false>(ctx, p, B);
  else
    with_kbar ? launch<128, true>(ctx, p, B) : launch<128, false>(ctx, p, B);
}

}  // namespace lsgpt::cuda::attn
