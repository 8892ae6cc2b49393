#include "infer/generator.h"

#include "core/error.h"
#include "core/rng.h"

namespace lsgpt {

std::vector<int32_t> generate(GPT& model, std::span<const int32_t> prompt,
                              const GenerateOptions& options,
                              const std::function<void(int32_t)>& on_token) {
  options.sampling.validate();
  const int context = model.config().seq_len;
  if (options.max_new_tokens < 0) fail("--tokens must be >= 0");
  std::vector<int32_t> seq(prompt.begin(), prompt.end());
  if (seq.empty()) seq.push_back(model.config().eot_token);
  const int prompt_len = int(seq.size());
  if (prompt_len > context)
    fail("the prompt is ", prompt_len, " tokens long but the model's context is ", context,
         " tokens");
  if (prompt_len + options.max_new_tokens > context)
    fail("the prompt (", prompt_len, " tokens) plus ", options.max_new_tokens,
         " new tokens exceed the model's context of ", context, " tokens; at most ",
         context - prompt_len, " new tokens fit");
  Rng rng(options.seed);
  const int V = model.config().vocab_size;
  std::vector<float> logits;
  std::unique_ptr<GPT::KVCache> cache;
  if (options.use_cache) {
    cache = model.make_kv_cache(1);
    for (int p = 0; p < prompt_len; ++p) logits = model.decode_step(*cache, &seq[p], p);
  }
  std::vector<int32_t> produced;
  for (int i = 0; i < options.max_new_tokens; ++i) {
    if (!options.use_cache) logits = model.last_logits(seq.data(), 1, int(seq.size()));
    const int32_t next = sample_token(std::span<const float>(logits.data(), V),
                                      options.sampling, rng);
    seq.push_back(next);
    produced.push_back(next);
    if (on_token) on_token(next);
    if (options.stop_at_eot && next == model.config().eot_token) break;
    if (options.use_cache && i + 1 < options.max_new_tokens)
      logits = model.decode_step(*cache, &next, int(seq.size()) - 1);
  }
  return produced;
}

}  // namespace lsgpt
