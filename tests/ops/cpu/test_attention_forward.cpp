// CPU LS-attention forward against the explicit-mask double reference: out,
// lse, max_logit and kbar, in double (to 1e-12) and float (to 1e-5), for edge
// configurations (T = 1, w = 1, w >= T, MHSA, all heads local, odd head
// dims, several query blocks) and random ones; plus thread-count
// determinism and the Backend adapter.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>
#include <random>
#include <sstream>

#include "../../support/numeric.h"
#include "ops/backend.h"
#include "ops/cpu/attention_tile.h"
#include "test_attention_reference.h"

namespace lsgpt {
namespace {
namespace test_attention_forward {

using testing::AttentionReference;
using testing::describe;
using testing::make_attention_spec;
using testing::random_vector;
using testing::relative_error;

// Edge cases, then shapes that cross several query blocks (16 and 32 rows)
// and use the full register tiles (32-wide), then random LS configurations.
std::vector<AttentionSpec> forward_specs() {
  std::vector<AttentionSpec> specs = {
      make_attention_spec(1, 1, 1, 1, 0, 1),      make_attention_spec(1, 1, 2, 3, 1, 1),
      make_attention_spec(2, 9, 3, 5, 2, 1),      make_attention_spec(2, 9, 3, 5, 3, 9),
      make_attention_spec(2, 9, 3, 5, 3, 50),     make_attention_spec(1, 12, 2, 7, 0, 1),
      make_attention_spec(2, 40, 4, 8, 4, 3),     make_attention_spec(1, 70, 3, 33, 2, 20),
      make_attention_spec(1, 150, 2, 64, 1, 100), make_attention_spec(1, 150, 2, 40, 1, 130),
  };
  std::mt19937_64 rng(1234);
  for (int i = 0; i < 20; ++i) specs.push_back(testing::random_attention_spec(rng, 3, 40, 4, 9));
  return specs;
}

template <typename T>
void check_forward(double tol) {
  uint64_t seed = 100;
  for (AttentionSpec s : forward_specs()) {
    SCOPED_TRACE(describe(s));
    s.span.q.enabled = true;  // cross basis on q: kbar is written too
    const auto qkv = random_vector<double>(size_t(s.B) * s.T * 3 * s.C(), ++seed, -1.5, 1.5);
    const AttentionReference ref = testing::reference_attention(qkv, {}, s);
    const auto got = testing::run_cpu_attention<T>(qkv, {}, s);
    EXPECT_LT(relative_error(got.out, ref.out), tol);
    EXPECT_LT(relative_error(got.lse, ref.lse), tol);
    EXPECT_LT(relative_error(got.kbar, ref.kbar), tol);
    for (int h = 0; h < s.n_head; ++h)
      EXPECT_NEAR(double(got.max_logit[h]), ref.max_logit[h],
                  tol * (1 + std::abs(ref.max_logit[h])))
          << "head " << h;
  }
}

TEST(AttentionForward, MatchesExplicitMaskReferenceInDouble) { check_forward<double>(1e-12); }

// fp32 kernels against the fp64 reference: sums of at most a few hundred terms.
TEST(AttentionForward, MatchesExplicitMaskReferenceInFloat) { check_forward<float>(1e-5); }

// The vectorised fp32 exp of the softmax, over the whole range it can be given.
TEST(AttentionForward, SoftmaxExpIsAccurate) {
  double worst = 0;
  for (int i = 0; i <= 2000000; ++i) {
    const float x = -100.0f + 101.0f * float(i) / 2000000;
    const float got = cpu::attention_tile::softmax_exp(x);
    if (x < -87.34f) {
      ASSERT_EQ(got, 0.0f) << x;
    } else if (x > -87.32f) {
      const double want = std::exp(double(x));
      worst = std::max(worst, std::abs(got - want) / want);
    }
  }
  EXPECT_LT(worst, 3e-7);  // 2.5 ulp
  EXPECT_EQ(cpu::attention_tile::softmax_exp(0.0f), 1.0f);
  EXPECT_EQ(cpu::attention_tile::softmax_exp(0.0), 1.0);
}

TEST(AttentionForward, WithoutSpanLeavesKbarUntouchedAndNullable) {
  AttentionSpec s = make_attention_spec(2, 30, 3, 8, 2, 5);
  const auto qkv = random_vector<double>(size_t(s.B) * s.T * 3 * s.C(), 7);
  const auto plain = testing::run_cpu_attention<float>(qkv, {}, s);  // kbar == nullptr
  EXPECT_TRUE(plain.kbar.empty());
  // A non-null kbar is still not written when no span setting needs it.
  std::vector<float> qkv_f(qkv.begin(), qkv.end()), out(plain.out.size()), lse(plain.lse.size()),
      ml(s.n_head), kbar(plain.out.size(), 42.0f);
  cpu::attention_forward(out.data(), lse.data(), ml.data(), kbar.data(), qkv_f.data(), s);
  for (float x : kbar) ASSERT_EQ(x, 42.0f);
  EXPECT_EQ(0, std::memcmp(out.data(), plain.out.data(), out.size() * sizeof(float)));
}

TEST(AttentionForward, LargeLogitsStayFinite) {
  // Logits of several hundred: a naive exp would overflow; the row maximum is subtracted.
  AttentionSpec s = make_attention_spec(1, 20, 2, 16, 1, 6);
  const auto qkv = random_vector<double>(size_t(s.T) * 3 * s.C(), 11, -30, 30);
  const auto ref = testing::reference_attention(qkv, {}, s);
  const auto got = testing::run_cpu_attention<float>(qkv, {}, s);
  EXPECT_GT(ref.max_logit[0], 200.0);
  EXPECT_LT(relative_error(got.out, ref.out), 1e-4);
  EXPECT_LT(relative_error(got.lse, ref.lse), 1e-5);
}

TEST(AttentionForward, IndependentOfThreadCount) {
  AttentionSpec s = make_attention_spec(3, 100, 4, 16, 3, 20);  // large enough for threads
  s.span.q.enabled = true;
  const auto qkv = random_vector<double>(size_t(s.B) * s.T * 3 * s.C(), 21);
  const int threads = omp_get_max_threads();
  std::vector<testing::AttentionRun<float>> runs;
  for (int n : {1, 2, 3}) {
    omp_set_num_threads(n);
    runs.push_back(testing::run_cpu_attention<float>(qkv, {}, s));
  }
  omp_set_num_threads(threads);
  for (size_t r = 1; r < runs.size(); ++r) {
    EXPECT_EQ(runs[r].out, runs[0].out);
    EXPECT_EQ(runs[r].lse, runs[0].lse);
    EXPECT_EQ(runs[r].max_logit, runs[0].max_logit);
    EXPECT_EQ(runs[r].kbar, runs[0].kbar);
  }
}

// The Backend adapter passes every pointer to the right kernel argument.
TEST(AttentionForward, BackendAdapterMatchesKernels) {
  AttentionSpec s = make_attention_spec(2, 17, 3, 4, 1, 5);
  s.span.q.enabled = true;
  s.span.k.enabled = true;
  s.span.k.alpha_par = 2;
  const size_t nqkv = size_t(s.B) * s.T * 3 * s.C(), nout = size_t(s.B) * s.T * s.C();
  const auto qkv = random_vector<double>(nqkv, 31);
  const auto dout = random_vector<double>(nout, 32);
  const auto want = testing::run_cpu_attention<double>(qkv, dout, s);
  auto be = make_backend("cpu64");
  DeviceBuffer d_qkv(*be, nqkv * 8), d_dout(*be, nout * 8), d_out(*be, nout * 8),
      d_kbar(*be, nout * 8), d_lse(*be, size_t(s.B) * s.n_head * s.T * 8), d_ml(*be, s.n_head * 8),
      d_dqkv(*be, nqkv * 8);
  be->upload(d_qkv.get(), qkv.data(), nqkv * 8);
  be->upload(d_dout.get(), dout.data(), nout * 8);
  be->attention_forward(d_out.get(), d_lse.get(), d_ml.get(), d_kbar.get(), d_qkv.get(), s);
  be->attention_backward(d_dqkv.get(), nullptr, d_dout.get(), d_qkv.get(), d_out.get(), d_lse.get(),
                         d_kbar.get(), s);
  std::vector<double> out(nout), dqkv(nqkv), ml(s.n_head);
  be->download(out.data(), d_out.get(), nout * 8);
  be->download(dqkv.data(), d_dqkv.get(), nqkv * 8);
  be->download(ml.data(), d_ml.get(), s.n_head * 8);
  EXPECT_EQ(out, want.out);
  EXPECT_EQ(dqkv, want.dqkv);
  EXPECT_EQ(ml, want.max_logit);
}

}  // namespace test_attention_forward
}  // namespace
}  // namespace lsgpt
