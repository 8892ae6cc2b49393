// lsgpt serve's HTTP server in this process on the CPU backend, a tiny random
// model, loopback and an ephemeral port: every endpoint; answers (whole and
// streamed) equal to `lsgpt generate` with the same seed and settings; 32
// concurrent clients x 20 requests each, every answer equal to the request
// computed alone; each kind of bad request refused with an OpenAI error while
// the server keeps serving; a client that leaves mid-stream frees its slot.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <mutex>

#include "../io/io_test_support.h"
#include "core/error.h"
#include "serve_test_support.h"

namespace lsgpt {
namespace {
namespace test_server {

using nlohmann::json;
using testing::InProcessServer;
using testing::metric;

constexpr int kContext = 512;

class ServeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::ScratchDir();
    testing::write_tiny_checkpoint(checkpoint(), testing::serve_model_config(kContext), 11);
    server_ = new InProcessServer(checkpoint(), 8, 64);
  }
  static void TearDownTestSuite() {
    delete server_;
    delete dir_;
  }
  static std::string checkpoint() { return dir_->file("tiny.ckpt"); }
  static int port() { return server_->port; }
  static std::string metrics_text() { return testing::get(port(), "/metrics").body; }

  // The tokens `lsgpt generate` produces (as ids) for these flags.
  static std::vector<int32_t> generated(const std::string& flags) {
    const auto r = testing::run_lsgpt("generate --checkpoint " + testing::quoted(checkpoint()) +
                                      " --ids --stop-at-eot " + flags);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::vector<int32_t> ids;
    for (int v : testing::parse_ints(r.output)) ids.push_back(v);
    return ids;
  }

  static testing::ScratchDir* dir_;
  static InProcessServer* server_;
};

testing::ScratchDir* ServeTest::dir_ = nullptr;
InProcessServer* ServeTest::server_ = nullptr;

std::vector<int32_t> ids_of(const json& choice) { return choice["token_ids"].get<std::vector<int32_t>>(); }

// The streamed events put together: text, token ids, finish reason.
struct Joined {
  std::string text;
  std::vector<int32_t> ids;
  std::string finish_reason;
};

Joined join(const testing::StreamAnswer& a) {
  Joined j;
  for (const json& e : a.events) {
    if (e.contains("error") || e["choices"].empty()) continue;
    const json& c = e["choices"][0];
    j.text += c["text"].get<std::string>();
    for (int32_t t : ids_of(c)) j.ids.push_back(t);
    if (!c["finish_reason"].is_null()) j.finish_reason = c["finish_reason"];
  }
  return j;
}

TEST_F(ServeTest, EveryEndpoint) {
  const auto health = testing::get(port(), "/health");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.json_body()["status"], "ok");
  const auto models = testing::get(port(), "/v1/models");
  EXPECT_EQ(models.status, 200);
  EXPECT_EQ(models.json_body()["data"][0]["id"], "tiny");
  const auto answer = testing::post(port(), "/v1/completions",
                                    R"({"model":"tiny","prompt":"Hello world","max_tokens":4,"temperature":0})");
  ASSERT_EQ(answer.status, 200) << answer.body;
  const json a = answer.json_body();
  EXPECT_EQ(a["object"], "text_completion");
  EXPECT_EQ(a["usage"]["prompt_tokens"], 2);
  EXPECT_EQ(a["usage"]["completion_tokens"], int(ids_of(a["choices"][0]).size()));
  EXPECT_EQ(a["usage"]["total_tokens"], 2 + int(ids_of(a["choices"][0]).size()));
  const std::string m = metrics_text();
  EXPECT_NE(m.find("# TYPE lsgpt_requests_received_total counter"), std::string::npos) << m;
  EXPECT_EQ(metric(m, "lsgpt_batch_slots"), 8);
  EXPECT_GE(metric(m, "lsgpt_requests_received_total"), 1);
  EXPECT_GE(metric(m, "lsgpt_generation_tokens_total"), 1);
  EXPECT_EQ(metric(m, "lsgpt_queued_requests"), 0);
  EXPECT_GE(metric(m, "lsgpt_batch_occupancy"), 0);
  const auto missing = testing::get(port(), "/v2/nothing");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.json_body()["error"]["code"], "not_found");
}

TEST_F(ServeTest, AnswersEqualGenerateWithTheSameSeed) {
  struct Case {
    std::string body, flags;
  };
  const std::vector<Case> cases = {
      {R"("prompt":"The quick brown fox","max_tokens":12,"temperature":0)",
       "--prompt 'The quick brown fox' -n 12 --temperature 0"},
      {R"("prompt":"Once upon a time","max_tokens":16,"temperature":0.9,"top_k":50,"top_p":0.95,"seed":123)",
       "--prompt 'Once upon a time' -n 16 --temperature 0.9 --top-k 50 --top-p 0.95 --seed 123"},
      {R"("prompt":[464, 3290, 318, 257],"max_tokens":10,"temperature":1.2,"seed":7)",
       "--prompt-ids '464 3290 318 257' -n 10 --temperature 1.2 --seed 7"},
      {R"("prompt":"","max_tokens":6,"temperature":0.7,"seed":18446744073709551615)",
       "-n 6 --temperature 0.7 --seed 18446744073709551615"},
  };
  const Tokenizer tok = Tokenizer::load(Tokenizer::default_dir());
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    const std::vector<int32_t> want = generated(c.flags);
    ASSERT_FALSE(want.empty());
    const auto whole = testing::post(port(), "/v1/completions", "{" + c.body + "}");
    ASSERT_EQ(whole.status, 200) << whole.body;
    const json choice = whole.json_body()["choices"][0];
    EXPECT_EQ(ids_of(choice), want);
    // The text is the tokens' text (invalid UTF-8 from byte-level tokens
    // replaced as JSON must), the end-of-text token's excepted.
    std::vector<int32_t> text_ids = want;
    if (!text_ids.empty() && text_ids.back() == 50256) text_ids.pop_back();
    EXPECT_EQ(choice["text"], json::parse(serve::dump(json(tok.decode(text_ids)))));
    EXPECT_EQ(choice["finish_reason"], want.back() == 50256 ? "stop" : "length");
    const auto streamed = testing::post_stream(port(), "{" + c.body + R"(,"stream":true,"stream_options":{"include_usage":true}})");
    ASSERT_EQ(streamed.status, 200) << streamed.raw;
    EXPECT_TRUE(streamed.done) << streamed.raw;
    const Joined j = join(streamed);
    EXPECT_EQ(j.ids, want);
    EXPECT_EQ(j.text, choice["text"].get<std::string>());
    EXPECT_EQ(j.finish_reason, choice["finish_reason"].get<std::string>());
    ASSERT_FALSE(streamed.events.empty());
    ASSERT_TRUE(streamed.events.back().contains("usage")) << streamed.raw;
    EXPECT_EQ(streamed.events.back()["usage"]["completion_tokens"], int(want.size()));
  }
}

TEST_F(ServeTest, StopStringsEndTheTextBeforeThem) {
  // Find a stop string the greedy continuation really contains, then ask
  // again with it: the text ends right before it, streamed or not.
  const std::string body = R"("prompt":"Hello","max_tokens":40,"temperature":0,"seed":3)";
  const auto free_run = testing::post(port(), "/v1/completions", "{" + body + "}");
  ASSERT_EQ(free_run.status, 200);
  const std::string text = free_run.json_body()["choices"][0]["text"];
  ASSERT_GE(text.size(), 12u) << text;
  // Three printable ASCII bytes from the second half (the same bytes in the
  // model's raw output and in the JSON text).
  size_t at = text.size() / 2;
  auto printable = [&](size_t i) { return text[i] >= 0x20 && text[i] < 0x7f; };
  while (at + 3 <= text.size() && !(printable(at) && printable(at + 1) && printable(at + 2))) ++at;
  ASSERT_LE(at + 3, text.size()) << "no three ASCII bytes in a row: " << text;
  const std::string stop = text.substr(at, 3);
  const size_t first = text.find(stop);
  json req = json::parse("{" + body + "}");
  req["stop"] = json::array({stop, "\x01\x02never"});
  const auto cut = testing::post(port(), "/v1/completions", req.dump());
  ASSERT_EQ(cut.status, 200) << cut.body;
  const json choice = cut.json_body()["choices"][0];
  EXPECT_EQ(choice["finish_reason"], "stop");
  EXPECT_EQ(choice["text"], text.substr(0, first)) << "stop '" << stop << "'";
  req["stream"] = true;
  const Joined j = join(testing::post_stream(port(), req.dump()));
  EXPECT_EQ(j.text, text.substr(0, first));
  EXPECT_EQ(j.ids, ids_of(choice));
}

TEST_F(ServeTest, ThirtyTwoClientsOfTwentyRequestsEachGetTheirOwnAnswers) {
  constexpr int kClients = 32, kRequests = 20;
  struct Planned {
    json body;
    std::vector<int32_t> want;
  };
  std::vector<Planned> plan(kClients * kRequests);
  // Each request computed alone, on a model of its own, before the load.
  testing::LoadedTiny alone(checkpoint());
  std::mt19937 rng(2024);
  for (int i = 0; i < int(plan.size()); ++i) {
    SequenceRequest r;
    r.prompt.resize(1 + rng() % 24);
    for (int32_t& t : r.prompt) t = int32_t(rng() % 50257);
    r.max_new_tokens = 1 + int(rng() % 6);
    r.sampling.temperature = i % 3 == 0 ? 0.0 : 0.9;
    r.sampling.top_k = i % 5 == 0 ? 20 : 0;
    r.seed = 1000 + i;
    r.stop_at_eot = true;
    InferenceEngine engine(*alone.model, EngineOptions{});
    plan[i].want = run_to_completion(engine, {r})[0];
    plan[i].body = {{"prompt", r.prompt},
                    {"max_tokens", r.max_new_tokens},
                    {"temperature", r.sampling.temperature},
                    {"top_k", r.sampling.top_k},
                    {"seed", r.seed},
                    {"stream", i % 2 == 1}};
  }
  std::atomic<int> correct{0};
  std::mutex failures_mutex;
  std::vector<std::string> failures;
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      for (int k = 0; k < kRequests; ++k) {
        const Planned& p = plan[c * kRequests + k];
        std::vector<int32_t> got;
        std::string detail;
        if (p.body["stream"].get<bool>()) {
          const auto s = testing::post_stream(port(), p.body.dump());
          got = join(s).ids;
          if (!s.done) detail = "no [DONE]: " + s.raw;
        } else {
          const auto a = testing::post(port(), "/v1/completions", p.body.dump());
          if (a.status == 200) got = ids_of(a.json_body()["choices"][0]);
          else detail = std::to_string(a.status) + " " + a.body;
        }
        if (got == p.want && detail.empty()) {
          ++correct;
        } else {
          std::lock_guard<std::mutex> lock(failures_mutex);
          failures.push_back("client " + std::to_string(c) + " request " + std::to_string(k) +
                             ": " + p.body.dump() + " " + detail);
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(correct.load(), kClients * kRequests);
  for (size_t i = 0; i < std::min<size_t>(failures.size(), 5); ++i) ADD_FAILURE() << failures[i];
  const std::string m = metrics_text();
  EXPECT_EQ(metric(m, "lsgpt_running_requests"), 0);
  EXPECT_EQ(metric(m, "lsgpt_queued_requests"), 0);
  // Requests were batched: more than one sequence per decode step on average.
  EXPECT_GT(metric(m, "lsgpt_decode_rows_total"), 1.5 * metric(m, "lsgpt_decode_steps_total")) << m;
}

TEST_F(ServeTest, BadRequestsGetOpenAiErrorsAndTheServerKeepsServing) {
  struct Case {
    std::string body;
    int status;
    std::string param;
  };
  std::string long_prompt = "[";
  for (int i = 0; i < kContext + 1; ++i) long_prompt += std::to_string(i % 1000) + (i < kContext ? "," : "]");
  const std::vector<Case> cases = {
      {"{\"prompt\": \"x\", ", 400, ""},                                  // malformed JSON
      {R"({"prompt":"x","max_tokens":"many"})", 400, "max_tokens"},      // wrong type
      {R"({"prompt":"x","temperature":[1]})", 400, "temperature"},
      {R"({"prompt":"x","stop":{"a":1}})", 400, "stop"},
      {R"({"prompt":)" + long_prompt + "}", 400, "prompt"},              // over the context
      {R"({"prompt":"x","max_tokens":100000})", 400, "max_tokens"},      // over the limit
      {R"({"prompt":"x","n":3})", 400, "n"},
      {R"({"prompt":")" + std::string(100 << 10, 'a') + "\"}", 413, ""},  // body over 64 KiB
  };
  for (const Case& c : cases) {
    const auto a = testing::post(port(), "/v1/completions", c.body);
    EXPECT_EQ(a.status, c.status) << c.body.substr(0, 80);
    const json e = a.json_body();
    ASSERT_TRUE(e.contains("error")) << a.body;
    for (const char* key : {"message", "type", "param", "code"})
      EXPECT_TRUE(e["error"].contains(key)) << key << " missing in " << a.body;
    if (!c.param.empty()) {
      EXPECT_EQ(e["error"]["param"], c.param) << a.body;
    }
    const auto ok = testing::post(port(), "/v1/completions", R"({"prompt":"ok","max_tokens":2})");
    EXPECT_EQ(ok.status, 200) << "after " << c.body.substr(0, 80) << ": " << ok.body;
  }
  EXPECT_GE(metric(metrics_text(), "lsgpt_requests_rejected_total{cause=\"invalid\"}"), 7);
}

// Sends `request` on a new loopback connection and returns every byte the
// server sends until it closes the connection (or 10 s pass: a server that
// waits for more is a failure, not a hang).
std::string raw_exchange(int port, const std::string& request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "socket() failed";
  timeval timeout{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(uint16_t(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string got;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0 &&
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == ssize_t(request.size())) {
    char buf[4096];
    for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) got.append(buf, size_t(n));
  }
  ::close(fd);
  return got;
}

// httplib checks the body limit against Content-Length only: a chunked body
// is refused (411) before it is read, and the server goes on serving. The
// request announces a chunked body and sends none of it, so the answer can
// only come from the headers. (Sending the body through httplib's client
// raced the refusal: the server's close could reach the client before its
// last write, which then failed; seen under CPU load.)
TEST_F(ServeTest, ChunkedBodiesAreRefusedBeforeTheyAreRead) {
  const std::string reply = raw_exchange(
      port(),
      "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
      "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
  ASSERT_TRUE(reply.starts_with("HTTP/1.1 411")) << reply;
  const size_t body = reply.find("\r\n\r\n");
  ASSERT_NE(body, std::string::npos) << reply;
  const json e = json::parse(reply.substr(body + 4));
  EXPECT_EQ(e["error"]["code"], "length_required") << reply;
  const auto ok = testing::post(port(), "/v1/completions", R"({"prompt":"ok","max_tokens":2})");
  EXPECT_EQ(ok.status, 200) << ok.body;
}

// A second server on a port in use is refused (httplib's default socket
// options set SO_REUSEPORT, with which both would listen and share clients).
TEST_F(ServeTest, APortInUseIsRefused) {
  serve::ServerLimits limits;
  limits.context = kContext;
  serve::HttpOptions ho;
  ho.port = port();
  serve::HttpServer second(*server_->scheduler, server_->metrics, limits, nullptr, ho);
  try {
    second.bind();
    FAIL() << "a second server bound port " << port();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot listen"), std::string::npos) << e.what();
  }
}

TEST_F(ServeTest, AClientThatLeavesMidStreamFreesItsSlot) {
  const std::string before = metrics_text();
  const double cancelled = metric(before, "lsgpt_requests_finished_total{reason=\"cancelled\"}");
  const double left = metric(before, "lsgpt_client_disconnects_total");
  // 500 tokens take far longer than a round trip; leave after two events.
  const auto s = testing::post_stream(
      port(), R"({"prompt":"Hi","max_tokens":500,"temperature":0.8,"seed":9,"stream":true})", 2);
  EXPECT_EQ(s.events.size(), 2u);
  EXPECT_FALSE(s.done);
  std::string m;
  for (int i = 0; i < 200; ++i) {  // up to 10 s
    m = metrics_text();
    if (metric(m, "lsgpt_running_requests") == 0 &&
        metric(m, "lsgpt_requests_finished_total{reason=\"cancelled\"}") == cancelled + 1)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(metric(m, "lsgpt_running_requests"), 0) << m;
  EXPECT_EQ(metric(m, "lsgpt_requests_finished_total{reason=\"cancelled\"}"), cancelled + 1) << m;
  EXPECT_EQ(metric(m, "lsgpt_client_disconnects_total"), left + 1) << m;
  // The freed slot serves the next request.
  EXPECT_EQ(testing::post(port(), "/v1/completions", R"({"prompt":"again","max_tokens":2})").status, 200);
}

// A server of one slot and a queue of one: the third concurrent request is
// refused with 429, a queued request whose client leaves is dropped.
TEST(ServeQueue, TooManyConcurrentRequestsGet429) {
  testing::ScratchDir dir;
  testing::write_tiny_checkpoint(dir.file("q.ckpt"), testing::serve_model_config(2048), 5);
  InProcessServer server(dir.file("q.ckpt"), 1, 1);
  const int port = server.port;
  // The running request: 2000 tokens, far more than the test takes.
  std::thread running([&] {
    testing::post_stream(port, R"({"prompt":"a","max_tokens":2000,"stream":true})");
  });
  auto wait_for = [&](const char* sample, double value) {
    for (int i = 0; i < 200; ++i) {
      if (metric(testing::get(port, "/metrics").body, sample) == value) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    return false;
  };
  ASSERT_TRUE(wait_for("lsgpt_running_requests", 1));
  std::thread queued([&] {
    testing::post_stream(port, R"({"prompt":"b","max_tokens":3,"stream":true})");
  });
  ASSERT_TRUE(wait_for("lsgpt_queued_requests", 1));
  const auto refused = testing::post(port, "/v1/completions", R"({"prompt":"c","max_tokens":3})");
  EXPECT_EQ(refused.status, 429) << refused.body;
  EXPECT_EQ(refused.json_body()["error"]["type"], "rate_limit_exceeded");
  EXPECT_EQ(metric(testing::get(port, "/metrics").body,
                   "lsgpt_requests_rejected_total{cause=\"queue_full\"}"), 1);
  server.scheduler->cancel_all();  // ends the long stream; the queued one is cancelled too
  running.join();
  queued.join();
  EXPECT_TRUE(wait_for("lsgpt_running_requests", 0));
  EXPECT_EQ(testing::post(port, "/v1/completions", R"({"prompt":"d","max_tokens":2})").status, 200);
}

// A model whose vocabulary is not GPT-2's takes token-id prompts only, as
// `lsgpt generate --ids --prompt-ids` does.
TEST(ServeOtherVocabulary, TextPromptsAreRefusedTokenIdsServed) {
  testing::ScratchDir dir;
  testing::write_tiny_checkpoint(dir.file("v.ckpt"), testing::serve_model_config(64, 300), 6);
  InProcessServer server(dir.file("v.ckpt"), 2, 4);
  const auto text = testing::post(server.port, "/v1/completions", R"({"prompt":"hello"})");
  EXPECT_EQ(text.status, 400);
  EXPECT_EQ(text.json_body()["error"]["param"], "prompt");
  EXPECT_NE(text.body.find("token ids"), std::string::npos) << text.body;
  const auto ids = testing::post(server.port, "/v1/completions",
                                 R"({"prompt":[1,2,3],"max_tokens":5,"temperature":0})");
  ASSERT_EQ(ids.status, 200) << ids.body;
  const json choice = ids.json_body()["choices"][0];
  EXPECT_EQ(choice["text"], "");
  const auto want = testing::run_lsgpt("generate --checkpoint " + testing::quoted(dir.file("v.ckpt")) +
                                       " --ids --stop-at-eot --prompt-ids '1 2 3' -n 5 --temperature 0");
  std::vector<int32_t> want_ids;
  for (int v : testing::parse_ints(want.output)) want_ids.push_back(v);
  EXPECT_EQ(ids_of(choice), want_ids) << want.output;
}

}  // namespace test_server
}  // namespace
}  // namespace lsgpt

namespace lsgpt {
namespace {
namespace test_server {

// On the GPU: a request served alone (batch 1) gives `lsgpt generate
// --device cuda`'s tokens, whole and streamed. (In a batch, bf16 products of
// another batch size may break a near-tie the other way: docs/SERVE.md.)
TEST(ServeCuda, AnswerEqualsGenerateOnTheGpu) {
  try {
    make_backend("cuda");
  } catch (const std::exception& e) {
    GTEST_SKIP() << "no CUDA GPU: " << e.what();
  }
  testing::ScratchDir dir;
  const std::string ck = dir.file("g.ckpt");
  testing::write_tiny_checkpoint(ck, testing::serve_model_config(256), 8);
  InProcessServer server(ck, 4, 8, 64 << 10, "cuda");
  const auto r = testing::run_lsgpt("generate --checkpoint " + testing::quoted(ck) +
                                    " --device cuda --ids --stop-at-eot --prompt 'Hello there'"
                                    " -n 20 --temperature 0.8 --top-k 40 --seed 5");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<int32_t> want;
  for (int v : testing::parse_ints(r.output)) want.push_back(v);
  const std::string body =
      R"("prompt":"Hello there","max_tokens":20,"temperature":0.8,"top_k":40,"seed":5)";
  const auto whole = testing::post(server.port, "/v1/completions", "{" + body + "}");
  ASSERT_EQ(whole.status, 200) << whole.body;
  EXPECT_EQ(ids_of(whole.json_body()["choices"][0]), want);
  const auto streamed = testing::post_stream(server.port, "{" + body + R"(,"stream":true})");
  EXPECT_TRUE(streamed.done);
  EXPECT_EQ(join(streamed).ids, want);
}

}  // namespace test_server
}  // namespace
}  // namespace lsgpt
