// CPU LayerNorm (eps 1e-5). Instantiated for float and double; semantics in ops/backend.h.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lsgpt::cpu {

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias,
                       int N, int C);
template <typename T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, T* dinp_colsum, const T* dout,
                        const T* inp, const T* weight, const T* mean, const T* rstd, int N, int C);

}  // namespace lsgpt::cpu
