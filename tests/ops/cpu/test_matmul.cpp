// Matmul (BLAS) with and without bias and with the fused GELU: forward
// against a naive double reference, every gradient (input, weight, bias,
// through the GELU too, and through a GELU on the input side) by finite
// differences, dinp overwritten while dweight/dbias accumulate, float/double
// agreement and reproducibility.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ops/cpu/gelu.h"
#include "ops/cpu/matmul.h"
#include "support/numeric.h"

namespace lsgpt {
namespace {
namespace test_matmul {

using testing::dot;
using testing::numeric_gradient;
using testing::random_vector;
using testing::relative_error;

double gelu_reference(double x) {
  return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

// Returns pre-activations and outputs.
std::pair<std::vector<double>, std::vector<double>> reference_forward(const std::vector<double>& x,
                                                                      const std::vector<double>& w,
                                                                      const double* bias, bool gelu,
                                                                      int N, int C, int OC) {
  std::vector<double> pre(size_t(N) * OC), out(size_t(N) * OC);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      long double s = bias ? bias[o] : 0.0;
      for (int c = 0; c < C; ++c) s += (long double)x[size_t(n) * C + c] * w[size_t(o) * C + c];
      pre[size_t(n) * OC + o] = double(s);
      out[size_t(n) * OC + o] = gelu ? gelu_reference(double(s)) : double(s);
    }
  return {pre, out};
}

struct Shape {
  int N, C, OC;
};

class MatmulVariant : public ::testing::TestWithParam<std::tuple<bool, bool>> {
 protected:
  bool with_bias() const { return std::get<0>(GetParam()); }
  bool with_gelu() const { return std::get<1>(GetParam()); }
};

TEST_P(MatmulVariant, ForwardMatchesReferenceInFloatAndDouble) {
  const Shape s{13, 37, 21};
  const auto x = random_vector<double>(size_t(s.N) * s.C, 1);
  const auto w = random_vector<double>(size_t(s.OC) * s.C, 2, -0.3, 0.3);
  const auto b = random_vector<double>(s.OC, 3);
  const double* bias = with_bias() ? b.data() : nullptr;
  const auto [ref_pre, ref_out] = reference_forward(x, w, bias, with_gelu(), s.N, s.C, s.OC);

  std::vector<double> out(ref_out.size(), NAN), pre(ref_pre.size(), NAN);
  cpu::matmul_forward(out.data(), with_gelu() ? pre.data() : nullptr, x.data(), w.data(), bias, s.N,
                      s.C, s.OC);
  EXPECT_LT(relative_error(out, ref_out), 1e-14);
  if (with_gelu()) {
    EXPECT_LT(relative_error(pre, ref_pre), 1e-14);
  }

  std::vector<float> x32(x.begin(), x.end()), w32(w.begin(), w.end()), b32(b.begin(), b.end());
  std::vector<float> out32(ref_out.size(), NAN), pre32(ref_pre.size(), NAN);
  cpu::matmul_forward(out32.data(), with_gelu() ? pre32.data() : nullptr, x32.data(), w32.data(),
                      with_bias() ? b32.data() : nullptr, s.N, s.C, s.OC);
  // Sums of 37 float products: a few float ulp relative to the output norm.
  EXPECT_LT(relative_error(out32, ref_out), 1e-6);
  if (with_gelu()) {
    EXPECT_LT(relative_error(pre32, ref_pre), 1e-6);
  }
}

TEST_P(MatmulVariant, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const Shape s{5, 7, 6};
  auto x = random_vector<double>(size_t(s.N) * s.C, 4);
  auto w = random_vector<double>(size_t(s.OC) * s.C, 5);
  auto b = random_vector<double>(s.OC, 6);
  const auto R = random_vector<double>(size_t(s.N) * s.OC, 7);
  std::vector<double> out(R.size()), pre(R.size());
  auto loss = [&] {
    cpu::matmul_forward(out.data(), with_gelu() ? pre.data() : nullptr, x.data(), w.data(),
                        with_bias() ? b.data() : nullptr, s.N, s.C, s.OC);
    return dot(out, R);
  };
  const auto num_dx = numeric_gradient(x, loss);
  const auto num_dw = numeric_gradient(w, loss);
  const auto num_db = numeric_gradient(b, loss);
  loss();  // pre-activations of the unperturbed inputs

  std::vector<double> dx(x.size(), NAN);  // overwritten, so NaN must vanish
  const auto dw0 = random_vector<double>(w.size(), 8);
  const auto db0 = random_vector<double>(b.size(), 9);
  auto dw = dw0, db = db0;
  auto dout = R;  // the fused path may use dout as scratch
  cpu::matmul_backward(dx.data(), dw.data(), with_bias() ? db.data() : nullptr, dout.data(),
                       x.data(), w.data(), with_gelu() ? pre.data() : nullptr,
                       static_cast<const double*>(nullptr), s.N, s.C, s.OC);
  for (size_t i = 0; i < dw.size(); ++i) dw[i] -= dw0[i];
  EXPECT_LT(relative_error(dx, num_dx), 1e-7);
  EXPECT_LT(relative_error(dw, num_dw), 1e-7);
  if (with_bias()) {
    for (size_t i = 0; i < db.size(); ++i) db[i] -= db0[i];
    EXPECT_LT(relative_error(db, num_db), 1e-7);
  } else {
    EXPECT_EQ(db, db0);
  }
}

TEST_P(MatmulVariant, BackwardFloatAgreesWithDoubleAndIsReproducible) {
  const Shape s{512, 48, 80};  // above the kernels' parallel threshold
  const auto x = random_vector<double>(size_t(s.N) * s.C, 10);
  const auto w = random_vector<double>(size_t(s.OC) * s.C, 11);
  const auto pre = random_vector<double>(size_t(s.N) * s.OC, 12, -3, 3);
  const auto dout = random_vector<double>(pre.size(), 13);
  auto dx = random_vector<double>(x.size(), 14), dw = random_vector<double>(w.size(), 15),
       db = random_vector<double>(s.OC, 16), d64 = dout;
  cpu::matmul_backward(dx.data(), dw.data(), with_bias() ? db.data() : nullptr, d64.data(),
                       x.data(), w.data(), with_gelu() ? pre.data() : nullptr,
                       static_cast<const double*>(nullptr), s.N, s.C, s.OC);
  auto run32 = [&] {
    std::vector<float> x32(x.begin(), x.end()), w32(w.begin(), w.end()),
        pre32(pre.begin(), pre.end()), d32(dout.begin(), dout.end());
    auto dx32 = random_vector<float>(x.size(), 14), dw32 = random_vector<float>(w.size(), 15),
         db32 = random_vector<float>(s.OC, 16);
    cpu::matmul_backward(dx32.data(), dw32.data(), with_bias() ? db32.data() : nullptr, d32.data(),
                         x32.data(), w32.data(), with_gelu() ? pre32.data() : nullptr,
                         static_cast<const float*>(nullptr), s.N, s.C, s.OC);
    return std::vector<std::vector<float>>{dx32, dw32, db32};
  };
  const auto got = run32();
  EXPECT_LT(relative_error(got[0], dx), 1e-6);
  EXPECT_LT(relative_error(got[1], dw), 1e-6);
  EXPECT_LT(relative_error(got[2], db), 1e-6);
  EXPECT_EQ(got, run32());
}

INSTANTIATE_TEST_SUITE_P(CpuMatmul, MatmulVariant,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool()),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "Bias" : "NoBias") +
                                  (std::get<1>(info.param) ? "Gelu" : "Plain");
                         });

// out = gelu(u) W^T + b: with inp_pre_gelu = u the backward returns dL/du.
TEST(CpuMatmulInputGelu, BackwardMatchesFiniteDifferences) {
  const int N = 5, C = 7, OC = 6;
  auto u = random_vector<double>(size_t(N) * C, 31, -3, 3);
  auto w = random_vector<double>(size_t(OC) * C, 32);
  auto b = random_vector<double>(OC, 33);
  const auto R = random_vector<double>(size_t(N) * OC, 34);
  std::vector<double> x(u.size()), out(R.size());
  auto loss = [&] {
    cpu::gelu_forward(x.data(), u.data(), u.size());
    cpu::matmul_forward(out.data(), static_cast<double*>(nullptr), x.data(), w.data(), b.data(), N,
                        C, OC);
    return dot(out, R);
  };
  const auto num_du = numeric_gradient(u, loss);
  const auto num_dw = numeric_gradient(w, loss);
  const auto num_db = numeric_gradient(b, loss);
  loss();

  std::vector<double> du(u.size(), NAN), dw(w.size(), 0.0), db(b.size(), 0.0);
  auto dout = R;
  cpu::matmul_backward(du.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                       static_cast<const double*>(nullptr), u.data(), N, C, OC);
  EXPECT_LT(relative_error(du, num_du), 1e-7);
  EXPECT_LT(relative_error(dw, num_dw), 1e-7);
  EXPECT_LT(relative_error(db, num_db), 1e-7);
  EXPECT_EQ(dout, R);  // dout is left alone when only the input side has a GELU
}

TEST(CpuMatmulSkips, NullDinpLeavesOtherGradientsExact) {
  const int N = 6, C = 5, OC = 4;
  const auto x = random_vector<double>(size_t(N) * C, 17);
  const auto w = random_vector<double>(size_t(OC) * C, 18);
  auto dout = random_vector<double>(size_t(N) * OC, 19);
  auto dw_a = random_vector<double>(w.size(), 20), dw_b = dw_a;
  auto db_a = random_vector<double>(OC, 21), db_b = db_a;
  std::vector<double> dx(x.size());
  auto dout_b = dout;
  cpu::matmul_backward(dx.data(), dw_a.data(), db_a.data(), dout.data(), x.data(), w.data(),
                       static_cast<const double*>(nullptr), static_cast<const double*>(nullptr),
                       N, C, OC);
  cpu::matmul_backward(static_cast<double*>(nullptr), dw_b.data(), db_b.data(), dout_b.data(),
                       x.data(), w.data(), static_cast<const double*>(nullptr),
                       static_cast<const double*>(nullptr), N, C, OC);
  EXPECT_EQ(dw_a, dw_b);
  EXPECT_EQ(db_a, db_b);
}

}  // namespace test_matmul
}  // namespace
}  // namespace lsgpt
