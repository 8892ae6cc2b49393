// AdamW (decoupled weight decay, as in Loshchilov & Hutter and PyTorch's
// torch.optim.AdamW) on one parameter tensor, and the sum of squares that
// global-norm clipping needs. sum_squares cuts the tensor into fixed chunks
// whose partial sums are added in chunk order, so the result is the same
// bits for any thread count: resuming a run on another machine size cannot
// change the clipping factor.
#include "ops/cpu/adamw.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace lsgpt::cpu {

namespace {
// Below this many elements a parallel region costs more than it saves (it
// matters for decoding, where B*T is 1).
constexpr size_t kParallelMin = size_t(1) << 15;
}  // namespace

template <typename T>
void adamw_update(T* param, const T* grad, T* m, T* v, size_t n, const AdamWSettings& s) {
  // Element math in double: the update is memory-bound, so this costs nothing
  // and the float and double instantiations differ only by storage rounding.
  const double b1 = s.beta1, b2 = s.beta2;
  const double bias1 = 1.0 - std::pow(b1, double(s.step));
  const double bias2 = 1.0 - std::pow(b2, double(s.step));
  const double lr = s.lr, eps = s.eps, wd = s.weight_decay, gs = s.grad_scale;
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) {
    const double g = gs * double(grad[i]);
    const double mi = b1 * double(m[i]) + (1.0 - b1) * g;
    const double vi = b2 * double(v[i]) + (1.0 - b2) * g * g;
    m[i] = T(mi);
    v[i] = T(vi);
    const double mhat = mi / bias1, vhat = vi / bias2;
    const double p = double(param[i]);
    param[i] = T(p - lr * (mhat / (std::sqrt(vhat) + eps) + wd * p));
  }
}

template <typename T>
double sum_squares(const T* x, size_t n) {
  constexpr size_t kChunk = sum_squares_chunk;
  const size_t n_chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(n_chunks);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t k = 0; k < n_chunks; ++k) {
    const size_t i0 = k * kChunk, i1 = std::min(n, i0 + kChunk);
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (size_t i = i0; i < i1; ++i) s += double(x[i]) * double(x[i]);
    partial[k] = s;
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

template void adamw_update<float>(float*, const float*, float*, float*, size_t,
                                  const AdamWSettings&);
template void adamw_update<double>(double*, const double*, double*, double*, size_t,
                                   const AdamWSettings&);
template double sum_squares<float>(const float*, size_t);
template double sum_squares<double>(const double*, size_t);

}  // namespace lsgpt::cpu
