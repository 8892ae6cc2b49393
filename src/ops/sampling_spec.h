// Per-row settings of the sampling op (Backend::sample_tokens), laid out as a
// plain struct so a backend can read a row table straight from its memory.
#pragma once

#include <cstdint>

namespace lsgpt {

// How one sequence picks its next token from a row of logits z (the first V
// columns):
//   temperature 0: argmax, lowest id among ties.
//   otherwise, with y = z / temperature: keep the tokens whose y is at least
//   the k-th largest y (top_k > 0; ties at the boundary are all kept), then
//   the smallest set of the highest y whose probability mass reaches top_p
//   (again keeping ties); draw from softmax(y) over the kept tokens by the
//   Gumbel-max trick, the noise of token i being a pure function of
//   (seed, step, i). Every choice is exact and order-independent, so the CPU
//   and CUDA backends pick the same token from the same logits up to the
//   rounding of exp/log.
// step counts the draws of this sequence: the op increments it after each
// draw, so one table serves consecutive steps without the host.
struct SampleParams {
  float temperature = 0.f;
  int32_t top_k = 0;     // 0: no limit
  float top_p = 1.f;     // 1: no limit
  int32_t active = 0;    // 0: idle row, token -1, step unchanged
  uint64_t seed = 0;
  uint64_t step = 0;
};

}  // namespace lsgpt
