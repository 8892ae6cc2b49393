// Encodes text that arrives in pieces (file chunks, standard input) with the
// same ids as encoding it whole. It holds back the bytes after the last cut
// the pre-tokeniser is certain to make (Tokenizer::last_safe_cut), so memory
// stays bounded by the chunk size for ordinary text; text without any such cut
// (no white space after a non-space character) is held until finish().
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace lsgpt {

class StreamingEncoder {
 public:
  // `tokenizer` must outlive the encoder; `eot_as_text` as in Tokenizer::encode.
  explicit StreamingEncoder(const Tokenizer& tokenizer, bool eot_as_text = false)
      : tokenizer_(tokenizer), eot_as_text_(eot_as_text) {}

  // Appends to `out` the ids of everything that can be encoded so far.
  void write(std::string_view bytes, std::vector<int32_t>& out);
  // The text has ended: appends the ids of the held-back bytes and resets, so
  // the encoder can start on a new text.
  void finish(std::vector<int32_t>& out);
  size_t held_bytes() const { return held_.size(); }

 private:
  const Tokenizer& tokenizer_;
  bool eot_as_text_;
  std::string held_;
};

}  // namespace lsgpt
