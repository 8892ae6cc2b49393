// Reads the regular files of an archive (tar, optionally compressed with xz,
// gzip, bzip2 or zstd) one after another, in stored order, without unpacking
// it to disk. libarchive does the work: formats and codecs are its job, not
// ours. Any damage it reports (a bad checksum, a truncated stream, a file that
// is no archive) becomes one lsgpt::Error naming the archive and the entry.
#pragma once

#include <cstdint>
#include <string>

struct archive;

namespace lsgpt {

class TarArchiveReader {
 public:
  explicit TarArchiveReader(std::string path);  // refuses a missing or unreadable file
  ~TarArchiveReader();
  TarArchiveReader(const TarArchiveReader&) = delete;
  TarArchiveReader& operator=(const TarArchiveReader&) = delete;

  // Moves to the next regular file, skipping directories and links, and
  // reads its contents into `data`; false at the end of the archive (and on
  // every call after).
  bool next_file(std::string& name, std::string& data);
  const std::string& path() const { return path_; }

 private:
  [[noreturn]] void fail_here(const std::string& what) const;
  std::string path_;
  ::archive* ar_ = nullptr;
  bool at_end_ = false;
};

}  // namespace lsgpt
