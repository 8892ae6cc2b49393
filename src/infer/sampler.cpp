#include "infer/sampler.h"

#include <cmath>

#include "core/error.h"
#include "ops/cpu/sampling.h"

namespace lsgpt {

void SamplingSettings::validate() const {
  if (!(temperature >= 0) || !std::isfinite(temperature))
    fail("--temperature must be >= 0 (0 is greedy), got ", temperature);
  if (top_k < 0) fail("--top-k must be >= 0 (0 disables it), got ", top_k);
  if (!(top_p > 0 && top_p <= 1)) fail("--top-p must be in (0, 1], got ", top_p);
}

SampleParams to_sample_params(const SamplingSettings& s, uint64_t seed, uint64_t step) {
  SampleParams p;
  // Below kGreedyBelow the op's z / temperature overflows float for any logit
  // above 3.4e8 * temperature; the infinities then tie, and the lowest id
  // with a positive logit won (temperature 1e-40 answered token 1, not the
  // argmax). The limit of sampling as the temperature falls is greedy.
  p.temperature = s.temperature < kGreedyBelow ? 0.f : float(s.temperature);
  p.top_k = s.top_k;
  p.top_p = float(s.top_p);
  p.active = 1;
  p.seed = seed;
  p.step = step;
  return p;
}

int32_t sample_token(std::span<const float> logits, const SamplingSettings& s, uint64_t seed,
                     uint64_t step) {
  return cpu::sample_row(logits.data(), int(logits.size()), to_sample_params(s, seed, step));
}

}  // namespace lsgpt
