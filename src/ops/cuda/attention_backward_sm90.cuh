// Device code shared by the Hopper backwards (attention_backward_sm90.cu:
// base and wg2, attention_backward_sm90_one_pass.cu,
// attention_backward_sm90_one_pass_wg2.cu): the paired S / dP
// products, a key block's softmax step, its dV / dK (/ qbar) products and its
// row epilogue. Keeping them in one place keeps the variants' numbers equal
// where their algorithms are (the same products in the same order).
// Layouts are wgmma.cuh's (accumulator = A register layout, 128-byte swizzle).
#pragma once

#include <cstdint>

#include "ops/cuda/attention_backward.cuh"
#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/wgmma.cuh"

namespace lsgpt::cuda::attn {

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

// s = A_s B_s^T and dp = A_dp B_dp^T for one tile pair: m64 x kN, reduced
// over D, every operand K-major in shared memory (A tiles kARows rows, B tiles
// kN rows); both overwrite their accumulators. Key blocks pass K, Q and V, dO
// (S^T, dP^T); query blocks Q, K and dO, V (S, dP). One commit group for both
// so that the second product's issue overlaps the first's execution.
template <int D, int kARows, int kN>
__device__ __forceinline__ void score_pair(float (&s)[kN / 2], float (&dp)[kN / 2], uint32_t a_s,
                                           uint32_t b_s, uint32_t a_dp, uint32_t b_dp) {
  zero(s), zero(dp);
  fence_operands(s), fence_operands(dp);
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
// P where the query is past T or does not see the key; kQbar adds P to the
// per-key-row column sums.
template <int kQ, bool kMasked, bool kQbar>
__device__ __forceinline__ void key_softmax(float (&s)[kQ / 2], float (&dp)[kQ / 2],
                                            float (&colsum)[2], const float* lse_tile,
                                            const float* delta_tile, float scale_log2, int i0,
                                            int T, HeadMask mask, int key_row, int quad) {
#pragma unroll
  for (int nb = 0; nb < kQ / 8; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int qi = nb * 8 + quad * 2 + (e & 1);
      float prob = exp2f(s[4 * nb + e] * scale_log2 - lse_tile[qi]);
      if (kMasked && !(i0 + qi < T && mask.visible(i0 + qi, key_row + 8 * (e >> 1)))) prob = 0.f;
      if constexpr (kQbar) colsum[e >> 1] += prob;
      s[4 * nb + e] = prob;
      dp[4 * nb + e] = prob * (dp[4 * nb + e] - delta_tile[qi]);
    }
}

// dV += P^T dO, dK += dS^T Q and (kQbar) qbar += P^T Q: the k index is the
// tile's queries, P^T and dS^T come from registers, dO and Q are read N-major.
template <int D, int kQ, bool kQbar>
__device__ __forceinline__ void key_gradients(float (&dv)[D / 2], float (&dk)[D / 2],
                                              float (&qbar)[kQbar ? D / 2 : 1],
                                              const uint32_t (&a_p)[kQ / 16][4],
                                              const uint32_t (&a_ds)[kQ / 16][4], uint32_t q_addr,
                                              uint32_t do_addr) {
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
  wgmma_wait<0>();
  fence_operands(dv), fence_operands(dk);
  if constexpr (kQbar) fence_operands(qbar);
}

// A key block's epilogue for this thread's rows key_row and key_row + 8:
// dK scaled by tau, then finish_key_row (span projections, stores below T).
template <int D, bool kSpan, bool kQbar>
__device__ __forceinline__ void finish_key_rows(const BackwardParams& p, const float (&dk)[D / 2],
                                                const float (&dv)[D / 2],
                                                const float (&qbar)[kQbar ? D / 2 : 1],
                                                const float (&colsum)[2], int key_row,
                                                const __nv_bfloat16* k_base,
                                                const __nv_bfloat16* v_base, int quad) {
  constexpr int kDBlocks = D / 8;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float gk[2 * kDBlocks], gv[2 * kDBlocks], qbar_row[2 * kDBlocks] = {};
#pragma unroll
    for (int db = 0; db < kDBlocks; ++db)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        gk[2 * db + e] = dk[4 * db + 2 * r + e] * p.scale;
        gv[2 * db + e] = dv[4 * db + 2 * r + e];
        if constexpr (kQbar) qbar_row[2 * db + e] = qbar[4 * db + 2 * r + e];
      }
    finish_key_row<kDBlocks, kSpan, kQbar>(p, gk, gv, qbar_row, colsum[r], key_row + 8 * r,
                                           k_base, v_base, quad);
  }
}

#endif  // LSGPT_SM90A_DEVICE

}  // namespace lsgpt::cuda::attn
