// Slots from a memory budget: the largest batch whose engine fits, and the
// same shape with every head global for comparison (an LS model's local heads
// keep w positions, so it holds more long sequences than MHSA).
#include <gtest/gtest.h>

#include "infer/engine.h"
#include "serve/capacity.h"
#include "serve_test_support.h"

namespace lsgpt {
namespace {
namespace test_capacity {

TEST(ServeCapacity, LargestBatchThatFitsAndTheMhsaComparison) {
  ModelConfig cfg = testing::serve_model_config(4096);
  cfg.n_head = 4;
  cfg.d_model = 64;
  cfg.n_local = {3};
  cfg.window = 16;
  cfg.normalize_and_validate();
  auto be = make_backend("cpu");
  GPT model(cfg, *be);
  const int context = 4096;
  const size_t budget = InferenceEngine::required_bytes(model, 37, context) + 1;
  const serve::Capacity c = serve::plan_capacity(model, context, budget);
  EXPECT_EQ(c.slots, 37);
  EXPECT_LE(InferenceEngine::required_bytes(model, c.slots, context), budget);
  EXPECT_GT(InferenceEngine::required_bytes(model, c.slots + 1, context), budget);
  EXPECT_EQ(c.kv_bytes_per_sequence, GPT::kv_cache_bytes(cfg, 1, context, 4));
  // MHSA keeps all 4096 positions in all 4 heads instead of 16 in 3 of them.
  EXPECT_GT(c.mhsa_kv_bytes_per_sequence, 3 * c.kv_bytes_per_sequence);
  EXPECT_LT(c.mhsa_slots, c.slots);
  EXPECT_GE(c.mhsa_slots, 1);
  // Nothing fits in nothing; the cap holds.
  EXPECT_EQ(serve::plan_capacity(model, context, 0).slots, 0);
  EXPECT_EQ(serve::plan_capacity(model, 8, size_t(1) << 40, 100).slots, 100);
}

}  // namespace test_capacity
}  // namespace
}  // namespace lsgpt
