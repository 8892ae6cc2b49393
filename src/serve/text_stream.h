// Turns a sequence's token bytes into the text a client receives, piece by
// piece, so that a stream and a whole answer hold the same text: never half
// of a UTF-8 character (GPT-2's byte-level tokens split them), never any part
// of a stop string (OpenAI's answers end before the stop), and nothing after
// the first stop string.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace lsgpt::serve {

class TextStream {
 public:
  explicit TextStream(std::vector<std::string> stop_strings = {});
  // Adds one token's bytes; returns the text that may be sent now.
  std::string push(std::string_view bytes);
  // The sequence ended: the rest of the text, cut before the first stop
  // string when `stopped_by_string`.
  std::string finish(bool stopped_by_string);
  const std::string& text() const { return text_; }  // everything so far

 private:
  std::vector<std::string> stops_;
  size_t hold_ = 0;  // longest stop string - 1: a stop may still complete there
  std::string text_;
  size_t sent_ = 0;
};

// The end of the longest prefix of `s` (from `from`) that does not end inside
// a UTF-8 character; an invalid byte counts as a character of its own.
size_t utf8_complete_prefix(std::string_view s, size_t from = 0);

}  // namespace lsgpt::serve
