// CPU token + position embedding. Instantiated for float and double; semantics in ops/backend.h.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lsgpt::cpu {

template <typename T>
void embedding_forward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B, int T_,
                       int C, int pos0);
// One token per row at positions[b] (negative: idle row, reads wpe[0]).
template <typename T>
void embedding_decode(T* out, const int32_t* tokens, const int32_t* positions, const T* wte,
                      const T* wpe, int B, int C);
template <typename T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B, int T_,
                        int C);

}  // namespace lsgpt::cpu
