// AdamW against a scalar reference written from the paper's update rule
// (decoupled weight decay, bias correction, grad_scale applied first) over
// several steps, float/double agreement, and the sum of squares: exact
// against a long-double sum, bit-identical for any thread count, NaN/inf
// propagating.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/adamw.h"
#include "support/numeric.h"

namespace lsgpt {
namespace {
namespace test_adamw {

using testing::random_vector;
using testing::relative_error;

// One element, one step, written out the long way.
void reference_step(double& p, double& m, double& v, double grad, const AdamWSettings& s) {
  const double g = grad * s.grad_scale;
  m = s.beta1 * m + (1 - s.beta1) * g;
  v = s.beta2 * v + (1 - s.beta2) * g * g;
  const double m_hat = m / (1 - std::pow(s.beta1, s.step));
  const double v_hat = v / (1 - std::pow(s.beta2, s.step));
  p = p - s.lr * m_hat / (std::sqrt(v_hat) + s.eps) - s.lr * s.weight_decay * p;
}

AdamWSettings settings_for_step(long step) {
  AdamWSettings s;
  s.lr = 1e-2 * (1.0 + 0.1 * step);  // a schedule: the lr changes every step
  s.beta1 = 0.9, s.beta2 = 0.95, s.eps = 1e-8;
  s.weight_decay = 0.1;
  s.step = step;
  s.grad_scale = 0.5 + 0.2 * step;  // clipping factors differ per step
  return s;
}

TEST(CpuAdamW, MatchesScalarReferenceOverSeveralSteps) {
  const size_t n = 1031;
  const auto p0 = random_vector<double>(n, 1);
  std::vector<double> p = p0, m(n, 0.0), v(n, 0.0);
  std::vector<double> rp = p0, rm(n, 0.0), rv(n, 0.0);
  std::vector<float> p32(p0.begin(), p0.end()), m32(n, 0.f), v32(n, 0.f);
  for (long step = 1; step <= 5; ++step) {
    const auto s = settings_for_step(step);
    // Fresh gradients every step, with some tiny ones where eps matters.
    auto g = random_vector<double>(n, 100 + step, -2, 2);
    for (size_t i = 0; i < n; i += 7) g[i] *= 1e-9;
    std::vector<float> g32(g.begin(), g.end());
    for (size_t i = 0; i < n; ++i) reference_step(rp[i], rm[i], rv[i], g[i], s);
    cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), n, s);
    cpu::adamw_update(p32.data(), g32.data(), m32.data(), v32.data(), n, s);
  }
  EXPECT_LT(relative_error(p, rp), 1e-14);
  EXPECT_LT(relative_error(m, rm), 1e-14);
  EXPECT_LT(relative_error(v, rv), 1e-14);
  // The parameters moved (the check is not vacuous) ...
  EXPECT_GT(relative_error(p0, rp), 1e-2);
  // ... and float storage only rounds them.
  EXPECT_LT(relative_error(p32, rp), 1e-6);
  EXPECT_LT(relative_error(m32, rm), 1e-6);
  EXPECT_LT(relative_error(v32, rv), 1e-6);
}

TEST(CpuAdamW, WeightDecayIsDecoupledFromTheGradient) {
  // A zero gradient leaves m and v at zero; the parameter only decays by
  // lr * wd * p (in Adam with L2 the decay would pass through 1/sqrt(v)).
  const size_t n = 16;
  auto p = random_vector<double>(n, 2);
  const auto p0 = p;
  std::vector<double> g(n, 0.0), m(n, 0.0), v(n, 0.0);
  AdamWSettings s;
  s.lr = 0.1, s.weight_decay = 0.5, s.step = 3;
  cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), n, s);
  for (size_t i = 0; i < n; ++i) EXPECT_DOUBLE_EQ(p[i], p0[i] * (1 - 0.1 * 0.5));
}

TEST(CpuSumSquares, MatchesLongDoubleSumAndIsThreadCountInvariant) {
  // Not a multiple of the chunk size, and large enough for several chunks.
  const size_t n = 100003;
  const auto x = random_vector<float>(n, 3, -3, 3);
  long double ref = 0;
  for (float v : x) ref += (long double)v * v;
  auto run = [&](int threads) {
    const int keep = omp_get_max_threads();
    omp_set_num_threads(threads);
    const double s = cpu::sum_squares(x.data(), n);
    omp_set_num_threads(keep);
    return s;
  };
  const double s2 = run(2);
  EXPECT_NEAR(s2, double(ref), 1e-12 * double(ref));
  EXPECT_EQ(s2, run(2));
  EXPECT_EQ(s2, run(1));
  EXPECT_EQ(s2, run(3));
  std::vector<double> x64(x.begin(), x.end());
  EXPECT_NEAR(cpu::sum_squares(x64.data(), n), double(ref), 1e-12 * double(ref));
  EXPECT_EQ(cpu::sum_squares(x.data(), 0), 0.0);
}

TEST(CpuSumSquares, PropagatesNanAndInf) {
  auto x = random_vector<float>(50000, 4);
  x[40000] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(cpu::sum_squares(x.data(), x.size())));
  x[40000] = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(std::isinf(cpu::sum_squares(x.data(), x.size())));
}

}  // namespace test_adamw
}  // namespace
}  // namespace lsgpt
