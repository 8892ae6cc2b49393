// Model configuration: JSON round trip, per-layer n_local, and one clear
// refusal for each invalid or contradictory setting.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/config.h"
#include "model/params.h"

namespace lsgpt {
namespace {
namespace test_config {

using json = nlohmann::json;

std::string error_of(const json& j) {
  try {
    ModelConfig::from_json(j);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The error of `base` with `key` set to `value` ("" when it loads).
std::string error_with(json base, const char* key, json value) {
  base[key] = std::move(value);
  return error_of(base);
}

TEST(ModelConfig, DefaultsFollowThePaper) {
  ModelConfig c = ModelConfig::from_json(json{{"n_layer", 3}, {"n_head", 12}, {"d_model", 768}});
  EXPECT_EQ(c.n_local, (std::vector<int>{11, 11, 11}));  // every head but one local
  EXPECT_EQ(c.window, 100);
  EXPECT_EQ(c.padded_vocab(), 50304);
  EXPECT_FALSE(c.span.any());
}

TEST(ModelConfig, PerLayerLocalHeadsAndRoundTrip) {
  json j{{"n_layer", 3}, {"n_head", 4}, {"d_model", 64}, {"n_local", {0, 2, 4}}, {"window", 7},
         {"span", "q:cross:1.5:1,k:self:0.5:2"}};
  ModelConfig c = ModelConfig::from_json(j);
  EXPECT_EQ(c.n_local, (std::vector<int>{0, 2, 4}));
  EXPECT_EQ(c.attention_spec(1, 2, 5).n_local, 2);
  EXPECT_TRUE(c.span_layer(2).q.enabled);
  EXPECT_EQ(ModelConfig::from_json(c.to_json()), c);
}

TEST(ModelConfig, EndOfTextTokenFollowsTheVocabulary) {
  // GPT-2's vocabulary keeps <|endoftext|> = 50256; a smaller one defaults to
  // its last token, a larger one keeps 50256.
  EXPECT_EQ(ModelConfig::from_json(json::object()).eot_token, 50256);
  EXPECT_EQ(ModelConfig::from_json(json{{"vocab_size", 1000}}).eot_token, 999);
  EXPECT_EQ(ModelConfig::from_json(json{{"vocab_size", 50256}}).eot_token, 50255);
  EXPECT_EQ(ModelConfig::from_json(json{{"vocab_size", 50304}}).eot_token, 50256);
  EXPECT_EQ(ModelConfig::from_json(json{{"vocab_size", 1}}).eot_token, 0);
  // Stored in the JSON (and so in run configs and checkpoints), read back.
  const ModelConfig c = ModelConfig::from_json(json{{"vocab_size", 1000}, {"eot_token", 3}});
  EXPECT_EQ(c.eot_token, 3);
  EXPECT_EQ(c.to_json()["eot_token"], 3);
  EXPECT_EQ(ModelConfig::from_json(c.to_json()).eot_token, 3);
  EXPECT_EQ(ModelConfig::from_json(json{{"vocab_size", 1000}}).to_json()["eot_token"], 999);
  // Outside the vocabulary, or negative: refused.
  EXPECT_NE(error_of(json{{"vocab_size", 1000}, {"eot_token", 1000}})
                .find("eot_token 1000 is outside the vocabulary of 1000"),
            std::string::npos);
  EXPECT_NE(error_of(json{{"eot_token", -2}}).find("eot_token must be >= 0"), std::string::npos);
  // A config object filled in code gets the rule when it is normalized.
  ModelConfig d;
  d.vocab_size = 37;
  d.normalize_and_validate();
  EXPECT_EQ(d.eot_token, 36);
}

TEST(ModelConfig, Gpt2SmallHas124MParameters) {
  ModelConfig c = ModelConfig::load(std::string(LSGPT_SOURCE_DIR) + "/configs/gpt2-small.json");
  const size_t without_padding = make_param_layout(c).total - size_t(50304 - 50257) * 768;
  EXPECT_EQ(without_padding, 124439808u);  // GPT-2 small as published
  EXPECT_EQ(c.num_parameters(), make_param_layout(c).total);
}

// The larger configuration of the multi-GPU benchmark (bench/multi_gpu.sh):
// GPT-2 medium's shape, LS with 15 of 16 heads local, and its MHSA twin.
TEST(ModelConfig, Gpt2MediumHas355MParametersInBothAttentions) {
  const std::string dir = std::string(LSGPT_SOURCE_DIR) + "/configs/";
  const ModelConfig ls = ModelConfig::load(dir + "gpt2-medium.json");
  const ModelConfig mhsa = ModelConfig::load(dir + "gpt2-medium-mhsa.json");
  for (const ModelConfig* c : {&ls, &mhsa}) {
    const size_t without_padding = make_param_layout(*c).total - size_t(50304 - 50257) * 1024;
    EXPECT_EQ(without_padding, 354823168u);  // GPT-2 medium as published
    EXPECT_EQ(c->head_dim(), 64);
  }
  EXPECT_EQ(ls.n_local[0], 15);
  EXPECT_EQ(ls.n_local[23], 15);
  EXPECT_EQ(ls.window, 100);
  EXPECT_EQ(mhsa.n_local[0], 0);
}

TEST(ModelConfig, RefusesInvalidSettings) {
  const json base{{"n_layer", 2}, {"n_head", 4}, {"d_model", 64}};
  auto with = [&](const char* key, json value) { return error_with(base, key, value); };
  EXPECT_NE(with("n_local", 5).find("n_local of layer 0 is 5"), std::string::npos);
  EXPECT_NE(with("n_local", -1).find("n_local"), std::string::npos);
  EXPECT_NE(with("n_local", json{1, 2, 3}).find("lists 3 layers"), std::string::npos);
  EXPECT_NE(with("window", 0).find("window must be >= 1"), std::string::npos);
  EXPECT_NE(with("d_model", 66).find("divisible by n_head"), std::string::npos);
  EXPECT_NE(with("n_head", 0).find("n_head"), std::string::npos);
  EXPECT_NE(with("n_layer", 0).find("n_layer"), std::string::npos);
  EXPECT_NE(with("seq_len", 0).find("seq_len"), std::string::npos);
  EXPECT_NE(with("vocab_size", 70000).find("vocab_size"), std::string::npos);
  EXPECT_NE(with("vocab_size", 65537).find("vocab_size must be in 1..65536"), std::string::npos);
  EXPECT_EQ(with("vocab_size", 65536), "");  // ids 0..65535: what token files hold
  EXPECT_NE(with("window", "wide").find("must be an integer"), std::string::npos);
  EXPECT_NE(with("colour", 1).find("unknown key 'colour'"), std::string::npos);
  EXPECT_NE(error_of(json::array()).find("JSON object"), std::string::npos);
}

// Sizes no machine holds are refused at once: n_layer 2e9 used to build its
// per-layer list of local-head counts for minutes before anything failed.
TEST(ModelConfig, RefusesModelsNoMachineHolds) {
  const json base{{"n_layer", 2}, {"n_head", 4}, {"d_model", 64}};
  auto with = [&](const char* key, json value) { return error_with(base, key, value); };
  EXPECT_NE(with("n_layer", 2000000000).find("n_layer must be at most 100000"),
            std::string::npos);
  EXPECT_EQ(with("n_layer", 100000), "");
  EXPECT_NE(with("d_model", 2000000000).find("parameters; lsgpt refuses more than"),
            std::string::npos);  // 4.8e19: past size_t, counted in double
  // 2e9 positions of width 1024: 2e12 in the position embedding alone.
  EXPECT_NE(error_of(json{{"n_layer", 2}, {"n_head", 4}, {"d_model", 1024}, {"seq_len", 2000000000}})
                .find("parameters"),
            std::string::npos);
}

// get<int>() wraps: n_layer 4294967297 (2^32 + 1) used to load as a 1-layer model.
TEST(ModelConfig, IntegersOutsideIntAreRefusedNotWrapped) {
  const json base{{"n_layer", 2}, {"n_head", 4}, {"d_model", 64}};
  auto with = [&](const char* key, json value) { return error_with(base, key, value); };
  EXPECT_NE(with("n_layer", 4294967297LL).find("'n_layer' is 4294967297, out of range"),
            std::string::npos);
  EXPECT_NE(with("window", uint64_t(1) << 63).find("'window' is 9223372036854775808"),
            std::string::npos);
  EXPECT_NE(with("seq_len", -4294967295LL).find("'seq_len' is -4294967295"), std::string::npos);
  EXPECT_NE(with("n_local", 4294967296LL).find("n_local entry 4294967296 is out of range"),
            std::string::npos);
  EXPECT_NE(with("n_local", json{1, 4294967297LL}).find("n_local entry 4294967297"),
            std::string::npos);
  EXPECT_EQ(with("window", 2147483647LL).find("out of range"), std::string::npos);
}

TEST(ModelConfig, StabilisersAreOffByDefaultAndRoundTrip) {
  const json base{{"n_layer", 2}, {"n_head", 4}, {"d_model", 64}};
  const ModelConfig plain = ModelConfig::from_json(base);
  EXPECT_FALSE(plain.qk_norm);
  EXPECT_EQ(plain.z_loss, 0.0);
  // Off: not written, so configs and checkpoints of plain models are unchanged.
  EXPECT_FALSE(plain.to_json().contains("qk_norm"));
  EXPECT_FALSE(plain.to_json().contains("z_loss"));
  json j = base;
  j["qk_norm"] = true, j["z_loss"] = 1e-4;
  const ModelConfig c = ModelConfig::from_json(j);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_EQ(c.z_loss, 1e-4);
  EXPECT_TRUE(ModelConfig::from_json(c.to_json()) == c);
  EXPECT_FALSE(c == plain);
  // Two gains of head_dim per layer, without weight decay.
  const ParamLayout lay = make_param_layout(c);
  EXPECT_EQ(lay.total, make_param_layout(plain).total + 2 * 2 * 16);
  EXPECT_EQ(lay.total, c.num_parameters());
  const ParamInfo* q = lay.find("h.1.attn.q_norm.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->shape, (std::vector<int64_t>{16}));
  EXPECT_FALSE(q->decay);
  EXPECT_FALSE(lay.find("h.1.attn.k_norm.weight")->decay);
}

TEST(ModelConfig, RefusesBadStabiliserSettings) {
  const json base{{"n_layer", 2}, {"n_head", 4}, {"d_model", 64}};
  auto with = [&](const char* key, json value) { return error_with(base, key, value); };
  EXPECT_NE(with("z_loss", -1e-4).find("z_loss must be a finite number >= 0"), std::string::npos);
  EXPECT_NE(with("z_loss", "big").find("z_loss must be a number"), std::string::npos);
  EXPECT_NE(with("qk_norm", 1).find("qk_norm must be true or false"), std::string::npos);
}

TEST(ModelConfig, LoadRefusesMissingAndMalformedFiles) {
  EXPECT_THROW(ModelConfig::load("/nonexistent/config.json"), Error);
  const std::string path = ::testing::TempDir() + "/bad_config.json";
  FILE* f = std::fopen(path.c_str(), "w");
  std::fputs("{\"n_layer\": 2,", f);
  std::fclose(f);
  try {
    ModelConfig::load(path);
    FAIL() << "malformed JSON accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos);
  }
}

// Both used to escape as bare library messages that did not name the file.
TEST(ModelConfig, LoadNamesTheFileForNumberOverflowAndDirectories) {
  const std::string path = ::testing::TempDir() + "/overflow_config.json";
  FILE* f = std::fopen(path.c_str(), "w");
  std::fputs("{\"window\": 1e400}", f);
  std::fclose(f);
  auto error_loading = [](const std::string& p) -> std::string {
    try {
      ModelConfig::load(p);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(error_loading(path).find("config file '" + path + "' is not valid JSON"),
            std::string::npos)
      << error_loading(path);
  const std::string dir = ::testing::TempDir();
  EXPECT_NE(error_loading(dir).find("config file '" + dir + "' is a directory"), std::string::npos)
      << error_loading(dir);
}

TEST(SpanConfig, ParsesTheCliForm) {
  SpanConfig s = SpanConfig::parse("q:cross:1.5:1,k:cross:2:0.5,v:self:3:1");
  EXPECT_TRUE(s.q.enabled && s.k.enabled && s.v.enabled);
  EXPECT_EQ(s.q.basis, SpanBasis::cross);
  EXPECT_EQ(s.k.alpha_par, 2.0);
  EXPECT_EQ(s.k.alpha_perp, 0.5);
  EXPECT_EQ(s.v.basis, SpanBasis::self);
  EXPECT_EQ(SpanConfig::parse(s.to_string()), s);
  EXPECT_FALSE(SpanConfig::parse("off").any());
}

TEST(SpanConfig, RefusesInvalidSettings) {
  auto error = [](const std::string& text) {
    try {
      SpanConfig::parse(text);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error("x:cross:1:1").find("unknown target 'x'"), std::string::npos);
  EXPECT_NE(error("q:diagonal:1:1").find("unknown basis 'diagonal'"), std::string::npos);
  EXPECT_NE(error("v:cross:1:1").find("self basis only"), std::string::npos);
  EXPECT_NE(error("q:cross:nan:1").find("finite"), std::string::npos);
  EXPECT_NE(error("q:cross:inf:1").find("finite"), std::string::npos);
  EXPECT_NE(error("q:cross:1.5x:1").find("not a number"), std::string::npos);
  EXPECT_NE(error("q:cross:1.5").find("target:basis:alpha_par:alpha_perp"), std::string::npos);
  EXPECT_NE(error("q:cross:1:1,q:self:1:1").find("given twice"), std::string::npos);
  const json base{{"n_layer", 2}, {"n_head", 4}, {"d_model", 64}};
  json j = base;
  j["span"] = json{{"q", {{"basis", "cross"}, {"alpha_par", 2}}}, {"layers", {true}}};
  EXPECT_NE(error_of(j).find("span.layers lists 1 layers"), std::string::npos);
  j["span"] = json{{"v", {{"basis", "cross"}}}};
  EXPECT_NE(error_of(j).find("self basis only"), std::string::npos);
  j["span"] = json{{"q", {{"basis", "cross"}, {"alpha_par", "big"}}}};
  EXPECT_NE(error_of(j).find("must be a number"), std::string::npos);
}

TEST(SpanConfig, PerLayerSwitch) {
  json j{{"n_layer", 3}, {"n_head", 2}, {"d_model", 16},
         {"span", {{"k", {{"basis", "self"}, {"alpha_par", 0.5}}}, {"layers", {true, false, true}}}}};
  ModelConfig c = ModelConfig::from_json(j);
  EXPECT_TRUE(c.span_layer(0).k.enabled);
  EXPECT_FALSE(c.span_layer(1).any());
  EXPECT_TRUE(c.span_layer(2).k.enabled);
  EXPECT_FALSE(c.span_layer(0).needs_kbar());
}

// The presets are the studies' outcomes (docs/results/span-wikitext2.md):
// a change of the evidence must change this test too.
TEST(SpanPresets, Bidir0IsCrossOnQAndKWithAlphaParTwo) {
  const SpanConfig s = SpanConfig::preset("bidir0");
  EXPECT_EQ(s.to_string(), SpanConfig::parse("q:cross:2:1,k:cross:2:1").to_string());
  EXPECT_TRUE(s.q.enabled && s.k.enabled && !s.v.enabled);
  EXPECT_EQ(s.q.alpha_par, 2.0);
  EXPECT_EQ(s.k.alpha_perp, 1.0);
  EXPECT_FALSE(SpanConfig::preset("off").any());
  EXPECT_FALSE(SpanConfig::preset("canonical").any());
  try {
    SpanConfig::preset("bidir1");
    FAIL() << "an unknown preset was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown span preset 'bidir1'"), std::string::npos);
  }
}

}  // namespace test_config
}  // namespace
}  // namespace lsgpt
