// LayerNorm over the last axis, eps 1e-5, with mean and 1/std saved for the
// backward. Rows are independent, so the forward and dinp run one row per
// iteration; dweight, dbias and dinp_colsum are sums over rows, so the
// backward splits them by channel block instead: each element is owned by one
// thread and sums its rows in a fixed order, which keeps the result
// bit-reproducible without per-thread partial buffers.
#include "ops/cpu/layernorm.h"

#include <algorithm>
#include <cmath>

namespace lsgpt::cpu {

namespace {
constexpr double kEps = 1e-5;
// Below this many elements a parallel region costs more than it saves (it
// matters for decoding, where B*T is 1).
constexpr size_t kParallelMin = size_t(1) << 15;
}  // namespace

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias,
                       int N, int C) {
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    const T* x = inp + size_t(n) * C;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < C; ++c) sum += x[c];
    const T m = sum / T(C);
    // Two passes (mean first) so the variance does not cancel catastrophically.
    T sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int c = 0; c < C; ++c) sq += (x[c] - m) * (x[c] - m);
    const T s = T(1) / std::sqrt(sq / T(C) + T(kEps));
    T* o = out + size_t(n) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * s * weight[c] + bias[c];
    mean[n] = m;
    rstd[n] = s;
  }
}

template <typename T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, T* dinp_colsum, const T* dout,
                        const T* inp, const T* weight, const T* mean, const T* rstd, int N, int C) {
  constexpr int kBlock = 64;
  const int n_blocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel if (size_t(N) * C >= kParallelMin)
  {
#pragma omp for schedule(static) nowait
    for (int n = 0; n < N; ++n) {
      const T* x = inp + size_t(n) * C;
      const T* d = dout + size_t(n) * C;
      const T m = mean[n], s = rstd[n];
      // dinp = s * (g - mean(g) - xhat * mean(g * xhat)) with g = weight * dout.
      T g_sum = 0, gx_sum = 0;
#pragma omp simd reduction(+ : g_sum, gx_sum)
      for (int c = 0; c < C; ++c) {
        const T g = weight[c] * d[c];
        g_sum += g;
        gx_sum += g * (x[c] - m) * s;
      }
      const T g_mean = g_sum / T(C), gx_mean = gx_sum / T(C);
      T* di = dinp + size_t(n) * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) {
        const T xhat = (x[c] - m) * s;
        di[c] += s * (weight[c] * d[c] - g_mean - xhat * gx_mean);
      }
    }
    // The column sums of dinp read rows other threads wrote above.
    if (dinp_colsum) {
#pragma omp barrier
    }
#pragma omp for schedule(static)
    for (int blk = 0; blk < n_blocks; ++blk) {
      const int c0 = blk * kBlock, c1 = std::min(C, c0 + kBlock);
      for (int n = 0; n < N; ++n) {
        const T* x = inp + size_t(n) * C;
        const T* d = dout + size_t(n) * C;
        const T m = mean[n], s = rstd[n];
#pragma omp simd
        for (int c = c0; c < c1; ++c) {
          dweight[c] += (x[c] - m) * s * d[c];
          dbias[c] += d[c];
        }
        if (dinp_colsum) {
          const T* di = dinp + size_t(n) * C;
#pragma omp simd
          for (int c = c0; c < c1; ++c) dinp_colsum[c] += di[c];
        }
      }
    }
  }
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*,
                                       const float*, int, int);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*,
                                        const double*, int, int);
template void layernorm_backward<float>(float*, float*, float*, float*, const float*,
                                        const float*, const float*, const float*, const float*,
                                        int, int);
template void layernorm_backward<double>(double*, double*, double*, double*, const double*,
                                         const double*, const double*, const double*,
                                         const double*, int, int);

}  // namespace lsgpt::cpu
