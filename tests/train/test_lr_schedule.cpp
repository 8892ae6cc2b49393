#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "train/train_config.h"

namespace lsgpt {
namespace {
namespace test_lr_schedule {

TEST(LearningRate, WarmupThenCosineToMinimum) {
  TrainConfig c;
  c.lr = 1e-3, c.warmup = 10, c.steps = 110, c.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(learning_rate(c, 0), 1e-4);
  EXPECT_DOUBLE_EQ(learning_rate(c, 9), 1e-3);
  EXPECT_DOUBLE_EQ(learning_rate(c, 10), 1e-3);
  EXPECT_NEAR(learning_rate(c, 60), 0.55e-3, 1e-12);  // half way down the cosine
  EXPECT_NEAR(learning_rate(c, 110), 1e-4, 1e-12);
  for (long s = 11; s < 110; ++s) EXPECT_LT(learning_rate(c, s), learning_rate(c, s - 1));
}

TEST(TrainConfig, RefusesInvalidSettings) {
  TrainConfig ok;
  ok.train_data = "a.bin", ok.valid_data = "b.bin";
  EXPECT_NO_THROW(ok.validate());
  auto bad = [&](auto mutate) {
    TrainConfig c = ok;
    mutate(c);
    EXPECT_THROW(c.validate(), Error);
  };
  bad([](TrainConfig& c) { c.batch_size = 0; });
  bad([](TrainConfig& c) { c.grad_accum = 0; });
  bad([](TrainConfig& c) { c.steps = 0; });
  bad([](TrainConfig& c) { c.lr = -1; });
  bad([](TrainConfig& c) { c.lr = NAN; });
  bad([](TrainConfig& c) { c.beta2 = 1; });
  bad([](TrainConfig& c) { c.clip = -1; });
  bad([](TrainConfig& c) { c.train_data.clear(); });
  bad([](TrainConfig& c) { c.valid_data.clear(); });
  bad([](TrainConfig& c) { c.sampler = "books"; });
}

// The window sampler is part of the schedule (a resume may not change it);
// settings saved before it existed read as the uniform sampler they used.
TEST(TrainConfig, SamplerIsPartOfTheSchedule) {
  TrainConfig c;
  c.train_data = "t.bin", c.valid_data = "v.bin", c.sampler = "documents";
  EXPECT_NO_THROW(c.validate());
  EXPECT_EQ(c.schedule_json().at("sampler"), "documents");
  EXPECT_EQ(TrainConfig::from_json(c.to_json()).sampler, "documents");
  auto old = c.to_json();
  old.erase("sampler");
  EXPECT_EQ(TrainConfig::from_json(old).sampler, "uniform");
}

TEST(TrainConfig, JsonRoundTrip) {
  TrainConfig c;
  c.train_data = "t.bin", c.valid_data = "v.bin", c.lr = 3e-4, c.steps = 77, c.seed = 42;
  TrainConfig d = TrainConfig::from_json(c.to_json());
  EXPECT_EQ(d.to_json(), c.to_json());
  // Data identities survive, the checksum exactly (a hex string, not a JSON number).
  c.train_id = {123, 0xfedcba9876543210ull};
  c.valid_id = {7, 1};
  const auto j = c.to_json();
  EXPECT_EQ(j["train_data_id"]["fnv1a64"], "fedcba9876543210");
  d = TrainConfig::from_json(j);
  EXPECT_TRUE(d.train_id == c.train_id);
  EXPECT_TRUE(d.valid_id == c.valid_id);
  EXPECT_FALSE(TrainConfig::from_json(TrainConfig{}.to_json()).train_id.known());
  auto broken = j;
  broken["train_data_id"]["fnv1a64"] = "xyz";
  EXPECT_THROW(TrainConfig::from_json(broken), Error);
}

}  // namespace test_lr_schedule
}  // namespace
}  // namespace lsgpt
