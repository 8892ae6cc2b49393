// The arithmetic of the sampling rule (ops/sampling_spec.h) that the CPU and
// CUDA backends must share bit for bit: the Gumbel noise of a token as a pure
// function of (seed, step, token), the order-preserving integer key of a float
// (thresholds are compared as keys, so -0 and +0 are one value), and the
// quantised probability mass that makes the top_p cut an exact integer
// comparison, independent of summation order.
//
// Compiles as C++20 (g++) and as C++17 host and device code (nvcc). Only
// expf/logf can differ between the two sides (by an ulp or so).
#pragma once

#include <math.h>

#include <cstdint>

#include "core/host_device.h"

namespace lsgpt {

LSGPT_HOST_DEVICE inline uint64_t sampling_mix(uint64_t x) {  // splitmix64, as core/rng.h
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The noise of one draw of one sequence comes from a stream key of
// (seed, step), computed once per row, hashed with the token id.
LSGPT_HOST_DEVICE inline uint64_t sampling_stream(uint64_t seed, uint64_t step) {
  return sampling_mix(sampling_mix(seed) ^ step);
}

// Uniform in (0, 1), strictly: (2m + 1) / 2^24 for a 23-bit hash m of
// (stream, token), exact in float, so in [2^-24, 1 - 2^-24].
LSGPT_HOST_DEVICE inline float sampling_uniform(uint64_t stream, uint32_t token) {
  const uint64_t h = sampling_mix(stream ^ token);
  return float(2 * uint32_t(h >> 41) + 1) * 0x1.0p-24f;
}

LSGPT_HOST_DEVICE inline float sampling_uniform(uint64_t seed, uint64_t step, uint32_t token) {
  return sampling_uniform(sampling_stream(seed, step), token);
}

// Standard Gumbel noise from u in (0, 1): finite, in about [-2.81, 16.6].
LSGPT_HOST_DEVICE inline float sampling_gumbel(float u) { return -logf(-logf(u)); }

// Order-preserving key of a non-NaN float: a < b  <=>  key(a) < key(b), and
// -0 and +0 share the key of +0. Every non-NaN key is > 0, so 0 is a threshold
// that keeps everything.
LSGPT_HOST_DEVICE inline uint32_t sampling_key(float y) {
  if (y == 0.0f) y = 0.0f;
  uint32_t bits;
#ifdef __CUDA_ARCH__
  bits = __float_as_uint(y);
#else
  __builtin_memcpy(&bits, &y, sizeof bits);
#endif
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// floor(exp(y - y_max) * 2^24): the mass of a token as an integer in [0, 2^24],
// exactly 2^24 for y == y_max (also when both are infinite). Sums over a
// 50k-entry vocabulary stay far below 2^64.
constexpr float kSamplingMassScale = 16777216.0f;  // 2^24
LSGPT_HOST_DEVICE inline uint64_t sampling_mass(float y, float y_max) {
  const float d = y == y_max ? 0.0f : y - y_max;
  return uint64_t(expf(d) * kSamplingMassScale);
}

// How much of the mass `total` the nucleus must reach: ceil(top_p * total),
// at least 1 (top_p <= 0 keeps only the most likely tokens) and at most total.
LSGPT_HOST_DEVICE inline uint64_t sampling_nucleus_mass(float top_p, uint64_t total) {
  const double need = ceil(double(top_p) * double(total));
  if (!(need >= 1.0)) return 1;
  return need >= double(total) ? total : uint64_t(need);
}

}  // namespace lsgpt
