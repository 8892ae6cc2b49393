// Small-sample statistics for comparing training runs seed by seed: the
// paired t-test (Student, 1908) and Holm's step-down correction for several
// comparisons against one baseline (Holm, 1979).
#pragma once

#include <cstddef>
#include <vector>

namespace lsgpt {

// Mean and sample standard deviation (n - 1 in the denominator; 0 for n < 2).
double mean_of(const std::vector<double>& v);
double sample_stddev(const std::vector<double>& v);

// P(T <= t) for Student's t distribution with dof > 0 degrees of freedom,
// through the regularised incomplete beta function (accurate to ~1e-12).
double student_t_cdf(double t, double dof);

// The t with P(T <= t) = p, 0 < p < 1 (bisection on student_t_cdf).
double student_t_quantile(double p, double dof);

struct PairedTest {
  size_t n = 0;             // pairs
  double mean_diff = 0;     // mean of (treatment - baseline)
  double sd_diff = 0;       // sample standard deviation of the differences
  double t = 0;             // mean_diff / (sd_diff / sqrt(n))
  double p_two_sided = 1;   // H0: the mean difference is zero
  double ci_low = 0, ci_high = 0;  // 95% confidence interval of the mean difference
};

// Paired t-test of treatment[i] - baseline[i]. Needs n >= 2 pairs of equal
// length (throws otherwise). With all differences equal (sd 0), p is 0 when
// they are non-zero and 1 when zero, and the interval is that single value.
PairedTest paired_t_test(const std::vector<double>& treatment, const std::vector<double>& baseline);

// Holm's step-down procedure: for each p-value, whether its hypothesis is
// rejected at family-wise error rate alpha.
std::vector<bool> holm_reject(const std::vector<double>& p_values, double alpha = 0.05);

}  // namespace lsgpt
