// Shared by the tokenizer and data tests: the bundled tokenizer (loaded once),
// scratch directories, whole-file reads and writes, and running the lsgpt
// binary. Its own namespace keeps it apart from other suites' helpers.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace lsgpt::data_testing {

inline const Tokenizer& gpt2() {
  static const Tokenizer tokenizer = Tokenizer::load(LSGPT_SOURCE_DIR "/data/gpt2");
  return tokenizer;
}

inline std::string wikitext2(const std::string& part) {
  return LSGPT_SOURCE_DIR "/data/wikitext-2/wiki." + part + ".tokens";
}

// A fresh directory, removed with its contents when the object goes.
class ScratchDir {
 public:
  ScratchDir() {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("lsgpt_data_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(path_))
      names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::filesystem::path path_;
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_file(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

struct RunResult {
  int exit_code = -1;  // -1: killed by a signal
  std::string out, err;
};

// Runs `lsgpt ARGS < stdin_file` in a shell, capturing stdout and stderr
// separately through files in `dir`.
inline RunResult run_lsgpt(const ScratchDir& dir, const std::string& args,
                           const std::string& stdin_bytes = "") {
  const std::string in = dir.file("run.stdin"), out = dir.file("run.stdout"),
                    err = dir.file("run.stderr");
  write_file(in, stdin_bytes);
  const std::string cmd =
      std::string(LSGPT_BINARY) + " " + args + " < '" + in + "' > '" + out + "' 2> '" + err + "'";
  const int status = std::system(cmd.c_str());
  RunResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_file(out);
  r.err = read_file(err);
  std::filesystem::remove(in);
  std::filesystem::remove(out);
  std::filesystem::remove(err);
  return r;
}

// 64-bit FNV-1a over token ids, as tools/compare_tokenizer.py --checksum.
inline uint64_t fnv1a(const std::vector<int32_t>& ids) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (const int32_t id : ids) h = (h ^ static_cast<uint64_t>(id)) * 0x100000001B3ull;
  return h;
}

}  // namespace lsgpt::data_testing
