// Output that cannot be written, through the real binary: standard output on
// /dev/full (writes fail with ENOSPC, for buffered stdio only at the flush),
// output files that are /dev/full or a link to it, and output paths below a
// regular file (ENOTDIR; tests run as root, so read-only directories would
// not stop them). Every case must exit non-zero with exactly one
// "lsgpt: error:" line that says what could not be written and why, and
// leave no half-written file behind.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "data/token_file.h"

namespace {
namespace test_write_errors {

namespace fs = std::filesystem;

struct Outcome {
  int exit_code = -1;  // -1: killed by a signal
  std::string err;     // standard error
};

// Runs `lsgpt ARGS` with standard output sent to `stdout_to` and `stdin_text`
// as input, after the shell command `before` (e.g. "ulimit -f 64; ").
Outcome run(const std::string& args, const std::string& stdout_to = "/dev/full",
            const std::string& stdin_text = "", const std::string& before = "") {
  const fs::path in = fs::path(::testing::TempDir()) /
                      ("lsgpt_write_errors_stdin_" + std::to_string(::getpid()) + ".txt");
  std::ofstream(in) << stdin_text;
  const std::string cmd = before + std::string(LSGPT_BINARY) + " " + args + " 2>&1 >'" +
                          stdout_to + "' <'" + in.string() + "'";
  Outcome o;
  FILE* p = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) o.err.append(buf.data(), n);
  const int status = pclose(p);
  o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  fs::remove(in);
  return o;
}

size_t count(const std::string& hay, const std::string& needle) {
  size_t c = 0;
  for (size_t pos = hay.find(needle); pos != std::string::npos; pos = hay.find(needle, pos + 1))
    ++c;
  return c;
}

// One clean error: exit status 1 (not a signal), one error line holding every
// one of `words`, no crash text.
void expect_write_error(const Outcome& o, const std::vector<std::string>& words) {
  EXPECT_EQ(o.exit_code, 1) << o.err;
  EXPECT_EQ(count(o.err, "lsgpt: error:"), 1u) << o.err;
  const size_t at = o.err.find("lsgpt: error:");
  const std::string line = at == std::string::npos ? "" : o.err.substr(at, o.err.find('\n', at) - at);
  for (const std::string& w : words)
    EXPECT_NE(line.find(w), std::string::npos) << "expected '" << w << "' in:\n" << o.err;
  EXPECT_EQ(o.err.find("terminate called"), std::string::npos) << o.err;
}

const std::string kFull = "No space left on device";
const std::string kStdout = "cannot write to standard output: " + kFull;

bool is_char_device(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISCHR(st.st_mode);
}

// The names in `dir`, sorted, so a test can say exactly what must be there.
std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

class WriteErrors : public ::testing::Test {
 protected:
  // One tiny trained checkpoint and its Hugging Face export for the whole suite.
  static void SetUpTestSuite() {
    shared_ = fs::path(::testing::TempDir()) / ("lsgpt_write_errors_" + std::to_string(::getpid()));
    fs::create_directories(shared_);
    std::mt19937 rng(1);
    std::vector<int32_t> tokens(3000);
    for (auto& t : tokens) t = int32_t(rng() % 50257);
    lsgpt::write_token_file((shared_ / "train.bin").string(), 50257, tokens);
    lsgpt::write_token_file((shared_ / "valid.bin").string(), 50257, tokens);
    const Outcome trained = run("train --quiet --steps 2 --batch-size 2 --eval-every 0 --out-dir " +
                                    (shared_ / "run").string() + " --data-dir " + shared_.string() +
                                    small_model(),
                                "/dev/null");
    ASSERT_EQ(trained.exit_code, 0) << trained.err;
    const Outcome exported = run("export --checkpoint " + checkpoint() + " --out " +
                                     (shared_ / "hf").string(),
                                 "/dev/null");
    ASSERT_EQ(exported.exit_code, 0) << exported.err;
  }
  static void TearDownTestSuite() { fs::remove_all(shared_); }

  void SetUp() override {
    dir_ = shared_ / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::create_directories(dir_);
    std::ofstream(path("text.txt")) << "Hello world. A little text to tokenize.\n";
  }
  void TearDown() override {
    EXPECT_TRUE(is_char_device("/dev/full")) << "/dev/full was replaced";
    for (const auto& e : fs::recursive_directory_iterator(dir_))
      EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos)
          << "temporary file left behind: " << e.path();
  }

  static std::string small_model() {
    return " --n-layer 1 --n-head 1 --d-model 16 --seq-len 16 --n-local 0 ";
  }
  static std::string checkpoint() { return (shared_ / "run" / "checkpoint.ckpt").string(); }
  static std::string data() { return (shared_ / "train.bin").string(); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  // `name` inside this test's directory as a symbolic link to /dev/full.
  std::string full_link(const std::string& name) const {
    fs::create_directories(fs::path(path(name)).parent_path());
    fs::create_symlink("/dev/full", path(name));
    return path(name);
  }
  // A path whose parent is a regular file, so creating it fails with ENOTDIR.
  std::string under_a_file(const std::string& name) const {
    return path("text.txt") + "/" + name;
  }
  std::string train_args(const std::string& out_dir) const {
    return "train --steps 2 --batch-size 2 --eval-every 1 --log-every 1 --out-dir " + out_dir +
           " --data-dir " + shared_.string() + small_model();
  }
  std::string study_args(const std::string& report, const std::string& runs) const {
    return "study-span --settings off --seeds 1 --steps 1 --batch-size 2 --eval-every 0 "
           "--final-eval-batches 1 --data-dir " + shared_.string() + " --report " + report +
           " --runs-dir " + runs + small_model();
  }

  static fs::path shared_;
  fs::path dir_;
};

fs::path WriteErrors::shared_;

TEST_F(WriteErrors, GenerateToAFullStandardOutput) {
  // The command of the issue: it used to exit 0 with all output lost.
  expect_write_error(run("generate --checkpoint " + checkpoint() + " --prompt The -n 10"),
                     {kStdout});
  expect_write_error(run("generate --ids --checkpoint " + checkpoint() + " --prompt The -n 10"),
                     {kStdout});
  // An empty prompt prints nothing before the first token: the token write fails.
  expect_write_error(run("generate --checkpoint " + checkpoint() + " -n 3"), {kStdout});
  const Outcome ok = run("generate --checkpoint " + checkpoint() + " --prompt The -n 5", "/dev/null");
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
}

TEST_F(WriteErrors, TokenizeInfoAndEvalToAFullStandardOutput) {
  expect_write_error(run("tokenize", "/dev/full", "Hello world"), {kStdout});
  expect_write_error(run("tokenize --decode", "/dev/full", "15496 995"), {kStdout});
  expect_write_error(run("info --checkpoint " + checkpoint()), {kStdout});
  expect_write_error(run("info --json --checkpoint " + checkpoint()), {kStdout});
  expect_write_error(run("info --data " + data()), {kStdout});
  expect_write_error(run("info" + small_model()), {kStdout});
  expect_write_error(run("eval --checkpoint " + checkpoint() + " --data " + data()), {kStdout});
}

TEST_F(WriteErrors, HelpAndVersionToAFullStandardOutput) {
  expect_write_error(run("--help"), {kStdout});
  expect_write_error(run("--version"), {kStdout});
  expect_write_error(run("prepare --help"), {kStdout});
  EXPECT_EQ(run("--version", "/dev/null").exit_code, 0);
}

TEST_F(WriteErrors, ExportImportAndPrepareWithAFullStandardOutput) {
  // The files themselves are whole; only the summary line is lost, and that
  // is still a failure of the command.
  expect_write_error(run("export --checkpoint " + checkpoint() + " --out " + path("hf")),
                     {kStdout});
  expect_write_error(run("import --in " + (shared_ / "hf").string() + " --out " + path("i.ckpt")),
                     {kStdout});
  // prepare prints to standard error only, so a full standard output is no failure.
  const Outcome prepared = run("prepare " + path("text.txt") + " -o " + path("t.bin"));
  EXPECT_EQ(prepared.exit_code, 0) << prepared.err;
}

TEST_F(WriteErrors, TrainProgressToAFullStandardOutputStopsTheRun) {
  const Outcome o = run(train_args(path("run")));
  expect_write_error(o, {kStdout, "training progress", "--quiet"});
  EXPECT_FALSE(fs::exists(path("run/checkpoint.ckpt")));
}

TEST_F(WriteErrors, StudySpanToAFullStandardOutput) {
  expect_write_error(run(study_args(path("report.md"), path("runs"))), {kStdout});
  EXPECT_FALSE(fs::exists(path("report.md")));
}

TEST_F(WriteErrors, FilesOnAFullDevice) {
  // Written in place (a device cannot be renamed over), and the failed write
  // is reported; /dev/full stays the device (checked in TearDown).
  expect_write_error(run("eval --checkpoint " + checkpoint() + " --data " + data() +
                             " --logits-out /dev/full",
                         "/dev/null"),
                     {"cannot write '/dev/full'", kFull});
  expect_write_error(run("import --in " + (shared_ / "hf").string() + " --out /dev/full",
                         "/dev/null"),
                     {"cannot write '/dev/full'", kFull});
  expect_write_error(run("prepare " + path("text.txt") + " -o /dev/full", "/dev/null"),
                     {"cannot write '/dev/full'", kFull});
  // (A link, not /dev/full itself: the plot goes beside the report.)
  expect_write_error(run(study_args(full_link("study/report.md"), path("runs")), "/dev/null"),
                     {"report.md", kFull});
  // The same command to /dev/null succeeds: in-place writing works.
  const Outcome ok = run("prepare " + path("text.txt") + " -o /dev/null", "/dev/null");
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
}

TEST_F(WriteErrors, FilesOverTheFileSizeLimit) {
  // Past `ulimit -f` a write raises SIGXFSZ, which used to kill lsgpt (status
  // 153) and leave its .tmp files behind (TearDown checks there are none).
  const std::string limit = "ulimit -f 64; ";  // 32 or 64 KiB: below every file here
  const std::string too_large = "File too large";
  expect_write_error(run("export --checkpoint " + checkpoint() + " --out " + path("hf"),
                         "/dev/null", "", limit),
                     {"model.safetensors", too_large});
  expect_write_error(run("import --in " + (shared_ / "hf").string() + " --out " + path("i.ckpt"),
                         "/dev/null", "", limit),
                     {"i.ckpt", too_large});
  expect_write_error(run(train_args(path("run")), "/dev/null", "", limit),
                     {"checkpoint.ckpt", too_large});
  EXPECT_FALSE(fs::exists(path("i.ckpt")));
  EXPECT_FALSE(fs::exists(path("run/checkpoint.ckpt")));
}

TEST_F(WriteErrors, ExportedFilesOnAFullDevice) {
  full_link("hf1/model.safetensors");
  expect_write_error(run("export --checkpoint " + checkpoint() + " --out " + path("hf1"),
                         "/dev/null"),
                     {"model.safetensors", kFull});
  EXPECT_EQ(entries(path("hf1")), std::vector<std::string>{"model.safetensors"});
  full_link("hf2/config.json");
  expect_write_error(run("export --checkpoint " + checkpoint() + " --out " + path("hf2"),
                         "/dev/null"),
                     {"config.json", kFull});
}

TEST_F(WriteErrors, RunDirectoryFilesOnAFullDevice) {
  // Each file of a run directory in turn; training must stop with an error
  // naming the file, and the files written before it stay whole.
  for (const std::string name : {"config.json", "metrics.jsonl", "checkpoint.ckpt",
                                 "plot_train.dat"}) {
    const std::string out = path("run_" + name);
    full_link("run_" + name + "/" + name);
    // --overwrite: a planted metrics.jsonl or checkpoint.ckpt is a run's.
    expect_write_error(run(train_args(out) + " --overwrite", "/dev/null"), {name, kFull});
  }
  EXPECT_FALSE(fs::exists(path("run_metrics.jsonl/checkpoint.ckpt")));
  EXPECT_FALSE(fs::exists(path("run_config.json/checkpoint.ckpt")));
}

TEST_F(WriteErrors, PlotImagesOnAFullDevice) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "gnuplot is not installed, so no image is written";
  full_link("run/loss.png");
  expect_write_error(run(train_args(path("run")), "/dev/null"), {"loss.png", kFull});
  full_link("study/report.png");
  expect_write_error(run(study_args(path("study/report.md"), path("runs")), "/dev/null"),
                     {"report.png", kFull});
  EXPECT_FALSE(fs::exists(path("study/report.md")));
}

TEST_F(WriteErrors, OutputPathsBelowARegularFile) {
  const std::string eval = "eval --checkpoint " + checkpoint() + " --data " + data();
  struct Case {
    std::string args, words;
  } cases[] = {
      {"prepare " + path("text.txt") + " -o " + under_a_file("t.bin"), "t.bin"},
      {eval + " --logits-out " + under_a_file("l.npy"), "l.npy"},
      {"import --in " + (shared_ / "hf").string() + " --out " + under_a_file("i.ckpt"), "i.ckpt"},
      {"export --checkpoint " + checkpoint() + " --out " + under_a_file("hf"), "hf"},
      {train_args(under_a_file("run")), "run"},
      {study_args(under_a_file("report.md"), path("runs")), "report.md"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    expect_write_error(run(c.args, "/dev/null"), {c.words, "Not a directory"});
  }
  EXPECT_TRUE(fs::is_regular_file(path("text.txt")));
}

}  // namespace test_write_errors
}  // namespace
