// GPT-2's pre-tokenisation, written out by hand over code points instead of
// run through a regex engine. GPT-2 cuts text with
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// matched leftmost-first at each position. \p{L} and \p{N} are the Unicode
// general categories L* and N* (from utf8proc); \s is Unicode White_Space,
// which is what \s means in both engines GPT-2 is defined by (the Python
// `regex` module OpenAI's encoder.py uses, and Oniguruma in Hugging Face's
// tokenizers). It is NOT Python's str.isspace(): U+001C..U+001F count as
// "other" here. A byte that is not part of valid UTF-8 is a lone code point of
// the "other" class, so every byte string has a pre-tokenisation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace lsgpt {

enum class CharClass : uint8_t { letter, number, space, other };

// The class of one code point (the categories above).
CharClass char_class(uint32_t code_point);

// Appends the pieces of `text` to `pieces`, in order, stopping after
// max_pieces of them; returns how many bytes of `text` they cover. A piece
// depends only on the text from its first byte on, so calling again on the
// rest continues exactly where this call stopped.
size_t pretokenize(std::string_view text, std::vector<std::string_view>& pieces,
                   size_t max_pieces = SIZE_MAX);

}  // namespace lsgpt
