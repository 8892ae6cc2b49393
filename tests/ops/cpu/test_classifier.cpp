// Softmax cross-entropy over a padded vocabulary: losses against a double
// log-sum-exp reference, the in-place gradient against finite differences,
// padded columns and ignored targets (< 0) giving exactly zero, dloss
// scaling, stability at large logits, the forward-only mode leaving the
// logits untouched, and a target >= V refused.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/error.h"
#include "ops/cpu/classifier.h"
#include "support/numeric.h"

namespace lsgpt {
namespace {
namespace test_classifier {

using testing::numeric_gradient;
using testing::random_vector;
using testing::relative_error;

struct Case {
  int N = 6, V, Vp;
  std::vector<int32_t> targets;
  std::vector<double> logits;
  explicit Case(uint64_t seed, int V_ = 37, int Vp_ = 48, double scale = 3.0) : V(V_), Vp(Vp_) {
    logits = random_vector<double>(size_t(N) * Vp, seed, -scale, scale);
    // Huge values in the padding: any read of a padded column shows up.
    for (int n = 0; n < N; ++n)
      for (int v = V; v < Vp; ++v) logits[size_t(n) * Vp + v] = 1e4;
    std::mt19937 rng{uint32_t(seed)};
    targets.resize(N);
    for (auto& t : targets) t = int32_t(rng() % V);
    targets[2] = -1;  // ignored rows
    targets[4] = -100;
    targets[5] = V - 1;  // last real column
  }
};

std::vector<double> reference_losses(const Case& k, const std::vector<double>& logits) {
  std::vector<double> losses(k.N);
  for (int n = 0; n < k.N; ++n) {
    if (k.targets[n] < 0) continue;
    const double* x = &logits[size_t(n) * k.Vp];
    long double mx = x[0];
    for (int v = 1; v < k.V; ++v) mx = std::max<long double>(mx, x[v]);
    long double sum = 0;
    for (int v = 0; v < k.V; ++v) sum += std::exp((long double)x[v] - mx);
    losses[n] = double(std::log(sum) + mx - x[k.targets[n]]);
  }
  return losses;
}

TEST(CpuClassifier, LossesMatchReferenceInFloatAndDouble) {
  Case k(1);
  const auto ref = reference_losses(k, k.logits);
  std::vector<double> losses(k.N, NAN);
  auto logits = k.logits;
  cpu::softmax_cross_entropy(losses.data(), logits.data(), k.targets.data(), k.N, k.V, k.Vp, 1.0,
                             false);
  EXPECT_LT(relative_error(losses, ref), 1e-14);
  EXPECT_EQ(logits, k.logits);  // forward only: logits untouched
  EXPECT_EQ(losses[2], 0.0);
  EXPECT_EQ(losses[4], 0.0);

  std::vector<float> logits32(k.logits.begin(), k.logits.end()), losses32(k.N, NAN);
  cpu::softmax_cross_entropy(losses32.data(), logits32.data(), k.targets.data(), k.N, k.V, k.Vp,
                             1.0, false);
  EXPECT_LT(relative_error(losses32, ref), 1e-6);
}

TEST(CpuClassifier, StableForLargeLogits) {
  Case k(2);
  for (int n = 0; n < k.N; ++n)
    for (int v = 0; v < k.V; ++v) k.logits[size_t(n) * k.Vp + v] += 1000.0 * (n + 1);
  const auto ref = reference_losses(k, k.logits);
  std::vector<float> logits32(k.logits.begin(), k.logits.end()), losses32(k.N, NAN);
  cpu::softmax_cross_entropy(losses32.data(), logits32.data(), k.targets.data(), k.N, k.V, k.Vp,
                             1.0, true);
  for (float l : losses32) EXPECT_TRUE(std::isfinite(l));
  for (float g : logits32) EXPECT_TRUE(std::isfinite(g));
  // Float logits near 6000 carry absolute errors ~2e-4 each.
  EXPECT_LT(relative_error(losses32, ref), 1e-3);
}

TEST(CpuClassifier, GradientMatchesFiniteDifferencesWithPaddingAndIgnoredRows) {
  Case k(3);
  const double dloss = 0.37;  // e.g. 1 / (B*T*accumulation steps)
  auto x = k.logits;
  auto loss = [&] {
    double total = 0;
    for (double l : reference_losses(k, x)) total += dloss * l;
    return total;
  };
  // The reference losses must equal the kernel's before they define the check.
  std::vector<double> kernel_losses(k.N), scratch = x;
  cpu::softmax_cross_entropy(kernel_losses.data(), scratch.data(), k.targets.data(), k.N, k.V, k.Vp,
                             dloss, false);
  ASSERT_LT(relative_error(kernel_losses, reference_losses(k, x)), 1e-14);
  const auto num = numeric_gradient(x, loss, 1e-5);

  auto grad = k.logits;
  std::vector<double> losses(k.N, NAN);
  cpu::softmax_cross_entropy(losses.data(), grad.data(), k.targets.data(), k.N, k.V, k.Vp, dloss,
                             true);
  EXPECT_LT(relative_error(losses, kernel_losses), 1e-15);
  EXPECT_LT(relative_error(grad, num), 1e-8);
  for (int n = 0; n < k.N; ++n) {
    double row_sum = 0;
    for (int v = 0; v < k.Vp; ++v) {
      const double g = grad[size_t(n) * k.Vp + v];
      if (v >= k.V || k.targets[n] < 0) {
        EXPECT_EQ(g, 0.0) << "row " << n << " col " << v;
      }
      row_sum += g;
    }
    EXPECT_NEAR(row_sum, 0.0, 1e-14);  // softmax minus one-hot sums to zero
  }
}

// z-loss: the objective dloss * (CE + coef * (log Z)^2) per target row; the
// losses stay the pure cross-entropy and lse receives log Z (0 when ignored).
TEST(CpuClassifier, ZLossGradientMatchesFiniteDifferences) {
  Case k(5);
  const double dloss = 0.37, coef = 0.05;
  auto log_z_of = [&](const std::vector<double>& logits) {
    std::vector<double> out(k.N, 0.0);
    for (int n = 0; n < k.N; ++n) {
      if (k.targets[n] < 0) continue;
      const double* x = &logits[size_t(n) * k.Vp];
      long double mx = x[0], sum = 0;
      for (int v = 1; v < k.V; ++v) mx = std::max<long double>(mx, x[v]);
      for (int v = 0; v < k.V; ++v) sum += std::exp((long double)x[v] - mx);
      out[n] = double(std::log(sum) + mx);
    }
    return out;
  };
  auto x = k.logits;
  auto objective = [&] {
    const auto ce = reference_losses(k, x);
    const auto lz = log_z_of(x);
    double total = 0;
    for (int n = 0; n < k.N; ++n) total += dloss * (ce[n] + coef * lz[n] * lz[n]);
    return total;
  };
  const auto num = numeric_gradient(x, objective, 1e-5);
  auto grad = k.logits;
  std::vector<double> losses(k.N, NAN), lse(k.N, NAN);
  cpu::softmax_cross_entropy(losses.data(), grad.data(), k.targets.data(), k.N, k.V, k.Vp, dloss,
                             true, coef, lse.data());
  EXPECT_LT(relative_error(losses, reference_losses(k, k.logits)), 1e-14);
  EXPECT_LT(relative_error(lse, log_z_of(k.logits)), 1e-14);
  EXPECT_EQ(lse[2], 0.0);
  EXPECT_LT(relative_error(grad, num), 1e-8);
  // Without z-loss the gradient differs: the term is really there.
  auto plain = k.logits;
  cpu::softmax_cross_entropy(losses.data(), plain.data(), k.targets.data(), k.N, k.V, k.Vp, dloss,
                             true);
  EXPECT_GT(relative_error(plain, grad), 1e-3);
}

TEST(CpuClassifier, GradientFloatAgreesWithDoubleAndIsReproducible) {
  Case k(4, 6001, 6016);  // above the kernel's parallel threshold
  auto g64 = k.logits;
  std::vector<double> l64(k.N);
  cpu::softmax_cross_entropy(l64.data(), g64.data(), k.targets.data(), k.N, k.V, k.Vp, 0.5, true);
  auto run32 = [&] {
    std::vector<float> g(k.logits.begin(), k.logits.end()), l(k.N);
    cpu::softmax_cross_entropy(l.data(), g.data(), k.targets.data(), k.N, k.V, k.Vp, 0.5, true);
    g.insert(g.end(), l.begin(), l.end());
    return g;
  };
  const auto got = run32();
  std::vector<float> g32(got.begin(), got.begin() + g64.size());
  std::vector<float> l32(got.begin() + g64.size(), got.end());
  EXPECT_LT(relative_error(g32, g64), 1e-6);
  EXPECT_LT(relative_error(l32, l64), 1e-6);
  EXPECT_EQ(got, run32());
}

TEST(CpuClassifier, TargetOutsideVocabularyIsRefused) {
  Case k(5);
  k.targets[1] = k.V;  // a padded column is not a valid target either
  std::vector<double> losses(k.N);
  auto logits = k.logits;
  EXPECT_THROW(cpu::softmax_cross_entropy(losses.data(), logits.data(), k.targets.data(), k.N, k.V,
                                          k.Vp, 1.0, true),
               Error);
  EXPECT_EQ(logits, k.logits);  // refused before anything was written
}

}  // namespace test_classifier
}  // namespace
}  // namespace lsgpt
