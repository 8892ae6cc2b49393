#include "model/grad_norms.h"

namespace lsgpt {

std::vector<double> tensor_sum_squares(Backend& backend, const void* flat, size_t elem_bytes,
                                       std::span<const ParamInfo> tensors) {
  std::vector<double> out;
  out.reserve(tensors.size());
  for (const ParamInfo& p : tensors) {
    const void* x = static_cast<const char*>(flat) + p.offset * elem_bytes;
    out.push_back(backend.sum_squares(x, p.numel));
  }
  return out;
}

}  // namespace lsgpt
