// Generation uses the model's own end-of-text token, not GPT-2's 50256: an
// empty prompt starts from it and --stop-at-eot stops at it.
#include <gtest/gtest.h>

#include <algorithm>

#include "infer/generator.h"
#include "model/gpt.h"
#include "ops/backend.h"

namespace lsgpt {
namespace {
namespace test_generator_eot {

ModelConfig small_vocab_config(int eot_token) {
  ModelConfig c;
  c.n_layer = 1, c.n_head = 2, c.d_model = 16, c.seq_len = 16, c.vocab_size = 50;
  c.n_local = {1};
  c.window = 4;
  c.eot_token = eot_token;
  c.normalize_and_validate();
  return c;
}

std::vector<int32_t> run(const ModelConfig& cfg, std::vector<int32_t> prompt, bool stop,
                         bool cache) {
  auto be = make_backend("cpu");
  GPT model(cfg, *be);
  model.init_random(9);
  GenerateOptions o;
  o.sampling.temperature = 0;  // greedy: the same weights give the same tokens
  o.max_new_tokens = 8;
  o.stop_at_eot = stop;
  o.use_cache = cache;
  return generate(model, prompt, o);
}

TEST(GeneratorEot, EmptyPromptStartsFromTheModelsEndOfText) {
  for (bool cache : {true, false}) {
    const ModelConfig cfg = small_vocab_config(-1);  // default rule: 49
    ASSERT_EQ(cfg.eot_token, 49);
    EXPECT_EQ(run(cfg, {}, false, cache), run(cfg, {49}, false, cache));
    const ModelConfig other = small_vocab_config(3);
    EXPECT_EQ(run(other, {}, false, cache), run(other, {3}, false, cache));
  }
}

TEST(GeneratorEot, StopsAtTheModelsEndOfText) {
  const std::vector<int32_t> prompt{1, 2, 3};
  const std::vector<int32_t> free_run = run(small_vocab_config(-1), prompt, false, true);
  ASSERT_EQ(free_run.size(), 8u);
  // Make the second greedy token the end-of-text token (the weights do not
  // depend on it): generation stops right after producing it.
  const int32_t second = free_run[1];
  for (bool cache : {true, false}) {
    const std::vector<int32_t> stopped = run(small_vocab_config(second), prompt, true, cache);
    const auto first = std::find(free_run.begin(), free_run.end(), second);
    EXPECT_EQ(stopped, std::vector<int32_t>(free_run.begin(), first + 1));
  }
}

}  // namespace test_generator_eot
}  // namespace
}  // namespace lsgpt
