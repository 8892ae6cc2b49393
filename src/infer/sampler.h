// Picks the next token from a row of logits: temperature, top-k, top-p
// (nucleus), in that order. Temperature 0 is greedy (argmax).
#pragma once

#include <cstdint>
#include <span>

#include "core/rng.h"

namespace lsgpt {

struct SamplingSettings {
  double temperature = 1.0;
  int top_k = 0;       // 0: no limit
  double top_p = 1.0;  // 1: no limit
  void validate() const;
};

int32_t sample_token(std::span<const float> logits, const SamplingSettings& s, Rng& rng);

}  // namespace lsgpt
