// GPT-2's pre-tokenisation regex as a hand-written scanner. Each branch below
// is one alternative of the regex, tried in the regex's order; the regex looks
// behind nothing, so a piece depends only on the text from its first byte on.
#include "tokenizer/pretokenizer.h"

#include <utf8proc.h>

#include <array>

namespace lsgpt {

namespace {

struct Char {
  CharClass cls;
  uint8_t bytes;  // length of its UTF-8 encoding (1 for an invalid byte)
};

bool is_white_space(uint32_t cp) {
  if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20;
  if (cp == 0x85) return true;
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

constexpr std::array<CharClass, 128> make_ascii_classes() {
  std::array<CharClass, 128> t{};
  for (int c = 0; c < 128; ++c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
      t[c] = CharClass::letter;
    else if (c >= '0' && c <= '9')
      t[c] = CharClass::number;
    else if ((c >= 0x09 && c <= 0x0D) || c == ' ')
      t[c] = CharClass::space;
    else
      t[c] = CharClass::other;
  }
  return t;
}
constexpr std::array<CharClass, 128> ascii_classes = make_ascii_classes();

inline Char char_at(std::string_view text, size_t pos) {
  const auto byte = static_cast<unsigned char>(text[pos]);
  if (byte < 0x80) return {ascii_classes[byte], 1};
  utf8proc_int32_t cp = 0;
  const auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(text.data() + pos),
                                  static_cast<utf8proc_ssize_t>(text.size() - pos), &cp);
  if (n <= 0) return {CharClass::other, 1};
  return {char_class(static_cast<uint32_t>(cp)), static_cast<uint8_t>(n)};
}

// Length of the contraction ('s 't 're 've 'm 'll 'd) starting at pos, or 0.
inline size_t contraction_length(std::string_view text, size_t pos) {
  if (pos + 1 >= text.size()) return 0;
  const char a = text[pos + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (pos + 2 >= text.size()) return 0;
  const char b = text[pos + 2];
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

}  // namespace

CharClass char_class(uint32_t cp) {
  if (cp < 0x80) return ascii_classes[cp];
  if (is_white_space(cp)) return CharClass::space;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
      return CharClass::letter;
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
      return CharClass::number;
    default:
      return CharClass::other;
  }
}

size_t pretokenize(std::string_view text, std::vector<std::string_view>& pieces,
                   size_t max_pieces) {
  const size_t n = text.size();
  size_t i = 0;
  for (size_t count = 0; i < n && count < max_pieces; ++count) {
    if (text[i] == '\'') {
      if (const size_t len = contraction_length(text, i)) {
        pieces.push_back(text.substr(i, len));
        i += len;
        continue;
      }
    }
    const Char first = char_at(text, i);

    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional U+0020, then a
    // run of one class.
    size_t run_begin = i;
    Char lead = first;
    if (text[i] == ' ' && i + 1 < n) {
      const Char next = char_at(text, i + 1);
      if (next.cls != CharClass::space) {
        run_begin = i + 1;
        lead = next;
      }
    }
    if (lead.cls != CharClass::space) {
      size_t end = run_begin + lead.bytes;
      while (end < n) {
        const Char c = char_at(text, end);
        if (c.cls != lead.cls) break;
        end += c.bytes;
      }
      pieces.push_back(text.substr(i, end - i));
      i = end;
      continue;
    }

    // `\s+(?!\S)` then `\s+`: a whitespace run followed by a non-space gives
    // its last character to the next piece (where a U+0020 can lead a word);
    // a run of one character, or one that reaches the end, stays whole.
    size_t end = i + first.bytes;
    size_t last_char = i;
    while (end < n) {
      const Char c = char_at(text, end);
      if (c.cls != CharClass::space) break;
      last_char = end;
      end += c.bytes;
    }
    if (end < n && last_char > i) end = last_char;
    pieces.push_back(text.substr(i, end - i));
    i = end;
  }
  return i;
}

}  // namespace lsgpt
