// Residual add and the in-place accumulate its backward uses: against a
// double reference, float/double agreement, and the gradient identity
// d(a+b)/da = 1 by finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ops/cpu/residual.h"
#include "support/numeric.h"

namespace lsgpt {
namespace {
namespace test_residual {

using testing::dot;
using testing::numeric_gradient;
using testing::random_vector;
using testing::relative_error;

TEST(CpuResidual, ForwardAndAddInplaceMatchReference) {
  // Odd length: the vectorised loops must handle the remainder.
  const size_t n = 4099;
  const auto a = random_vector<double>(n, 1), b = random_vector<double>(n, 2);
  std::vector<double> ref(n);
  for (size_t i = 0; i < n; ++i) ref[i] = a[i] + b[i];

  std::vector<double> out(n, NAN);
  cpu::residual_forward(out.data(), a.data(), b.data(), n);
  EXPECT_EQ(out, ref);
  auto acc = a;
  cpu::add_inplace(acc.data(), b.data(), n);
  EXPECT_EQ(acc, ref);

  std::vector<float> a32(a.begin(), a.end()), b32(b.begin(), b.end()), out32(n, NAN);
  cpu::residual_forward(out32.data(), a32.data(), b32.data(), n);
  EXPECT_LT(relative_error(out32, ref), 1e-7);
  cpu::add_inplace(a32.data(), b32.data(), n);
  EXPECT_EQ(a32, out32);
}

TEST(CpuResidual, GradientIsIdentityThroughAddInplace) {
  // The model takes the residual's backward as dst += dout for both inputs.
  const size_t n = 37;
  auto a = random_vector<double>(n, 3), b = random_vector<double>(n, 4);
  const auto R = random_vector<double>(n, 5);
  std::vector<double> out(n);
  auto loss = [&] {
    cpu::residual_forward(out.data(), a.data(), b.data(), n);
    return dot(out, R);
  };
  const auto num_da = numeric_gradient(a, loss);
  const auto num_db = numeric_gradient(b, loss);
  const auto g0 = random_vector<double>(n, 6);
  auto da = g0, db = g0;
  cpu::add_inplace(da.data(), R.data(), n);
  cpu::add_inplace(db.data(), R.data(), n);
  for (size_t i = 0; i < n; ++i) da[i] -= g0[i], db[i] -= g0[i];
  EXPECT_LT(relative_error(da, num_da), 1e-8);
  EXPECT_LT(relative_error(db, num_db), 1e-8);
}

}  // namespace test_residual
}  // namespace
}  // namespace lsgpt
