#include "train/progress.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace lsgpt {

std::string format_duration(double s) {
  char buf[64];
  if (!std::isfinite(s) || s < 0) return "?";
  if (s < 60) std::snprintf(buf, sizeof buf, "%.1fs", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s / 60), int(s) % 60);
  else std::snprintf(buf, sizeof buf, "%dh%02dm", int(s / 3600), int(s / 60) % 60);
  return buf;
}

MetricsLog::MetricsLog(const std::string& path, bool append) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC), 0644);
  if (fd_ < 0) fail("cannot open metrics file '", path, "': ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd_, &st) == 0 && S_ISREG(st.st_mode)) whole_bytes_ = uint64_t(st.st_size);
}

MetricsLog::~MetricsLog() {
  if (fd_ >= 0) ::close(fd_);
}

void MetricsLog::write(const nlohmann::json& record) {
  if (fd_ < 0) fail("cannot write metrics file '", path_, "': it was already closed");
  const std::string line = record.dump() + "\n";
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    const ssize_t n = ::write(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      // Best effort: a device or a pipe cannot be cut back, and has no file to repair.
      if (::ftruncate(fd_, off_t(whole_bytes_)) != 0) {}
      fail("cannot write metrics file '", path_, "': ", std::strerror(err));
    }
    p += n, left -= size_t(n);
  }
  whole_bytes_ += line.size();
}

void MetricsLog::close() {
  if (fd_ < 0) return;
  const int rc = ::close(fd_), err = errno;
  fd_ = -1;
  if (rc != 0) fail("cannot write metrics file '", path_, "': ", std::strerror(err));
}

void Throughput::add(double s) {
  // The first steps include warm-up (allocation, BLAS thread start), so they
  // are weighted in fully and then forgotten quickly.
  ema_ = count_ == 0 ? s : 0.9 * ema_ + 0.1 * s;
  ++count_;
}

}  // namespace lsgpt
