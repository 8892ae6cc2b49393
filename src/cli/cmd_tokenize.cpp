// `lsgpt tokenize`: text on standard input -> GPT-2 ids on standard output,
// or back with --decode. Encoding streams (any input size); decoding reads
// and checks every id before it prints anything, so a bad id prints no text.
#include <charconv>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "io/standard_output.h"
#include "tokenizer/streaming_encoder.h"
#include "tokenizer/tokenizer.h"

namespace lsgpt::cli {

namespace {

struct TokenizeOptions {
  bool decode = false;
  std::string tokenizer_dir = Tokenizer::default_dir();
};

void encode_stdin(const Tokenizer& tokenizer) {
  StreamingEncoder encoder(tokenizer);
  std::vector<char> chunk(size_t(1) << 20);
  std::vector<int32_t> ids;
  std::string line;
  bool first = true;
  auto print_ids = [&] {
    line.clear();
    for (const int32_t id : ids) {
      if (!first) line += ' ';
      first = false;
      line += std::to_string(id);
    }
    write_stdout(line);
    ids.clear();
  };
  size_t n = 0;
  while ((n = std::fread(chunk.data(), 1, chunk.size(), stdin)) > 0) {
    encoder.write(std::string_view(chunk.data(), n), ids);
    print_ids();
  }
  if (std::ferror(stdin)) fail("cannot read standard input");
  encoder.finish(ids);
  print_ids();
  write_stdout("\n");
}

void decode_stdin(const Tokenizer& tokenizer) {
  std::string input;
  std::vector<char> chunk(size_t(1) << 20);
  size_t n = 0;
  while ((n = std::fread(chunk.data(), 1, chunk.size(), stdin)) > 0) input.append(chunk.data(), n);
  if (std::ferror(stdin)) fail("cannot read standard input");

  std::vector<int32_t> ids;
  const auto is_space = [](char c) { return c == ' ' || (c >= '\t' && c <= '\r'); };
  size_t pos = 0;
  while (pos < input.size()) {
    if (is_space(input[pos])) {
      ++pos;
      continue;
    }
    size_t end = pos;
    while (end < input.size() && !is_space(input[end])) ++end;
    const std::string_view word(input.data() + pos, end - pos);
    int64_t id = -1;
    const auto [ptr, ec] = std::from_chars(word.data(), word.data() + word.size(), id);
    if (ec != std::errc() || ptr != word.data() + word.size() || id < 0 ||
        id >= tokenizer.vocab_size())
      fail("tokenize --decode: \"", word.substr(0, 40), "\" (item ", ids.size() + 1,
           " of the input) is not a token id in 0..", tokenizer.vocab_size() - 1);
    ids.push_back(static_cast<int32_t>(id));
    pos = end;
  }
  write_stdout(tokenizer.decode(ids));
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto options = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "tokenize",
      "Encode text from standard input to GPT-2 token ids (printed separated by spaces), "
      "or decode ids back to text with --decode");
  cmd->add_flag("--decode,-d", options->decode,
                "Read whitespace-separated ids and print their text exactly (no newline added)");
  cmd->add_option("--tokenizer-dir", options->tokenizer_dir,
                  "Directory with encoder.json and vocab.bpe")
      ->capture_default_str();
  cmd->callback([options] {
    const Tokenizer tokenizer = Tokenizer::load(options->tokenizer_dir);
    if (options->decode)
      decode_stdin(tokenizer);
    else
      encode_stdin(tokenizer);
  });
}

}  // namespace lsgpt::cli
