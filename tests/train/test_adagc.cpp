// AdaGC against a direct transcription of Algorithm 1 of arXiv 2502.11034 on
// random gradient vectors: the reference clips the vectors themselves and
// measures the clipped norms from them; AdaGC sees only the sums of squares.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "core/error.h"
#include "train/adagc.h"

namespace lsgpt {
namespace {
namespace test_adagc {

using Grads = std::vector<std::vector<double>>;

double l2(const std::vector<double>& g) {
  double s = 0;
  for (double x : g) s += x * x;
  return std::sqrt(s);
}

// One step of the paper's algorithm on the gradients themselves; returns the
// clipped gradients and updates gamma.
Grads reference_step(const Grads& g, std::vector<double>& gamma, long t, const AdaGCSettings& s) {
  Grads out = g;
  if (t < s.warmup) {
    double total = 0;
    for (const auto& gi : g) total += l2(gi) * l2(gi);
    const double h = std::min(s.lambda_abs / std::sqrt(total), 1.0);
    for (size_t i = 0; i < g.size(); ++i) {
      for (double& x : out[i]) x *= h;
      gamma[i] = std::min(gamma[i], l2(out[i]));
    }
    return out;
  }
  for (size_t i = 0; i < g.size(); ++i) {
    const double h = std::min(s.lambda_rel * gamma[i] / l2(g[i]), 1.0);
    for (double& x : out[i]) x *= h;
    gamma[i] = s.beta * gamma[i] + (1 - s.beta) * l2(out[i]);
  }
  return out;
}

TEST(AdaGC, MatchesTheReferenceThroughWarmUpAndAfter) {
  AdaGCSettings s;
  s.warmup = 4;
  s.lambda_abs = 2.0;
  s.lambda_rel = 1.05;
  s.beta = 0.9;
  const std::vector<size_t> sizes{5, 17, 64, 3};
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  AdaGC adagc(s, sizes.size());
  std::vector<double> gamma(sizes.size(), std::numeric_limits<double>::infinity());
  int clipped_after_warmup = 0;
  for (long t = 0; t < 12; ++t) {
    Grads g(sizes.size());
    for (size_t i = 0; i < sizes.size(); ++i) {
      // Scales that vary per step and tensor, with a spike in tensor 2 at step 7.
      const double scale = (0.2 + 0.1 * double(rng() % 10)) * (t == 7 && i == 2 ? 50.0 : 1.0);
      for (size_t k = 0; k < sizes[i]; ++k) g[i].push_back(scale * normal(rng));
    }
    std::vector<double> sq;
    for (const auto& gi : g) sq.push_back(l2(gi) * l2(gi));
    const std::vector<double> gamma_before = adagc.gamma();
    const std::vector<double> h = adagc.scales(sq, t);
    const Grads want = reference_step(g, gamma, t, s);
    for (size_t i = 0; i < sizes.size(); ++i) {
      EXPECT_NEAR(h[i] * l2(g[i]), l2(want[i]), 1e-12 * l2(g[i])) << "step " << t << " tensor " << i;
      EXPECT_NEAR(adagc.gamma()[i], gamma[i], 1e-12 * gamma[i]) << "step " << t << " tensor " << i;
    }
    if (t >= s.warmup) clipped_after_warmup += adagc.last_clipped();
    if (t == 7) {  // the spike is cut to lambda_rel times its tensor's history
      EXPECT_LT(h[2], 0.1);
      EXPECT_NEAR(h[2] * l2(g[2]), s.lambda_rel * gamma_before[2], 1e-12);
    }
  }
  EXPECT_GT(clipped_after_warmup, 0);
}

TEST(AdaGC, WarmUpClipsGloballyAndCounts) {
  AdaGCSettings s;
  s.warmup = 2;
  AdaGC adagc(s, 2);
  const std::vector<double> big{9.0, 16.0};  // global norm 5 > lambda_abs 1
  const auto h = adagc.scales(big, 0);
  EXPECT_DOUBLE_EQ(h[0], 0.2);
  EXPECT_DOUBLE_EQ(h[1], 0.2);
  EXPECT_EQ(adagc.last_clipped(), 2);
  EXPECT_DOUBLE_EQ(adagc.gamma()[0], 0.6);
  EXPECT_DOUBLE_EQ(adagc.gamma()[1], 0.8);
  const std::vector<double> small{0.01, 0.04};
  adagc.scales(small, 1);
  EXPECT_EQ(adagc.last_clipped(), 0);
  EXPECT_DOUBLE_EQ(adagc.gamma()[0], 0.1);  // the running minimum
}

TEST(AdaGC, ZeroGradientLeavesGammaAlone) {
  AdaGC adagc(AdaGCSettings{1, 1.0, 1.05, 0.98}, 2);
  adagc.scales(std::vector<double>{0.25, 0.0}, 0);
  EXPECT_DOUBLE_EQ(adagc.gamma()[0], 0.5);
  EXPECT_TRUE(std::isinf(adagc.gamma()[1]));
  const auto h = adagc.scales(std::vector<double>{0.25, 0.0}, 1);
  EXPECT_EQ(h[1], 1.0);
}

TEST(AdaGC, StateRoundTripsThroughJson) {
  AdaGC a(AdaGCSettings{}, 3), b(AdaGCSettings{}, 3);
  a.scales(std::vector<double>{0.3, 0.0, 2.0}, 0);
  b.load_state(nlohmann::json::parse(a.state_json().dump()));
  EXPECT_EQ(a.gamma(), b.gamma());  // +inf (never seen) included
  AdaGC wrong(AdaGCSettings{}, 2);
  EXPECT_THROW(wrong.load_state(a.state_json()), Error);
}

}  // namespace test_adagc
}  // namespace
}  // namespace lsgpt
