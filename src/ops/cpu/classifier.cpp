// Softmax + cross-entropy over the vocabulary, fused with its gradient, one
// row per iteration. Three passes over a row: the max (for stability), the
// exponentials and their sum (the exponentials are stored in place of the
// logits when the gradient is wanted, so exp runs once per element), and the
// scaling into dloss * (p - onehot). Padded columns [V, Vp) are never read
// and get gradient 0; the sum is accumulated in double so a 50k-entry
// vocabulary loses nothing to float rounding.
// z-loss (PaLM): with z_coef > 0 the row's objective gains z_coef * (log Z)^2,
// whose gradient 2 z_coef log Z * softmax joins the scaling pass at no extra
// cost: dloss * ((1 + 2 z_coef log Z) p - onehot). losses keeps the pure
// cross-entropy; lse (when given) receives log Z so the caller can report the
// z-loss term.
#include "ops/cpu/classifier.h"

#include <cmath>
#include <limits>

#include "core/error.h"

namespace lsgpt::cpu {

namespace {
// Below this many elements a parallel region costs more than it saves (it
// matters for decoding, where B*T is 1).
constexpr size_t kParallelMin = size_t(1) << 15;
}  // namespace

template <typename T>
void softmax_cross_entropy(T* losses, T* logits, const int32_t* targets, int N, int V, int Vp,
                           double dloss, bool compute_grad, double z_coef, T* lse) {
  LSGPT_CHECK(V >= 1 && V <= Vp, "vocabulary ", V, " vs padded ", Vp);
  // Checked up front: an exception cannot leave an OpenMP region.
  for (int n = 0; n < N; ++n)
    LSGPT_CHECK(targets[n] < V, "target ", targets[n], " at row ", n, " >= vocabulary ", V);

#pragma omp parallel for schedule(static) if (size_t(N) * V >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    T* x = logits + size_t(n) * Vp;
    const int target = targets[n];
    if (target < 0) {
      losses[n] = T(0);
      if (lse) lse[n] = T(0);
      if (compute_grad)
        for (int v = 0; v < Vp; ++v) x[v] = T(0);
      continue;
    }
    T max_logit = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : max_logit)
    for (int v = 0; v < V; ++v) max_logit = x[v] > max_logit ? x[v] : max_logit;
    const T target_logit = x[target];
    double sum = 0;
    if (compute_grad) {
#pragma omp simd reduction(+ : sum)
      for (int v = 0; v < V; ++v) {
        const T e = std::exp(x[v] - max_logit);
        x[v] = e;
        sum += double(e);
      }
    } else {
#pragma omp simd reduction(+ : sum)
      for (int v = 0; v < V; ++v) sum += double(std::exp(x[v] - max_logit));
    }
    const double log_z = std::log(sum) + double(max_logit);
    losses[n] = T(log_z - double(target_logit));
    if (lse) lse[n] = T(log_z);
    if (compute_grad) {
      const T scale = T(dloss * (1.0 + 2.0 * z_coef * log_z) / sum);
#pragma omp simd
      for (int v = 0; v < V; ++v) x[v] *= scale;
      x[target] -= T(dloss);
      for (int v = V; v < Vp; ++v) x[v] = T(0);
    }
  }
}

template void softmax_cross_entropy<float>(float*, float*, const int32_t*, int, int, int, double,
                                           bool, double, float*);
template void softmax_cross_entropy<double>(double*, double*, const int32_t*, int, int, int, double,
                                            bool, double, double*);

}  // namespace lsgpt::cpu
