// Elementwise GELU (GPT-2's tanh form) and its derivative. The backward
// recomputes tanh from the saved input instead of storing it: one more tanh
// per element is cheaper than another activation-sized buffer.
#include "ops/cpu/gelu.h"

namespace lsgpt::cpu {

namespace {
// Below this many elements a parallel region costs more than it saves (it
// matters for decoding, where B*T is 1).
constexpr size_t kParallelMin = size_t(1) << 15;
}  // namespace

template <typename T>
void gelu_forward(T* out, const T* inp, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) out[i] = gelu_value(inp[i]);
}

template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, size_t n) {
  // dinp may alias dout: each element is read before it is written.
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) dinp[i] = dout[i] * gelu_derivative(inp[i]);
}

template void gelu_forward<float>(float*, const float*, size_t);
template void gelu_forward<double>(double*, const double*, size_t);
template void gelu_backward<float>(float*, const float*, const float*, size_t);
template void gelu_backward<double>(double*, const double*, const double*, size_t);

}  // namespace lsgpt::cpu
