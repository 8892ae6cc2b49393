// LayerNorm: forward (output, mean, rstd) against a double reference, every
// gradient (input, weight, bias) by finite differences, the += conventions
// (dinp accumulates: it is the residual stream), the column sums of dinp
// (the projection bias gradient the backward can add up), float/double
// agreement and bit-reproducibility across thread counts.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <string>
#include <vector>

#include "ops/cpu/layernorm.h"
#include "support/numeric.h"

namespace lsgpt {
namespace {
namespace test_layernorm {

using testing::dot;
using testing::numeric_gradient;
using testing::random_vector;
using testing::relative_error;

struct Reference {
  std::vector<double> out, mean, rstd;
};

Reference reference_forward(const std::vector<double>& x, const std::vector<double>& w,
                            const std::vector<double>& b, int N, int C) {
  Reference r{std::vector<double>(x.size()), std::vector<double>(N), std::vector<double>(N)};
  for (int n = 0; n < N; ++n) {
    long double m = 0, var = 0;
    for (int c = 0; c < C; ++c) m += x[size_t(n) * C + c];
    m /= C;
    for (int c = 0; c < C; ++c) var += (x[size_t(n) * C + c] - m) * (x[size_t(n) * C + c] - m);
    var /= C;
    const long double s = 1.0L / std::sqrt(var + 1e-5L);
    for (int c = 0; c < C; ++c)
      r.out[size_t(n) * C + c] = double((x[size_t(n) * C + c] - m) * s * w[c] + b[c]);
    r.mean[n] = double(m);
    r.rstd[n] = double(s);
  }
  return r;
}

// Rows with a large common offset and a small spread: a one-pass variance
// would lose digits here.
std::vector<double> offset_input(size_t n, uint64_t seed) {
  auto x = random_vector<double>(n, seed, -0.5, 0.5);
  for (auto& v : x) v += 3.0;
  return x;
}

TEST(CpuLayerNorm, ForwardMatchesReferenceInFloatAndDouble) {
  const int N = 7, C = 67;
  const auto x = offset_input(size_t(N) * C, 1);
  const auto w = random_vector<double>(C, 2, 0.5, 1.5);
  const auto b = random_vector<double>(C, 3);
  const auto ref = reference_forward(x, w, b, N, C);

  std::vector<double> out(x.size(), NAN), mean(N, NAN), rstd(N, NAN);
  cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  EXPECT_LT(relative_error(out, ref.out), 1e-12);
  EXPECT_LT(relative_error(mean, ref.mean), 1e-14);
  EXPECT_LT(relative_error(rstd, ref.rstd), 1e-12);

  std::vector<float> x32(x.begin(), x.end()), w32(w.begin(), w.end()), b32(b.begin(), b.end());
  std::vector<float> out32(x.size(), NAN), mean32(N, NAN), rstd32(N, NAN);
  cpu::layernorm_forward(out32.data(), mean32.data(), rstd32.data(), x32.data(), w32.data(),
                         b32.data(), N, C);
  // Float inputs of magnitude 3 carry absolute errors ~2e-7 into a row whose
  // spread is ~0.3, so the normalised output differs by ~1e-6 relative.
  EXPECT_LT(relative_error(out32, ref.out), 1e-5);
  EXPECT_LT(relative_error(mean32, ref.mean), 1e-6);
  EXPECT_LT(relative_error(rstd32, ref.rstd), 1e-5);
}

TEST(CpuLayerNorm, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const int N = 4, C = 19;
  auto x = offset_input(size_t(N) * C, 4);
  auto w = random_vector<double>(C, 5, 0.5, 1.5);
  auto b = random_vector<double>(C, 6);
  const auto R = random_vector<double>(x.size(), 7);
  std::vector<double> out(x.size()), mean(N), rstd(N);
  auto loss = [&] {
    cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N,
                           C);
    return dot(out, R);
  };
  const auto num_dx = numeric_gradient(x, loss);
  const auto num_dw = numeric_gradient(w, loss);
  const auto num_db = numeric_gradient(b, loss);

  loss();  // saved mean/rstd of the unperturbed inputs
  const auto dx0 = random_vector<double>(x.size(), 8);
  const auto dw0 = random_vector<double>(C, 9);
  const auto db0 = random_vector<double>(C, 10);
  auto dx = dx0, dw = dw0, db = db0;
  cpu::layernorm_backward<double>(dx.data(), dw.data(), db.data(), nullptr, R.data(), x.data(),
                                  w.data(), mean.data(), rstd.data(), N, C);
  auto minus = [](std::vector<double> a, const std::vector<double>& b) {
    for (size_t i = 0; i < a.size(); ++i) a[i] -= b[i];
    return a;
  };
  EXPECT_LT(relative_error(minus(dx, dx0), num_dx), 1e-6);
  EXPECT_LT(relative_error(minus(dw, dw0), num_dw), 1e-7);
  EXPECT_LT(relative_error(minus(db, db0), num_db), 1e-7);
}

TEST(CpuLayerNorm, BackwardFloatAgreesWithDouble) {
  const int N = 9, C = 130;
  const auto x = offset_input(size_t(N) * C, 11);
  const auto w = random_vector<double>(C, 12, 0.5, 1.5);
  const auto b = random_vector<double>(C, 13);
  const auto dout = random_vector<double>(x.size(), 14);
  std::vector<double> out(x.size()), mean(N), rstd(N);
  cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  auto dx = random_vector<double>(x.size(), 15);
  auto dw = random_vector<double>(C, 16), db = random_vector<double>(C, 17);
  std::vector<float> x32(x.begin(), x.end()), w32(w.begin(), w.end()), b32(b.begin(), b.end());
  std::vector<float> d32(dout.begin(), dout.end()), out32(x.size()), mean32(N), rstd32(N);
  std::vector<float> dx32(dx.begin(), dx.end()), dw32(dw.begin(), dw.end()),
      db32(db.begin(), db.end());
  cpu::layernorm_forward(out32.data(), mean32.data(), rstd32.data(), x32.data(), w32.data(),
                         b32.data(), N, C);
  cpu::layernorm_backward<double>(dx.data(), dw.data(), db.data(), nullptr, dout.data(), x.data(),
                                  w.data(), mean.data(), rstd.data(), N, C);
  cpu::layernorm_backward<float>(dx32.data(), dw32.data(), db32.data(), nullptr, d32.data(),
                                 x32.data(), w32.data(), mean32.data(), rstd32.data(), N, C);
  EXPECT_LT(relative_error(dx32, dx), 1e-5);
  EXPECT_LT(relative_error(dw32, dw), 1e-5);
  EXPECT_LT(relative_error(db32, db), 1e-6);
}

// dinp_colsum += the column sums of dinp as the call leaves it (old + new),
// with dinp, dweight and dbias the same bits as without it. 37 x 67 runs
// serially; 517 x 67 is above the parallel threshold, where the sums read
// rows other threads wrote. Neither N nor C is a multiple of a block size.
TEST(CpuLayerNorm, BackwardSumsTheColumnsOfDinp) {
  for (const int N : {37, 517}) {
    SCOPED_TRACE("N = " + std::to_string(N));
    const int C = 67;
    const auto x = offset_input(size_t(N) * C, 25);
    const auto w = random_vector<double>(C, 26, 0.5, 1.5);
    const auto b = random_vector<double>(C, 27);
    const auto dout = random_vector<double>(x.size(), 28);
    std::vector<double> out(x.size()), mean(N), rstd(N);
    cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N,
                           C);
    const auto dx0 = random_vector<double>(x.size(), 29);
    const auto dw0 = random_vector<double>(C, 30), db0 = random_vector<double>(C, 31);
    const auto sum0 = random_vector<double>(C, 32);
    auto dx = dx0, dw = dw0, db = db0, sum = sum0;
    cpu::layernorm_backward(dx.data(), dw.data(), db.data(), sum.data(), dout.data(), x.data(),
                            w.data(), mean.data(), rstd.data(), N, C);
    auto dx_ref = dx0, dw_ref = dw0, db_ref = db0;
    cpu::layernorm_backward<double>(dx_ref.data(), dw_ref.data(), db_ref.data(), nullptr,
                                    dout.data(), x.data(), w.data(), mean.data(), rstd.data(), N,
                                    C);
    EXPECT_EQ(dx, dx_ref);
    EXPECT_EQ(dw, dw_ref);
    EXPECT_EQ(db, db_ref);
    std::vector<double> expect(C);
    for (int c = 0; c < C; ++c) {
      long double total = sum0[c];
      for (int n = 0; n < N; ++n) total += dx_ref[size_t(n) * C + c];
      expect[c] = double(total);
    }
    EXPECT_LT(relative_error(sum, expect), 1e-13);
  }
}

TEST(CpuLayerNorm, IsBitIdenticalAcrossRunsAndThreadCounts) {
  const int N = 256, C = 200;  // above the kernels' parallel threshold
  const auto x = random_vector<float>(size_t(N) * C, 18);
  const auto w = random_vector<float>(C, 19);
  const auto b = random_vector<float>(C, 20);
  const auto dout = random_vector<float>(x.size(), 21);
  auto run = [&](int threads) {
    const int keep = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<float> out(x.size()), mean(N), rstd(N);
    auto dx = random_vector<float>(x.size(), 22);
    auto dw = random_vector<float>(C, 23), db = random_vector<float>(C, 24);
    auto sum = random_vector<float>(C, 33);
    cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N,
                           C);
    cpu::layernorm_backward(dx.data(), dw.data(), db.data(), sum.data(), dout.data(), x.data(),
                            w.data(), mean.data(), rstd.data(), N, C);
    omp_set_num_threads(keep);
    for (auto* v : {&mean, &rstd, &dx, &dw, &db, &sum})
      out.insert(out.end(), v->begin(), v->end());
    return out;
  };
  const auto first = run(2);
  EXPECT_EQ(first, run(2));
  EXPECT_EQ(first, run(1));
  EXPECT_EQ(first, run(3));
}

}  // namespace test_layernorm
}  // namespace
}  // namespace lsgpt
