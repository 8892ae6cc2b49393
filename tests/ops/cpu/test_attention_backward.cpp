// CPU LS-attention backward (canonical gradient, span off): central finite
// differences of the whole op in double over every entry of q, k and v on
// random inputs and random LS configurations; the explicit-matrix double
// reference in double (1e-11) and float (1e-4); dqkv fully overwritten; and
// bit-identical results for any thread count.
#include <gtest/gtest.h>
#include <omp.h>

#include <random>

#include "../../support/numeric.h"
#include "test_attention_reference.h"

namespace lsgpt {
namespace {
namespace test_attention_backward {

using testing::describe;
using testing::make_attention_spec;
using testing::random_vector;
using testing::relative_error;

std::vector<AttentionSpec> gradient_specs() {
  std::vector<AttentionSpec> specs = {
      make_attention_spec(1, 1, 1, 1, 0, 1),  make_attention_spec(2, 6, 2, 3, 2, 1),
      make_attention_spec(1, 7, 3, 5, 3, 7),  make_attention_spec(1, 7, 3, 5, 3, 40),
      make_attention_spec(2, 8, 2, 4, 0, 1),  make_attention_spec(1, 9, 3, 3, 2, 3),
      make_attention_spec(1, 20, 1, 3, 1, 5),  // two query blocks
  };
  std::mt19937_64 rng(99);
  for (int i = 0; i < 8; ++i) specs.push_back(testing::random_attention_spec(rng, 2, 9, 3, 5));
  return specs;
}

TEST(AttentionBackward, FiniteDifferencesInDouble) {
  uint64_t seed = 500;
  for (const AttentionSpec& s : gradient_specs()) {
    SCOPED_TRACE(describe(s));
    const size_t n_out = size_t(s.B) * s.T * s.C();
    std::vector<double> qkv = random_vector<double>(n_out * 3, ++seed, -1.5, 1.5);
    const std::vector<double> weights = random_vector<double>(n_out, ++seed);
    // L = sum(out * weights), so dL/dout = weights.
    auto loss = [&] {
      return testing::dot(testing::run_cpu_attention<double>(qkv, {}, s).out, weights);
    };
    const auto analytic = testing::run_cpu_attention<double>(qkv, weights, s).dqkv;
    const auto numeric = testing::numeric_gradient(qkv, loss);
    EXPECT_LT(relative_error(analytic, numeric), 1e-7);
  }
}

template <typename T>
void check_against_reference(double tol) {
  std::vector<AttentionSpec> specs = gradient_specs();
  // Multiple blocks of both sizes, full register tiles, odd sizes.
  specs.push_back(make_attention_spec(2, 70, 3, 33, 2, 20));
  specs.push_back(make_attention_spec(1, 150, 2, 64, 1, 100));
  specs.push_back(make_attention_spec(1, 130, 2, 40, 1, 129));
  std::mt19937_64 rng(7);
  for (int i = 0; i < 10; ++i) specs.push_back(testing::random_attention_spec(rng, 3, 40, 4, 9));
  uint64_t seed = 900;
  for (const AttentionSpec& s : specs) {
    SCOPED_TRACE(describe(s));
    const size_t n_out = size_t(s.B) * s.T * s.C();
    const auto qkv = random_vector<double>(n_out * 3, ++seed, -1.5, 1.5);
    const auto dout = random_vector<double>(n_out, ++seed);
    const auto ref = testing::reference_attention(qkv, dout, s);
    const auto got = testing::run_cpu_attention<T>(qkv, dout, s);
    EXPECT_LT(relative_error(got.dqkv, ref.dqkv), tol);
  }
}

TEST(AttentionBackward, MatchesExplicitReferenceInDouble) {
  check_against_reference<double>(1e-11);
}

// fp32 kernels against the fp64 reference; the gradient sums cancel more than
// the forward's, hence the looser bound.
TEST(AttentionBackward, MatchesExplicitReferenceInFloat) { check_against_reference<float>(1e-4); }

TEST(AttentionBackward, IndependentOfThreadCount) {
  AttentionSpec s = make_attention_spec(3, 100, 4, 16, 3, 20);  // large enough for threads
  const size_t n_out = size_t(s.B) * s.T * s.C();
  const auto qkv = random_vector<double>(n_out * 3, 41);
  const auto dout = random_vector<double>(n_out, 42);
  const int threads = omp_get_max_threads();
  for (bool span : {false, true}) {
    s.span.q.enabled = s.span.k.enabled = s.span.v.enabled = span;
    s.span.v.basis = SpanBasis::self;
    s.span.q.alpha_par = s.span.k.alpha_par = s.span.v.alpha_par = 1.5;
    std::vector<std::vector<float>> grads;
    for (int n : {1, 2, 3}) {
      omp_set_num_threads(n);
      grads.push_back(testing::run_cpu_attention<float>(qkv, dout, s).dqkv);
    }
    omp_set_num_threads(threads);
    EXPECT_EQ(grads[1], grads[0]) << "span " << span;
    EXPECT_EQ(grads[2], grads[0]) << "span " << span;
  }
}

}  // namespace test_attention_backward
}  // namespace
}  // namespace lsgpt
