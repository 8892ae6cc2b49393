// Helpers shared by the CUDA tests: the skip-without-GPU guard, bf16-exact
// random inputs and typed device buffers that start poisoned with NaN.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "../../support/numeric.h"
#include "core/dtype.h"
#include "core/error.h"
#include "ops/backend.h"

namespace lsgpt::cuda_test {

constexpr double kBf16Tolerance = 1e-2;
constexpr double kF32Tolerance = 1e-5;

// ||a - b|| / max(||b||, 1e-3 sqrt(n)): the normwise error, against an RMS
// floor of 1e-3 for gradients that vanish in exact arithmetic (at T = 1,
// dq = dk = 0).
inline double floored_error(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  if (!std::isfinite(num)) return INFINITY;
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-3 * std::sqrt(double(a.size())));
}

inline std::unique_ptr<Backend> cuda_backend(std::string& why_not) {
  try {
    return make_backend("cuda");
  } catch (const Error& e) {
    why_not = e.what();
    return nullptr;
  }
}

#define REQUIRE_CUDA(be)                                              \
  std::string why_not_;                                               \
  std::unique_ptr<Backend> be = cuda_backend(why_not_);               \
  if (!be) GTEST_SKIP() << "no CUDA GPU: " << why_not_

// Values exactly representable in bf16, so cpu64 and cuda see the same inputs.
inline std::vector<float> bf16_values(size_t n, uint64_t seed, double lo, double hi) {
  std::vector<float> v = testing::random_vector<float>(n, seed, lo, hi);
  for (float& x : v) x = from_bf16(to_bf16(x));
  return v;
}

struct Buffer {
  DeviceBuffer mem;
  DType type;
  size_t n;
};

inline Buffer make_buffer(Backend& be, DType type, size_t n, const std::vector<float>* values) {
  Buffer b{DeviceBuffer(be, std::max<size_t>(n, 1) * dtype_size(type)), type, n};
  if (n == 0) return b;
  if (values) {
    be.upload_f32(b.mem.get(), type, values->data(), n);
  } else {
    const std::vector<float> poison(n, std::numeric_limits<float>::quiet_NaN());
    be.upload_f32(b.mem.get(), type, poison.data(), n);
  }
  return b;
}

inline std::vector<float> fetch(Backend& be, const Buffer& b) {
  std::vector<float> v(b.n);
  if (b.n) be.download_f32(v.data(), b.mem.get(), b.type, b.n);
  return v;
}

// Part 0 (q), 1 (k) or 2 (v) of a [B, T, 3C] tensor.
inline std::vector<float> qkv_part(const std::vector<float>& x, int part, size_t C) {
  const size_t rows = x.size() / (3 * C);
  std::vector<float> p(rows * C);
  for (size_t r = 0; r < rows; ++r)
    std::memcpy(&p[r * C], &x[r * 3 * C + part * C], C * sizeof(float));
  return p;
}

}  // namespace lsgpt::cuda_test
