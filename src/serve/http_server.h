// The HTTP face of the server (cpp-httplib): POST /v1/completions (whole or
// streamed as server-sent events), GET /v1/models, /health and /metrics, and
// OpenAI-style JSON errors for everything refused. Each connection runs on a
// thread of httplib's pool; only the scheduler's thread touches the engine.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "serve/metrics.h"
#include "serve/openai_protocol.h"
#include "serve/scheduler.h"
#include "tokenizer/tokenizer.h"

namespace lsgpt::serve {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;             // 0: any free port (bind() says which)
  size_t max_body_bytes = 1 << 20;
  int threads = 16;            // connections served at once
};

class HttpServer {
 public:
  // `tokenizer` may be null (a model with another vocabulary: token ids only).
  HttpServer(Scheduler& scheduler, Metrics& metrics, const ServerLimits& limits,
             const Tokenizer* tokenizer, const HttpOptions& options);
  ~HttpServer();
  // Binds the listening socket; returns the port. Throws lsgpt::Error.
  int bind();
  // Serves until shutdown(); returns false when the listener failed.
  bool run();
  // Graceful stop: refuse new requests (503), let running ones finish for up
  // to `deadline`, cancel the rest, let their streams end, stop listening.
  void shutdown(std::chrono::milliseconds deadline);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace lsgpt::serve
