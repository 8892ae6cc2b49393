// QK-norm on the CPU: y = x * rstd * gain with rstd = 1/sqrt(mean(x^2) + eps)
// over each head's D entries of q and of k (RMSNorm, as OLMo 2, Gemma 3 and
// Qwen3 normalise queries and keys). v is copied. Sums in double.
// Backward, with xhat = x * rstd and a = dy * gain:
//   dx = rstd * (a - xhat * mean(a * xhat)),   dgain += sum over rows and heads of dy * xhat.
#include "ops/cpu/qk_norm.h"

#include <cmath>
#include <cstddef>
#include <vector>

namespace lsgpt::cpu {

template <typename T>
void qk_norm_forward(T* out, T* rstd, const T* qkv, const T* q_gain, const T* k_gain, int N,
                     int n_head, int D, double eps) {
  const size_t C = size_t(n_head) * D;
#pragma omp parallel for schedule(static) if (size_t(N) * C >= (size_t(1) << 15))
  for (int n = 0; n < N; ++n) {
    const T* row = qkv + size_t(n) * 3 * C;
    T* dst = out + size_t(n) * 3 * C;
    for (int part = 0; part < 2; ++part) {  // 0: q, 1: k
      const T* gain = part == 0 ? q_gain : k_gain;
      for (int h = 0; h < n_head; ++h) {
        const T* x = row + part * C + size_t(h) * D;
        T* y = dst + part * C + size_t(h) * D;
        double ss = 0;
        for (int d = 0; d < D; ++d) ss += double(x[d]) * double(x[d]);
        const double r = 1.0 / std::sqrt(ss / D + eps);
        for (int d = 0; d < D; ++d) y[d] = T(double(x[d]) * r * double(gain[d]));
        if (rstd) rstd[(size_t(n) * 2 + part) * n_head + h] = T(r);
      }
    }
    if (dst != row)
      for (size_t c = 0; c < C; ++c) dst[2 * C + c] = row[2 * C + c];
  }
}

template <typename T>
void qk_norm_backward(T* dqkv, T* dq_gain, T* dk_gain, const T* dout, const T* qkv,
                      const T* q_gain, const T* k_gain, const T* rstd, int N, int n_head, int D) {
  const size_t C = size_t(n_head) * D;
  // Gain gradients first, in a fixed order (dqkv may alias dout).
  std::vector<double> dg(2 * size_t(D), 0.0);
  for (int n = 0; n < N; ++n)
    for (int part = 0; part < 2; ++part)
      for (int h = 0; h < n_head; ++h) {
        const size_t base = size_t(n) * 3 * C + part * C + size_t(h) * D;
        const double r = double(rstd[(size_t(n) * 2 + part) * n_head + h]);
        for (int d = 0; d < D; ++d)
          dg[part * D + d] += double(dout[base + d]) * double(qkv[base + d]) * r;
      }
  for (int d = 0; d < D; ++d) {
    dq_gain[d] = T(double(dq_gain[d]) + dg[d]);
    dk_gain[d] = T(double(dk_gain[d]) + dg[D + d]);
  }
#pragma omp parallel for schedule(static) if (size_t(N) * C >= (size_t(1) << 15))
  for (int n = 0; n < N; ++n) {
    for (int part = 0; part < 2; ++part) {
      const T* gain = part == 0 ? q_gain : k_gain;
      for (int h = 0; h < n_head; ++h) {
        const size_t base = size_t(n) * 3 * C + part * C + size_t(h) * D;
        const double r = double(rstd[(size_t(n) * 2 + part) * n_head + h]);
        double dot = 0;  // sum of a * xhat
        for (int d = 0; d < D; ++d)
          dot += double(dout[base + d]) * double(gain[d]) * double(qkv[base + d]) * r;
        const double mean = dot / D;
        for (int d = 0; d < D; ++d) {
          const double a = double(dout[base + d]) * double(gain[d]);
          dqkv[base + d] = T(r * (a - double(qkv[base + d]) * r * mean));
        }
      }
    }
    if (dqkv != dout)
      for (size_t c = 0; c < C; ++c)
        dqkv[size_t(n) * 3 * C + 2 * C + c] = dout[size_t(n) * 3 * C + 2 * C + c];
  }
}

template void qk_norm_forward<float>(float*, float*, const float*, const float*, const float*, int,
                                     int, int, double);
template void qk_norm_forward<double>(double*, double*, const double*, const double*,
                                      const double*, int, int, int, double);
template void qk_norm_backward<float>(float*, float*, float*, const float*, const float*,
                                      const float*, const float*, const float*, int, int, int);
template void qk_norm_backward<double>(double*, double*, double*, const double*, const double*,
                                       const double*, const double*, const double*, int, int,
                                       int);

}  // namespace lsgpt::cpu
