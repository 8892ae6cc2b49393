// Device code shared by the Hopper backwards (attention_backward_sm90.cu:
// base and wg2, attention_backward_sm90_one_pass.cu,
// attention_backward_sm90_one_pass_wg2.cu): a head's input rows, the query
// tiles a key block walks and their double-buffered stages, the paired S / dP
// products, a key block's softmax step, its dV / dK (/ qbar) products and its
// row epilogue; and the host's choice of kernel instance. Keeping them in
// one place keeps the variants' numbers equal where their algorithms are (the
// same products in the same order).
// Layouts are wgmma.cuh's (accumulator = A register layout, 128-byte swizzle).
#pragma once

#include <cstdint>
#include <type_traits>

#include "ops/cuda/attention_backward.cuh"
#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/wgmma.cuh"

namespace lsgpt::cuda::attn {

// Keys per tile in query blocks (every Hopper backward that has them).
constexpr int kQueryBlockKeyTile = 64;
// Queries per tile in key blocks (the n of S^T): 16 when the three D-wide
// accumulators dK, dV and qbar must stay in registers beside S^T and dP^T.
template <int D, bool kQbar>
constexpr int kKeyBlockQueryTile = D == 128 && kQbar ? 16 : 64;

// The one-pass kernels with two warpgroups of 64 keys (one_pass_wg2,
// ws_one_pass) form a tile's dQ^T = K^T dS^T over both warpgroups' keys as
// one product, each warpgroup a slice: at D 128 the 64-column panel wg of D
// for the tile's kQ queries, at D 64 all of D for half the queries (m64 x
// kDqSliceQueries; see attention_backward_sm90_one_pass_wg2.cu).
template <int D, int kQ>
constexpr int kDqSliceQueries = D == 128 ? kQ : kQ / 2;

#if LSGPT_SM90A_DEVICE

// This thread's warpgroup, read through a shuffle so that ptxas sees a
// warp-uniform value (as CUTLASS's canonical_warp_group_idx): the branches
// on a warpgroup's band around wgmma then do not count as divergent.
__device__ __forceinline__ int warpgroup_index() {
  return __shfl_sync(0xffffffffu, int(threadIdx.x) / kThreads, 0);
}

template <int N>
__device__ __forceinline__ void zero(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) d[i] = 0.f;
}

// Where one (batch row, head) starts in each input: its Q, K, V columns of
// qkv (rows qkv_row elements apart), its dO columns (rows C apart), its lse
// and delta (one float a query). bh = b * n_head + h; b and h also name the
// bias part sums a key block writes.
struct HeadRows {
  int b, h;
  size_t qkv_row;
  const __nv_bfloat16 *q_base, *k_base, *v_base, *do_base;
  const float *lse_row, *delta_row;
};

__device__ __forceinline__ HeadRows head_rows(const BackwardParams& p, int bh, int b, int h) {
  HeadRows r;
  r.b = b, r.h = h;
  r.qkv_row = size_t(3) * p.C;
  r.q_base = p.qkv + size_t(b) * p.T * r.qkv_row + h * p.head_dim;
  r.k_base = r.q_base + p.C;
  r.v_base = r.q_base + 2 * p.C;
  r.do_base = p.dout + size_t(b) * p.T * p.C + h * p.head_dim;
  r.lse_row = p.lse + size_t(bh) * p.T;
  r.delta_row = p.delta + size_t(bh) * p.T;
  return r;
}

// The tiles of kQ queries that see keys [k0, k0 + n_keys), first and last
// (inclusive): from the keys' own tile up to T on global heads, only the
// band [k0, k0 + n_keys - 1 + window) on local heads.
struct QueryTileRange {
  int first, last;
};

template <int kQ>
__device__ __forceinline__ QueryTileRange query_tiles_seeing(const HeadMask& mask, int k0,
                                                             int n_keys, int T) {
  const int query_hi = mask.local ? min(T, k0 + n_keys - 1 + mask.window) : T;  // exclusive
  return {k0 / kQ, (query_hi - 1) / kQ};
}

// A warpgroup's K and V rows [k0, k0 + kKeys) into its swizzled tiles (zero
// past T), copied by its kThreads threads (`thread` is this one's index).
template <int kKeys, int D>
__device__ __forceinline__ void load_key_tiles(__nv_bfloat16* k_tile, __nv_bfloat16* v_tile,
                                               const BackwardParams& p, const HeadRows& rows,
                                               int k0, int thread) {
  load_tile_sw128<kKeys, D>(k_tile, rows.k_base, rows.qkv_row, k0, p.T, p.head_dim, thread);
  load_tile_sw128<kKeys, D>(v_tile, rows.v_base, rows.qkv_row, k0, p.T, p.head_dim, thread);
}

// One stage of a key block's query side as the products read it: the Q
// and dO tiles' shared addresses, the lse (log2 units) and delta of its
// queries.
struct QueryTile {
  uint32_t q_addr, do_addr;
  const float *lse, *delta;
};

// A walked query tile's lse (log2 units) and delta rows, one producer
// warp's lane's share (rows lane, lane + 32, ...; zero past T). The warp
// reads them into registers before it waits for the ring stage, where its
// registers allow (not ws's producers of three consumers), and stores
// them once the stage is free: read after the wait, the loads' latency sat
// between a stage's release and its refill, with the tile's TMA copies
// issued only behind them (Nsight Compute, ws_one_pass, MHSA D 128 T 16k,
// H200, 2026-12-02: the consumers waited for a full stage 13% of their
// time, the producer stalled on these loads).
template <int kQ>
struct QueryTileStats {
  static constexpr int kPerLane = (kQ + kWarpSize - 1) / kWarpSize;
  float lse[kPerLane], delta[kPerLane];

  __device__ __forceinline__ void load(const BackwardParams& p, size_t stats_row, int i0,
                                       int lane) {
#pragma unroll
    for (int r = 0; r < kPerLane; ++r) {
      const int i = lane + r * kWarpSize;
      const bool valid = i < kQ && i0 + i < p.T;
      lse[r] = valid ? p.lse[stats_row + i0 + i] * kLog2e : 0.f;
      delta[r] = valid ? p.delta[stats_row + i0 + i] : 0.f;
    }
  }
  __device__ __forceinline__ void store(float* lse_dst, float* delta_dst, int lane) const {
#pragma unroll
    for (int r = 0; r < kPerLane; ++r) {
      const int i = lane + r * kWarpSize;
      if (i < kQ) lse_dst[i] = lse[r], delta_dst[i] = delta[r];
    }
  }
};

// A key block's double-buffered query side in shared memory, from `smem`:
// two stages each of the Q and dO tiles (kQ x D, swizzled), then of lse (log2
// units) and delta (kQ floats each).
template <int kQ, int D, int kLoaders>
struct QueryStages {
  static constexpr int kTileElems = sw128_tile_bytes<kQ, D>() / 2;

  __nv_bfloat16 *q_tiles, *do_tiles;
  float *lse_tiles, *delta_tiles;

  __device__ __forceinline__ explicit QueryStages(unsigned char* smem)
      : q_tiles(reinterpret_cast<__nv_bfloat16*>(smem)),
        do_tiles(q_tiles + 2 * kTileElems),
        lse_tiles(reinterpret_cast<float*>(do_tiles + 2 * kTileElems)),
        delta_tiles(lse_tiles + 2 * kQ) {}

  // Starts the copy of query tile `tile` into `stage`, shared by the
  // block's kLoaders threads: Q and dO by cp.async, lse and delta by plain
  // stores; all zero past T.
  __device__ __forceinline__ void load(const BackwardParams& p, const HeadRows& rows, int tile,
                                       int stage) const {
    const int i0 = tile * kQ;
    load_tile_sw128<kQ, D, kLoaders>(q_tiles + stage * kTileElems, rows.q_base, rows.qkv_row, i0,
                                     p.T, p.head_dim, threadIdx.x);
    load_tile_sw128<kQ, D, kLoaders>(do_tiles + stage * kTileElems, rows.do_base, p.C, i0, p.T,
                                     p.head_dim, threadIdx.x);
    for (int i = threadIdx.x; i < kQ; i += kLoaders) {
      const bool valid = i0 + i < p.T;
      lse_tiles[stage * kQ + i] = valid ? rows.lse_row[i0 + i] * kLog2e : 0.f;
      delta_tiles[stage * kQ + i] = valid ? rows.delta_row[i0 + i] : 0.f;
    }
  }

  __device__ __forceinline__ QueryTile tile(int stage) const {
    return {smem_address(q_tiles + stage * kTileElems), smem_address(do_tiles + stage * kTileElems),
            lse_tiles + stage * kQ, delta_tiles + stage * kQ};
  }
};

// s = A_s B_s^T and dp = A_dp B_dp^T for one tile pair: m64 x kN, reduced
// over D, every operand K-major in shared memory (A tiles kARows rows, B tiles
// kN rows); both overwrite their accumulators. Key blocks pass K, Q and V, dO
// (S^T, dP^T); query blocks Q, K and dO, V (S, dP). One commit group for both
// so that the second product's issue overlaps the first's execution. Not
// cleared first (discard_operands): the first k-step's scale-d 0 ignores
// what they held.
template <int D, int kARows, int kN>
__device__ __forceinline__ void score_pair(float (&s)[kN / 2], float (&dp)[kN / 2], uint32_t a_s,
                                           uint32_t b_s, uint32_t a_dp, uint32_t b_dp) {
  discard_operands(s), discard_operands(dp);
  wgmma_fence();
#pragma unroll
  for (int kc = 0; kc < D / 16; ++kc) {
    wgmma_ss<kN>(s, k_major_descriptor<kARows>(a_s, kc), k_major_descriptor<kN>(b_s, kc), kc > 0);
    wgmma_ss<kN>(dp, k_major_descriptor<kARows>(a_dp, kc), k_major_descriptor<kN>(b_dp, kc),
                 kc > 0);
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_operands(s), fence_operands(dp);
}

// A key block's softmax step, in place: s = S^T becomes P^T (from the saved
// lse, in log2 units) and dp = dP^T becomes dS^T = P^T o (dP^T - delta).
// Element 4 nb + e: key row key_row + 8 (e >> 1), query column
// nb * 8 + 2 quad + (e & 1) of the tile starting at query i0. kMasked zeroes
// P where the query is past T or does not see the key: with kIntervals by
// each row's visible columns as one interval (attention_mask_columns.h),
// else by HeadMask::visible element by element (the ws band-run kernels:
// with the intervals ptxas spilled 952 bytes in their span-off instance,
// against 56 without).
// kQbar adds P to the per-key-row column sums. Without kDs only s becomes
// P^T (dp and delta_tile are not read: the key-direction pass's use).
template <int kQ, bool kMasked, bool kQbar, bool kIntervals = true, bool kDs = true>
__device__ __forceinline__ void key_softmax(float (&s)[kQ / 2], float (&dp)[kQ / 2],
                                            float (&colsum)[2], const float* lse_tile,
                                            const float* delta_tile, float scale_log2, int i0,
                                            int T, HeadMask mask, int key_row, int quad) {
  VisibleColumns visible[2] = {};
  if constexpr (kMasked && kIntervals)
#pragma unroll
    for (int r = 0; r < 2; ++r) visible[r] = mask.queries_seeing(key_row + 8 * r, T, i0 + 2 * quad);
#pragma unroll
  for (int nb = 0; nb < kQ / 8; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int qi = nb * 8 + quad * 2 + (e & 1);
      float prob = exp2_ftz(s[4 * nb + e] * scale_log2 - lse_tile[qi]);
      if constexpr (kMasked && kIntervals) {
        if (!visible[e >> 1].has(nb * 8 + (e & 1))) prob = 0.f;
      } else if constexpr (kMasked) {
        if (!(i0 + qi < T && mask.visible(i0 + qi, key_row + 8 * (e >> 1)))) prob = 0.f;
      }
      if constexpr (kQbar) colsum[e >> 1] += prob;
      s[4 * nb + e] = prob;
      if constexpr (kDs) dp[4 * nb + e] = prob * (dp[4 * nb + e] - delta_tile[qi]);
    }
}

// dV += P^T dO, dK += dS^T Q and (kQbar) qbar += P^T Q, issued as one
// commit group and not waited for (a band run issues its dQ product behind
// it): the k index is the tile's queries, P^T and dS^T come from
// registers, dO and Q are read N-major.
template <int D, int kQ, bool kQbar>
__device__ __forceinline__ void issue_key_gradients(float (&dv)[D / 2], float (&dk)[D / 2],
                                                    float (&qbar)[kQbar ? D / 2 : 1],
                                                    const uint32_t (&a_p)[kQ / 16][4],
                                                    const uint32_t (&a_ds)[kQ / 16][4],
                                                    uint32_t q_addr, uint32_t do_addr) {
  fence_operands(dv), fence_operands(dk);
  if constexpr (kQbar) fence_operands(qbar);
  wgmma_fence();
#pragma unroll
  for (int kc = 0; kc < kQ / 16; ++kc) {
    wgmma_rs<D>(dv, a_p[kc], n_major_descriptor<kQ>(do_addr, kc));
    wgmma_rs<D>(dk, a_ds[kc], n_major_descriptor<kQ>(q_addr, kc));
    if constexpr (kQbar) wgmma_rs<D>(qbar, a_p[kc], n_major_descriptor<kQ>(q_addr, kc));
  }
  wgmma_commit();
}

// issue_key_gradients, then waited for.
template <int D, int kQ, bool kQbar>
__device__ __forceinline__ void key_gradients(float (&dv)[D / 2], float (&dk)[D / 2],
                                              float (&qbar)[kQbar ? D / 2 : 1],
                                              const uint32_t (&a_p)[kQ / 16][4],
                                              const uint32_t (&a_ds)[kQ / 16][4], uint32_t q_addr,
                                              uint32_t do_addr) {
  issue_key_gradients<D, kQ, kQbar>(dv, dk, qbar, a_p, a_ds, q_addr, do_addr);
  wgmma_wait<0>();
  fence_operands(dv), fence_operands(dk);
  if constexpr (kQbar) fence_operands(qbar);
}

// A key block's step on the query tile at i0 up to its dV / dK products: S^T
// and dP^T of its kKeys keys (K, V tiles at k_addr, v_addr), the softmax step
// (kMasked, kQbar, kIntervals as key_softmax), and P^T, dS^T as bf16 A fragments.
template <int D, int kKeys, int kQ, bool kMasked, bool kQbar, bool kIntervals = true>
__device__ __forceinline__ void key_tile_fragments(uint32_t (&a_p)[kQ / 16][4],
                                                   uint32_t (&a_ds)[kQ / 16][4], float (&colsum)[2],
                                                   uint32_t k_addr, uint32_t v_addr,
                                                   const QueryTile& tile, const BackwardParams& p,
                                                   int i0, HeadMask mask, int key_row, int quad) {
  float s[kQ / 2], dp[kQ / 2];
  score_pair<D, kKeys, kQ>(s, dp, k_addr, tile.q_addr, v_addr, tile.do_addr);
  key_softmax<kQ, kMasked, kQbar, kIntervals>(s, dp, colsum, tile.lse, tile.delta, p.scale_log2,
                                              i0, p.T, mask, key_row, quad);
  a_fragments<kQ>(a_p, s);
  a_fragments<kQ>(a_ds, dp);
}

// A key block's whole step on the query tile at i0 (its kKeys keys from
// k0): key_tile_fragments then key_gradients, in the masked instantiation
// for tiles the mask cuts or that run past T, branch-free for the rest
// (kIntervals as key_softmax).
template <int D, int kKeys, int kQ, bool kQbar, bool kIntervals = true>
__device__ __forceinline__ void key_tile_step(float (&dv)[D / 2], float (&dk)[D / 2],
                                              float (&qbar)[kQbar ? D / 2 : 1],
                                              float (&colsum)[2], uint32_t k_addr,
                                              uint32_t v_addr, const QueryTile& tile,
                                              const BackwardParams& p, int i0, int k0,
                                              HeadMask mask, int key_row, int quad) {
  auto step = [&](auto masked) {
    uint32_t a_p[kQ / 16][4], a_ds[kQ / 16][4];
    key_tile_fragments<D, kKeys, kQ, decltype(masked)::value, kQbar, kIntervals>(
        a_p, a_ds, colsum, k_addr, v_addr, tile, p, i0, mask, key_row, quad);
    key_gradients<D, kQ, kQbar>(dv, dk, qbar, a_p, a_ds, tile.q_addr, tile.do_addr);
  };
  if (mask.tile_needs_mask(i0, kQ, k0, kKeys) || i0 + kQ > p.T)
    step(std::true_type{});
  else
    step(std::false_type{});
}

// The one-pass variants' step on the query tile at i0: key_tile_fragments,
// then dS^T stored transposed into the dS tile at ds_addr (the tile's queries
// as rows, for the dQ product), then the dV / dK (/ qbar) products. The
// caller makes sure the previous reader of the dS tile is done.
template <int D, int kKeys, int kQ, bool kMasked, bool kQbar>
__device__ __forceinline__ void one_pass_key_step(float (&dv)[D / 2], float (&dk)[D / 2],
                                                  float (&qbar)[kQbar ? D / 2 : 1],
                                                  float (&colsum)[2], uint32_t k_addr,
                                                  uint32_t v_addr, uint32_t ds_addr,
                                                  const QueryTile& tile, const BackwardParams& p,
                                                  int i0, HeadMask mask, int key_row, int quad) {
  uint32_t a_p[kQ / 16][4], a_ds[kQ / 16][4];
  key_tile_fragments<D, kKeys, kQ, kMasked, kQbar>(a_p, a_ds, colsum, k_addr, v_addr, tile, p, i0,
                                                   mask, key_row, quad);
  store_transposed_sw128<kQ>(ds_addr, a_ds);
  key_gradients<D, kQ, kQbar>(dv, dk, qbar, a_p, a_ds, tile.q_addr, tile.do_addr);
}

// x, through an empty asm the compiler must assume changes it (and may not
// move out of a loop): shared-memory addresses made from it are rebuilt in
// each iteration instead of held, with their wgmma descriptors, in
// registers the two-warpgroup one-pass kernels at D 128 cannot spare.
__device__ __forceinline__ uint32_t opaque(uint32_t x) {
  asm volatile("" : "+r"(x));
  return x;
}

// Warpgroup wg's slice: K of warpgroup j at key_tiles + 2 j key tiles (its
// K then V), read M-major; its dS^T tile (kQ queries x 64 keys) at
// ds_tiles + j dS tiles, K-major. Issues the wgmma only: the first k-step
// overwrites acc, the caller fences before and commits and waits after.
template <int D, int kQ>
__device__ __forceinline__ void issue_dq_slice(float (&acc)[kDqSliceQueries<D, kQ> / 2],
                                               uint32_t key_tiles, uint32_t ds_tiles, int wg) {
  constexpr int kN = kDqSliceQueries<D, kQ>, kKeys = 64;
  static_assert(kN % 16 == 0, "the n of the slice's wgmma: 16, 32 or 64");
  constexpr int kKeyBytes = sw128_tile_bytes<kKeys, D>(), kDsBytes = sw128_tile_bytes<kQ, kKeys>();
  const int d0 = D == 128 ? wg * kPanelCols : 0;  // the slice's first column of D
  const int q0 = D == 128 ? 0 : wg * kN;          // and its first query of the tile
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const uint32_t k_panel =
        key_tiles + j * 2 * kKeyBytes + (d0 / kPanelCols) * kKeys * kSwizzleRowBytes;
    const uint32_t ds_rows = ds_tiles + j * kDsBytes + q0 * kSwizzleRowBytes;
#pragma unroll
    for (int kc = 0; kc < kKeys / 16; ++kc)
      wgmma_ss<kN, Major::MN, Major::K>(acc, n_major_descriptor<kKeys>(k_panel, kc),
                                        k_major_descriptor<kQ>(ds_rows, kc), j > 0 || kc > 0);
  }
}

// dQ += dS K: the k index is the tile's keys, dS from registers, K read N-major.
template <int D>
__device__ __forceinline__ void query_gradient(float (&dq)[D / 2],
                                               const uint32_t (&a_ds)[kQueryBlockKeyTile / 16][4],
                                               uint32_t k_addr) {
  fence_operands(dq);
  wgmma_fence();
#pragma unroll
  for (int kc = 0; kc < kQueryBlockKeyTile / 16; ++kc)
    wgmma_rs<D>(dq, a_ds[kc], n_major_descriptor<kQueryBlockKeyTile>(k_addr, kc));
  wgmma_commit();
  wgmma_wait<0>();
  fence_operands(dq);
}

// A query block's step on the key tile at j0 (K, V tiles at k_addr, v_addr;
// its 64 queries from q0, Q and dO at q_addr, do_addr): S = Q K^T and
// dP = dO V^T, dS = P o (dP - delta) from the saved lse (log2 units), then
// dQ += dS K. This thread's rows are row_a and row_a + 8 (lse_log2, delta).
// The masked instantiation, zeroing P where the mask hides a key, for tiles
// the mask cuts; branch-free for the rest. Query rows past T need no mask:
// their dO rows are zero, so dS is too.
template <int D>
__device__ __forceinline__ void query_tile_step(float (&dq)[D / 2], uint32_t q_addr,
                                                uint32_t k_addr, uint32_t do_addr,
                                                uint32_t v_addr, const BackwardParams& p, int q0,
                                                int j0, const float (&lse_log2)[2],
                                                const float (&delta)[2], HeadMask mask, int row_a,
                                                int quad) {
  constexpr int kKeys = kQueryBlockKeyTile;
  auto step = [&](auto masked) {
    constexpr bool kMasked = decltype(masked)::value;
    float s[kKeys / 2], dp[kKeys / 2];
    score_pair<D, 64, kKeys>(s, dp, q_addr, k_addr, do_addr, v_addr);
    VisibleColumns visible[2] = {};
    if constexpr (kMasked)
#pragma unroll
      for (int r = 0; r < 2; ++r) visible[r] = mask.keys_seen_by(row_a + 8 * r, j0 + 2 * quad);
    // Element 4 nb + e: query row row_a + 8 (e >> 1), key nb * 8 + 2 quad + (e & 1).
#pragma unroll
    for (int nb = 0; nb < kKeys / 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        float prob = exp2_ftz(s[4 * nb + e] * p.scale_log2 - lse_log2[r]);
        if (kMasked && !visible[r].has(nb * 8 + (e & 1))) prob = 0.f;
        dp[4 * nb + e] = prob * (dp[4 * nb + e] - delta[r]);
      }
    uint32_t a_ds[kKeys / 16][4];
    a_fragments<kKeys>(a_ds, dp);
    query_gradient<D>(dq, a_ds, k_addr);
  };
  if (mask.tile_needs_mask(q0, 64, j0, kKeys))
    step(std::true_type{});
  else
    step(std::false_type{});
}

// A key block's epilogue (finish_key_rows) from wgmma accumulators
// (element 4 db + i) for this thread's rows key_row and key_row + 8.
template <int D, bool kSpan, bool kQbar>
__device__ __forceinline__ void finish_wgmma_key_rows(const BackwardParams& p,
                                                      const float (&dk)[D / 2],
                                                      const float (&dv)[D / 2],
                                                      const float (&qbar)[kQbar ? D / 2 : 1],
                                                      const float (&colsum)[2], int key_row,
                                                      const HeadRows& rows, int quad) {
  auto at = [](const auto& acc) { return [&acc](int db, int i) { return acc[4 * db + i]; }; };
  finish_key_rows<D / 8, kSpan, kQbar>(p, at(dk), at(dv), at(qbar), colsum, key_row, rows.b,
                                       rows.h, rows.k_base, rows.v_base, quad);
}

#endif  // LSGPT_SM90A_DEVICE

// Host: calls launch(d, span, qbar), as std::integral_constant arguments,
// for the kernel instance that serves p's head dim (padded to 64 or 128)
// and the span and qbar flags (qbar only with span, as the sm_80 kernel).
template <typename Launch>
void dispatch_backward(const BackwardParams& p, bool span, bool qbar, Launch&& launch) {
  auto with_flags = [&](auto d) {
    if (!span)
      launch(d, std::false_type{}, std::false_type{});
    else if (qbar)
      launch(d, std::true_type{}, std::true_type{});
    else
      launch(d, std::true_type{}, std::false_type{});
  };
  if (padded_head_dim(p.head_dim) == 64)
    with_flags(std::integral_constant<int, 64>{});
  else
    with_flags(std::integral_constant<int, 128>{});
}

}  // namespace lsgpt::cuda::attn
