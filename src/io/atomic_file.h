// Files that appear whole or not at all. A writer streams into
// "<path>.tmp.<pid>" next to the target, fsyncs it, renames it over the target
// and fsyncs the directory, so a crash or a full disk at any point leaves
// either the old file or the new one, never a mixture; the temporary file is
// removed on every failure path (including destruction without commit()).
// A target that exists and is not a regular file (/dev/stdout, /dev/null, a
// FIFO) cannot be replaced by a rename, and replacing a device node would be
// wrong anyway: such targets are written in place, with every write and the
// close still checked.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace lsgpt {

class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);  // creates the temporary file
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  ~AtomicFileWriter();  // removes the temporary file unless commit() succeeded

  void write(const void* data, size_t bytes);
  void write(std::string_view text) { write(text.data(), text.size()); }
  // Overwrites bytes already written (a header whose contents are known only
  // at the end); fails on a target that cannot seek, such as a pipe.
  void write_at(uint64_t offset, const void* data, size_t bytes);
  // Flushes, fsyncs, renames over the target and fsyncs its directory.
  void commit();

  const std::string& path() const { return path_; }
  // Empty when the target is written in place (not a regular file).
  const std::string& temp_path() const { return temp_path_; }
  uint64_t bytes_written() const { return written_ + buffered_; }

 private:
  void flush_buffer();
  [[noreturn]] void fail_and_clean(const std::string& what, int err);

  std::string path_, temp_path_;
  bool in_place_ = false;
  int fd_ = -1;
  bool committed_ = false;
  uint64_t written_ = 0;
  size_t buffered_ = 0;
  std::string buffer_;  // batches small writes into large write(2) calls
};

// One-shot forms of AtomicFileWriter.
void write_file_atomic(const std::string& path, std::span<const uint8_t> bytes);
void write_file_atomic(const std::string& path, std::string_view text);

// A read-only memory map of a whole file (an empty file maps to an empty span).
// Readers parse from bytes() so the same code serves files and fuzzers.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws lsgpt::Error naming path
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();
  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace lsgpt
