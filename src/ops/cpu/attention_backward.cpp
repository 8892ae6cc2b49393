// LS attention backward on the CPU, with the span/violation decomposition of
// docs/SPAN.md applied to the finished dQ, dK, dV rows when the layer asks for
// it. P is recomputed block by block from the saved log-sum-exp (no T x T
// matrix is stored), in the same query blocks and key bands as the forward:
//   dV = P^T dO, dP = dO V^T, dS = P o (dP - delta), dQ = tau dS K, dK = tau dS^T Q.
// The non-obvious decision: one thread owns a whole (batch, head) pair and
// sweeps its query blocks in order, so dK and dV (sums over queries) need no
// atomics and are bit-reproducible for any thread count. The cross basis of dK
// needs qbar_j = (P^T Q)_j / (column sum of P)_j, accumulated next to dV only
// when configured; with the decomposition off the canonical path does no
// extra floating-point work at all.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/attention_tile.h"
#include "ops/cpu/span_projection.h"

namespace lsgpt::cpu {

template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse,
                        const T* kbar, const AttentionSpec& spec) {
  namespace tile = attention_tile;
  tile::check_spec(spec);
  const SpanLayer& span = spec.span;
  const bool q_cross = span.q.enabled && span.q.basis == SpanBasis::cross;
  const bool k_cross = span.k.enabled && span.k.basis == SpanBasis::cross;
  LSGPT_CHECK(!q_cross || kbar != nullptr, "the span cross basis on q needs kbar");
  LSGPT_CHECK(!(span.v.enabled && span.v.basis == SpanBasis::cross),
              "the span decomposition of dV supports the self basis only");
  const int B = spec.B, Tn = spec.T, H = spec.n_head, D = spec.head_dim, C = spec.C();
  const ptrdiff_t row3 = 3 * ptrdiff_t(C);
  const T tau = T(1.0 / std::sqrt(double(D)));
  const int ldt = tile::padded_ld(Tn);  // of the transposed K (and V) slices
  const int n_tasks = B * H;

#pragma omp parallel if (tile::worth_threads(spec))
  {
    // This head's Q, K, dO as dense blocks, K and V also transposed (products
    // along keys with unit stride), the key-side accumulators, and one block's
    // tiles (P and dS, and their transposes).
    constexpr int kMaxBlock = 32;
    const size_t TD = size_t(Tn) * D, tile_size = size_t(kMaxBlock) * Tn;
    // Named one by one: clang < 16 cannot use structured bindings inside OpenMP regions.
    const auto scratch = tile::thread_scratch<T, 16>({TD, TD, size_t(D) * ldt, size_t(D) * ldt, TD, size_t(Tn), TD,
                                     TD, k_cross ? TD : 0, k_cross ? size_t(Tn) : 0,
                                     k_cross ? size_t(D) : 0, tile_size, tile_size, tile_size,
                                     tile_size, size_t(kMaxBlock) * D});
    T* const q = scratch[0];
    T* const k = scratch[1];
    T* const kt = scratch[2];
    T* const vt = scratch[3];
    T* const dout_h = scratch[4];
    T* const delta = scratch[5];
    T* const dk = scratch[6];
    T* const dv = scratch[7];
    T* const qsum = scratch[8];
    T* const colsum = scratch[9];
    T* const qbar_row = scratch[10];
    T* const p = scratch[11];
    T* const dp = scratch[12];
    T* const pt = scratch[13];
    T* const dst = scratch[14];
    T* const dq = scratch[15];

#pragma omp for schedule(dynamic, 1)
    for (int task = 0; task < n_tasks; ++task) {
      const auto [b, h] = tile::head_task(task, B, H, spec.n_local);
      const int w = tile::band_width(spec, h);
      const int block = w < 128 ? 16 : kMaxBlock;
      const T* base = qkv + size_t(b) * Tn * row3 + size_t(h) * D;
      const T* dout_base = dout + size_t(b) * Tn * C + size_t(h) * D;
      const T* out_base = out + size_t(b) * Tn * C + size_t(h) * D;
      T* dbase = dqkv + size_t(b) * Tn * row3 + size_t(h) * D;
      const T* lse_row = lse + (size_t(b) * H + h) * Tn;
      tile::gather_rows(q, base, row3, Tn, D);
      tile::gather_rows(k, base + C, row3, Tn, D);
      tile::gather_rows_transposed(kt, ldt, base + C, row3, Tn, D);
      tile::gather_rows_transposed(vt, ldt, base + 2 * C, row3, Tn, D);
      tile::gather_rows(dout_h, dout_base, C, Tn, D);
      for (int i = 0; i < Tn; ++i) {
        T acc = 0;
        for (int d = 0; d < D; ++d)
          acc += dout_base[size_t(i) * C + d] * out_base[size_t(i) * C + d];
        delta[i] = acc;
      }
      std::fill_n(dk, TD, T(0));
      std::fill_n(dv, TD, T(0));
      if (k_cross) {
        std::fill_n(qsum, TD, T(0));
        std::fill_n(colsum, Tn, T(0));
      }

      for (int i0 = 0; i0 < Tn; i0 += block) {
        const int rows = std::min(block, Tn - i0);
        const int k0 = std::max(0, i0 - w + 1);
        const int nk = i0 + rows - k0;
        const T* q_blk = q + size_t(i0) * D;
        const T* dout_blk = dout_h + size_t(i0) * D;
        std::fill_n(p, size_t(rows) * nk, T(0));
        std::fill_n(dp, size_t(rows) * nk, T(0));
        tile::matmul_acc(p, nk, q_blk, D, kt + k0, ldt, rows, nk, D);
        tile::matmul_acc(dp, nk, dout_blk, D, vt + k0, ldt, rows, nk, D);
        for (int r = 0; r < rows; ++r) {
          const int i = i0 + r;
          const int lo = std::max(0, i - w + 1) - k0, hi = i + 1 - k0;
          T* pr = p + size_t(r) * nk;
          T* dsr = dp + size_t(r) * nk;  // dP becomes dS in place
          for (int j = 0; j < lo; ++j) pr[j] = 0, dsr[j] = 0;
          for (int j = lo; j < hi; ++j) {
            pr[j] = tile::softmax_exp(pr[j] * tau - lse_row[i]);
            dsr[j] = pr[j] * (dsr[j] - delta[i]);
          }
          for (int j = hi; j < nk; ++j) pr[j] = 0, dsr[j] = 0;
        }
        const T* ds = dp;

        // dQ rows are complete once their block is done: scale, decompose, store.
        std::fill_n(dq, size_t(rows) * D, T(0));
        tile::matmul_acc(dq, D, ds, nk, k + size_t(k0) * D, D, rows, D, nk);
        for (size_t x = 0; x < size_t(rows) * D; ++x) dq[x] *= tau;
        if (span.q.enabled) {
          if (q_cross) {
            const T* u = kbar + (size_t(b) * Tn + i0) * C + size_t(h) * D;
            span_project_rows(dq, D, u, C, rows, D, span.q);
          } else {
            span_project_rows(dq, D, q_blk, D, rows, D, span.q);
          }
        }
        for (int r = 0; r < rows; ++r)
          std::copy_n(dq + size_t(r) * D, D, dbase + (size_t(i0) + r) * row3);

        // Keys accumulate over query blocks: dV += P^T dO, dK += dS^T Q (tau later).
        for (int r = 0; r < rows; ++r)
          for (int j = 0; j < nk; ++j) {
            pt[size_t(j) * rows + r] = p[size_t(r) * nk + j];
            dst[size_t(j) * rows + r] = ds[size_t(r) * nk + j];
          }
        tile::matmul_acc(dv + size_t(k0) * D, D, pt, rows, dout_blk, D, nk, D, rows);
        tile::matmul_acc(dk + size_t(k0) * D, D, dst, rows, q_blk, D, nk, D, rows);
        if (k_cross) {
          tile::matmul_acc(qsum + size_t(k0) * D, D, pt, rows, q_blk, D, nk, D, rows);
          for (int j = 0; j < nk; ++j) {
            T acc = colsum[k0 + j];
            for (int r = 0; r < rows; ++r) acc += pt[size_t(j) * rows + r];
            colsum[k0 + j] = acc;
          }
        }
      }

      for (size_t x = 0; x < TD; ++x) dk[x] *= tau;
      if (span.k.enabled) {
        if (k_cross) {
          for (int j = 0; j < Tn; ++j) {
            // qbar_j = (P^T Q)_j / sum_i P_ij; a key with (almost) no weight has no
            // direction: below 1e-30 the sum may be subnormal and the quotient
            // overflow (the CUDA kernel's bound too; the row's gradient is ~0).
            const T norm = colsum[j];
            for (int d = 0; d < D; ++d)
              qbar_row[d] = norm > T(1e-30) ? qsum[size_t(j) * D + d] / norm : T(0);
            span_project_row(dk + size_t(j) * D, qbar_row, D, span.k.alpha_par, span.k.alpha_perp);
          }
        } else {
          span_project_rows(dk, D, k, D, Tn, D, span.k);
        }
      }
      if (span.v.enabled) span_project_rows(dv, D, base + 2 * C, row3, Tn, D, span.v);
      for (int j = 0; j < Tn; ++j) {
        std::copy_n(dk + size_t(j) * D, D, dbase + size_t(j) * row3 + C);
        std::copy_n(dv + size_t(j) * D, D, dbase + size_t(j) * row3 + 2 * C);
      }
    }
  }
}

template void attention_backward(float*, const float*, const float*, const float*, const float*,
                                 const float*, const AttentionSpec&);
template void attention_backward(double*, const double*, const double*, const double*,
                                 const double*, const double*, const AttentionSpec&);

}  // namespace lsgpt::cpu
