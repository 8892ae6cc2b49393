// Cuts are searched only in newly arrived bytes: whether a position is a cut
// depends on the bytes up to it, and everything held back was searched before.
#include "tokenizer/streaming_encoder.h"

namespace lsgpt {

void StreamingEncoder::write(std::string_view bytes, std::vector<int32_t>& out) {
  const size_t searched = held_.size();
  held_.append(bytes);
  const size_t cut = Tokenizer::last_safe_cut(held_, searched);
  if (cut == 0) return;
  tokenizer_.encode_append(std::string_view(held_).substr(0, cut), out, eot_as_text_);
  held_.erase(0, cut);
}

void StreamingEncoder::finish(std::vector<int32_t>& out) {
  tokenizer_.encode_append(held_, out, eot_as_text_);
  held_.clear();
}

}  // namespace lsgpt
