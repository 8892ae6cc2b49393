// Sampling: greedy, top-k and top-p restrict the candidates as documented, and
// the draw follows the softmax probabilities.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/error.h"
#include "infer/sampler.h"

namespace lsgpt {
namespace {
namespace test_sampler {

TEST(Sampler, TemperatureZeroIsArgmax) {
  std::vector<float> logits{0.1f, 2.5f, -1.0f, 2.4f};
  SamplingSettings s;
  s.temperature = 0;
  for (int i = 0; i < 10; ++i) EXPECT_EQ(sample_token(logits, s, 1, i), 1);
}

// z / T overflowed float: every positive logit became +inf and the lowest
// such id won (1e-40 gave token 0 here), whatever top-k and top-p said.
TEST(Sampler, TinyTemperaturesAreGreedyNotOverflow) {
  std::vector<float> logits{0.1f, 2.5f, -1.0f, 2.4f};
  for (const double t : {1e-31, 1e-38, 1e-40, 1e-45, 5e-324}) {
    for (const int k : {0, 1}) {
      for (const double top_p : {1.0, 1e-9}) {
        SamplingSettings s;
        s.temperature = t, s.top_k = k, s.top_p = top_p;
        for (int i = 0; i < 5; ++i)
          EXPECT_EQ(sample_token(logits, s, 1, i), 1) << t << " " << k << " " << top_p;
      }
    }
  }
  EXPECT_EQ(to_sample_params(SamplingSettings{1e-40, 0, 1.0}, 1, 0).temperature, 0.f);
  EXPECT_EQ(to_sample_params(SamplingSettings{0.5, 0, 1.0}, 1, 0).temperature, 0.5f);
}

TEST(Sampler, TopKAndTopPRestrictCandidates) {
  std::vector<float> logits{3.0f, 2.9f, 2.8f, -5.0f, 1.0f};
  SamplingSettings k2;
  k2.top_k = 2;
  SamplingSettings p;
  p.top_p = 0.5;  // token 0 alone has p ~0.37, tokens 0+1 ~0.71
  for (int i = 0; i < 500; ++i) {
    EXPECT_LT(sample_token(logits, k2, 2, i), 2);
    EXPECT_LT(sample_token(logits, p, 2, i), 2);
  }
}

TEST(Sampler, FrequenciesFollowSoftmax) {
  std::vector<float> logits{0.0f, std::log(3.0f)};  // p = 1/4, 3/4
  SamplingSettings s;
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += sample_token(logits, s, 3, i);
  EXPECT_NEAR(double(ones) / n, 0.75, 0.015);
}

TEST(Sampler, RefusesBadSettingsAndNaN) {
  SamplingSettings s;
  s.temperature = -1;
  EXPECT_THROW(s.validate(), Error);
  s = {};
  s.top_p = 0;
  EXPECT_THROW(s.validate(), Error);
  s = {};
  s.top_k = -3;
  EXPECT_THROW(s.validate(), Error);
  std::vector<float> logits{0.0f, NAN};
  EXPECT_THROW(sample_token(logits, SamplingSettings{}, 4, 0), Error);
}

}  // namespace test_sampler
}  // namespace
}  // namespace lsgpt
