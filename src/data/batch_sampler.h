// Training and evaluation batches drawn from a token file. A batch is B rows
// of T inputs and the T targets one position later, as int32.
//
// TrainBatches: row r of batch i is the window of T+1 tokens starting at a
// position drawn by hashing (seed, i, r) (splitmix64), so batch i is a pure
// function of the seed, i and the file: resuming a run needs only the batch
// index, and the order never depends on how many batches were drawn before.
// Where a window may start is the WindowSampling:
//   uniform   every position of the file, equally likely. Windows cross the
//             <|endoftext|> between documents freely (as GPT-2 and nanoGPT
//             train); with long windows and short documents most rows then
//             hold several unrelated documents.
//   documents only positions whose whole window lies inside one document,
//             equally likely over all such positions (so a long book gets
//             windows in proportion to its length). A document is the tokens
//             after an <|endoftext|> up to and including the next one, so the
//             model still learns to end a text. A document shorter than T+1
//             tokens gets one window, starting at its first token and crossing
//             into what follows, so no text is left out entirely. For long-
//             context training on whole books (prepare --dataset pg-books).
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
#include <string_view>
#include <vector>

#include "data/token_file.h"

namespace lsgpt {

// Target value of positions that predict nothing.
inline constexpr int32_t ignore_target = -1;

enum class WindowSampling { uniform, documents };

// "uniform" or "documents"; anything else is an lsgpt::Error.
WindowSampling parse_window_sampling(std::string_view name);

class TrainBatches {
 public:
  // `eot`: the end-of-text id that separates documents (documents sampling).
  TrainBatches(const TokenFile& file, int batch_size, int seq_len, uint64_t seed,
               WindowSampling sampling = WindowSampling::uniform, int32_t eot = -1);
  // inputs and targets each hold batch_size * seq_len values, row-major.
  void fill(uint64_t batch_index, int32_t* inputs, int32_t* targets) const;
  // First token of row `row`'s window in batch `batch_index`.
  uint64_t window_start(uint64_t batch_index, int row) const;
  int batch_size() const { return batch_size_; }
  int seq_len() const { return seq_len_; }
  // Documents sampling: documents with at least T+1 tokens (the rest get
  // one crossing window each); 0 for uniform sampling.
  uint64_t whole_window_documents() const { return whole_window_documents_; }

 private:
  // A run of allowed window starts [first, first + count).
  struct Starts {
    uint64_t first, count;
  };
  void index_documents(int32_t eot);
  const TokenFile& file_;
  int batch_size_, seq_len_;
  uint64_t seed_;
  std::vector<Starts> starts_;   // documents sampling only
  std::vector<uint64_t> before_; // before_[k]: starts in starts_[0, k)
  uint64_t total_starts_ = 0;
  uint64_t whole_window_documents_ = 0;
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
