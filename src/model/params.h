// Where each parameter tensor lives inside the model's one flat parameter
// buffer. The names are Hugging Face GPT-2's without the "transformer." prefix;
// shapes are lsgpt's [out, in] (HF's Conv1D stores the transpose).
// One flat buffer makes the optimizer, the gradient norm and checkpoints one
// loop each.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace lsgpt {

struct ParamInfo {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0;  // in elements, into the flat buffer
  size_t numel = 0;
  bool decay = false;  // AdamW weight decay: matrices and embeddings, not biases or norms
};

struct LayerParams {  // indices into the layout vector
  int ln1_w, ln1_b, qkv_w, qkv_b, attn_proj_w, attn_proj_b, ln2_w, ln2_b, fc_w, fc_b,
      fc_proj_w, fc_proj_b;
  // QK-norm gains [head_dim] (ModelConfig::qk_norm), adjacent in the layout;
  // -1 without QK-norm.
  int q_norm_w = -1, k_norm_w = -1;
};

struct ParamLayout {
  std::vector<ParamInfo> tensors;
  int wte = 0, wpe = 0, lnf_w = 0, lnf_b = 0;
  std::vector<LayerParams> layers;
  size_t total = 0;  // elements
  const ParamInfo& operator[](int i) const { return tensors.at(i); }
  const ParamInfo* find(const std::string& name) const;
};

ParamLayout make_param_layout(const ModelConfig& cfg);

}  // namespace lsgpt
