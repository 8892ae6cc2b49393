// `lsgpt tokenize` and `lsgpt prepare` through the built binary: exact round
// trips, the files they write, and clean refusals (non-zero exit, one
// "lsgpt: error:" line, no output file).
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "data/token_file.h"
#include "data_test_support.h"

namespace lsgpt {
namespace {
namespace test_cli_prepare_tokenize {

using data_testing::gpt2;
using data_testing::read_file;
using data_testing::run_lsgpt;
using data_testing::ScratchDir;
using data_testing::write_file;

std::vector<int32_t> parse_ids(const std::string& text) {
  std::istringstream in(text);
  std::vector<int32_t> ids;
  for (int32_t id; in >> id;) ids.push_back(id);
  return ids;
}

void expect_clean_error(const data_testing::RunResult& r, const std::string& words) {
  EXPECT_NE(r.exit_code, 0) << r.err;
  EXPECT_GT(r.exit_code, 0) << "killed by a signal: " << r.err;
  EXPECT_NE(r.err.find(words), std::string::npos) << "expected \"" << words << "\" in: " << r.err;
}

TEST(CliTokenize, EncodesAndDecodesExactly) {
  ScratchDir dir;
  const std::string text = "Hello world";
  const auto enc = run_lsgpt(dir, "tokenize", text);
  ASSERT_EQ(enc.exit_code, 0) << enc.err;
  EXPECT_EQ(enc.out, "15496 995\n");

  // Awkward bytes survive the round trip, and decode adds no newline.
  const std::string awkward = "  it's\t\xe6\x97\xa5\xe6\x9c\xac \xff\xfe<|endoftext|>\n\n";
  const auto ids = run_lsgpt(dir, "tokenize", awkward);
  ASSERT_EQ(ids.exit_code, 0) << ids.err;
  EXPECT_EQ(parse_ids(ids.out), gpt2().encode(awkward));
  const auto back = run_lsgpt(dir, "tokenize --decode", ids.out);
  ASSERT_EQ(back.exit_code, 0) << back.err;
  EXPECT_EQ(back.out, awkward);

  const auto empty = run_lsgpt(dir, "tokenize", "");
  EXPECT_EQ(empty.exit_code, 0);
  EXPECT_EQ(empty.out, "\n");
}

TEST(CliTokenize, Refusals) {
  ScratchDir dir;
  expect_clean_error(run_lsgpt(dir, "tokenize --decode", "15496 50257"), "50257");
  expect_clean_error(run_lsgpt(dir, "tokenize --decode", "15496 hello"), "\"hello\"");
  expect_clean_error(run_lsgpt(dir, "tokenize --decode", "-3"), "\"-3\"");
  const auto bad = run_lsgpt(dir, "tokenize --decode", "15496 x");
  EXPECT_EQ(bad.out, "");  // nothing printed before the error
  EXPECT_NE(bad.err.find("lsgpt: error:"), std::string::npos) << bad.err;
  expect_clean_error(run_lsgpt(dir, "tokenize --no-such-flag", "x"), "--no-such-flag");
  expect_clean_error(run_lsgpt(dir, "tokenize --tokenizer-dir '" + dir.file("none") + "'", "x"),
                     "encoder.json");
  const auto help = run_lsgpt(dir, "tokenize --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("--decode"), std::string::npos);
}

TEST(CliPrepare, WritesTheTokenFile) {
  ScratchDir dir;
  write_file(dir.file("a.txt"), "Hello world\n");
  write_file(dir.file("b.txt"), "hello world");
  const auto r = run_lsgpt(dir, "prepare '" + dir.file("a.txt") + "' '" + dir.file("b.txt") +
                                    "' -o '" + dir.file("out.bin") + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("6 tokens in 2 documents"), std::string::npos) << r.err;
  const TokenFile file(dir.file("out.bin"), 50257);
  std::vector<int32_t> ids(file.size());
  file.read(0, ids.size(), ids.data());
  EXPECT_EQ(ids, (std::vector<int32_t>{15496, 995, 198, 50256, 31373, 995}));
}

TEST(CliPrepare, LiteralEndOfTextIsCountedOrKeptAsText) {
  ScratchDir dir;
  const std::string text = "Hello<|endoftext|> world";
  write_file(dir.file("a.txt"), text);
  const auto split = run_lsgpt(dir, "prepare '" + dir.file("a.txt") + "' -o '" + dir.file("o.bin") + "'");
  ASSERT_EQ(split.exit_code, 0) << split.err;
  EXPECT_NE(split.err.find("in 2 documents"), std::string::npos) << split.err;
  EXPECT_NE(split.err.find("--eot-as-text"), std::string::npos) << split.err;
  const TokenFile file(dir.file("o.bin"), 50257);
  std::vector<int32_t> ids(file.size());
  file.read(0, ids.size(), ids.data());
  EXPECT_EQ(ids, (std::vector<int32_t>{15496, 50256, 995}));

  const auto kept = run_lsgpt(dir, "prepare --eot-as-text '" + dir.file("a.txt") + "' -o '" +
                                       dir.file("p.bin") + "'");
  ASSERT_EQ(kept.exit_code, 0) << kept.err;
  EXPECT_NE(kept.err.find("in 1 documents"), std::string::npos) << kept.err;
  const TokenFile plain(dir.file("p.bin"), 50257);
  std::vector<int32_t> plain_ids(plain.size());
  plain.read(0, plain_ids.size(), plain_ids.data());
  EXPECT_EQ(plain_ids, gpt2().encode(text, /*eot_as_text=*/true));
  EXPECT_EQ(gpt2().decode(plain_ids), text);

  const auto help = run_lsgpt(dir, "prepare --help");
  EXPECT_NE(help.out.find("--eot-as-text"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("literal"), std::string::npos) << help.out;
}

TEST(CliPrepare, BundledWikiText2) {
  ScratchDir dir;
  const std::string out = dir.file("wt2");
  const auto r = run_lsgpt(dir, "prepare --dataset wikitext2 --out-dir '" + out + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Text tokens (pinned in tests/tokenizer) plus one <|endoftext|> between
  // consecutive articles (629, 60 and 62 of them).
  EXPECT_EQ(TokenFile(out + "/train.bin", 50257).size(), 2448382u + 628u);
  EXPECT_EQ(TokenFile(out + "/valid.bin", 50257).size(), 258659u + 59u);
  EXPECT_EQ(TokenFile(out + "/test.bin", 50257).size(), 295877u + 61u);
  for (const char* part : {"train.bin", "valid.bin", "test.bin"})
    EXPECT_NE(r.err.find(part), std::string::npos) << r.err;
}

TEST(CliPrepare, Refusals) {
  ScratchDir dir;
  write_file(dir.file("empty.txt"), "");
  write_file(dir.file("ok.txt"), "text\n");
  const std::string out = dir.file("out.bin");
  expect_clean_error(run_lsgpt(dir, "prepare '" + dir.file("empty.txt") + "' -o '" + out + "'"),
                     "is empty");
  expect_clean_error(run_lsgpt(dir, "prepare '" + dir.file("missing.txt") + "' -o '" + out + "'"),
                     "missing.txt");
  expect_clean_error(run_lsgpt(dir, "prepare '" + dir.file("ok.txt") + "'"), "-o");
  expect_clean_error(run_lsgpt(dir, "prepare"), "lsgpt: error:");
  expect_clean_error(
      run_lsgpt(dir, "prepare '" + dir.file("ok.txt") + "' -o '" + out + "' --split chapters"),
      "chapters");
  expect_clean_error(run_lsgpt(dir, "prepare --dataset wikitext2"), "--out-dir");
  expect_clean_error(
      run_lsgpt(dir, "prepare --dataset wikitext103 --out-dir '" + dir.file("d") + "'"),
      "wikitext103");
  expect_clean_error(run_lsgpt(dir, "prepare --dataset wikitext2 --out-dir '" + dir.file("d") +
                                        "' '" + dir.file("ok.txt") + "'"),
                     "not both");
  expect_clean_error(run_lsgpt(dir, "prepare --bogus"), "--bogus");
  // Nothing was written by any of them.
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"empty.txt", "ok.txt"}));
  const auto help = run_lsgpt(dir, "prepare --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("--split"), std::string::npos);
}

}  // namespace test_cli_prepare_tokenize
}  // namespace
}  // namespace lsgpt
