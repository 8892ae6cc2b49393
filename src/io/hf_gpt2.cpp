#include "io/hf_gpt2.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "core/error.h"
#include "io/atomic_file.h"
#include "model/params.h"

namespace lsgpt {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kPrefix = "transformer.";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_conv1d_weight(const std::string& name) {
  return ends_with(name, ".attn.c_attn.weight") || ends_with(name, ".attn.c_proj.weight") ||
         ends_with(name, ".mlp.c_fc.weight") || ends_with(name, ".mlp.c_proj.weight");
}

// transformers' attention-mask buffers, "h.N.attn.bias" and "h.N.attn.masked_bias":
// constants, not weights.
bool is_mask_buffer(const std::string& name) {
  if (name.rfind("h.", 0) != 0) return false;
  return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias");
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string name_list(const std::vector<std::string>& names) {
  std::string s;
  const size_t shown = std::min<size_t>(names.size(), 8);
  for (size_t i = 0; i < shown; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > shown) s += " and " + std::to_string(names.size() - shown) + " more";
  return s;
}

// src [R, K] row-major -> dst [K, R].
void transpose(float* dst, const float* src, int64_t R, int64_t K) {
  constexpr int64_t kBlock = 32;
  for (int64_t r0 = 0; r0 < R; r0 += kBlock)
    for (int64_t k0 = 0; k0 < K; k0 += kBlock)
      for (int64_t r = r0; r < std::min(R, r0 + kBlock); ++r)
        for (int64_t k = k0; k < std::min(K, k0 + kBlock); ++k) dst[k * R + r] = src[r * K + k];
}

int config_int(const json& cfg, const char* key, int fallback, const std::string& origin) {
  if (!cfg.contains(key) || cfg[key].is_null()) return fallback;
  const json& v = cfg[key];
  if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > (1 << 30))
    fail(origin, ": '", key, "' must be a positive integer, got ", v.dump());
  return v.get<int>();
}

// A special-token id of config.json (bos_token_id, eos_token_id): absent or
// null -> -1; otherwise a non-negative integer.
int config_token_id(const json& cfg, const char* key, const std::string& origin) {
  if (!cfg.contains(key) || cfg[key].is_null()) return -1;
  const json& v = cfg[key];
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (1 << 30))
    fail(origin, ": '", key, "' must be one non-negative token id, got ", v.dump());
  return v.get<int>();
}

// lsgpt has one special token that ends text and starts an empty prompt:
// eos_token_id, else bos_token_id, else the default rule (-1). Both given but
// different is refused, since lsgpt could honour only one of them.
int config_eot_token(const json& cfg, const std::string& origin) {
  const int eos = config_token_id(cfg, "eos_token_id", origin);
  const int bos = config_token_id(cfg, "bos_token_id", origin);
  if (eos >= 0 && bos >= 0 && eos != bos)
    fail(origin, ": bos_token_id ", bos, " differs from eos_token_id ", eos,
         "; lsgpt uses one end-of-text token, which also starts an empty prompt");
  return eos >= 0 ? eos : bos;
}

// Refuses GPT-2 variants that lsgpt's blocks would compute differently.
void check_gpt2_compatible(const json& cfg, int n_embd, const std::string& origin) {
  if (cfg.contains("model_type") && cfg["model_type"] != "gpt2")
    fail(origin, ": model_type is ", cfg["model_type"].dump(), ", not \"gpt2\"");
  if (cfg.contains("activation_function")) {
    const json& a = cfg["activation_function"];
    if (a != "gelu_new" && a != "gelu_pytorch_tanh" && a != "gelu_fast")
      fail(origin, ": activation_function ", a.dump(),
           " is not supported; lsgpt's MLP uses GPT-2's tanh GELU (\"gelu_new\")");
  }
  if (cfg.contains("layer_norm_epsilon")) {
    const json& e = cfg["layer_norm_epsilon"];
    if (!e.is_number() || std::abs(e.get<double>() - 1e-5) > 1e-12)
      fail(origin, ": layer_norm_epsilon ", e.dump(), " is not supported; lsgpt's LayerNorm uses 1e-5");
  }
  if (cfg.contains("n_inner") && !cfg["n_inner"].is_null() && cfg["n_inner"] != 4 * n_embd)
    fail(origin, ": n_inner ", cfg["n_inner"].dump(), " is not supported; lsgpt's MLP is 4 * n_embd = ",
         4 * n_embd, " wide");
  if (cfg.value("scale_attn_weights", true) != true)
    fail(origin, ": scale_attn_weights false is not supported");
  if (cfg.value("scale_attn_by_inverse_layer_idx", false) != false)
    fail(origin, ": scale_attn_by_inverse_layer_idx true is not supported");
  if (cfg.value("add_cross_attention", false) != false)
    fail(origin, ": add_cross_attention true is not supported");
}

json read_json_file(const std::string& path) {
  // An ifstream opens a directory, and parsing it threw a bare ios_base::failure.
  if (std::filesystem::is_directory(path)) fail("'", path, "' is a directory, not a config file");
  std::ifstream in(path);
  if (!in) fail("cannot open '", path, "'");
  json j = json::parse(in, nullptr, false);
  if (j.is_discarded()) fail("'", path, "' is not valid JSON");
  if (!j.is_object()) fail("'", path, "' is not a JSON object");
  return j;
}

}  // namespace

std::vector<HfTensorSpec> hf_gpt2_tensor_specs(const ModelConfig& cfg) {
  const ParamLayout layout = make_param_layout(cfg);
  std::vector<HfTensorSpec> specs;
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    const ParamInfo& p = layout.tensors[i];
    HfTensorSpec s;
    s.hf_name = kPrefix + p.name;
    s.param_index = int(i);
    s.hf_shape = p.shape;
    s.rows = p.shape[0];
    if (int(i) == layout.wte) {
      s.rows = cfg.vocab_size;
      s.hf_shape[0] = cfg.vocab_size;
    }
    if (is_conv1d_weight(p.name)) {
      s.transposed = true;
      s.hf_shape = {p.shape[1], p.shape[0]};
    }
    specs.push_back(std::move(s));
  }
  return specs;
}

json hf_gpt2_config(const ModelConfig& cfg) {
  const json model = cfg.to_json();
  const int special =
      cfg.eot_token >= 0 ? cfg.eot_token : ModelConfig::default_eot_token(cfg.vocab_size);
  return json{
      {"activation_function", "gelu_new"},
      {"architectures", {"GPT2LMHeadModel"}},
      {"attn_pdrop", 0.0},
      {"bos_token_id", special},
      {"embd_pdrop", 0.0},
      {"eos_token_id", special},
      {"initializer_range", 0.02},
      {"layer_norm_epsilon", 1e-5},
      {"model_type", "gpt2"},
      {"n_embd", cfg.d_model},
      {"n_head", cfg.n_head},
      {"n_inner", nullptr},
      {"n_layer", cfg.n_layer},
      {"n_positions", cfg.seq_len},
      {"reorder_and_upcast_attn", false},
      {"resid_pdrop", 0.0},
      {"scale_attn_by_inverse_layer_idx", false},
      {"scale_attn_weights", true},
      {"tie_word_embeddings", true},
      {"use_cache", true},
      {"vocab_size", cfg.vocab_size},
      {"lsgpt_n_local", cfg.n_local},
      {"lsgpt_window", cfg.window},
      {"lsgpt_span", model.contains("span") ? model["span"] : json(nullptr)},
      // Stabilisers (docs/STABILISERS.md); a stock GPT-2 config has neither: off.
      {"lsgpt_qk_norm", cfg.qk_norm},
      {"lsgpt_z_loss", cfg.z_loss},
  };
}

std::vector<safetensors::TensorF32> hf_gpt2_tensors(const ModelConfig& cfg,
                                                    std::span<const float> params) {
  const ParamLayout layout = make_param_layout(cfg);
  if (params.size() != layout.total)
    fail("export: ", params.size(), " parameters but the model config needs ", layout.total);
  std::vector<safetensors::TensorF32> out;
  for (const HfTensorSpec& s : hf_gpt2_tensor_specs(cfg)) {
    const ParamInfo& p = layout[s.param_index];
    safetensors::TensorF32 t;
    t.name = s.hf_name;
    t.shape = s.hf_shape;
    const size_t row_elems = p.shape.size() > 1 ? size_t(p.shape[1]) : 1;
    t.data = params.subspan(p.offset, size_t(s.rows) * row_elems);
    if (s.transposed) {
      const int64_t R = p.shape[0], K = p.shape[1];
      const float* src = params.data() + p.offset;
      t.fill = [src, R, K](std::span<float> dst) { transpose(dst.data(), src, R, K); };
    }
    out.push_back(std::move(t));
  }
  return out;
}

void export_hf_gpt2(const ModelConfig& cfg, std::span<const float> params,
                    const std::string& out_dir) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) fail("cannot create directory '", out_dir, "': ", ec.message());
  if (!fs::is_directory(out_dir)) fail("'", out_dir, "' is not a directory");
  // safetensors' own convention: transformers refuses files without format "pt".
  safetensors::write((fs::path(out_dir) / "model.safetensors").string(),
                     hf_gpt2_tensors(cfg, params), {{"format", "pt"}});
  write_file_atomic((fs::path(out_dir) / "config.json").string(),
                    hf_gpt2_config(cfg).dump(2) + "\n");
}

Checkpoint import_hf_gpt2(const safetensors::File& file, const json* config,
                          const HfImportOptions& options, const std::string& origin) {
  // Index the weights by their name without the "transformer." prefix.
  std::map<std::string, const safetensors::TensorView*> weights;
  std::map<std::string, std::string> original_name;
  const safetensors::TensorView* lm_head = nullptr;
  for (const safetensors::TensorView& t : file.tensors) {
    std::string name = t.name;
    if (name.rfind(kPrefix, 0) == 0) name = name.substr(std::string(kPrefix).size());
    if (name == "lm_head.weight") {
      lm_head = &t;
      continue;
    }
    if (is_mask_buffer(name)) continue;
    if (!weights.emplace(name, &t).second)
      fail(origin, ": tensor '", name, "' appears both with and without the 'transformer.' prefix");
    original_name[name] = t.name;
  }

  // Sizes: from config.json, else from the tensor shapes.
  json model;
  const std::string config_origin = origin + " config.json";
  if (config) {
    if (!config->is_object()) fail(config_origin, ": not a JSON object");
    const json& c = *config;
    const int n_embd = config_int(c, "n_embd", 768, config_origin);
    check_gpt2_compatible(c, n_embd, config_origin);
    if (c.contains("tie_word_embeddings") && c["tie_word_embeddings"] == false && !lm_head)
      fail(config_origin, ": tie_word_embeddings is false but there is no lm_head.weight");
    const int n_head = config_int(c, "n_head", 12, config_origin);
    if (options.n_head && *options.n_head != n_head)
      fail("--n-head ", *options.n_head, " contradicts n_head ", n_head, " in ", config_origin);
    model = {{"n_layer", config_int(c, "n_layer", 12, config_origin)},
             {"n_head", n_head},
             {"d_model", n_embd},
             {"seq_len", config_int(c, "n_positions", 1024, config_origin)},
             {"vocab_size", config_int(c, "vocab_size", 50257, config_origin)}};
    const int eot = config_eot_token(c, config_origin);
    if (eot >= model["vocab_size"].get<int>())
      fail(config_origin, ": the end-of-text token ", eot, " (eos_token_id/bos_token_id) is "
           "outside the vocabulary of ", model["vocab_size"].get<int>(), " tokens");
    if (eot >= 0) model["eot_token"] = eot;
  } else {
    auto it = weights.find("wte.weight");
    auto pos = weights.find("wpe.weight");
    if (it == weights.end() || it->second->shape.size() != 2)
      fail(origin, ": no 2-D wte.weight to infer the model size from (pass --config)");
    if (pos == weights.end() || pos->second->shape.size() != 2)
      fail(origin, ": no 2-D wpe.weight to infer the context length from (pass --config)");
    const int64_t C = it->second->shape[1];
    std::set<int64_t> layers;
    for (auto& [name, _] : weights) {
      if (name.rfind("h.", 0) != 0) continue;
      const size_t dot = name.find('.', 2);
      try {
        layers.insert(std::stoll(name.substr(2, dot - 2)));
      } catch (const std::exception&) {
      }  // an odd name is reported below as unexpected
    }
    if (layers.empty()) fail(origin, ": no transformer blocks (h.N.*) found");
    if (*layers.rbegin() + 1 != int64_t(layers.size()) || *layers.begin() != 0)
      fail(origin, ": transformer blocks are not numbered 0..", layers.size() - 1,
           " (found h.", *layers.begin(), " to h.", *layers.rbegin(), ")");
    int n_head = 0;
    if (options.n_head) {
      n_head = *options.n_head;
    } else if (C % 64 == 0) {
      n_head = int(C / 64);  // every GPT-2 size uses 64-wide heads
    } else {
      fail(origin, ": cannot infer n_head from d_model ", C, " (not a multiple of 64); pass --config "
           "or --n-head");
    }
    model = {{"n_layer", *layers.rbegin() + 1},
             {"n_head", n_head},
             {"d_model", C},
             {"seq_len", pos->second->shape[0]},
             {"vocab_size", it->second->shape[0]}};
  }

  // Attention settings: the options, else config.json's lsgpt_* keys, else MHSA.
  model["n_local"] = 0;
  if (config && config->contains("lsgpt_n_local")) model["n_local"] = (*config)["lsgpt_n_local"];
  if (options.n_local) model["n_local"] = *options.n_local;
  if (config && config->contains("lsgpt_window")) model["window"] = (*config)["lsgpt_window"];
  if (options.window) model["window"] = *options.window;
  if (config && config->contains("lsgpt_span") && !(*config)["lsgpt_span"].is_null())
    model["span"] = (*config)["lsgpt_span"];
  // QK-norm: config.json's lsgpt_qk_norm, else whether the file has its gains.
  if (config && config->contains("lsgpt_qk_norm")) model["qk_norm"] = (*config)["lsgpt_qk_norm"];
  else if (weights.count("h.0.attn.q_norm.weight")) model["qk_norm"] = true;
  if (config && config->contains("lsgpt_z_loss")) model["z_loss"] = (*config)["lsgpt_z_loss"];

  Checkpoint ck;
  try {
    ck.model = ModelConfig::from_json(model);
  } catch (const Error& e) {
    fail(origin, ": cannot import: ", e.what());
  }

  // Every weight the model needs, and nothing else.
  if (size_t(ck.model.n_layer) > weights.size())
    fail(origin, ": the model has ", ck.model.n_layer, " layers but the file holds only ",
         weights.size(), " weight tensors");
  const std::vector<HfTensorSpec> specs = hf_gpt2_tensor_specs(ck.model);
  std::vector<std::string> missing, unexpected;
  std::set<std::string> needed;
  for (const HfTensorSpec& s : specs) {
    const std::string name = s.hf_name.substr(std::string(kPrefix).size());
    needed.insert(name);
    if (!weights.count(name)) missing.push_back(s.hf_name);
  }
  for (auto& [name, _] : weights)
    if (!needed.count(name)) unexpected.push_back(original_name[name]);
  if (!missing.empty() || !unexpected.empty()) {
    std::string msg = origin + ": does not match a GPT-2 model with n_layer " +
                      std::to_string(ck.model.n_layer) + ", d_model " +
                      std::to_string(ck.model.d_model) + ":";
    if (!missing.empty()) msg += " missing tensors: " + name_list(missing) + ".";
    if (!unexpected.empty()) msg += " unexpected tensors: " + name_list(unexpected) + ".";
    fail(msg);
  }

  auto weight_of = [&](const HfTensorSpec& s) -> const safetensors::TensorView& {
    return *weights.at(s.hf_name.substr(std::string(kPrefix).size()));
  };
  for (const HfTensorSpec& s : specs) {
    const safetensors::TensorView& t = weight_of(s);
    if (t.shape != s.hf_shape)
      fail(origin, ": tensor '", t.name, "' has shape ", shape_text(t.shape), " but the model needs ",
           shape_text(s.hf_shape));
  }

  const ParamLayout layout = make_param_layout(ck.model);
  ck.params.assign(layout.total, 0.0f);  // wte's padded rows stay zero
  for (const HfTensorSpec& s : specs) {
    const safetensors::TensorView& t = weight_of(s);
    const std::vector<float> values = safetensors::to_float(t, origin);
    const ParamInfo& p = layout[s.param_index];
    float* dst = ck.params.data() + p.offset;
    if (s.transposed) transpose(dst, values.data(), s.hf_shape[0], s.hf_shape[1]);
    else std::copy(values.begin(), values.end(), dst);
  }
  if (lm_head) {
    const HfTensorSpec& wte = specs[layout.wte];
    const std::vector<float> head = safetensors::to_float(*lm_head, origin);
    const float* emb = ck.params.data() + layout[layout.wte].offset;
    bool same = lm_head->shape == wte.hf_shape;
    for (size_t i = 0; same && i < head.size(); ++i) same = head[i] == emb[i];
    if (!same)
      fail(origin, ": lm_head.weight differs from wte.weight; lsgpt ties the output embedding "
           "to the input embedding, so an untied model cannot be imported");
  }
  return ck;
}

Checkpoint import_hf_gpt2_path(const std::string& in, const std::string& config_path,
                               const HfImportOptions& options) {
  std::string weights_path = in, config_file = config_path;
  if (fs::is_directory(in)) {
    weights_path = (fs::path(in) / "model.safetensors").string();
    if (!fs::exists(weights_path)) {
      if (fs::exists(fs::path(in) / "model.safetensors.index.json"))
        fail("'", in, "' holds a sharded checkpoint (model.safetensors.index.json); lsgpt import "
             "reads a single model.safetensors");
      fail("'", in, "' has no model.safetensors");
    }
    if (config_file.empty() && fs::exists(fs::path(in) / "config.json"))
      config_file = (fs::path(in) / "config.json").string();
  } else if (!fs::exists(in)) {
    fail("cannot open '", in, "': no such file or directory");
  }
  std::optional<json> config;
  if (!config_file.empty()) config = read_json_file(config_file);
  MappedFile mapped(weights_path);
  const safetensors::File file = safetensors::parse(mapped.bytes(), weights_path);
  return import_hf_gpt2(file, config ? &*config : nullptr, options, weights_path);
}

std::vector<int> parse_int_list(const std::string& text, const std::string& what) {
  std::vector<int> out;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? std::string::npos
                                                                            : comma - start);
    size_t used = 0;
    int value = 0;
    try {
      value = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size())
      fail(what, ": '", text, "' must be an integer or a comma-separated list of integers");
    out.push_back(value);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

}  // namespace lsgpt
