// `lsgpt train --resume` and `--init-from` as a user runs them, from other
// working directories: a checkpoint knows its data by content and its model
// by its own config, so a resumed run reads the same data (whatever path
// spelling reaches it) or refuses naming the file, writes into the run it came
// from, and model flags are compared or applied only when they were typed.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "data/data_test_support.h"
#include "data/token_file.h"
#include "io/checkpoint.h"
#include "io/hf_gpt2.h"
#include "io/io_test_support.h"

namespace lsgpt {
namespace {
namespace test_cli_resume {

namespace fs = std::filesystem;
using testing::quoted;
using testing::ScratchDir;

// Runs lsgpt with `dir` as the working directory.
testing::CommandResult lsgpt_in(const fs::path& dir, const std::string& args) {
  return testing::run_command("cd " + quoted(dir.string()) + " && " + quoted(LSGPT_BINARY) + " " +
                              args + " < /dev/null");
}

void write_tokens(const fs::path& path, uint32_t seed, size_t n = 3000) {
  std::mt19937 rng(seed);
  std::vector<int32_t> tokens(n);
  for (auto& t : tokens) t = int32_t(rng() % 50257);
  write_token_file(path.string(), 50257, tokens);
}

void expect_refusal(const testing::CommandResult& r, const std::vector<std::string>& words,
                    const std::vector<std::string>& absent = {}) {
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(r.output.find("lsgpt: error: "), r.output.rfind("lsgpt: error: ")) << r.output;
  for (const std::string& w : words)
    EXPECT_NE(r.output.find(w), std::string::npos) << "missing '" << w << "' in " << r.output;
  for (const std::string& w : absent)
    EXPECT_EQ(r.output.find(w), std::string::npos) << "unexpected '" << w << "' in " << r.output;
}

const std::string kModel = " --n-layer 1 --d-model 32 --n-head 2 --seq-len 16 --n-local 1 --window 4";
const std::string kRun = " --quiet --batch-size 2 --eval-every 0 --final-eval-batches 2 --warmup 1";

size_t train_records(const fs::path& metrics) {
  std::ifstream in(metrics);
  size_t n = 0;
  for (std::string line; std::getline(in, line);)
    n += nlohmann::json::parse(line)["type"] == "train";
  return n;
}

// The issue's scenario: A/run stopped at step 3 of 6, resumed from folder B,
// which holds a different tr.bin at the same relative path.
TEST(CliResume, ResumeFromElsewhereReadsTheRecordedDataAndWritesTheOriginalRun) {
  ScratchDir dir;
  const fs::path a = dir.path() / "A", b = dir.path() / "B";
  fs::create_directories(a), fs::create_directories(b);
  write_tokens(a / "tr.bin", 1);
  write_tokens(b / "tr.bin", 2);
  auto r = lsgpt_in(a, "train --train tr.bin --valid tr.bin --steps 6 --stop-at 3 --out-dir run" +
                           kModel + kRun);
  ASSERT_EQ(r.exit_code, 0) << r.output;

  // B's own tr.bin, named explicitly: the wrong data, refused with both identities.
  r = lsgpt_in(b, "train --resume ../A/run/checkpoint.ckpt --train tr.bin --valid tr.bin");
  expect_refusal(r, {"tr.bin", "3000 tokens, FNV-1a 64", "checkpoint recorded"});
  EXPECT_FALSE(fs::exists(b / "run"));

  // Without data flags: A's data through the recorded absolute path, into A/run.
  r = lsgpt_in(b, "train --resume ../A/run/checkpoint.ckpt --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(fs::exists(b / "run"));
  EXPECT_EQ(load_checkpoint((a / "run/checkpoint.ckpt").string()).step, 6);
  EXPECT_EQ(train_records(a / "run/metrics.jsonl"), 6u);
  const nlohmann::json recorded = load_checkpoint((a / "run/checkpoint.ckpt").string()).train;
  EXPECT_EQ(recorded.value("train_data", ""), fs::canonical(a / "tr.bin").string());
  EXPECT_EQ(recorded.value("train_data_id", nlohmann::json()).value("tokens", 0), 3000);
}

TEST(CliResume, ChangedDataAtTheRecordedPathIsRefused) {
  ScratchDir dir;
  write_tokens(dir.path() / "tr.bin", 1);
  write_tokens(dir.path() / "va.bin", 3);
  auto r = lsgpt_in(dir.path(), "train --train tr.bin --valid va.bin --steps 6 --stop-at 3 "
                                "--out-dir run" + kModel + kRun);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Same length, other tokens: only the checksum tells.
  write_tokens(dir.path() / "tr.bin", 2);
  r = lsgpt_in(dir.path(), "train --resume run/checkpoint.ckpt");
  expect_refusal(r, {"--train data '" + fs::canonical(dir.path() / "tr.bin").string() + "'",
                     "3000 tokens"});
  // Another length: the token counts differ.
  write_tokens(dir.path() / "tr.bin", 1);
  write_tokens(dir.path() / "va.bin", 3, 2000);
  r = lsgpt_in(dir.path(), "train --resume run/checkpoint.ckpt");
  expect_refusal(r, {"--valid data", "va.bin", "2000 tokens", "3000 tokens"});
  // A missing file is named with a way out.
  fs::remove(dir.path() / "va.bin");
  r = lsgpt_in(dir.path(), "train --resume run/checkpoint.ckpt");
  expect_refusal(r, {"va.bin", "--valid"});
}

TEST(CliResume, TheSameDataThroughAnotherPathIsAccepted) {
  ScratchDir dir;
  const fs::path a = dir.path() / "A", b = dir.path() / "B";
  fs::create_directories(a / "x"), fs::create_directories(b);
  write_tokens(a / "tr.bin", 1);
  auto r = lsgpt_in(a, "train --train tr.bin --valid ./x/../tr.bin --steps 8 --stop-at 3 "
                       "--out-dir run" + kModel + kRun);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Both spellings were recorded as one absolute path.
  const Checkpoint ck = load_checkpoint((a / "run/checkpoint.ckpt").string());
  EXPECT_EQ(ck.train["valid_data"], ck.train["train_data"]);

  fs::create_symlink(a / "tr.bin", b / "link.bin");
  r = lsgpt_in(b, "train --resume ../A/run/checkpoint.ckpt --train link.bin --valid "
                  "../A/x/../tr.bin --stop-at 5 --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The data moved: the copy is found by content.
  fs::copy_file(a / "tr.bin", b / "moved.bin");
  fs::remove(a / "tr.bin");
  r = lsgpt_in(b, "train --resume ../A/run/checkpoint.ckpt --train moved.bin --valid moved.bin "
                  "--quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(load_checkpoint((a / "run/checkpoint.ckpt").string()).step, 8);
  EXPECT_EQ(train_records(a / "run/metrics.jsonl"), 8u);
  EXPECT_FALSE(fs::exists(b / "run"));
}

TEST(CliResume, OutDirMovesAResumedRun) {
  ScratchDir dir;
  write_tokens(dir.path() / "tr.bin", 1);
  auto r = lsgpt_in(dir.path(), "train --train tr.bin --valid tr.bin --steps 4 --stop-at 2 "
                                "--out-dir run" + kModel + kRun);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = lsgpt_in(dir.path(), "train --resume run/checkpoint.ckpt --out-dir elsewhere --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(load_checkpoint((dir.path() / "elsewhere/checkpoint.ckpt").string()).step, 4);
  EXPECT_EQ(load_checkpoint((dir.path() / "run/checkpoint.ckpt").string()).step, 2);
  // A --stop-at the checkpoint has reached trains nothing: refused (it went
  // straight to the final evaluation).
  for (const char* stop : {"1", "2"}) {
    r = lsgpt_in(dir.path(), std::string("train --resume run/checkpoint.ckpt --stop-at ") + stop);
    expect_refusal(r, {"--stop-at", "is not past step 2", "nothing would be trained"});
  }
}

// A run's folder is not taken over silently: a new run into it, or a resume
// moved onto it, is refused before anything is written (the old run's
// checkpoint, metrics and config stay as they were), naming the ways out;
// --overwrite replaces it, a resume into the checkpoint's own folder
// continues it, and a folder holding only metrics.jsonl counts too.
TEST(CliResume, AnOutDirHoldingARunIsNotReplacedSilently) {
  ScratchDir dir;
  write_tokens(dir.path() / "tr.bin", 1);
  auto fresh = [](int seed, const std::string& out_dir) {
    return "train --train tr.bin --valid tr.bin --steps 4 --stop-at 2 --seed " +
           std::to_string(seed) + " --out-dir " + out_dir + kModel + kRun;
  };
  auto r = lsgpt_in(dir.path(), fresh(7, "run"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const fs::path run = dir.path() / "run";
  auto bytes = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string ckpt = bytes(run / "checkpoint.ckpt"), metrics = bytes(run / "metrics.jsonl"),
                    config = bytes(run / "config.json");

  r = lsgpt_in(dir.path(), fresh(8, "run"));
  expect_refusal(r, {"already holds a run (checkpoint.ckpt)", "--resume", "--overwrite",
                     "give another --out-dir"});
  EXPECT_EQ(bytes(run / "checkpoint.ckpt"), ckpt);
  EXPECT_EQ(bytes(run / "metrics.jsonl"), metrics);
  EXPECT_EQ(bytes(run / "config.json"), config);

  // A second run resumed onto this one's folder.
  r = lsgpt_in(dir.path(), fresh(7, "other"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = lsgpt_in(dir.path(), "train --resume other/checkpoint.ckpt --out-dir run --quiet");
  expect_refusal(r, {"already holds a run", "--overwrite"});
  EXPECT_EQ(bytes(run / "checkpoint.ckpt"), ckpt);

  // Its own folder: continued (not with --overwrite, which would replace it).
  r = lsgpt_in(dir.path(), "train --resume run/checkpoint.ckpt --overwrite --quiet");
  expect_refusal(r, {"--overwrite would replace the run that --resume continues"});
  r = lsgpt_in(dir.path(), "train --resume run/checkpoint.ckpt --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(load_checkpoint((run / "checkpoint.ckpt").string()).step, 4);

  // --overwrite: a new run from step 0 in its place.
  r = lsgpt_in(dir.path(), fresh(8, "run") + " --overwrite");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(load_checkpoint((run / "checkpoint.ckpt").string()).step, 2);
  EXPECT_EQ(train_records(run / "metrics.jsonl"), 2u);

  // --overwrite takes the old checkpoint away before anything else: a run
  // that then fails before its first save leaves no old checkpoint beside
  // its own metrics.
  r = lsgpt_in(dir.path(), fresh(9, "run") + " --overwrite --fault error@1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_FALSE(fs::exists(run / "checkpoint.ckpt"));

  // Only the metrics left: no checkpoint to resume, so no --resume advice.
  r = lsgpt_in(dir.path(), fresh(7, "run"));
  expect_refusal(r, {"already holds a run (metrics.jsonl, no checkpoint to resume)",
                     "--overwrite"},
                 {"--resume"});

  // A resume moved onto another run with --overwrite starts the folder's
  // metrics anew instead of appending to the other run's.
  r = lsgpt_in(dir.path(), "train --resume other/checkpoint.ckpt --out-dir run --overwrite --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(train_records(run / "metrics.jsonl"), 2u);  // steps 3 and 4 only
}

// A SIGTERM (a scheduler's preemption) or SIGINT (Ctrl-C) mid-run ends the
// step under way, saves the checkpoint and stops with one error naming the
// signal and how to resume; the run then resumes from that step. The
// signal is sent once the run has logged three steps (its handlers are in
// place before the first).
TEST(CliResume, AStopSignalSavesTheRunAndItResumes) {
  for (const char* signal : {"TERM", "INT"}) {
    SCOPED_TRACE(signal);
    ScratchDir dir;
    write_tokens(dir.path() / "tr.bin", 1);
    const std::string train = quoted(LSGPT_BINARY) +
                              " train --train tr.bin --valid tr.bin --steps 1000000 "
                              "--max-time 120 --checkpoint-every 0 --out-dir run" + kModel + kRun;
    const std::string script =
        train + " > log 2>&1 & pid=$!; "
        "for i in $(seq 1200); do "
        "[ \"$(grep -c '\"type\": *\"train\"' run/metrics.jsonl 2>/dev/null)\" -ge 3 ] 2>/dev/null "
        "&& break; sleep 0.05; done; "
        "kill -" + std::string(signal) + " $pid; wait $pid; echo \"exit=$?\"; cat log";
    auto r = testing::run_command("cd " + quoted(dir.path().string()) + " && (" + script +
                                  ") < /dev/null");
    EXPECT_NE(r.output.find("exit=1"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(std::string("training stopped by SIG") + signal + " after step"),
              std::string::npos) << r.output;
    EXPECT_NE(r.output.find("--resume"), std::string::npos) << r.output;
    const long saved = load_checkpoint((dir.path() / "run/checkpoint.ckpt").string()).step;
    EXPECT_GE(saved, 3);
    EXPECT_LT(saved, 1000000);
    EXPECT_EQ(long(train_records(dir.path() / "run/metrics.jsonl")), saved);
    r = lsgpt_in(dir.path(), "train --resume run/checkpoint.ckpt --stop-at " +
                                 std::to_string(saved + 2) + " --quiet");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(load_checkpoint((dir.path() / "run/checkpoint.ckpt").string()).step, saved + 2);
  }
}

// Where the signal lands: during a periodic evaluation (cut short, not
// logged; a periodic save falls on the same step), or during the last step
// (no final evaluation: the run stops with the checkpoint of its last
// step). --fault signal@STEP raises SIGTERM as
// that step starts.
TEST(CliResume, AStopSignalCutsAnEvaluationAndStopsAfterTheLastStep) {
  ScratchDir dir;
  write_tokens(dir.path() / "tr.bin", 1, 20000);
  const std::string base = "train --train tr.bin --valid tr.bin --checkpoint-every 4" + kModel +
                           " --quiet --batch-size 2 --final-eval-batches 2 --warmup 1";
  // An evaluation of the whole file at step 4 would take seconds; the
  // signal raised at step 4's start cuts it after no batch.
  auto r = lsgpt_in(dir.path(), base + " --steps 100 --eval-every 4 --eval-batches 1000 "
                                       "--fault signal@4 --out-dir a");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("training stopped by SIGTERM after step 4 of 100"), std::string::npos)
      << r.output;
  EXPECT_EQ(load_checkpoint((dir.path() / "a/checkpoint.ckpt").string()).step, 4);
  std::ifstream metrics(dir.path() / "a/metrics.jsonl");
  size_t evals = 0;
  for (std::string line; std::getline(metrics, line);)
    evals += nlohmann::json::parse(line)["type"] == "eval";
  EXPECT_EQ(evals, 0u) << "the cut evaluation was logged";
  // The last of 3 steps.
  r = lsgpt_in(dir.path(), base + " --steps 3 --eval-every 0 --fault signal@3 --out-dir b");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("training stopped by SIGTERM after step 3 of 3"), std::string::npos)
      << r.output;
  EXPECT_EQ(load_checkpoint((dir.path() / "b/checkpoint.ckpt").string()).step, 3);
}

TEST(CliResume, ResumeComparesOnlyTheModelFlagsGiven) {
  ScratchDir dir;
  write_tokens(dir.path() / "tr.bin", 1);
  auto r = lsgpt_in(dir.path(), "train --train tr.bin --valid tr.bin --steps 6 --stop-at 2 "
                                "--out-dir run" + kModel + kRun);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = lsgpt_in(dir.path(), "train --resume run/checkpoint.ckpt --window 5");
  expect_refusal(r, {"window (--window): checkpoint 4, given 5"},
                 {"d_model", "n_head", "seq_len", "n_layer", "n_local"});
  r = lsgpt_in(dir.path(), "train --resume run/checkpoint.ckpt --d-model 64");
  expect_refusal(r, {"d_model (--d-model): checkpoint 32, given 64"},
                 {"n_head", "seq_len", "n_layer", "window"});
  // Flags that repeat the checkpoint's values are no change.
  r = lsgpt_in(dir.path(), "train --resume run/checkpoint.ckpt --quiet --stop-at 4" + kModel);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(load_checkpoint((dir.path() / "run/checkpoint.ckpt").string()).step, 4);
}

// Fine-tuning imported weights: the model comes from the checkpoint, not
// from configs/default.json.
TEST(CliResume, InitFromTakesTheCheckpointsModelAndAppliesOnlyGivenFlags) {
  ScratchDir dir;
  write_tokens(dir.path() / "tr.bin", 1);
  ModelConfig cfg;
  cfg.n_layer = 1, cfg.n_head = 2, cfg.d_model = 16, cfg.seq_len = 16, cfg.n_local = {0};
  cfg.normalize_and_validate();
  export_hf_gpt2(cfg, testing::random_params(cfg, 5), dir.file("hf"));
  auto r = lsgpt_in(dir.path(), "import --in hf --out gpt2.ckpt --n-local 1 --window 4");
  ASSERT_EQ(r.exit_code, 0) << r.output;

  const std::string base = "train --init-from gpt2.ckpt --train tr.bin --valid tr.bin --steps 2" + kRun;
  r = lsgpt_in(dir.path(), base + " --out-dir tuned");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Checkpoint tuned = load_checkpoint(dir.file("tuned/checkpoint.ckpt"));
  EXPECT_TRUE(tuned.model == load_checkpoint(dir.file("gpt2.ckpt")).model);

  // Settings that keep the weights' shape may change.
  r = lsgpt_in(dir.path(), base + " --out-dir mhsa --n-local 0 --window 8 --span k:cross:2:1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Checkpoint mhsa = load_checkpoint(dir.file("mhsa/checkpoint.ckpt"));
  EXPECT_EQ(mhsa.model.n_local, std::vector<int>{0});
  EXPECT_EQ(mhsa.model.window, 8);
  EXPECT_EQ(mhsa.model.span.to_string(), "k:cross:2:1");
  EXPECT_EQ(mhsa.model.d_model, 16);

  // A shape change is refused, naming only what was asked.
  r = lsgpt_in(dir.path(), base + " --out-dir wide --d-model 64");
  expect_refusal(r, {"d_model (--d-model): checkpoint 16, given 64"},
                 {"n_head", "seq_len", "n_layer", "window (", "n_local ("});
  EXPECT_FALSE(fs::exists(dir.path() / "wide"));
  // A --config file counts as typed: its keys, not configs/default.json's.
  std::ofstream(dir.file("c.json")) << R"({"comment": "x", "window": 6, "seq_len": 32})";
  r = lsgpt_in(dir.path(), base + " --out-dir cfg --config c.json");
  expect_refusal(r, {"seq_len", "checkpoint 16, given 32"}, {"d_model", "n_head", "window ("});
  // A new run into the folder of its --init-from would save over the weights
  // it started from: refused, and the checkpoint is left as it was.
  const std::string before = data_testing::read_file(dir.file("tuned/checkpoint.ckpt"));
  r = lsgpt_in(dir.path(), "train --init-from tuned/checkpoint.ckpt --train tr.bin --valid tr.bin"
                           " --steps 2 --out-dir tuned" + kRun);
  expect_refusal(r, {"--init-from", "the checkpoint this run would write", "--out-dir"});
  EXPECT_EQ(data_testing::read_file(dir.file("tuned/checkpoint.ckpt")), before);
  // An imported model has no run to resume.
  r = lsgpt_in(dir.path(), "train --resume gpt2.ckpt");
  expect_refusal(r, {"no optimizer state", "--init-from"});
  // info describes a checkpoint as it is: model flags with it would be ignored, so they are refused.
  r = lsgpt_in(dir.path(), "info --checkpoint gpt2.ckpt --window 8 --n-local 0");
  expect_refusal(r, {"--n-local, --window", "--checkpoint"});
  r = lsgpt_in(dir.path(), "info --data tr.bin --d-model 64");
  expect_refusal(r, {"--d-model", "--data"});
}

}  // namespace test_cli_resume
}  // namespace
}  // namespace lsgpt
