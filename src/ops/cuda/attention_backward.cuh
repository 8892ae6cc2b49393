// What the two LS flash-attention backward kernels share: their parameters,
// the epilogues that finish one gradient row (scale, span projection, store),
// and the Hopper kernel's entry points, which attention_backward.cu
// dispatches to after forming delta (docs/CUDA.md, "Backward on Hopper").
// Both kernels hold a finished row the same way: one quad of lanes per row,
// lane `quad` holding columns 8 db + 2 quad + {0, 1} as elements 2 db + {0, 1}.
#pragma once

#include <cuda_bf16.h>

#include <cstddef>
#include <optional>

#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/attention_sm90_choice.h"
#include "ops/cuda/cuda_context.h"

namespace lsgpt::cuda::attn {

struct BackwardParams {
  const __nv_bfloat16* qkv;
  const __nv_bfloat16* dout;
  const float* lse;
  const float* delta;
  const __nv_bfloat16* kbar;
  __nv_bfloat16* dqkv;
  int T, n_head, head_dim, C, n_local, window, n_key_blocks, n_query_blocks;
  // The Hopper two-pass kernel's block order (attention_backward_sm90.cu,
  // block_head): batch-major, or global heads first. Unused elsewhere.
  bool global_first = false;
  float scale, scale_log2;
  SpanArgs span;
  // The qkv bias gradient's part sums (WarpColumnSums below), or null: one
  // row of 3C floats per 16 rows of each batch row, [B, bias_row_groups,
  // 3C], bias_row_groups = ceil(T / 16). Every entry is written once, by
  // the warp that finishes those rows of dQ (or of dK and dV).
  float* bias_partials = nullptr;
  int bias_row_groups = 0;
  // ws's band runs (launch_backward_sm90_ws with band_run > 0; D 64, local
  // heads): key blocks a run, dQ part-sum slots a consumer (ws_band_slots)
  // and the slots, band_slots x 64 x 64 floats for each of the grid's
  // consumers (ws_band_dq_floats); unused elsewhere. The item counter
  // (CudaContext::ItemCounter::attention_backward, zero at each launch's
  // start, take_next_item) from which ws's consumers take their next item
  // instead of every (grid's consumers)-th, with band runs or with
  // launch_backward_sm90_ws's `dynamic`; ws_one_pass's blocks take all
  // their items from it (take_item): the ordered form always, the
  // unordered one unless the schedule is static (snake rounds).
  int band_run = 0, band_slots = 0;
  // ws (not band runs): the items in groups of this many (batch row,
  // head) pairs, each group's before the next's (ws_backward_head_group);
  // 0: one group.
  int head_group = 0;
  int* item_counter = nullptr;
  float* band_dq = nullptr;
  // The span's cross basis on k from its own pass (launch_key_direction_sm90):
  // u_j = qbar_j / colsum_j for every key row, [B, T, C] bf16 (head h at
  // columns h * head_dim), read in place of k_j by the kernels' span
  // instantiations without qbar; null: the basis on k is self, or the
  // kernel forms qbar itself (kQbar).
  const __nv_bfloat16* key_direction = nullptr;
};

// Rows a part of bias_partials sums: one warp's rows in every kernel that
// fills them (16 a warp, two a lane, aligned to 16).
constexpr int kBiasRowGroup = 16;

// One warp's column sums of the 16 gradient rows it finishes (dQ, dK or
// dV of one head), for the qkv bias gradient: summed in the epilogue so
// that no pass reads dqkv again. add() accumulates a lane's two rows (the
// quad layout above, f32 as computed, before the bf16 store); store()
// folds the sums over the 8 lane groups (a butterfly: each xor step keeps
// half the elements, 7 N / 8 shuffles for N elements a lane instead of
// 3 N), leaving lane group g the column sums of its elements
// g N / 8 .. g N / 8 + N / 8 - 1, and writes them. The order of the
// additions is fixed: the same bits every run.
template <int kDBlocks>
struct WarpColumnSums {
  static constexpr int kN = 2 * kDBlocks;
  static constexpr int kKept = kN / 8;
  static_assert(kN % 8 == 0, "the butterfly halves the elements three times");
  float v[kN] = {};

  // A row past T (valid false) adds nothing.
  __device__ __forceinline__ void add(const float (&g)[kN], bool valid) {
#pragma unroll
    for (int e = 0; e < kN; ++e) v[e] += valid ? g[e] : 0.f;
  }

  // The warp's part of batch row b (row: one of its rows) at dqkv column
  // col0 (the head's first column of q, k or v). Every lane calls it.
  __device__ __forceinline__ void store(const BackwardParams& p, int b, int col0, int row) {
    fold<kN, 16>();
    fold<kN / 2, 8>();
    fold<kN / 4, 4>();
    const int part = row / kBiasRowGroup;
    if (part >= p.bias_row_groups) return;  // every row of the warp is past T
    const int lane = threadIdx.x % kWarpSize, group = lane >> 2, quad = lane & 3;
    float* out = p.bias_partials + (size_t(b) * p.bias_row_groups + part) * (3 * p.C) + col0;
#pragma unroll
    for (int i = 0; i < kKept; ++i) {
      const int element = group * kKept + i;  // 2 db + e: column 8 db + 2 quad + e
      const int col = 8 * (element / 2) + 2 * quad + (element & 1);
      if (col < p.head_dim) out[col] = v[i];
    }
  }

 private:
  // Lanes whose kMask bit is set keep the upper half of v[0, kCount), the
  // others the lower half, each adding its partner's copy of what it keeps.
  template <int kCount, int kMask>
  __device__ __forceinline__ void fold() {
    const bool upper = threadIdx.x & kMask;
#pragma unroll
    for (int i = 0; i < kCount / 2; ++i) {
      const float send = upper ? v[i] : v[kCount / 2 + i];
      const float keep = upper ? v[kCount / 2 + i] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, kMask);
    }
  }
};

// Elements 2 db + {0, 1} of `row` for this lane (zero when !valid or past
// the real head dim).
template <int kDBlocks>
__device__ __forceinline__ void load_row_pairs(float (&u)[2 * kDBlocks],
                                               const __nv_bfloat16* row, bool valid, int head_dim,
                                               int quad) {
#pragma unroll
  for (int db = 0; db < kDBlocks; ++db) {
    const float2 x = valid && db * 8 < head_dim
                         ? __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(
                               row + db * 8 + quad * 2))
                         : make_float2(0.f, 0.f);
    u[2 * db] = x.x, u[2 * db + 1] = x.y;
  }
}

template <int kDBlocks>
__device__ __forceinline__ void store_row_pairs(__nv_bfloat16* row, const float (&g)[2 * kDBlocks],
                                                int head_dim, int quad) {
#pragma unroll
  for (int db = 0; db < kDBlocks; ++db)
    if (db * 8 < head_dim)
      *reinterpret_cast<__nv_bfloat162*>(row + db * 8 + quad * 2) =
          __floats2bfloat162_rn(g[2 * db], g[2 * db + 1]);
}

// 1 / colsum_j for the cross basis on k, from this lane's share of the
// column sum (the quad's lanes hold the row's shares). A key that (almost)
// no query attended: below 1e-30 its column sum may be subnormal, 1/total
// overflows and 0 * inf (qbar flushed to zero in the bf16 product) is NaN.
// 0 then, so u = 0 leaves the row unchanged; its gradient is of the order
// of that sum, i.e. nothing.
__device__ __forceinline__ float inverse_column_sum(float lane_share) {
  float total = lane_share;
  total += __shfl_xor_sync(0xffffffffu, total, 1);
  total += __shfl_xor_sync(0xffffffffu, total, 2);
  return total > 1e-30f ? 1.0f / total : 0.f;
}

// Key row j's epilogue: gk (already scaled by tau) and gv projected (span:
// dK along qbar_j / colsum_j, or the row of key_direction, or k_j; dV
// along v_j) in place and stored when j < T.
// qbar holds this lane's share of P^T Q for the row and colsum its share of
// the column sum of P (both read only in the kQbar instantiation);
// key_direction is the head's rows of p.key_direction or null. Every lane
// of the warp calls it (quad shuffles).
template <int kDBlocks, bool kSpan, bool kQbar>
__device__ __forceinline__ void finish_key_row(const BackwardParams& p, float (&gk)[2 * kDBlocks],
                                               float (&gv)[2 * kDBlocks],
                                               const float (&qbar)[2 * kDBlocks], float colsum,
                                               int j, const __nv_bfloat16* k_base,
                                               const __nv_bfloat16* v_base,
                                               const __nv_bfloat16* key_direction, int quad) {
  const size_t qkv_row = size_t(3) * p.C;
  if constexpr (kSpan) {
    if (p.span.k) {
      float u[2 * kDBlocks];
      if constexpr (kQbar) {
        const float inv = inverse_column_sum(colsum);
#pragma unroll
        for (int e = 0; e < 2 * kDBlocks; ++e) u[e] = qbar[e] * inv;
      } else {
        const __nv_bfloat16* row =
            key_direction ? key_direction + size_t(j) * p.C : k_base + size_t(j) * qkv_row;
        load_row_pairs<kDBlocks>(u, row, j < p.T, p.head_dim, quad);
      }
      project_row(gk, u, p.span.k_par, p.span.k_perp);
    }
    if (p.span.v) {
      float u[2 * kDBlocks];
      load_row_pairs<kDBlocks>(u, v_base + size_t(j) * qkv_row, j < p.T, p.head_dim, quad);
      project_row(gv, u, p.span.v_par, p.span.v_perp);
    }
  }
  if (j < p.T) {
    // dqkv has qkv's layout: dK sits where K does.
    __nv_bfloat16* dk_row = p.dqkv + (k_base - p.qkv) + size_t(j) * qkv_row;
    store_row_pairs<kDBlocks>(dk_row, gk, p.head_dim, quad);
    store_row_pairs<kDBlocks>(dk_row + p.C, gv, p.head_dim, quad);
  }
}

// A key block's epilogue for this thread's rows key_row and key_row + 8 of
// head h of batch row b: dK scaled by tau, then finish_key_row (span
// projections, stores below T), and the warp's bias part sums when
// p.bias_partials is set. dk_at(db, i), dv_at and qbar_at (read only with
// kQbar) give element i (= 2 r + e: row r, column 2 quad + e) of the
// thread's n8 block db in the accumulator layout, however the kernel
// stores its accumulators (sm_80: [db][i]; wgmma: [4 db + i]).
template <int kDBlocks, bool kSpan, bool kQbar, typename DkAt, typename DvAt, typename QbarAt>
__device__ __forceinline__ void finish_key_rows(const BackwardParams& p, DkAt dk_at, DvAt dv_at,
                                                QbarAt qbar_at, const float (&colsum)[2],
                                                int key_row, int b, int h,
                                                const __nv_bfloat16* k_base,
                                                const __nv_bfloat16* v_base, int quad) {
  WarpColumnSums<kDBlocks> bias_k, bias_v;
  const __nv_bfloat16* key_direction =
      kSpan && !kQbar && p.key_direction
          ? p.key_direction + size_t(b) * p.T * p.C + size_t(h) * p.head_dim
          : nullptr;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float gk[2 * kDBlocks], gv[2 * kDBlocks], qbar_row[2 * kDBlocks] = {};
#pragma unroll
    for (int db = 0; db < kDBlocks; ++db)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        gk[2 * db + e] = dk_at(db, 2 * r + e) * p.scale;
        gv[2 * db + e] = dv_at(db, 2 * r + e);
        if constexpr (kQbar) qbar_row[2 * db + e] = qbar_at(db, 2 * r + e);
      }
    finish_key_row<kDBlocks, kSpan, kQbar>(p, gk, gv, qbar_row, colsum[r], key_row + 8 * r,
                                           k_base, v_base, key_direction, quad);
    if (p.bias_partials) {  // the rows projected
      bias_k.add(gk, key_row + 8 * r < p.T);
      bias_v.add(gv, key_row + 8 * r < p.T);
    }
  }
  if (p.bias_partials) {
    bias_k.store(p, b, p.C + h * p.head_dim, key_row);
    bias_v.store(p, b, 2 * p.C + h * p.head_dim, key_row);
  }
}

// Query row i's epilogue: g (already scaled by tau) projected (span: along
// kbar_i or q_i) in place and stored when i < T. Every lane of the warp calls it.
template <int kDBlocks, bool kSpan>
__device__ __forceinline__ void finish_query_row(const BackwardParams& p, float (&g)[2 * kDBlocks],
                                                 int i, int b, int h,
                                                 const __nv_bfloat16* q_base, int quad) {
  const size_t qkv_row = size_t(3) * p.C;
  if constexpr (kSpan) {
    if (p.span.q) {
      // u = kbar_i (cross) or q_i (self).
      const __nv_bfloat16* u_row = p.span.q_cross
                                       ? p.kbar + (size_t(b) * p.T + i) * p.C + h * p.head_dim
                                       : q_base + size_t(i) * qkv_row;
      float u[2 * kDBlocks];
      load_row_pairs<kDBlocks>(u, u_row, i < p.T, p.head_dim, quad);
      project_row(g, u, p.span.q_par, p.span.q_perp);
    }
  }
  if (i < p.T)  // dqkv has qkv's layout
    store_row_pairs<kDBlocks>(p.dqkv + (q_base - p.qkv) + size_t(i) * qkv_row, g, p.head_dim, quad);
}

// A query block's lse (log2 units) and delta for this thread's rows row_a
// and row_a + 8 of head bh (zero past T).
__device__ __forceinline__ void load_query_stats(float (&lse_log2)[2], float (&delta)[2],
                                                 const BackwardParams& p, int bh, int row_a) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row_a + 8 * r;
    lse_log2[r] = i < p.T ? p.lse[size_t(bh) * p.T + i] * kLog2e : 0.f;
    delta[r] = i < p.T ? p.delta[size_t(bh) * p.T + i] : 0.f;
  }
}

// A query block's epilogue for this thread's rows row_a and row_a + 8: dQ
// scaled by tau, then finish_query_row, and the warp's bias part sums when
// p.bias_partials is set. dq_at(db, i) is element i of the
// thread's n8 block db in the accumulator layout (i = 2 r + e: row r, column
// 2 quad + e), however the kernel stores its accumulators.
template <int kDBlocks, bool kSpan, typename DqAt>
__device__ __forceinline__ void finish_query_rows(const BackwardParams& p, DqAt dq_at, int row_a,
                                                  int b, int h, const __nv_bfloat16* q_base,
                                                  int quad) {
  WarpColumnSums<kDBlocks> bias;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float g[2 * kDBlocks];
#pragma unroll
    for (int db = 0; db < kDBlocks; ++db)
#pragma unroll
      for (int e = 0; e < 2; ++e) g[2 * db + e] = dq_at(db, 2 * r + e) * p.scale;
    finish_query_row<kDBlocks, kSpan>(p, g, row_a + 8 * r, b, h, q_base, quad);
    if (p.bias_partials) bias.add(g, row_a + 8 * r < p.T);  // g projected
  }
  if (p.bias_partials) bias.store(p, b, h * p.head_dim, row_a);
}

// attention_backward_sm90.cu: the wgmma (sm_90a) backward (dQ, dK, dV from
// the same inputs, delta already formed; kSpan / kQbar as the sm_80 kernel).
// Whether it can run here: a compute capability 9.0 GPU, a build that carries
// its sm_90a code, and a head dim that pads to 64 or 128.
// `wg2`: blocks of two warpgroups (128 keys or 128 queries) sharing the
// tiles they walk, instead of one.
bool sm90_backward_supported(const CudaContext& ctx, int head_dim);
void launch_backward_sm90(CudaContext& ctx, const BackwardParams& p, int B, bool span, bool qbar,
                          bool wg2);

// attention_backward_sm90_ws.cu: the same two-pass algorithm and bits as
// launch_backward_sm90's one-warpgroup kernel, warp-specialised: a TMA
// producer warp a consumer warpgroup, three consumers a block at D 64 and
// two at D 128 (one with qbar), one block a multiprocessor walking key and
// query blocks (global heads first). short_walks (ws_backward_short_walks)
// double-buffers each consumer's fixed pair at D 64 without qbar, for items
// that walk few tiles; ignored elsewhere. dynamic (the default): each
// consumer takes the next item no consumer has taken yet from a
// counter (p.item_counter), instead of every (consumers)-th item; band
// runs always do. Either way the same bits.
// With p.band_run > 0 (ws_band: D 64 without qbar, ws_band_applies) the
// local heads' work is band runs instead of key and query blocks: one pass
// over p.band_run key blocks of a head, dQ summed in key-block order in
// the consumer's p.band_dq slots (deterministic, independent of the run
// length; not base's bits for local heads' dQ, base's for everything else).
void launch_backward_sm90_ws(CudaContext& ctx, const BackwardParams& p, int B, bool span,
                             bool qbar, bool short_walks, bool dynamic);
// Floats of p.band_dq the ws kernel needs for band_slots slots a consumer
// (one block per multiprocessor at most, three consumers at D 64).
size_t ws_band_dq_floats(const CudaContext& ctx, int band_slots);

// attention_backward_sm90_one_pass.cu: the one-pass variant (key blocks
// only, dQ summed by float atomics into dq_accum, then written to dqkv; not
// bit-reproducible). dq_accum holds one_pass_dq_floats(...) floats (any
// contents: zeroed on the stream first).
size_t one_pass_dq_floats(int B, int T, int n_head, int head_dim);
void launch_backward_sm90_one_pass(CudaContext& ctx, const BackwardParams& p, int B, bool span,
                                   bool qbar, float* dq_accum);
// Its host side, shared with one_pass_wg2: zeroes dq_accum, runs `kernel`
// (one block of `block_threads` per keys_per_block keys of each batch row
// and head, smem_bytes of dynamic shared memory), then forms the dQ rows of
// dqkv from the sums (scaled, projected with span on q).
using OnePassKernel = void (*)(BackwardParams, float*);
void run_one_pass(CudaContext& ctx, const BackwardParams& p, int B, bool span, float* dq_accum,
                  OnePassKernel kernel, int block_threads, int keys_per_block, size_t smem_bytes);
// attention_backward_sm90_one_pass_wg2.cu: one_pass with two warpgroups (128
// keys) a block and one dQ product over both, so one float atomic per dQ
// element per 128 keys instead of per 64. The same dq_accum contract.
void launch_backward_sm90_one_pass_wg2(CudaContext& ctx, const BackwardParams& p, int B,
                                       bool span, bool qbar, float* dq_accum);
// attention_backward_sm90_ws_one_pass.cu: one_pass_wg2's algorithm
// warp-specialised (a TMA producer warp, two consumer warpgroups of 64 keys,
// persistent blocks; FlashAttention-3's backward), dQ summed by
// red.global.add.v4 into dq_accum in a layout of its own, then written to
// dqkv; not bit-reproducible, no qbar (the caller runs one_pass_wg2 then).
// `ordered` (ws_one_pass_ordered): each query tile's slices added by the
// key blocks in ascending order, each waiting for its turn, so the sums are
// bit-reproducible (no qbar either: the caller runs ws then). dq_accum
// holds ws_one_pass_dq_floats(..., ordered) floats (any contents: zeroed
// on the stream first).
size_t ws_one_pass_dq_floats(int B, int T, int n_head, int head_dim, bool ordered);
// attention_key_direction_sm90.cu: the span's cross basis on k in a pass of
// its own, before the backward (lsgpt's reconstruction of arXiv:2512.13033,
// docs/SPAN.md): for every key row j of every head, qbar_j = sum_i P_ij q_i
// and colsum_j = sum_i P_ij over the queries that see it (P from qkv and
// the forward's lse, p.lse; local heads in their band), and u_j = qbar_j /
// colsum_j into `direction` ([B, T, C] bf16, head h at columns h D; 0 where
// colsum_j <= 1e-30, as the kQbar epilogue). Two of a key block's products
// (S^T, P^T Q) instead of qbar's D-wide accumulator beside dK and dV, which
// at D 128 leaves one ws consumer a block (or 16-query tiles in base).
// Needs sm90_backward_supported.
void launch_key_direction_sm90(CudaContext& ctx, const BackwardParams& p, int B,
                               __nv_bfloat16* direction);
void launch_backward_sm90_ws_one_pass(CudaContext& ctx, const BackwardParams& p, int B,
                                      bool span, bool ordered, float* dq_accum);

// Which Hopper backward runs: LSGPT_ATTENTION_SM90_BACKWARD = auto (also
// unset or empty: choose_sm90_backward picks by shape), base (one warpgroup
// a block), wg2, ws, one_pass, one_pass_wg2, ws_band (ws with band runs;
// ws where they do not apply), ws_one_pass (one_pass_wg2 with qbar) or
// ws_one_pass_ordered (ws with qbar) to force one; any other value is an
// error.
// nullopt means auto. Read at every call (defined in attention_backward.cu)
// so one binary can time them all.
std::optional<Sm90BackwardVariant> sm90_backward_override();

// Whether the backward must be bit-reproducible: LSGPT_ATTENTION_DETERMINISTIC
// = 1 (also unset or empty; the default) or 0, which lets the shape-based
// choice take a kernel that sums dQ by float atomics where it is faster
// (choose_sm90_backward); anything else is an error. Read at every call.
bool attention_deterministic();

// The order in which the two-pass Hopper backward (base, wg2) starts its
// blocks: LSGPT_ATTENTION_SM90_BACKWARD_ORDER = auto (also unset or empty:
// global_first, measured faster on every LS shape and even on MHSA),
// batch_major (the grid's old order, kept for comparison), or global_first
// (every global head's blocks before any local head's); anything else is an
// error. True for auto and global_first.
bool sm90_backward_global_first();

// ws_band's run length in key blocks: LSGPT_ATTENTION_SM90_BAND_RUN = a
// whole number from 1 to 1048576, digits only (for tuning and tests; the
// bits do not depend on it), or unset or empty: nullopt, ws_band_run's
// choice. Anything else is an error.
std::optional<int> sm90_band_run_override();

// ws's head groups: LSGPT_ATTENTION_SM90_HEAD_GROUP = a whole number from 0
// (one group) to 1048576, digits only (for tuning and tests; the bits do not
// depend on it), or unset or empty: nullopt, ws_backward_head_group's
// choice. Anything else is an error. Band runs (ws_band) ignore it.
std::optional<int> sm90_head_group_override();

// ws_one_pass's and ws_one_pass_ordered's persistent grid at most this many
// blocks (never more than one a multiprocessor):
// LSGPT_ATTENTION_SM90_ONE_PASS_BLOCKS = a whole number from 1 to 1048576,
// digits only (for tests: the ordered form's bits must not depend on it),
// or unset or empty: nullopt. Anything else is an error.
std::optional<int> sm90_one_pass_blocks_override();

// Whether the span's cross basis on k runs as launch_key_direction_sm90's
// pass before the backward: LSGPT_ATTENTION_SM90_KEY_DIRECTION = auto (also
// unset or empty: nullopt, key_direction_pass_pays's choice), pass, or
// fused (the kernels accumulate qbar themselves, kQbar). Anything else is
// an error. Read at every call.
std::optional<bool> sm90_key_direction_pass_override();

// How ws and ws_one_pass hand out their items: LSGPT_ATTENTION_SM90_WS_SCHEDULE
// = auto (also unset or empty) or dynamic: from a counter, the default;
// static, kept for comparison: ws every (consumers)-th item, ws_one_pass
// snake rounds (ws_one_pass_ordered takes the counter all the same: its
// waits need it). Anything else is an error. True for static.
bool sm90_ws_striding_forced();

}  // namespace lsgpt::cuda::attn
