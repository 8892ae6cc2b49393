// The safetensors format (Hugging Face): an 8-byte little-endian header length,
// a JSON header {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
// "__metadata__": {string: string}}, then the raw tensor bytes, offsets
// relative to the end of the header.
//
// The reader treats the file as hostile: it parses from a byte span (a memory
// map or a fuzzer's buffer), checks every length, offset and shape before it
// hands out a view, and requires the tensors to tile the data section exactly
// (no holes, no overlap, nothing after). The writer emits F32 only, tensors in
// name order, so the same tensors always give the same bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lsgpt::safetensors {

enum class Dtype { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, I64, U64, F64 };

size_t dtype_size(Dtype t);
std::string_view dtype_name(Dtype t);  // "F32", "BF16", ...

struct TensorView {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<int64_t> shape;
  std::span<const uint8_t> bytes;  // inside the parsed buffer
  uint64_t numel() const;
};

struct File {
  std::vector<TensorView> tensors;  // in data-offset order
  std::map<std::string, std::string> metadata;
  const TensorView* find(std::string_view name) const;  // null when absent
};

// Largest header accepted (the reference implementation's limit).
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Throws lsgpt::Error naming `origin` on any malformation. The views point
// into `buffer`, which must outlive the result.
File parse(std::span<const uint8_t> buffer, const std::string& origin);

// Converts F32, F16, BF16 or F64 to float; other dtypes are refused.
std::vector<float> to_float(const TensorView& t, const std::string& origin);

struct TensorF32 {
  std::string name;
  std::vector<int64_t> shape;
  std::span<const float> data;  // size must equal the shape's product
  // When set, used instead of `data`: fills the tensor's values at write time,
  // so a writer of converted tensors holds only one of them at a time.
  std::function<void(std::span<float>)> fill;
};

// The exact bytes of a safetensors file holding these tensors (sorted by name)
// and metadata. Names must be unique and not "__metadata__".
std::vector<uint8_t> serialize(const std::vector<TensorF32>& tensors,
                               const std::map<std::string, std::string>& metadata);
// serialize() streamed into an atomically written file.
void write(const std::string& path, const std::vector<TensorF32>& tensors,
           const std::map<std::string, std::string>& metadata);

}  // namespace lsgpt::safetensors
