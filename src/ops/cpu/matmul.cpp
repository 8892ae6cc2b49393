// Fully connected layer out = inp @ weight^T + bias, weight [OC, C] row-major
// (GPT-2's layout), with an optional fused GELU. The three products go to
// OpenBLAS (s/dgemm): its blocked kernels are several times faster than
// anything written here and its threads split the output, never the summed
// axis, so results are reproducible run to run. The bias/GELU epilogue and
// the dbias column sums are one extra pass each; dbias is split by column
// block so every element sums its rows in a fixed order.
#include "ops/cpu/matmul.h"

#include <cblas.h>

#include <algorithm>

#include "ops/cpu/gelu.h"

namespace lsgpt::cpu {

namespace {

// Below this many elements a parallel region costs more than it saves (it
// matters for decoding, where B*T is 1).
constexpr size_t kParallelMin = size_t(1) << 15;

void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, const float* a, int lda,
          const float* b, int ldb, float beta, float* c, int ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}

void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, const double* a, int lda,
          const double* b, int ldb, double beta, double* c, int ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, 1.0, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace

template <typename T>
void matmul_forward(T* out, T* pre_gelu, const T* inp, const T* weight, const T* bias, int N, int C,
                    int OC) {
  if (N == 0 || OC == 0) return;
  // With GELU fused the product lands in pre_gelu (kept for the backward).
  T* acc = pre_gelu ? pre_gelu : out;
  gemm(CblasNoTrans, CblasTrans, N, OC, C, inp, C, weight, C, T(0), acc, OC);
  if (!bias && !pre_gelu) return;
#pragma omp parallel for schedule(static) if (size_t(N) * OC >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    T* a = acc + size_t(n) * OC;
    if (bias) {
#pragma omp simd
      for (int o = 0; o < OC; ++o) a[o] += bias[o];
    }
    if (pre_gelu) {
      T* y = out + size_t(n) * OC;
#pragma omp simd
      for (int o = 0; o < OC; ++o) y[o] = gelu_value(a[o]);
    }
  }
}

template <typename T>
void matmul_backward(T* dinp, T* dweight, T* dbias, T* dout, const T* inp, const T* weight,
                     const T* pre_gelu, const T* inp_pre_gelu, int N, int C, int OC) {
  if (N == 0 || OC == 0) return;
  // dout becomes the gradient of the pre-activation (the interface allows
  // using it as scratch), so the products below need no extra buffer.
  if (pre_gelu) gelu_backward(dout, pre_gelu, dout, size_t(N) * OC);
  // dinp[N,C] = dout[N,OC] @ weight[OC,C]
  if (dinp) gemm(CblasNoTrans, CblasNoTrans, N, C, OC, dout, OC, weight, C, T(0), dinp, C);
  if (dinp && inp_pre_gelu) gelu_backward(dinp, inp_pre_gelu, dinp, size_t(N) * C);
  // dweight[OC,C] += dout^T @ inp
  gemm(CblasTrans, CblasNoTrans, OC, C, N, dout, OC, inp, C, T(1), dweight, C);
  if (dbias) column_sum_accumulate(dbias, dout, N, OC);
}

template <typename T>
void column_sum_accumulate(T* dst, const T* src, int rows, int cols) {
  constexpr int kBlock = 64;
  const int n_blocks = (cols + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (size_t(rows) * cols >= kParallelMin)
  for (int blk = 0; blk < n_blocks; ++blk) {
    const int c0 = blk * kBlock, c1 = std::min(cols, c0 + kBlock);
    for (int r = 0; r < rows; ++r) {
      const T* d = src + size_t(r) * cols;
#pragma omp simd
      for (int c = c0; c < c1; ++c) dst[c] += d[c];
    }
  }
}

template void matmul_forward<float>(float*, float*, const float*, const float*, const float*, int,
                                    int, int);
template void matmul_forward<double>(double*, double*, const double*, const double*, const double*,
                                     int, int, int);
template void matmul_backward<float>(float*, float*, float*, float*, const float*, const float*,
                                     const float*, const float*, int, int, int);
template void matmul_backward<double>(double*, double*, double*, double*, const double*,
                                      const double*, const double*, const double*, int, int, int);
template void column_sum_accumulate<float>(float*, const float*, int, int);
template void column_sum_accumulate<double>(double*, const double*, int, int);

}  // namespace lsgpt::cpu
