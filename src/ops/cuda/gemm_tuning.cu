// Timed choice of cuBLASLt algorithms and the cache file that keeps them
// (gemm_tuning.h says why).
#include "ops/cuda/gemm_tuning.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <vector>

#include "core/env_switch.h"
#include "ops/cuda/cuda_check.h"

namespace lsgpt::cuda {
namespace {

struct StoredAlgo {
  cublasLtMatmulAlgo_t algo{};
  double ms = 0;
};

// The file's entries as this process last read or wrote them.
std::mutex store_mutex;
std::map<std::string, StoredAlgo> store;
bool store_loaded = false;
// The cache file that could not be locked or written: no more tuning
// while it is the one named.
std::string unusable_path;

void warn_once(const std::string& message) {
  static std::once_flag once;
  std::call_once(once, [&] {
    std::fprintf(stderr,
                 "lsgpt: warning: %s; matrix products keep cuBLASLt's first pick (not tuned)\n",
                 message.c_str());
  });
}

// Lines that do not parse (a foreign or cut-off file) are skipped; the next
// write leaves them out.
void read_store(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string key, words, ms;
    if (!std::getline(fields, key, '\t') || !std::getline(fields, words, '\t') ||
        !std::getline(fields, ms))
      continue;
    StoredAlgo s;
    static_assert(sizeof(s.algo.data) == 8 * sizeof(uint64_t));
    std::istringstream hex(words);
    int n = 0;
    for (; n < 8 && (hex >> std::hex >> s.algo.data[n]); ++n) {
    }
    char* end = nullptr;
    s.ms = std::strtod(ms.c_str(), &end);
    if (n == 8 && end != ms.c_str()) store[key] = s;
  }
}

void ensure_loaded() {
  if (store_loaded) return;
  store_loaded = true;
  const std::string path = gemm_cache_path();
  if (!path.empty()) read_store(path);
}

// Writes the whole store to a temporary file, flushes it to disk and
// renames it over the cache file, so a reader (or a machine that lost
// power) sees the old file or the new one, never a part. Only the holder of
// the lock writes, so one temporary name serves. False (one warning) if
// the file could not be replaced.
bool write_store(const std::string& path) {
  std::ostringstream text;
  text << "# lsgpt cuBLASLt algorithm cache (src/ops/cuda/gemm_tuning.h): key, algorithm, ms\n";
  for (const auto& [key, s] : store) {
    text << key << '\t';
    for (int i = 0; i < 8; ++i) text << (i ? " " : "") << std::hex << s.algo.data[i] << std::dec;
    text << '\t' << s.ms << '\n';
  }
  const std::string bytes = text.str(), tmp = path + ".tmp";
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  bool ok = fd >= 0;
  for (size_t done = 0; ok && done < bytes.size();) {
    const ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) done += size_t(n);
  }
  ok = ok && fsync(fd) == 0;
  const std::string why = std::strerror(errno);
  if (fd >= 0 && close(fd) != 0) ok = false;
  if (ok && std::rename(tmp.c_str(), path.c_str()) == 0) return true;
  std::error_code ignored;
  std::filesystem::remove(tmp, ignored);
  warn_once("cannot write " + path + " (" + why + ")");
  return false;
}

// An exclusive lock on the cache file's lock file for one scope: tuning
// processes take turns, and each re-reads the file under the lock.
class CacheLock {
 public:
  explicit CacheLock(const std::string& path) {
    if (path.empty()) return;
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
    fd_ = open((path + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      warn_once("cannot open " + path + ".lock: " + std::strerror(errno));
      return;
    }
    // Another process holds the lock while it times a product (tens of
    // milliseconds); one stopped with its lock (Ctrl-Z) must not hang every
    // other run on the machine, so the wait is bounded.
    constexpr int kWaitMs = 60000, kStepMs = 10;
    for (int waited = 0;; waited += kStepMs) {
      if (flock(fd_, LOCK_EX | LOCK_NB) == 0) return;
      if (errno != EWOULDBLOCK && errno != EINTR) break;
      if (waited >= kWaitMs) {
        errno = ETIMEDOUT;
        break;
      }
      usleep(kStepMs * 1000);
    }
    warn_once("cannot lock " + path + ".lock: " + std::strerror(errno));
    close(fd_);
    fd_ = -1;
  }
  ~CacheLock() {
    if (fd_ >= 0) close(fd_);  // releases the lock
  }
  bool held() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

bool accepted(CudaContext& ctx, const LtCall& call, const cublasLtMatmulAlgo_t& algo) {
  cublasLtMatmulHeuristicResult_t check{};
  return cublasLtMatmulAlgoCheck(ctx.cublaslt(), call.op, call.a, call.b, call.d, call.d, &algo,
                                 &check) == CUBLAS_STATUS_SUCCESS &&
         check.workspaceSize <= ctx.cublas_workspace_bytes();
}

// Milliseconds per run of one candidate: the best of two rounds, each one
// untimed run and three timed ones; infinity if cuBLASLt refuses it.
class CandidateTimer {
 public:
  explicit CandidateTimer(CudaContext& ctx) : ctx_(ctx) {
    CUDA_CHECK(cudaEventCreate(&start_));
    CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~CandidateTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  double time(const LtCall& call, const cublasLtMatmulAlgo_t& algo) {
    constexpr int kRuns = 3;
    if (run_lt_call(ctx_, call, algo) != CUBLAS_STATUS_SUCCESS) return HUGE_VAL;
    CUDA_CHECK(cudaEventRecord(start_, ctx_.stream()));
    for (int i = 0; i < kRuns; ++i) run_lt_call(ctx_, call, algo);
    CUDA_CHECK(cudaEventRecord(stop_, ctx_.stream()));
    CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms / kRuns;
  }

 private:
  CudaContext& ctx_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

StoredAlgo fastest(CudaContext& ctx, const LtCall& call,
                   const std::vector<cublasLtMatmulHeuristicResult_t>& candidates) {
  // A product that accumulates into D (beta != 0) would add to it on every
  // timing run: D is saved first and put back after.
  std::vector<char> saved_d;
  if (call.beta != 0.0f) {
    saved_d.resize(call.d_bytes);
    CUDA_CHECK(cudaMemcpyAsync(saved_d.data(), call.D, call.d_bytes, cudaMemcpyDeviceToHost,
                               ctx.stream()));
  }
  std::vector<double> ms(candidates.size(), HUGE_VAL);
  CandidateTimer timer(ctx);
  for (int round = 0; round < 2; ++round)  // rounds interleave, so clock drift hits all alike
    for (size_t i = 0; i < candidates.size(); ++i)
      ms[i] = std::min(ms[i], timer.time(call, candidates[i].algo));
  if (call.beta != 0.0f)
    CUDA_CHECK(cudaMemcpyAsync(call.D, saved_d.data(), call.d_bytes, cudaMemcpyHostToDevice,
                               ctx.stream()));
  CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  size_t best = 0;  // ties keep the heuristic's order
  for (size_t i = 1; i < candidates.size(); ++i)
    if (ms[i] < ms[best]) best = i;
  return {candidates[best].algo, ms[best]};
}

}  // namespace

cublasStatus_t run_lt_call(CudaContext& ctx, const LtCall& call, const cublasLtMatmulAlgo_t& algo) {
  const float alpha = 1.0f;
  return cublasLtMatmul(ctx.cublaslt(), call.op, &alpha, call.A, call.a, call.B, call.b, &call.beta,
                        call.D, call.d, call.D, call.d, &algo, ctx.cublas_workspace(),
                        ctx.cublas_workspace_bytes(), ctx.stream());
}

bool gemm_tuning_enabled() { return env_switch("LSGPT_GEMM_TUNING", {"on", "off"}) == 0; }

std::string gemm_cache_path() {
  auto set = [](const char* name) {
    const char* v = std::getenv(name);
    return v && *v ? std::string(v) : std::string();
  };
  if (std::string dir = set("LSGPT_CACHE_DIR"); !dir.empty()) return dir + "/gemm-algos.tsv";
  if (std::string dir = set("XDG_CACHE_HOME"); !dir.empty())
    return dir + "/lsgpt/gemm-algos.tsv";
  if (std::string home = set("HOME"); !home.empty()) return home + "/.cache/lsgpt/gemm-algos.tsv";
  return "";
}

std::string gemm_cache_key(CudaContext& ctx, const std::string& shape) {
  // The device's part, made once per device: every new product shape (each
  // prompt length of a prefill) builds a key, and cudaGetDeviceProperties
  // is not cheap.
  static std::mutex mutex;
  static std::map<int, std::string> device_part;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  std::string& part = device_part[device];
  if (part.empty()) {
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    std::string name = prop.name;
    for (char& c : name)
      if (c == '\t' || c == '\n') c = ' ';
    part = name + " sm" + std::to_string(ctx.sm_count()) + " cublasLt" +
           std::to_string(cublasLtGetVersion()) + " ws" +
           std::to_string(ctx.cublas_workspace_bytes()) + " ";
  }
  return part + shape;
}

std::optional<cublasLtMatmulAlgo_t> stored_gemm_algo(CudaContext& ctx, const std::string& key,
                                                     const LtCall& call) {
  std::lock_guard<std::mutex> lock(store_mutex);
  ensure_loaded();
  const auto it = store.find(key);
  if (it == store.end() || !accepted(ctx, call, it->second.algo)) return std::nullopt;
  return it->second.algo;
}

std::optional<cublasLtMatmulAlgo_t> tune_gemm(
    CudaContext& ctx, const std::string& key, const LtCall& call,
    const std::vector<cublasLtMatmulHeuristicResult_t>& candidates) {
  LSGPT_CHECK(!candidates.empty(), "no candidate algorithms to time");
  std::lock_guard<std::mutex> lock(store_mutex);
  const std::string path = gemm_cache_path();
  if (path.empty()) warn_once("no cache directory (LSGPT_CACHE_DIR, XDG_CACHE_HOME and HOME unset)");
  // A choice that cannot be stored would be made again, perhaps otherwise,
  // by the next process: without the file the heuristic's first pick,
  // the same in every process, is kept instead.
  if (path.empty() || path == unusable_path) return candidates.front().algo;
  CacheLock file_lock(path);
  if (!file_lock.held()) {
    unusable_path = path;
    return candidates.front().algo;
  }
  read_store(path);  // what other processes stored meanwhile
  store_loaded = true;
  const auto it = store.find(key);
  if (it != store.end() && accepted(ctx, call, it->second.algo)) return it->second.algo;
  const StoredAlgo best = fastest(ctx, call, candidates);
  if (!(best.ms < HUGE_VAL)) return std::nullopt;  // cuBLASLt ran none of them
  store[key] = best;
  if (!write_store(path)) {
    store.erase(key);
    unusable_path = path;
    return candidates.front().algo;
  }
  return best.algo;
}

}  // namespace lsgpt::cuda
