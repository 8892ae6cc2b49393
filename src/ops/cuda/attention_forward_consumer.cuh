// One consumer warpgroup of the warp-specialised Hopper forward
// (attention_forward_sm90_ws.cu): 64 queries whose Q it copies once from
// its shared tile into A fragments (load_q), the online-softmax state and
// the O (and kbar) accumulators in registers, and the steps that advance
// them one 64-key tile at a time with wgmma. S = Q K^T takes Q from
// registers, so each of its m64n64k16 steps reads 2 KiB of shared memory
// (K's slice) instead of 4 (Q's and K's), which P V and the TMA copies
// share: the forward was 1.4-8.4% faster on the measured MHSA, LS 1/2 and
// LS 11/12 D 128 shapes (H200, 2026-12-01; docs/CUDA.md "Forward on
// Hopper: Q in registers"). Where the K/V tiles come from, and when
// a stage may be refilled, is the kernel's business; these steps only read
// the shared tiles they are given and return with every wgmma they issued
// complete, so the caller may release those tiles afterwards.
//
// The order is FlashAttention-3's intra-warpgroup overlap: first(t) for the
// warpgroup's first tile (S_t, wait, softmax: P_t kept as bf16 A
// fragments), overlapped(t) for each next one (issue S_t, issue
// O += P_{t-1} V_{t-1}, wgmma.wait_group 1, which leaves only the P V group
// pending, softmax of S_t while the tensor cores run P V, wait_group 0,
// rescale O), and last() one step after the last tile (its P V). (The
// serial order, S then wait then P V then wait, lost: docs/CUDA.md.)
// Each step issues and waits for its own groups in straight-line code:
// ptxas follows the wgmma pipeline per path, and waits that depend on which
// branch issued what make it serialize every wgmma (C7514/C7518 in
// -Xptxas -v).
//
// Accumulator layout (wgmma.cuh): warp w of the warpgroup holds rows
// 16 w + group and 16 w + group + 8; element 4 j + e is n8 block j, column
// 2 quad + (e & 1), the second row when e >= 2.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/attention_forward.cuh"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/wgmma.cuh"

namespace lsgpt::cuda::attn {

constexpr int kWgRows = kForwardBlockM;    // a warpgroup's queries: the m64, one max-logit partial
constexpr int kTileKeys = kForwardBlockN;  // keys per K/V tile

#if LSGPT_SM90A_DEVICE

template <int D, bool kKbar>
struct ConsumerWarpgroup {
  static constexpr int kKeyBlocks = kTileKeys / 8;  // n8 blocks of S

  // Where this warpgroup is: its first query, its thread's row_a (row_a + 8
  // is the other), its quad, its Q tile, its head's mask.
  int q0, row_a, quad;
  int warp_q0;  // this warp's first query, warp-uniform to ptxas (n8_block_needs_mask)
  uint32_t q_addr;
  HeadMask mask;
  float scale_log2;

  float o[D / 2];
  float kbar[kKbar ? D / 2 : 1];
  uint32_t q_frag[D / 16][4];           // Q's A fragments (load_q)
  float s[kTileKeys / 2];
  uint32_t p_frag[kTileKeys / 16][4];  // P of the last softmaxed tile, bf16 A fragments
  float row_max[2];                    // raw q.k units
  float row_sum[2];                    // this lane's share

  // `wg_thread`: this thread's index in the warpgroup.
  __device__ __forceinline__ ConsumerWarpgroup(int q0_, int wg_thread, uint32_t q_addr_,
                                               HeadMask mask_, float scale_log2_)
      : q0(q0_),
        row_a(q0_ + (wg_thread / kWarpSize) * 16 + (wg_thread % kWarpSize) / 4),
        quad(wg_thread % 4),
        warp_q0(q0_ + 16 * __shfl_sync(0xffffffffu, wg_thread / kWarpSize, 0)),
        q_addr(q_addr_),
        mask(mask_),
        scale_log2(scale_log2_) {
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
#pragma unroll
    for (int i = 0; i < (kKbar ? D / 2 : 1); ++i) kbar[i] = 0.f;
    row_max[0] = row_max[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.f;
  }

  // Q's fragments from the shared tile, once its copy is complete; the
  // tile is read no more after this.
  __device__ __forceinline__ void load_q(int wg_thread) {
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc)
      load_a_fragments_sw128<kWgRows>(q_frag[kc], q_addr, kc, wg_thread / kWarpSize,
                             wg_thread % kWarpSize);
  }

  __device__ __forceinline__ void first(int t, uint32_t k_addr) {
    issue_scores(k_addr);
    wgmma_wait<0>();
    softmax_tile(t, [] {});
  }
  // Tile t, with the previous tile's P V (v_prev, k_prev: its tiles).
  __device__ __forceinline__ void overlapped(int t, uint32_t k_addr, uint32_t v_prev,
                                             uint32_t k_prev) {
    issue_scores(k_addr);
    issue_pv(v_prev, k_prev);
    wgmma_wait<1>();  // S_t done (groups complete in order); P V still running
    softmax_tile(t, [] { wgmma_wait<0>(); });
  }
  __device__ __forceinline__ void last(uint32_t v_prev, uint32_t k_prev) {
    issue_pv(v_prev, k_prev);
    finish_pv();
  }

  // This thread's two rows: their softmax sums completed over the quad, 1 /
  // l into inv, lse written for rows below T; returns the largest logit
  // among those rows (-inf if none). inv of a row past T is whatever its
  // sum gives (inf where a consumer's rows are all past T and l is 0):
  // the TMA store clips those rows, or is not issued.
  __device__ __forceinline__ float finish_rows(const ForwardParams& p, int bh,
                                               float (&inv)[2]) const {
    float thread_max = -INFINITY;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float l = quad_row_sum(row_sum, r);
      inv[r] = row_normaliser(l);
      const int row = row_a + 8 * r;
      if (row >= p.T) continue;
      thread_max = fmaxf(thread_max, write_row_lse(p, bh, row, quad, row_max[r], l));
    }
    return thread_max;
  }

  // O times inv as bf16 into this warpgroup's swizzled kWgRows x D tile at
  // `tile` (shared memory), whose TMA store writes out: rows past T and
  // columns past the real head dim are written here and clipped there.
  __device__ __forceinline__ void stage_out(uint32_t tile, const float (&inv)[2], int warp,
                                            int lane) const {
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
      const uint32_t frag[4] = {pack_bf16x2(o[8 * kc + 0] * inv[0], o[8 * kc + 1] * inv[0]),
                                pack_bf16x2(o[8 * kc + 2] * inv[1], o[8 * kc + 3] * inv[1]),
                                pack_bf16x2(o[8 * kc + 4] * inv[0], o[8 * kc + 5] * inv[0]),
                                pack_bf16x2(o[8 * kc + 6] * inv[1], o[8 * kc + 7] * inv[1])};
      store_fragment_sw128<kWgRows>(tile, kc, frag, warp, lane);
    }
  }

  // kbar times inv (the span decomposition's P K, normalised as O) into its
  // rows below T, by plain stores.
  __device__ __forceinline__ void store_kbar(const ForwardParams& p, int b, int h,
                                             const float (&inv)[2]) const {
    if constexpr (kKbar) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = row_a + 8 * r;
        if (row >= p.T) continue;
        const size_t offset = (size_t(b) * p.T + row) * p.C + h * p.head_dim;
        store_acc_row<D>(p.kbar + offset, [this](int db, int e) { return kbar[4 * db + e]; }, r,
                         quad, inv[r], p.head_dim);
      }
    }
  }

 private:
  // S = Q K^T: one committed group of D / 16 k-steps, the first overwriting S
  // (its scale-d 0 ignores what S held: discard_operands, not cleared).
  __device__ __forceinline__ void issue_scores(uint32_t k_addr) {
    discard_operands(s);
    wgmma_fence();
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc)
      wgmma_rs_k_major_n64(s, q_frag[kc], k_major_descriptor<kTileKeys>(k_addr, kc), kc > 0);
    wgmma_commit();
  }

  // O += P V (and kbar += P K: the K tile has V's layout, read N-major too),
  // P from registers; one committed group.
  __device__ __forceinline__ void issue_pv(uint32_t v_addr, uint32_t k_addr) {
    fence_operands(o);
    if constexpr (kKbar) fence_operands(kbar);
    wgmma_fence();
#pragma unroll
    for (int kc = 0; kc < kTileKeys / 16; ++kc) {
      wgmma_rs<D>(o, p_frag[kc], n_major_descriptor<kTileKeys>(v_addr, kc));
      if constexpr (kKbar) wgmma_rs<D>(kbar, p_frag[kc], n_major_descriptor<kTileKeys>(k_addr, kc));
    }
    wgmma_commit();
  }

  __device__ __forceinline__ void finish_pv() {
    wgmma_wait<0>();
    fence_operands(o);
    if constexpr (kKbar) fence_operands(kbar);
  }

  // S_t (complete) masked where the tile is cut, softmaxed into P; O (in
  // flight when overlapping) rescaled only after `wait_pv`; P packed last,
  // since the P V in flight reads the old fragments.
  template <typename WaitPv>
  __device__ __forceinline__ void softmax_tile(int t, WaitPv wait_pv) {
    fence_operands(s);
    if (mask.tile_needs_mask(q0, kWgRows, t * kTileKeys, kTileKeys)) apply_mask(t * kTileKeys);
    float alpha[2];
    softmax_step(alpha);
    wait_pv();
    fence_operands(o);
    rescale(o, alpha);
    if constexpr (kKbar) {
      fence_operands(kbar);
      rescale(kbar, alpha);
    }
    a_fragments<kTileKeys>(p_frag, s);
  }

  __device__ __forceinline__ void apply_mask(int k0) {
#pragma unroll
    for (int nb = 0; nb < kKeyBlocks; ++nb) {
      if (!mask.n8_block_needs_mask(warp_q0, k0 + nb * 8)) continue;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = row_a + (e < 2 ? 0 : 8);
        const int j = k0 + nb * 8 + quad * 2 + (e & 1);
        if (!mask.visible(i, j)) s[4 * nb + e] = -INFINITY;
      }
    }
  }

  // The forward's online softmax (attention_forward.cuh); alpha is kept, since
  // O may be rescaled only once the P V in flight is done.
  __device__ __forceinline__ void softmax_step(float (&alpha)[2]) {
    online_softmax([this](int nb, int e) -> float& { return s[4 * nb + e]; },
                   [&](int r, float a) { alpha[r] = a; }, row_max, row_sum, scale_log2);
  }

  template <int N>
  __device__ __forceinline__ static void rescale(float (&acc)[N], const float (&alpha)[2]) {
#pragma unroll
    for (int i = 0; i < N; ++i) acc[i] *= alpha[(i & 3) >> 1];
  }
};

#endif  // LSGPT_SM90A_DEVICE

}  // namespace lsgpt::cuda::attn
