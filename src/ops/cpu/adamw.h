// CPU AdamW and the squared-norm reduction used for global-norm clipping. Semantics in
// ops/backend.h. m and v are updated in place; sum_squares is reproducible bit for bit
// whatever the thread count.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ops/backend.h"

namespace lsgpt::cpu {

template <typename T>
void adamw_update(T* param, const T* grad, T* m, T* v, size_t n, const AdamWSettings& s);
template <typename T>
double sum_squares(const T* x, size_t n);

}  // namespace lsgpt::cpu
