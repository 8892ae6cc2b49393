// LS flash-attention forward: one launch for all heads of a layer, grid over
// (query block, batch * head). Each block of 4 warps owns 64 queries (16 per
// warp) and walks only the 64-key tiles that intersect its band: the causal
// prefix on global heads, the last `window` keys on local heads, so local
// heads cost O(T * w). Online softmax in f32 on bf16 tensor-core products; no
// T x T matrix exists. By-products: the row log-sum-exp for the backward, the
// per-head largest logit (per-block partials, reduced by a second tiny kernel
// in a fixed order), and, only in the kKbar instantiation, kbar = P K
// accumulated beside P V for the span decomposition. On a compute capability
// 9.0 GPU the forward runs attention_forward_sm90.cu's wgmma kernel instead
// or the warp-specialised attention_forward_sm90_ws.cu, chosen by shape
// (attention_sm90_choice.h) or by LSGPT_ATTENTION_SM90_FORWARD, unless
// LSGPT_ATTENTION_SM80=1 asks for this one.
#include <cstdint>
#include <type_traits>

#include "core/env_switch.h"
#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/attention_forward.cuh"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops.h"

namespace lsgpt::cuda {
namespace {

using namespace attn;

constexpr int kBlockM = kForwardBlockM;  // queries per block
constexpr int kBlockN = kForwardBlockN;  // keys per tile

template <int D, bool kKbar>
struct ForwardShape {
  static constexpr int kStride = D + 8;  // padding keeps ldmatrix rows on distinct banks
  static constexpr int kTile = kBlockN * kStride;
  static constexpr size_t kSmemBytes = sizeof(bf16) * (kBlockM * kStride + 4 * kTile);
  // Q fragments stay in registers unless kbar's accumulators need the room.
  static constexpr bool kQInRegisters = !(kKbar && D == 128);
};

template <int D, bool kKbar>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(const ForwardParams p) {
  wait_for_previous_grid();
  allow_next_grid();
  using Shape = ForwardShape<D, kKbar>;
  constexpr int kStride = Shape::kStride;
  constexpr int kDBlocks = D / 8;       // n8 blocks of the output
  constexpr int kKeyBlocks = kBlockN / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* q_tile = reinterpret_cast<bf16*>(smem_raw);
  bf16* k_tiles = q_tile + kBlockM * kStride;     // 2 stages
  bf16* v_tiles = k_tiles + 2 * Shape::kTile;     // 2 stages
  __shared__ float warp_maxima[kThreads / kWarpSize];

  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int group = lane >> 2, quad = lane & 3;
  const ForwardBlock blk(p);
  const int T = p.T;

  load_tile_async<kBlockM, D, kStride>(q_tile, blk.q_base, blk.qkv_row, blk.q0, T, p.head_dim);
  load_tile_async<kBlockN, D, kStride>(k_tiles, blk.k_base, blk.qkv_row, blk.tile_begin * kBlockN,
                                       T, p.head_dim);
  load_tile_async<kBlockN, D, kStride>(v_tiles, blk.v_base, blk.qkv_row, blk.tile_begin * kBlockN,
                                       T, p.head_dim);
  cp_async_commit();

  float o_acc[kDBlocks][4] = {};
  float kbar_acc[kKbar ? kDBlocks : 1][4] = {};
  auto o_at = [&](int db, int e) -> float& { return o_acc[db][e]; };
  auto kbar_at = [&](int db, int e) -> float& { return kbar_acc[db][e]; };
  uint32_t q_frag[Shape::kQInRegisters ? D / 16 : 1][4];
  float row_max[2] = {-INFINITY, -INFINITY};  // raw q.k units
  float row_sum[2] = {0.f, 0.f};               // this lane's share
  const int row_a = blk.q0 + warp * 16 + group, row_b = row_a + 8;

  for (int tile = blk.tile_begin; tile <= blk.tile_end; ++tile) {
    const int stage = (tile - blk.tile_begin) & 1;
    if (tile < blk.tile_end) {
      const int next = (stage ^ 1) * Shape::kTile;
      load_tile_async<kBlockN, D, kStride>(k_tiles + next, blk.k_base, blk.qkv_row,
                                           (tile + 1) * kBlockN, T, p.head_dim);
      load_tile_async<kBlockN, D, kStride>(v_tiles + next, blk.v_base, blk.qkv_row,
                                           (tile + 1) * kBlockN, T, p.head_dim);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if constexpr (Shape::kQInRegisters) {
      if (tile == blk.tile_begin) {
#pragma unroll
        for (int kc = 0; kc < D / 16; ++kc) load_a<kStride>(q_frag[kc], q_tile, warp * 16, kc * 16, lane);
      }
    }
    const bf16* k_tile = k_tiles + stage * Shape::kTile;
    const bf16* v_tile = v_tiles + stage * Shape::kTile;
    const int k0 = tile * kBlockN;

    // One instantiation with the mask for tiles it cuts, one without for the
    // rest (the bulk of a global head). Skipping, per warp, the 16-key chunks
    // the mask hides entirely was measured slower (docs/CUDA.md).
    auto attend = [&](auto masked) {
      constexpr bool kMasked = decltype(masked)::value;
      // S = Q K^T for this warp's 16 rows.
      float s[kKeyBlocks][4] = {};
#pragma unroll
      for (int kc = 0; kc < D / 16; ++kc) {
        uint32_t a[4];
        if constexpr (Shape::kQInRegisters) {
#pragma unroll
          for (int e = 0; e < 4; ++e) a[e] = q_frag[kc][e];
        } else {
          load_a<kStride>(a, q_tile, warp * 16, kc * 16, lane);
        }
#pragma unroll
        for (int nb = 0; nb < kKeyBlocks; nb += 2) {
          uint32_t bfrag[4];
          load_b_rows<kStride>(bfrag, k_tile, nb * 8, kc * 16, lane);
          mma_bf16(s[nb], a, bfrag[0], bfrag[1]);
          mma_bf16(s[nb + 1], a, bfrag[2], bfrag[3]);
        }
      }
      auto s_at = [&](int nb, int e) -> float& { return s[nb][e]; };
      if constexpr (kMasked) mask_scores(s_at, blk.mask, row_a, row_b, quad, k0);
      online_softmax(
          s_at, [&](int r, float alpha) { rescale_row<D, kKbar>(o_at, kbar_at, r, alpha); },
          row_max, row_sum, p.scale_log2);

      // O += P V (and kbar += P K), P as bf16 A fragments straight from registers.
#pragma unroll
      for (int kc = 0; kc < kBlockN / 16; ++kc) {
        const uint32_t a[4] = {pack_bf16x2(s[2 * kc][0], s[2 * kc][1]),
                               pack_bf16x2(s[2 * kc][2], s[2 * kc][3]),
                               pack_bf16x2(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                               pack_bf16x2(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#pragma unroll
        for (int db = 0; db < kDBlocks; db += 2) {
          uint32_t bfrag[4];
          load_b_cols<kStride>(bfrag, v_tile, kc * 16, db * 8, lane);
          mma_bf16(o_acc[db], a, bfrag[0], bfrag[1]);
          mma_bf16(o_acc[db + 1], a, bfrag[2], bfrag[3]);
          if constexpr (kKbar) {
            load_b_cols<kStride>(bfrag, k_tile, kc * 16, db * 8, lane);
            mma_bf16(kbar_acc[db], a, bfrag[0], bfrag[1]);
            mma_bf16(kbar_acc[db + 1], a, bfrag[2], bfrag[3]);
          }
        }
      }
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
}

// max_logit[h] = max over batch rows and query blocks of the partials.
__global__ void max_logit_reduce_kernel(float* max_logit, const float* partials, int B,
                                        int n_head, int n_query_blocks) {
  wait_for_previous_grid();
  allow_next_grid();
  __shared__ float shared[32];
  const int h = blockIdx.x;
  float m = -INFINITY;
  for (int b = 0; b < B; ++b)
    for (int qb = threadIdx.x; qb < n_query_blocks; qb += blockDim.x)
      m = fmaxf(m, partials[(size_t(b) * n_head + h) * n_query_blocks + qb]);
  m = block_max(m, shared);
  if (threadIdx.x == 0) max_logit[h] = m;
}

template <int D, bool kKbar>
void launch_forward(CudaContext& ctx, const ForwardParams& p, int B) {
  launch_forward_blocks(ctx, attention_forward_kernel<D, kKbar>, ForwardShape<D, kKbar>::kSmemBytes,
                        p, B);
}

bool use_sm90(const CudaContext& ctx, const AttentionSpec& spec) {
  // Both switches are checked on every GPU: a bad value is an error anywhere.
  sm90_forward_override();
  const bool forced = sm80_forced();
  return !forced && sm90_forward_supported(ctx, spec.head_dim);
}

void launch_sm90(CudaContext& ctx, const ForwardParams& p, const AttentionSpec& spec,
                 bool with_kbar) {
  const AttentionShape shape{spec.B, spec.T, spec.n_head, spec.n_local, spec.window,
                             spec.head_dim};
  const Sm90ForwardVariant variant = sm90_forward_override().value_or(
      choose_sm90_forward(shape, ctx.sm_count()));
  // The ws kernels write out with TMA stores, which need a 16-byte aligned
  // base (the op asks out for 4 bytes only); base writes it by plain stores.
  const bool out_tma_ready = reinterpret_cast<uintptr_t>(p.out) % 16 == 0;
  if (variant == Sm90ForwardVariant::base || !out_tma_ready)
    return launch_forward_sm90(ctx, p, spec.B, with_kbar);
  launch_forward_sm90_ws(ctx, p, spec.B, with_kbar, variant);
}

}  // namespace

bool attn::sm80_forced() { return env_switch("LSGPT_ATTENTION_SM80", {"0", "1"}) == 1; }

std::optional<Sm90ForwardVariant> attn::sm90_forward_override() {
  constexpr Sm90ForwardVariant kForced[] = {Sm90ForwardVariant::base, Sm90ForwardVariant::ws,
                                            Sm90ForwardVariant::ws_persistent,
                                            Sm90ForwardVariant::ws_dynamic};
  const int i = env_switch("LSGPT_ATTENTION_SM90_FORWARD",
                           {"auto", "base", "ws", "ws_persistent", "ws_dynamic"});
  if (i == 0) return std::nullopt;
  return kForced[i - 1];
}

bool attention_forward_uses_sm90(CudaContext& ctx, const AttentionSpec& spec) {
  return use_sm90(ctx, spec);
}

void attention_forward(CudaContext& ctx, bf16* out, float* lse, float* max_logit, bf16* kbar,
                       const bf16* qkv, const AttentionSpec& spec) {
  check_head_dim(spec.head_dim, "attention_forward");
  check_alignment(qkv, 16, "qkv", "attention_forward");
  check_alignment(out, 4, "out", "attention_forward");
  check_alignment(kbar, 4, "kbar", "attention_forward");
  LSGPT_CHECK(spec.n_local >= 0 && spec.n_local <= spec.n_head && spec.window >= 1);
  const bool with_kbar = spec.span.needs_kbar();
  LSGPT_CHECK(!with_kbar || kbar != nullptr, "attention_forward: span needs kbar");
  if (spec.n_head == 0) return;
  ForwardParams p;
  p.qkv = qkv, p.out = out, p.kbar = kbar, p.lse = lse;
  p.T = spec.T, p.n_head = spec.n_head, p.head_dim = spec.head_dim, p.C = spec.C(), p.n_local = spec.n_local;
  p.window = spec.window;
  p.n_query_blocks = ceil_div(spec.T, kBlockM);
  p.scale = 1.0f / sqrtf(float(spec.head_dim));
  p.scale_log2 = p.scale * kLog2e;
  p.item_counter = ctx.item_counter(CudaContext::ItemCounter::attention_forward);
  p.max_partials = static_cast<float*>(
      ctx.scratch(sizeof(float) * (size_t(spec.B) * spec.n_head * p.n_query_blocks + 1)));
  // With no rows (B or T zero) the reduction below writes -inf.
  if (spec.B > 0 && spec.T > 0 && use_sm90(ctx, spec)) {
    launch_sm90(ctx, p, spec, with_kbar);
  } else if (spec.B > 0 && spec.T > 0) {
    switch (padded_head_dim(spec.head_dim)) {
      case 32:
        with_kbar ? launch_forward<32, true>(ctx, p, spec.B) : launch_forward<32, false>(ctx, p, spec.B);
        break;
      case 64:
        with_kbar ? launch_forward<64, true>(ctx, p, spec.B) : launch_forward<64, false>(ctx, p, spec.B);
        break;
      default:
        with_kbar ? launch_forward<128, true>(ctx, p, spec.B)
                  : launch_forward<128, false>(ctx, p, spec.B);
    }
  }
  launch_kernel(ctx, max_logit_reduce_kernel, spec.n_head, 256, 0, max_logit, p.max_partials,
                spec.B, spec.n_head, p.n_query_blocks);
}

}  // namespace lsgpt::cuda
