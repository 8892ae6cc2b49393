// Load client for `lsgpt serve` (bench/serve_load.sh drives it on the GPU).
//
//   bench_serve --port P --concurrency 1,4,16,64,256 --prompt-tokens 3968
//       --max-tokens 128 --requests 2 --json out.jsonl --label ls-4k
//     For each concurrency C: C client threads, each sending --requests
//     streamed completions one after another (random token-id prompts, so
//     nothing is shared between requests, sampled at temperature 1 with
//     per-request seeds). Reports output tokens/s over the level's wall time,
//     time to first token and inter-token latency (median and p99), one JSON
//     line per level.
//   bench_serve --write-checkpoint FILE [--n-local 11 --window 100 --seq-len 32768]
//     Writes a randomly initialised GPT-2 small shaped checkpoint (GPT-2's
//     initialisation, seed --seed) to serve; --n-local 0 is MHSA.
#include <httplib.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "io/checkpoint.h"
#include "model/gpt.h"
#include "ops/backend.h"

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::vector<int> concurrency = {1, 4, 16, 64, 256};
  int prompt_tokens = 128, max_tokens = 128, requests = 2, vocab = 50257;
  uint64_t seed = 1;
  std::string json_path, label;
  // --write-checkpoint
  std::string write_checkpoint;
  int n_layer = 12, n_head = 12, d_model = 768, seq_len = 32768, n_local = 11, window = 100;
};

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// What one streamed request saw.
struct Trace {
  bool ok = false;
  std::string error;
  double ttft = -1;             // seconds from sending to the first token
  std::vector<double> gaps;     // seconds between consecutive tokens
  int tokens = 0;
};

std::string request_body(const Options& o, std::mt19937_64& rng, uint64_t seed) {
  std::string ids;
  ids.reserve(size_t(o.prompt_tokens) * 6);
  for (int i = 0; i < o.prompt_tokens; ++i) {
    if (i) ids += ',';
    ids += std::to_string(rng() % uint64_t(o.vocab - 1));  // never the end-of-text token
  }
  return "{\"prompt\":[" + ids + "],\"max_tokens\":" + std::to_string(o.max_tokens) +
         ",\"temperature\":1.0,\"seed\":" + std::to_string(seed) + ",\"stream\":true}";
}

Trace stream_one(const Options& o, const std::string& body) {
  httplib::Client cli(o.host, o.port);
  cli.set_connection_timeout(30);
  cli.set_read_timeout(3600);
  cli.set_write_timeout(60);
  Trace t;
  std::string pending;
  const Clock::time_point sent = Clock::now();
  Clock::time_point last;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body;
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    pending.append(data, n);
    size_t cut;
    while ((cut = pending.find("\n\n")) != std::string::npos) {
      const std::string event = pending.substr(0, cut);
      pending.erase(0, cut + 2);
      if (event.rfind("data: ", 0) != 0) continue;
      if (event == "data: [DONE]") {
        t.ok = t.error.empty();
        continue;
      }
      const json j = json::parse(event.substr(6), nullptr, false);
      if (j.is_discarded() || j.contains("error")) {
        t.error = j.is_discarded() ? "unparsable event" : j["error"]["message"].get<std::string>();
        continue;
      }
      const size_t k = j["choices"][0]["token_ids"].size();
      const Clock::time_point now = Clock::now();
      for (size_t i = 0; i < k; ++i) {
        if (t.tokens == 0) {
          t.ttft = std::chrono::duration<double>(now - sent).count();
        } else {
          t.gaps.push_back(i == 0 ? std::chrono::duration<double>(now - last).count() : 0.0);
        }
        ++t.tokens;
      }
      last = now;
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  if (!cli.send(req, res, err)) t.error = "HTTP error " + httplib::to_string(err);
  else if (res.status != 200) t.error = "status " + std::to_string(res.status) + ": " + res.body;
  if (!t.ok && t.error.empty()) t.error = "stream ended without [DONE]";
  return t;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const double at = p * double(v.size() - 1);
  const size_t lo = size_t(at);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (at - double(lo));
}

double ms(double s) { return std::round(s * 1e5) / 100.0; }

json run_level(const Options& o, int concurrency) {
  std::vector<Trace> traces(size_t(concurrency) * o.requests);
  std::vector<std::string> bodies(traces.size());
  std::mt19937_64 rng(o.seed * 1000003 + uint64_t(concurrency));
  for (size_t i = 0; i < bodies.size(); ++i) bodies[i] = request_body(o, rng, o.seed + i);
  const Clock::time_point t0 = Clock::now();
  std::vector<std::thread> clients;
  for (int c = 0; c < concurrency; ++c)
    clients.emplace_back([&, c] {
      for (int k = 0; k < o.requests; ++k) {
        const size_t i = size_t(c) * o.requests + k;
        traces[i] = stream_one(o, bodies[i]);
      }
    });
  for (auto& t : clients) t.join();
  const double wall = seconds_since(t0);
  std::vector<double> ttft, gaps;
  long tokens = 0;
  int failed = 0;
  std::string first_error;
  for (const Trace& t : traces) {
    tokens += t.tokens;
    if (!t.ok) {
      if (!failed) first_error = t.error;
      ++failed;
      continue;
    }
    ttft.push_back(t.ttft);
    gaps.insert(gaps.end(), t.gaps.begin(), t.gaps.end());
  }
  json rec = {{"label", o.label},
              {"concurrency", concurrency},
              {"requests", traces.size()},
              {"failed", failed},
              {"prompt_tokens", o.prompt_tokens},
              {"max_tokens", o.max_tokens},
              {"output_tokens", tokens},
              {"wall_s", std::round(wall * 1000) / 1000},
              {"output_tokens_per_s", std::round(double(tokens) / wall)},
              {"ttft_ms_p50", ms(percentile(ttft, 0.5))},
              {"ttft_ms_p99", ms(percentile(ttft, 0.99))},
              {"itl_ms_p50", ms(percentile(gaps, 0.5))},
              {"itl_ms_p99", ms(percentile(gaps, 0.99))}};
  if (failed) rec["first_error"] = first_error;
  return rec;
}

void write_checkpoint(const Options& o) {
  lsgpt::ModelConfig cfg;
  cfg.n_layer = o.n_layer;
  cfg.n_head = o.n_head;
  cfg.d_model = o.d_model;
  cfg.seq_len = o.seq_len;
  cfg.vocab_size = o.vocab;
  cfg.eot_token = o.vocab - 1;
  cfg.n_local = {o.n_local};
  cfg.window = o.window;
  cfg.normalize_and_validate();
  auto be = lsgpt::make_backend("cpu");
  lsgpt::GPT model(cfg, *be);
  model.init_random(o.seed);
  lsgpt::Checkpoint ck;
  ck.model = cfg;
  ck.params = model.parameters();
  lsgpt::save_checkpoint(o.write_checkpoint, ck);
  std::printf("bench_serve: wrote %s (%zu parameters, n_local %d, window %d, %d positions)\n",
              o.write_checkpoint.c_str(), ck.params.size(), o.n_local, o.window, o.seq_len);
}

int run(int argc, char** argv) {
  Options o;
  CLI::App app{"Load client for lsgpt serve: streamed completions at several concurrencies"};
  app.add_option("--host", o.host)->capture_default_str();
  app.add_option("--port", o.port)->check(CLI::Range(1, 65535))->capture_default_str();
  app.add_option("--concurrency", o.concurrency, "client streams, e.g. 1,4,16")
      ->delimiter(',')->check(CLI::Range(1, 4096));
  app.add_option("--prompt-tokens", o.prompt_tokens)->check(CLI::Range(1, 1 << 24))->capture_default_str();
  app.add_option("--max-tokens", o.max_tokens)->check(CLI::Range(1, 1 << 24))->capture_default_str();
  app.add_option("--requests", o.requests, "requests per stream, one after another")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--vocab", o.vocab, "vocabulary of the served model")->check(CLI::Range(2, 1 << 24));
  app.add_option("--seed", o.seed, "prompts and sampling seeds (and weights)")->capture_default_str();
  app.add_option("--json", o.json_path, "append one JSON line per concurrency here");
  app.add_option("--label", o.label, "copied into every JSON line");
  app.add_option("--write-checkpoint", o.write_checkpoint,
                 "write a random GPT-2 small shaped checkpoint to this file and exit");
  app.add_option("--n-layer", o.n_layer)->check(CLI::Range(1, 1024));
  app.add_option("--n-head", o.n_head)->check(CLI::Range(1, 1024));
  app.add_option("--d-model", o.d_model)->check(CLI::Range(1, 1 << 16));
  app.add_option("--seq-len", o.seq_len)->check(CLI::Range(1, 1 << 24));
  app.add_option("--n-local", o.n_local)->check(CLI::Range(0, 1024));
  app.add_option("--window", o.window)->check(CLI::Range(1, 1 << 24));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "bench_serve: %s (see bench_serve --help)\n", e.what());
    return 2;
  }
  if (!o.write_checkpoint.empty()) {
    write_checkpoint(o);
    return 0;
  }
  std::ofstream out;
  if (!o.json_path.empty()) {
    out.open(o.json_path, std::ios::app);
    if (!out) lsgpt::fail("cannot write ", o.json_path);
  }
  int failures = 0;
  for (int c : o.concurrency) {
    const json rec = run_level(o, c);
    std::printf("%s\n", rec.dump().c_str());
    std::fflush(stdout);
    if (out) {
      out << rec.dump() << "\n";
      out.flush();
      if (!out) lsgpt::fail("cannot write ", o.json_path);
    }
    failures += rec["failed"].get<int>();
  }
  return failures ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_serve: error: %s\n", e.what());
    return 1;
  }
}
