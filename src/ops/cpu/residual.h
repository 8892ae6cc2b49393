// CPU elementwise residual add. Semantics in ops/backend.h.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lsgpt::cpu {

template <typename T>
void residual_forward(T* out, const T* a, const T* b, size_t n);
template <typename T>
void add_inplace(T* dst, const T* src, size_t n);

}  // namespace lsgpt::cpu
