// Token files: a 64-byte little-endian header
//   char magic[8] = "LSGPTTOK"; uint32 version = 1; uint32 vocab_size;
//   uint64 token_count; zero padding to 64 bytes
// followed by token_count uint16 tokens. The writer streams tokens through an
// AtomicFileWriter (io/atomic_file.h): only a successful commit() (header,
// fsync, rename, fsync of the directory) makes <path> appear, so an
// interrupted run or a full disk never leaves a half-written file. The reader memory-maps the file and checks its size
// against the header; token ids are checked against the vocabulary when they
// are read (TokenFile::read), not on open, so opening a huge corpus is instant.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lsgpt {

class AtomicFileWriter;

inline constexpr std::string_view token_file_magic = "LSGPTTOK";
inline constexpr uint32_t token_file_version = 1;
inline constexpr size_t token_file_header_bytes = 64;

class TokenFileWriter {
 public:
  // vocab_size must be in 1..65536 (ids are stored in 16 bits).
  TokenFileWriter(std::string path, int vocab_size);
  ~TokenFileWriter();  // removes the temporary file unless commit() succeeded
  TokenFileWriter(const TokenFileWriter&) = delete;
  TokenFileWriter& operator=(const TokenFileWriter&) = delete;

  // Throws lsgpt::Error on an id outside [0, vocab_size).
  void append(std::span<const int32_t> tokens);
  // Refuses to publish a file with no tokens.
  void commit();
  uint64_t token_count() const { return count_; }
  const std::string& path() const { return path_; }

 private:
  void flush_buffer();
  std::string path_;
  int vocab_size_;
  std::unique_ptr<AtomicFileWriter> file_;
  uint64_t count_ = 0;
  std::vector<uint8_t> buffer_;
  bool committed_ = false;
};

// Writes `tokens` to `path` in one go (tests, small files).
void write_token_file(const std::string& path, int vocab_size, std::span<const int32_t> tokens);

class TokenFile {
 public:
  // Refuses, with an lsgpt::Error naming the file: a missing or empty file,
  // a bad magic, an unknown version, a size that does not match the header
  // (truncated or oversized), no tokens, a vocabulary size of 0 or > 65536,
  // and, when expected_vocab_size > 0, a file made with another vocabulary.
  explicit TokenFile(const std::string& path, int expected_vocab_size = 0);

  TokenFile(TokenFile&& other) noexcept;
  TokenFile& operator=(TokenFile&& other) noexcept;
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;
  ~TokenFile();

  const std::string& path() const { return path_; }
  int vocab_size() const { return vocab_size_; }
  uint64_t size() const { return count_; }
  // The raw tokens, unchecked.
  std::span<const uint16_t> tokens() const { return {tokens_, static_cast<size_t>(count_)}; }

  // Copies tokens [begin, begin + n) into `out`, refusing any id >= vocab_size
  // with an error that names the file and the position. Requires
  // begin + n <= size().
  void read(uint64_t begin, size_t n, int32_t* out) const;

  // 64-bit FNV-1a of the token bytes as stored (little-endian uint16, header
  // excluded): with size(), the file's identity, which checkpoints record so a
  // resumed run can tell its data from another file at the same path. Reads
  // the whole file (about 1 GB/s).
  uint64_t fnv1a64() const;

 private:
  void release();
  std::string path_;
  int vocab_size_ = 0;
  uint64_t count_ = 0;
  const uint16_t* tokens_ = nullptr;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
};

}  // namespace lsgpt
