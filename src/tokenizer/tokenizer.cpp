// GPT-2 byte-level BPE. Symbols are token ids from the start: each byte maps
// to the id of its one-character token, and a merge table keyed by the id pair
// gives (rank, merged id). A piece is merged with a min-heap of candidate
// pairs ordered by (rank, position); this equals GPT-2's "merge every
// occurrence of the lowest-ranked pair, left to right, then look again" as
// long as no merge uses a token before the merge that makes it, which load()
// checks, and it stays O(n log n) on pathological long pieces. Pieces repeat
// a lot in natural text, so their ids are cached.
#include "tokenizer/tokenizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/pretokenizer.h"

namespace lsgpt {

namespace {

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves,
// the other 68 bytes are shifted to U+0100.. so that every symbol is visible.
std::array<uint32_t, 256> byte_to_code_point() {
  std::array<uint32_t, 256> table{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    table[b] = printable ? b : next++;
  }
  return table;
}

std::string read_whole_file(const std::string& path, const char* what) {
  // An ifstream opens a directory and `os << rdbuf()` then reads nothing, without an error.
  if (std::filesystem::is_directory(path))
    fail("the tokenizer's ", what, " ", path, " is a directory, not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in)
    fail("cannot open the tokenizer's ", what, " ", path,
         " (pass --tokenizer-dir or set LSGPT_TOKENIZER_DIR)");
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) fail("cannot read the tokenizer's ", what, " ", path);
  return os.str();
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

}  // namespace

struct Tokenizer::Impl {
  struct Merge {
    int32_t rank;
    int32_t id;
  };

  std::vector<std::string> token_bytes;  // id -> bytes
  std::array<int32_t, 256> byte_token{};
  std::unordered_map<uint64_t, Merge> merges;

  // Piece bytes -> (offset, length) in cache_ids. Bounded: emptied when full,
  // so random input cannot grow it without limit.
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::pair<uint32_t, uint32_t>, StringHash,
                             std::equal_to<>>
      cache;
  mutable std::vector<int32_t> cache_ids;
  static constexpr size_t cache_max_ids = size_t(1) << 22;
  static constexpr size_t cache_max_piece = 256;

  static uint64_t pair_key(int32_t a, int32_t b) {
    return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
  }

  void bpe(std::string_view piece, std::vector<int32_t>& out) const;
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
};

void Tokenizer::Impl::bpe(std::string_view piece, std::vector<int32_t>& out) const {
  const int n = static_cast<int>(piece.size());
  if (n == 1) {
    out.push_back(byte_token[static_cast<unsigned char>(piece[0])]);
    return;
  }
  struct Symbol {
    int32_t id;  // -1 once merged into its left neighbour
    int prev, next;
  };
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t left, right, merged;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap;
  symbols.resize(n);
  heap.clear();
  for (int i = 0; i < n; ++i)
    symbols[i] = {byte_token[static_cast<unsigned char>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};

  auto consider = [&](int left_pos) {
    if (left_pos < 0) return;
    const int right_pos = symbols[left_pos].next;
    if (right_pos < 0) return;
    const int32_t a = symbols[left_pos].id, b = symbols[right_pos].id;
    const auto it = merges.find(pair_key(a, b));
    if (it == merges.end()) return;
    heap.push_back({it->second.rank, left_pos, a, b, it->second.id});
    std::push_heap(heap.begin(), heap.end(), std::greater<>{});
  };
  for (int i = 0; i + 1 < n; ++i) consider(i);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>{});
    const Candidate c = heap.back();
    heap.pop_back();
    Symbol& left = symbols[c.pos];
    if (left.id != c.left || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    if (right.id != c.right) continue;
    left.id = c.merged;
    right.id = -1;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = c.pos;
    consider(left.prev);
    consider(c.pos);
  }
  for (int i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
}

void Tokenizer::Impl::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.size() == 1 || piece.size() > cache_max_piece) {
    bpe(piece, out);
    return;
  }
  {
    std::lock_guard lock(cache_mutex);
    const auto it = cache.find(piece);
    if (it != cache.end()) {
      const int32_t* ids = cache_ids.data() + it->second.first;
      out.insert(out.end(), ids, ids + it->second.second);
      return;
    }
  }
  const size_t begin = out.size();
  bpe(piece, out);
  std::lock_guard lock(cache_mutex);
  if (cache_ids.size() + (out.size() - begin) > cache_max_ids) {
    cache.clear();
    cache_ids.clear();
  }
  const auto offset = static_cast<uint32_t>(cache_ids.size());
  cache_ids.insert(cache_ids.end(), out.begin() + static_cast<std::ptrdiff_t>(begin), out.end());
  cache.emplace(std::string(piece),
                std::pair<uint32_t, uint32_t>(offset, static_cast<uint32_t>(out.size() - begin)));
}

Tokenizer Tokenizer::load(const std::string& dir) {
  const std::string encoder_path = dir + "/encoder.json";
  const std::string merges_path = dir + "/vocab.bpe";
  const std::string encoder_text = read_whole_file(encoder_path, "vocabulary");
  const std::string merges_text = read_whole_file(merges_path, "merge list");

  const auto to_byte = [] {
    std::unordered_map<uint32_t, unsigned char> m;
    const auto table = byte_to_code_point();
    for (int b = 0; b < 256; ++b) m[table[b]] = static_cast<unsigned char>(b);
    return m;
  }();
  // A symbol as written in encoder.json / vocab.bpe -> the bytes it stands for.
  auto symbol_bytes = [&](const std::string& symbol, const std::string& where) {
    std::string bytes;
    const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(symbol.data());
    utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(symbol.size());
    while (left > 0) {
      utf8proc_int32_t cp = 0;
      const auto n = utf8proc_iterate(p, left, &cp);
      const auto it = n > 0 ? to_byte.find(static_cast<uint32_t>(cp)) : to_byte.end();
      if (it == to_byte.end())
        fail(where, ": symbol \"", symbol, "\" is not written in GPT-2's byte alphabet");
      bytes.push_back(static_cast<char>(it->second));
      p += n;
      left -= n;
    }
    if (bytes.empty()) fail(where, ": empty symbol");
    return bytes;
  };

  auto impl = std::make_shared<Impl>();
  std::unordered_map<std::string, int32_t> symbol_id;
  {
    nlohmann::json encoder;
    try {
      encoder = nlohmann::json::parse(encoder_text);
    } catch (const nlohmann::json::exception& e) {
      fail("tokenizer vocabulary ", encoder_path, " is not valid JSON: ", e.what());
    }
    if (!encoder.is_object() || encoder.empty())
      fail("tokenizer vocabulary ", encoder_path, " is not a JSON object of symbol -> id");
    const size_t size = encoder.size();
    if (size > 65536)
      fail("tokenizer vocabulary ", encoder_path, " has ", size,
           " entries; token files store ids in 16 bits, so at most 65536");
    impl->token_bytes.assign(size, std::string());
    std::vector<bool> seen(size, false);
    for (const auto& [symbol, value] : encoder.items()) {
      if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
          value.get<int64_t>() >= static_cast<int64_t>(size))
        fail("tokenizer vocabulary ", encoder_path, ": \"", symbol, "\" has id ", value.dump(),
             ", not an integer in 0..", size - 1);
      const auto id = value.get<int32_t>();
      if (seen[id]) fail("tokenizer vocabulary ", encoder_path, ": id ", id, " is used twice");
      seen[id] = true;
      impl->token_bytes[id] = symbol_bytes(symbol, "tokenizer vocabulary " + encoder_path);
      symbol_id.emplace(symbol, id);
    }
    const auto eot_it = symbol_id.find(std::string(eot_text));
    if (eot_it == symbol_id.end() || eot_it->second != eot)
      fail("tokenizer vocabulary ", encoder_path, " does not map ", eot_text, " to ", eot,
           "; it is not GPT-2's vocabulary");
  }
  const auto code_points = byte_to_code_point();
  for (int b = 0; b < 256; ++b) {
    char buf[4];
    const auto len = utf8proc_encode_char(static_cast<utf8proc_int32_t>(code_points[b]),
                                          reinterpret_cast<utf8proc_uint8_t*>(buf));
    const std::string symbol(buf, static_cast<size_t>(len));
    const auto it = symbol_id.find(symbol);
    if (it == symbol_id.end())
      fail("tokenizer vocabulary ", encoder_path, " lacks the symbol for byte ", b);
    impl->byte_token[b] = it->second;
  }

  // vocab.bpe: an optional "#version" line, then one "left right" merge per
  // line, best first.
  const size_t size = impl->token_bytes.size();
  std::vector<int32_t> made_at(size, -1);            // rank of the merge making the token
  std::vector<int32_t> first_used(size, INT32_MAX);  // lowest rank of a merge using it
  std::istringstream lines(merges_text);
  std::string line;
  int line_no = 0;
  int32_t rank = 0;
  while (std::getline(lines, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    const auto where = merges_path + " line " + std::to_string(line_no);
    const size_t space = line.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 >= line.size() ||
        line.find(' ', space + 1) != std::string::npos)
      fail("tokenizer merge list ", where, " is not two symbols separated by one space");
    const std::string left = line.substr(0, space), right = line.substr(space + 1);
    const auto find = [&](const std::string& symbol) {
      const auto it = symbol_id.find(symbol);
      if (it == symbol_id.end())
        fail("tokenizer merge list ", where, ": symbol \"", symbol, "\" is not in ", encoder_path);
      return it->second;
    };
    const int32_t a = find(left), b = find(right), merged = find(left + right);
    if (!impl->merges.emplace(Impl::pair_key(a, b), Impl::Merge{rank, merged}).second)
      fail("tokenizer merge list ", where, " repeats an earlier merge");
    made_at[merged] = std::max(made_at[merged], rank);
    first_used[a] = std::min(first_used[a], rank);
    first_used[b] = std::min(first_used[b], rank);
    ++rank;
  }
  for (size_t id = 0; id < size; ++id)
    if (made_at[id] >= first_used[id])
      fail("tokenizer merge list ", merges_path, ": merge ", first_used[id], " uses token ", id,
           " before merge ", made_at[id], " makes it; merges must be in training order");
  // Every token longer than a byte, but for <|endoftext|>, is made by a merge;
  // an empty or cut list would otherwise load and encode text into other ids.
  for (size_t id = 0; id < size; ++id)
    if (made_at[id] < 0 && impl->token_bytes[id].size() > 1 && int32_t(id) != eot)
      fail("tokenizer merge list ", merges_path, " has no merge making token ", id, " (",
           rank, " merges read); the list is incomplete");
  return Tokenizer(std::move(impl));
}

std::string Tokenizer::default_dir() {
  if (const char* env = std::getenv("LSGPT_TOKENIZER_DIR"); env && *env) return env;
  return LSGPT_SOURCE_DIR "/data/gpt2";
}

void Tokenizer::encode_append(std::string_view text, std::vector<int32_t>& out,
                              bool eot_as_text) const {
  thread_local std::vector<std::string_view> pieces;
  while (!text.empty()) {
    const size_t special = eot_as_text ? std::string_view::npos : text.find(eot_text);
    std::string_view plain = text.substr(0, special);
    while (!plain.empty()) {
      pieces.clear();
      plain.remove_prefix(pretokenize(plain, pieces, 4096));
      for (const auto piece : pieces) impl_->encode_piece(piece, out);
    }
    if (special == std::string_view::npos) break;
    out.push_back(eot);
    text.remove_prefix(special + eot_text.size());
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool eot_as_text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  encode_append(text, ids, eot_as_text);
  return ids;
}

std::string Tokenizer::decode_token(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    fail("token id ", id, " is outside the vocabulary (0..", vocab_size() - 1, ")");
  return impl_->token_bytes[id];
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string text;
  for (const int32_t id : ids) {
    if (id < 0 || id >= vocab_size())
      fail("token id ", id, " is outside the vocabulary (0..", vocab_size() - 1, ")");
    text += impl_->token_bytes[id];
  }
  return text;
}

int Tokenizer::vocab_size() const { return static_cast<int>(impl_->token_bytes.size()); }

size_t Tokenizer::last_safe_cut(std::string_view text, size_t search_from) {
  // A cut at p is safe when text[p] is ASCII white space and the character
  // ending at p-1 is not white space: every piece ends there (no regex branch
  // but the white-space ones takes a space after its first character), and
  // the piece ending at p-1 is the same whether or not more text follows.
  // "<|endoftext|>" holds no white space, so no cut falls inside one.
  const auto is_ascii_space = [](unsigned char c) { return c == ' ' || (c >= 0x09 && c <= 0x0D); };
  for (size_t p = text.size(); p-- > std::max<size_t>(search_from, 1);) {
    if (!is_ascii_space(static_cast<unsigned char>(text[p]))) continue;
    const auto before = static_cast<unsigned char>(text[p - 1]);
    if (before < 0x80) {
      if (!is_ascii_space(before)) return p;
      continue;
    }
    // Find the character ending at p-1: a valid multi-byte character that
    // starts at a lead byte at most 3 bytes back, or else an invalid byte,
    // which the pre-tokeniser treats as "other".
    size_t q = p - 1;
    while (q > 0 && p - q < 4 && (static_cast<unsigned char>(text[q]) & 0xC0) == 0x80) --q;
    utf8proc_int32_t cp = 0;
    const auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(text.data() + q),
                                    static_cast<utf8proc_ssize_t>(p - q), &cp);
    if (n == static_cast<utf8proc_ssize_t>(p - q) &&
        char_class(static_cast<uint32_t>(cp)) == CharClass::space)
      continue;
    return p;
  }
  return 0;
}

}  // namespace lsgpt
