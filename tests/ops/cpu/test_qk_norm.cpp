// CPU QK-norm: the forward against a direct RMSNorm per head, the backward
// (input and gain gradients) against finite differences in double, in place
// and not, and float against double.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ops/cpu/qk_norm.h"
#include "support/numeric.h"

namespace lsgpt {
namespace {
namespace test_qk_norm {

using testing::numeric_gradient;
using testing::random_vector;
using testing::relative_error;

constexpr int N = 5, H = 3, D = 7;
constexpr size_t C = size_t(H) * D, Q = size_t(N) * 3 * C;
constexpr double kEps = 1e-6;

std::vector<double> reference_forward(const std::vector<double>& x, const std::vector<double>& gq,
                                      const std::vector<double>& gk) {
  std::vector<double> y = x;
  for (int n = 0; n < N; ++n)
    for (int part = 0; part < 2; ++part)
      for (int h = 0; h < H; ++h) {
        const size_t base = size_t(n) * 3 * C + part * C + size_t(h) * D;
        long double ss = 0;
        for (int d = 0; d < D; ++d) ss += (long double)x[base + d] * x[base + d];
        const long double r = 1.0L / std::sqrt(ss / D + kEps);
        for (int d = 0; d < D; ++d)
          y[base + d] = double(x[base + d] * r * (part == 0 ? gq[d] : gk[d]));
      }
  return y;
}

TEST(CpuQkNorm, ForwardMatchesAPerHeadRmsNorm) {
  const auto x = random_vector<double>(Q, 1, -2, 2);
  const auto gq = random_vector<double>(D, 2, 0.5, 1.5), gk = random_vector<double>(D, 3, 0.5, 1.5);
  std::vector<double> y(Q, NAN), rstd(size_t(N) * 2 * H, NAN);
  cpu::qk_norm_forward(y.data(), rstd.data(), x.data(), gq.data(), gk.data(), N, H, D, kEps);
  EXPECT_LT(relative_error(y, reference_forward(x, gq, gk)), 1e-15);
  for (double r : rstd) EXPECT_TRUE(std::isfinite(r) && r > 0);
  // v is copied unchanged; in place gives the same result.
  for (size_t i = 2 * C; i < 3 * C; ++i) EXPECT_EQ(y[i], x[i]);
  auto inplace = x;
  cpu::qk_norm_forward(inplace.data(), static_cast<double*>(nullptr), inplace.data(), gq.data(),
                       gk.data(), N, H, D, kEps);
  EXPECT_EQ(inplace, y);
}

void check_backward(bool in_place) {
  auto x = random_vector<double>(Q, 4, -2, 2);
  auto gq = random_vector<double>(D, 5, 0.5, 1.5), gk = random_vector<double>(D, 6, 0.5, 1.5);
  const auto dy = random_vector<double>(Q, 7, -1, 1);
  auto objective = [&] {
    const auto y = reference_forward(x, gq, gk);
    double s = 0;
    for (size_t i = 0; i < Q; ++i) s += dy[i] * y[i];
    return s;
  };
  const auto num_x = numeric_gradient(x, objective, 1e-6);
  const auto num_gq = numeric_gradient(gq, objective, 1e-6);
  const auto num_gk = numeric_gradient(gk, objective, 1e-6);

  std::vector<double> y(Q), rstd(size_t(N) * 2 * H);
  cpu::qk_norm_forward(y.data(), rstd.data(), x.data(), gq.data(), gk.data(), N, H, D, kEps);
  // Gain gradients accumulate onto what is there.
  const auto start_q = random_vector<double>(D, 8, -1, 1), start_k = random_vector<double>(D, 9, -1, 1);
  auto dgq = start_q, dgk = start_k;
  std::vector<double> dx(Q, NAN);
  if (in_place) {
    dx = dy;
    cpu::qk_norm_backward(dx.data(), dgq.data(), dgk.data(), dx.data(), x.data(), gq.data(),
                          gk.data(), rstd.data(), N, H, D);
  } else {
    cpu::qk_norm_backward(dx.data(), dgq.data(), dgk.data(), dy.data(), x.data(), gq.data(),
                          gk.data(), rstd.data(), N, H, D);
  }
  EXPECT_LT(relative_error(dx, num_x), 1e-8);
  for (int d = 0; d < D; ++d) dgq[d] -= start_q[d], dgk[d] -= start_k[d];
  EXPECT_LT(relative_error(dgq, num_gq), 1e-8);
  EXPECT_LT(relative_error(dgk, num_gk), 1e-8);
}

TEST(CpuQkNorm, BackwardMatchesFiniteDifferences) { check_backward(false); }
TEST(CpuQkNorm, BackwardInPlaceMatchesFiniteDifferences) { check_backward(true); }

TEST(CpuQkNorm, FloatAgreesWithDouble) {
  const auto x = random_vector<double>(Q, 10, -2, 2);
  const auto g = random_vector<double>(D, 11, 0.5, 1.5);
  std::vector<double> y64(Q), r64(size_t(N) * 2 * H);
  cpu::qk_norm_forward(y64.data(), r64.data(), x.data(), g.data(), g.data(), N, H, D, kEps);
  const std::vector<float> xf(x.begin(), x.end()), gf(g.begin(), g.end());
  std::vector<float> y32(Q), r32(size_t(N) * 2 * H);
  cpu::qk_norm_forward(y32.data(), r32.data(), xf.data(), gf.data(), gf.data(), N, H, D, kEps);
  EXPECT_LT(relative_error(std::vector<double>(y32.begin(), y32.end()), y64), 1e-6);
}

}  // namespace test_qk_norm
}  // namespace
}  // namespace lsgpt
