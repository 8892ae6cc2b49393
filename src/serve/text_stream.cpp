#include "serve/text_stream.h"

#include <algorithm>

namespace lsgpt::serve {

namespace {

// Bytes in the character a lead byte starts; 1 for a continuation or an
// invalid byte (sent alone, replaced by U+FFFD when dumped as JSON).
size_t sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;
}

bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

}  // namespace

size_t utf8_complete_prefix(std::string_view s, size_t from) {
  size_t i = from;
  while (i < s.size()) {
    const size_t n = sequence_length((unsigned char)s[i]);
    if (n == 1) {
      ++i;
      continue;
    }
    size_t have = 1;
    while (have < n && i + have < s.size() && is_continuation((unsigned char)s[i + have])) ++have;
    if (have < n && i + have == s.size()) return i;  // may still be completed
    i += have;  // complete, or broken by a non-continuation byte: pass it on as it is
  }
  return s.size();
}

TextStream::TextStream(std::vector<std::string> stop_strings) : stops_(std::move(stop_strings)) {
  for (const std::string& s : stops_) hold_ = std::max(hold_, s.size() - 1);
}

std::string TextStream::push(std::string_view bytes) {
  text_ += bytes;
  // A stop string may be completed by the next tokens: its start lies in the
  // last hold_ bytes.
  size_t end = text_.size() >= hold_ ? text_.size() - hold_ : 0;
  // The piece that completes a stop string comes through here too, before
  // finish(): nothing from the stop's start on is sent. (What was sent never
  // reaches into a later stop, so searching from sent_ finds it.)
  for (const std::string& s : stops_) end = std::min(end, text_.find(s, sent_));
  end = std::max(end, sent_);
  end = utf8_complete_prefix(std::string_view(text_).substr(0, end), sent_);
  std::string out = text_.substr(sent_, end - sent_);
  sent_ = end;
  return out;
}

std::string TextStream::finish(bool stopped_by_string) {
  size_t end = text_.size();
  if (stopped_by_string)
    for (const std::string& s : stops_) end = std::min(end, text_.find(s));
  end = std::max(end, sent_);
  std::string out = text_.substr(sent_, end - sent_);
  sent_ = end;
  return out;
}

}  // namespace lsgpt::serve
