// The same-run A/B of two builds (bench/ab_revisions.sh, bench/ab_summary.py)
// on the CPU: the summary's means, changes and spreads from hand-made run
// records, one command printing JSON objects (bench_cuda_attention) and one
// a Markdown table (bench_train); the summary's refusals (no numbers, a side
// without runs, no runs, a bad record); and the script's refusals of bad
// arguments, which come before any build.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "../io/io_test_support.h"

namespace lsgpt {
namespace {
namespace test_ab_revisions {

using testing::quoted;
using testing::run_command;
using testing::ScratchDir;

const std::string kSource = LSGPT_SOURCE_DIR;
const std::string kSummary = kSource + "/bench/ab_summary.py";
const std::string kScript = kSource + "/bench/ab_revisions.sh";

// One run record as bench/ab_revisions.sh writes it; `output` is JSON-escaped already.
std::string record(int command, const char* side, int round, const std::string& output) {
  return "{\"command\": " + std::to_string(command) + ", \"text\": \"cmd " +
         std::to_string(command) + "\", \"side\": \"" + side + "\", \"round\": " +
         std::to_string(round) + ", \"output\": \"" + output + "\"}\n";
}

std::string attention_json(double fwd_ms) {
  return "build noise\\n{\\\"label\\\": \\\"custom\\\", \\\"T\\\": 1024, \\\"fwd_ms\\\": " +
         std::to_string(fwd_ms) + "}\\n";
}

std::string train_table(const char* tokens, const char* step_ms) {
  return std::string("| config | device | batch x T | tokens/s | step ms | peak memory GiB |\\n") +
         "|---|---|---|---|---|---|\\n| configs/gpt2-small.json | cuda | 16 x 1024 | " + tokens +
         " | " + step_ms + " | 8.242 |\\n";
}

testing::CommandResult summarise(const std::string& path) {
  return run_command("python3 " + quoted(kSummary) + " " + quoted(path));
}

TEST(AbSummary, MeansChangesAndSpreadsOfJsonAndTableOutputs) {
  ScratchDir dir;
  const std::string path = dir.file("ab.jsonl");
  std::ofstream(path) << record(1, "base", 1, attention_json(0.10))
                      << record(1, "new", 1, attention_json(0.09))
                      << record(2, "base", 1, train_table("594,515", "27.56"))
                      << record(2, "new", 1, train_table("595643", "27.48"))
                      << record(1, "base", 2, attention_json(0.12))
                      << record(1, "new", 2, attention_json(0.09))
                      << record(2, "base", 2, train_table("594652", "27.54"))
                      << record(2, "new", 2, train_table("596181", "27.40"));
  const auto r = summarise(path);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("### 1: `cmd 1` (2 runs a side)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("| fwd_ms | 0.11 | 0.09 | -18.2% | 18.2% | 0.0% |"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("| tokens/s | 594,584 | 595,912 | +0.2% | 0.0% | 0.1% |"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("| step ms | 27.55 | 27.44 | -0.4% | 0.1% | 0.3% |"), std::string::npos)
      << r.output;
  // Equal in every run (T, peak memory) or not numbers (label, config): left out.
  EXPECT_EQ(r.output.find("| T |"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("peak memory"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("| label |"), std::string::npos) << r.output;
}

// Several results in one output (bench_cuda_attention's grid, bench_train's
// cases) are each compared under their own name; a field only one side
// reports is listed as such; a spread around a mean of 0 is "-"; a table
// ends at its first line that is not a row; a trailing JSON line without
// numbers does not hide the others.
TEST(AbSummary, EveryResultOfAnOutputIsItsOwn) {
  ScratchDir dir;
  const std::string path = dir.file("ab.jsonl");
  auto grid = [](double mhsa, double ls, const std::string& extra) {
    const std::string mhsa_row = "{\\\"label\\\": \\\"mhsa\\\", \\\"T\\\": 1024, \\\"fwd_ms\\\": ";
    const std::string ls_row = "{\\\"label\\\": \\\"ls\\\", \\\"T\\\": 1024, \\\"fwd_ms\\\": ";
    return mhsa_row + std::to_string(mhsa) + extra + "}\\n" + ls_row + std::to_string(ls) +
           "}\\n{\\\"status\\\": \\\"done\\\"}\\n";
  };
  auto rows = [](const char* a, const char* b) {
    return std::string("| case | tokens/s |\\n|---|---|\\n| a | ") + a + " |\\n| b | " + b +
           " |\\nlog line\\n| 2 | note |\\n";
  };
  const std::string base_extra = ", \\\"zero\\\": %d, \\\"only_base\\\": 2";
  const std::string new_extra = ", \\\"zero\\\": 5, \\\"only_new\\\": 3";
  auto base = [&](int zero) {
    std::string e = base_extra;
    return e.replace(e.find("%d"), 2, std::to_string(zero));
  };
  std::ofstream(path) << record(1, "base", 1, grid(1.0, 0.5, base(-1)))
                      << record(1, "new", 1, grid(0.5, 0.5, new_extra))
                      << record(1, "base", 2, grid(1.0, 0.5, base(1)))
                      << record(2, "base", 1, rows("100", "10"))
                      << record(2, "new", 1, rows("50", "10"));
  const auto r = summarise(path);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("(base 2 runs, new 1 run)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("| mhsa T=1024: fwd_ms | 1 | 0.5 | -50.0% | 0.0% | 0.0% |"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("ls T=1024: fwd_ms"), std::string::npos) << "unchanged: " << r.output;
  EXPECT_NE(r.output.find("| mhsa T=1024: zero | 0 | 5 | - | - | 0.0% |"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("| mhsa T=1024: only_base | base only |"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("| mhsa T=1024: only_new | new only |"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("| a: tokens/s | 100 | 50 | -50.0% |"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("| 2: "), std::string::npos) << "a row after the table: " << r.output;
}

TEST(AbSummary, RefusesRunsWithoutNumbersOrASideAndBadRecords) {
  ScratchDir dir;
  struct Case {
    std::string contents, expected;
  };
  const Case cases[] = {
      {record(1, "base", 1, "Segmentation fault\\n") + record(1, "new", 1, attention_json(1)),
       "command 1 printed no JSON object and no Markdown table row with numbers"},
      {record(1, "base", 1, attention_json(1)), "command 1 has no new run"},
      {"", "no runs"},
      {"{\"command\": 1, \"side\": \"base\"}\n", "ab.jsonl:1: not an A/B run record"},
      {record(1, "old", 1, attention_json(1)), "side 'old' is neither base nor new"},
  };
  for (const Case& c : cases) {
    const std::string path = dir.file("ab.jsonl");
    std::ofstream(path) << c.contents;
    const auto r = summarise(path);
    EXPECT_NE(r.exit_code, 0) << c.expected;
    EXPECT_NE(r.output.find(c.expected), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("Traceback"), std::string::npos) << r.output;
  }
}

TEST(AbRevisions, RefusesBadArgumentsBeforeBuilding) {
  ScratchDir dir;
  const std::string out = dir.file("ab");
  auto run = [&](const std::string& args) {
    return run_command("bash " + quoted(kScript) + " " + args);
  };
  const std::string command = quoted("{build}/bench_train --device cpu");
  const auto usage = run("HEAD " + quoted(out) + " 1");
  EXPECT_EQ(usage.exit_code, 2);
  EXPECT_NE(usage.output.find("usage:"), std::string::npos) << usage.output;
  const auto rounds = run("HEAD " + quoted(out) + " 0 " + command);
  EXPECT_NE(rounds.exit_code, 0);
  EXPECT_NE(rounds.output.find("ROUNDS must be a positive whole number, not '0'"),
            std::string::npos)
      << rounds.output;
  const auto same = run("HEAD " + quoted(out) + " 1 " + quoted("bench_train --device cpu"));
  EXPECT_NE(same.exit_code, 0);
  EXPECT_NE(same.output.find("does not name {build}"), std::string::npos) << same.output;
  // A file in the build folder is not a program to build.
  const auto file = run("HEAD " + quoted(out) + " 1 " + quoted("cat {build}/results.json"));
  EXPECT_NE(file.exit_code, 0);
  EXPECT_NE(file.output.find("no command runs a program as {build}/NAME"), std::string::npos)
      << file.output;
  if (std::filesystem::exists(kSource + "/.git")) {
    const auto rev = run("no-such-revision " + quoted(out) + " 1 " + command);
    EXPECT_NE(rev.exit_code, 0);
    EXPECT_NE(rev.output.find("'no-such-revision' is not a revision"), std::string::npos)
        << rev.output;
  }
  EXPECT_FALSE(std::filesystem::exists(out + "/base-build")) << "nothing is built on bad input";
}

}  // namespace test_ab_revisions
}  // namespace
}  // namespace lsgpt
