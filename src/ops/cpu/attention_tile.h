// Building blocks shared by the three CPU attention kernels (forward,
// backward, decode): a register-blocked C += A B on small tiles, the masked
// row softmax, and the head-slice copies. Decode must reproduce a forward row
// bit for bit, so both go through these same functions: every element of a
// product is accumulated in the same order (k = 0, 1, ...) whichever path of
// the tile loop computes it, and a key outside a row's band contributes an
// exact zero.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/error.h"
#include "ops/attention_spec.h"

namespace lsgpt::cpu::attention_tile {

inline void check_spec(const AttentionSpec& s) {
  LSGPT_CHECK(s.B >= 1 && s.T >= 1 && s.n_head >= 1 && s.head_dim >= 1, "B=", s.B, " T=", s.T,
              " n_head=", s.n_head, " head_dim=", s.head_dim);
  LSGPT_CHECK(s.n_local >= 0 && s.n_local <= s.n_head, "n_local=", s.n_local);
  LSGPT_CHECK(s.n_local == 0 || s.window >= 1, "window=", s.window);
}

// Per-thread working memory, carved into pieces of the given sizes (in
// elements, each rounded up to 64 bytes). The buffer lives as long as its
// thread and only grows, so calls after the first never fault in fresh pages
// (which, allocated per call, cost more than a tenth of the kernel's time).
// Contents are left over from earlier calls: every piece is written before use.
template <typename T, size_t N>
std::array<T*, N> thread_scratch(const std::array<size_t, N>& sizes) {
  constexpr size_t kAlign = 64 / sizeof(T);
  thread_local std::vector<T> buffer;
  size_t total = 0;
  for (size_t n : sizes) total += (n + kAlign - 1) / kAlign * kAlign;
  if (buffer.size() < total) buffer.resize(total);
  std::array<T*, N> pieces;
  T* next = buffer.data();
  for (size_t i = 0; i < N; ++i) {
    pieces[i] = next;
    next += (sizes[i] + kAlign - 1) / kAlign * kAlign;
  }
  return pieces;
}

// The (batch row, head) pairs are the unit of parallel work, numbered global
// heads first: they are the long tasks, and dynamic scheduling then fits the
// short local ones around them. Each pair is computed by one thread in a
// fixed order, so results do not depend on the number of threads.
struct HeadTask {
  int b, h;
};
inline HeadTask head_task(int task, int B, int n_head, int n_local) {
  const int n_global = n_head - n_local;
  if (task < B * n_global) return {task / n_global, n_local + task % n_global};
  task -= B * n_global;
  return {task / n_local, task % n_local};
}

// Tiny calls (decoding-size models, gradient checks) run faster on the
// calling thread than through a parallel region's start-up.
inline bool worth_threads(const AttentionSpec& s) {
  const double keys =
      s.n_local * double(std::min(s.window, s.T)) + (s.n_head - s.n_local) * 0.5 * s.T;
  return double(s.B) * s.T * keys * s.head_dim > 2e5;
}

// Keys a query row of this head sees: [i - w + 1, i], clipped at 0.
inline int band_width(const AttentionSpec& s, int h) {
  return h < s.n_local ? std::min(s.window, s.T) : s.T;
}

// C[M,N] += A[M,K] B[K,N], row-major with leading dimensions lda, ldb, ldc.
// Blocks of 4 rows x 2 vector widths of C live in registers across the k loop.
template <typename T>
inline void matmul_acc(T* C, ptrdiff_t ldc, const T* A, ptrdiff_t lda, const T* B, ptrdiff_t ldb,
                       int M, int N, int K) {
  constexpr int MR = 4;
  constexpr int NR = 128 / int(sizeof(T));  // 32 floats or 16 doubles
  int n0 = 0;
  for (; n0 + NR <= N; n0 += NR) {
    int m0 = 0;
    for (; m0 + MR <= M; m0 += MR) {
      T acc[MR][NR];
      for (int r = 0; r < MR; ++r)
        for (int c = 0; c < NR; ++c) acc[r][c] = C[(m0 + r) * ldc + n0 + c];
      for (int k = 0; k < K; ++k) {
        const T* b = B + k * ldb + n0;
        for (int r = 0; r < MR; ++r) {
          const T a = A[(m0 + r) * lda + k];
          for (int c = 0; c < NR; ++c) acc[r][c] += a * b[c];
        }
      }
      for (int r = 0; r < MR; ++r)
        for (int c = 0; c < NR; ++c) C[(m0 + r) * ldc + n0 + c] = acc[r][c];
    }
    for (; m0 < M; ++m0) {
      T acc[NR];
      for (int c = 0; c < NR; ++c) acc[c] = C[m0 * ldc + n0 + c];
      for (int k = 0; k < K; ++k) {
        const T a = A[m0 * lda + k];
        const T* b = B + k * ldb + n0;
        for (int c = 0; c < NR; ++c) acc[c] += a * b[c];
      }
      for (int c = 0; c < NR; ++c) C[m0 * ldc + n0 + c] = acc[c];
    }
  }
  if (n0 == N) return;
  for (int m = 0; m < M; ++m) {
    T* c_row = C + m * ldc;
    for (int k = 0; k < K; ++k) {
      const T a = A[m * lda + k];
      const T* b = B + k * ldb;
      for (int c = n0; c < N; ++c) c_row[c] += a * b[c];
    }
  }
}

// exp for softmax arguments (x <= 0 up to rounding). float: a branch-free
// version the compiler vectorises (libm's expf is a scalar call and was the
// largest cost of the kernels): x = n ln2 + r with |r| <= ln2/2, e^r by its
// degree-7 Taylor polynomial (truncation < 6e-9, so within 2 ulp), 2^n
// through the exponent bits; results below 2^-126 flush to 0. double (the
// gradient-check precision) uses std::exp.
template <typename T>
inline T softmax_exp(T x) {
  if constexpr (sizeof(T) == 8) {
    return std::exp(x);
  } else {
    const float xc = std::min(x, 88.0f);
    // Round to nearest by adding and removing 1.5 * 2^23 (floorf does not vectorise).
    const float n = (xc * 1.44269504f + 12582912.0f) - 12582912.0f;
    const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int e = std::max(int(n), -126) + 127;  // clamped only where the result flushes
    const float scale = std::bit_cast<float>(uint32_t(e) << 23);
    return xc < -87.33f ? 0.0f : p * scale;
  }
}

// Sum of s[lo, hi) in a fixed order that depends only on the positions
// relative to lo (eight interleaved partial sums, then a fixed tree), so it
// vectorises and still gives the same bits for the same sequence of values
// wherever it sits in memory.
template <typename T>
inline T ordered_sum(const T* s, int lo, int hi) {
  T part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int j = lo;
  for (; j + 8 <= hi; j += 8)
    for (int l = 0; l < 8; ++l) part[l] += s[j + l];
  for (int l = 0; j < hi; ++j, ++l) part[l] += s[j];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// In-place softmax numerator of one row of scaled logits s[0, n): entries in
// [lo, hi) become exp(s - max), the rest exact zeros. Returns the row maximum
// (the largest logit of the row) and the sum of the exponentials.
template <typename T>
inline void softmax_row(T* s, int n, int lo, int hi, T& row_max, T& row_sum) {
  // The maximum is exact in any order, so it may vectorise freely.
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int j = lo; j < hi; ++j) m = s[j] > m ? s[j] : m;
  for (int j = 0; j < lo; ++j) s[j] = 0;
  for (int j = lo; j < hi; ++j) s[j] = softmax_exp(s[j] - m);
  for (int j = hi; j < n; ++j) s[j] = 0;
  row_max = m;
  row_sum = ordered_sum(s, lo, hi);
}

// dst[r, 0..D) = src[r * src_stride + 0..D) for r in [0, rows): gathers one
// head's slice of a strided activation into a dense [rows, D] block.
template <typename T>
inline void gather_rows(T* dst, const T* src, ptrdiff_t src_stride, int rows, int D) {
  for (int r = 0; r < rows; ++r) std::copy_n(src + r * src_stride, D, dst + ptrdiff_t(r) * D);
}

// Leading dimension for a transposed [D, T] slice: a multiple of 16 elements
// that is never a multiple of 256, since 4 KiB strides (T = 1024) would map a
// tile's rows onto the same L1 sets.
inline int padded_ld(int T) {
  int ld = (T + 15) / 16 * 16;
  return ld % 256 == 0 ? ld + 16 : ld;
}

// dst[d, r] = src[r * src_stride + d]: the transposed slice [D, rows], leading
// dimension ld, so that products can run along keys with unit stride.
template <typename T>
inline void gather_rows_transposed(T* dst, ptrdiff_t ld, const T* src, ptrdiff_t src_stride,
                                   int rows, int D) {
  for (int r = 0; r < rows; ++r) {
    const T* s = src + r * src_stride;
    for (int d = 0; d < D; ++d) dst[d * ld + r] = s[d];
  }
}

}  // namespace lsgpt::cpu::attention_tile
