// Writes a float32 array as a NumPy .npy file (format 1.0), atomically, so
// logits can be compared with PyTorch without a custom reader.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace lsgpt {

void write_npy_f32(const std::string& path, std::span<const float> data,
                   const std::vector<int64_t>& shape);

}  // namespace lsgpt
