// The model's shape and attention settings, read from a JSON config file and
// overridden from the command line. Validation happens here, once, so every
// later stage may assume a consistent configuration.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "ops/attention_spec.h"

namespace lsgpt {

// Span/violation gradient scaling for the whole model (docs/SPAN.md).
struct SpanConfig {
  SpanTarget q, k, v;
  std::vector<bool> layers;  // per-layer on/off; empty means every layer
  bool any() const { return q.enabled || k.enabled || v.enabled; }
  // "off", or comma-separated target:basis:alpha_par:alpha_perp, e.g.
  // "q:cross:1.5:1,k:cross:1.5:1". Throws lsgpt::Error on anything invalid.
  static SpanConfig parse(const std::string& text);
  // Named settings chosen by the WikiText-2 study (docs/results/span-wikitext2.md).
  static SpanConfig preset(const std::string& name);
  std::string to_string() const;  // the parse() form, "off" when disabled
};

struct ModelConfig {
  int n_layer = 4;
  int n_head = 4;
  int d_model = 128;
  int seq_len = 256;          // context length = number of learned positions
  int vocab_size = 50257;     // GPT-2 BPE
  // The end-of-text token, which also starts an empty prompt (GPT-2's
  // <|endoftext|>). -1 until normalize_and_validate(), which applies the
  // default rule: 50256 when the vocabulary holds it (GPT-2's), otherwise the
  // last token, vocab_size - 1.
  int eot_token = -1;
  std::vector<int> n_local;   // local heads per layer (size n_layer after normalize())
  int window = 100;           // w: a local query sees itself and the w-1 keys before it
  SpanConfig span;
  // Stabilisers (docs/STABILISERS.md); both off by default, so a config or
  // checkpoint without them describes the plain model.
  // QK-norm: per-head RMSNorm (eps kQkNormEps) of q and k over the head
  // dimension, with learnable gains [head_dim] for q and for k per layer.
  bool qk_norm = false;
  // z-loss coefficient: the loss gains z_loss * mean over tokens of (log Z)^2.
  double z_loss = 0;
  static constexpr double kQkNormEps = 1e-6;
  static constexpr double kDefaultZLoss = 1e-4;  // PaLM's

  int head_dim() const { return d_model / n_head; }
  // Padded to a multiple of 64 so the classifier matmul runs on aligned tiles.
  int padded_vocab() const { return (vocab_size + 63) / 64 * 64; }
  SpanLayer span_layer(int layer) const;
  AttentionSpec attention_spec(int layer, int B, int T) const;
  size_t num_parameters() const;  // including padded vocabulary rows

  // Expands a single n_local to one entry per layer; then checks everything.
  void normalize_and_validate();

  nlohmann::json to_json() const;
  static ModelConfig from_json(const nlohmann::json& j);  // validates
  static ModelConfig load(const std::string& path);       // validates
  // The default when no n_local is given: every head but one local (the paper's setting).
  static int default_n_local(int n_head) { return n_head > 1 ? n_head - 1 : 0; }
  // GPT-2's <|endoftext|> (50256) if the vocabulary has it, else vocab_size - 1.
  static int default_eot_token(int vocab_size) {
    return vocab_size > kGpt2EndOfText ? kGpt2EndOfText : vocab_size - 1;
  }
  static constexpr int kGpt2EndOfText = 50256;
};

bool operator==(const SpanTarget& a, const SpanTarget& b);
bool operator==(const SpanConfig& a, const SpanConfig& b);
bool operator==(const ModelConfig& a, const ModelConfig& b);

}  // namespace lsgpt
