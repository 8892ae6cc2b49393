#include "core/statistics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

namespace lsgpt {
namespace {

// Continued fraction of the incomplete beta function, evaluated with the
// modified Lentz method (Press et al., Numerical Recipes, 3rd ed., 6.4).
double beta_continued_fraction(double a, double b, double x) {
  constexpr double tiny = 1e-300, eps = 1e-15;
  double c = 1, d = 1 - (a + b) * x / (a + 1);
  d = 1 / (std::abs(d) < tiny ? tiny : d);
  double h = d;
  for (int m = 1; m <= 500; ++m) {
    const double m2 = 2.0 * m;
    for (double coeff : {m * (b - m) * x / ((a + m2 - 1) * (a + m2)),
                         -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))}) {
      d = 1 + coeff * d;
      d = 1 / (std::abs(d) < tiny ? tiny : d);
      c = 1 + coeff / c;
      if (std::abs(c) < tiny) c = tiny;
      h *= d * c;
    }
    if (std::abs(d * c - 1) < eps) break;
  }
  return h;
}

// I_x(a, b), the regularised incomplete beta function.
double regularized_incomplete_beta(double a, double b, double x) {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const double log_front =
      std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x);
  // The fraction converges fast for x < (a + 1) / (a + b + 2); use symmetry otherwise.
  if (x < (a + 1) / (a + b + 2)) return std::exp(log_front) * beta_continued_fraction(a, b, x) / a;
  return 1 - std::exp(log_front) * beta_continued_fraction(b, a, 1 - x) / b;
}

}  // namespace

double mean_of(const std::vector<double>& v) {
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  return std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
}

double sample_stddev(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean_of(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / double(v.size() - 1));
}

double student_t_cdf(double t, double dof) {
  if (!(dof > 0)) throw std::invalid_argument("student_t_cdf: degrees of freedom must be > 0");
  if (std::isinf(t)) return t > 0 ? 1 : 0;
  const double tail = 0.5 * regularized_incomplete_beta(dof / 2, 0.5, dof / (dof + t * t));
  return t >= 0 ? 1 - tail : tail;
}

double student_t_quantile(double p, double dof) {
  if (!(p > 0 && p < 1)) throw std::invalid_argument("student_t_quantile: p must be in (0, 1)");
  double lo = -1e6, hi = 1e6;
  for (int i = 0; i < 200 && hi - lo > 1e-12 * std::max(1.0, std::abs(lo)); ++i) {
    const double mid = 0.5 * (lo + hi);
    (student_t_cdf(mid, dof) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

PairedTest paired_t_test(const std::vector<double>& treatment, const std::vector<double>& baseline) {
  if (treatment.size() != baseline.size() || treatment.size() < 2)
    throw std::invalid_argument("paired_t_test needs two samples of equal size >= 2");
  std::vector<double> diff(treatment.size());
  for (size_t i = 0; i < diff.size(); ++i) diff[i] = treatment[i] - baseline[i];
  PairedTest r;
  r.n = diff.size();
  r.mean_diff = mean_of(diff);
  r.sd_diff = sample_stddev(diff);
  const double dof = double(r.n - 1), se = r.sd_diff / std::sqrt(double(r.n));
  if (se == 0) {
    r.t = r.mean_diff == 0 ? 0 : std::copysign(INFINITY, r.mean_diff);
    r.p_two_sided = r.mean_diff == 0 ? 1 : 0;
    r.ci_low = r.ci_high = r.mean_diff;
    return r;
  }
  r.t = r.mean_diff / se;
  r.p_two_sided = 2 * student_t_cdf(-std::abs(r.t), dof);
  const double half = student_t_quantile(0.975, dof) * se;
  r.ci_low = r.mean_diff - half;
  r.ci_high = r.mean_diff + half;
  return r;
}

std::vector<bool> holm_reject(const std::vector<double>& p_values, double alpha) {
  std::vector<size_t> order(p_values.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p_values[a] < p_values[b]; });
  std::vector<bool> reject(p_values.size(), false);
  const size_t m = p_values.size();
  for (size_t k = 0; k < m; ++k) {
    if (!(p_values[order[k]] <= alpha / double(m - k))) break;  // stop at the first retained one
    reject[order[k]] = true;
  }
  return reject;
}

}  // namespace lsgpt
