// Faults found when a new user tried lsgpt from the README (2026-11-29),
// each through the real binary: flags that were silently ignored or wrapped
// around, a directory taken for a file, an input overwritten by the output,
// and usage errors that did not look like every other error.
#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include "../io/io_test_support.h"
#include "data/token_file.h"

namespace lsgpt {
namespace {
namespace test_cli_user_trial {

using testing::quoted;
using testing::ScratchDir;
constexpr auto lsgpt = testing::run_lsgpt;

// One error line in lsgpt's form, status 1, containing `words`.
void expect_error(const testing::CommandResult& r, const std::string& words) {
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(r.output.rfind("lsgpt: error: ", 0), 0u) << r.output;
  EXPECT_EQ(r.output.find("lsgpt: error: ", 1), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(words), std::string::npos) << "missing '" << words << "' in " << r.output;
}

class CliUserTrial : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937 rng(5);
    std::vector<int32_t> tokens(3000);
    for (auto& t : tokens) t = int32_t(rng() % 50257);
    write_token_file(dir_.file("train.bin"), 50257, tokens);
  }
  std::string f(const std::string& name) const { return quoted(dir_.file(name)); }
  testing::CommandResult train(const std::string& extra) {
    return lsgpt("train --train " + f("train.bin") + " --valid " + f("train.bin") +
                 " --n-layer 1 --n-head 2 --d-model 32 --seq-len 16 --n-local 1 --window 4"
                 " --batch-size 2 --eval-every 0 --final-eval-batches 1 --quiet " + extra);
  }
  ScratchDir dir_;
};

TEST_F(CliUserTrial, ResumeAndInitFromCompareTheVocabularyAndEndOfTextToo) {
  ASSERT_EQ(train("--steps 4 --stop-at 2 --out-dir " + f("run")).exit_code, 0);
  const std::string ckpt = f("run/checkpoint.ckpt");
  expect_error(lsgpt("train --resume " + ckpt + " --vocab-size 1000 --quiet"), "--vocab-size");
  expect_error(lsgpt("train --resume " + ckpt + " --eot-token 5 --quiet"), "--eot-token");
  expect_error(lsgpt("train --init-from " + ckpt + " --train " + f("train.bin") + " --valid " +
                     f("train.bin") + " --steps 1 --out-dir " + f("b") + " --vocab-size 1000 --quiet"),
               "--vocab-size");
  // The end-of-text token is no shape: --init-from applies it.
  ASSERT_EQ(lsgpt("train --init-from " + ckpt + " --train " + f("train.bin") + " --valid " +
                  f("train.bin") + " --steps 1 --batch-size 2 --final-eval-batches 1 --out-dir " +
                  f("c") + " --eot-token 5 --quiet")
                .exit_code,
            0);
  const auto info = lsgpt("info --checkpoint " + f("c/checkpoint.ckpt"));
  EXPECT_NE(info.output.find("end-of-text token 5"), std::string::npos) << info.output;
}

TEST_F(CliUserTrial, SeedsOutsideUnsigned64AreRefusedNotWrapped) {
  for (const char* seed : {"-1", "18446744073709551616", "1e3"}) {
    expect_error(train("--steps 1 --out-dir " + f("s") + " --seed " + seed), "--seed");
    expect_error(lsgpt("generate --checkpoint " + f("none.ckpt") + " --seed " + seed), "--seed");
  }
  EXPECT_FALSE(std::filesystem::exists(dir_.file("s/checkpoint.ckpt")));
}

TEST_F(CliUserTrial, APromptFileThatIsADirectoryIsRefused) {
  ASSERT_EQ(train("--steps 1 --out-dir " + f("run")).exit_code, 0);
  expect_error(lsgpt("generate --checkpoint " + f("run/checkpoint.ckpt") + " --prompt-file " +
                     quoted(dir_.path().string()) + " -n 2"),
               "is a directory");
}

TEST_F(CliUserTrial, PrepareRefusesToOverwriteItsInput) {
  std::ofstream(dir_.file("text.txt")) << "Some text to keep.\n";
  expect_error(lsgpt("prepare " + f("text.txt") + " -o " + f("text.txt")), "also an input");
  std::ifstream in(dir_.file("text.txt"));
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "Some text to keep.");
}

TEST_F(CliUserTrial, UsageErrorsAreOneLsgptErrorLine) {
  expect_error(lsgpt("train --bogus"), "--bogus");
  expect_error(lsgpt("generate --tokens abc --checkpoint x"), "--tokens");
  expect_error(lsgpt("eval"), "--checkpoint");
  const auto help = lsgpt("generate --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.output.find("--prompt-ids"), std::string::npos);
}

}  // namespace test_cli_user_trial
}  // namespace
}  // namespace lsgpt
