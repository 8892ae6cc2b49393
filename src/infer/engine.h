// The inference engine: batched prefill, then decoding of many sequences at
// once over a KV cache allocated per slot up front (global heads keep every
// position, local heads a ring buffer of their last w), with continuous
// batching: a sequence that finishes frees its slot and a new one may join
// between steps. One step advances every running sequence by one token; on
// CUDA the whole step (all layers, classifier, sampling and the position
// bookkeeping) is one captured graph per batch-size bucket, and only the new
// token ids cross to the host. The same engine runs on the CPU backend, with
// no allocation per step. `lsgpt generate`, the benchmarks and the server
// drive it through this interface (docs/INFERENCE.md).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "infer/sampler.h"
#include "model/gpt.h"

namespace lsgpt {

struct EngineOptions {
  int max_batch = 1;      // slots: sequences held (and decoded) at once
  int max_context = 0;    // positions cached per sequence; 0: the model's seq_len
  bool use_graphs = true; // capture the decode step where the backend can
  // Turns a token into its text, for stop strings; may be empty when no
  // request uses stop strings.
  std::function<std::string(int32_t)> detokenize;
};

struct SequenceRequest {
  std::vector<int32_t> prompt;  // empty: start from the model's end-of-text token
  SamplingSettings sampling;
  uint64_t seed = 1;
  int max_new_tokens = 100;
  bool stop_at_eot = false;     // finish when the end-of-text token is produced
  std::vector<std::string> stop_strings;  // finish once the output text contains one
};

// The checks of InferenceEngine::validate for a context of `context`
// positions, usable before an engine exists (so a command can refuse bad
// input before it prints or allocates anything).
void validate_request(const ModelConfig& cfg, int context, const SequenceRequest& request,
                      bool can_detokenize);

enum class FinishReason { none, length, end_of_text, stop_string, cancelled };
const char* finish_reason_name(FinishReason reason);  // "length", "stop", ...

// One new token of one sequence. A finished sequence's last event has
// finished = true (its token may be -1 when no token was produced, e.g.
// max_new_tokens = 0 or a cancel).
struct TokenEvent {
  int sequence = -1;
  int32_t token = -1;
  bool finished = false;
  FinishReason reason = FinishReason::none;
};

class InferenceEngine {
 public:
  // Allocates the cache for options.max_batch slots of options.max_context
  // positions; throws lsgpt::Error (saying how much memory is needed) when
  // it does not fit, and for a batch < 1 or a context outside [1, seq_len].
  InferenceEngine(GPT& model, const EngineOptions& options);
  ~InferenceEngine();
  InferenceEngine(const InferenceEngine&) = delete;
  InferenceEngine& operator=(const InferenceEngine&) = delete;

  // KV cache bytes for these options, to size a batch before building one.
  // elem_bytes: 2 for the CUDA backend (bf16), 4 for the CPU (fp32).
  static size_t kv_cache_bytes(const ModelConfig& cfg, int max_batch, int max_context,
                               size_t elem_bytes = 2);

  // Device bytes an engine of these options reserves on this model's backend
  // (the decode state and the prefill of a full-context prompt): what the
  // constructor checks against free memory, for sizing a batch (lsgpt serve).
  static size_t required_bytes(GPT& model, int max_batch, int max_context);

  // Checks a request without running anything: prompt tokens inside the
  // vocabulary, prompt + new tokens within max_context + 1 (the last
  // prediction needs no cache position), sampling settings, stop strings
  // only with a detokenizer. Throws lsgpt::Error with one clear message.
  void validate(const SequenceRequest& request) const;

  // Validates, takes a free slot, runs the prompt through the model in one
  // batched forward pass that fills the slot's cache, and samples the first
  // token (reported by the next step()). Returns the sequence id. Throws when
  // no slot is free (free_slots() == 0) or the request is invalid.
  int add(const SequenceRequest& request);
  // Advances every running sequence by one token and returns the new tokens
  // (those chosen after add() first). Sequences that finish free their slots.
  std::vector<TokenEvent> step();
  // Stops a running sequence now and frees its slot; its finished event comes
  // with the next step(). Unknown or finished ids are ignored.
  void cancel(int sequence);

  // Device bytes this engine reserved room for (the decode state and the
  // prefill of a full-context prompt): what the constructor checked.
  size_t memory_bytes() const { return memory_bytes_; }

  int free_slots() const;
  int running() const;        // sequences holding a slot
  bool has_pending() const;   // events not yet returned by step()
  const EngineOptions& options() const { return options_; }
  GPT& model() { return model_; }

  // Tokens produced so far by a running sequence (for stop strings, tests).
  const std::vector<int32_t>& output(int sequence) const;

  struct Impl;  // the engine's state (engine.cpp)

 private:
  GPT& model_;
  EngineOptions options_;
  size_t memory_bytes_ = 0;
  std::unique_ptr<Impl> impl_;
};

// Runs requests to completion, at most max_batch at a time, admitting the
// next waiting request whenever a slot frees (continuous batching). on_event
// sees every event (sequence ids are the requests' indices). Returns each
// request's tokens.
std::vector<std::vector<int32_t>> run_to_completion(
    InferenceEngine& engine, const std::vector<SequenceRequest>& requests,
    const std::function<void(int request, const TokenEvent&)>& on_event = {});

}  // namespace lsgpt
