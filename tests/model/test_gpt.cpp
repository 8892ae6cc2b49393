// Whole-model checks on tiny random models: the hand-written backward of the
// full GPT against finite differences in double precision, for random LS
// configurations; fp32 against fp64; the KV-cache decode path against the
// full forward.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "infer/generator.h"
#include "model/gpt.h"
#include "support/numeric.h"

namespace lsgpt {
namespace {
namespace test_gpt {

using testing::random_tokens;

ModelConfig tiny_config(int n_local, int window, int n_layer = 2, int n_head = 2) {
  ModelConfig c;
  c.n_layer = n_layer;
  c.n_head = n_head;
  c.d_model = 4 * n_head;
  c.seq_len = 7;
  c.vocab_size = 37;  // padded to 64: the padding must never be predicted
  c.n_local = {n_local};
  c.window = window;
  c.normalize_and_validate();
  return c;
}

// Larger-than-default random weights so that every path (LayerNorm gains,
// biases, attention patterns) carries signal into the loss.
std::vector<float> random_params(const GPT& model, uint64_t seed) {
  auto p = testing::random_vector<float>(model.layout().total, seed, -0.5, 0.5);
  const ModelConfig& c = model.config();
  const ParamInfo& wte = model.layout()[model.layout().wte];
  for (size_t i = size_t(c.vocab_size) * c.d_model; i < wte.numel; ++i) p[wte.offset + i] = 0;
  return p;
}

struct GradCase {
  int n_local, window, n_layer, n_head;
  bool qk_norm = false;  // stabilisers (docs/STABILISERS.md)
  double z_loss = 0;
};

class ModelGradient : public ::testing::TestWithParam<GradCase> {};

TEST_P(ModelGradient, MatchesFiniteDifferencesInDouble) {
  const GradCase g = GetParam();
  ModelConfig cfg = tiny_config(g.n_local, g.window, g.n_layer, g.n_head);
  cfg.qk_norm = g.qk_norm;
  cfg.z_loss = g.z_loss;
  auto be = make_backend("cpu64");
  GPT model(cfg, *be);
  const int B = 2, T = cfg.seq_len;
  const auto inputs = random_tokens(B * T, cfg.vocab_size, 11);
  auto targets = random_tokens(B * T, cfg.vocab_size, 12);
  targets[3] = -1;  // an ignored position
  const std::vector<float> init = random_params(model, 13);
  model.set_parameters(init);
  model.zero_grad();
  model.forward_backward(inputs.data(), targets.data(), B, T, 1.0);
  const std::vector<float> analytic = model.gradients();

  // Parameters enter through the fp32 interface, so each perturbation uses
  // float-representable points and divides by their exact distance; the loss
  // itself is computed in double.
  const ParamLayout& lay = model.layout();
  std::mt19937_64 pick(99);
  int checked = 0;
  for (const ParamInfo& p : lay.tensors) {
    const size_t live = p.name == "wte.weight" ? size_t(cfg.vocab_size) * cfg.d_model : p.numel;
    for (int s = 0; s < 3; ++s) {
      const size_t idx = p.offset + pick() % live;
      std::vector<float> plus = init, minus = init;
      plus[idx] = init[idx] + 1e-4f;
      minus[idx] = init[idx] - 1e-4f;
      // The objective the backward differentiates: cross-entropy + z-loss term.
      model.set_parameters(plus);
      const double lp = model.evaluate(inputs.data(), targets.data(), B, T) + model.last_z_loss();
      model.set_parameters(minus);
      const double lm = model.evaluate(inputs.data(), targets.data(), B, T) + model.last_z_loss();
      const double numeric = (lp - lm) / (double(plus[idx]) - double(minus[idx]));
      const double scale = std::max({std::abs(numeric), std::abs(double(analytic[idx])), 1e-5});
      EXPECT_LT(std::abs(numeric - analytic[idx]) / scale, 1e-4)
          << p.name << " index " << idx - p.offset << ": numeric " << numeric << " analytic "
          << analytic[idx];
      ++checked;
    }
  }
  EXPECT_GT(checked, 20);
}

INSTANTIATE_TEST_SUITE_P(
    RandomLSConfigs, ModelGradient,
    ::testing::Values(GradCase{1, 3, 2, 2},   // LS: one local head, w < T
                      GradCase{0, 3, 2, 2},   // MHSA
                      GradCase{2, 1, 2, 2},   // all local, w = 1
                      GradCase{2, 9, 1, 2},   // all local, w >= T
                      GradCase{2, 2, 1, 3},   // 2 of 3 local
                      GradCase{1, 3, 2, 2, true, 0},     // QK-norm through the LS block
                      GradCase{0, 3, 1, 3, true, 0},     // QK-norm, MHSA, 3 heads
                      GradCase{1, 3, 2, 2, false, 0.05},  // z-loss (large: visible in FD)
                      GradCase{1, 3, 1, 2, true, 0.05}),  // both
    [](const auto& info) {
      const GradCase& g = info.param;
      return "local" + std::to_string(g.n_local) + "of" + std::to_string(g.n_head) + "_w" +
             std::to_string(g.window) + "_L" + std::to_string(g.n_layer) +
             (g.qk_norm ? "_qknorm" : "") + (g.z_loss > 0 ? "_zloss" : "");
    });

// Step graphs asked of a backend that cannot capture (the CPU): every step
// runs eagerly with the same results, and step_graph_error() says why.
TEST(Model, StepGraphsOnTheCpuRunEagerly) {
  const ModelConfig cfg = tiny_config(1, 3);
  auto be = make_backend("cpu");
  GPT plain(cfg, *be), graphed(cfg, *be);
  const auto params = random_params(plain, 44);
  plain.set_parameters(params), graphed.set_parameters(params);
  graphed.set_step_graphs(true);
  const int B = 2, T = cfg.seq_len;
  for (int step = 0; step < 3; ++step) {
    const auto in = random_tokens(B * T, cfg.vocab_size, 50 + step);
    const auto tg = random_tokens(B * T, cfg.vocab_size, 60 + step);
    plain.zero_grad(), graphed.zero_grad();
    EXPECT_EQ(plain.forward_backward(in.data(), tg.data(), B, T, 1.0),
              graphed.forward_backward(in.data(), tg.data(), B, T, 1.0));
    EXPECT_FALSE(graphed.last_step_replayed());
    EXPECT_EQ(plain.gradients(), graphed.gradients());
  }
  EXPECT_NE(graphed.step_graph_error().find("does not capture"), std::string::npos)
      << graphed.step_graph_error();
}

// The z-loss term is coef * mean (log Z)^2 over the targets, and the reported
// loss stays the pure cross-entropy.
TEST(Model, ZLossTermAndPureCrossEntropy) {
  ModelConfig plain = tiny_config(1, 3);
  ModelConfig z = plain;
  z.z_loss = 1e-2;
  auto be = make_backend("cpu64");
  GPT a(plain, *be), b(z, *be);
  const auto params = random_params(a, 41);
  a.set_parameters(params), b.set_parameters(params);
  const int B = 2, T = plain.seq_len;
  const auto in = random_tokens(B * T, plain.vocab_size, 42);
  auto tg = random_tokens(B * T, plain.vocab_size, 43);
  tg[1] = -1;
  const double la = a.evaluate(in.data(), tg.data(), B, T);
  const double lb = b.evaluate(in.data(), tg.data(), B, T);
  EXPECT_EQ(la, lb);
  EXPECT_EQ(a.last_z_loss(), 0.0);
  // Reference: log Z of each target row from the logits.
  double sum = 0;
  int count = 0;
  for (int row = 0; row < B; ++row) {
    const std::vector<float> logits = b.logits_row_block(row);
    for (int t = 0; t < T; ++t) {
      if (tg[row * T + t] < 0) continue;
      double m = -INFINITY, s = 0;
      for (int v = 0; v < plain.vocab_size; ++v) m = std::max(m, double(logits[t * plain.vocab_size + v]));
      for (int v = 0; v < plain.vocab_size; ++v) s += std::exp(logits[t * plain.vocab_size + v] - m);
      const double log_z = m + std::log(s);
      sum += log_z * log_z, ++count;
    }
  }
  EXPECT_NEAR(b.last_z_loss(), 1e-2 * sum / count, 1e-6 * b.last_z_loss());
}

// QK-norm's output does not depend on the scale of q and k (up to eps): a
// model whose c_attn q/k rows are scaled by 10 predicts the same.
TEST(Model, QkNormRemovesTheScaleOfQueriesAndKeys) {
  ModelConfig cfg = tiny_config(1, 3);
  cfg.qk_norm = true;
  auto be = make_backend("cpu64");
  GPT model(cfg, *be);
  auto params = random_params(model, 51);
  const int B = 2, T = cfg.seq_len;
  const auto in = random_tokens(B * T, cfg.vocab_size, 52);
  const auto tg = random_tokens(B * T, cfg.vocab_size, 53);
  ModelConfig plain_cfg = cfg;
  plain_cfg.qk_norm = false;
  GPT plain(plain_cfg, *be);
  auto plain_params = random_params(plain, 54);
  plain.set_parameters(plain_params);
  const double plain_before = plain.evaluate(in.data(), tg.data(), B, T);
  model.set_parameters(params);
  const double before = model.evaluate(in.data(), tg.data(), B, T);
  for (const LayerParams& lp : plain.layout().layers) {
    const ParamInfo& w = plain.layout()[lp.qkv_w];
    for (size_t i = 0; i < 2 * size_t(cfg.d_model) * cfg.d_model; ++i) plain_params[w.offset + i] *= 10;
  }
  plain.set_parameters(plain_params);
  EXPECT_GT(std::abs(plain.evaluate(in.data(), tg.data(), B, T) - plain_before), 1e-3);
  for (const LayerParams& lp : model.layout().layers) {
    const ParamInfo& w = model.layout()[lp.qkv_w];
    const ParamInfo& b = model.layout()[lp.qkv_b];
    for (size_t i = 0; i < 2 * size_t(cfg.d_model) * cfg.d_model; ++i) params[w.offset + i] *= 10;
    for (size_t i = 0; i < 2 * size_t(cfg.d_model); ++i) params[b.offset + i] *= 10;
  }
  model.set_parameters(params);
  EXPECT_NEAR(model.evaluate(in.data(), tg.data(), B, T), before, 1e-5);
  EXPECT_EQ(plain.layout().total + 2 * cfg.n_layer * cfg.head_dim(), model.layout().total);
  EXPECT_EQ(model.layout().total, cfg.num_parameters());
}

// The cached decode (normalised keys in the cache) matches the full forward.
TEST(DecodeCacheQkNorm, StepLogitsMatchFullForward) {
  ModelConfig cfg = tiny_config(1, 3, 2, 2);
  cfg.qk_norm = true;
  auto be = make_backend("cpu64");
  GPT model(cfg, *be);
  model.set_parameters(random_params(model, 61));
  const int B = 2, T = cfg.seq_len;
  const auto tokens = random_tokens(B * T, cfg.vocab_size, 62);
  auto cache = model.make_kv_cache(B);
  for (int pos = 0; pos < T; ++pos) {
    std::vector<int32_t> step(B);
    for (int b = 0; b < B; ++b) step[b] = tokens[b * T + pos];
    const auto cached = model.decode_step(*cache, step.data(), pos);
    std::vector<int32_t> prefix(B * (pos + 1));
    for (int b = 0; b < B; ++b)
      for (int t = 0; t <= pos; ++t) prefix[b * (pos + 1) + t] = tokens[b * T + t];
    const auto full = model.last_logits(prefix.data(), B, pos + 1);
    EXPECT_LT(testing::relative_error(cached, full), 1e-12) << "pos " << pos;
  }
}

TEST(Model, InitialLossIsNearUniform) {
  ModelConfig cfg = tiny_config(1, 3);
  auto be = make_backend("cpu");
  GPT model(cfg, *be);
  model.init_random(5);
  const auto in = random_tokens(2 * cfg.seq_len, cfg.vocab_size, 1);
  const auto tg = random_tokens(2 * cfg.seq_len, cfg.vocab_size, 2);
  // Padded vocabulary entries are excluded, so the uniform loss is log(V), not log(Vp).
  EXPECT_NEAR(model.evaluate(in.data(), tg.data(), 2, cfg.seq_len), std::log(37.0), 0.05);
}

TEST(Model, Fp32MatchesFp64) {
  ModelConfig cfg = tiny_config(1, 3);
  auto be32 = make_backend("cpu");
  auto be64 = make_backend("cpu64");
  GPT m32(cfg, *be32), m64(cfg, *be64);
  const auto params = random_params(m32, 3);
  m32.set_parameters(params);
  m64.set_parameters(params);
  const int B = 3, T = cfg.seq_len;
  const auto in = random_tokens(B * T, cfg.vocab_size, 4);
  const auto tg = random_tokens(B * T, cfg.vocab_size, 5);
  const double l32 = m32.forward_backward(in.data(), tg.data(), B, T, 1.0);
  const double l64 = m64.forward_backward(in.data(), tg.data(), B, T, 1.0);
  EXPECT_NEAR(l32, l64, 1e-5 * std::abs(l64));
  EXPECT_LT(testing::relative_error(m32.gradients(), m64.gradients()), 1e-4);
}

TEST(Model, SpanNeverChangesTheForwardPass) {
  ModelConfig plain = tiny_config(1, 3), span = plain;
  span.span = SpanConfig::parse("q:cross:2:1,k:self:0.5:1.5,v:self:3:1");
  auto be = make_backend("cpu64");
  GPT a(plain, *be), b(span, *be);
  const auto params = random_params(a, 8);
  a.set_parameters(params);
  b.set_parameters(params);
  const auto in = random_tokens(2 * plain.seq_len, plain.vocab_size, 6);
  const auto tg = random_tokens(2 * plain.seq_len, plain.vocab_size, 7);
  const double la = a.forward_backward(in.data(), tg.data(), 2, plain.seq_len, 1.0);
  const double lb = b.forward_backward(in.data(), tg.data(), 2, plain.seq_len, 1.0);
  EXPECT_EQ(la, lb);
  // ...while the gradients do change.
  EXPECT_GT(testing::relative_error(a.gradients(), b.gradients()), 1e-6);
}

class DecodeCache : public ::testing::TestWithParam<std::pair<int, int>> {};

TEST_P(DecodeCache, StepLogitsMatchFullForward) {
  const auto [n_local, window] = GetParam();
  ModelConfig cfg = tiny_config(n_local, window, 2, 2);
  auto be = make_backend("cpu64");
  GPT model(cfg, *be);
  model.set_parameters(random_params(model, 21));
  const int B = 2, T = cfg.seq_len;
  const auto tokens = random_tokens(B * T, cfg.vocab_size, 22);
  auto cache = model.make_kv_cache(B);
  for (int pos = 0; pos < T; ++pos) {
    std::vector<int32_t> step(B);
    for (int b = 0; b < B; ++b) step[b] = tokens[b * T + pos];
    const auto cached = model.decode_step(*cache, step.data(), pos);
    // Full forward over the prefix of each row.
    std::vector<int32_t> prefix(B * (pos + 1));
    for (int b = 0; b < B; ++b)
      for (int t = 0; t <= pos; ++t) prefix[b * (pos + 1) + t] = tokens[b * T + t];
    const auto full = model.last_logits(prefix.data(), B, pos + 1);
    EXPECT_LT(testing::relative_error(cached, full), 1e-12) << "pos " << pos;
  }
}

INSTANTIATE_TEST_SUITE_P(LSConfigs, DecodeCache,
                         ::testing::Values(std::pair{1, 3}, std::pair{0, 3}, std::pair{2, 1},
                                           std::pair{2, 2}, std::pair{2, 100}));

TEST(Generate, SameTokensWithAndWithoutCache) {
  ModelConfig cfg = tiny_config(1, 3);
  cfg.seq_len = 24;
  cfg.normalize_and_validate();
  auto be = make_backend("cpu");
  GPT model(cfg, *be);
  model.set_parameters(random_params(model, 31));
  const std::vector<int32_t> prompt{3, 14, 15, 9};
  for (double temperature : {0.0, 0.8, 1.5}) {
    GenerateOptions o;
    o.max_new_tokens = 20;
    o.seed = 7;
    o.sampling.temperature = temperature;
    o.sampling.top_k = temperature > 1 ? 10 : 0;
    o.sampling.top_p = temperature > 1 ? 0.9 : 1.0;
    o.use_cache = true;
    const auto with_cache = generate(model, prompt, o);
    o.use_cache = false;
    const auto without = generate(model, prompt, o);
    EXPECT_EQ(with_cache, without) << "temperature " << temperature;
    EXPECT_EQ(with_cache.size(), 20u);
    for (int32_t t : with_cache) EXPECT_LT(t, cfg.vocab_size);  // padding never sampled
  }
}

TEST(Generate, RefusesPromptsBeyondTheContext) {
  ModelConfig cfg = tiny_config(1, 3);
  auto be = make_backend("cpu");
  GPT model(cfg, *be);
  GenerateOptions o;
  o.max_new_tokens = 1;
  const std::vector<int32_t> too_long(cfg.seq_len + 1, 1);
  EXPECT_THROW(generate(model, too_long, o), Error);
  // Prompt + new tokens may fill the context plus one (the last token is
  // predicted from a full window and never fed back), with or without the cache.
  for (bool cache : {true, false}) {
    o.use_cache = cache;
    const std::vector<int32_t> fits(cfg.seq_len - 1, 1);
    o.max_new_tokens = 3;
    EXPECT_THROW(generate(model, fits, o), Error);
    o.max_new_tokens = 2;
    EXPECT_EQ(generate(model, fits, o).size(), 2u);
    const std::vector<int32_t> full(cfg.seq_len, 1);
    o.max_new_tokens = 1;
    EXPECT_EQ(generate(model, full, o).size(), 1u);
  }
}

}  // namespace test_gpt
}  // namespace
}  // namespace lsgpt
