#include "io/tar_archive.h"

#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace lsgpt {

namespace {
constexpr size_t read_block_bytes = size_t(1) << 20;
}

TarArchiveReader::TarArchiveReader(std::string path) : path_(std::move(path)) {
  struct stat st {};
  if (::stat(path_.c_str(), &st) != 0)
    fail("cannot open archive ", path_, ": ", std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail("archive ", path_, " is not a regular file");
  ar_ = archive_read_new();
  if (!ar_) fail("cannot read archive ", path_, ": out of memory");
  archive_read_support_format_tar(ar_);
  archive_read_support_format_gnutar(ar_);
  archive_read_support_filter_all(ar_);
  if (archive_read_open_filename(ar_, path_.c_str(), read_block_bytes) != ARCHIVE_OK)
    fail_here("cannot open");
}

TarArchiveReader::~TarArchiveReader() {
  if (ar_) archive_read_free(ar_);
}

void TarArchiveReader::fail_here(const std::string& what) const {
  const char* why = archive_error_string(ar_);
  fail(what, " archive ", path_, ": ", why ? why : "unknown libarchive error",
       " (damaged or not a tar archive?)");
}

bool TarArchiveReader::next_file(std::string& name, std::string& data) {
  while (!at_end_) {
    archive_entry* entry = nullptr;
    const int rc = archive_read_next_header(ar_, &entry);
    if (rc == ARCHIVE_EOF) {
      at_end_ = true;
      break;
    }
    if (rc < ARCHIVE_WARN) fail_here("cannot read the next entry of");
    if (archive_entry_filetype(entry) != AE_IFREG) continue;
    const char* entry_name = archive_entry_pathname(entry);
    name = entry_name ? entry_name : "";
    data.clear();
    if (archive_entry_size_is_set(entry) && archive_entry_size(entry) > 0)
      data.reserve(static_cast<size_t>(archive_entry_size(entry)));
    char block[65536];
    for (;;) {
      const la_ssize_t n = archive_read_data(ar_, block, sizeof block);
      if (n == 0) break;
      if (n < 0) fail_here("cannot read " + name + " in");
      data.append(block, static_cast<size_t>(n));
    }
    return true;
  }
  return false;
}

}  // namespace lsgpt
