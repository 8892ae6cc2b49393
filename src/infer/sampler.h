// The user-facing sampling settings (temperature, top-k, top-p) and the
// host-side draw of one token with the same rule the backends' sample_tokens
// op applies (ops/sampling_spec.h): the engine samples on the device, the
// uncached reference path here, and both pick the same token from the same
// logits.
#pragma once

#include <cstdint>
#include <span>

#include "ops/sampling_spec.h"

namespace lsgpt {

// A temperature above 0 but below this samples greedily, as 0 does (z / T
// would overflow float).
inline constexpr double kGreedyBelow = 1e-30;

struct SamplingSettings {
  double temperature = 1.0;
  int top_k = 0;       // 0: no limit
  double top_p = 1.0;  // 1: no limit
  // Throws lsgpt::Error naming the flag (--temperature, --top-k, --top-p).
  void validate() const;
};

// The op's row settings for a sequence with this seed at draw number `step`.
SampleParams to_sample_params(const SamplingSettings& s, uint64_t seed, uint64_t step);

// One token from host logits [V] (draw number `step` of the seed's stream).
// Throws lsgpt::Error on NaN logits.
int32_t sample_token(std::span<const float> logits, const SamplingSettings& s, uint64_t seed,
                     uint64_t step);

}  // namespace lsgpt
