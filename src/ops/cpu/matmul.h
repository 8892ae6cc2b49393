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
// dst[c] += sum over r of src[r, c] (src [rows, cols]), each column summed
// in row order: the bias gradient of matmul_backward and of
// attention_backward's dqkv_colsum, the same bits from either.
template <typename T>
void column_sum_accumulate(T* dst, const T* src, int rows, int cols);

}  // namespace lsgpt::cpu
