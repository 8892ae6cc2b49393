#include "infer/generator.h"

#include "core/error.h"
#include "infer/engine.h"

namespace lsgpt {

namespace {

SequenceRequest request_of(const ModelConfig& cfg, std::span<const int32_t> prompt,
                           const GenerateOptions& options) {
  SequenceRequest r;
  r.prompt.assign(prompt.begin(), prompt.end());
  r.sampling = options.sampling;
  r.seed = options.seed;
  r.max_new_tokens = options.max_new_tokens;
  r.stop_at_eot = options.stop_at_eot;
  return r;
}

// The reference path: the whole sequence through the full forward pass for
// every new token, sampled on the host with the engine's rule.
std::vector<int32_t> generate_uncached(GPT& model, SequenceRequest r,
                                       const std::function<void(int32_t)>& on_token) {
  const ModelConfig& cfg = model.config();
  const int32_t eot = cfg.eot_token;
  std::vector<int32_t> seq = r.prompt;
  if (seq.empty()) seq.push_back(eot);
  std::vector<int32_t> produced;
  for (int i = 0; i < r.max_new_tokens; ++i) {
    const std::vector<float> logits = model.last_logits(seq.data(), 1, int(seq.size()));
    const int32_t next = sample_token(logits, r.sampling, r.seed, uint64_t(i));
    produced.push_back(next);
    if (on_token) on_token(next);
    if (r.stop_at_eot && next == eot) break;
    seq.push_back(next);
  }
  return produced;
}

}  // namespace

std::vector<int32_t> generate(GPT& model, std::span<const int32_t> prompt,
                              const GenerateOptions& options,
                              const std::function<void(int32_t)>& on_token) {
  const ModelConfig& cfg = model.config();
  const SequenceRequest r = request_of(cfg, prompt, options);
  validate_request(cfg, cfg.seq_len, r, false);
  if (!options.use_cache) return generate_uncached(model, r, on_token);
  EngineOptions engine_options;
  engine_options.max_batch = 1;
  engine_options.max_context = cfg.seq_len;
  InferenceEngine engine(model, engine_options);
  const auto outputs = run_to_completion(engine, {r}, [&](int, const TokenEvent& e) {
    if (e.token >= 0 && on_token) on_token(e.token);
  });
  return outputs[0];
}

}  // namespace lsgpt
