// Tokenizer speed: loads the GPT-2 tokenizer, then encodes the bundled
// WikiText-2 train split (10.8 MB) three ways and prints MB/s and tokens/s:
// a fresh tokenizer (cold piece cache), the same tokenizer again (warm
// cache), and through StreamingEncoder in 1 MiB chunks as `lsgpt prepare`
// does. Also times decoding. A benchmark program, not a test.
//   bench_tokenizer [TEXT_FILE]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/prepare.h"
#include "tokenizer/streaming_encoder.h"
#include "tokenizer/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

void report(const char* what, size_t bytes, size_t tokens, double s) {
  std::printf("%-34s %7.3f s  %7.1f MB/s  %6.2f M tokens/s\n", what, s,
              static_cast<double>(bytes) / 1e6 / s, static_cast<double>(tokens) / 1e6 / s);
}

}  // namespace

int main(int argc, char** argv) try {
  const std::string path =
      argc > 1 ? argv[1] : lsgpt::bundled_wikitext2_dir() + "/wiki.train.tokens";
  std::ifstream in(path, std::ios::binary);
  if (!in) lsgpt::fail("cannot open ", path);
  std::ostringstream os;
  os << in.rdbuf();
  const std::string text = os.str();
  std::printf("text: %s (%.2f MB)\n", path.c_str(), static_cast<double>(text.size()) / 1e6);

  auto t = Clock::now();
  const lsgpt::Tokenizer cold = lsgpt::Tokenizer::load(lsgpt::Tokenizer::default_dir());
  std::printf("%-34s %7.3f s\n", "load encoder.json + vocab.bpe", seconds_since(t));

  t = Clock::now();
  const std::vector<int32_t> ids = cold.encode(text);
  report("encode, cold piece cache", text.size(), ids.size(), seconds_since(t));

  t = Clock::now();
  const size_t warm_count = cold.encode(text).size();
  report("encode, warm piece cache", text.size(), warm_count, seconds_since(t));

  const lsgpt::Tokenizer fresh = lsgpt::Tokenizer::load(lsgpt::Tokenizer::default_dir());
  t = Clock::now();
  lsgpt::StreamingEncoder streaming(fresh);
  std::vector<int32_t> streamed;
  const size_t chunk = size_t(1) << 20;
  for (size_t off = 0; off < text.size(); off += chunk)
    streaming.write(std::string_view(text).substr(off, chunk), streamed);
  streaming.finish(streamed);
  report("streaming 1 MiB chunks, cold cache", text.size(), streamed.size(), seconds_since(t));

  t = Clock::now();
  const std::string back = cold.decode(ids);
  report("decode", back.size(), ids.size(), seconds_since(t));

  if (streamed != ids || back != text || warm_count != ids.size()) {
    std::fprintf(stderr, "bench_tokenizer: results disagree (streamed, decoded or warm)\n");
    return 1;
  }
  return 0;
} catch (const lsgpt::Error& e) {
  std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
  return 1;
}
