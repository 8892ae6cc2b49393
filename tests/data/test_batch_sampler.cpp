// Batches: training batch i is a pure function of (seed, i) and made of real
// windows of the file; evaluation batches predict every token once; files
// shorter than one window are refused by name.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/batch_sampler.h"
#include "data/token_file.h"
#include "data_test_support.h"

namespace lsgpt {
namespace {
namespace test_batch_sampler {

using data_testing::ScratchDir;

// A file whose token at position p is p % vocab, so positions can be read
// back from the tokens.
std::string counting_file(const ScratchDir& dir, size_t n, int vocab = 65536) {
  std::vector<int32_t> tokens(n);
  for (size_t i = 0; i < n; ++i) tokens[i] = static_cast<int32_t>(i % vocab);
  const std::string path = dir.file("count" + std::to_string(n) + ".bin");
  write_token_file(path, vocab, tokens);
  return path;
}

TEST(TrainBatches, SameSeedAndIndexGiveTheSameBatch) {
  ScratchDir dir;
  const TokenFile file(counting_file(dir, 50000));
  const int B = 4, T = 64;
  const TrainBatches a(file, B, T, 1234), b(file, B, T, 1234), other_seed(file, B, T, 1235);
  std::vector<int32_t> in1(B * T), tg1(B * T), in2(B * T), tg2(B * T);
  for (uint64_t i : {0ull, 1ull, 17ull, 123456789ull}) {
    a.fill(i, in1.data(), tg1.data());
    b.fill(i, in2.data(), tg2.data());
    EXPECT_EQ(in1, in2);
    EXPECT_EQ(tg1, tg2);
    // Drawing other batches in between changes nothing (no hidden state).
    a.fill(i + 1, in2.data(), tg2.data());
    a.fill(i, in2.data(), tg2.data());
    EXPECT_EQ(in1, in2);
    a.fill(i + 1, in2.data(), tg2.data());
    EXPECT_NE(in1, in2) << "batches " << i << " and " << i + 1 << " are equal";
    other_seed.fill(i, in2.data(), tg2.data());
    EXPECT_NE(in1, in2) << "seeds 1234 and 1235 give the same batch " << i;
  }
}

TEST(TrainBatches, RowsAreWindowsOfTheFile) {
  ScratchDir dir;
  const size_t n = 1000;
  const TokenFile file(counting_file(dir, n));
  const int B = 8, T = 16;
  const TrainBatches batches(file, B, T, 7);
  std::vector<int32_t> in(B * T), tg(B * T);
  std::set<uint64_t> starts;
  for (uint64_t i = 0; i < 2000; ++i) {
    batches.fill(i, in.data(), tg.data());
    for (int r = 0; r < B; ++r) {
      const uint64_t s = batches.window_start(i, r);
      ASSERT_LE(s + T + 1, n);
      starts.insert(s);
      for (int t = 0; t < T; ++t) {
        ASSERT_EQ(in[r * T + t], static_cast<int32_t>(s + t));
        ASSERT_EQ(tg[r * T + t], static_cast<int32_t>(s + t + 1));
      }
    }
  }
  // 16000 draws over 984 possible starts: every start, both ends included.
  EXPECT_EQ(starts.size(), n - T);
  EXPECT_EQ(*starts.begin(), 0u);
  EXPECT_EQ(*starts.rbegin(), n - T - 1);
}

TEST(TrainBatches, ExactlyOneWindowIsEnough) {
  ScratchDir dir;
  const TokenFile file(counting_file(dir, 33));
  const TrainBatches batches(file, 2, 32, 0);
  std::vector<int32_t> in(64), tg(64);
  batches.fill(5, in.data(), tg.data());
  EXPECT_EQ(in[0], 0);
  EXPECT_EQ(tg[31], 32);
}

TEST(EvalBatches, CoverEveryTargetOnce) {
  ScratchDir dir;
  for (const size_t n : {33u, 100u, 1001u, 1025u}) {
    const TokenFile file(counting_file(dir, n));
    const int B = 3, T = 32;
    const EvalBatches batches(file, B, T, 0);
    const size_t windows = (n - 1 + T - 1) / T;
    EXPECT_EQ(batches.count(), static_cast<long>((windows + B - 1) / B)) << n;
    std::vector<int> predicted(n, 0);
    std::vector<int32_t> in(B * T), tg(B * T);
    uint64_t targets = 0;
    for (long k = 0; k < batches.count(); ++k) {
      batches.fill(k, in.data(), tg.data());
      for (int i = 0; i < B * T; ++i) {
        if (tg[i] == ignore_target) continue;
        ASSERT_EQ(tg[i], in[i] + 1);  // the next token of the file
        ASSERT_LT(static_cast<size_t>(tg[i]), n);
        ++predicted[tg[i]];
        ++targets;
      }
    }
    EXPECT_EQ(predicted[0], 0);
    for (size_t p = 1; p < n; ++p) ASSERT_EQ(predicted[p], 1) << "position " << p << " of " << n;
    EXPECT_EQ(targets, n - 1);
    EXPECT_EQ(batches.target_count(), n - 1);
  }
}

TEST(EvalBatches, PartialLastBatchIsPadded) {
  ScratchDir dir;
  const TokenFile file(counting_file(dir, 50));  // 49 targets: windows of 10,10,10,10,9
  const EvalBatches batches(file, 4, 10, 0);
  ASSERT_EQ(batches.count(), 2);
  std::vector<int32_t> in(40), tg(40);
  batches.fill(1, in.data(), tg.data());
  // Row 0 is window 4 (positions 40..49): nine targets, then -1.
  for (int t = 0; t < 9; ++t) EXPECT_EQ(tg[t], 41 + t);
  EXPECT_EQ(tg[9], ignore_target);
  EXPECT_EQ(in[9], 49);
  // Rows 1..3 are past the end.
  for (int i = 10; i < 40; ++i) {
    EXPECT_EQ(tg[i], ignore_target);
    EXPECT_EQ(in[i], 0);
  }
}

TEST(EvalBatches, MaxBatchesLimitsTheCount) {
  ScratchDir dir;
  const TokenFile file(counting_file(dir, 10000));
  const EvalBatches all(file, 2, 16, 0), some(file, 2, 16, 5), more(file, 2, 16, 100000);
  EXPECT_EQ(some.count(), 5);
  EXPECT_EQ(some.target_count(), 5u * 2 * 16);
  EXPECT_EQ(more.count(), all.count());
  std::vector<int32_t> in1(32), tg1(32), in2(32), tg2(32);
  all.fill(4, in1.data(), tg1.data());
  some.fill(4, in2.data(), tg2.data());
  EXPECT_EQ(in1, in2);
  EXPECT_EQ(tg1, tg2);
}

TEST(Batches, RefuseFilesShorterThanOneWindow) {
  ScratchDir dir;
  const std::string path = counting_file(dir, 64);
  const TokenFile file(path);
  for (const bool train : {true, false}) {
    try {
      if (train)
        TrainBatches(file, 2, 64, 0);
      else
        EvalBatches(file, 2, 64, 0);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(path), std::string::npos) << msg;
      EXPECT_NE(msg.find("64 tokens"), std::string::npos) << msg;
      EXPECT_NE(msg.find("65"), std::string::npos) << msg;
    }
  }
  EXPECT_NO_THROW(TrainBatches(file, 2, 63, 0));
  EXPECT_THROW(TrainBatches(file, 0, 8, 0), Error);
  EXPECT_THROW(EvalBatches(file, 2, 0, 0), Error);
}

TEST(Batches, CorruptTokensAreRefusedWhenDrawn) {
  ScratchDir dir;
  // A vocabulary of 100 but tokens counting up to 199.
  std::vector<int32_t> tokens(200);
  for (int i = 0; i < 200; ++i) tokens[i] = i % 100;
  write_token_file(dir.file("c.bin"), 100, tokens);
  std::string bytes = data_testing::read_file(dir.file("c.bin"));
  bytes[64 + 2 * 150] = static_cast<char>(199);
  data_testing::write_file(dir.file("c.bin"), bytes);
  const TokenFile file(dir.file("c.bin"), 100);
  const EvalBatches batches(file, 1, 50, 0);
  std::vector<int32_t> in(50), tg(50);
  EXPECT_NO_THROW(batches.fill(0, in.data(), tg.data()));
  EXPECT_THROW(batches.fill(2, in.data(), tg.data()), Error);
}

}  // namespace test_batch_sampler
}  // namespace
}  // namespace lsgpt
