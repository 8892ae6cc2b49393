// lsgpt serve: an OpenAI-compatible HTTP server over the inference engine
// (docs/SERVE.md). Loads the checkpoint, fixes the slot count from a memory
// budget, starts the engine thread and the HTTP listener, and on SIGTERM or
// SIGINT stops gracefully: no new requests, running ones finish within
// --shutdown-timeout or are cancelled, exit status 0.
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <thread>

#include "cli/checkpoint_model.h"
#include "cli/commands.h"
#include "core/error.h"
#include "infer/engine.h"
#include "serve/capacity.h"
#include "serve/http_server.h"
#include "serve/scheduler.h"
#include "tokenizer/tokenizer.h"

namespace lsgpt::cli {
namespace {

constexpr size_t kMiB = size_t(1) << 20;

struct ServeFlags {
  std::string checkpoint, device = "cpu", host = "127.0.0.1", tokenizer_dir, model_name;
  int port = 8080, max_batch = 0, context = 0, max_queue = 64, max_tokens = 0;
  int prefill_tokens = 2048;
  double memory_fraction = 0.9, shutdown_timeout = 10;
  size_t max_body_bytes = 1 << 20;
};

void say(const std::string& line) {
  std::printf("lsgpt serve: %s\n", line.c_str());
  std::fflush(stdout);
}

// "12.5 MiB", or KiB below one MiB (a tiny model's cache).
std::string size_text(size_t bytes) {
  char buf[64];
  if (bytes < kMiB) std::snprintf(buf, sizeof buf, "%.1f KiB", double(bytes) / 1024);
  else std::snprintf(buf, sizeof buf, "%.1f MiB", double(bytes) / double(kMiB));
  return buf;
}

std::string describe(const ModelConfig& cfg) {
  int local = 0;
  for (int n : cfg.n_local) local += n;
  const int heads = cfg.n_layer * cfg.n_head;
  std::string attention = local == 0 ? "MHSA"
                                     : "LS " + std::to_string(local) + "/" + std::to_string(heads) +
                                           " heads local, w = " + std::to_string(cfg.window);
  return std::to_string(cfg.n_layer) + " layers, d_model " + std::to_string(cfg.d_model) + ", " +
         attention + ", vocabulary " + std::to_string(cfg.vocab_size);
}

// --max-batch, or as many sequences as the memory budget holds.
int choose_slots(const ServeFlags& f, GPT& model, int context) {
  const size_t free_bytes = model.backend().free_memory_bytes();
  const size_t budget = size_t(double(free_bytes) * f.memory_fraction);
  if (free_bytes > 0) {
    const serve::Capacity c = serve::plan_capacity(model, context, budget);
    say("memory budget " + std::to_string(budget / kMiB) + " MiB (" +
        std::to_string(int(f.memory_fraction * 100)) + "% of " + std::to_string(free_bytes / kMiB) +
        " MiB free); KV cache " + size_text(c.kv_bytes_per_sequence) + " a sequence of " +
        std::to_string(context) + " positions (MHSA of this shape: " +
        size_text(c.mhsa_kv_bytes_per_sequence) + "); fits " +
        std::to_string(c.slots) + " sequences (MHSA: " + std::to_string(c.mhsa_slots) + ")");
    if (f.max_batch > 0) return f.max_batch;  // the engine refuses it if it does not fit
    // Host memory is the CPU's budget too, but a CPU decodes few sequences
    // usefully at once: a fixed default there.
    if (f.device == "cpu") return 8;
    if (c.slots < 1)
      fail("not even one sequence of ", context, " positions fits in ", budget / kMiB,
           " MiB; use a smaller --context or a larger --memory-fraction");
    return c.slots;
  }
  return f.max_batch > 0 ? f.max_batch : 8;  // no memory figure from the backend
}

std::optional<Tokenizer> load_tokenizer(const ServeFlags& f, const ModelConfig& cfg) {
  const std::string dir = f.tokenizer_dir.empty() ? Tokenizer::default_dir() : f.tokenizer_dir;
  Tokenizer tok = Tokenizer::load(dir);
  if (tok.vocab_size() == cfg.vocab_size) return tok;
  say("the model's vocabulary (" + std::to_string(cfg.vocab_size) + " tokens) is not the "
      "tokenizer's (" + std::to_string(tok.vocab_size()) + "): prompts must be token ids, "
      "answers carry token_ids and no text");
  return std::nullopt;
}

// Waits for SIGTERM or SIGINT (blocked in every thread) and stops the server.
void watch_signals(serve::HttpServer& server, std::atomic<bool>& done, double timeout_s) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  const timespec poll{0, 200'000'000};
  while (!done) {
    const int sig = sigtimedwait(&set, nullptr, &poll);
    if (sig != SIGTERM && sig != SIGINT) continue;
    say(std::string(sig == SIGTERM ? "SIGTERM" : "SIGINT") +
        ": no new requests; running ones finish within " + std::to_string(int(timeout_s)) +
        " s or are cancelled");
    server.shutdown(std::chrono::milliseconds(long(timeout_s * 1000)));
    return;
  }
}

void run_serve(const ServeFlags& f) {
  if (f.port < 0 || f.port > 65535) fail("--port must be between 0 and 65535, got ", f.port);
  if (f.max_batch < 0) fail("--max-batch must be >= 0 (0: from free memory), got ", f.max_batch);
  if (f.max_queue < 0) fail("--max-queue must be >= 0, got ", f.max_queue);
  if (f.max_tokens < 0) fail("--max-tokens must be >= 0, got ", f.max_tokens);
  if (f.prefill_tokens < 1) fail("--prefill-tokens must be >= 1, got ", f.prefill_tokens);
  if (!(f.memory_fraction > 0 && f.memory_fraction <= 1))
    fail("--memory-fraction must be in (0, 1], got ", f.memory_fraction);
  if (!(f.shutdown_timeout >= 0 && f.shutdown_timeout <= 86400))
    fail("--shutdown-timeout must be in [0, 86400] seconds, got ", f.shutdown_timeout);
  if (f.context < 0) fail("--context must be >= 0 (0: the model's), got ", f.context);
  // Signals are taken by one thread only; every thread started from here on
  // (OpenMP's, httplib's, the engine's) inherits the mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client that left is a failed write, not a death

  LoadedModel m = load_model(f.checkpoint, f.device);
  GPT& model = *m.model;
  const ModelConfig& cfg = model.config();
  const int context = f.context > 0 ? f.context : cfg.seq_len;
  std::optional<Tokenizer> tok = load_tokenizer(f, cfg);
  say("model " + f.checkpoint + ": " + describe(cfg) + "; device " + model.backend().name());

  EngineOptions eo;
  eo.max_context = context;
  eo.max_batch = choose_slots(f, model, context);
  if (tok) eo.detokenize = [&tok](int32_t id) { return tok->decode_token(id); };
  InferenceEngine engine(model, eo);
  say("slots " + std::to_string(eo.max_batch) + " of " + std::to_string(context) +
      " positions (engine " + std::to_string(engine.memory_bytes() / kMiB) + " MiB); queue " +
      std::to_string(f.max_queue));

  serve::Metrics metrics;
  serve::SchedulerOptions so;
  so.max_queue = f.max_queue;
  so.prefill_tokens_per_step = f.prefill_tokens;
  serve::Scheduler scheduler(engine, so, metrics);
  serve::ServerLimits limits;
  limits.context = context;
  limits.vocab_size = cfg.vocab_size;
  limits.eot_token = cfg.eot_token;
  limits.max_tokens = f.max_tokens;
  limits.model_id = f.model_name.empty() ? std::filesystem::path(f.checkpoint).stem().string()
                                         : f.model_name;
  serve::HttpOptions ho;
  ho.host = f.host;
  ho.port = f.port;
  ho.max_body_bytes = f.max_body_bytes;
  // Every admitted request has a thread, up to a sane number of threads
  // (beyond it connections wait in httplib's queue before being read).
  ho.threads = std::min(eo.max_batch + f.max_queue, 2048) + 8;
  serve::HttpServer server(scheduler, metrics, limits, tok ? &*tok : nullptr, ho);
  const int port = server.bind();
  say("model id '" + limits.model_id + "'; listening on http://" + f.host + ":" +
      std::to_string(port));
  std::atomic<bool> done{false};
  std::thread signals([&] { watch_signals(server, done, f.shutdown_timeout); });
  const bool ok = server.run();
  done = true;
  signals.join();
  scheduler.stop();
  if (!ok) fail("the HTTP listener on ", f.host, ":", port, " failed");
  say("stopped");
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto f = std::make_shared<ServeFlags>();
  CLI::App* cmd = app.add_subcommand("serve", "Serve a checkpoint over HTTP (OpenAI completions API)");
  cmd->add_option("--checkpoint", f->checkpoint, "checkpoint file")->required();
  cmd->add_option("--device", f->device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--host", f->host, "address to listen on (0.0.0.0: every interface)")
      ->capture_default_str();
  cmd->add_option("--port", f->port, "TCP port (0: any free port, printed at start)")
      ->capture_default_str();
  cmd->add_option("--max-batch", f->max_batch,
                  "sequences held at once (0: as many as --memory-fraction of free GPU memory "
                  "holds; 8 on the CPU)")->capture_default_str();
  cmd->add_option("--memory-fraction", f->memory_fraction,
                  "share of free device memory the slots may use")->capture_default_str();
  cmd->add_option("--context", f->context, "positions per sequence (0: the model's)")
      ->capture_default_str();
  cmd->add_option("--max-queue", f->max_queue, "requests waiting for a slot before 429")
      ->capture_default_str();
  cmd->add_option("--max-tokens", f->max_tokens, "largest max_tokens accepted (0: the context)")
      ->capture_default_str();
  cmd->add_option("--max-body-bytes", f->max_body_bytes, "largest request body (413 beyond)")
      ->capture_default_str();
  cmd->add_option("--prefill-tokens", f->prefill_tokens,
                  "prompt tokens prefilled between two decode steps while others decode")
      ->capture_default_str();
  cmd->add_option("--shutdown-timeout", f->shutdown_timeout,
                  "seconds running requests get to finish after SIGTERM")->capture_default_str();
  cmd->add_option("--model-name", f->model_name, "model id in the API (default: checkpoint name)");
  cmd->add_option("--tokenizer-dir", f->tokenizer_dir, "directory with encoder.json and vocab.bpe");
  cmd->callback([f] { run_serve(*f); });
}

}  // namespace lsgpt::cli
