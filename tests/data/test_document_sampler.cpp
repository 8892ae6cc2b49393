// Documents sampling: every window of a long-enough document lies inside it,
// windows cover every such position with the expected frequency, short
// documents get one crossing window, and a batch is a pure function of
// (seed, index), so a resumed run draws the same batches.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/batch_sampler.h"
#include "data/token_file.h"
#include "data_test_support.h"

namespace lsgpt {
namespace {
namespace test_document_sampler {

using data_testing::ScratchDir;
constexpr int kVocab = 1000;
constexpr int32_t kEot = 999;

struct Corpus {
  std::string path;
  std::vector<int32_t> tokens;
  std::vector<std::pair<uint64_t, uint64_t>> docs;  // [begin, end] with the closing eot
};

// Random documents of the given lengths (closing eot included, none after
// the last), random non-eot tokens.
Corpus make_corpus(const ScratchDir& dir, const std::vector<uint64_t>& lengths, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Corpus c;
  for (size_t d = 0; d < lengths.size(); ++d) {
    const uint64_t begin = c.tokens.size();
    for (uint64_t i = 0; i + 1 < lengths[d]; ++i) c.tokens.push_back(int32_t(rng() % kEot));
    c.tokens.push_back(d + 1 < lengths.size() ? kEot : int32_t(rng() % kEot));
    c.docs.push_back({begin, c.tokens.size() - 1});
  }
  c.path = dir.file("docs" + std::to_string(seed) + ".bin");
  write_token_file(c.path, kVocab, c.tokens);
  return c;
}

TEST(DocumentSampler, WindowsOfLongDocumentsStayInsideThem) {
  ScratchDir dir;
  const int T = 16;
  const Corpus c = make_corpus(dir, {40, 5, 300, 17, 16, 90, 3}, 1);
  const TokenFile file(c.path, kVocab);
  const TrainBatches batches(file, 4, T, 42, WindowSampling::documents, kEot);
  EXPECT_EQ(batches.whole_window_documents(), 4u);  // 40, 300, 17, 90
  std::map<uint64_t, long> count;
  const long draws = 20000;
  for (long i = 0; i < draws / 4; ++i)
    for (int r = 0; r < 4; ++r) ++count[batches.window_start(i, r)];
  // Allowed starts: inside each long document, and the first token of each short one.
  // (A short last document's window starts T+1 tokens before the end.)
  std::map<uint64_t, bool> allowed;
  uint64_t total = 0;
  const uint64_t last = c.tokens.size() - T - 1;
  for (const auto& [b, e] : c.docs) {
    const uint64_t len = e - b + 1;
    if (len >= T + 1) {
      for (uint64_t s = b; s + T <= e; ++s) allowed[s] = true, ++total;
    } else {
      allowed[std::min(b, last)] = true, ++total;
    }
  }
  for (const auto& [start, n] : count) EXPECT_TRUE(allowed.count(start)) << start;
  // Every allowed start is drawn about draws / total times.
  const double expected = double(draws) / double(total);
  for (const auto& [start, ok] : allowed) {
    EXPECT_GT(count[start], expected * 0.5) << start;
    EXPECT_LT(count[start], expected * 1.6) << start;
  }
}

TEST(DocumentSampler, FillReadsTheDrawnWindowsAndIsAPureFunctionOfSeedAndIndex) {
  ScratchDir dir;
  const int B = 3, T = 8;
  const Corpus c = make_corpus(dir, {50, 12, 200, 2, 64}, 2);
  const TokenFile file(c.path, kVocab);
  const TrainBatches a(file, B, T, 7, WindowSampling::documents, kEot);
  const TrainBatches b(file, B, T, 7, WindowSampling::documents, kEot);
  std::vector<int32_t> in(B * T), tg(B * T), in2(B * T), tg2(B * T);
  for (uint64_t i : {0ull, 5ull, 123456789ull, 3ull}) {
    a.fill(i, in.data(), tg.data());
    b.fill(i, in2.data(), tg2.data());  // a fresh sampler, batches in another order
    EXPECT_EQ(in, in2);
    EXPECT_EQ(tg, tg2);
    for (int r = 0; r < B; ++r) {
      const uint64_t s = a.window_start(i, r);
      for (int t = 0; t < T; ++t) {
        EXPECT_EQ(in[r * T + t], c.tokens[s + t]);
        EXPECT_EQ(tg[r * T + t], c.tokens[s + t + 1]);
      }
    }
  }
  const TrainBatches other(file, B, T, 8, WindowSampling::documents, kEot);
  int same = 0;
  for (uint64_t i = 0; i < 20; ++i) same += other.window_start(i, 0) == a.window_start(i, 0);
  EXPECT_LT(same, 5);
}

TEST(DocumentSampler, AllDocumentsShortFallsBackToCrossingWindowsAtDocumentStarts) {
  ScratchDir dir;
  const int T = 32;
  const Corpus c = make_corpus(dir, {10, 20, 5, 30, 12, 8}, 3);  // 85 tokens
  const TokenFile file(c.path, kVocab);
  const TrainBatches batches(file, 2, T, 1, WindowSampling::documents, kEot);
  EXPECT_EQ(batches.whole_window_documents(), 0u);
  const uint64_t last = c.tokens.size() - T - 1;
  std::set<uint64_t> starts;
  for (const auto& [b, e] : c.docs) starts.insert(std::min(b, last));
  for (uint64_t i = 0; i < 200; ++i) {
    const uint64_t s = batches.window_start(i, i % 2);
    EXPECT_TRUE(starts.count(s)) << s;
    EXPECT_LE(s + T, c.tokens.size() - 1);
  }
}

TEST(DocumentSampler, UniformIsUnchangedAndBadSettingsAreRefused) {
  ScratchDir dir;
  const Corpus c = make_corpus(dir, {50, 60}, 4);
  const TokenFile file(c.path, kVocab);
  const TrainBatches plain(file, 2, 8, 9), uniform(file, 2, 8, 9, WindowSampling::uniform, kEot);
  for (uint64_t i = 0; i < 50; ++i) EXPECT_EQ(plain.window_start(i, 1), uniform.window_start(i, 1));
  EXPECT_EQ(uniform.whole_window_documents(), 0u);
  EXPECT_THROW(TrainBatches(file, 2, 8, 9, WindowSampling::documents, -1), Error);
  EXPECT_THROW(TrainBatches(file, 2, 8, 9, WindowSampling::documents, kVocab), Error);
  EXPECT_THROW(parse_window_sampling("books"), Error);
  EXPECT_EQ(parse_window_sampling("documents"), WindowSampling::documents);
}

}  // namespace test_document_sampler
}  // namespace
}  // namespace lsgpt
