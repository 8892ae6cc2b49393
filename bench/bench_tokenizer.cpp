// Tokenizer speed: loads the GPT-2 tokenizer, then encodes the bundled
// WikiText-2 train split (10.8 MB) three ways and prints MB/s and tokens/s:
// a fresh tokenizer (cold piece cache), the same tokenizer again (warm
// cache), and through StreamingEncoder in 1 MiB chunks as `lsgpt prepare`
// does. Also times decoding. Encoding is single-threaded, so besides wall
// time it reports the thread's CPU time, which is what an idle core would
// take when the machine is shared; each figure is the best of three runs.
// A benchmark program, not a test.
//   bench_tokenizer [TEXT_FILE]
#include <time.h>

#include <algorithm>
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

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Best wall and CPU time over the runs of one measurement.
struct Timing {
  double wall = 1e30, cpu = 1e30;
  template <typename F>
  void run(F&& f) {
    const auto wall_start = std::chrono::steady_clock::now();
    const double cpu_start = thread_cpu_seconds();
    f();
    cpu = std::min(cpu, thread_cpu_seconds() - cpu_start);
    wall = std::min(
        wall, std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count());
  }
};

void report(const char* what, size_t bytes, size_t tokens, const Timing& t) {
  const auto mb = static_cast<double>(bytes) / 1e6, mtok = static_cast<double>(tokens) / 1e6;
  std::printf("%-36s wall %6.3f s %6.1f MB/s | cpu %6.3f s %6.1f MB/s %5.2f M tokens/s\n", what,
              t.wall, mb / t.wall, t.cpu, mb / t.cpu, mtok / t.cpu);
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

  const std::string dir = lsgpt::Tokenizer::default_dir();
  Timing load, cold, warm, streaming, decode;
  std::vector<int32_t> ids, again, streamed;
  std::string back;
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<lsgpt::Tokenizer> fresh;
    load.run([&] { fresh.push_back(lsgpt::Tokenizer::load(dir)); });
    fresh.push_back(lsgpt::Tokenizer::load(dir));
    cold.run([&] { ids = fresh[0].encode(text); });
    warm.run([&] { again = fresh[0].encode(text); });
    decode.run([&] { back = fresh[0].decode(ids); });
    streaming.run([&] {
      lsgpt::StreamingEncoder encoder(fresh[1]);
      streamed.clear();
      const size_t chunk = size_t(1) << 20;
      for (size_t off = 0; off < text.size(); off += chunk)
        encoder.write(std::string_view(text).substr(off, chunk), streamed);
      encoder.finish(streamed);
    });
  }
  std::printf("%-36s wall %6.3f s             | cpu %6.3f s\n", "load encoder.json + vocab.bpe",
              load.wall, load.cpu);
  report("encode, cold piece cache", text.size(), ids.size(), cold);
  report("encode, warm piece cache", text.size(), again.size(), warm);
  report("streaming 1 MiB chunks, cold cache", text.size(), streamed.size(), streaming);
  report("decode", back.size(), ids.size(), decode);

  if (streamed != ids || again != ids || back != text) {
    std::fprintf(stderr, "bench_tokenizer: results disagree (warm, streamed or decoded)\n");
    return 1;
  }
  return 0;
} catch (const lsgpt::Error& e) {
  std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
  return 1;
}
