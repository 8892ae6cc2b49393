// Validation loss of a model over a token file: consecutive non-overlapping
// windows from the start, the last partial batch counted exactly.
#pragma once

#include <functional>

#include "data/token_file.h"
#include "model/gpt.h"

namespace lsgpt {

struct EvalResult {
  double loss = 0;        // mean cross-entropy per predicted token (nats)
  double perplexity = 0;  // exp(loss)
  long tokens = 0;        // predicted tokens
  long batches = 0;
  bool interrupted = false;  // `stop` said so before the last batch: the rest is partial
};

// max_batches <= 0 evaluates the whole file. `stop`, when given, is asked
// before each batch (a stop signal: an evaluation can outlast a scheduler's
// grace period).
EvalResult evaluate_tokens(GPT& model, const TokenFile& file, int B, int T, long max_batches,
                           const std::function<bool()>& stop = {});

}  // namespace lsgpt
