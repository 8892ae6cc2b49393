// Hugging Face GPT-2 interop: lsgpt's parameters under transformers' names and
// layouts (model.safetensors + config.json), and back.
//
// lsgpt stores every linear weight as [out, in]; GPT-2's attn.c_attn,
// attn.c_proj, mlp.c_fc and mlp.c_proj are Conv1D modules that store [in, out],
// so those four are transposed on the way out and in. lsgpt pads the
// vocabulary to a multiple of 64; the export drops the padded rows of wte and
// the import adds them back as zeros. The output embedding is tied to wte, so
// there is no lm_head.weight. lsgpt's attention settings travel as extra
// config.json keys (lsgpt_n_local, lsgpt_window, lsgpt_span) that transformers
// keeps as plain attributes; so do the stabilisers (lsgpt_qk_norm,
// lsgpt_z_loss), and a QK-norm model's gains travel as
// h.N.attn.q_norm.weight / k_norm.weight [head_dim] (stock transformers'
// GPT-2 has no QK-norm, so it cannot run such a model as it stands).
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace lsgpt {

// One tensor as Hugging Face names and shapes it, e.g.
// "transformer.h.3.attn.c_attn.weight" [C, 3C], and where its values come from.
struct HfTensorSpec {
  std::string hf_name;           // with the "transformer." prefix
  std::vector<int64_t> hf_shape;
  int param_index = 0;           // into make_param_layout(cfg).tensors
  bool transposed = false;       // Conv1D weight: HF [in, out] = lsgpt [out, in]^T
  int64_t rows = 0;              // leading rows of the lsgpt tensor used (wte: vocab_size)
};

std::vector<HfTensorSpec> hf_gpt2_tensor_specs(const ModelConfig& cfg);

// config.json contents: a transformers GPT2Config plus the lsgpt_* keys.
nlohmann::json hf_gpt2_config(const ModelConfig& cfg);

// The tensors of an export, converted when written (params stays borrowed).
std::vector<safetensors::TensorF32> hf_gpt2_tensors(const ModelConfig& cfg,
                                                    std::span<const float> params);

// Writes DIR/model.safetensors and DIR/config.json (each atomically; creates
// DIR). The same model and parameters always give the same bytes.
void export_hf_gpt2(const ModelConfig& cfg, std::span<const float> params,
                    const std::string& out_dir);

struct HfImportOptions {
  std::optional<std::vector<int>> n_local;  // one entry (every layer) or one per layer
  std::optional<int> window;
  std::optional<int> n_head;                // when there is no config.json
};

// Builds a step-0 checkpoint without optimizer state from parsed safetensors
// tensors and an optional config.json (null when there is none: sizes are then
// inferred from the shapes, n_head as d_model / 64 unless given).
Checkpoint import_hf_gpt2(const safetensors::File& file, const nlohmann::json* config,
                          const HfImportOptions& options, const std::string& origin);

// `in` is a directory holding model.safetensors (and config.json, used when
// present) or a .safetensors file; config_path, when non-empty, overrides.
Checkpoint import_hf_gpt2_path(const std::string& in, const std::string& config_path,
                               const HfImportOptions& options);

// "4" or "3,3,2,2" (for --n-local); throws lsgpt::Error otherwise.
std::vector<int> parse_int_list(const std::string& text, const std::string& what);

}  // namespace lsgpt
