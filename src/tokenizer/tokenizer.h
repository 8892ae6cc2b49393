// GPT-2's byte-level BPE tokenizer, read from OpenAI's encoder.json and
// vocab.bpe. Text is cut into pieces by GPT-2's pre-tokenisation regex
// (reproduced by hand over code points, see pretokenizer.h), each piece's bytes
// are mapped to byte symbols and merged by rank. The one non-obvious decision:
// bytes that are not valid UTF-8 are kept, each as a lone code point of the
// "other" class, so that decode(encode(x)) == x for every byte string.
// Copies share one immutable vocabulary and one thread-safe piece cache.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lsgpt {

class Tokenizer {
 public:
  // `dir` holds encoder.json and vocab.bpe; a missing or corrupt file is
  // refused with an lsgpt::Error naming it.
  static Tokenizer load(const std::string& dir);
  // LSGPT_SOURCE_DIR "/data/gpt2", or $LSGPT_TOKENIZER_DIR when it is set.
  static std::string default_dir();

  // The literal text "<|endoftext|>" encodes to `eot`, as in Hugging Face's
  // GPT-2 tokenizer, unless `eot_as_text`: then it is ordinary text, like
  // everything else, and goes through the BPE ("<|", "endoftext", "|>").
  std::vector<int32_t> encode(std::string_view text, bool eot_as_text = false) const;
  // Appends to `out` instead of returning a fresh vector.
  void encode_append(std::string_view text, std::vector<int32_t>& out,
                     bool eot_as_text = false) const;
  // Throws lsgpt::Error on an id outside the vocabulary.
  std::string decode(std::span<const int32_t> ids) const;
  // The bytes of one token; may be part of a UTF-8 character.
  std::string decode_token(int32_t id) const;
  int vocab_size() const;

  // The largest n in [max(search_from, 1), text.size()) where text[n] is
  // ASCII white space after a non-space character: there, encoding text[0, n)
  // and the rest separately gives the same ids as encoding them whole,
  // whatever bytes follow `text`. 0 when there is none. Whether n qualifies
  // depends only on the bytes up to text[n], so a streaming encoder need
  // search only the bytes it has not searched before.
  static size_t last_safe_cut(std::string_view text, size_t search_from = 0);

  static constexpr int32_t eot = 50256;
  static constexpr std::string_view eot_text = "<|endoftext|>";

 private:
  struct Impl;
  explicit Tokenizer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

}  // namespace lsgpt
