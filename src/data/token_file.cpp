// Token file writer and memory-mapped reader (format in token_file.h). The
// tokens are mapped and used in place as uint16, which is why the build
// insists on a little-endian host; the header is written field by field.
#include "data/token_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "core/error.h"
#include "io/atomic_file.h"

static_assert(std::endian::native == std::endian::little,
              "token files are memory-mapped as little-endian uint16");

namespace lsgpt {

namespace {

constexpr size_t writer_buffer_bytes = size_t(1) << 20;

template <typename T>
void put_le(uint8_t* out, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) out[i] = static_cast<uint8_t>(value >> (8 * i));
}

template <typename T>
T get_le(const uint8_t* in) {
  T value = 0;
  for (size_t i = 0; i < sizeof(T); ++i) value |= static_cast<T>(in[i]) << (8 * i);
  return value;
}

}  // namespace

TokenFileWriter::TokenFileWriter(std::string path, int vocab_size)
    : path_(std::move(path)), vocab_size_(vocab_size) {
  if (vocab_size < 1 || vocab_size > 65536)
    fail("cannot write token file ", path_, ": a vocabulary of ", vocab_size,
         " tokens does not fit 16-bit token ids");
  file_ = std::make_unique<AtomicFileWriter>(path_);
  // The header is written last, once the count is known; reserve its bytes.
  buffer_.assign(token_file_header_bytes, 0);
  buffer_.reserve(writer_buffer_bytes + token_file_header_bytes);
}

TokenFileWriter::~TokenFileWriter() = default;

void TokenFileWriter::flush_buffer() {
  file_->write(buffer_.data(), buffer_.size());
  buffer_.clear();
}

void TokenFileWriter::append(std::span<const int32_t> tokens) {
  LSGPT_CHECK(!committed_, "append after commit");
  for (const int32_t t : tokens) {
    if (t < 0 || t >= vocab_size_)
      fail("cannot write token id ", t, " to ", path_, ": outside its vocabulary of ", vocab_size_,
           " tokens");
    buffer_.push_back(static_cast<uint8_t>(t));
    buffer_.push_back(static_cast<uint8_t>(t >> 8));
    if (buffer_.size() >= writer_buffer_bytes) flush_buffer();
  }
  count_ += tokens.size();
}

void TokenFileWriter::commit() {
  LSGPT_CHECK(!committed_, "commit twice");
  if (count_ == 0) fail("refusing to write ", path_, ": there are no tokens to write");
  flush_buffer();
  uint8_t header[token_file_header_bytes] = {};
  std::memcpy(header, token_file_magic.data(), token_file_magic.size());
  put_le<uint32_t>(header + 8, token_file_version);
  put_le<uint32_t>(header + 12, static_cast<uint32_t>(vocab_size_));
  put_le<uint64_t>(header + 16, count_);
  file_->write_at(0, header, sizeof header);
  file_->commit();
  committed_ = true;
}

void write_token_file(const std::string& path, int vocab_size, std::span<const int32_t> tokens) {
  TokenFileWriter writer(path, vocab_size);
  writer.append(tokens);
  writer.commit();
}

TokenFile::TokenFile(const std::string& path, int expected_vocab_size) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open token file ", path, ": ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail("cannot stat token file ", path, ": ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("token file ", path, " is not a regular file");
  }
  const auto bytes = static_cast<uint64_t>(st.st_size);
  if (bytes == 0) {
    ::close(fd);
    fail("token file ", path, " is empty; make token files with `lsgpt prepare`");
  }
  void* map = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) fail("cannot map token file ", path, ": ", std::strerror(map_errno));
  map_ = map;
  map_bytes_ = bytes;
  try {
    const auto* base = static_cast<const uint8_t*>(map);
    if (bytes < token_file_magic.size() ||
        std::memcmp(base, token_file_magic.data(), token_file_magic.size()) != 0)
      fail(path, " is not an lsgpt token file (it does not start with \"", token_file_magic,
           "\"); make token files with `lsgpt prepare`");
    if (bytes < token_file_header_bytes)
      fail("token file ", path, " is truncated: ", bytes, " bytes, shorter than its ",
           token_file_header_bytes, "-byte header");
    const auto version = get_le<uint32_t>(base + 8);
    if (version != token_file_version)
      fail("token file ", path, " has format version ", version, "; this lsgpt reads version ",
           token_file_version);
    const auto vocab = get_le<uint32_t>(base + 12);
    if (vocab < 1 || vocab > 65536)
      fail("token file ", path, " declares a vocabulary of ", vocab,
           " tokens, impossible for 16-bit token ids; the file is corrupt");
    const auto count = get_le<uint64_t>(base + 16);
    if (count == 0) fail("token file ", path, " holds no tokens");
    const uint64_t payload = bytes - token_file_header_bytes;
    if (count > payload / 2)
      fail("token file ", path, " is truncated: its header declares ", count,
           " tokens but the file has ", bytes, " bytes, room for only ", payload / 2);
    if (payload != count * 2)
      fail("token file ", path, " has ", bytes, " bytes, more than the ",
           token_file_header_bytes + count * 2, " that its header's ", count,
           " tokens need; the file is corrupt");
    if (expected_vocab_size > 0 && static_cast<int>(vocab) != expected_vocab_size)
      fail("token file ", path, " was made with a vocabulary of ", vocab,
           " tokens; this model uses ", expected_vocab_size);
    vocab_size_ = static_cast<int>(vocab);
    count_ = count;
    tokens_ = reinterpret_cast<const uint16_t*>(base + token_file_header_bytes);
  } catch (...) {
    release();
    throw;
  }
  ::madvise(map, bytes, MADV_RANDOM);
}

void TokenFile::release() {
  if (map_) ::munmap(map_, map_bytes_);
  map_ = nullptr;
  map_bytes_ = 0;
  tokens_ = nullptr;
  count_ = 0;
}

TokenFile::TokenFile(TokenFile&& other) noexcept { *this = std::move(other); }

TokenFile& TokenFile::operator=(TokenFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    vocab_size_ = std::exchange(other.vocab_size_, 0);
    count_ = std::exchange(other.count_, 0);
    tokens_ = std::exchange(other.tokens_, nullptr);
    map_ = std::exchange(other.map_, nullptr);
    map_bytes_ = std::exchange(other.map_bytes_, 0);
  }
  return *this;
}

TokenFile::~TokenFile() { release(); }

void TokenFile::read(uint64_t begin, size_t n, int32_t* out) const {
  LSGPT_CHECK(begin <= count_ && n <= count_ - begin, "read past the end of ", path_);
  const uint16_t* src = tokens_ + begin;
  uint16_t worst = 0;
  for (size_t i = 0; i < n; ++i) {
    out[i] = src[i];
    worst = std::max(worst, src[i]);
  }
  if (worst >= vocab_size_) {
    for (size_t i = 0; i < n; ++i)
      if (src[i] >= vocab_size_)
        fail("token file ", path_, " holds token id ", src[i], " at position ", begin + i,
             ", outside its vocabulary of ", vocab_size_, " tokens; the file is corrupt");
  }
}

uint64_t TokenFile::fnv1a64() const {
  const auto* p = reinterpret_cast<const uint8_t*>(tokens_);
  const size_t n = size_t(count_) * sizeof(uint16_t);
  // The mapping is advised random for batch sampling, which turns off
  // read-ahead; one sequential pass over a cold file needs it back.
  if (map_) ::madvise(map_, map_bytes_, MADV_SEQUENTIAL);
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  if (map_) ::madvise(map_, map_bytes_, MADV_RANDOM);
  return h;
}

}  // namespace lsgpt
