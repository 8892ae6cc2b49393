// Token + position embedding: out[b,t] = wte[token] + wpe[pos0 + t].
// The backward scatters into dwte, where several positions may share a token;
// threads split the channels (not the positions), so no two threads ever
// touch the same element and every element sums its positions in the same
// order whatever the thread count: the result is bit-reproducible.
#include "ops/cpu/embedding.h"

#include <algorithm>

namespace lsgpt::cpu {

namespace {
// Below this many elements a parallel region costs more than it saves (it
// matters for decoding, where B*T is 1).
constexpr size_t kParallelMin = size_t(1) << 15;
}  // namespace

template <typename T>
void embedding_forward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B, int T_,
                       int C, int pos0) {
  const long rows = long(B) * T_;
#pragma omp parallel for schedule(static) if (size_t(rows) * C >= kParallelMin)
  for (long bt = 0; bt < rows; ++bt) {
    const int t = int(bt % T_);
    const T* tok_row = wte + size_t(tokens[bt]) * C;
    const T* pos_row = wpe + size_t(pos0 + t) * C;
    T* o = out + size_t(bt) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = tok_row[c] + pos_row[c];
  }
}

template <typename T>
void embedding_decode(T* out, const int32_t* tokens, const int32_t* positions, const T* wte,
                      const T* wpe, int B, int C) {
  for (int b = 0; b < B; ++b) {
    const T* tok_row = wte + size_t(tokens[b]) * C;
    const T* pos_row = wpe + size_t(std::max(positions[b], 0)) * C;
    T* o = out + size_t(b) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = tok_row[c] + pos_row[c];
  }
}

template <typename T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B, int T_,
                        int C) {
  // Channel blocks of 64 elements (one or more cache lines) per work item.
  constexpr int kBlock = 64;
  const int n_blocks = (C + kBlock - 1) / kBlock;
  const long rows = long(B) * T_;
#pragma omp parallel if (size_t(rows) * C >= kParallelMin)
  {
#pragma omp for schedule(static) nowait
    for (int blk = 0; blk < n_blocks; ++blk) {
      const int c0 = blk * kBlock, c1 = std::min(C, c0 + kBlock);
      for (long bt = 0; bt < rows; ++bt) {
        const T* d = dout + size_t(bt) * C;
        T* g = dwte + size_t(tokens[bt]) * C;
#pragma omp simd
        for (int c = c0; c < c1; ++c) g[c] += d[c];
      }
    }
#pragma omp for schedule(static)
    for (int t = 0; t < T_; ++t) {
      T* g = dwpe + size_t(t) * C;
      for (int b = 0; b < B; ++b) {
        const T* d = dout + (size_t(b) * T_ + t) * C;
#pragma omp simd
        for (int c = 0; c < C; ++c) g[c] += d[c];
      }
    }
  }
}

template void embedding_forward<float>(float*, const int32_t*, const float*, const float*, int, int,
                                       int, int);
template void embedding_forward<double>(double*, const int32_t*, const double*, const double*, int,
                                        int, int, int);
template void embedding_decode<float>(float*, const int32_t*, const int32_t*, const float*,
                                      const float*, int, int);
template void embedding_decode<double>(double*, const int32_t*, const int32_t*, const double*,
                                       const double*, int, int);
template void embedding_backward<float>(float*, float*, const float*, const int32_t*, int, int,
                                        int);
template void embedding_backward<double>(double*, double*, const double*, const int32_t*, int, int,
                                         int);

}  // namespace lsgpt::cpu
