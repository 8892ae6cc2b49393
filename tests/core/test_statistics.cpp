// Reference values computed with mpmath (30 digits) from the incomplete beta
// function; the Holm case by hand.
#include <gtest/gtest.h>

#include <cmath>

#include "core/statistics.h"

namespace lsgpt {
namespace {
namespace test_statistics {

TEST(Statistics, StudentTCdfMatchesReferenceValues) {
  EXPECT_NEAR(student_t_cdf(0.0, 4), 0.5, 1e-14);
  EXPECT_NEAR(student_t_cdf(2.776445105, 4), 0.975, 1e-9);
  EXPECT_NEAR(student_t_cdf(-2.0, 10), 0.03669402, 1e-8);
  EXPECT_NEAR(student_t_cdf(1.0, 1), 0.75, 1e-12);              // Cauchy: 1/2 + atan(1)/pi
  EXPECT_NEAR(student_t_cdf(12.706204736, 1), 0.975, 1e-9);
  EXPECT_NEAR(student_t_cdf(1.959963985, 1e7), 0.975, 1e-6);    // the normal limit
  EXPECT_NEAR(student_t_cdf(-5.0, 3), 0.007696219, 1e-9);
  EXPECT_THROW(student_t_cdf(1.0, 0), std::invalid_argument);
}

TEST(Statistics, StudentTQuantileInvertsTheCdf) {
  EXPECT_NEAR(student_t_quantile(0.975, 4), 2.776445105, 1e-8);
  EXPECT_NEAR(student_t_quantile(0.975, 9), 2.262157163, 1e-8);
  EXPECT_NEAR(student_t_quantile(0.05, 2), -2.91998558, 1e-8);
  EXPECT_THROW(student_t_quantile(1.0, 4), std::invalid_argument);
}

TEST(Statistics, PairedTTestMatchesR) {
  // differences -0.04 -0.03 -0.09 -0.02 -0.07: mean -0.05, sd 0.0291548,
  // t = -3.8348249, df = 4, p = 2 * 0.0092706966 (mpmath).
  const std::vector<double> x = {5.01, 4.97, 5.10, 4.95, 5.02};
  const std::vector<double> y = {5.05, 5.00, 5.19, 4.97, 5.09};
  const PairedTest r = paired_t_test(x, y);
  EXPECT_EQ(r.n, 5u);
  EXPECT_NEAR(r.mean_diff, -0.05, 1e-12);
  EXPECT_NEAR(r.sd_diff, 0.0291547595, 1e-9);
  EXPECT_NEAR(r.t, -3.8348249442, 1e-8);
  EXPECT_NEAR(r.p_two_sided, 0.0185413933, 1e-8);
  EXPECT_NEAR(r.ci_low, -0.0862004152, 1e-8);
  EXPECT_NEAR(r.ci_high, -0.0137995848, 1e-8);
}

TEST(Statistics, PairedTTestEdgeCases) {
  EXPECT_THROW(paired_t_test({1.0}, {2.0}), std::invalid_argument);
  EXPECT_THROW(paired_t_test({1.0, 2.0}, {2.0}), std::invalid_argument);
  const PairedTest same = paired_t_test({1.0, 2.0, 3.0}, {1.0, 2.0, 3.0});
  EXPECT_EQ(same.p_two_sided, 1.0);
  const PairedTest shift = paired_t_test({1.5, 2.5, 3.5}, {1.0, 2.0, 3.0});
  EXPECT_EQ(shift.p_two_sided, 0.0);
  EXPECT_EQ(shift.ci_low, 0.5);
}

TEST(Statistics, HolmStepDown) {
  // Sorted 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2: stop; 0.04 retained too.
  const std::vector<bool> r = holm_reject({0.01, 0.04, 0.03, 0.005}, 0.05);
  EXPECT_EQ(r, (std::vector<bool>{true, false, false, true}));
  EXPECT_EQ(holm_reject({0.2, 0.001}), (std::vector<bool>{false, true}));
  EXPECT_TRUE(holm_reject({}).empty());
}

}  // namespace test_statistics
}  // namespace
}  // namespace lsgpt
