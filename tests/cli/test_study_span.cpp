// `lsgpt study-span` end to end on a tiny model: LS and MHSA, two settings,
// three seeds; the report's paired statistics agree with the raw outcomes in
// results.json, --merge rebuilds the same tables from two studies run apart,
// and bad input is refused before any training.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/statistics.h"
#include "data/token_file.h"
#include "io/io_test_support.h"

namespace lsgpt {
namespace {
namespace test_study_span {

namespace fs = std::filesystem;
using testing::quoted;
using testing::ScratchDir;

const std::string kTiny =
    " --n-layer 1 --d-model 32 --n-head 2 --seq-len 16 --window 4 --batch-size 2"
    " --eval-every 2 --eval-batches 1 --final-eval-batches 2 --warmup 1 --lr 3e-3";

testing::CommandResult lsgpt(const std::string& args) {
  return testing::run_command(quoted(LSGPT_BINARY) + " " + args + " < /dev/null");
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class StudySpan : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937 rng(7);
    for (const char* name : {"train.bin", "valid.bin"}) {
      std::vector<int32_t> tokens(2000);
      for (auto& t : tokens) t = int32_t(rng() % 50257);
      write_token_file((dir_.path() / name).string(), 50257, tokens);
    }
  }
  std::string study(const std::string& attention, const std::string& tag) const {
    return "study-span --data-dir " + quoted(dir_.path().string()) +
           " --settings 'off;q:cross:2:1,k:cross:2:1' --seeds 1,2,3 --steps 4 --attention " +
           attention + " --n-local 1 --report " + quoted((dir_.path() / (tag + ".md")).string()) +
           " --runs-dir " + quoted((dir_.path() / tag).string()) + kTiny;
  }
  // One seed of canonical attention alone; `tag` names the report and runs directory.
  std::string canonical_study(const std::string& flags, const std::string& tag) const {
    return "study-span --data-dir " + quoted(dir_.path().string()) + " --settings off --seeds 1 " +
           flags + " --report " + quoted((dir_.path() / (tag + ".md")).string()) +
           " --runs-dir " + quoted((dir_.path() / tag).string()) + kTiny;
  }
  ScratchDir dir_;
};

// A stop signal during a study's run ends the study with one error that
// says what is kept and that a rerun starts over, not the run's own advice
// to resume it with lsgpt train (a rerun of the study would not use it).
TEST_F(StudySpan, AStopSignalEndsTheStudyNamingWhatIsKept) {
  const std::string runs = (dir_.path() / "stopped").string();
  const std::string script =
      quoted(LSGPT_BINARY) + " " + canonical_study("--steps 30000", "stopped") +
      " > " + quoted(runs + ".log") + " 2>&1 & pid=$!; "
      "for i in $(seq 1200); do f=$(find " + quoted(runs) + " -name metrics.jsonl 2>/dev/null | "
      "head -1); [ -n \"$f\" ] && [ \"$(grep -c '\"type\": *\"train\"' \"$f\")\" -ge 2 ] && "
      "break; sleep 0.05; done; kill -TERM $pid; wait $pid; echo \"exit=$?\"; cat " +
      quoted(runs + ".log");
  const auto r = testing::run_command("(" + script + ") < /dev/null");
  EXPECT_NE(r.output.find("exit=1"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("the study stopped by SIGTERM during its run 1"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("no run had finished; running the study again starts every run over"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("--resume"), std::string::npos) << r.output;
}

TEST_F(StudySpan, PairedStatisticsOfBothAttentionKinds) {
  const auto r = lsgpt(study("ls,mhsa", "both"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json results = nlohmann::json::parse(read_all(dir_.path() / "both/results.json"));
  ASSERT_EQ(results["runs"].size(), 12u);  // 2 settings x 2 attention kinds x 3 seeds
  std::map<std::string, std::vector<double>> loss;  // "ls off" -> per seed, seed order
  for (const auto& run : results["runs"])
    loss[run["attention"].get<std::string>() + " " + run["setting"].get<std::string>()].push_back(
        run["val_loss"].get<double>());
  // MHSA and LS are different models: their canonical losses differ.
  EXPECT_NE(loss["ls off"], loss["mhsa off"]);
  const std::string report = read_all(dir_.path() / "both.md");
  EXPECT_NE(report.find("## LS-attention"), std::string::npos) << report;
  EXPECT_NE(report.find("## MHSA (all heads global)"), std::string::npos) << report;
  for (const char* kind : {"ls", "mhsa"}) {
    const PairedTest t =
        paired_t_test(loss[std::string(kind) + " q:cross:2:1,k:cross:2:1"], loss[std::string(kind) + " off"]);
    char p[64];
    std::snprintf(p, sizeof p, "| %.3g |", t.p_two_sided);
    EXPECT_NE(report.find(p), std::string::npos) << "p " << p << " not in\n" << report;
  }
}

TEST_F(StudySpan, MergeRebuildsTheReportFromStudiesRunApart) {
  ASSERT_EQ(lsgpt(study("ls", "ls")).exit_code, 0);
  ASSERT_EQ(lsgpt(study("mhsa", "mhsa")).exit_code, 0);
  const std::string merged = (dir_.path() / "merged.md").string();
  const auto r = lsgpt("study-span --merge " + quoted((dir_.path() / "ls/results.json").string()) +
                       " " + quoted((dir_.path() / "mhsa/results.json").string()) + " --report " +
                       quoted(merged) + " --runs-dir " + quoted((dir_.path() / "m").string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The merged report holds each study's table unchanged (but for the step
  // times in the last two columns, which are measured).
  auto section = [](const std::string& doc, const std::string& title) {
    std::istringstream in(doc.substr(doc.find(title)));
    std::string out, line;
    std::getline(in, line);
    for (out = line + "\n"; std::getline(in, line) && !line.starts_with("## ") && !line.starts_with("![");) {
      if (line.starts_with("| ")) line = line.substr(0, line.rfind('|', line.rfind('|', line.size() - 2) - 1));
      out += line + "\n";
    }
    return out;
  };
  const std::string doc = read_all(merged);
  EXPECT_EQ(section(doc, "## LS"), section(read_all(dir_.path() / "ls.md"), "## LS"));
  EXPECT_EQ(section(doc, "## MHSA"), section(read_all(dir_.path() / "mhsa.md"), "## MHSA"));
  EXPECT_NE(section(doc, "## LS").find("- seed 3:"), std::string::npos) << doc;
  // The same runs twice count once; a run whose loss differs is refused.
  const std::string again = (dir_.path() / "again.md").string();
  const std::string ls_results = (dir_.path() / "ls/results.json").string();
  ASSERT_EQ(lsgpt("study-span --merge " + quoted(ls_results) + " " + quoted(ls_results) +
                  " --report " + quoted(again) + " --runs-dir " + quoted((dir_.path() / "a").string()))
                .exit_code,
            0);
  EXPECT_EQ(section(read_all(again), "## LS"), section(read_all(dir_.path() / "ls.md"), "## LS"));
  nlohmann::json changed = nlohmann::json::parse(read_all(ls_results));
  changed["runs"][0]["val_loss"] = changed["runs"][0]["val_loss"].get<double>() + 0.5;
  const fs::path changed_file = dir_.path() / "changed.json";
  std::ofstream(changed_file) << changed.dump();
  const auto differs = lsgpt("study-span --merge " + quoted(ls_results) + " " +
                             quoted(changed_file.string()) + " --report " + quoted(again));
  EXPECT_EQ(differs.exit_code, 1);
  EXPECT_NE(differs.output.find("not the same experiment"), std::string::npos) << differs.output;
  changed = nlohmann::json::parse(read_all(ls_results));
  changed["model"]["window"] = 5;
  std::ofstream(changed_file, std::ios::trunc) << changed.dump();
  const auto other = lsgpt("study-span --merge " + quoted(ls_results) + " " +
                           quoted(changed_file.string()) + " --report " + quoted(again));
  EXPECT_EQ(other.exit_code, 1);
  EXPECT_NE(other.output.find("another experiment"), std::string::npos) << other.output;
}

TEST_F(StudySpan, RefusesBadInputBeforeTraining) {
  const std::string data = " --data-dir " + quoted(dir_.path().string()) + kTiny + " --steps 2";
  struct Case {
    std::string args, words;
  } cases[] = {
      {"--attention gqa", "--attention takes ls and/or mhsa"},
      {"--attention ls --n-local 0", "needs local heads"},
      {"--attention mhsa --n-local 5", "n_local"},
      {"--seeds 1,-2", "--seeds takes comma-separated integers"},
      {"--seeds 1,x", "--seeds takes comma-separated integers"},
      {"--settings 'q:cross:2:1'", "must be 'off'"},
      {"--settings 'off;q:diag:2:1'", "basis"},
      {"--epochs -1", "--epochs"},
      // nan passed CLI::PositiveNumber and the study ran the default 1000 steps.
      {"--epochs nan", "--epochs: must be a positive number of passes, got nan"},
      {"--epochs 0", "--epochs: must be a positive number of passes, got 0"},
      {"--epochs inf", "--epochs: must be a positive number of passes, got inf"},
      {"--seeds 1,2,1", "a seed twice"},
      {"--settings 'off;off'", "a setting twice"},
      {"--attention ls,ls", "a kind twice"},
  };
  for (const Case& c : cases) {
    const auto r = lsgpt("study-span " + c.args + data + " --runs-dir " +
                         quoted((dir_.path() / "bad").string()));
    EXPECT_NE(r.exit_code, 0) << c.args;
    EXPECT_NE(r.output.find(c.words), std::string::npos) << c.args << ": " << r.output;
  }
  EXPECT_FALSE(fs::exists(dir_.path() / "bad" / "results.json"));
  const auto missing = lsgpt("study-span --merge /nonexistent/results.json");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("cannot open"), std::string::npos) << missing.output;
  // Used to end as the bare 'basic_filebuf::underflow error reading the file'.
  const auto dir = lsgpt("study-span --merge " + quoted(dir_.path().string()));
  EXPECT_EQ(dir.exit_code, 1);
  EXPECT_NE(dir.output.find("the study results file '" + dir_.path().string() + "' is a directory"),
            std::string::npos)
      << dir.output;
}

TEST_F(StudySpan, EpochsSetTheStepsFromTheTrainingFile) {
  // 2000 tokens / (2 x 16 tokens per step) = 62.5 -> 63 steps for one epoch; 0.05 epochs -> 4.
  const auto r = lsgpt(canonical_study("--epochs 0.05 --n-local 1", "e"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json results = nlohmann::json::parse(read_all(dir_.path() / "e/results.json"));
  EXPECT_EQ(results["training"]["steps"], 4);
  EXPECT_EQ(results["attention"], nlohmann::json::array({"ls"}));  // the model as configured
  EXPECT_NE(read_all(dir_.path() / "e.md").find("(0.05 epochs)"), std::string::npos);
}

// Without --attention the study runs the model as configured: a model
// without local heads is an MHSA study, not an error.
TEST_F(StudySpan, DefaultAttentionIsTheModelAsConfigured) {
  const auto r = lsgpt(canonical_study("--steps 2 --n-local 0", "m"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json results = nlohmann::json::parse(read_all(dir_.path() / "m/results.json"));
  EXPECT_EQ(results["attention"], nlohmann::json::array({"mhsa"}));
}

}  // namespace test_study_span
}  // namespace
}  // namespace lsgpt
