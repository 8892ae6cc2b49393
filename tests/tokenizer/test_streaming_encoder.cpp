// Streaming encoding equals encoding whole: the safe cuts, and text fed in
// tiny and random chunk sizes so that every kind of boundary is crossed.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "../data/data_test_support.h"
#include "tokenizer/streaming_encoder.h"
#include "tokenizer/tokenizer.h"

namespace lsgpt {
namespace {
namespace test_streaming_encoder {

using data_testing::gpt2;
using Ids = std::vector<int32_t>;

Ids encode_streaming(std::string_view text, const std::vector<size_t>& chunk_sizes) {
  StreamingEncoder encoder(gpt2());
  Ids ids;
  size_t pos = 0, k = 0;
  while (pos < text.size()) {
    const size_t n = std::min(chunk_sizes[k++ % chunk_sizes.size()], text.size() - pos);
    encoder.write(text.substr(pos, n), ids);
    pos += n;
  }
  encoder.finish(ids);
  return ids;
}

TEST(StreamingEncoder, SafeCuts) {
  using T = Tokenizer;
  EXPECT_EQ(T::last_safe_cut("abc def"), 3u);
  EXPECT_EQ(T::last_safe_cut("abc def ghi"), 7u);
  EXPECT_EQ(T::last_safe_cut("abc\ndef"), 3u);
  EXPECT_EQ(T::last_safe_cut("abc."), 0u);
  // White space after white space is never a cut: `\s+(?!\S)` looks ahead.
  EXPECT_EQ(T::last_safe_cut("a  "), 1u);
  EXPECT_EQ(T::last_safe_cut("  \n\n"), 0u);
  EXPECT_EQ(T::last_safe_cut(" \n  \t"), 0u);
  EXPECT_EQ(T::last_safe_cut(" \n = Title"), 4u);
  // U+3000 is white space, so the space after it is no cut; é is not.
  EXPECT_EQ(T::last_safe_cut("x\xe3\x80\x80 y"), 0u);
  EXPECT_EQ(T::last_safe_cut("\xc3\xa9 y"), 2u);
  // An invalid byte is "other", so a space after it is a cut.
  EXPECT_EQ(T::last_safe_cut("\xff y"), 1u);
  EXPECT_EQ(T::last_safe_cut("abc def", 4), 0u);  // search_from skips the cut at 3
}

TEST(StreamingEncoder, TinyChunksEqualWholeText) {
  const std::string text =
      " = Valkyria Chronicles III = \n \n Senj\xc5\x8d no Valkyria 3 : Unrecorded Chronicles "
      "( Japanese : \xe6\x88\xa6\xe5\xa0\xb4\xe3\x81\xae ) , commonly referred to as Valkyria "
      "Chronicles III outside Japan , is a tactical role @-@ playing video game .\n\n\n   x  \t"
      "y\xe3\x80\x80 z<|endoftext|> it's 12,345 \xff\xfe \xe3\x81 done   ";
  const Ids whole = gpt2().encode(text);
  for (size_t chunk = 1; chunk <= 13; ++chunk)
    ASSERT_EQ(encode_streaming(text, {chunk}), whole) << "chunk size " << chunk;
}

TEST(StreamingEncoder, RandomChunksEqualWholeText) {
  std::mt19937_64 rng(99);
  // clang-format off
  static const std::vector<std::string> atoms = {
      "a", "word", " ", " ", "  ", "\n", "\n\n", "\t", "\r\n", "\xc2\xa0", "\xe3\x80\x80", "'",
      "'s", "!", "...", "7", "42", "\xc3\xa9", "\xe6\x97\xa5", "\xf0\x9f\x98\x80",
      "<|endoftext|>", "\xff", "\xe3\x81", "\x80", " = Heading = \n"};
  // clang-format on
  for (int trial = 0; trial < 300; ++trial) {
    std::string text;
    const size_t len = rng() % 400;
    while (text.size() < len) text += atoms[rng() % atoms.size()];
    std::vector<size_t> chunks(7);
    for (auto& c : chunks) c = 1 + rng() % 9;
    ASSERT_EQ(encode_streaming(text, chunks), gpt2().encode(text)) << "trial " << trial;
  }
}

TEST(StreamingEncoder, WikiTextInSmallChunks) {
  const std::string text =
      data_testing::read_file(data_testing::wikitext2("valid")).substr(0, 300000);
  EXPECT_EQ(encode_streaming(text, {97, 1000, 3, 4096}), gpt2().encode(text));
}

TEST(StreamingEncoder, HoldsBackOnlyTheTail) {
  StreamingEncoder encoder(gpt2());
  Ids ids;
  encoder.write("Hello world, and", ids);
  EXPECT_EQ(gpt2().decode(ids), "Hello world,");
  EXPECT_EQ(encoder.held_bytes(), 4u);
  encoder.finish(ids);
  EXPECT_EQ(ids, gpt2().encode("Hello world, and"));
  EXPECT_EQ(encoder.held_bytes(), 0u);
  // Reusable after finish().
  Ids again;
  encoder.write("Hello world", again);
  encoder.finish(again);
  EXPECT_EQ(again, (Ids{15496, 995}));
}

}  // namespace test_streaming_encoder
}  // namespace
}  // namespace lsgpt
