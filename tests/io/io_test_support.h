// Shared by the io tests: scratch directories, small random models, whole-file
// reads and running the lsgpt binary.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "model/config.h"
#include "model/params.h"

namespace lsgpt::testing {

// A fresh directory removed (with its contents) when the object goes.
class ScratchDir {
 public:
  ScratchDir() {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("lsgpt_io_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }
  // Every entry's name, sorted (to see leftover temporary files).
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (auto& e : std::filesystem::directory_iterator(path_)) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::filesystem::path path_;
};

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

// Odd sizes on purpose: vocab 100 pads to 128, so padding removal shows.
inline ModelConfig tiny_config(std::vector<int> n_local = {1, 2}, int window = 3) {
  ModelConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.d_model = 8;
  c.seq_len = 16;
  c.vocab_size = 100;
  c.n_local = std::move(n_local);
  c.window = window;
  c.normalize_and_validate();
  return c;
}

inline std::vector<float> random_floats(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Random weights; lsgpt keeps wte's padded rows at zero.
inline std::vector<float> random_params(const ModelConfig& cfg, uint64_t seed) {
  const ParamLayout lay = make_param_layout(cfg);
  std::vector<float> p = random_floats(lay.total, seed);
  const ParamInfo& wte = lay[lay.wte];
  for (size_t i = size_t(cfg.vocab_size) * cfg.d_model; i < wte.numel; ++i) p[wte.offset + i] = 0;
  return p;
}

inline Checkpoint random_checkpoint(const ModelConfig& cfg, uint64_t seed, bool optimizer) {
  Checkpoint ck;
  ck.model = cfg;
  ck.step = 1234;
  ck.train = {{"lr", 6e-4}, {"batch_size", 8}, {"schedule", "cosine"}};
  ck.state = {{"rng", {uint64_t(0xfedcba9876543210ull), 42}}, {"data_position", 777}};
  ck.params = random_params(cfg, seed);
  if (optimizer) {
    ck.adam_m = random_floats(ck.params.size(), seed + 1);
    ck.adam_v = random_floats(ck.params.size(), seed + 2);
    for (float& v : ck.adam_v) v = v * v;
  }
  return ck;
}

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs a shell command line; its stderr is merged into the captured output.
inline CommandResult run_command(const std::string& command) {
  CommandResult r;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) r.output.append(buf, n);
  const int status = ::pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

inline std::string quoted(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

#ifdef LSGPT_BINARY
// The lsgpt binary under test with these arguments, standard input closed.
inline CommandResult run_lsgpt(const std::string& args) {
  return run_command(quoted(LSGPT_BINARY) + " " + args + " < /dev/null");
}
#endif

// Whitespace-separated integers, e.g. the token ids `generate --ids` prints.
inline std::vector<int> parse_ints(const std::string& text) {
  std::vector<int> values;
  std::istringstream in(text);
  int v;
  while (in >> v) values.push_back(v);
  return values;
}

}  // namespace lsgpt::testing
