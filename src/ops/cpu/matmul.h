// CPU matmul through BLAS (sgemm/dgemm), optional fused GELU. Semantics in ops/backend.h.
// dinp may be null in the backward when the input needs no gradient.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lsgpt::cpu {

template <typename T>
void matmul_forward(T* out, T* pre_gelu, const T* inp, const T* weight, const T* bias, int N, int C,
                    int OC);
template <typename T>
void matmul_backward(T* dinp, T* dweight, T* dbias, T* dout, const T* inp, const T* weight,
                     const T* pre_gelu, const T* inp_pre_gelu, int N, int C, int OC);

}  // namespace lsgpt::cpu
