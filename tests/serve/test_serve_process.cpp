// The real `lsgpt serve` process: it listens on an ephemeral loopback port and
// says which; SIGTERM with a streamed request in flight lets it finish (or,
// with --shutdown-timeout 0, cancels it with an error event), and the
// process exits 0 either way. Bad flags fail with one `lsgpt: error:` line.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/select.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "../io/io_test_support.h"
#include "serve_test_support.h"

namespace lsgpt {
namespace {
namespace test_serve_process {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// `lsgpt serve` as a child process, its output read through a pipe.
class ServeProcess {
 public:
  explicit ServeProcess(const std::vector<std::string>& args) {
    int fds[2];
    if (pipe(fds) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], 1);
      dup2(fds[1], 2);
      close(fds[0]);
      close(fds[1]);
      std::vector<char*> argv{const_cast<char*>(LSGPT_BINARY), const_cast<char*>("serve")};
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(LSGPT_BINARY, argv.data());
      _exit(127);
    }
    close(fds[1]);
    fd_ = fds[0];
  }
  ~ServeProcess() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) close(fd_);
  }
  // Reads output until a line contains `what` (returns it) or `timeout`.
  std::string wait_for_line(const std::string& what, std::chrono::seconds timeout) {
    const auto until = Clock::now() + timeout;
    while (Clock::now() < until) {
      size_t nl;
      while ((nl = buffer_.find('\n')) != std::string::npos) {
        const std::string line = buffer_.substr(0, nl);
        output_ += line + "\n";
        buffer_.erase(0, nl + 1);
        if (line.find(what) != std::string::npos) return line;
      }
      fd_set set;
      FD_ZERO(&set);
      FD_SET(fd_, &set);
      timeval tv{0, 100000};
      if (select(fd_ + 1, &set, nullptr, nullptr, &tv) > 0) {
        char buf[4096];
        const ssize_t n = read(fd_, buf, sizeof buf);
        if (n <= 0) break;
        buffer_.append(buf, size_t(n));
      }
    }
    return "";
  }
  // The exit status, or -1 when it has not exited within `timeout`.
  int wait_exit(std::chrono::seconds timeout) {
    const auto until = Clock::now() + timeout;
    while (Clock::now() < until) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        reaped_ = true;
        wait_for_line("\x01never", 5s);  // collect what is left (ends at end of file)
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(20ms);
    }
    return -1;
  }
  int port_from(const std::string& line) const {
    const size_t at = line.rfind(':');
    return at == std::string::npos ? -1 : std::atoi(line.c_str() + at + 1);
  }
  pid_t pid() const { return pid_; }
  const std::string& output() const { return output_; }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  bool reaped_ = false;
  std::string buffer_, output_;
};

class ServeProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::write_tiny_checkpoint(dir_.file("tiny.ckpt"), testing::serve_model_config(1024), 3);
  }
  // Starts the server, streams one long request, sends SIGTERM after its
  // first event; returns what the stream saw.
  testing::StreamAnswer sigterm_during_stream(const std::string& timeout, int max_tokens,
                                              int& exit_code, std::string& output) {
    ServeProcess p({"--checkpoint", dir_.file("tiny.ckpt"), "--port", "0", "--max-batch", "2",
                    "--shutdown-timeout", timeout});
    const std::string line = p.wait_for_line("listening on http://127.0.0.1:", 60s);
    EXPECT_FALSE(line.empty()) << p.output();
    const int port = p.port_from(line);
    EXPECT_EQ(testing::get(port, "/health").status, 200);
    const testing::StreamAnswer a = testing::post_stream(
        port,
        R"({"prompt":"Hi","max_tokens":)" + std::to_string(max_tokens) +
            R"(,"temperature":0.8,"seed":4,"stream":true})",
        -1, [&] { kill(p.pid(), SIGTERM); });
    exit_code = p.wait_exit(30s);
    output = p.output();
    return a;
  }
  testing::ScratchDir dir_;
};

TEST_F(ServeProcessTest, SigtermLetsTheRequestInFlightFinishAndExitsZero) {
  int code = -1;
  std::string output;
  const auto a = sigterm_during_stream("20", 200, code, output);
  EXPECT_EQ(code, 0) << output;
  EXPECT_TRUE(a.done) << a.raw.substr(0, 400);
  int tokens = 0;
  std::string reason;
  for (const auto& e : a.events) {
    ASSERT_FALSE(e.contains("error")) << e.dump();
    tokens += int(e["choices"][0]["token_ids"].size());
    if (!e["choices"][0]["finish_reason"].is_null()) reason = e["choices"][0]["finish_reason"];
  }
  EXPECT_TRUE(reason == "length" ? tokens == 200 : reason == "stop") << reason << " " << tokens;
  EXPECT_NE(output.find("SIGTERM"), std::string::npos) << output;
  EXPECT_NE(output.find("stopped"), std::string::npos) << output;
}

TEST_F(ServeProcessTest, SigtermPastTheDeadlineCancelsTheRequestAndExitsZero) {
  int code = -1;
  std::string output;
  // 1000 tokens take longer than a zero deadline: the stream is cancelled.
  const auto a = sigterm_during_stream("0", 1000, code, output);
  EXPECT_EQ(code, 0) << output;
  ASSERT_FALSE(a.events.empty()) << a.raw.substr(0, 400);
  const auto& last = a.events.back();
  ASSERT_TRUE(last.contains("error")) << last.dump();
  EXPECT_EQ(last["error"]["code"], "cancelled");
  EXPECT_TRUE(a.done);
}

TEST_F(ServeProcessTest, BadFlagsFailWithOneError) {
  const std::string ck = testing::quoted(dir_.file("tiny.ckpt"));
  for (const std::string flags : {"--port 70000", "--max-batch -1", "--memory-fraction 0",
                                  "--prefill-tokens 0", "--checkpoint-missing"}) {
    const auto r = testing::run_lsgpt("serve --checkpoint " + ck + " " + flags);
    EXPECT_NE(r.exit_code, 0) << flags;
    EXPECT_EQ(r.output.rfind("lsgpt: error: ", 0), 0u) << flags << ": " << r.output;
  }
  const auto missing = testing::run_lsgpt("serve --checkpoint " + testing::quoted(dir_.file("no.ckpt")));
  EXPECT_EQ(missing.exit_code, 1) << missing.output;
}

}  // namespace test_serve_process
}  // namespace
}  // namespace lsgpt
