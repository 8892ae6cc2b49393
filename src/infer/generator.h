// Autoregressive generation from a prompt, with or without the KV cache
// (local heads keep only their last w keys/values in a ring buffer). Both
// paths produce the same tokens; the cache only makes each step O(w) for local
// heads instead of a full forward pass.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "infer/sampler.h"
#include "model/gpt.h"

namespace lsgpt {

struct GenerateOptions {
  SamplingSettings sampling;
  int max_new_tokens = 100;
  uint64_t seed = 1;
  bool use_cache = true;
  bool stop_at_eot = false;  // stop when <|endoftext|> is produced
};

// An empty prompt starts from the model's eot_token (<|endoftext|>), as GPT-2 does. Throws
// lsgpt::Error, before any work, when prompt + new tokens exceed the model's
// context + 1 (the last token is predicted from a full window). With the
// cache this runs the inference engine (src/infer/engine.h) with one slot;
// without it, the full forward pass for every token, the reference the
// engine is tested against.
// on_token is called with each new token as soon as it is chosen.
std::vector<int32_t> generate(GPT& model, std::span<const int32_t> prompt,
                              const GenerateOptions& options,
                              const std::function<void(int32_t)>& on_token = {});

}  // namespace lsgpt
