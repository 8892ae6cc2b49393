// CPU sampling op (Backend::sample_tokens); the rule is in ops/sampling_spec.h
// and its shared arithmetic in ops/sampling_noise.h. Logits are converted to
// float first, so the float and double backends choose the same tokens.
#pragma once

#include <cstdint>

#include "ops/sampling_spec.h"

namespace lsgpt::cpu {

// The token one row of logits (the first V entries) gives under p at step
// p.step. Throws lsgpt::Error when the row holds a NaN.
template <typename T>
int32_t sample_row(const T* logits, int V, const SampleParams& p);

// Row b reads logits + b * Vp. Idle rows (active == 0) get token -1 and
// nothing else changes. Active rows get their token and step += 1; where
// advance is non-null also advance[b] += 1, and where next_input is non-null
// next_input[b] = tokens[b] (the two are independent). A NaN in any active
// row throws lsgpt::Error before params, advance or next_input change.
template <typename T>
void sample_tokens(int32_t* tokens, const T* logits, SampleParams* params, int B, int V, int Vp,
                   int32_t* advance, int32_t* next_input);

}  // namespace lsgpt::cpu
