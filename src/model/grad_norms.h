// Per-tensor sums of squares of a flat buffer laid out by make_param_layout()
// (the gradients, usually): what global-norm clipping adds up and what
// per-tensor clipping (AdaGC) compares. Sums of squares rather than norms, so
// that a sharded trainer can add the parts each rank holds before the root.
#pragma once

#include <span>
#include <vector>

#include "model/params.h"
#include "ops/backend.h"

namespace lsgpt {

// out[i] = sum of x^2 over tensor i of `tensors`, whose offsets index `flat`
// (elements of elem_bytes bytes in the backend's dtype()). Waits for the device.
std::vector<double> tensor_sum_squares(Backend& backend, const void* flat, size_t elem_bytes,
                                       std::span<const ParamInfo> tensors);

}  // namespace lsgpt
