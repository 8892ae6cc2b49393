// Elementwise residual add (out = a + b) and the in-place accumulate the
// backward of the residual stream uses (dst += src). Memory-bound: one
// parallel vectorised pass each.
#include "ops/cpu/residual.h"

namespace lsgpt::cpu {

namespace {
// Below this many elements a parallel region costs more than it saves (it
// matters for decoding, where B*T is 1).
constexpr size_t kParallelMin = size_t(1) << 15;
}  // namespace

template <typename T>
void residual_forward(T* out, const T* a, const T* b, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <typename T>
void add_inplace(T* dst, const T* src, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) dst[i] += src[i];
}

template void residual_forward<float>(float*, const float*, const float*, size_t);
template void residual_forward<double>(double*, const double*, const double*, size_t);
template void add_inplace<float>(float*, const float*, size_t);
template void add_inplace<double>(double*, const double*, size_t);

}  // namespace lsgpt::cpu
