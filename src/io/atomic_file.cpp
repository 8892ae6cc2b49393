#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace lsgpt {
namespace {

constexpr size_t kBufferBytes = size_t(4) << 20;

std::string parent_directory(const std::string& path) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

// The rename is durable only once the directory entry itself is on disk.
void fsync_directory(const std::string& dir, const std::string& target) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail("cannot open directory '", dir, "' to sync '", target, "': ", std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  // Some file systems cannot fsync directories; the data is already renamed.
  if (rc != 0 && err != EINVAL && err != EROFS)
    fail("cannot sync directory '", dir, "' after writing '", target, "': ", std::strerror(err));
}

// A device or FIFO: renaming over it would replace the node itself (as root,
// even /dev/full), so it is written in place. Directories stay on the atomic
// path, where the rename refuses them with a clear message.
bool is_special_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode);
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(std::string path) : path_(std::move(path)) {
  if (path_.empty()) fail("cannot write a file with an empty name");
  buffer_.resize(kBufferBytes);
  if (is_special_file(path_)) {
    in_place_ = true;
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd_ < 0) fail("cannot write '", path_, "': ", std::strerror(errno));
    return;
  }
  temp_path_ = path_ + ".tmp." + std::to_string(::getpid());
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0)
    fail("cannot write '", path_, "': cannot create '", temp_path_, "': ", std::strerror(errno));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !in_place_) ::unlink(temp_path_.c_str());
}

void AtomicFileWriter::fail_and_clean(const std::string& what, int err) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!in_place_) ::unlink(temp_path_.c_str());
  fail("cannot write '", path_, "': ", what, ": ", std::strerror(err));
}

void AtomicFileWriter::flush_buffer() {
  const char* p = buffer_.data();
  size_t left = buffered_;
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_and_clean("write failed", errno);
    }
    p += n, left -= size_t(n);
    written_ += uint64_t(n);
  }
  buffered_ = 0;
}

void AtomicFileWriter::write(const void* data, size_t bytes) {
  if (fd_ < 0) fail("cannot write '", path_, "': the file was already closed");
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    size_t take = std::min(bytes, buffer_.size() - buffered_);
    std::memcpy(buffer_.data() + buffered_, p, take);
    buffered_ += take, p += take, bytes -= take;
    if (buffered_ == buffer_.size()) flush_buffer();
  }
}

void AtomicFileWriter::write_at(uint64_t offset, const void* data, size_t bytes) {
  if (fd_ < 0) fail("cannot write '", path_, "': the file was already closed");
  LSGPT_CHECK(offset + bytes <= bytes_written(), "write_at beyond the end of '", path_, "'");
  flush_buffer();
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    ssize_t n = ::pwrite(fd_, p, bytes, off_t(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_and_clean("cannot go back to offset " + std::to_string(offset), errno);
    }
    p += n, bytes -= size_t(n), offset += uint64_t(n);
  }
}

void AtomicFileWriter::commit() {
  if (fd_ < 0) fail("cannot write '", path_, "': the file was already closed");
  flush_buffer();
  if (in_place_) {  // nothing to sync or rename on a device or FIFO
    const int rc = ::close(fd_), err = errno;
    fd_ = -1;
    if (rc != 0) fail_and_clean("close failed", err);
    committed_ = true;
    return;
  }
  if (::fsync(fd_) != 0) fail_and_clean("fsync failed", errno);
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail_and_clean("close failed", errno);
  }
  fd_ = -1;
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0)
    fail_and_clean("cannot rename '" + temp_path_ + "' over it", errno);
  committed_ = true;
  fsync_directory(parent_directory(path_), path_);
}

void write_file_atomic(const std::string& path, std::span<const uint8_t> bytes) {
  AtomicFileWriter w(path);
  w.write(bytes.data(), bytes.size());
  w.commit();
}

void write_file_atomic(const std::string& path, std::string_view text) {
  AtomicFileWriter w(path);
  w.write(text);
  w.commit();
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open '", path, "': ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail("cannot stat '", path, "': ", std::strerror(err));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    fail("'", path, "' is a directory, not a file");
  }
  size_ = size_t(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      fail("cannot map '", path, "' into memory: ", std::strerror(err));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace lsgpt
