// Token + position embedding: forward against a double reference, the
// backward's scatter (with repeated tokens) by finite differences, += into
// the parameter gradients, and bit-reproducibility across thread counts.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstdint>
#include <random>
#include <vector>

#include "ops/cpu/embedding.h"
#include "support/numeric.h"

namespace lsgpt {
namespace {
namespace test_embedding {

using testing::dot;
using testing::numeric_gradient;
using testing::random_vector;
using testing::relative_error;

struct EmbeddingCase {
  int B = 3, T = 5, C = 13, V = 7, max_T = 9, pos0 = 2;
  std::vector<int32_t> tokens;
  EmbeddingCase() {
    // A vocabulary smaller than B*T forces repeated tokens, the case a racy
    // scatter would get wrong.
    std::mt19937 rng(11);
    tokens.resize(size_t(B) * T);
    for (auto& t : tokens) t = int32_t(rng() % V);
  }
};

std::vector<double> reference_forward(const EmbeddingCase& k, const std::vector<double>& wte,
                                      const std::vector<double>& wpe) {
  std::vector<double> out(size_t(k.B) * k.T * k.C);
  for (int b = 0; b < k.B; ++b)
    for (int t = 0; t < k.T; ++t)
      for (int c = 0; c < k.C; ++c)
        out[(size_t(b) * k.T + t) * k.C + c] =
            wte[size_t(k.tokens[b * k.T + t]) * k.C + c] + wpe[size_t(k.pos0 + t) * k.C + c];
  return out;
}

TEST(CpuEmbedding, ForwardMatchesReferenceInFloatAndDouble) {
  EmbeddingCase k;
  auto wte = random_vector<double>(size_t(k.V) * k.C, 1);
  auto wpe = random_vector<double>(size_t(k.max_T) * k.C, 2);
  const auto ref = reference_forward(k, wte, wpe);

  std::vector<double> out64(ref.size(), NAN);
  cpu::embedding_forward(out64.data(), k.tokens.data(), wte.data(), wpe.data(), k.B, k.T, k.C,
                         k.pos0);
  EXPECT_EQ(out64, ref);

  std::vector<float> wte32(wte.begin(), wte.end()), wpe32(wpe.begin(), wpe.end());
  std::vector<float> out32(ref.size(), NAN);
  cpu::embedding_forward(out32.data(), k.tokens.data(), wte32.data(), wpe32.data(), k.B, k.T, k.C,
                         k.pos0);
  // One float rounding of each input and of the sum: a few ulp of float.
  EXPECT_LT(relative_error(out32, ref), 1e-6);
}

TEST(CpuEmbedding, BackwardMatchesFiniteDifferencesAndAccumulates) {
  EmbeddingCase k;
  k.pos0 = 0;  // the backward's dwpe rows are positions 0..T-1
  auto wte = random_vector<double>(size_t(k.V) * k.C, 3);
  auto wpe = random_vector<double>(size_t(k.T) * k.C, 4);
  const auto R = random_vector<double>(size_t(k.B) * k.T * k.C, 5);
  auto loss = [&] { return dot(reference_forward(k, wte, wpe), R); };
  // Check the reference forward against the kernel before using it for the
  // finite differences, so a wrong reference cannot hide a wrong kernel.
  std::vector<double> out(R.size());
  cpu::embedding_forward(out.data(), k.tokens.data(), wte.data(), wpe.data(), k.B, k.T, k.C, 0);
  ASSERT_EQ(out, reference_forward(k, wte, wpe));
  const auto num_dwte = numeric_gradient(wte, loss);
  const auto num_dwpe = numeric_gradient(wpe, loss);

  const auto dwte0 = random_vector<double>(wte.size(), 6);
  const auto dwpe0 = random_vector<double>(wpe.size(), 7);
  auto dwte = dwte0, dwpe = dwpe0;
  cpu::embedding_backward(dwte.data(), dwpe.data(), R.data(), k.tokens.data(), k.B, k.T, k.C);
  std::vector<double> got_dwte(wte.size()), got_dwpe(wpe.size());
  for (size_t i = 0; i < wte.size(); ++i) got_dwte[i] = dwte[i] - dwte0[i];
  for (size_t i = 0; i < wpe.size(); ++i) got_dwpe[i] = dwpe[i] - dwpe0[i];
  EXPECT_LT(relative_error(got_dwte, num_dwte), 1e-8);
  EXPECT_LT(relative_error(got_dwpe, num_dwpe), 1e-8);
}

TEST(CpuEmbedding, BackwardFloatAgreesWithDouble) {
  EmbeddingCase k;
  const auto dout = random_vector<double>(size_t(k.B) * k.T * k.C, 8);
  std::vector<double> dwte64 = random_vector<double>(size_t(k.V) * k.C, 9);
  std::vector<double> dwpe64 = random_vector<double>(size_t(k.T) * k.C, 10);
  std::vector<float> dout32(dout.begin(), dout.end());
  std::vector<float> dwte32(dwte64.begin(), dwte64.end()), dwpe32(dwpe64.begin(), dwpe64.end());
  cpu::embedding_backward(dwte64.data(), dwpe64.data(), dout.data(), k.tokens.data(), k.B, k.T,
                          k.C);
  cpu::embedding_backward(dwte32.data(), dwpe32.data(), dout32.data(), k.tokens.data(), k.B, k.T,
                          k.C);
  EXPECT_LT(relative_error(dwte32, dwte64), 1e-6);
  EXPECT_LT(relative_error(dwpe32, dwpe64), 1e-6);
}

TEST(CpuEmbedding, BackwardIsBitIdenticalAcrossRunsAndThreadCounts) {
  // Large enough that every thread gets channel blocks and tokens repeat a lot.
  const int B = 4, T = 64, C = 200, V = 50;
  std::mt19937 rng(12);
  std::vector<int32_t> tokens(size_t(B) * T);
  for (auto& t : tokens) t = int32_t(rng() % V);
  const auto dout = random_vector<float>(size_t(B) * T * C, 13);
  auto run = [&](int threads) {
    const int keep = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<float> dwte = random_vector<float>(size_t(V) * C, 14);
    std::vector<float> dwpe = random_vector<float>(size_t(T) * C, 15);
    cpu::embedding_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);
    omp_set_num_threads(keep);
    dwte.insert(dwte.end(), dwpe.begin(), dwpe.end());
    return dwte;
  };
  const auto first = run(2);
  EXPECT_EQ(first, run(2));
  EXPECT_EQ(first, run(1));
  EXPECT_EQ(first, run(3));
}

}  // namespace test_embedding
}  // namespace
}  // namespace lsgpt
