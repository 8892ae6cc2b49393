// metrics.jsonl on a disk that fills up: the failed write is an error naming
// the file, and the file keeps whole lines only, so readers of a run that
// stopped this way (plots, study-span, scripts) never meet half a record.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "core/error.h"
#include "train/progress.h"

namespace lsgpt {
namespace {
namespace test_metrics_log {

namespace fs = std::filesystem;

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Child process: the file-size limit makes write(2) write part of a line and
// then fail with EFBIG. Exit 0: the error named the file and the reason.
int fill_until_failure(const std::string& path, bool append) {
  ::signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim {1000, 1000};
  ::setrlimit(RLIMIT_FSIZE, &lim);
  try {
    MetricsLog log(path, append);
    for (int step = 0; step < 1000; ++step)
      log.write(nlohmann::json{{"type", "train"}, {"step", step}, {"pad", std::string(41, 'x')}});
  } catch (const Error& e) {
    const std::string msg = e.what();
    return msg.find(path) != std::string::npos && msg.find("File too large") != std::string::npos
               ? 0
               : 2;
  }
  return 1;
}

void expect_whole_lines(const std::string& text, size_t at_least) {
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n') << "the file ends inside a record";
  std::istringstream in(text);
  size_t lines = 0;
  for (std::string line; std::getline(in, line); ++lines)
    EXPECT_FALSE(nlohmann::json::parse(line, nullptr, false).is_discarded()) << line;
  EXPECT_GE(lines, at_least);
}

TEST(MetricsLog, AFailedWriteLeavesOnlyWholeLines) {
  const std::string path = (fs::path(::testing::TempDir()) /
                            ("lsgpt_metrics_" + std::to_string(::getpid()) + ".jsonl"))
                               .string();
  for (const bool append : {false, true}) {
    SCOPED_TRACE(append ? "appending (a resumed run)" : "a new run");
    if (append) {
      std::ofstream(path) << "{\"type\":\"train\",\"step\":-1}\n";
    }
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) ::_exit(fill_until_failure(path, append));
    int status = 0;
    ::waitpid(child, &status, 0);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0) << "1: no error was thrown, 2: the message lacks path/reason";
    const std::string text = read_text(path);
    EXPECT_LT(text.size(), 1000u);
    expect_whole_lines(text, 10);
    if (append) {
      EXPECT_EQ(text.rfind("{\"type\":\"train\",\"step\":-1}\n", 0), 0u);
    }
  }
  fs::remove(path);
}

}  // namespace test_metrics_log
}  // namespace
}  // namespace lsgpt
