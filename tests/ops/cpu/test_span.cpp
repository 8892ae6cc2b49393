// The span/violation gradient decomposition (docs/SPAN.md): the row projection
// on hand-checked vectors; then the attention backward with span settings:
// (a) disabled targets are bit-identical to canonical and an enabled target
// leaves the other gradients bit-identical, (b) alphas 1 give the canonical
// gradient, (c) random masks and settings match the explicit-P double
// reference of test_attention_reference.h, (d) the forward never changes,
// (e) rows without a direction (u = 0 for each basis) are left exactly as
// they were.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "../../support/numeric.h"
#include "ops/cpu/span_projection.h"
#include "test_attention_reference.h"

namespace lsgpt {
namespace {
namespace test_span {

using testing::describe;
using testing::make_attention_spec;
using testing::random_vector;
using testing::relative_error;

SpanTarget target(SpanBasis basis, double alpha_par, double alpha_perp) {
  SpanTarget t;
  t.enabled = true, t.basis = basis, t.alpha_par = alpha_par, t.alpha_perp = alpha_perp;
  return t;
}

// Slices one of q (part 0), k (1) or v (2) out of a [B, T, 3C] gradient.
template <typename T>
std::vector<T> part(const std::vector<T>& dqkv, int which, int C) {
  std::vector<T> p;
  for (size_t row = 0; row < dqkv.size() / (3 * C); ++row)
    p.insert(p.end(), dqkv.begin() + row * 3 * C + which * C,
             dqkv.begin() + row * 3 * C + (which + 1) * C);
  return p;
}

// Relative error of one part, measured against the whole gradient's norm
// when the part itself is (legitimately) zero, e.g. dQ and dK with T = 1 or
// both alphas 0, where any rounding residue would be an infinite relative error.
template <typename T>
double part_error(const std::vector<T>& got, const std::vector<double>& ref, int which, int C) {
  const auto g = part(got, which, C), r = part(ref, which, C);
  double diff = 0, norm = 0, all = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    diff += (double(g[i]) - r[i]) * (double(g[i]) - r[i]);
    norm += r[i] * r[i];
  }
  for (double x : ref) all += x * x;
  if (std::isnan(diff)) return INFINITY;
  return std::sqrt(diff) / std::max({std::sqrt(norm), 1e-3 * std::sqrt(all), 1e-300});
}

TEST(SpanProjection, SplitsAlongDirection) {
  // g = (1, 2), u along x: g_par = (1, 0), g_perp = (0, 2).
  double g[2] = {1, 2};
  const double u[2] = {5, 0};
  ASSERT_TRUE(cpu::span_project_row(g, u, 2, 3.0, 0.5));
  EXPECT_DOUBLE_EQ(g[0], 3.0);
  EXPECT_DOUBLE_EQ(g[1], 1.0);
  // Oblique direction: u = (1, 1), g = (3, 1): g_par = (2, 2), g_perp = (1, -1).
  float h[2] = {3, 1};
  const float v[2] = {1, 1};
  ASSERT_TRUE(cpu::span_project_row(h, v, 2, -1.0, 2.0));
  EXPECT_FLOAT_EQ(h[0], -2 + 2);
  EXPECT_FLOAT_EQ(h[1], -2 - 2);
}

TEST(SpanProjection, EqualAlphasScaleExactly) {
  const auto g0 = random_vector<float>(37, 1);
  const auto u = random_vector<float>(37, 2);
  auto g = g0;
  ASSERT_TRUE(cpu::span_project_row(g.data(), u.data(), 37, 1.0, 1.0));
  EXPECT_EQ(0, std::memcmp(g.data(), g0.data(), g.size() * sizeof(float)));
  ASSERT_TRUE(cpu::span_project_row(g.data(), u.data(), 37, 2.0, 2.0));
  for (size_t i = 0; i < g.size(); ++i) EXPECT_EQ(g[i], 2 * g0[i]);
}

TEST(SpanProjection, AbsentDirectionLeavesRowUnchanged) {
  double g[3] = {1, -2, 3};  // g.g = 14: threshold 1e-12 * 15
  const double zero[3] = {0, 0, 0};
  EXPECT_FALSE(cpu::span_project_row(g, zero, 3, 3.0, 0.0));
  const double tiny[3] = {3.8e-6, 0, 0};  // u.u = 1.444e-11 <= 1.5e-11
  EXPECT_FALSE(cpu::span_project_row(g, tiny, 3, 3.0, 0.0));
  EXPECT_EQ(g[0], 1);
  EXPECT_EQ(g[1], -2);
  EXPECT_EQ(g[2], 3);
  const double small[3] = {4e-6, 0, 0};  // u.u = 1.6e-11 > 1.5e-11: projected
  EXPECT_TRUE(cpu::span_project_row(g, small, 3, 3.0, 0.0));
  EXPECT_NEAR(g[0], 3.0, 1e-12);
  EXPECT_EQ(g[1], 0);
  EXPECT_EQ(g[2], 0);
}

struct Problem {
  AttentionSpec spec;
  std::vector<double> qkv, dout;
};

Problem make_problem(const AttentionSpec& s, uint64_t seed) {
  const size_t n_out = size_t(s.B) * s.T * s.C();
  return {s, random_vector<double>(3 * n_out, seed, -1.5, 1.5),
          random_vector<double>(n_out, seed + 1)};
}

std::vector<AttentionSpec> span_shapes() {
  std::vector<AttentionSpec> shapes = {
      make_attention_spec(1, 1, 1, 2, 0, 1),    make_attention_spec(2, 9, 3, 5, 2, 1),
      make_attention_spec(2, 9, 3, 5, 3, 9),    make_attention_spec(1, 12, 2, 7, 0, 1),
      make_attention_spec(2, 45, 3, 33, 2, 20), make_attention_spec(1, 100, 2, 64, 1, 30),
  };
  std::mt19937_64 rng(3);
  for (int i = 0; i < 12; ++i) shapes.push_back(testing::random_attention_spec(rng, 2, 30, 4, 9));
  return shapes;
}

// A random setting: each target on or off, basis and alphas drawn from values
// that include 0, negative and large.
SpanLayer random_setting(std::mt19937_64& rng) {
  const double alphas[] = {0.0, -0.5, 0.5, 1.0, 1.5, 2.0, 3.0};
  auto alpha = [&] { return alphas[std::uniform_int_distribution<int>(0, 6)(rng)]; };
  auto coin = [&] { return std::uniform_int_distribution<int>(0, 1)(rng) == 1; };
  SpanLayer s;
  do {
    s.q = target(coin() ? SpanBasis::cross : SpanBasis::self, alpha(), alpha());
    s.k = target(coin() ? SpanBasis::cross : SpanBasis::self, alpha(), alpha());
    s.v = target(SpanBasis::self, alpha(), alpha());
    s.q.enabled = coin(), s.k.enabled = coin(), s.v.enabled = coin();
  } while (!s.any());
  return s;
}

TEST(SpanBackward, DisabledTargetsAreBitIdenticalToCanonical) {
  for (const AttentionSpec& shape : span_shapes()) {
    SCOPED_TRACE(describe(shape));
    const Problem p = make_problem(shape, 77);
    const auto canonical = testing::run_cpu_attention<float>(p.qkv, p.dout, shape);
    AttentionSpec off = shape;
    off.span.q = target(SpanBasis::cross, 3, 0), off.span.q.enabled = false;
    off.span.k = target(SpanBasis::self, -1, 2), off.span.k.enabled = false;
    off.span.v = target(SpanBasis::self, 0, 5), off.span.v.enabled = false;
    const auto got = testing::run_cpu_attention<float>(p.qkv, p.dout, off);
    ASSERT_EQ(got.dqkv.size(), canonical.dqkv.size());
    EXPECT_EQ(0,
              std::memcmp(got.dqkv.data(), canonical.dqkv.data(), got.dqkv.size() * sizeof(float)));
    // One target on: the other two gradients keep the canonical bits.
    const SpanTarget on[3] = {target(SpanBasis::cross, 2, 1), target(SpanBasis::cross, 0.5, 1),
                              target(SpanBasis::self, 3, 1)};
    for (int which = 0; which < 3; ++which) {
      AttentionSpec one = shape;
      (which == 0 ? one.span.q : which == 1 ? one.span.k : one.span.v) = on[which];
      const auto g = testing::run_cpu_attention<float>(p.qkv, p.dout, one);
      for (int other = 0; other < 3; ++other) {
        if (other == which) continue;
        EXPECT_EQ(part(g.dqkv, other, shape.C()), part(canonical.dqkv, other, shape.C()))
            << "target " << which << " changed part " << other;
      }
    }
  }
}

TEST(SpanBackward, UnitAlphasGiveCanonicalGradient) {
  for (const AttentionSpec& shape : span_shapes())
    for (SpanBasis basis : {SpanBasis::cross, SpanBasis::self}) {
      AttentionSpec s = shape;
      s.span.q = target(basis, 1, 1), s.span.k = target(basis, 1, 1);
      s.span.v = target(SpanBasis::self, 1, 1);
      SCOPED_TRACE(describe(s));
      const Problem p = make_problem(shape, 88);
      const auto canonical = testing::run_cpu_attention<float>(p.qkv, p.dout, shape);
      const auto got = testing::run_cpu_attention<float>(p.qkv, p.dout, s);
      EXPECT_LT(relative_error(got.dqkv, canonical.dqkv), 1e-6);
    }
}

template <typename T>
void check_random_settings(double tol) {
  std::mt19937_64 rng(2024);
  uint64_t seed = 3000;
  for (const AttentionSpec& shape : span_shapes())
    for (int trial = 0; trial < 4; ++trial) {
      AttentionSpec s = shape;
      s.span = random_setting(rng);
      SCOPED_TRACE(describe(s));
      const Problem p = make_problem(s, ++seed);
      const auto ref = testing::reference_attention(p.qkv, p.dout, s);
      const auto got = testing::run_cpu_attention<T>(p.qkv, p.dout, s);
      for (int which = 0; which < 3; ++which)
        EXPECT_LT(part_error(got.dqkv, ref.dqkv, which, s.C()), tol)
            << "part "
            << "qkv"[which];
    }
}

TEST(SpanBackward, MatchesExplicitReferenceInDouble) { check_random_settings<double>(1e-10); }

// fp32: u (kbar, qbar) and g carry fp32 rounding into the projection coefficient.
TEST(SpanBackward, MatchesExplicitReferenceInFloat) { check_random_settings<float>(2e-4); }

TEST(SpanBackward, ForwardOutputsNeverChange) {
  std::mt19937_64 rng(5);
  for (const AttentionSpec& shape : span_shapes()) {
    const Problem p = make_problem(shape, 99);
    const auto canonical = testing::run_cpu_attention<float>(p.qkv, {}, shape);
    for (int trial = 0; trial < 3; ++trial) {
      AttentionSpec s = shape;
      s.span = random_setting(rng);
      SCOPED_TRACE(describe(s));
      const auto got = testing::run_cpu_attention<float>(p.qkv, {}, s);
      EXPECT_EQ(got.out, canonical.out);
      EXPECT_EQ(got.lse, canonical.lse);
      EXPECT_EQ(got.max_logit, canonical.max_logit);
    }
  }
}

// Rows whose direction is zero keep their canonical gradient exactly: zero
// query rows (self basis on dQ), zero key rows (self on dK), zero value rows
// (self on dV); the other rows are rewritten, so the test can fail.
TEST(SpanBackward, SelfBasisRowsWithoutDirectionAreUnchanged) {
  const AttentionSpec shape = make_attention_spec(2, 24, 3, 6, 2, 3);
  const int C = shape.C();
  Problem p = make_problem(shape, 123);
  auto zero_rows = [&](int which, int parity) {
    for (int bt = 0; bt < shape.B * shape.T; ++bt)
      if (bt % 2 == parity)
        for (int c = 0; c < C; ++c) p.qkv[size_t(bt) * 3 * C + which * C + c] = 0;
  };
  zero_rows(0, 0), zero_rows(1, 1), zero_rows(2, 0);
  const auto canonical = testing::run_cpu_attention<float>(p.qkv, p.dout, shape);
  AttentionSpec self = shape;
  self.span.q = target(SpanBasis::self, 3, 0), self.span.k = target(SpanBasis::self, 3, 0);
  self.span.v = target(SpanBasis::self, 3, 0);
  const auto g = testing::run_cpu_attention<float>(p.qkv, p.dout, self);
  for (int bt = 0; bt < shape.B * shape.T; ++bt)
    for (int which = 0; which < 3; ++which) {
      const size_t at = size_t(bt) * 3 * C + which * C;
      // q and v rows are zero at even positions, k rows at odd ones.
      const bool zero = (which == 1) == (bt % 2 == 1);
      const bool same = std::memcmp(&g.dqkv[at], &canonical.dqkv[at], C * sizeof(float)) == 0;
      EXPECT_EQ(same, zero) << "row " << bt << " part "
                            << "qkv"[which];
    }
}

// Cross basis on dQ: with k_1 = -k_0 and q_1 orthogonal to both, query 1
// weighs its two keys equally, so kbar_1 = 0 exactly while dQ_1 is not zero.
TEST(SpanBackward, CrossQueryRowWithZeroKbarIsUnchanged) {
  AttentionSpec shape = make_attention_spec(1, 2, 2, 4, 1, 2);
  const int C = shape.C();  // head 0 is built by hand, head 1 stays random
  Problem p = make_problem(shape, 321);
  const double a[4] = {1, 0, 0.5, 0}, q1[4] = {0, 1, 0, 2};
  for (int d = 0; d < 4; ++d) {
    p.qkv[C + d] = a[d];           // k_0
    p.qkv[3 * C + C + d] = -a[d];  // k_1
    p.qkv[3 * C + d] = q1[d];      // q_1
  }
  AttentionSpec cross = shape;
  cross.span.q = target(SpanBasis::cross, 3, 0);
  const auto canonical = testing::run_cpu_attention<float>(p.qkv, p.dout, shape);
  const auto got = testing::run_cpu_attention<float>(p.qkv, p.dout, cross);
  ASSERT_EQ(got.kbar[C + 0], 0.0f);
  const float* dq1 = &canonical.dqkv[3 * C];
  EXPECT_NE(dq1[0] * dq1[0] + dq1[2] * dq1[2], 0.0f);
  EXPECT_EQ(0, std::memcmp(&got.dqkv[3 * C], dq1, 4 * sizeof(float)));          // head 0
  EXPECT_NE(0, std::memcmp(&got.dqkv[3 * C + 4], dq1 + 4, 4 * sizeof(float)));  // head 1
}

// Cross basis on dK: with q_0 = 0, q_1 orthogonal to k_0 and k_1, and
// q_2 = -1.5 q_1 orthogonal to k_2, the weighted query means of keys 0 and 1
// cancel (P_10 = 1/2, P_20 = 1/3) to rounding, far below the eps threshold,
// while their dK rows are not zero; key 2 (seen by q_2 alone) is rewritten.
TEST(SpanBackward, CrossKeyRowWithZeroQbarIsUnchanged) {
  const AttentionSpec shape = make_attention_spec(1, 3, 1, 4, 0, 1);
  const int C = shape.C();
  Problem p = make_problem(shape, 654);
  const double q[3][4] = {{0, 0, 0, 0}, {0, 0, 0, 1}, {0, 0, 0, -1.5}};
  const double k[3][4] = {{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}};
  for (int t = 0; t < 3; ++t)
    for (int d = 0; d < 4; ++d) p.qkv[t * 3 * C + d] = q[t][d], p.qkv[t * 3 * C + C + d] = k[t][d];
  for (bool in_double : {false, true}) {
    SCOPED_TRACE(in_double ? "double" : "float");
    AttentionSpec cross = shape;
    cross.span.k = target(SpanBasis::cross, 3, 0.5);
    auto dk = [&](const AttentionSpec& s) {
      std::vector<double> g;
      if (in_double)
        g = testing::run_cpu_attention<double>(p.qkv, p.dout, s).dqkv;
      else
        for (float x : testing::run_cpu_attention<float>(p.qkv, p.dout, s).dqkv) g.push_back(x);
      return part(g, 1, C);
    };
    const auto canonical = dk(shape), got = dk(cross);
    for (int j = 0; j < 2; ++j) {
      EXPECT_NE(canonical[j * 4 + 3], 0.0) << "key " << j;
      for (int d = 0; d < 4; ++d) EXPECT_EQ(got[j * 4 + d], canonical[j * 4 + d]) << "key " << j;
    }
    EXPECT_NE(got[2 * 4 + 3], canonical[2 * 4 + 3]);
  }
}

}  // namespace test_span
}  // namespace
}  // namespace lsgpt
