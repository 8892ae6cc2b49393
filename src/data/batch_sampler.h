// Training and evaluation batches drawn from a token file. A batch is B rows
// of T inputs and the T targets one position later, as int32.
//
// TrainBatches: row r of batch i is the window of T+1 tokens starting at a
// position drawn by hashing (seed, i, r) (splitmix64), so batch i is a pure
// function of the seed and i: resuming a run needs only the batch index, and
// the order never depends on how many batches were drawn before.
//
// EvalBatches: consecutive, non-overlapping windows from the start of the
// file that together predict every token after the first exactly once. Rows
// past the end of the file get target -1 (ignored by the loss), so the last,
// partial batch is counted exactly.
//
// Both keep a reference to the TokenFile, which must outlive them, and refuse
// a file with fewer than T+1 tokens.
#pragma once

#include <cstdint>

#include "data/token_file.h"

namespace lsgpt {

// Target value of positions that predict nothing.
inline constexpr int32_t ignore_target = -1;

class TrainBatches {
 public:
  TrainBatches(const TokenFile& file, int batch_size, int seq_len, uint64_t seed);
  // inputs and targets each hold batch_size * seq_len values, row-major.
  void fill(uint64_t batch_index, int32_t* inputs, int32_t* targets) const;
  // First token of row `row`'s window in batch `batch_index`.
  uint64_t window_start(uint64_t batch_index, int row) const;
  int batch_size() const { return batch_size_; }
  int seq_len() const { return seq_len_; }

 private:
  const TokenFile& file_;
  int batch_size_, seq_len_;
  uint64_t seed_;
};

class EvalBatches {
 public:
  // max_batches <= 0: as many batches as it takes to cover the file.
  EvalBatches(const TokenFile& file, int batch_size, int seq_len, long max_batches);
  long count() const { return count_; }
  // k in [0, count()).
  void fill(long k, int32_t* inputs, int32_t* targets) const;
  // Targets other than ignore_target over all count() batches.
  uint64_t target_count() const;
  int batch_size() const { return batch_size_; }
  int seq_len() const { return seq_len_; }

 private:
  const TokenFile& file_;
  int batch_size_, seq_len_;
  uint64_t windows_;  // windows needed to cover the file
  long count_;
};

}  // namespace lsgpt
