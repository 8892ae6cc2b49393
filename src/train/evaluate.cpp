#include "train/evaluate.h"

#include <cmath>
#include <vector>

#include "data/batch_sampler.h"

namespace lsgpt {

EvalResult evaluate_tokens(GPT& model, const TokenFile& file, int B, int T, long max_batches,
                           const std::function<bool()>& stop) {
  EvalBatches batches(file, B, T, max_batches);
  EvalResult r;
  std::vector<int32_t> inputs(size_t(B) * T), targets(size_t(B) * T);
  double total = 0;
  long tokens = 0;
  for (long k = 0; k < batches.count(); ++k) {
    if (stop && stop()) {
      r.interrupted = true;
      break;
    }
    batches.fill(k, inputs.data(), targets.data());
    long n = 0;
    for (int32_t t : targets) n += t >= 0;
    if (n == 0) continue;
    total += model.evaluate(inputs.data(), targets.data(), B, T) * double(n);
    tokens += n;
  }
  r.tokens = tokens;
  r.batches = batches.count();
  r.loss = tokens ? total / double(tokens) : NAN;
  r.perplexity = std::exp(r.loss);
  return r;
}

}  // namespace lsgpt
