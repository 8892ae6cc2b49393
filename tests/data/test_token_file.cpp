// Token files: exact bytes on disk, streamed writes, atomic publication, and
// one clear refusal for each way a file can be wrong.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/token_file.h"
#include "data_test_support.h"
#include "support/numeric.h"

namespace lsgpt {
namespace {
namespace test_token_file {

using data_testing::read_file;
using data_testing::ScratchDir;
using data_testing::write_file;
using testing::random_tokens;

// A header with the given fields, followed by `count_in_body` tokens of 1.
std::string make_file(const std::string& magic, uint32_t version, uint32_t vocab, uint64_t count,
                      size_t count_in_body) {
  std::string bytes(token_file_header_bytes, '\0');
  std::memcpy(bytes.data(), magic.data(), std::min<size_t>(magic.size(), 8));
  for (int i = 0; i < 4; ++i) bytes[8 + i] = static_cast<char>(version >> (8 * i));
  for (int i = 0; i < 4; ++i) bytes[12 + i] = static_cast<char>(vocab >> (8 * i));
  for (int i = 0; i < 8; ++i) bytes[16 + i] = static_cast<char>(count >> (8 * i));
  for (size_t i = 0; i < count_in_body; ++i) bytes += std::string("\x01\x00", 2);
  return bytes;
}

void expect_open_error(const std::string& path, const std::string& words, int vocab = 0) {
  try {
    TokenFile file(path, vocab);
    ADD_FAILURE() << "opened " << path << "; expected an error with \"" << words << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos)
        << "expected \"" << words << "\" in: " << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST(TokenFile, RoundTripAndExactLayout) {
  ScratchDir dir;
  const std::string path = dir.file("t.bin");
  std::vector<int32_t> tokens = random_tokens(10001, 50257, 1);
  tokens[0] = 0;
  tokens[1] = 50256;
  write_token_file(path, 50257, tokens);

  const std::string bytes = read_file(path);
  ASSERT_EQ(bytes.size(), 64 + 2 * tokens.size());
  EXPECT_EQ(bytes.substr(0, 8), "LSGPTTOK");
  EXPECT_EQ(bytes.substr(8, 4), std::string("\x01\x00\x00\x00", 4));       // version
  EXPECT_EQ(bytes.substr(12, 4), std::string("\x51\xc4\x00\x00", 4));      // 50257
  EXPECT_EQ(bytes.substr(16, 8), std::string("\x11\x27\0\0\0\0\0\0", 8));  // 10001
  EXPECT_EQ(bytes.substr(24, 40), std::string(40, '\0'));
  EXPECT_EQ(bytes.substr(64 + 2, 2), std::string("\x50\xc4", 2));  // 50256, LE

  const TokenFile file(path, 50257);
  EXPECT_EQ(file.size(), tokens.size());
  EXPECT_EQ(file.vocab_size(), 50257);
  EXPECT_EQ(file.path(), path);
  std::vector<int32_t> back(tokens.size());
  file.read(0, back.size(), back.data());
  EXPECT_EQ(back, tokens);
  for (size_t i = 0; i < tokens.size(); ++i) ASSERT_EQ(file.tokens()[i], tokens[i]);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"t.bin"});  // no .tmp left
}

TEST(TokenFile, StreamedAppendsEqualOneWrite) {
  ScratchDir dir;
  // Larger than the writer's 1 MiB buffer, so it is flushed several times.
  const std::vector<int32_t> tokens = random_tokens(1500000, 65536, 2);
  write_token_file(dir.file("one.bin"), 65536, tokens);
  {
    TokenFileWriter writer(dir.file("many.bin"), 65536);
    std::mt19937_64 rng(3);
    for (size_t pos = 0; pos < tokens.size();) {
      const size_t n = std::min<size_t>(1 + rng() % 70000, tokens.size() - pos);
      writer.append(std::span<const int32_t>(tokens.data() + pos, n));
      pos += n;
    }
    EXPECT_EQ(writer.token_count(), tokens.size());
    writer.commit();
  }
  EXPECT_TRUE(read_file(dir.file("one.bin")) == read_file(dir.file("many.bin")));
}

TEST(TokenFile, UncommittedWriterLeavesNothing) {
  ScratchDir dir;
  write_file(dir.file("keep.bin"), "previous contents");
  {
    TokenFileWriter writer(dir.file("keep.bin"), 100);
    writer.append(std::vector<int32_t>{1, 2, 3});
    const std::vector<std::string> during = dir.entries();
    ASSERT_EQ(during.size(), 2u);
    EXPECT_EQ(during[0], "keep.bin");
    EXPECT_EQ(during[1].rfind("keep.bin.tmp.", 0), 0u) << during[1];
    // Destroyed without commit, as when an error unwinds `prepare`.
  }
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"keep.bin"});
  EXPECT_EQ(read_file(dir.file("keep.bin")), "previous contents");
}

TEST(TokenFile, WriterRefusals) {
  ScratchDir dir;
  EXPECT_THROW(TokenFileWriter(dir.file("a.bin"), 0), Error);
  EXPECT_THROW(TokenFileWriter(dir.file("a.bin"), 65537), Error);
  EXPECT_THROW(TokenFileWriter(dir.file("missing-dir/a.bin"), 100), Error);
  {
    TokenFileWriter writer(dir.file("b.bin"), 100);
    EXPECT_THROW(writer.append(std::vector<int32_t>{5, 100}), Error);
    EXPECT_THROW(writer.append(std::vector<int32_t>{-1}), Error);
  }
  {
    TokenFileWriter writer(dir.file("empty.bin"), 100);
    EXPECT_THROW(writer.commit(), Error);
  }
  EXPECT_TRUE(dir.entries().empty());
}

TEST(TokenFile, ReaderRefusals) {
  ScratchDir dir;
  const auto put = [&](const std::string& name, const std::string& bytes) {
    write_file(dir.file(name), bytes);
    return dir.file(name);
  };
  expect_open_error(dir.file("absent.bin"), "No such file");
  expect_open_error(put("empty.bin", ""), "is empty");
  expect_open_error(put("text.bin", "hello, this is not a token file at all, really not"),
                    "not an lsgpt token file");
  expect_open_error(put("short.bin", "LSGPTTOK\x01"), "shorter than its 64-byte header");
  expect_open_error(put("v2.bin", make_file("LSGPTTOK", 2, 50257, 3, 3)), "format version 2");
  expect_open_error(put("trunc.bin", make_file("LSGPTTOK", 1, 50257, 10, 9)), "truncated");
  expect_open_error(put("big.bin", make_file("LSGPTTOK", 1, 50257, 10, 11)), "more than");
  expect_open_error(put("odd.bin", make_file("LSGPTTOK", 1, 50257, 10, 10) + "x"), "more than");
  expect_open_error(put("zero.bin", make_file("LSGPTTOK", 1, 50257, 0, 0)), "holds no tokens");
  expect_open_error(put("vocab0.bin", make_file("LSGPTTOK", 1, 0, 1, 1)), "vocabulary of 0");
  expect_open_error(put("vocab.bin", make_file("LSGPTTOK", 1, 70000, 1, 1)), "vocabulary of 70000");
  // A count so large that 2 * count overflows must still read as truncated.
  expect_open_error(put("huge.bin", make_file("LSGPTTOK", 1, 50257, ~uint64_t(0) / 2 + 5, 2)),
                    "truncated");
  expect_open_error(dir.file(""), "not a regular file");

  write_token_file(dir.file("other.bin"), 32000, std::vector<int32_t>{1, 2, 3});
  expect_open_error(dir.file("other.bin"),
                    "was made with a vocabulary of 32000 tokens; this model uses 50257", 50257);
  EXPECT_NO_THROW(TokenFile(dir.file("other.bin"), 32000));
  EXPECT_NO_THROW(TokenFile(dir.file("other.bin")));
}

TEST(TokenFile, TokensOutsideTheVocabularyAreRefusedWhenRead) {
  ScratchDir dir;
  // Header says 100 tokens of vocabulary; position 5 holds 300.
  std::string bytes = make_file("LSGPTTOK", 1, 100, 8, 8);
  bytes[64 + 2 * 5] = static_cast<char>(300 & 0xFF);
  bytes[64 + 2 * 5 + 1] = static_cast<char>(300 >> 8);
  write_file(dir.file("bad.bin"), bytes);
  const TokenFile file(dir.file("bad.bin"));  // opening does not scan the tokens
  std::vector<int32_t> out(8);
  EXPECT_NO_THROW(file.read(0, 5, out.data()));
  try {
    file.read(2, 6, out.data());
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("token id 300 at position 5"), std::string::npos) << msg;
    EXPECT_NE(msg.find("bad.bin"), std::string::npos) << msg;
  }
}

TEST(TokenFile, MovesKeepTheMapping) {
  ScratchDir dir;
  write_token_file(dir.file("m.bin"), 10, std::vector<int32_t>{9, 8, 7});
  TokenFile a(dir.file("m.bin"));
  TokenFile b(std::move(a));
  EXPECT_EQ(b.size(), 3u);
  EXPECT_EQ(b.tokens()[0], 9);
  TokenFile c(dir.file("m.bin"), 10);
  c = std::move(b);
  EXPECT_EQ(c.tokens()[2], 7);
}

// Checkpoints record this checksum, so its definition is pinned: standard
// FNV-1a 64 over the token bytes as stored (values from a reference
// implementation: FNV-1a 64 of "ab" and of "abcd").
TEST(TokenFile, ChecksumIsFnv1a64OfTheTokenBytes) {
  ScratchDir dir;
  write_token_file(dir.file("ab.bin"), 65536, std::vector<int32_t>{0x6261});
  EXPECT_EQ(TokenFile(dir.file("ab.bin")).fnv1a64(), 0x089c4407b545986aull);
  write_token_file(dir.file("abcd.bin"), 65536, std::vector<int32_t>{0x6261, 0x6463});
  EXPECT_EQ(TokenFile(dir.file("abcd.bin")).fnv1a64(), 0xfc179f83ee0724ddull);
  // Only the tokens count: the same tokens under another vocabulary header hash alike.
  write_token_file(dir.file("v.bin"), 50257, std::vector<int32_t>{9, 8, 7});
  write_token_file(dir.file("w.bin"), 100, std::vector<int32_t>{9, 8, 7});
  EXPECT_EQ(TokenFile(dir.file("v.bin")).fnv1a64(), TokenFile(dir.file("w.bin")).fnv1a64());
  write_token_file(dir.file("x.bin"), 100, std::vector<int32_t>{9, 7, 8});
  EXPECT_NE(TokenFile(dir.file("v.bin")).fnv1a64(), TokenFile(dir.file("x.bin")).fnv1a64());
}

}  // namespace test_token_file
}  // namespace
}  // namespace lsgpt
