#include "io/standard_output.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "core/error.h"

namespace lsgpt {
namespace {

[[noreturn]] void fail_stdout(int err) {
  fail("cannot write to standard output", err ? std::string(": ") + std::strerror(err) : "");
}

// A write that failed inside an earlier printf or std::cout flush (--version
// ends with std::endl) leaves only stdio's error flag; errno then still holds
// its reason unless something else failed since, so it is used only when it
// is an error a write can give.
int earlier_write_errno(int err) {
  switch (err) {
    case ENOSPC: case EPIPE: case EIO: case EDQUOT: case EFBIG: case EBADF:
      return err;
    default:
      return 0;
  }
}

}  // namespace

void write_stdout(std::string_view bytes) {
  errno = 0;
  if (std::fwrite(bytes.data(), 1, bytes.size(), stdout) != bytes.size()) fail_stdout(errno);
  flush_stdout();
}

void flush_stdout() {
  const int before = errno;
  errno = 0;
  const int rc = std::fflush(stdout);
  const int err = errno;
  if (rc != 0) fail_stdout(err);
  if (std::ferror(stdout)) fail_stdout(earlier_write_errno(before));
}

void close_stdout() {
  flush_stdout();
  // dup fails when stdout was never open (`>&-`); with nothing written to it
  // that is no failure, and anything written already failed above.
  const int fd = ::dup(STDOUT_FILENO);
  if (fd >= 0 && ::close(fd) != 0 && errno != EINTR) fail_stdout(errno);
}

}  // namespace lsgpt
