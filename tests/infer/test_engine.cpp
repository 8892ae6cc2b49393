// The inference engine against the uncached reference (the full forward pass
// for every token), on the CPU and, where present, the GPU: cached greedy
// generation, ring-buffer wrap-around (w = 1, w = context, w > context),
// the context + 1 boundary, mixed-length batches, sequences joining and
// leaving mid-batch, cancellation, and bad input refused before any work.
//
// Exactness: the CPU backend computes prefill, decode and the uncached
// forward in fp32 through different kernels (a matrix product of one row
// against one of T rows), so logits agree to about 1e-6, not bit for bit;
// the CUDA backend rounds to bf16. A token mismatch is therefore accepted
// only where the reference itself is a near-tie (its two candidates' logits
// within kTieMargin), and only once: after a legitimate divergence the two
// sequences no longer share a prefix. The models here have weights large
// enough that such ties are rare, and each test counts them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <cstdio>
#include <random>

#include "../ops/cuda/cuda_test_util.h"
#include "core/error.h"
#include "infer/engine.h"
#include "infer/generator.h"

namespace lsgpt {
namespace {
namespace test_engine {

struct EngineCase {
  std::string device;
  int n_local, window, seq_len;
  bool qk_norm = false;  // the cache then holds normalised keys
};

ModelConfig small_config(const EngineCase& c) {
  ModelConfig cfg;
  cfg.n_layer = 2;
  cfg.n_head = 4;
  cfg.d_model = 64;
  cfg.seq_len = c.seq_len;
  cfg.vocab_size = 300;
  cfg.n_local = {c.n_local};
  cfg.window = c.window;
  cfg.qk_norm = c.qk_norm;
  cfg.normalize_and_validate();
  return cfg;
}

// Weights of +-0.3 (bf16-exact) make the logits spread over several units,
// so greedy choices are rarely near-ties.
void randomize(GPT& model, uint64_t seed) {
  std::vector<float> p = cuda_test::bf16_values(model.layout().total, seed, -0.3, 0.3);
  for (const ParamInfo& t : model.layout().tensors)
    if (t.name.find("ln_") != std::string::npos && t.name.ends_with(".weight"))
      for (size_t i = 0; i < t.numel; ++i) p[t.offset + i] = 1.0f;
    else if (t.name.ends_with("_norm.weight"))  // QK-norm gains: attention far from uniform
      for (size_t i = 0; i < t.numel; ++i) p[t.offset + i] = 2.0f;
  model.set_parameters(p);
}

std::vector<int32_t> random_prompt(int n, int vocab, uint64_t seed) {
  std::mt19937 rng{uint32_t(seed)};
  std::vector<int32_t> p(n);
  for (auto& t : p) t = int32_t(rng() % uint32_t(vocab));
  return p;
}

class EngineTest : public ::testing::TestWithParam<EngineCase> {
 protected:
  void SetUp() override {
    try {
      backend_ = make_backend(GetParam().device);
    } catch (const Error& e) {
      GTEST_SKIP() << "no CUDA GPU: " << e.what();
    }
    model_ = std::make_unique<GPT>(small_config(GetParam()), *backend_);
    randomize(*model_, 7);
    // bf16 logits of a few units are 1/32 apart, so a GPU tie spans a few ulps.
    tie_margin_ = GetParam().device == "cpu" ? 1e-4 : 0.15;
  }

  // Greedy tokens of the reference for `prompt`, and at each step the gap
  // between the best and the runner-up logit.
  void reference(const std::vector<int32_t>& prompt, int n, std::vector<int32_t>& tokens,
                 std::vector<float>& gaps) {
    std::vector<int32_t> seq = prompt;
    if (seq.empty()) seq.push_back(model_->config().eot_token);
    for (int i = 0; i < n; ++i) {
      std::vector<float> logits = model_->last_logits(seq.data(), 1, int(seq.size()));
      const int best = int(std::max_element(logits.begin(), logits.end()) - logits.begin());
      const float top = logits[best];
      logits[best] = -INFINITY;
      gaps.push_back(top - *std::max_element(logits.begin(), logits.end()));
      tokens.push_back(best);
      seq.push_back(best);
    }
  }

  // Engine output must equal the reference up to one legitimate near-tie.
  void expect_matches_reference(const std::vector<int32_t>& prompt,
                                const std::vector<int32_t>& got, int n) {
    std::vector<int32_t> want;
    std::vector<float> gaps;
    reference(prompt, n, want, gaps);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      if (got[i] == want[i]) continue;
      EXPECT_LT(gaps[i], tie_margin_) << "token " << i << ": engine " << got[i] << ", reference "
                                      << want[i] << " with a clear margin of " << gaps[i];
      ++near_ties_;
      return;
    }
  }

  SequenceRequest greedy(std::vector<int32_t> prompt, int n) {
    SequenceRequest r;
    r.prompt = std::move(prompt);
    r.sampling.temperature = 0;
    r.max_new_tokens = n;
    return r;
  }

  void TearDown() override {
    if (near_ties_) std::printf("  %d legitimate near-tie divergence(s)\n", near_ties_);
  }

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<GPT> model_;
  double tie_margin_ = 0;
  int near_ties_ = 0;
};

TEST_P(EngineTest, CachedGreedyEqualsUncachedRecomputation) {
  const int context = model_->config().seq_len;
  for (int prompt_len : {0, 1, 5, context / 2, context - 3}) {
    const std::vector<int32_t> prompt = random_prompt(prompt_len, 300, prompt_len + 1);
    const int n = context + 1 - std::max(prompt_len, 1);
    GenerateOptions o;
    o.sampling.temperature = 0;
    o.max_new_tokens = n;
    const std::vector<int32_t> got = generate(*model_, prompt, o);
    expect_matches_reference(prompt, got, n);
  }
}

TEST_P(EngineTest, UsesTheWholeContextPlusOne) {
  const int context = model_->config().seq_len;
  EngineOptions eo;
  InferenceEngine engine(*model_, eo);
  // A full-context prompt still predicts one token.
  const auto out = run_to_completion(engine, {greedy(random_prompt(context, 300, 3), 1)});
  EXPECT_EQ(out[0].size(), 1u);
  expect_matches_reference(random_prompt(context, 300, 3), out[0], 1);
  EXPECT_THROW(engine.validate(greedy(random_prompt(context, 300, 3), 2)), Error);
  EXPECT_NO_THROW(engine.validate(greedy({}, context)));
  EXPECT_THROW(engine.validate(greedy({}, context + 1)), Error);
  EXPECT_THROW(engine.validate(greedy(random_prompt(context + 1, 300, 4), 0)), Error);
}

TEST_P(EngineTest, MixedBatchGivesEachSequenceWhatItGetsAlone) {
  const int context = model_->config().seq_len;
  std::vector<SequenceRequest> requests;
  for (int i = 0; i < 5; ++i) {
    SequenceRequest r = greedy(random_prompt(1 + i * (context / 8), 300, 10 + i), 4 + 2 * i);
    if (i % 2) {  // sampled rows ride along with greedy ones
      r.sampling.temperature = 0.8;
      r.sampling.top_k = 20;
      r.sampling.top_p = 0.9;
      r.seed = 100 + i;
    }
    requests.push_back(r);
  }
  EngineOptions together;
  together.max_batch = 3;  // five requests through three slots: joins and leaves
  InferenceEngine batched(*model_, together);
  const auto got = run_to_completion(batched, requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    InferenceEngine alone(*model_, EngineOptions{});
    const auto want = run_to_completion(alone, {requests[i]});
    ASSERT_EQ(got[i].size(), size_t(requests[i].max_new_tokens));
    if (GetParam().device == "cpu" || requests[i].sampling.temperature == 0) {
      if (requests[i].sampling.temperature == 0)
        expect_matches_reference(requests[i].prompt, got[i], requests[i].max_new_tokens);
      else
        EXPECT_EQ(got[i], want[0]) << "request " << i;
    }
  }
}

TEST_P(EngineTest, CancelFreesTheSlotAndSparesTheOthers) {
  EngineOptions eo;
  eo.max_batch = 2;
  InferenceEngine engine(*model_, eo);
  const int a = engine.add(greedy(random_prompt(7, 300, 1), 20));
  const int b = engine.add(greedy(random_prompt(3, 300, 2), 20));
  EXPECT_EQ(engine.free_slots(), 0);
  EXPECT_THROW(engine.add(greedy({1}, 2)), Error);
  engine.step();
  engine.cancel(a);
  EXPECT_EQ(engine.free_slots(), 1);
  const int c = engine.add(greedy(random_prompt(5, 300, 3), 10));
  std::vector<int32_t> out_b, out_c;
  bool cancelled_seen = false;
  std::vector<TokenEvent> first = engine.step();
  for (int guard = 0; guard < 100 && (engine.running() > 0 || !first.empty()); ++guard) {
    for (const TokenEvent& e : first) {
      if (e.sequence == a) cancelled_seen = e.finished && e.reason == FinishReason::cancelled;
      if (e.sequence == b && e.token >= 0) out_b.push_back(e.token);
      if (e.sequence == c && e.token >= 0) out_c.push_back(e.token);
    }
    first = engine.running() > 0 || engine.has_pending() ? engine.step() : std::vector<TokenEvent>{};
  }
  EXPECT_TRUE(cancelled_seen);
  EXPECT_EQ(out_c.size(), 10u);
  expect_matches_reference(random_prompt(5, 300, 3), out_c, 10);
  EXPECT_EQ(out_b.size(), 18u);  // its first two tokens came with the step before the cancel
}

TEST_P(EngineTest, StopsAtEndOfTextAndStopStrings) {
  EngineOptions eo;
  eo.detokenize = [](int32_t t) { return "<" + std::to_string(t) + ">"; };
  InferenceEngine engine(*model_, eo);
  const std::vector<int32_t> prompt = random_prompt(4, 300, 5);
  const auto free_run = run_to_completion(engine, {greedy(prompt, 12)});
  SequenceRequest stop = greedy(prompt, 12);
  stop.stop_strings = {"<" + std::to_string(free_run[0][3]) + ">"};
  const auto stopped = run_to_completion(engine, {stop});
  const auto first = std::find(free_run[0].begin(), free_run[0].end(), free_run[0][3]);
  EXPECT_EQ(stopped[0].size(), size_t(first - free_run[0].begin()) + 1);
}

TEST_P(EngineTest, RefusesBadInputBeforeAnyWork) {
  EngineOptions eo;
  InferenceEngine engine(*model_, eo);
  SequenceRequest r = greedy({1, 2, 3}, 4);
  r.sampling.temperature = -1;
  EXPECT_THROW(engine.add(r), Error);
  r = greedy({1, 2, 300}, 4);
  EXPECT_THROW(engine.add(r), Error);
  r = greedy({1}, 4);
  r.stop_strings = {"x"};  // no detokenizer
  EXPECT_THROW(engine.add(r), Error);
  EXPECT_EQ(engine.free_slots(), 1);
  EngineOptions huge;
  huge.max_batch = 1 << 30;  // terabytes of cache: more than any machine has
  try {
    InferenceEngine too_big(*model_, huge);
    ADD_FAILURE() << "a batch of 2^30 sequences was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("MiB"), std::string::npos) << e.what();
  }
  EngineOptions zero;
  zero.max_batch = 0;
  EXPECT_THROW(InferenceEngine(*model_, zero), Error);
  EngineOptions long_context;
  long_context.max_context = model_->config().seq_len + 1;
  EXPECT_THROW(InferenceEngine(*model_, long_context), Error);
}

std::vector<EngineCase> engine_cases() {
  std::vector<EngineCase> cases;
  for (const char* device : {"cpu", "cuda"}) {
    cases.push_back({device, 3, 5, 48});    // LS, ring wraps many times
    cases.push_back({device, 2, 1, 40});    // w = 1: a local head sees only itself
    cases.push_back({device, 3, 40, 40});   // w = context
    cases.push_back({device, 3, 100, 40});  // w > context
    cases.push_back({device, 0, 1, 48});    // MHSA
    cases.push_back({device, 3, 5, 48, true});  // QK-norm in prefill and decode
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Devices, EngineTest, ::testing::ValuesIn(engine_cases()),
                         [](const auto& info) {
                           const EngineCase& c = info.param;
                           return c.device + "_local" + std::to_string(c.n_local) + "_w" +
                                  std::to_string(c.window) + "_T" + std::to_string(c.seq_len) +
                                  (c.qk_norm ? "_qknorm" : "");
                         });

}  // namespace test_engine
}  // namespace
}  // namespace lsgpt
