// Standard output is a file like any other: a full disk, /dev/full or a closed
// pipe (with SIGPIPE ignored) makes writes fail, and buffered stdio reports
// that only when it flushes. Code that prints checks through these, so a
// failed write becomes one lsgpt::Error ("cannot write to standard output:
// No space left on device") and a non-zero exit instead of silent loss.
#pragma once

#include <string_view>

namespace lsgpt {

// Writes and flushes, so a streaming command stops at the first failure.
void write_stdout(std::string_view bytes);

// Flushes and throws when this or any earlier write to stdout failed (stdio's
// error flag is sticky, so printf calls before it are covered too).
void flush_stdout();

// At exit: flush_stdout(), then close a duplicate of the descriptor, so that
// errors a file system reports only on close (NFS) are caught too; stdout
// itself stays usable.
void close_stdout();

}  // namespace lsgpt
