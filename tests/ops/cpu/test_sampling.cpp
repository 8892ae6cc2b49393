// The CPU sampling op (ops/sampling_spec.h): greedy and top_k = 1 are the
// argmax with the lowest id among ties; top_k and top_p restrict the support
// exactly (ties at the boundary kept, top_p measured after top_k); the draws
// follow softmax(z / temperature) (chi-square over 20000 steps); the noise is
// a pure function of (seed, step, id); idle rows, step counting and the
// advance/next_input bookkeeping; float and double logits agree; NaN logits
// are refused before anything is written.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "ops/cpu/sampling.h"
#include "ops/sampling_noise.h"
#include "support/numeric.h"

namespace lsgpt {
namespace {
namespace test_sampling {

using testing::random_vector;

SampleParams params(float temperature, int top_k = 0, float top_p = 1.f, uint64_t seed = 1) {
  SampleParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.active = 1;
  p.seed = seed;
  return p;
}

// Draws `steps` tokens from one row, advancing p.step through the op.
std::vector<int32_t> draw(const std::vector<float>& logits, SampleParams p, int steps) {
  const int V = int(logits.size());
  std::vector<int32_t> tokens(steps);
  for (int s = 0; s < steps; ++s) {
    int32_t token = -7;
    cpu::sample_tokens(&token, logits.data(), &p, 1, V, V, nullptr, nullptr);
    EXPECT_EQ(p.step, uint64_t(s + 1));
    tokens[s] = token;
  }
  return tokens;
}

std::vector<int> counts(const std::vector<int32_t>& tokens, int V) {
  std::vector<int> c(V, 0);
  for (int32_t t : tokens) {
    EXPECT_TRUE(t >= 0 && t < V) << t;
    if (t >= 0 && t < V) ++c[t];
  }
  return c;
}

std::set<int32_t> support(const std::vector<int32_t>& tokens) {
  return std::set<int32_t>(tokens.begin(), tokens.end());
}

// log of a hand-made distribution: softmax at temperature 1 gives it back.
std::vector<float> log_probs(const std::vector<double>& p) {
  std::vector<float> z;
  for (double x : p) z.push_back(float(std::log(x)));
  return z;
}

TEST(Sampling, NoiseIsStrictlyInsideTheUnitIntervalAndPure) {
  double sum = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const float u = sampling_uniform(42, uint64_t(i) / 1000, uint32_t(i % 1000));
    ASSERT_GT(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    ASSERT_TRUE(std::isfinite(sampling_gumbel(u)));
    sum += u;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.005);
  EXPECT_EQ(sampling_uniform(7, 3, 11), sampling_uniform(7, 3, 11));
  EXPECT_NE(sampling_uniform(7, 3, 11), sampling_uniform(8, 3, 11));
  EXPECT_NE(sampling_uniform(7, 3, 11), sampling_uniform(7, 4, 11));
  EXPECT_NE(sampling_uniform(7, 3, 11), sampling_uniform(7, 3, 12));
  EXPECT_GT(sampling_key(1.0f), sampling_key(-1.0f));
  EXPECT_GT(sampling_key(-1.0f), sampling_key(-std::numeric_limits<float>::infinity()));
  EXPECT_EQ(sampling_key(-0.0f), sampling_key(0.0f));
  EXPECT_EQ(sampling_mass(3.0f, 3.0f), uint64_t(1) << 24);
}

TEST(Sampling, GreedyIsTheArgmaxWithTheLowestIdAmongTies) {
  std::vector<float> z = random_vector<float>(50, 3, -4, 4);
  z[17] = 9.0f;
  z[31] = 9.0f;  // a tie: the lower id wins
  z[40] = -std::numeric_limits<float>::infinity();
  for (int top_k : {0, 1, 5})
    for (float top_p : {1.0f, 0.5f}) {
      SampleParams p = params(0.0f, top_k, top_p, 99);
      EXPECT_EQ(cpu::sample_row(z.data(), 50, p), 17);
      p.step = 12345;
      EXPECT_EQ(cpu::sample_row(z.data(), 50, p), 17);
    }
  // Every logit equal (even -inf): token 0.
  const std::vector<float> flat(9, -std::numeric_limits<float>::infinity());
  EXPECT_EQ(cpu::sample_row(flat.data(), 9, params(0.0f)), 0);
}

TEST(Sampling, TopKOneIsTheArgmaxAtAnyTemperature) {
  std::vector<float> z = random_vector<float>(64, 5, -2, 2);
  const int argmax = int(std::max_element(z.begin(), z.end()) - z.begin());
  for (float temperature : {0.05f, 0.7f, 1.0f, 5.0f, 100.0f})
    for (int32_t t : draw(z, params(temperature, 1, 1.0f, 1234), 200)) EXPECT_EQ(t, argmax);
}

TEST(Sampling, TopKKeepsExactlyTheKBestWithTiesAtTheBoundary) {
  const int V = 16;
  std::vector<float> z = random_vector<float>(V, 8, -1, 1);
  std::vector<int> order(V);
  for (int i = 0; i < V; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int a, int b) { return z[a] > z[b]; });
  // A high temperature flattens the distribution: outside tokens would show.
  {
    const std::set<int32_t> got = support(draw(z, params(5.0f, 4, 1.0f, 77), 3000));
    EXPECT_EQ(got, std::set<int32_t>(order.begin(), order.begin() + 4));
  }
  // The 4th and 5th best tied: both kept; the 6th never.
  z[order[4]] = z[order[3]];
  {
    const std::set<int32_t> got = support(draw(z, params(5.0f, 4, 1.0f, 78), 3000));
    EXPECT_EQ(got, std::set<int32_t>(order.begin(), order.begin() + 5));
  }
  // top_k >= V is no limit.
  EXPECT_EQ(support(draw(z, params(50.0f, V, 1.0f, 79), 3000)).size(), size_t(V));
  EXPECT_EQ(support(draw(z, params(50.0f, V + 5, 1.0f, 79), 3000)).size(), size_t(V));
}

TEST(Sampling, TopPKeepsTheNucleus) {
  const std::vector<float> z = log_probs({0.05, 0.5, 0.15, 0.3});
  auto nucleus = [&](float top_p, int top_k = 0) {
    return support(draw(z, params(1.0f, top_k, top_p, 5), 4000));
  };
  EXPECT_EQ(nucleus(0.45f), (std::set<int32_t>{1}));
  EXPECT_EQ(nucleus(0.75f), (std::set<int32_t>{1, 3}));
  EXPECT_EQ(nucleus(0.9f), (std::set<int32_t>{1, 2, 3}));
  EXPECT_EQ(nucleus(0.99f), (std::set<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(nucleus(1.0f), (std::set<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(nucleus(0.0f), (std::set<int32_t>{1}));  // only the most likely token
  // top_p is measured after top_k: within the best two, token 1 has 0.625.
  EXPECT_EQ(nucleus(0.6f), (std::set<int32_t>{1, 3}));
  EXPECT_EQ(nucleus(0.6f, 2), (std::set<int32_t>{1}));
  EXPECT_EQ(nucleus(0.7f, 2), (std::set<int32_t>{1, 3}));

  // Ties at the boundary are kept: {0.4, 0.2, 0.2, 0.2} at top_p 0.5 keeps all.
  const std::vector<float> tied = {std::log(0.4f), std::log(0.2f), std::log(0.2f),
                                   std::log(0.2f)};
  EXPECT_EQ(support(draw(tied, params(1.0f, 0, 0.5f, 6), 2000)),
            (std::set<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(support(draw(tied, params(1.0f, 0, 0.3f, 6), 2000)), (std::set<int32_t>{0}));
}

// Pearson chi-square of the counts against the probabilities p.
double chi_square(const std::vector<int>& c, const std::vector<double>& p, int n) {
  double chi2 = 0;
  for (size_t i = 0; i < c.size(); ++i) {
    const double e = p[i] * n;
    chi2 += (c[i] - e) * (c[i] - e) / e;
  }
  return chi2;
}

std::vector<double> softmax(const std::vector<float>& z, float temperature,
                            const std::vector<int>& keep) {
  std::vector<double> p(z.size(), 0.0);
  double sum = 0;
  for (int i : keep) sum += p[i] = std::exp(double(z[i]) / temperature);
  for (double& x : p) x /= sum;
  return p;
}

TEST(Sampling, DrawsFollowTheSoftmax) {
  const int V = 8, n = 20000;
  const float temperature = 0.7f;
  const std::vector<float> z = random_vector<float>(V, 21, -1.5, 1.5);
  std::vector<int> all(V), best3(V);
  for (int i = 0; i < V; ++i) all[i] = best3[i] = i;
  std::sort(best3.begin(), best3.end(), [&](int a, int b) { return z[a] > z[b]; });
  best3.resize(3);
  // 7 (resp. 2) degrees of freedom: P(chi2 > 24.3) = 0.001 (P(chi2 > 13.8) = 0.001).
  for (uint64_t seed : {1, 2, 3}) {
    const std::vector<int> c = counts(draw(z, params(temperature, 0, 1.0f, seed), n), V);
    EXPECT_LT(chi_square(c, softmax(z, temperature, all), n), 24.3) << "seed " << seed;
    std::vector<int> c3 = counts(draw(z, params(temperature, 3, 1.0f, seed), n), V);
    std::vector<double> p3 = softmax(z, temperature, best3);
    double chi2 = 0;
    for (int i = 0; i < V; ++i) {
      if (p3[i] == 0) {
        EXPECT_EQ(c3[i], 0) << i;
        continue;
      }
      chi2 += (c3[i] - p3[i] * n) * (c3[i] - p3[i] * n) / (p3[i] * n);
    }
    EXPECT_LT(chi2, 13.8) << "seed " << seed;
  }
}

TEST(Sampling, TheNoiseIsAPureFunctionOfSeedAndStep) {
  const std::vector<float> z = random_vector<float>(1000, 4, -1, 1);
  const std::vector<int32_t> a = draw(z, params(1.0f, 0, 1.0f, 10), 100);
  const std::vector<int32_t> b = draw(z, params(1.0f, 0, 1.0f, 11), 100);
  EXPECT_EQ(a, draw(z, params(1.0f, 0, 1.0f, 10), 100));  // replayable
  int same = 0;
  for (int s = 0; s < 100; ++s) same += a[s] == b[s];
  EXPECT_LT(same, 10);  // with ~1000 likely tokens a match is a ~1/1000 event
  // The token of step s depends on (seed, s) only, not on earlier draws.
  SampleParams p = params(1.0f, 0, 1.0f, 10);
  p.step = 57;
  EXPECT_EQ(cpu::sample_row(z.data(), 1000, p), a[57]);
  EXPECT_EQ(cpu::sample_row(z.data(), 1000, p), a[57]);
}

TEST(Sampling, BatchBookkeeping) {
  const int B = 4, V = 37, Vp = 48;
  std::vector<float> z = random_vector<float>(size_t(B) * Vp, 31, -3, 3);
  for (int b = 0; b < B; ++b)
    for (int v = V; v < Vp; ++v) z[size_t(b) * Vp + v] = 1e4f;  // padding: never read
  std::vector<SampleParams> p = {params(0.0f), params(1.0f, 5, 1.0f, 3), params(0.8f),
                                 params(1.2f, 0, 0.9f, 4)};
  p[1].step = 10;
  p[2].active = 0;
  p[2].step = 5;
  const std::vector<SampleParams> before = p;
  std::vector<int32_t> expected(B, -1);
  for (int b = 0; b < B; ++b)
    if (p[b].active) expected[b] = cpu::sample_row(z.data() + size_t(b) * Vp, V, p[b]);

  std::vector<int32_t> tokens(B, -9), advance = {3, 4, 5, 6}, next = {-5, -5, -5, -5};
  cpu::sample_tokens(tokens.data(), z.data(), p.data(), B, V, Vp, advance.data(), next.data());
  EXPECT_EQ(tokens, expected);
  EXPECT_EQ(tokens[2], -1);
  for (int b = 0; b < B; ++b) {
    const bool active = b != 2;
    EXPECT_TRUE(!active || (tokens[b] >= 0 && tokens[b] < V)) << b;
    EXPECT_EQ(p[b].step, before[b].step + (active ? 1 : 0)) << b;
    EXPECT_EQ(advance[b], 3 + b + (active ? 1 : 0)) << b;
    EXPECT_EQ(next[b], active ? tokens[b] : -5) << b;
    EXPECT_EQ(p[b].seed, before[b].seed);
    EXPECT_EQ(p[b].temperature, before[b].temperature);
  }
  EXPECT_EQ(tokens[0], int32_t(std::max_element(z.begin(), z.begin() + V) - z.begin()));

  // Without advance/next_input: tokens and steps only.
  std::vector<int32_t> tokens2(B, -9);
  cpu::sample_tokens(tokens2.data(), z.data(), p.data(), B, V, Vp, nullptr, nullptr);
  for (int b = 0; b < B; ++b) EXPECT_EQ(p[b].step, before[b].step + (b != 2 ? 2 : 0)) << b;
  EXPECT_EQ(tokens2[0], tokens[0]);
  EXPECT_EQ(tokens2[2], -1);
  // advance alone, next_input alone.
  cpu::sample_tokens(tokens2.data(), z.data(), p.data(), B, V, Vp, advance.data(), nullptr);
  EXPECT_EQ(advance, (std::vector<int32_t>{5, 6, 5, 8}));
  next.assign(B, -5);
  cpu::sample_tokens(tokens2.data(), z.data(), p.data(), B, V, Vp, nullptr, next.data());
  EXPECT_EQ(advance, (std::vector<int32_t>{5, 6, 5, 8}));
  for (int b = 0; b < B; ++b) EXPECT_EQ(next[b], b != 2 ? tokens2[b] : -5) << b;
}

TEST(Sampling, FloatAndDoubleLogitsAgree) {
  const int B = 3, V = 500, Vp = 512;
  const std::vector<float> zf = random_vector<float>(size_t(B) * Vp, 41, -5, 5);
  const std::vector<double> zd(zf.begin(), zf.end());
  const std::vector<SampleParams> settings = {params(0.0f), params(1.0f, 0, 1.0f, 2),
                                              params(0.6f, 40, 1.0f, 3),
                                              params(1.0f, 0, 0.9f, 4),
                                              params(1.3f, 40, 0.8f, 5)};
  for (const SampleParams& s : settings) {
    std::vector<SampleParams> pf(B, s), pd(B, s);
    for (int b = 0; b < B; ++b) pf[b].seed = pd[b].seed = s.seed * 100 + b;
    for (int step = 0; step < 50; ++step) {
      std::vector<int32_t> tf(B), td(B);
      cpu::sample_tokens(tf.data(), zf.data(), pf.data(), B, V, Vp, nullptr, nullptr);
      cpu::sample_tokens(td.data(), zd.data(), pd.data(), B, V, Vp, nullptr, nullptr);
      ASSERT_EQ(tf, td) << "temperature " << s.temperature << " step " << step;
    }
  }
}

TEST(Sampling, NaNLogitsAreRefusedBeforeTheBookkeepingChanges) {
  const int B = 3, V = 10, Vp = 16;
  std::vector<float> z = random_vector<float>(size_t(B) * Vp, 51, -1, 1);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  z[size_t(0) * Vp + 12] = nan;  // padding: ignored
  z[size_t(2) * Vp + 3] = nan;   // an idle row: ignored
  std::vector<SampleParams> p = {params(1.0f), params(0.0f), params(1.0f)};
  p[2].active = 0;
  std::vector<int32_t> tokens(B, -9);
  EXPECT_NO_THROW(cpu::sample_tokens(tokens.data(), z.data(), p.data(), B, V, Vp, nullptr,
                                     nullptr));
  for (float temperature : {0.0f, 1.0f}) {
    z[size_t(1) * Vp + 7] = nan;
    p[1].temperature = temperature;
    const std::vector<SampleParams> before = p;
    std::vector<int32_t> advance = {1, 1, 1};
    tokens.assign(B, -9);
    try {
      cpu::sample_tokens(tokens.data(), z.data(), p.data(), B, V, Vp, advance.data(), nullptr);
      ADD_FAILURE() << "NaN logits were accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("NaN"), std::string::npos) << e.what();
    }
    EXPECT_EQ(advance, (std::vector<int32_t>{1, 1, 1}));
    for (int b = 0; b < B; ++b) EXPECT_EQ(p[b].step, before[b].step);
    EXPECT_THROW(cpu::sample_row(z.data() + Vp, V, p[1]), Error);
  }
}

// Rows of the GPT-2 vocabulary take the parallel path (found by a benchmark
// run: per-thread buffers there must not be shared): each row as alone.
TEST(Sampling, ParallelRowsMatchRowByRow) {
  const int B = 8, V = 50257, Vp = 50304;
  const std::vector<float> z = random_vector<float>(size_t(B) * Vp, 71, -4, 4);
  for (const SampleParams& s : {params(0.0f), params(0.9f, 40, 0.95f, 3)}) {
    std::vector<SampleParams> p(B, s);
    for (int b = 0; b < B; ++b) p[b].seed = 1000 + b;
    const std::vector<SampleParams> before = p;
    std::vector<int32_t> tokens(B, -9), advance(B, 5), next(B, -1);
    for (int step = 0; step < 3; ++step) {
      cpu::sample_tokens(tokens.data(), z.data(), p.data(), B, V, Vp, advance.data(),
                         next.data());
      for (int b = 0; b < B; ++b) {
        SampleParams alone = before[b];
        alone.step = uint64_t(step);
        EXPECT_EQ(tokens[b], cpu::sample_row(z.data() + size_t(b) * Vp, V, alone)) << b;
        EXPECT_EQ(next[b], tokens[b]);
        EXPECT_EQ(advance[b], 6 + step);
      }
    }
  }
}

TEST(Sampling, MaskedTokensAreNeverDrawn) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> z = random_vector<float>(20, 61, -1, 1);
  for (int i = 0; i < 20; i += 2) z[i] = -inf;
  for (int32_t t : draw(z, params(3.0f, 0, 1.0f, 8), 500)) EXPECT_EQ(t % 2, 1) << t;
  for (int32_t t : draw(z, params(3.0f, 15, 0.95f, 8), 500)) EXPECT_EQ(t % 2, 1) << t;
}

}  // namespace test_sampling
}  // namespace
}  // namespace lsgpt
