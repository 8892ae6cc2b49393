#include "serve/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <ctime>
#include <random>
#include <thread>

#include "core/error.h"
#include "serve/text_stream.h"

namespace lsgpt::serve {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

constexpr auto kPoll = 200ms;  // how long a waiting handler sleeps between looks
constexpr int kListenBacklog = 1024;  // connections waiting to be accepted

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(error_body(e), "application/json");
}

void send_json(httplib::Response& res, const json& j) {
  res.status = 200;
  res.set_content(dump(j), "application/json");
}

}  // namespace

struct HttpServer::Impl {
  Scheduler& scheduler;
  Metrics& metrics;
  ServerLimits limits;
  const Tokenizer* tokenizer;
  HttpOptions options;
  httplib::Server server;
  const long started = long(std::time(nullptr));
  std::atomic<uint64_t> next_id{0};
  std::atomic<int> open_streams{0};
  std::atomic<bool> draining{false};
  socket_t listen_socket = -1;
  std::mutex seed_mutex;
  std::mt19937_64 seeds{std::random_device{}()};

  Impl(Scheduler& s, Metrics& m, const ServerLimits& l, const Tokenizer* t, const HttpOptions& o)
      : scheduler(s), metrics(m), limits(l), tokenizer(t), options(o) {}

  uint64_t fresh_seed() {
    std::lock_guard<std::mutex> lock(seed_mutex);
    return seeds();
  }

  // The text of one token; an end-of-text that ended the sequence has none.
  std::string token_text(const Job& job, int32_t token) const {
    if (!tokenizer) return {};
    if (job.request.stop_at_eot && token == limits.eot_token) return {};
    return tokenizer->decode_token(token);
  }

  void routes();
  void completions(const httplib::Request& req, httplib::Response& res);
  void whole_answer(const CompletionRequest& c, const std::shared_ptr<Job>& job,
                    httplib::Response& res);
  void streamed_answer(const CompletionRequest& c, const std::shared_ptr<Job>& job,
                       httplib::Response& res);
};

namespace {

// Why a request ended without an answer, for the client.
ApiError ended_without_answer(const Job::Update& u) {
  if (!u.error.empty())
    return ApiError(u.error_status ? u.error_status : 500, u.error,
                    u.error_status == 400 ? "invalid_request_error" : "server_error");
  return ApiError(503, "the request was cancelled: the server is shutting down", "server_error",
                  "", "cancelled");
}

}  // namespace

void HttpServer::Impl::whole_answer(const CompletionRequest& c, const std::shared_ptr<Job>& job,
                                    httplib::Response& res) {
  TextStream text(c.sequence.stop_strings);
  std::string out;
  std::vector<int32_t> ids;
  for (;;) {
    Job::Update u = job->wait(kPoll);
    for (int32_t t : u.tokens) {
      ids.push_back(t);
      out += text.push(token_text(*job, t));
    }
    if (!u.finished) continue;
    if (u.reason == FinishReason::cancelled) return send_error(res, ended_without_answer(u));
    out += text.finish(u.reason == FinishReason::stop_string);
    const std::string id = "cmpl-" + std::to_string(next_id++);
    const int prompt_tokens = std::max<int>(1, int(c.sequence.prompt.size()));
    return send_json(res, completion_body(id, long(std::time(nullptr)), limits.model_id,
                                          out, ids,
                                          finish_reason_name(u.reason), prompt_tokens));
  }
}

namespace {

// A stream's state, shared by httplib's content provider and its releaser.
struct StreamState {
  std::shared_ptr<Job> job;
  TextStream text;
  std::string id;
  long created = 0;
  int prompt_tokens = 0, completion_tokens = 0;
  bool include_usage = false;
  bool ended = false;  // the last event was written, or the client left
};

}  // namespace

void HttpServer::Impl::streamed_answer(const CompletionRequest& c,
                                       const std::shared_ptr<Job>& job,
                                       httplib::Response& res) {
  auto st = std::make_shared<StreamState>();
  st->job = job;
  st->text = TextStream(c.sequence.stop_strings);
  st->id = "cmpl-" + std::to_string(next_id++);
  st->created = long(std::time(nullptr));
  st->prompt_tokens = std::max<int>(1, int(c.sequence.prompt.size()));
  st->include_usage = c.include_usage;
  ++open_streams;
  auto provider = [this, st](size_t, httplib::DataSink& sink) {
    const Job::Update u = st->job->wait(kPoll);
    if (u.tokens.empty() && !u.finished) return true;  // httplib calls again
    std::string piece, events;
    for (int32_t t : u.tokens) piece += st->text.push(token_text(*st->job, t));
    st->completion_tokens += int(u.tokens.size());
    if (u.finished && u.reason == FinishReason::cancelled) {
      events += sse_event(json::parse(error_body(ended_without_answer(u))));
    } else {
      if (u.finished) piece += st->text.finish(u.reason == FinishReason::stop_string);
      events += sse_event(completion_chunk(st->id, st->created, limits.model_id, piece, u.tokens,
                                           u.finished ? finish_reason_name(u.reason) : nullptr));
      if (u.finished && st->include_usage)
        events += sse_event({{"id", st->id},
                             {"object", "text_completion"},
                             {"created", st->created},
                             {"model", limits.model_id},
                             {"choices", json::array()},
                             {"usage", usage_json(st->prompt_tokens, st->completion_tokens)}});
    }
    if (u.finished) events += "data: [DONE]\n\n";
    if (!sink.write(events.data(), events.size())) {
      // The client left: its slot is freed before the next step.
      if (!u.finished) {
        ++metrics.client_disconnects;
        scheduler.cancel(st->job);
      }
      st->ended = true;
      return false;
    }
    if (u.finished) {
      st->ended = true;
      sink.done();
    }
    return true;
  };
  auto releaser = [this, st](bool) {
    if (!st->ended && !st->job->finished()) {  // gone before the provider noticed
      ++metrics.client_disconnects;
      scheduler.cancel(st->job);
    }
    --open_streams;
  };
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider("text/event-stream", provider, releaser);
}

void HttpServer::Impl::completions(const httplib::Request& req, httplib::Response& res) {
  CompletionRequest c;
  try {
    c = parse_completion_request(req.body, limits, tokenizer, fresh_seed());
  } catch (const ApiError& e) {
    ++metrics.rejected_4xx;
    return send_error(res, e);
  }
  std::shared_ptr<Job> job;
  try {
    job = scheduler.submit(c.sequence);
  } catch (const ApiError& e) {
    return send_error(res, e);
  }
  if (c.stream) return streamed_answer(c, job, res);
  whole_answer(c, job, res);
}

void HttpServer::Impl::routes() {
  server.Post("/v1/completions",
              [this](const httplib::Request& req, httplib::Response& res) { completions(req, res); });
  server.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, models_body(limits.model_id, started));
  });
  server.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (draining) return send_error(res, error_for_status(503));
    send_json(res, {{"status", "ok"}});
  });
  server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  // Every refusal httplib makes itself (404, 405, 413 body too large, 400
  // unparsable HTTP) gets OpenAI's error object too; handlers' bodies stay.
  const httplib::Server::HandlerWithResponse on_error = [](const httplib::Request&,
                                                          httplib::Response& res) {
    if (res.body.empty())
      res.set_content(error_body(error_for_status(res.status)), "application/json");
    return httplib::Server::HandlerResponse::Handled;
  };
  server.set_error_handler(on_error);
  server.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "internal server error";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        send_error(res, ApiError(500, what, "server_error"));
      });
}

HttpServer::HttpServer(Scheduler& scheduler, Metrics& metrics, const ServerLimits& limits,
                       const Tokenizer* tokenizer, const HttpOptions& options)
    : impl_(std::make_unique<Impl>(scheduler, metrics, limits, tokenizer, options)) {
  Impl& s = *impl_;
  const size_t threads = size_t(std::max(1, options.threads));
  s.server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  s.server.set_payload_max_length(options.max_body_bytes);
  s.server.set_keep_alive_timeout(2);
  // Remember the listening socket: bind() widens its accept backlog.
  // Not httplib's default options: Debian's 0.11 sets SO_REUSEPORT there, so
  // a second server on the same port would start and the kernel would split
  // the clients between the two. SO_REUSEADDR alone lets a restart rebind
  // while old connections linger, and a port in use is refused.
  s.server.set_socket_options([&s](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    s.listen_socket = sock;
  });
  // httplib enforces the body limit on Content-Length only and would read a
  // chunked body of any size: refuse those before the body is read (OpenAI
  // clients send a length).
  s.server.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    if (req.has_header("Transfer-Encoding") &&
        req.get_header_value("Transfer-Encoding").find("chunked") != std::string::npos) {
      res.status = 411;
      res.set_content(error_body(error_for_status(411)), "application/json");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  s.routes();
}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  Impl& s = *impl_;
  int port = -1;
  if (s.options.port == 0) {
    port = s.server.bind_to_any_port(s.options.host);
  } else if (s.server.bind_to_port(s.options.host, s.options.port)) {
    port = s.options.port;
  }
  if (port < 0)
    fail("cannot listen on ", s.options.host, ":", s.options.port,
         " (address in use, or not an address of this machine?)");
  // Debian's libcpp-httplib listens with a backlog of 5 (compiled in): a
  // burst of clients connecting at once would see dropped SYNs and retry
  // after a second or more. listen() again on the bound socket widens it.
  if (s.listen_socket >= 0 && ::listen(s.listen_socket, kListenBacklog) != 0)
    fail("cannot widen the accept backlog of ", s.options.host, ":", port);
  return port;
}

bool HttpServer::run() { return impl_->server.listen_after_bind(); }

void HttpServer::shutdown(std::chrono::milliseconds deadline) {
  Impl& s = *impl_;
  s.draining = true;
  s.scheduler.drain();
  const auto until = Clock::now() + deadline;
  while (s.scheduler.active() > 0 && Clock::now() < until) std::this_thread::sleep_for(10ms);
  s.scheduler.cancel_all();
  // A signal may come before the listener runs; stop() only stops a running one.
  const auto start_until = Clock::now() + 5s;
  while (!s.server.is_running() && Clock::now() < start_until) std::this_thread::sleep_for(10ms);
  // Cancelled streams still write their last event ([DONE]) before the listener closes.
  const auto flush_until = Clock::now() + 2s;
  while (s.open_streams > 0 && Clock::now() < flush_until) std::this_thread::sleep_for(10ms);
  s.server.stop();
}

}  // namespace lsgpt::serve
