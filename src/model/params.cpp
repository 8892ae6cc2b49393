#include "model/params.h"

namespace lsgpt {

const ParamInfo* ParamLayout::find(const std::string& name) const {
  for (const ParamInfo& p : tensors)
    if (p.name == name) return &p;
  return nullptr;
}

ParamLayout make_param_layout(const ModelConfig& cfg) {
  ParamLayout lay;
  const int64_t C = cfg.d_model;
  auto add = [&](std::string name, std::vector<int64_t> shape, bool decay) {
    ParamInfo p;
    p.name = std::move(name);
    p.shape = std::move(shape);
    p.numel = 1;
    for (int64_t d : p.shape) p.numel *= size_t(d);
    p.offset = lay.total;
    p.decay = decay;
    lay.total += p.numel;
    lay.tensors.push_back(std::move(p));
    return int(lay.tensors.size()) - 1;
  };
  lay.wte = add("wte.weight", {cfg.padded_vocab(), C}, true);
  lay.wpe = add("wpe.weight", {cfg.seq_len, C}, true);
  for (int l = 0; l < cfg.n_layer; ++l) {
    const std::string h = "h." + std::to_string(l) + ".";
    LayerParams lp;
    lp.ln1_w = add(h + "ln_1.weight", {C}, false);
    lp.ln1_b = add(h + "ln_1.bias", {C}, false);
    lp.qkv_w = add(h + "attn.c_attn.weight", {3 * C, C}, true);
    lp.qkv_b = add(h + "attn.c_attn.bias", {3 * C}, false);
    if (cfg.qk_norm) {  // gains, like LayerNorm's: no weight decay
      lp.q_norm_w = add(h + "attn.q_norm.weight", {cfg.head_dim()}, false);
      lp.k_norm_w = add(h + "attn.k_norm.weight", {cfg.head_dim()}, false);
    }
    lp.attn_proj_w = add(h + "attn.c_proj.weight", {C, C}, true);
    lp.attn_proj_b = add(h + "attn.c_proj.bias", {C}, false);
    lp.ln2_w = add(h + "ln_2.weight", {C}, false);
    lp.ln2_b = add(h + "ln_2.bias", {C}, false);
    lp.fc_w = add(h + "mlp.c_fc.weight", {4 * C, C}, true);
    lp.fc_b = add(h + "mlp.c_fc.bias", {4 * C}, false);
    lp.fc_proj_w = add(h + "mlp.c_proj.weight", {C, 4 * C}, true);
    lp.fc_proj_b = add(h + "mlp.c_proj.bias", {C}, false);
    lay.layers.push_back(lp);
  }
  lay.lnf_w = add("ln_f.weight", {C}, false);
  lay.lnf_b = add("ln_f.bias", {C}, false);
  return lay;
}

}  // namespace lsgpt
