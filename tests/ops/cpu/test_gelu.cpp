// GELU (tanh form): forward against the formula in double, the derivative by
// finite differences (also through the fused matmul, see test_matmul.cpp),
// in-place backward (dinp aliasing dout) and float/double agreement.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/gelu.h"
#include "support/numeric.h"

namespace lsgpt {
namespace {
namespace test_gelu {

using testing::dot;
using testing::numeric_gradient;
using testing::random_vector;
using testing::relative_error;

std::vector<double> reference_forward(const std::vector<double>& x) {
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    y[i] =
        0.5 * x[i] * (1 + std::tanh(std::sqrt(2 / M_PI) * (x[i] + 0.044715 * std::pow(x[i], 3))));
  return y;
}

TEST(CpuGelu, ForwardMatchesFormulaInFloatAndDouble) {
  // Covers both tails, where tanh saturates, and the curved middle.
  const auto x = random_vector<double>(1001, 1, -6, 6);
  const auto ref = reference_forward(x);
  std::vector<double> y(x.size(), NAN);
  cpu::gelu_forward(y.data(), x.data(), x.size());
  EXPECT_LT(relative_error(y, ref), 1e-15);

  std::vector<float> x32(x.begin(), x.end()), y32(x.size(), NAN);
  cpu::gelu_forward(y32.data(), x32.data(), x.size());
  EXPECT_LT(relative_error(y32, ref), 1e-6);
  // Known values: gelu(0) = 0, gelu(1) = 0.841192 (tanh form), gelu(-10) ~ 0.
  const double pts[] = {0.0, 1.0, -10.0};
  double out[3];
  cpu::gelu_forward(out, pts, 3);
  EXPECT_EQ(out[0], 0.0);
  EXPECT_NEAR(out[1], 0.8411919906, 1e-9);
  EXPECT_NEAR(out[2], 0.0, 1e-12);
}

TEST(CpuGelu, BackwardMatchesFiniteDifferences) {
  auto x = random_vector<double>(200, 2, -5, 5);
  const auto R = random_vector<double>(x.size(), 3);
  std::vector<double> y(x.size());
  auto loss = [&] {
    cpu::gelu_forward(y.data(), x.data(), x.size());
    return dot(y, R);
  };
  const auto num = numeric_gradient(x, loss);
  std::vector<double> dx(x.size(), NAN);
  cpu::gelu_backward(dx.data(), x.data(), R.data(), x.size());
  EXPECT_LT(relative_error(dx, num), 1e-8);

  // In place: dinp aliases dout.
  auto inplace = R;
  cpu::gelu_backward(inplace.data(), x.data(), inplace.data(), x.size());
  EXPECT_EQ(inplace, dx);
}

TEST(CpuGelu, FloatTanhApproximationIsAccurateOnEveryInput) {
  // The float path replaces tanhf by a rational approximation: check it on a
  // dense grid well past saturation, its oddness and NaN propagation.
  double worst = 0;
  for (int i = -200000; i <= 200000; ++i) {
    const float u = float(i) * 1e-4f;
    const float t = cpu::gelu_tanh(u);
    worst = std::max(worst, std::abs(double(t) - std::tanh(double(u))));
    ASSERT_EQ(t, -cpu::gelu_tanh(-u)) << u;
    ASSERT_LE(std::abs(t), 1.0f) << u;
  }
  EXPECT_LT(worst, 4e-7);
  EXPECT_NEAR(cpu::gelu_tanh(1e30f), 1.0f, 3e-7);
  EXPECT_NEAR(cpu::gelu_tanh(-1e30f), -1.0f, 3e-7);
  EXPECT_TRUE(std::isnan(cpu::gelu_tanh(std::numeric_limits<float>::quiet_NaN())));
  // Near zero the relative error matters (GELU's slope there is set by it).
  EXPECT_NEAR(cpu::gelu_tanh(1e-6f) / 1e-6f, 1.0f, 1e-6f);
}

TEST(CpuGelu, BackwardFloatAgreesWithDouble) {
  const auto x = random_vector<double>(5000, 4, -6, 6);
  const auto d = random_vector<double>(x.size(), 5);
  std::vector<double> dx(x.size());
  cpu::gelu_backward(dx.data(), x.data(), d.data(), x.size());
  std::vector<float> x32(x.begin(), x.end()), d32(d.begin(), d.end()), dx32(x.size());
  cpu::gelu_backward(dx32.data(), x32.data(), d32.data(), x.size());
  EXPECT_LT(relative_error(dx32, dx), 1e-6);
}

}  // namespace test_gelu
}  // namespace
}  // namespace lsgpt
