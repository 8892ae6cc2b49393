// Helpers for the server tests: a tiny checkpoint, an in-process server on
// an ephemeral loopback port, and HTTP calls (whole and streamed) with
// bounded timeouts.
#pragma once

#include <httplib.h>

#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "infer/engine.h"
#include "io/checkpoint.h"
#include "model/gpt.h"
#include "ops/backend.h"
#include "serve/http_server.h"
#include "serve/metrics.h"
#include "serve/scheduler.h"
#include "tokenizer/tokenizer.h"

namespace lsgpt::testing {

using nlohmann::json;

// A random model whose weights (+-0.3, LayerNorm weights 1) spread the
// logits over several units, so samples are varied text.
inline ModelConfig serve_model_config(int seq_len, int vocab = 50257) {
  ModelConfig cfg;
  cfg.n_layer = 1;
  cfg.n_head = 2;
  cfg.d_model = 32;
  cfg.seq_len = seq_len;
  cfg.vocab_size = vocab;
  cfg.eot_token = vocab - 1;
  cfg.n_local = {1};
  cfg.window = 4;
  cfg.normalize_and_validate();
  return cfg;
}

inline void write_tiny_checkpoint(const std::string& path, const ModelConfig& cfg,
                                  uint64_t seed) {
  Checkpoint ck;
  ck.model = cfg;
  const ParamLayout layout = make_param_layout(cfg);
  ck.params.resize(layout.total);
  std::mt19937 rng{uint32_t(seed)};
  std::uniform_real_distribution<float> u(-0.3f, 0.3f);
  for (float& p : ck.params) p = u(rng);
  for (const ParamInfo& t : layout.tensors)
    if (t.name.find("ln_") != std::string::npos && t.name.ends_with(".weight"))
      for (size_t i = 0; i < t.numel; ++i) ck.params[t.offset + i] = 1.0f;
  save_checkpoint(path, ck);
}

// A checkpoint's model on the CPU.
struct LoadedTiny {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<GPT> model;
  explicit LoadedTiny(const std::string& path, const std::string& device = "cpu") {
    const Checkpoint ck = load_checkpoint(path);
    backend = make_backend(device);
    model = std::make_unique<GPT>(ck.model, *backend);
    model->set_parameters(ck.params);
  }
};

// lsgpt serve's parts, in this process, on 127.0.0.1 and a free port.
struct InProcessServer {
  LoadedTiny loaded;
  std::optional<Tokenizer> tokenizer;
  std::unique_ptr<InferenceEngine> engine;
  serve::Metrics metrics;
  std::unique_ptr<serve::Scheduler> scheduler;
  std::unique_ptr<serve::HttpServer> http;
  std::thread listener;
  int port = 0;

  InProcessServer(const std::string& checkpoint, int slots, int max_queue,
                  size_t max_body = 64 << 10, const std::string& device = "cpu")
      : loaded(checkpoint, device) {
    const ModelConfig& cfg = loaded.model->config();
    Tokenizer tok = Tokenizer::load(Tokenizer::default_dir());
    if (tok.vocab_size() == cfg.vocab_size) tokenizer = tok;
    EngineOptions eo;
    eo.max_batch = slots;
    if (tokenizer) eo.detokenize = [this](int32_t id) { return tokenizer->decode_token(id); };
    engine = std::make_unique<InferenceEngine>(*loaded.model, eo);
    serve::SchedulerOptions so;
    so.max_queue = max_queue;
    so.prefill_tokens_per_step = 64;
    scheduler = std::make_unique<serve::Scheduler>(*engine, so, metrics);
    serve::ServerLimits limits;
    limits.context = cfg.seq_len;
    limits.vocab_size = cfg.vocab_size;
    limits.eot_token = cfg.eot_token;
    limits.model_id = "tiny";
    serve::HttpOptions ho;
    ho.port = 0;
    ho.max_body_bytes = max_body;
    ho.threads = slots + max_queue + 8;
    http = std::make_unique<serve::HttpServer>(*scheduler, metrics, limits,
                                               tokenizer ? &*tokenizer : nullptr, ho);
    port = http->bind();
    listener = std::thread([this] { http->run(); });
  }
  ~InProcessServer() {
    http->shutdown(std::chrono::milliseconds(0));
    listener.join();
    scheduler->stop();
  }
};

inline std::unique_ptr<httplib::Client> client(int port) {
  auto c = std::make_unique<httplib::Client>("127.0.0.1", port);
  c->set_connection_timeout(5);
  c->set_read_timeout(60);
  c->set_write_timeout(10);
  return c;
}

struct HttpAnswer {
  int status = -1;
  std::string body;
  json json_body() const { return json::parse(body, nullptr, false); }
};

inline HttpAnswer post(int port, const std::string& path, const std::string& body) {
  auto c = client(port);
  auto r = c->Post(path, body, "application/json");
  if (!r) return {};
  return {r->status, r->body};
}

inline HttpAnswer get(int port, const std::string& path) {
  auto c = client(port);
  auto r = c->Get(path);
  if (!r) return {};
  return {r->status, r->body};
}

// The events of a streamed completion ("data: " payloads, [DONE] excluded).
// stop_after: leave (close the connection) after this many events.
struct StreamAnswer {
  int status = -1;
  std::vector<json> events;
  bool done = false;  // saw data: [DONE]
  std::string raw;
};

inline StreamAnswer post_stream(int port, const std::string& body, int stop_after = -1,
                                std::function<void()> on_first_event = {}) {
  auto c = client(port);
  StreamAnswer a;
  std::string pending;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body;
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    a.raw.append(data, n);
    pending.append(data, n);
    size_t cut;
    while ((cut = pending.find("\n\n")) != std::string::npos) {
      const std::string event = pending.substr(0, cut);
      pending.erase(0, cut + 2);
      if (event.rfind("data: ", 0) != 0) continue;
      const std::string payload = event.substr(6);
      if (payload == "[DONE]") {
        a.done = true;
        continue;
      }
      a.events.push_back(json::parse(payload, nullptr, false));
      if (a.events.size() == 1 && on_first_event) on_first_event();
      if (stop_after >= 0 && int(a.events.size()) >= stop_after) return false;
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  c->send(req, res, err);
  a.status = res.status;
  if (a.events.empty() && !res.body.empty()) a.raw = res.body;
  return a;
}

// A sample's value in Prometheus text ("name{labels} value"); -1 if absent.
inline double metric(const std::string& text, const std::string& sample) {
  const size_t at = text.find("\n" + sample + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + sample.size() + 2));
}

}  // namespace lsgpt::testing
