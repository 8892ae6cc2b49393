// Atomic writes: the target holds the old bytes or the new ones, never a
// mixture, and no temporary file survives a failure.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io_test_support.h"

namespace lsgpt {
namespace {
namespace test_atomic_file {

using testing::read_bytes;
using testing::ScratchDir;

std::string text_of(const std::string& path) {
  auto b = read_bytes(path);
  return {b.begin(), b.end()};
}

TEST(AtomicFile, WritesAndReplacesLeavingNoTemporary) {
  ScratchDir dir;
  const std::string path = dir.file("out.txt");
  write_file_atomic(path, std::string_view("first version"));
  EXPECT_EQ(text_of(path), "first version");
  write_file_atomic(path, std::string_view("second"));
  EXPECT_EQ(text_of(path), "second");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"out.txt"});
}

TEST(AtomicFile, StreamsLargeWritesThroughTheBuffer) {
  ScratchDir dir;
  const std::string path = dir.file("big.bin");
  std::vector<uint8_t> expected;
  {
    AtomicFileWriter w(path);
    for (int chunk = 0; chunk < 5; ++chunk) {
      std::vector<uint8_t> part(size_t(3) << 20 | 17, uint8_t(chunk * 31 + 7));
      w.write(part.data(), part.size());
      expected.insert(expected.end(), part.begin(), part.end());
    }
    EXPECT_EQ(w.bytes_written(), expected.size());
    w.commit();
  }
  EXPECT_EQ(read_bytes(path), expected);
}

TEST(AtomicFile, MissingDirectoryIsAClearErrorAndCreatesNothing) {
  ScratchDir dir;
  const std::string path = dir.file("no/such/dir/out.bin");
  try {
    write_file_atomic(path, std::string_view("x"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("No such file or directory"), std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(dir.entries().empty());
}

TEST(AtomicFile, AbandonedWriterKeepsTheOldFileAndRemovesItsTemporary) {
  ScratchDir dir;
  const std::string path = dir.file("keep.txt");
  write_file_atomic(path, std::string_view("old contents"));
  {
    AtomicFileWriter w(path);
    w.write(std::string_view("new contents that never get committed"));
    EXPECT_TRUE(std::filesystem::exists(w.temp_path()));
  }  // e.g. an exception while producing the data
  EXPECT_EQ(text_of(path), "old contents");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"keep.txt"});
}

TEST(AtomicFile, RenameFailureRemovesTheTemporary) {
  ScratchDir dir;
  const std::string path = dir.file("a_directory");
  std::filesystem::create_directory(path);
  std::filesystem::create_directory(path + "/inside");  // rename over a non-empty dir fails
  EXPECT_THROW(write_file_atomic(path, std::string_view("data")), Error);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"a_directory"});
}

// A real write(2) failure half way: the file-size limit makes write fail with
// EFBIG after 64 KiB. Run in a child so the limit stays there.
TEST(AtomicFile, FailingWriteNeverLeavesAPartialTarget) {
  ScratchDir dir;
  const std::string path = dir.file("limited.bin");
  write_file_atomic(path, std::string_view("previous"));
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim {65536, 65536};
    ::setrlimit(RLIMIT_FSIZE, &lim);
    std::vector<uint8_t> big(size_t(8) << 20, 0x5a);
    int code = 1;
    try {
      write_file_atomic(path, big);
    } catch (const Error& e) {
      const std::string msg = e.what();
      code = msg.find(path) != std::string::npos && msg.find("File too large") != std::string::npos
                 ? 0
                 : 2;
    }
    ::_exit(code);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: no error was thrown, 2: the message lacks path/reason";
  EXPECT_EQ(text_of(path), "previous");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"limited.bin"});
}

bool is_char_device(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISCHR(st.st_mode);
}

// A device cannot be renamed over (as root the rename would succeed and put a
// regular file where /dev/full was): it is written in place, and its write
// errors are reported like any other.
TEST(AtomicFile, DevicesAreWrittenInPlaceAndTheirErrorsReported) {
  ScratchDir dir;
  const std::string link = dir.file("to_full");
  std::filesystem::create_symlink("/dev/full", link);
  for (const std::string& path : {std::string("/dev/full"), link}) {
    try {
      write_file_atomic(path, std::string_view("data"));
      ADD_FAILURE() << "writing " << path << " did not fail";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("cannot write '" + path + "'"), std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("No space left on device"), std::string::npos)
          << e.what();
    }
  }
  EXPECT_TRUE(is_char_device("/dev/full"));
  EXPECT_NO_THROW(write_file_atomic("/dev/null", std::string_view("data")));
  EXPECT_TRUE(is_char_device("/dev/null"));
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"to_full"});
}

TEST(AtomicFile, WriteAtOverwritesBytesAlreadyWritten) {
  ScratchDir dir;
  const std::string path = dir.file("header.bin");
  {
    AtomicFileWriter w(path);
    w.write(std::string_view("....payload"));
    w.write_at(0, "HEAD", 4);
    w.write(std::string_view("!"));
    w.commit();
  }
  EXPECT_EQ(text_of(path), "HEADpayload!");
}

TEST(MappedFile, MapsFilesAndRefusesWhatIsNot) {
  ScratchDir dir;
  write_file_atomic(dir.file("a.bin"), std::string_view("abc"));
  write_file_atomic(dir.file("empty.bin"), std::string_view(""));
  MappedFile a(dir.file("a.bin"));
  ASSERT_EQ(a.bytes().size(), 3u);
  EXPECT_EQ(a.bytes()[2], 'c');
  EXPECT_TRUE(MappedFile(dir.file("empty.bin")).bytes().empty());
  EXPECT_THROW(MappedFile(dir.file("missing.bin")), Error);
  EXPECT_THROW(MappedFile(dir.path().string()), Error);
}

}  // namespace test_atomic_file
}  // namespace
}  // namespace lsgpt
