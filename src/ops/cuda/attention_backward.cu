// LS flash-attention backward. A preprocessing kernel forms delta_i = dO_i . O_i;
// then ONE launch for all heads runs two kinds of blocks, told apart by
// blockIdx.x: key blocks (64 keys, 16 per warp) walk the query tiles that see
// their keys and own dK and dV; query blocks (64 queries) walk the key tiles
// of their band and own dQ. P is recomputed from the saved log-sum-exp. Each
// gradient row is finished by exactly one block, so there are no atomics and
// the result is bit-reproducible, at the price of computing S and dP twice.
// With the span decomposition on (kSpan), the finished rows are projected
// before they are written: dQ along kbar (from the forward) or q, dK along
// qbar = (P^T Q) / colsum(P) (accumulated beside dV only in the kQbar
// instantiation) or k, dV along v. With it off none of this code exists.
// On a compute capability 9.0 GPU the same contract runs on
// attention_backward_sm90.cu's wgmma kernel instead (after the same delta
// kernel; one or two warpgroups a block, chosen by shape in
// attention_sm90_choice.h or by LSGPT_ATTENTION_SM90_BACKWARD, the
// warp-specialised TMA kernel of attention_backward_sm90_ws.cu (with or
// without band runs for local heads), or the one-pass variants of
// attention_backward_sm90_one_pass.cu and
// attention_backward_sm90_one_pass_wg2.cu),
// unless LSGPT_ATTENTION_SM80=1 asks for this one.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "core/env_switch.h"
#include "ops/cuda/attention_backward.cuh"
#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops.h"

namespace lsgpt::cuda {
namespace {

using namespace attn;

constexpr int kKeysPerBlock = 64;     // key blocks: 16 keys per warp
constexpr int kQueriesPerBlock = 64;  // query blocks: 16 queries per warp

template <int D, bool kQbar>
struct BackwardShape {
  static constexpr int kStride = D + 8;
  // Queries per tile in key blocks; smaller when dK, dV and qbar accumulators
  // must all stay in registers.
  static constexpr int kQueryTile = D <= 64 ? 64 : (kQbar ? 16 : 32);
  // Keys per tile in query blocks.
  static constexpr int kKeyTile = D <= 64 ? 64 : 32;
  static constexpr size_t kKeyBlockSmem =
      sizeof(bf16) * (2 * kKeysPerBlock * kStride + 4 * kQueryTile * kStride) +
      sizeof(float) * 4 * kQueryTile;
  static constexpr size_t kQueryBlockSmem =
      sizeof(bf16) * (2 * kQueriesPerBlock * kStride + 4 * kKeyTile * kStride);
  static constexpr size_t kSmemBytes =
      kKeyBlockSmem > kQueryBlockSmem ? kKeyBlockSmem : kQueryBlockSmem;
};

// delta_i = dO_i . O_i, one row (b, h, t) per group of kDeltaLanesPerRow lanes,
// kVec elements per load (8: 16-byte loads, 2 where out is only 4-byte
// aligned). Rows run t-fastest so a warp's delta writes are contiguous; its
// reads are whole 16-byte pieces of D-wide rows either way.
constexpr int kDeltaLanesPerRow = 8;
template <int kVec>
__global__ void attention_delta_kernel(float* delta, const bf16* dout, const bf16* out, int rows,
                                       int T, int n_head, int D) {
  wait_for_previous_grid();
  allow_next_grid();
  const int sub = threadIdx.x % kDeltaLanesPerRow;
  const long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / kDeltaLanesPerRow;
  // Lanes past the last row stay for the shuffles below (they need the whole warp).
  const bool valid = row < rows;
  const int t = int(row % T), bh = int(row / T), h = bh % n_head, b = bh / n_head;
  const size_t offset = (size_t(b) * T + t) * n_head * D + size_t(h) * D;
  float acc = 0.f;
  for (int d = sub * kVec; valid && d < D; d += kDeltaLanesPerRow * kVec) {
    const bf16* g = dout + offset + d;
    const bf16* o = out + offset + d;
    if constexpr (kVec == 8) {
      const uint4 gv = *reinterpret_cast<const uint4*>(g), ov = *reinterpret_cast<const uint4*>(o);
      const __nv_bfloat162* g2 = reinterpret_cast<const __nv_bfloat162*>(&gv);
      const __nv_bfloat162* o2 = reinterpret_cast<const __nv_bfloat162*>(&ov);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 gf = __bfloat1622float2(g2[k]), of = __bfloat1622float2(o2[k]);
        acc += gf.x * of.x + gf.y * of.y;
      }
    } else {
      const float2 gf = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(g));
      const float2 of = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(o));
      acc += gf.x * of.x + gf.y * of.y;
    }
  }
#pragma unroll
  for (int m = kDeltaLanesPerRow / 2; m > 0; m /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, m);
  if (valid && sub == 0) delta[row] = acc;
}

// Rows (group, group + 8) of a warp's 16, as (element index in 0..3) -> row.
__device__ __forceinline__ int frag_row(int base, int e) { return base + (e < 2 ? 0 : 8); }

template <int D, bool kSpan, bool kQbar>
__device__ void key_block(const BackwardParams& p, unsigned char* smem_raw, int key_block_index) {
  using Shape = BackwardShape<D, kQbar>;
  constexpr int kStride = Shape::kStride;
  constexpr int kQ = Shape::kQueryTile;
  constexpr int kDBlocks = D / 8;
  constexpr int kQBlocks = kQ / 8;
  bf16* k_tile = reinterpret_cast<bf16*>(smem_raw);
  bf16* v_tile = k_tile + kKeysPerBlock * kStride;
  bf16* q_tiles = v_tile + kKeysPerBlock * kStride;  // 2 stages
  bf16* do_tiles = q_tiles + 2 * kQ * kStride;       // 2 stages
  float* lse_tiles = reinterpret_cast<float*>(do_tiles + 2 * kQ * kStride);  // 2 stages, log2 units
  float* delta_tiles = lse_tiles + 2 * kQ;                                   // 2 stages

  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int group = lane >> 2, quad = lane & 3;
  const int bh = blockIdx.y, b = bh / p.n_head, h = bh % p.n_head;
  const int T = p.T;
  const int k0 = key_block_index * kKeysPerBlock;
  const size_t qkv_row = size_t(3) * p.C;
  const bf16* q_base = p.qkv + size_t(b) * T * qkv_row + h * p.head_dim;
  const bf16* k_base = q_base + p.C;
  const bf16* v_base = q_base + 2 * p.C;
  const bf16* do_base = p.dout + size_t(b) * T * p.C + h * p.head_dim;
  const float* lse_row = p.lse + size_t(bh) * T;
  const float* delta_row = p.delta + size_t(bh) * T;
  const HeadMask mask{h < p.n_local, p.window};

  const int query_hi = mask.local ? min(T, k0 + kKeysPerBlock - 1 + p.window) : T;  // exclusive
  const int tile_begin = k0 / kQ, tile_end = (query_hi - 1) / kQ;

  auto load_query_tile = [&](int tile, int stage) {
    const int i0 = tile * kQ;
    load_tile_async<kQ, D, kStride>(q_tiles + stage * kQ * kStride, q_base, qkv_row, i0, T, p.head_dim);
    load_tile_async<kQ, D, kStride>(do_tiles + stage * kQ * kStride, do_base, p.C, i0, T, p.head_dim);
    for (int i = threadIdx.x; i < kQ; i += kThreads) {
      const bool valid = i0 + i < T;
      lse_tiles[stage * kQ + i] = valid ? lse_row[i0 + i] * kLog2e : 0.f;
      delta_tiles[stage * kQ + i] = valid ? delta_row[i0 + i] : 0.f;
    }
  };

  load_tile_async<kKeysPerBlock, D, kStride>(k_tile, k_base, qkv_row, k0, T, p.head_dim);
  load_tile_async<kKeysPerBlock, D, kStride>(v_tile, v_base, qkv_row, k0, T, p.head_dim);
  load_query_tile(tile_begin, 0);
  cp_async_commit();

  float dk[kDBlocks][4] = {}, dv[kDBlocks][4] = {};
  float qbar[kQbar ? kDBlocks : 1][4] = {};
  float colsum[2] = {0.f, 0.f};
  const int key_row = k0 + warp * 16 + group;  // and key_row + 8

  for (int tile = tile_begin; tile <= tile_end; ++tile) {
    const int stage = (tile - tile_begin) & 1;
    if (tile < tile_end) {
      load_query_tile(tile + 1, stage ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf16* q_tile = q_tiles + stage * kQ * kStride;
    const bf16* do_tile = do_tiles + stage * kQ * kStride;
    const float* lse_tile = lse_tiles + stage * kQ;
    const float* delta_tile = delta_tiles + stage * kQ;
    const int i0 = tile * kQ;

    // Masked instantiation for tiles the mask cuts or that run past T,
    // branch-free one for the rest (see attention_forward.cu).
    auto step = [&](auto masked) {
      constexpr bool kMasked = decltype(masked)::value;
      // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys.
      float s[kQBlocks][4] = {}, dp[kQBlocks][4] = {};
#pragma unroll
      for (int kc = 0; kc < D / 16; ++kc) {
        uint32_t a_k[4], a_v[4];
        load_a<kStride>(a_k, k_tile, warp * 16, kc * 16, lane);
        load_a<kStride>(a_v, v_tile, warp * 16, kc * 16, lane);
#pragma unroll
        for (int nb = 0; nb < kQBlocks; nb += 2) {
          uint32_t bq[4], bo[4];
          load_b_rows<kStride>(bq, q_tile, nb * 8, kc * 16, lane);
          load_b_rows<kStride>(bo, do_tile, nb * 8, kc * 16, lane);
          mma_bf16(s[nb], a_k, bq[0], bq[1]);
          mma_bf16(s[nb + 1], a_k, bq[2], bq[3]);
          mma_bf16(dp[nb], a_v, bo[0], bo[1]);
          mma_bf16(dp[nb + 1], a_v, bo[2], bo[3]);
        }
      }
      // P^T from the saved lse; dS^T = P^T o (dP^T - delta).
#pragma unroll
      for (int nb = 0; nb < kQBlocks; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = nb * 8 + quad * 2 + (e & 1);
          float prob = exp2_ftz(s[nb][e] * p.scale_log2 - lse_tile[qi]);
          if (kMasked && !(i0 + qi < T && mask.visible(i0 + qi, frag_row(key_row, e)))) prob = 0.f;
          s[nb][e] = prob;
          if constexpr (kQbar) colsum[e >> 1] += prob;
          dp[nb][e] = prob * (dp[nb][e] - delta_tile[qi]);
        }

      // dV += P^T dO, dK += dS^T Q, qbar += P^T Q (k index: the tile's queries).
#pragma unroll
      for (int kc = 0; kc < kQ / 16; ++kc) {
        const uint32_t a_p[4] = {pack_bf16x2(s[2 * kc][0], s[2 * kc][1]),
                                 pack_bf16x2(s[2 * kc][2], s[2 * kc][3]),
                                 pack_bf16x2(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                                 pack_bf16x2(s[2 * kc + 1][2], s[2 * kc + 1][3])};
        const uint32_t a_ds[4] = {pack_bf16x2(dp[2 * kc][0], dp[2 * kc][1]),
                                  pack_bf16x2(dp[2 * kc][2], dp[2 * kc][3]),
                                  pack_bf16x2(dp[2 * kc + 1][0], dp[2 * kc + 1][1]),
                                  pack_bf16x2(dp[2 * kc + 1][2], dp[2 * kc + 1][3])};
#pragma unroll
        for (int db = 0; db < kDBlocks; db += 2) {
          uint32_t bo[4], bq[4];
          load_b_cols<kStride>(bo, do_tile, kc * 16, db * 8, lane);
          mma_bf16(dv[db], a_p, bo[0], bo[1]);
          mma_bf16(dv[db + 1], a_p, bo[2], bo[3]);
          load_b_cols<kStride>(bq, q_tile, kc * 16, db * 8, lane);
          mma_bf16(dk[db], a_ds, bq[0], bq[1]);
          mma_bf16(dk[db + 1], a_ds, bq[2], bq[3]);
          if constexpr (kQbar) {
            mma_bf16(qbar[db], a_p, bq[0], bq[1]);
            mma_bf16(qbar[db + 1], a_p, bq[2], bq[3]);
          }
        }
      }
    };
    if (mask.tile_needs_mask(i0, kQ, k0, kKeysPerBlock) || i0 + kQ > T)
      step(std::true_type{});
    else
      step(std::false_type{});
    __syncthreads();
  }

  finish_key_rows<kDBlocks, kSpan, kQbar>(
      p, [&](int db, int i) { return dk[db][i]; }, [&](int db, int i) { return dv[db][i]; },
      [&](int db, int i) { return qbar[db][i]; }, colsum, key_row, b, h, k_base, v_base, quad);
}

template <int D, bool kSpan, bool kQbar>
__device__ void query_block(const BackwardParams& p, unsigned char* smem_raw, int query_block_index) {
  using Shape = BackwardShape<D, kQbar>;
  constexpr int kStride = Shape::kStride;
  constexpr int kN = Shape::kKeyTile;
  constexpr int kDBlocks = D / 8;
  constexpr int kKBlocks = kN / 8;
  bf16* q_tile = reinterpret_cast<bf16*>(smem_raw);
  bf16* do_tile = q_tile + kQueriesPerBlock * kStride;
  bf16* k_tiles = do_tile + kQueriesPerBlock * kStride;  // 2 stages
  bf16* v_tiles = k_tiles + 2 * kN * kStride;           // 2 stages

  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int group = lane >> 2, quad = lane & 3;
  const int bh = blockIdx.y, b = bh / p.n_head, h = bh % p.n_head;
  const int T = p.T;
  const int q0 = query_block_index * kQueriesPerBlock;
  const size_t qkv_row = size_t(3) * p.C;
  const bf16* q_base = p.qkv + size_t(b) * T * qkv_row + h * p.head_dim;
  const bf16* k_base = q_base + p.C;
  const bf16* v_base = q_base + 2 * p.C;
  const bf16* do_base = p.dout + size_t(b) * T * p.C + h * p.head_dim;
  const HeadMask mask{h < p.n_local, p.window};

  const int key_lo = mask.local ? max(0, q0 - p.window + 1) : 0;
  const int key_hi = min(T, q0 + kQueriesPerBlock);
  const int tile_begin = key_lo / kN, tile_end = (key_hi - 1) / kN;

  load_tile_async<kQueriesPerBlock, D, kStride>(q_tile, q_base, qkv_row, q0, T, p.head_dim);
  load_tile_async<kQueriesPerBlock, D, kStride>(do_tile, do_base, p.C, q0, T, p.head_dim);
  load_tile_async<kN, D, kStride>(k_tiles, k_base, qkv_row, tile_begin * kN, T, p.head_dim);
  load_tile_async<kN, D, kStride>(v_tiles, v_base, qkv_row, tile_begin * kN, T, p.head_dim);
  cp_async_commit();

  const int row_a = q0 + warp * 16 + group;  // and row_a + 8
  float lse_log2[2], delta[2];
  load_query_stats(lse_log2, delta, p, bh, row_a);
  float dq[kDBlocks][4] = {};
  uint32_t q_frag[D / 16][4], do_frag[D / 16][4];

  for (int tile = tile_begin; tile <= tile_end; ++tile) {
    const int stage = (tile - tile_begin) & 1;
    if (tile < tile_end) {
      load_tile_async<kN, D, kStride>(k_tiles + (stage ^ 1) * kN * kStride, k_base, qkv_row,
                                      (tile + 1) * kN, T, p.head_dim);
      load_tile_async<kN, D, kStride>(v_tiles + (stage ^ 1) * kN * kStride, v_base, qkv_row,
                                      (tile + 1) * kN, T, p.head_dim);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (tile == tile_begin) {
#pragma unroll
      for (int kc = 0; kc < D / 16; ++kc) {
        load_a<kStride>(q_frag[kc], q_tile, warp * 16, kc * 16, lane);
        load_a<kStride>(do_frag[kc], do_tile, warp * 16, kc * 16, lane);
      }
    }
    const bf16* k_tile = k_tiles + stage * kN * kStride;
    const bf16* v_tile = v_tiles + stage * kN * kStride;
    const int j0 = tile * kN;

    // Masked instantiation for tiles the mask cuts, branch-free for the rest.
    auto step = [&](auto masked) {
      constexpr bool kMasked = decltype(masked)::value;
      float s[kKBlocks][4] = {}, dp[kKBlocks][4] = {};
#pragma unroll
      for (int kc = 0; kc < D / 16; ++kc)
#pragma unroll
        for (int nb = 0; nb < kKBlocks; nb += 2) {
          uint32_t bk[4], bv[4];
          load_b_rows<kStride>(bk, k_tile, nb * 8, kc * 16, lane);
          load_b_rows<kStride>(bv, v_tile, nb * 8, kc * 16, lane);
          mma_bf16(s[nb], q_frag[kc], bk[0], bk[1]);
          mma_bf16(s[nb + 1], q_frag[kc], bk[2], bk[3]);
          mma_bf16(dp[nb], do_frag[kc], bv[0], bv[1]);
          mma_bf16(dp[nb + 1], do_frag[kc], bv[2], bv[3]);
        }
#pragma unroll
      for (int nb = 0; nb < kKBlocks; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e >> 1;
          float prob = exp2_ftz(s[nb][e] * p.scale_log2 - lse_log2[r]);
          if (kMasked && !mask.visible(row_a + 8 * r, j0 + nb * 8 + quad * 2 + (e & 1))) prob = 0.f;
          dp[nb][e] = prob * (dp[nb][e] - delta[r]);
        }
      // dQ += dS K
#pragma unroll
      for (int kc = 0; kc < kN / 16; ++kc) {
        const uint32_t a_ds[4] = {pack_bf16x2(dp[2 * kc][0], dp[2 * kc][1]),
                                  pack_bf16x2(dp[2 * kc][2], dp[2 * kc][3]),
                                  pack_bf16x2(dp[2 * kc + 1][0], dp[2 * kc + 1][1]),
                                  pack_bf16x2(dp[2 * kc + 1][2], dp[2 * kc + 1][3])};
#pragma unroll
        for (int db = 0; db < kDBlocks; db += 2) {
          uint32_t bk[4];
          load_b_cols<kStride>(bk, k_tile, kc * 16, db * 8, lane);
          mma_bf16(dq[db], a_ds, bk[0], bk[1]);
          mma_bf16(dq[db + 1], a_ds, bk[2], bk[3]);
        }
      }
    };
    if (mask.tile_needs_mask(q0, kQueriesPerBlock, j0, kN))
      step(std::true_type{});
    else
      step(std::false_type{});
    __syncthreads();
  }

  finish_query_rows<kDBlocks, kSpan>(
      p, [&](int db, int i) { return dq[db][i]; }, row_a, b, h, q_base, quad);
}

template <int D, bool kSpan, bool kQbar>
__global__ void __launch_bounds__(kThreads) attention_backward_kernel(const BackwardParams p) {
  wait_for_previous_grid();
  allow_next_grid();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  if (int(blockIdx.x) < p.n_key_blocks)
    key_block<D, kSpan, kQbar>(p, smem_raw, blockIdx.x);
  else
    query_block<D, kSpan, kQbar>(p, smem_raw,
                                 p.n_query_blocks - 1 - (int(blockIdx.x) - p.n_key_blocks));
}

template <int D, bool kSpan, bool kQbar>
void launch_backward(CudaContext& ctx, const BackwardParams& p, int B) {
  using Shape = BackwardShape<D, kQbar>;
  auto kernel = attention_backward_kernel<D, kSpan, kQbar>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(Shape::kSmemBytes)));
  const dim3 grid(p.n_key_blocks + p.n_query_blocks, B * p.n_head);
  launch_kernel(ctx, kernel, grid, kThreads, Shape::kSmemBytes, p);
}

template <int D>
void dispatch_backward(CudaContext& ctx, const BackwardParams& p, int B, bool span, bool qbar) {
  if (!span)
    launch_backward<D, false, false>(ctx, p, B);
  else if (qbar)
    launch_backward<D, true, true>(ctx, p, B);
  else
    launch_backward<D, true, false>(ctx, p, B);
}

bool use_sm90(const CudaContext& ctx, const AttentionSpec& spec) {
  // The switches are checked on every GPU: a bad value is an error anywhere.
  sm90_backward_override();
  sm90_backward_global_first();
  sm90_band_run_override();
  sm90_head_group_override();
  sm90_one_pass_blocks_override();
  sm90_ws_striding_forced();
  sm90_key_direction_pass_override();
  attention_deterministic();
  const bool forced = sm80_forced();
  return !forced && sm90_backward_supported(ctx, spec.head_dim);
}

}  // namespace

std::optional<Sm90BackwardVariant> attn::sm90_backward_override() {
  using V = Sm90BackwardVariant;
  constexpr V kForced[] = {V::base,    V::wg2,         V::ws,
                           V::one_pass, V::one_pass_wg2, V::ws_band,
                           V::ws_one_pass, V::ws_one_pass_ordered};
  const int i = env_switch("LSGPT_ATTENTION_SM90_BACKWARD",
                           {"auto", "base", "wg2", "ws", "one_pass", "one_pass_wg2", "ws_band",
                            "ws_one_pass", "ws_one_pass_ordered"});
  if (i == 0) return std::nullopt;
  return kForced[i - 1];
}

std::optional<int> attn::sm90_band_run_override() {
  return env_whole_number("LSGPT_ATTENTION_SM90_BAND_RUN", 1, 1 << 20, "key blocks");
}

std::optional<int> attn::sm90_one_pass_blocks_override() {
  return env_whole_number("LSGPT_ATTENTION_SM90_ONE_PASS_BLOCKS", 1, 1 << 20, "blocks");
}

std::optional<int> attn::sm90_head_group_override() {
  return env_whole_number("LSGPT_ATTENTION_SM90_HEAD_GROUP", 0, 1 << 20, "heads");
}

bool attn::attention_deterministic() {
  return env_switch("LSGPT_ATTENTION_DETERMINISTIC", {"1", "0"}) == 0;
}

namespace {
// The kernel the last attention_backward launched (-1: sm_80, else an
// Sm90BackwardVariant), for attention_backward_last_kernel, and whether the
// key-direction pass ran before it.
std::atomic<int> last_backward_kernel{-1};
std::atomic<bool> last_key_direction_pass{false};
}  // namespace

bool attn::sm90_ws_striding_forced() {
  return env_switch("LSGPT_ATTENTION_SM90_WS_SCHEDULE", {"auto", "static", "dynamic"}) == 1;
}

std::optional<bool> attn::sm90_key_direction_pass_override() {
  const int i = env_switch("LSGPT_ATTENTION_SM90_KEY_DIRECTION", {"auto", "pass", "fused"});
  if (i == 0) return std::nullopt;
  return i == 1;
}

bool attn::sm90_backward_global_first() {
  return env_switch("LSGPT_ATTENTION_SM90_BACKWARD_ORDER",
                    {"auto", "batch_major", "global_first"}) != 1;
}

bool attention_backward_uses_sm90(CudaContext& ctx, const AttentionSpec& spec) {
  return use_sm90(ctx, spec);
}

const char* attention_backward_last_kernel() {
  constexpr const char* kNames[] = {"base",         "wg2",     "ws",          "one_pass",
                                    "one_pass_wg2", "ws_band", "ws_one_pass",
                                    "ws_one_pass_ordered"};
  static_assert(int(attn::Sm90BackwardVariant::ws_one_pass_ordered) == 7,
                "kNames follows the enum");
  const int k = last_backward_kernel;
  return k < 0 ? "sm80" : kNames[k];
}

bool attention_backward_last_ran_key_direction_pass() { return last_key_direction_pass; }

namespace {

void check_backward_args(const bf16* dqkv, const bf16* dqkv_colsum, const bf16* dout,
                         const bf16* qkv, const bf16* out, const bf16* kbar,
                         const AttentionSpec& spec) {
  check_head_dim(spec.head_dim, "attention_backward");
  check_alignment(qkv, 16, "qkv", "attention_backward");
  check_alignment(dout, 16, "dout", "attention_backward");
  check_alignment(out, 4, "out", "attention_backward");
  check_alignment(kbar, 4, "kbar", "attention_backward");
  check_alignment(dqkv, 4, "dqkv", "attention_backward");
  check_alignment(dqkv_colsum, 2, "dqkv_colsum", "attention_backward");
  LSGPT_CHECK(spec.n_local >= 0 && spec.n_local <= spec.n_head && spec.window >= 1);
  LSGPT_CHECK(!spec.span.needs_kbar() || kbar != nullptr, "attention_backward: span needs kbar");
  LSGPT_CHECK(!(spec.span.v.enabled && spec.span.v.basis == SpanBasis::cross),
              "span on v supports the self basis only");
}

// The backward's scratch: delta (one float a row of each head), one_pass's
// f32 dQ sums, the qkv bias gradient's part sums, ws_band's dQ slots and
// the key directions (BackwardParams).
struct BackwardScratch {
  float *delta, *dq_accum, *bias_partials, *band_dq;
  bf16* key_direction;
  int bias_parts;  // 0 when the bias is not summed in the kernels
};

BackwardScratch carve_backward_scratch(CudaContext& ctx, const AttentionSpec& spec,
                                       size_t dq_floats, bool fused_bias, size_t band_floats,
                                       bool key_direction) {
  const size_t rows = size_t(spec.B) * spec.T * spec.n_head;
  const size_t bias_parts =
      fused_bias ? size_t(spec.B) * ceil_div(spec.T, kBiasRowGroup) : 0;
  LSGPT_CHECK(bias_parts <= 0x7fffffff, "attention_backward: too many rows for the bias sums");
  const size_t bias_floats = bias_parts * 3 * size_t(spec.C());
  const size_t direction_elems = key_direction ? size_t(spec.B) * spec.T * spec.C() : 0;
  ScratchCarver carver(ctx.scratch(ScratchCarver::round(sizeof(float) * rows) +
                                   ScratchCarver::round(sizeof(float) * dq_floats) +
                                   ScratchCarver::round(sizeof(float) * bias_floats) +
                                   ScratchCarver::round(sizeof(float) * band_floats) +
                                   ScratchCarver::round(sizeof(bf16) * direction_elems)));
  BackwardScratch scratch;
  scratch.delta = carver.take<float>(rows);
  scratch.dq_accum = carver.take<float>(dq_floats);
  scratch.bias_partials = carver.take<float>(bias_floats);
  scratch.band_dq = carver.take<float>(band_floats);
  scratch.key_direction = carver.take<bf16>(direction_elems);
  scratch.bias_parts = int(bias_parts);
  return scratch;
}

void launch_delta(CudaContext& ctx, float* delta, const bf16* dout, const bf16* out,
                  const AttentionSpec& spec) {
  const size_t rows = size_t(spec.B) * spec.T * spec.n_head;
  const unsigned blocks = unsigned(ceil_div((long long)rows * kDeltaLanesPerRow, 256));
  const int D = spec.head_dim;
  if (reinterpret_cast<uintptr_t>(out) % 16 == 0)  // dout is checked 16-byte aligned
    launch_kernel(ctx, attention_delta_kernel<8>, blocks, 256, 0, delta, dout, out, int(rows),
                  spec.T, spec.n_head, D);
  else
    launch_kernel(ctx, attention_delta_kernel<2>, blocks, 256, 0, delta, dout, out, int(rows),
                  spec.T, spec.n_head, D);
}

BackwardParams backward_params(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                               const bf16* kbar, const BackwardScratch& scratch,
                               const AttentionSpec& spec) {
  BackwardParams p;
  p.qkv = qkv, p.dout = dout, p.lse = lse, p.delta = scratch.delta, p.kbar = kbar, p.dqkv = dqkv;
  p.T = spec.T, p.n_head = spec.n_head, p.head_dim = spec.head_dim, p.C = spec.C();
  p.n_local = spec.n_local, p.window = spec.window;
  p.n_key_blocks = ceil_div(spec.T, kKeysPerBlock);
  p.n_query_blocks = ceil_div(spec.T, kQueriesPerBlock);
  p.scale = 1.0f / sqrtf(float(spec.head_dim));
  p.scale_log2 = p.scale * kLog2e;
  p.span = make_span_args(spec.span);
  p.bias_partials = scratch.bias_parts ? scratch.bias_partials : nullptr;
  p.bias_row_groups = ceil_div(spec.T, kBiasRowGroup);
  p.band_dq = scratch.band_dq;
  return p;
}

}  // namespace

void attention_backward(CudaContext& ctx, bf16* dqkv, bf16* dqkv_colsum, const bf16* dout,
                        const bf16* qkv, const bf16* out, const float* lse, const bf16* kbar,
                        const AttentionSpec& spec) {
  check_backward_args(dqkv, dqkv_colsum, dout, qkv, out, kbar, spec);
  if (spec.B == 0 || spec.T == 0 || spec.n_head == 0) return;
  const bool sm90 = use_sm90(ctx, spec);
  const bool cross_k = spec.span.k.enabled && spec.span.k.basis == SpanBasis::cross;
  AttentionShape shape{spec.B,      spec.T,         spec.n_head, spec.n_local,
                       spec.window, spec.head_dim, cross_k};
  // The cross basis on k from its own pass, or qbar in the kernels.
  const bool key_direction_pass =
      sm90 && cross_k &&
      sm90_key_direction_pass_override().value_or(key_direction_pass_pays(shape));
  const bool qbar = cross_k && !key_direction_pass;
  shape.span_qbar = qbar;
  last_key_direction_pass = key_direction_pass;
  using V = Sm90BackwardVariant;
  // The Hopper kernel that runs: the forced or chosen variant, after its
  // fallbacks (ws_one_pass has no qbar of its own: one_pass_wg2 runs, and
  // ws for the ordered form, which keeps the bits reproducible; ws_band's
  // runs apply to some shapes only: ws runs elsewhere).
  V variant = sm90 ? sm90_backward_override().value_or(
                         choose_sm90_backward(shape, ctx.sm_count(), attention_deterministic()))
                   : V::base;
  if (variant == V::ws_one_pass && qbar) variant = V::one_pass_wg2;
  if (variant == V::ws_one_pass_ordered && qbar) variant = V::ws;
  if (variant == V::ws_band && !ws_band_applies(shape)) variant = V::ws;
  last_backward_kernel = sm90 ? int(variant) : -1;
  const bool ws_one_pass = variant == V::ws_one_pass || variant == V::ws_one_pass_ordered;
  const bool ordered = variant == V::ws_one_pass_ordered;
  const bool one_pass =
      sm90 && (variant == V::one_pass || variant == V::one_pass_wg2 || ws_one_pass);
  const size_t dq_floats =
      !one_pass     ? 0
      : ws_one_pass ? ws_one_pass_dq_floats(spec.B, spec.T, spec.n_head, spec.head_dim, ordered)
                    : one_pass_dq_floats(spec.B, spec.T, spec.n_head, spec.head_dim);
  // The bias gradient's part sums come from the two-pass kernels' row
  // epilogues; one_pass forms its dQ rows in a kernel of its own, so there
  // a pass over dqkv sums them afterwards.
  const bool fused_bias = dqkv_colsum && !one_pass;
  const bool band = sm90 && variant == V::ws_band;
  const int band_slots = band ? ws_band_slots(std::min(spec.window, spec.T)) : 0;
  const BackwardScratch scratch =
      carve_backward_scratch(ctx, spec, dq_floats, fused_bias,
                             band ? ws_band_dq_floats(ctx, band_slots) : 0, key_direction_pass);
  launch_delta(ctx, scratch.delta, dout, out, spec);
  BackwardParams p = backward_params(dqkv, dout, qkv, lse, kbar, scratch, spec);
  if (key_direction_pass) {
    launch_key_direction_sm90(ctx, p, spec.B, scratch.key_direction);
    p.key_direction = scratch.key_direction;
  }
  p.item_counter = ctx.item_counter(CudaContext::ItemCounter::attention_backward);
  // ws takes its items from the counter on every shape: with the head
  // groups it beat striding (every (consumers)-th item) on every measured
  // one (H200, 2026-12-01: LS 11/12 w 100 at D 128 -3% to -18%, GPT-2
  // small's layers -7%, MHSA and LS 1/2 from T 4k -7% to -14%; docs/
  // CUDA.md "Backward on Hopper: ws items from a counter"). Striding stays
  // as LSGPT_ATTENTION_SM90_WS_SCHEDULE=static, for comparison.
  const bool dynamic = !sm90_ws_striding_forced();
  if (band) {
    p.band_slots = band_slots;
    p.band_run = sm90_band_run_override().value_or(ws_band_run(shape, ctx.sm_count()));
  } else {
    // Groups were measured with the counter; forced striding keeps one.
    p.head_group = sm90_head_group_override().value_or(
        dynamic ? ws_backward_head_group(shape, ctx.sm_count()) : 0);
  }
  const bool span = spec.span.any();
  const int D = padded_head_dim(spec.head_dim);
  if (sm90 && ws_one_pass)
    launch_backward_sm90_ws_one_pass(ctx, p, spec.B, span, ordered, scratch.dq_accum);
  else if (sm90 && variant == V::one_pass_wg2)
    launch_backward_sm90_one_pass_wg2(ctx, p, spec.B, span, qbar, scratch.dq_accum);
  else if (sm90 && variant == V::one_pass)
    launch_backward_sm90_one_pass(ctx, p, spec.B, span, qbar, scratch.dq_accum);
  else if (sm90 && (variant == V::ws || variant == V::ws_band))
    launch_backward_sm90_ws(ctx, p, spec.B, span, qbar, ws_backward_short_walks(shape), dynamic);
  else if (sm90)
    launch_backward_sm90(ctx, p, spec.B, span, qbar, variant == V::wg2);
  else if (D == 32)
    dispatch_backward<32>(ctx, p, spec.B, span, qbar);
  else if (D == 64)
    dispatch_backward<64>(ctx, p, spec.B, span, qbar);
  else
    dispatch_backward<128>(ctx, p, spec.B, span, qbar);

  if (fused_bias)
    reduce_partials_accumulate(ctx, dqkv_colsum, scratch.bias_partials, scratch.bias_parts,
                               3 * spec.C());
  else if (dqkv_colsum)
    column_sum_accumulate(ctx, dqkv_colsum, dqkv, spec.B * spec.T, 3 * spec.C());
}

}  // namespace lsgpt::cuda
