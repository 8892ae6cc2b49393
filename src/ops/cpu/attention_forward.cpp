// LS attention forward on the CPU: O = softmax(tau Q K^T + mask) V per (batch,
// head), saving each row's log-sum-exp for the backward, the largest logit of
// every head, and (only when the span decomposition's cross basis on dQ asks
// for it) kbar = P K. The non-obvious decision: query rows go in blocks, and a
// block only visits the keys its band can reach ([first row - w + 1, last
// row] for a local head), so a local head costs O(T w D) with no T x T matrix;
// within the block each row takes an exact softmax over its own keys, so a row's
// result does not depend on the blocking and decode can reproduce it exactly.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/attention_tile.h"

namespace lsgpt::cpu {

template <typename T>
void attention_forward(T* out, T* lse, T* max_logit, T* kbar, const T* qkv,
                       const AttentionSpec& spec) {
  namespace tile = attention_tile;
  tile::check_spec(spec);
  const bool want_kbar = spec.span.needs_kbar();
  LSGPT_CHECK(!want_kbar || kbar != nullptr, "the span cross basis on q needs kbar");
  const int B = spec.B, Tn = spec.T, H = spec.n_head, D = spec.head_dim, C = spec.C();
  const int n_local = spec.n_local;
  const ptrdiff_t row3 = 3 * ptrdiff_t(C);
  const T tau = T(1.0 / std::sqrt(double(D)));
  const int ldt = tile::padded_ld(Tn);  // of the transposed K (and V) slices
  const int n_tasks = B * H;
  std::vector<T> task_max(n_tasks, -std::numeric_limits<T>::infinity());

#pragma omp parallel if (tile::worth_threads(spec))
  {
    // This head's Q, K, V as dense blocks (K also transposed, so logits run
    // along keys with unit stride), and one block's tiles.
    constexpr int kMaxBlock = 32;
    const size_t TD = size_t(Tn) * D, BD = size_t(kMaxBlock) * D;
    // Named one by one: clang < 16 cannot use structured bindings inside OpenMP regions.
    const auto scratch = tile::thread_scratch<T, 8>(
        {TD, size_t(D) * ldt, TD, want_kbar ? TD : 0, size_t(kMaxBlock) * Tn, BD,
         want_kbar ? BD : 0, size_t(kMaxBlock)});
    T* const q = scratch[0];
    T* const kt = scratch[1];
    T* const v = scratch[2];
    T* const k = scratch[3];
    T* const s = scratch[4];
    T* const o = scratch[5];
    T* const kb = scratch[6];
    T* const inv_sum = scratch[7];

#pragma omp for schedule(dynamic, 1)
    for (int task = 0; task < n_tasks; ++task) {
      const auto [b, h] = tile::head_task(task, B, H, n_local);
      const int w = tile::band_width(spec, h);
      // Smaller blocks for narrow bands: a block's rows share its key range,
      // so each row wastes up to block - 1 keys outside its band.
      const int block = w < 128 ? 16 : kMaxBlock;
      const T* base = qkv + size_t(b) * Tn * row3 + size_t(h) * D;
      tile::gather_rows(q, base, row3, Tn, D);
      tile::gather_rows_transposed(kt, ldt, base + C, row3, Tn, D);
      tile::gather_rows(v, base + 2 * C, row3, Tn, D);
      if (want_kbar) tile::gather_rows(k, base + C, row3, Tn, D);
      T head_max = -std::numeric_limits<T>::infinity();
      T* lse_row = lse + (size_t(b) * H + h) * Tn;

      for (int i0 = 0; i0 < Tn; i0 += block) {
        const int rows = std::min(block, Tn - i0);
        const int k0 = std::max(0, i0 - w + 1);  // first key any row of the block sees
        const int nk = i0 + rows - k0;
        std::fill_n(s, size_t(rows) * nk, T(0));
        tile::matmul_acc(s, nk, q + size_t(i0) * D, D, kt + k0, ldt, rows, nk, D);
        for (int r = 0; r < rows; ++r) {
          const int i = i0 + r;
          const int lo = std::max(0, i - w + 1) - k0, hi = i + 1 - k0;
          T* sr = s + size_t(r) * nk;
          for (int j = lo; j < hi; ++j) sr[j] *= tau;
          T m, sum;
          tile::softmax_row(sr, nk, lo, hi, m, sum);
          head_max = std::max(head_max, m);
          lse_row[i] = m + std::log(sum);
          inv_sum[r] = T(1) / sum;
        }
        std::fill_n(o, size_t(rows) * D, T(0));
        tile::matmul_acc(o, D, s, nk, v + size_t(k0) * D, D, rows, D, nk);
        if (want_kbar) {
          std::fill_n(kb, size_t(rows) * D, T(0));
          tile::matmul_acc(kb, D, s, nk, k + size_t(k0) * D, D, rows, D, nk);
        }
        for (int r = 0; r < rows; ++r) {
          const size_t dst = (size_t(b) * Tn + i0 + r) * C + size_t(h) * D;
          for (int d = 0; d < D; ++d) out[dst + d] = o[size_t(r) * D + d] * inv_sum[r];
          if (want_kbar)
            for (int d = 0; d < D; ++d) kbar[dst + d] = kb[size_t(r) * D + d] * inv_sum[r];
        }
      }
      task_max[task] = head_max;
    }
  }

  std::fill_n(max_logit, H, -std::numeric_limits<T>::infinity());
  for (int task = 0; task < n_tasks; ++task) {
    const int h = tile::head_task(task, B, H, n_local).h;
    max_logit[h] = std::max(max_logit[h], task_max[task]);
  }
}

template void attention_forward(float*, float*, float*, float*, const float*, const AttentionSpec&);
template void attention_forward(double*, double*, double*, double*, const double*,
                                const AttentionSpec&);

}  // namespace lsgpt::cpu
