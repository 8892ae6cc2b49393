// Window positions for training batches come from a counter-based hash rather
// than a stateful RNG, so that batch i can be rebuilt from (seed, i) alone.
#include "data/batch_sampler.h"

#include <algorithm>

#include "core/error.h"

namespace lsgpt {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

void check_shape(const TokenFile& file, int batch_size, int seq_len) {
  if (batch_size < 1) fail("batch size must be at least 1, not ", batch_size);
  if (seq_len < 1) fail("sequence length must be at least 1, not ", seq_len);
  if (file.size() < static_cast<uint64_t>(seq_len) + 1)
    fail("token file ", file.path(), " holds ", file.size(),
         " tokens, too few for one window of seq_len + 1 = ", seq_len + 1, " tokens");
}

}  // namespace

WindowSampling parse_window_sampling(std::string_view name) {
  if (name == "uniform") return WindowSampling::uniform;
  if (name == "documents") return WindowSampling::documents;
  fail("unknown window sampling \"", name, "\"; use uniform or documents");
}

TrainBatches::TrainBatches(const TokenFile& file, int batch_size, int seq_len, uint64_t seed,
                           WindowSampling sampling, int32_t eot)
    : file_(file), batch_size_(batch_size), seq_len_(seq_len), seed_(seed) {
  check_shape(file, batch_size, seq_len);
  if (sampling == WindowSampling::documents) {
    if (eot < 0 || eot >= file.vocab_size())
      fail("documents sampling needs the end-of-text id that separates documents; ", eot,
           " is not in the vocabulary of ", file.path());
    index_documents(eot);
  }
}

// One scan of the file (about 1 GB/s); a run of starts per document.
void TrainBatches::index_documents(int32_t eot) {
  const std::span<const uint16_t> tokens = file_.tokens();
  const uint64_t n = tokens.size(), T = static_cast<uint64_t>(seq_len_);
  const uint64_t last_start = n - T - 1;  // check_shape: n >= T + 1
  uint64_t begin = 0;
  for (uint64_t i = 0; i < n; ++i) {
    if (tokens[i] != static_cast<uint16_t>(eot) && i + 1 < n) continue;
    const uint64_t length = i + 1 - begin;  // with its closing <|endoftext|>
    if (length >= T + 1) {
      starts_.push_back({begin, length - T});
      ++whole_window_documents_;
    } else {
      starts_.push_back({std::min(begin, last_start), 1});
    }
    begin = i + 1;
  }
  before_.reserve(starts_.size());
  for (const Starts& s : starts_) {
    before_.push_back(total_starts_);
    total_starts_ += s.count;
  }
}

uint64_t TrainBatches::window_start(uint64_t batch_index, int row) const {
  const uint64_t h =
      splitmix64(splitmix64(splitmix64(seed_) ^ batch_index) ^ static_cast<uint64_t>(row));
  // Multiply-high maps the hash onto [0, count) without the bias of a modulo.
  const auto pick = [h](uint64_t count) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(h) * count) >> 64);
  };
  if (starts_.empty()) return pick(file_.size() - static_cast<uint64_t>(seq_len_));
  const uint64_t k = pick(total_starts_);
  const size_t doc = static_cast<size_t>(std::upper_bound(before_.begin(), before_.end(), k) -
                                         before_.begin()) - 1;
  return starts_[doc].first + (k - before_[doc]);
}

void TrainBatches::fill(uint64_t batch_index, int32_t* inputs, int32_t* targets) const {
  const size_t T = static_cast<size_t>(seq_len_);
  for (int r = 0; r < batch_size_; ++r) {
    const uint64_t start = window_start(batch_index, r);
    file_.read(start, T, inputs + r * T);
    file_.read(start + 1, T, targets + r * T);
  }
}

EvalBatches::EvalBatches(const TokenFile& file, int batch_size, int seq_len, long max_batches)
    : file_(file), batch_size_(batch_size), seq_len_(seq_len) {
  check_shape(file, batch_size, seq_len);
  const uint64_t T = static_cast<uint64_t>(seq_len);
  windows_ = (file.size() - 1 + T - 1) / T;
  const uint64_t B = static_cast<uint64_t>(batch_size);
  const auto all = static_cast<long>((windows_ + B - 1) / B);
  count_ = max_batches > 0 ? std::min(all, max_batches) : all;
}

void EvalBatches::fill(long k, int32_t* inputs, int32_t* targets) const {
  LSGPT_CHECK(k >= 0 && k < count_, "evaluation batch ", k, " of ", count_);
  const uint64_t T = static_cast<uint64_t>(seq_len_);
  const uint64_t n = file_.size();
  for (int r = 0; r < batch_size_; ++r) {
    int32_t* in = inputs + r * T;
    int32_t* tg = targets + r * T;
    std::fill(in, in + T, 0);
    std::fill(tg, tg + T, ignore_target);
    const uint64_t w = static_cast<uint64_t>(k) * batch_size_ + r;
    if (w >= windows_) continue;
    const uint64_t begin = w * T;
    const uint64_t inputs_here = std::min(T, n - begin);
    const uint64_t targets_here = std::min(T, n - 1 - begin);
    file_.read(begin, inputs_here, in);
    file_.read(begin + 1, targets_here, tg);
  }
}

uint64_t EvalBatches::target_count() const {
  const uint64_t rows = static_cast<uint64_t>(count_) * batch_size_;
  const uint64_t T = static_cast<uint64_t>(seq_len_);
  if (rows >= windows_) return file_.size() - 1;
  return rows * T;
}

}  // namespace lsgpt
