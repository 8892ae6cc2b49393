// GPT-2 tokenizer: known ids, GPT-2's pre-tokenisation rules, the BPE against
// a direct transcription of OpenAI's encoder.py bpe(), exact round trips on
// WikiText-2 and random bytes (invalid UTF-8 included), and refusals of bad
// tokenizer files. Expected ids come from OpenAI's algorithm run with the
// Python `regex` module (tools/compare_tokenizer.py --reference openai).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "../data/data_test_support.h"
#include "core/error.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace lsgpt {
namespace {
namespace test_tokenizer {

using data_testing::gpt2;
using data_testing::read_file;
using data_testing::ScratchDir;
using data_testing::write_file;

using Ids = std::vector<int32_t>;

TEST(Tokenizer, KnownIds) {
  const std::vector<std::pair<std::string, Ids>> cases = {
      {"Hello world", {15496, 995}},
      {"hello world", {31373, 995}},
      {"I'm sure you'll see they've done what we'd said it's not",
       {40, 1101, 1654, 345, 1183, 766, 484, 1053, 1760, 644, 356, 1549, 531, 340, 338, 407}},
      {"DON'T SHOUT: 'quoted' ''double'' don't",
       {41173, 6, 51, 6006, 12425, 25, 705, 421, 5191, 6, 10148, 23352, 7061, 836, 470}},
      {"In 1984, 12345 people paid $3.50 (about 1,000,000.25).",
       {818, 12844, 11,  17031, 2231, 661, 3432, 720, 18,   13, 1120,
        357, 10755, 352, 11,    830,  11,  830,  13,  1495, 737}},
      {"Wait... what?!?! ---> [ok] {x} <html>",
       {21321, 986, 644, 12248, 12248, 1377, 3784, 685, 482, 60, 1391, 87, 92, 1279, 6494, 29}},
      {"a  b   c    d", {64, 220, 275, 220, 220, 269, 220, 220, 220, 288}},
      {"line one\nline two\n\nline four\n\n\n",
       {1370, 530, 198, 1370, 734, 198, 198, 1370, 1440, 628, 198}},
      {"\ttab\t\tindent\n\t\tx", {197, 8658, 197, 197, 521, 298, 198, 197, 197, 87}},
      {"   leading and trailing   ", {220, 220, 3756, 290, 25462, 220, 220, 220}},
      {"caf\u00e9 r\u00e9sum\u00e9 na\u00efve \u00e9",
       {66, 1878, 2634, 40560, 16345, 2634, 41492, 38251}},
      {"\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
       {33768, 98, 17312, 105, 45739, 252, 5641, 24336, 25084, 43302}},
      {"\u0663\u0664\u0665 and \u0661\u0662 and \u096d\u096e\u096f",
       {149, 96, 149, 97, 149, 98, 290, 18923, 94, 149, 95, 290, 220, 24231, 255, 24231, 106, 24231,
        107}},
      {"emoji \U0001F600\U0001F389 family \U0001F468\u200d\U0001F469\u200d\U0001F467 flag "
       "\U0001F1EB\U0001F1F7",
       {368, 31370, 30325, 222,   8582, 236,  231,   1641, 50169, 101,  447, 235, 41840,
        102, 447,   235,   41840, 100,  6056, 12520, 229,  104,   8582, 229, 115}},
      {"a<|endoftext|>b <|endoftext|> c", {64, 50256, 65, 220, 50256, 269}},
      {" = Valkyria Chronicles III = \n", {796, 569, 18354, 7496, 17740, 6711, 796, 220, 198}},
      {"", {}},
  };
  for (const auto& [text, ids] : cases) {
    EXPECT_EQ(gpt2().encode(text), ids) << "text: \"" << text << "\"";
    EXPECT_EQ(gpt2().decode(ids), text);
  }
}

TEST(Tokenizer, VocabularyAndEndOfText) {
  EXPECT_EQ(gpt2().vocab_size(), 50257);
  EXPECT_EQ(gpt2().encode("<|endoftext|>"), Ids{Tokenizer::eot});
  EXPECT_EQ(gpt2().decode_token(Tokenizer::eot), "<|endoftext|>");
  EXPECT_EQ(gpt2().decode_token(15496), "Hello");
  EXPECT_EQ(gpt2().decode_token(995), " world");
  // Only the exact literal is special.
  for (const std::string near : {"<|endoftext|", "<|endoftext", "|endoftext|>", "<|ENDOFTEXT|>"}) {
    const Ids ids = gpt2().encode(near);
    EXPECT_EQ(std::count(ids.begin(), ids.end(), Tokenizer::eot), 0) << near;
    EXPECT_EQ(gpt2().decode(ids), near);
  }
}

TEST(Tokenizer, DecodeRefusesIdsOutsideTheVocabulary) {
  EXPECT_THROW(gpt2().decode(Ids{15496, -1}), Error);
  EXPECT_THROW(gpt2().decode(Ids{50257}), Error);
  EXPECT_THROW(gpt2().decode_token(50257), Error);
  EXPECT_THROW(gpt2().decode_token(-5), Error);
  try {
    gpt2().decode(Ids{70000});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("70000"), std::string::npos) << e.what();
  }
}

std::vector<std::string> pieces_of(std::string_view text) {
  std::vector<std::string_view> views;
  pretokenize(text, views);
  return {views.begin(), views.end()};
}

TEST(Pretokenizer, FollowsGpt2Regex) {
  // Expected pieces from Python: regex.findall(GPT-2's pattern, text).
  using P = std::vector<std::string>;
  EXPECT_EQ(pieces_of("a  b"), (P{"a", " ", " b"}));
  EXPECT_EQ(pieces_of("\n\nword"), (P{"\n", "\n", "word"}));
  EXPECT_EQ(pieces_of("x\x1c y"), (P{"x", "\x1c", " y"}));  // U+001C is not \s
  EXPECT_EQ(pieces_of("?'s it's 'S"), (P{"?'", "s", " it", "'s", " '", "S"}));
  EXPECT_EQ(pieces_of("end   "), (P{"end", "   "}));
  EXPECT_EQ(pieces_of(" \u3000x"), (P{" ", "\u3000", "x"}));
  EXPECT_EQ(pieces_of("ab12cd"), (P{"ab", "12", "cd"}));
  EXPECT_EQ(pieces_of(" 12 "), (P{" 12", " "}));
  EXPECT_EQ(pieces_of("\u00e9\u00a0\u00a0z"), (P{"\u00e9", "\u00a0", "\u00a0", "z"}));
  EXPECT_EQ(pieces_of("\t\n x"), (P{"\t\n", " x"}));
  EXPECT_EQ(pieces_of("don't"), (P{"don", "'t"}));
  EXPECT_EQ(pieces_of("hello!!! world"), (P{"hello", "!!!", " world"}));
  // An invalid byte is a lone "other" code point: it joins punctuation runs
  // and a leading space, and never swallows the bytes after it.
  EXPECT_EQ(pieces_of("a \xff\xfe!b"), (P{"a", " \xff\xfe!", "b"}));
  EXPECT_EQ(pieces_of("\xe3\x81x"), (P{"\xe3\x81", "x"}));
}

TEST(Pretokenizer, CharacterClasses) {
  EXPECT_EQ(char_class('a'), CharClass::letter);
  EXPECT_EQ(char_class(0x00E9), CharClass::letter);  // é
  EXPECT_EQ(char_class(0x65E5), CharClass::letter);  // 日
  EXPECT_EQ(char_class(0x02B0), CharClass::letter);  // modifier letter (Lm)
  EXPECT_EQ(char_class('7'), CharClass::number);
  EXPECT_EQ(char_class(0x0663), CharClass::number);  // Arabic-Indic three (Nd)
  EXPECT_EQ(char_class(0x216B), CharClass::number);  // Roman numeral twelve (Nl)
  EXPECT_EQ(char_class(0x00B2), CharClass::number);  // superscript two (No)
  for (uint32_t cp : {0x09u, 0x0Au, 0x0Bu, 0x0Cu, 0x0Du, 0x20u, 0x85u, 0xA0u, 0x1680u, 0x2000u,
                      0x200Au, 0x2028u, 0x2029u, 0x202Fu, 0x205Fu, 0x3000u})
    EXPECT_EQ(char_class(cp), CharClass::space) << std::hex << cp;
  // Python's str.isspace() says yes to these; GPT-2's \s (White_Space) says no.
  for (uint32_t cp : {0x1Cu, 0x1Du, 0x1Eu, 0x1Fu, 0x180Eu, 0x200Bu})
    EXPECT_EQ(char_class(cp), CharClass::other) << std::hex << cp;
  EXPECT_EQ(char_class('\''), CharClass::other);
  EXPECT_EQ(char_class(0x0301), CharClass::other);   // combining acute (Mn)
  EXPECT_EQ(char_class(0x1F600), CharClass::other);  // emoji (So)
}

// OpenAI's encoder.py bpe(), transcribed: symbols are strings, and each round
// merges every occurrence of the lowest-ranked pair, left to right.
class ReferenceBpe {
 public:
  ReferenceBpe() {
    const auto encoder =
        nlohmann::json::parse(read_file(LSGPT_SOURCE_DIR "/data/gpt2/encoder.json"));
    for (const auto& [symbol, id] : encoder.items()) id_of_[symbol] = id.get<int32_t>();
    std::istringstream merges(read_file(LSGPT_SOURCE_DIR "/data/gpt2/vocab.bpe"));
    std::string line;
    std::getline(merges, line);  // #version
    int rank = 0;
    while (std::getline(merges, line)) {
      const size_t space = line.find(' ');
      if (space == std::string::npos) continue;
      rank_[{line.substr(0, space), line.substr(space + 1)}] = rank++;
    }
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cp = printable ? b : 256 + n++;
      std::string s;
      if (cp < 0x80) {
        s += char(cp);
      } else {
        s += char(0xC0 | (cp >> 6));
        s += char(0x80 | (cp & 0x3F));
      }
      byte_symbol_[b] = s;
    }
  }

  Ids encode_piece(std::string_view piece) const {
    std::vector<std::string> word;
    for (const char c : piece) word.push_back(byte_symbol_[static_cast<unsigned char>(c)]);
    while (word.size() > 1) {
      int best = INT32_MAX;
      std::pair<std::string, std::string> best_pair;
      for (size_t i = 0; i + 1 < word.size(); ++i) {
        const auto it = rank_.find({word[i], word[i + 1]});
        if (it != rank_.end() && it->second < best) {
          best = it->second;
          best_pair = it->first;
        }
      }
      if (best == INT32_MAX) break;
      std::vector<std::string> merged;
      for (size_t i = 0; i < word.size();) {
        if (i + 1 < word.size() && word[i] == best_pair.first && word[i + 1] == best_pair.second) {
          merged.push_back(word[i] + word[i + 1]);
          i += 2;
        } else {
          merged.push_back(word[i++]);
        }
      }
      word = std::move(merged);
    }
    Ids ids;
    for (const auto& s : word) ids.push_back(id_of_.at(s));
    return ids;
  }

 private:
  std::map<std::pair<std::string, std::string>, int> rank_;
  std::unordered_map<std::string, int32_t> id_of_;
  std::string byte_symbol_[256];
};

TEST(Tokenizer, BpeMatchesEncoderPyOnRandomPieces) {
  static const ReferenceBpe reference;
  std::mt19937_64 rng(7);
  // Each text is a single pre-tokenisation piece (an optional space, then a
  // run of one class), so the comparison is of the merges alone. Small
  // alphabets make many merges; lengths past 256 skip the piece cache.
  const std::vector<std::string> alphabets = {"etaoinshr", "abcdefghijklmnopqrstuvwxyzABC",
                                              "0123456789", "!.-=*#\"'", "ab"};
  for (int trial = 0; trial < 1500; ++trial) {
    const std::string& alphabet = alphabets[trial % alphabets.size()];
    const size_t len = 1 + rng() % (trial % 10 == 0 ? 600 : 24);
    std::string piece = (rng() % 2 && alphabet != "!.-=*#\"'") ? " " : "";
    for (size_t i = 0; i < len; ++i) piece += alphabet[rng() % alphabet.size()];
    ASSERT_EQ(pieces_of(piece).size(), 1u) << piece;
    ASSERT_EQ(gpt2().encode(piece), reference.encode_piece(piece)) << "piece: \"" << piece << "\"";
  }
}

// The same pinned counts and hashes as `tools/compare_tokenizer.py
// --reference openai --checksum` prints for these files.
struct CorpusCase {
  const char* part;
  size_t tokens;
  uint64_t fnv1a;
};

class WikiText2 : public ::testing::TestWithParam<CorpusCase> {};

TEST_P(WikiText2, EncodesLikeOpenAiAndRoundTrips) {
  const CorpusCase c = GetParam();
  const std::string text = read_file(data_testing::wikitext2(c.part));
  ASSERT_GT(text.size(), 1000000u);
  const auto start = std::chrono::steady_clock::now();
  const Ids ids = gpt2().encode(text);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(ids.size(), c.tokens);
  EXPECT_EQ(data_testing::fnv1a(ids), c.fnv1a);
  EXPECT_TRUE(gpt2().decode(ids) == text);
  RecordProperty("encode_seconds", std::to_string(seconds));
}

INSTANTIATE_TEST_SUITE_P(Tokenizer, WikiText2,
                         ::testing::Values(CorpusCase{"valid", 258659, 0x401eab52e6652dd1ull},
                                           CorpusCase{"test", 295877, 0xeeb9b6a7c5c7df94ull},
                                           CorpusCase{"train", 2448382, 0x6b3470a4c72dfbbeull}),
                         [](const auto& info) { return std::string(info.param.part); });

// Random strings that hit every branch: invalid and truncated UTF-8, all
// kinds of white space, letters and digits of several scripts, contractions,
// the end-of-text literal and its near misses.
std::string random_text(std::mt19937_64& rng, size_t max_len) {
  // clang-format off
  static const std::vector<std::string> atoms = {
      "a", "Z", "q", "the", " ", " ", " ", "  ", "\n", "\n\n", "\t", "\r\n", "\x0b", "\x0c",
      "\x1c", "\x1f", "\xc2\x85", "\xc2\xa0", "\xe3\x80\x80", "\xe2\x80\xa8", "'", "'s", "'ll",
      "'LL", "!", "...", "-", "=", "7", "42", "\xd9\xa3", "\xc3\xa9", "\xe6\x97\xa5",
      "\xf0\x9f\x98\x80", "\xcc\x81", "<|endoftext|>", "<|endoftext", "|>", "\xff", "\xfe",
      "\xc0\x80", "\xed\xa0\x80", "\xe3\x81", "\x80", "\xf4\x90\x80\x80", "\xc3",
      std::string(1, '\0')};
  // clang-format on
  const size_t len = rng() % (max_len + 1);
  std::string s;
  while (s.size() < len) {
    if (rng() % 4 == 0)
      s += static_cast<char>(rng() % 256);
    else
      s += atoms[rng() % atoms.size()];
  }
  return s;
}

TEST(Tokenizer, RoundTripsRandomBytesIncludingInvalidUtf8) {
  std::mt19937_64 rng(2024);
  for (int trial = 0; trial < 4000; ++trial) {
    const std::string text = random_text(rng, 120);
    const Ids ids = gpt2().encode(text);
    for (const int32_t id : ids) ASSERT_TRUE(id >= 0 && id < gpt2().vocab_size());
    ASSERT_TRUE(gpt2().decode(ids) == text) << "trial " << trial;
  }
  // Uniformly random bytes, long enough for pieces past the cache limit.
  for (int trial = 0; trial < 200; ++trial) {
    std::string text(rng() % 2000, '\0');
    for (auto& c : text) c = static_cast<char>(rng() % 256);
    ASSERT_TRUE(gpt2().decode(gpt2().encode(text)) == text) << "trial " << trial;
  }
}

TEST(Tokenizer, LongPiecesStayFast) {
  // One pre-tokenisation piece of 200 000 bytes: quadratic merging would take
  // minutes.
  std::string dashes(200000, '-');
  const auto start = std::chrono::steady_clock::now();
  const Ids ids = gpt2().encode(dashes);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 2.0);
  EXPECT_EQ(gpt2().decode(ids), dashes);
}

TEST(Tokenizer, DefaultDirHonoursEnvironment) {
  ::unsetenv("LSGPT_TOKENIZER_DIR");
  EXPECT_EQ(Tokenizer::default_dir(), std::string(LSGPT_SOURCE_DIR) + "/data/gpt2");
  ::setenv("LSGPT_TOKENIZER_DIR", "/somewhere/else", 1);
  EXPECT_EQ(Tokenizer::default_dir(), "/somewhere/else");
  ::unsetenv("LSGPT_TOKENIZER_DIR");
}

// Loads `dir` expecting an lsgpt::Error whose message contains `words`.
void expect_load_error(const std::string& dir, const std::string& words) {
  try {
    Tokenizer::load(dir);
    ADD_FAILURE() << "loaded without error; expected \"" << words << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos)
        << "expected \"" << words << "\" in: " << e.what();
  }
}

TEST(Tokenizer, RefusesMissingOrCorruptFiles) {
  const std::string encoder = read_file(LSGPT_SOURCE_DIR "/data/gpt2/encoder.json");
  const std::string merges = read_file(LSGPT_SOURCE_DIR "/data/gpt2/vocab.bpe");
  ScratchDir dir;
  expect_load_error(dir.file("absent"), "encoder.json");

  write_file(dir.file("encoder.json"), encoder);
  expect_load_error(dir.file(""), "vocab.bpe");  // merges missing

  write_file(dir.file("vocab.bpe"), merges);
  write_file(dir.file("encoder.json"), encoder.substr(0, encoder.size() / 2));
  expect_load_error(dir.file(""), "not valid JSON");

  write_file(dir.file("encoder.json"), "[1, 2, 3]");
  expect_load_error(dir.file(""), "not a JSON object");

  auto json = nlohmann::json::parse(encoder);
  json.erase("<|endoftext|>");
  write_file(dir.file("encoder.json"), json.dump());
  expect_load_error(dir.file(""), "<|endoftext|>");

  json = nlohmann::json::parse(encoder);
  json["the"] = 123456;
  write_file(dir.file("encoder.json"), json.dump());
  expect_load_error(dir.file(""), "has id 123456");

  json = nlohmann::json::parse(encoder);
  json["the"] = 0;  // id 0 already belongs to "!"
  write_file(dir.file("encoder.json"), json.dump());
  expect_load_error(dir.file(""), "used twice");

  write_file(dir.file("encoder.json"), encoder);
  write_file(dir.file("vocab.bpe"), merges + "Ġzz qq\n");
  expect_load_error(dir.file(""), "is not in");

  write_file(dir.file("vocab.bpe"), merges + "three symbols here\n");
  expect_load_error(dir.file(""), "not two symbols");

  // Moving merge 6 ("Ġt he") first makes it use "Ġt" before merge "Ġ t" makes it.
  std::string reordered = merges;
  const size_t the = reordered.find("\nĠt he\n");
  ASSERT_NE(the, std::string::npos);
  reordered.erase(the, std::string("\nĠt he").size());
  reordered.insert(reordered.find('\n') + 1, "Ġt he\n");
  write_file(dir.file("vocab.bpe"), reordered);
  expect_load_error(dir.file(""), "training order");

  // An empty or cut merge list used to load and encode "Hello world" byte by byte.
  write_file(dir.file("vocab.bpe"), "");
  expect_load_error(dir.file(""), "has no merge making token 256 (0 merges read)");
  write_file(dir.file("vocab.bpe"), merges.substr(0, merges.find("\nĠt he\n")));
  expect_load_error(dir.file(""), "(6 merges read); the list is incomplete");

  write_file(dir.file("vocab.bpe"), merges);
  EXPECT_EQ(Tokenizer::load(dir.file("")).encode("Hello world"), (Ids{15496, 995}));
}

// A directory in place of either file: the merge list used to read as empty.
TEST(Tokenizer, RefusesDirectoriesForItsFiles) {
  ScratchDir dir;
  std::filesystem::create_directories(dir.file("a/encoder.json"));
  write_file(dir.file("a/vocab.bpe"), read_file(LSGPT_SOURCE_DIR "/data/gpt2/vocab.bpe"));
  expect_load_error(dir.file("a"), "encoder.json is a directory, not a file");
  std::filesystem::create_directories(dir.file("b/vocab.bpe"));
  write_file(dir.file("b/encoder.json"), read_file(LSGPT_SOURCE_DIR "/data/gpt2/encoder.json"));
  expect_load_error(dir.file("b"), "vocab.bpe is a directory, not a file");
}

TEST(Tokenizer, CopiesEncodeConcurrently) {
  // Copies share one piece cache; a fresh tokenizer makes the threads fill it
  // at the same time.
  const std::string text = read_file(data_testing::wikitext2("valid")).substr(0, 200000);
  const Ids expected = gpt2().encode(text);
  const Tokenizer fresh = Tokenizer::load(LSGPT_SOURCE_DIR "/data/gpt2");
  const Tokenizer copy = fresh;
  std::vector<Ids> results(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back([&, t] { results[t] = copy.encode(text); });
  for (auto& th : threads) th.join();
  for (const auto& r : results) EXPECT_EQ(r, expected);
}

}  // namespace test_tokenizer
}  // namespace
}  // namespace lsgpt
