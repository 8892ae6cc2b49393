// Hugging Face GPT-2 interop through the library API: names, Conv1D
// transposes, vocabulary padding, config.json, determinism, export -> import
// -> export identity, and import's refusals.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/hf_gpt2.h"
#include "io_test_support.h"
#include "model/params.h"

namespace lsgpt {
namespace {
namespace test_hf_gpt2 {

using json = nlohmann::json;
namespace st = safetensors;
using testing::read_bytes;
using testing::ScratchDir;
using testing::tiny_config;

template <typename Fn>
void expect_error(Fn&& fn, std::vector<std::string> fragments) {
  try {
    fn();
    ADD_FAILURE() << "expected an lsgpt::Error containing '" << fragments[0] << "'";
  } catch (const Error& e) {
    for (const std::string& f : fragments)
      EXPECT_NE(std::string(e.what()).find(f), std::string::npos)
          << "message: " << e.what() << "\nmissing: " << f;
  }
}

// Owns converted copies of an export's tensors so tests can edit the set.
struct TensorSet {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<std::vector<float>> values;

  static TensorSet of_export(const ModelConfig& cfg, const std::vector<float>& params) {
    TensorSet s;
    const auto bytes = st::serialize(hf_gpt2_tensors(cfg, params), {});
    const st::File f = st::parse(bytes, "export");
    for (const st::TensorView& t : f.tensors) s.add(t.name, t.shape, st::to_float(t, "export"));
    return s;
  }
  void add(std::string name, std::vector<int64_t> shape, std::vector<float> v) {
    names.push_back(std::move(name)), shapes.push_back(std::move(shape)), values.push_back(std::move(v));
  }
  void remove(const std::string& name) {
    for (size_t i = 0; i < names.size(); ++i)
      if (names[i] == name) {
        names.erase(names.begin() + i), shapes.erase(shapes.begin() + i), values.erase(values.begin() + i);
        return;
      }
    ADD_FAILURE() << "no tensor " << name;
  }
  const std::vector<float>& at(const std::string& name) const {
    for (size_t i = 0; i < names.size(); ++i)
      if (names[i] == name) return values[i];
    throw std::runtime_error("no tensor " + name);
  }
  void write(const std::string& path) const {
    std::vector<st::TensorF32> t;
    for (size_t i = 0; i < names.size(); ++i) t.push_back({names[i], shapes[i], values[i], {}});
    st::write(path, t, {{"format", "pt"}});
  }
};

ModelConfig gpt2_small() {
  ModelConfig c;
  c.n_layer = 12, c.n_head = 12, c.d_model = 768, c.seq_len = 1024, c.vocab_size = 50257;
  c.n_local = {0};
  c.normalize_and_validate();
  return c;
}

TEST(HfGpt2, NamesAndShapesMatchTransformersGpt2Small) {
  const auto specs = hf_gpt2_tensor_specs(gpt2_small());
  ASSERT_EQ(specs.size(), 4u + 12u * 12u);
  int64_t total = 0;
  std::map<std::string, std::vector<int64_t>> shape;
  for (const auto& s : specs) {
    int64_t n = 1;
    for (int64_t d : s.hf_shape) n *= d;
    total += n;
    shape[s.hf_name] = s.hf_shape;
  }
  // GPT2LMHeadModel.from_pretrained("gpt2").num_parameters(): lm_head is tied.
  EXPECT_EQ(total, 124439808);
  EXPECT_EQ(shape.at("transformer.wte.weight"), (std::vector<int64_t>{50257, 768}));
  EXPECT_EQ(shape.at("transformer.wpe.weight"), (std::vector<int64_t>{1024, 768}));
  EXPECT_EQ(shape.at("transformer.h.0.ln_1.weight"), (std::vector<int64_t>{768}));
  EXPECT_EQ(shape.at("transformer.h.5.attn.c_attn.weight"), (std::vector<int64_t>{768, 2304}));
  EXPECT_EQ(shape.at("transformer.h.5.attn.c_attn.bias"), (std::vector<int64_t>{2304}));
  EXPECT_EQ(shape.at("transformer.h.5.attn.c_proj.weight"), (std::vector<int64_t>{768, 768}));
  EXPECT_EQ(shape.at("transformer.h.11.mlp.c_fc.weight"), (std::vector<int64_t>{768, 3072}));
  EXPECT_EQ(shape.at("transformer.h.11.mlp.c_proj.weight"), (std::vector<int64_t>{3072, 768}));
  EXPECT_EQ(shape.at("transformer.ln_f.bias"), (std::vector<int64_t>{768}));
  EXPECT_EQ(shape.count("lm_head.weight"), 0u);
}

TEST(HfGpt2, ExportTransposesConv1DWeightsAndDropsVocabPadding) {
  const ModelConfig cfg = tiny_config();
  const std::vector<float> params = testing::random_params(cfg, 11);
  const ParamLayout lay = make_param_layout(cfg);
  const TensorSet hf = TensorSet::of_export(cfg, params);
  ASSERT_EQ(hf.names.size(), lay.tensors.size());
  for (const ParamInfo& p : lay.tensors) {
    const std::string hf_name = "transformer." + p.name;
    const std::vector<float>& got = hf.at(hf_name);
    const float* src = params.data() + p.offset;
    const bool conv1d = p.name.find("c_attn.weight") != std::string::npos ||
                        p.name.find("c_proj.weight") != std::string::npos ||
                        p.name.find("c_fc.weight") != std::string::npos;
    if (conv1d) {
      const int64_t R = p.shape[0], K = p.shape[1];
      ASSERT_EQ(got.size(), size_t(R * K));
      for (int64_t r = 0; r < R; ++r)
        for (int64_t k = 0; k < K; ++k)
          ASSERT_EQ(got[k * R + r], src[r * K + k]) << hf_name << " at " << r << "," << k;
    } else if (p.name == "wte.weight") {
      ASSERT_EQ(got.size(), size_t(cfg.vocab_size) * cfg.d_model);  // 100 rows, not 128
      EXPECT_TRUE(std::equal(got.begin(), got.end(), src));
    } else {
      ASSERT_EQ(got.size(), p.numel) << hf_name;
      EXPECT_TRUE(std::equal(got.begin(), got.end(), src)) << hf_name;
    }
  }
}

TEST(HfGpt2, ConfigJsonIsAGpt2ConfigWithLsgptKeys) {
  ModelConfig cfg = tiny_config({1, 2}, 3);
  json c = hf_gpt2_config(cfg);
  EXPECT_EQ(c["model_type"], "gpt2");
  EXPECT_EQ(c["architectures"], json::array({"GPT2LMHeadModel"}));
  EXPECT_EQ(c["n_embd"], 8);
  EXPECT_EQ(c["n_layer"], 2);
  EXPECT_EQ(c["n_head"], 2);
  EXPECT_EQ(c["n_positions"], 16);
  EXPECT_EQ(c["vocab_size"], 100);
  EXPECT_EQ(c["activation_function"], "gelu_new");
  EXPECT_EQ(c["layer_norm_epsilon"], 1e-5);
  EXPECT_EQ(c["tie_word_embeddings"], true);
  EXPECT_EQ(c["resid_pdrop"], 0.0);
  EXPECT_EQ(c["embd_pdrop"], 0.0);
  EXPECT_EQ(c["attn_pdrop"], 0.0);
  EXPECT_EQ(c["eos_token_id"], 99);  // 50256 does not exist in a 100-token vocabulary
  EXPECT_EQ(c["lsgpt_n_local"], json::array({1, 2}));
  EXPECT_EQ(c["lsgpt_window"], 3);
  EXPECT_TRUE(c["lsgpt_span"].is_null());
  cfg.span = SpanConfig::parse("q:cross:1.5:1");
  c = hf_gpt2_config(cfg);
  EXPECT_EQ(c["lsgpt_span"]["q"]["alpha_par"], 1.5);
  EXPECT_EQ(hf_gpt2_config(gpt2_small())["eos_token_id"], 50256);
}

TEST(HfGpt2, SpecialTokensComeFromAndGoToTheModelConfig) {
  ScratchDir dir;
  ModelConfig cfg = tiny_config({0}, 100);
  cfg.eot_token = 7;
  const std::vector<float> params = testing::random_params(cfg, 16);
  export_hf_gpt2(cfg, params, dir.file("a"));
  json c = json::parse(std::ifstream(dir.file("a/config.json")));
  EXPECT_EQ(c["eos_token_id"], 7);
  EXPECT_EQ(c["bos_token_id"], 7);
  EXPECT_EQ(import_hf_gpt2_path(dir.file("a"), "", {}).model.eot_token, 7);

  auto import_with = [&](const json& changes) {
    json d = c;
    for (auto& [key, value] : changes.items()) {
      if (value.is_string() && value == "erase") d.erase(key);
      else d[key] = value;
    }
    write_file_atomic(dir.file("c.json"), d.dump());
    return import_hf_gpt2_path(dir.file("a/model.safetensors"), dir.file("c.json"), {});
  };
  EXPECT_EQ(import_with({{"eos_token_id", 12}, {"bos_token_id", nullptr}}).model.eot_token, 12);
  EXPECT_EQ(import_with({{"eos_token_id", "erase"}, {"bos_token_id", 13}}).model.eot_token, 13);
  // Neither: the default rule (the last of 100 tokens).
  EXPECT_EQ(import_with({{"eos_token_id", "erase"}, {"bos_token_id", "erase"}}).model.eot_token,
            99);
  expect_error([&] { import_with({{"eos_token_id", 100}, {"bos_token_id", 100}}); },
               {"end-of-text token 100", "vocabulary of 100"});
  expect_error([&] { import_with({{"eos_token_id", 1}, {"bos_token_id", 2}}); },
               {"bos_token_id 2 differs from eos_token_id 1"});
  expect_error([&] { import_with({{"eos_token_id", json::array({1, 2})}}); },
               {"eos_token_id", "one non-negative token id"});
}

TEST(HfGpt2, ExportIsDeterministicAndRoundTripsByteIdentically) {
  ScratchDir dir;
  ModelConfig cfg = tiny_config({1, 2}, 3);
  cfg.span = SpanConfig::parse("q:cross:1.5:1,k:cross:1.5:1");
  const std::vector<float> params = testing::random_params(cfg, 12);
  export_hf_gpt2(cfg, params, dir.file("a"));
  export_hf_gpt2(cfg, params, dir.file("b"));
  for (const char* f : {"model.safetensors", "config.json"})
    EXPECT_EQ(read_bytes(dir.file(std::string("a/") + f)), read_bytes(dir.file(std::string("b/") + f)))
        << f;

  const Checkpoint ck = import_hf_gpt2_path(dir.file("a"), "", {});
  EXPECT_TRUE(ck.model == cfg) << ck.model.to_json().dump();
  EXPECT_EQ(ck.params, params);  // padded wte rows come back as zeros
  EXPECT_EQ(ck.step, 0);
  EXPECT_TRUE(ck.adam_m.empty() && ck.adam_v.empty());
  export_hf_gpt2(ck.model, ck.params, dir.file("c"));
  for (const char* f : {"model.safetensors", "config.json"})
    EXPECT_EQ(read_bytes(dir.file(std::string("a/") + f)), read_bytes(dir.file(std::string("c/") + f)))
        << f;
  EXPECT_EQ(std::vector<std::string>({"a", "b", "c"}), dir.entries());
}

// The stabilisers travel in config.json (lsgpt_qk_norm, lsgpt_z_loss) and
// the QK-norm gains as tensors; a stock GPT-2 config has them off.
TEST(HfGpt2, StabilisersRoundTripAndAreOffForStockGpt2) {
  ScratchDir dir;
  ModelConfig cfg = tiny_config({1, 2}, 3);
  cfg.qk_norm = true;
  cfg.z_loss = 1e-4;
  const std::vector<float> params = testing::random_params(cfg, 14);
  export_hf_gpt2(cfg, params, dir.file("a"));
  const json config = hf_gpt2_config(cfg);
  EXPECT_EQ(config["lsgpt_qk_norm"], true);
  EXPECT_EQ(config["lsgpt_z_loss"], 1e-4);
  const Checkpoint ck = import_hf_gpt2_path(dir.file("a"), "", {});
  EXPECT_TRUE(ck.model == cfg) << ck.model.to_json().dump();
  EXPECT_EQ(ck.params, params);
  // Without config.json the gains alone say QK-norm is on.
  std::filesystem::remove(dir.file("a/config.json"));
  HfImportOptions sizes;
  sizes.n_head = cfg.n_head;  // d_model 8 is no multiple of GPT-2's 64-wide heads
  EXPECT_TRUE(import_hf_gpt2_path(dir.file("a"), "", sizes).model.qk_norm);

  const json stock = hf_gpt2_config(gpt2_small());
  EXPECT_EQ(stock["lsgpt_qk_norm"], false);
  EXPECT_EQ(stock["lsgpt_z_loss"], 0.0);
  ModelConfig plain = tiny_config({0, 0}, 3);
  export_hf_gpt2(plain, testing::random_params(plain, 15), dir.file("b"));
  json stock_keys_only = hf_gpt2_config(plain);  // as transformers writes it: no lsgpt keys
  stock_keys_only.erase("lsgpt_qk_norm"), stock_keys_only.erase("lsgpt_z_loss");
  write_file_atomic(dir.file("b/config.json"), stock_keys_only.dump());
  const Checkpoint p = import_hf_gpt2_path(dir.file("b"), "", {});
  EXPECT_FALSE(p.model.qk_norm);
  EXPECT_EQ(p.model.z_loss, 0.0);
}

TEST(HfGpt2, ImportTurnsHeadsLocalOnRequest) {
  ScratchDir dir;
  const ModelConfig mhsa = tiny_config({0}, 100);
  const std::vector<float> params = testing::random_params(mhsa, 13);
  export_hf_gpt2(mhsa, params, dir.path().string());
  const Checkpoint plain = import_hf_gpt2_path(dir.path().string(), "", {});
  EXPECT_EQ(plain.model.n_local, (std::vector<int>{0, 0}));

  HfImportOptions every;
  every.n_local = std::vector<int>{1};
  every.window = 4;
  const Checkpoint ls = import_hf_gpt2_path(dir.path().string(), "", every);
  EXPECT_EQ(ls.model.n_local, (std::vector<int>{1, 1}));
  EXPECT_EQ(ls.model.window, 4);
  EXPECT_EQ(ls.params, params);  // same weights, different attention

  HfImportOptions per_layer;
  per_layer.n_local = parse_int_list("2,0", "--n-local");
  const Checkpoint mixed = import_hf_gpt2_path(dir.path().string(), "", per_layer);
  EXPECT_EQ(mixed.model.n_local, (std::vector<int>{2, 0}));
  EXPECT_EQ(mixed.model.window, 100);

  HfImportOptions too_many;
  too_many.n_local = std::vector<int>{3};
  expect_error([&] { import_hf_gpt2_path(dir.path().string(), "", too_many); }, {"n_local"});
  HfImportOptions wrong_count;
  wrong_count.n_local = std::vector<int>{1, 1, 1};
  expect_error([&] { import_hf_gpt2_path(dir.path().string(), "", wrong_count); },
               {"n_local lists 3 layers"});
  expect_error([] { parse_int_list("1,x", "--n-local"); }, {"--n-local", "1,x"});
  expect_error([] { parse_int_list("", "--n-local"); }, {"--n-local"});
}

TEST(HfGpt2, ImportInfersSizesWithoutConfigAndAcceptsHubNaming) {
  ScratchDir dir;
  ModelConfig cfg;
  cfg.n_layer = 1, cfg.n_head = 2, cfg.d_model = 128, cfg.seq_len = 16, cfg.vocab_size = 100;
  cfg.n_local = {0};
  cfg.normalize_and_validate();
  const std::vector<float> params = testing::random_params(cfg, 14);
  TensorSet hf = TensorSet::of_export(cfg, params);
  // The hub's gpt2 files: no "transformer." prefix, mask buffers, a tied lm_head.
  for (std::string& n : hf.names) n = n.substr(std::string("transformer.").size());
  hf.add("h.0.attn.bias", {1, 1, 16, 16}, std::vector<float>(256, 1.0f));
  hf.add("h.0.attn.masked_bias", {}, {-1e4f});
  hf.add("lm_head.weight", {100, 128}, hf.at("wte.weight"));
  hf.write(dir.file("hub.safetensors"));

  const Checkpoint ck = import_hf_gpt2_path(dir.file("hub.safetensors"), "", {});
  EXPECT_EQ(ck.model.n_layer, 1);
  EXPECT_EQ(ck.model.n_head, 2);  // d_model / 64
  EXPECT_EQ(ck.model.d_model, 128);
  EXPECT_EQ(ck.model.seq_len, 16);
  EXPECT_EQ(ck.model.vocab_size, 100);
  EXPECT_EQ(ck.params, params);

  HfImportOptions four_heads;
  four_heads.n_head = 4;
  EXPECT_EQ(import_hf_gpt2_path(dir.file("hub.safetensors"), "", four_heads).model.n_head, 4);

  hf.remove("lm_head.weight");
  std::vector<float> untied = hf.at("wte.weight");
  untied[7] += 1.0f;
  hf.add("lm_head.weight", {100, 128}, untied);
  hf.write(dir.file("untied.safetensors"));
  expect_error([&] { import_hf_gpt2_path(dir.file("untied.safetensors"), "", {}); },
               {"lm_head.weight differs from wte.weight"});
}

TEST(HfGpt2, ImportRefusesMissingExtraAndMisshapenTensors) {
  ScratchDir dir;
  const ModelConfig cfg = tiny_config({0});
  const std::vector<float> params = testing::random_params(cfg, 15);
  export_hf_gpt2(cfg, params, dir.file("good"));
  const std::string config = dir.file("good/config.json");
  TensorSet hf = TensorSet::of_export(cfg, params);

  TensorSet missing = hf;
  missing.remove("transformer.h.1.mlp.c_fc.bias");
  missing.remove("transformer.ln_f.weight");
  missing.write(dir.file("missing.safetensors"));
  expect_error([&] { import_hf_gpt2_path(dir.file("missing.safetensors"), config, {}); },
               {"missing tensors: transformer.h.1.mlp.c_fc.bias, transformer.ln_f.weight"});

  TensorSet extra = hf;
  extra.add("transformer.h.0.attn.q_proj.weight", {8, 8}, std::vector<float>(64, 0.5f));
  extra.write(dir.file("extra.safetensors"));
  expect_error([&] { import_hf_gpt2_path(dir.file("extra.safetensors"), config, {}); },
               {"unexpected tensors: transformer.h.0.attn.q_proj.weight"});

  TensorSet both = hf;
  both.add("wte.weight", {100, 8}, hf.at("transformer.wte.weight"));
  both.write(dir.file("twice.safetensors"));
  expect_error([&] { import_hf_gpt2_path(dir.file("twice.safetensors"), config, {}); },
               {"'wte.weight' appears both with and without"});

  json longer = hf_gpt2_config(cfg);
  longer["n_positions"] = 32;
  write_file_atomic(dir.file("longer.json"), longer.dump());
  expect_error([&] { import_hf_gpt2_path(dir.file("good/model.safetensors"), dir.file("longer.json"), {}); },
               {"transformer.wpe.weight' has shape [16, 8] but the model needs [32, 8]"});

  json deeper = hf_gpt2_config(cfg);
  deeper["n_layer"] = 3;
  deeper.erase("lsgpt_n_local");
  write_file_atomic(dir.file("deeper.json"), deeper.dump());
  expect_error([&] { import_hf_gpt2_path(dir.file("good/model.safetensors"), dir.file("deeper.json"), {}); },
               {"missing tensors: transformer.h.2.ln_1.weight"});
}

TEST(HfGpt2, ImportRefusesGpt2VariantsLsgptCannotRun) {
  ScratchDir dir;
  const ModelConfig cfg = tiny_config({0});
  export_hf_gpt2(cfg, testing::random_params(cfg, 16), dir.file("m"));
  const std::string weights = dir.file("m/model.safetensors");
  auto with = [&](const std::string& key, json value) {
    json c = hf_gpt2_config(cfg);
    c[key] = value;
    write_file_atomic(dir.file("c.json"), c.dump());
    return dir.file("c.json");
  };
  expect_error([&] { import_hf_gpt2_path(weights, with("activation_function", "relu"), {}); },
               {"activation_function \"relu\""});
  expect_error([&] { import_hf_gpt2_path(weights, with("layer_norm_epsilon", 1e-6), {}); },
               {"layer_norm_epsilon"});
  expect_error([&] { import_hf_gpt2_path(weights, with("n_inner", 16), {}); }, {"n_inner"});
  expect_error([&] { import_hf_gpt2_path(weights, with("model_type", "llama"), {}); },
               {"model_type"});
  expect_error([&] { import_hf_gpt2_path(weights, with("scale_attn_by_inverse_layer_idx", true), {}); },
               {"scale_attn_by_inverse_layer_idx"});
  expect_error([&] { import_hf_gpt2_path(weights, with("n_head", 3), {}); },
               {"d_model (8) must be divisible by n_head (3)"});
  EXPECT_NO_THROW(import_hf_gpt2_path(weights, with("activation_function", "gelu_pytorch_tanh"), {}));
  write_file_atomic(dir.file("broken.json"), std::string_view("{\"n_embd\": "));
  expect_error([&] { import_hf_gpt2_path(weights, dir.file("broken.json"), {}); },
               {"broken.json", "not valid JSON"});
  expect_error([&] { import_hf_gpt2_path(dir.file("nothing"), "", {}); }, {"nothing"});
  std::filesystem::create_directory(dir.file("empty_dir"));
  expect_error([&] { import_hf_gpt2_path(dir.file("empty_dir"), "", {}); }, {"has no model.safetensors"});
}

}  // namespace test_hf_gpt2
}  // namespace
}  // namespace lsgpt
