// The completions protocol without a server: every field's parsing and each
// refusal (status, type, param, code), the answer and chunk JSON, and the
// text a stream sends: whole UTF-8 characters only, nothing of a stop string.
#include <gtest/gtest.h>

#include <random>

#include "serve/openai_protocol.h"
#include "serve/text_stream.h"

namespace lsgpt::serve {
namespace {
namespace test_openai_protocol {

using nlohmann::json;

ServerLimits limits() {
  ServerLimits l;
  l.context = 32;
  l.vocab_size = 50257;
  l.eot_token = 50256;
  l.model_id = "tiny";
  return l;
}

const Tokenizer& tokenizer() {
  static const Tokenizer tok = Tokenizer::load(Tokenizer::default_dir());
  return tok;
}

CompletionRequest parse(const std::string& body, const Tokenizer* tok = &tokenizer()) {
  return parse_completion_request(body, limits(), tok, 77);
}

// The ApiError a body is refused with.
ApiError refusal(const std::string& body, const Tokenizer* tok = &tokenizer()) {
  try {
    parse(body, tok);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted: " << body;
  return ApiError(0, "");
}

TEST(OpenAiProtocol, ParsesEveryField) {
  const CompletionRequest c = parse(
      R"({"model":"x","prompt":"Hello world","max_tokens":5,"temperature":0.5,"top_p":0.9,)"
      R"("top_k":40,"seed":18446744073709551615,"stop":["\n","END"],"n":1,"stream":true,)"
      R"("stream_options":{"include_usage":true},"user":"someone"})");
  EXPECT_EQ(c.sequence.prompt, (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(c.sequence.max_new_tokens, 5);
  EXPECT_DOUBLE_EQ(c.sequence.sampling.temperature, 0.5);
  EXPECT_DOUBLE_EQ(c.sequence.sampling.top_p, 0.9);
  EXPECT_EQ(c.sequence.sampling.top_k, 40);
  EXPECT_EQ(c.sequence.seed, 18446744073709551615ull);
  EXPECT_TRUE(c.seed_given);
  EXPECT_EQ(c.sequence.stop_strings, (std::vector<std::string>{"\n", "END"}));
  EXPECT_TRUE(c.sequence.stop_at_eot);
  EXPECT_TRUE(c.stream);
  EXPECT_TRUE(c.include_usage);
}

TEST(OpenAiProtocol, DefaultsAndPromptForms) {
  const CompletionRequest c = parse(R"({"prompt":[464, 3290, 318]})");
  EXPECT_EQ(c.sequence.prompt, (std::vector<int32_t>{464, 3290, 318}));
  EXPECT_EQ(c.sequence.max_new_tokens, 16);  // OpenAI's default
  EXPECT_DOUBLE_EQ(c.sequence.sampling.temperature, 1.0);
  EXPECT_EQ(c.sequence.seed, 77u);
  EXPECT_FALSE(c.seed_given);
  EXPECT_FALSE(c.stream);
  EXPECT_EQ(parse(R"({"prompt":["Hello world"]})").sequence.prompt,
            (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(parse(R"({"prompt":[[7, 8]]})").sequence.prompt, (std::vector<int32_t>{7, 8}));
  EXPECT_EQ(parse(R"({"prompt":"x","top_k":-1,"seed":null})").sequence.sampling.top_k, 0);
  // A model of another vocabulary takes token ids only.
  EXPECT_EQ(parse(R"({"prompt":[1, 2]})", nullptr).sequence.prompt, (std::vector<int32_t>{1, 2}));
}

TEST(OpenAiProtocol, RefusesEachKindOfBadRequest) {
  struct Case {
    std::string body, param, code;
  };
  const std::vector<Case> cases = {
      {"{not json", "", ""},
      {"[1, 2]", "", ""},
      {R"({"max_tokens":5})", "prompt", ""},
      {R"({"prompt":17})", "prompt", ""},
      {R"({"prompt":[1, -2]})", "prompt", ""},
      {R"({"prompt":[1, 50257]})", "prompt", ""},
      {R"({"prompt":["a", "b"]})", "prompt", ""},
      {R"({"prompt":"x","max_tokens":"5"})", "max_tokens", ""},
      {R"({"prompt":"x","max_tokens":2.5})", "max_tokens", ""},
      {R"({"prompt":"x","max_tokens":-1})", "max_tokens", ""},
      {R"({"prompt":"x","max_tokens":33})", "max_tokens", ""},
      {R"({"prompt":"x","temperature":"hot"})", "temperature", ""},
      {R"({"prompt":"x","temperature":3})", "temperature", ""},
      {R"({"prompt":"x","top_p":0})", "top_p", ""},
      {R"({"prompt":"x","top_k":60000})", "top_k", ""},
      {R"({"prompt":"x","seed":-1})", "seed", ""},
      {R"({"prompt":"x","seed":"1"})", "seed", ""},
      {R"({"prompt":"x","stop":5})", "stop", ""},
      {R"({"prompt":"x","stop":["a","b","c","d","e"]})", "stop", ""},
      {R"({"prompt":"x","stop":""})", "stop", ""},
      {R"({"prompt":"x","stream":"yes"})", "stream", ""},
      {R"({"prompt":"x","n":2})", "n", ""},
      {R"({"prompt":"x","logprobs":2})", "logprobs", ""},
      {R"({"prompt":"x","echo":true})", "echo", ""},
      {R"({"prompt":"x","model":3})", "model", ""},
      {R"({"prompt":"x","presence_penalty":0.5})", "presence_penalty", ""},
      {R"({"prompt":"x","stream_options":true})", "stream_options", ""},
  };
  for (const Case& c : cases) {
    const ApiError e = refusal(c.body);
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.type, "invalid_request_error") << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << ": " << e.what();
  }
  // The context: 32 positions, so a 33-token prompt, or 20 + 13 new tokens.
  std::string ids = "[";
  for (int i = 0; i < 33; ++i) ids += std::to_string(i) + (i < 32 ? "," : "]");
  ApiError e = refusal(R"({"prompt":)" + ids + "}");
  EXPECT_EQ(e.code, "context_length_exceeded");
  EXPECT_EQ(e.param, "prompt");
  e = refusal(R"({"prompt":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20],"max_tokens":14})");
  EXPECT_EQ(e.code, "context_length_exceeded");
  EXPECT_EQ(e.param, "max_tokens");
  EXPECT_NE(std::string(e.what()).find("at most 13 new tokens fit"), std::string::npos) << e.what();
  EXPECT_NO_THROW(parse(R"({"prompt":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20],"max_tokens":13})"));
  // Text needs the tokenizer; stop strings too.
  EXPECT_EQ(refusal(R"({"prompt":"x"})", nullptr).param, "prompt");
  EXPECT_EQ(refusal(R"({"prompt":[1],"stop":"a"})", nullptr).param, "stop");
}

TEST(OpenAiProtocol, ErrorAndAnswerJson) {
  const json e = json::parse(error_body(ApiError(400, "bad \"x\"", "invalid_request_error", "x")));
  EXPECT_EQ(e["error"]["message"], "bad \"x\"");
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_EQ(e["error"]["param"], "x");
  EXPECT_TRUE(e["error"]["code"].is_null());
  EXPECT_EQ(error_for_status(413).status, 413);
  const json a = completion_body("cmpl-1", 5, "tiny", "hi", {1, 2, 3}, "length", 4);
  EXPECT_EQ(a["object"], "text_completion");
  EXPECT_EQ(a["choices"][0]["text"], "hi");
  EXPECT_EQ(a["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(a["usage"]["prompt_tokens"], 4);
  EXPECT_EQ(a["usage"]["completion_tokens"], 3);
  EXPECT_EQ(a["usage"]["total_tokens"], 7);
  const json c = completion_chunk("cmpl-1", 5, "tiny", "h", {1}, nullptr);
  EXPECT_TRUE(c["choices"][0]["finish_reason"].is_null());
  // Invalid UTF-8 (a byte-level model may produce it) is replaced, not thrown.
  const std::string event = sse_event(json{{"text", std::string("a\xff")}});
  EXPECT_EQ(event.rfind("data: ", 0), 0u);
  EXPECT_EQ(event.substr(event.size() - 2), "\n\n");
  EXPECT_EQ(json::parse(event.substr(6))["text"], "a\xEF\xBF\xBD");
}

TEST(TextStream, NeverSplitsAUtf8Character) {
  EXPECT_EQ(utf8_complete_prefix("ab\xE2\x82"), 2u);      // '€' cut after 2 of 3 bytes
  EXPECT_EQ(utf8_complete_prefix("ab\xE2\x82\xAC"), 5u);
  EXPECT_EQ(utf8_complete_prefix("\xF0\x9F\x98"), 0u);    // 😀 missing a byte
  EXPECT_EQ(utf8_complete_prefix("\xFF" "a"), 2u);        // invalid bytes pass alone
  EXPECT_EQ(utf8_complete_prefix("\xE2" "a"), 2u);        // a broken sequence is not held
  // Random byte pieces of a text with 1- to 4-byte characters: every piece
  // is whole characters, and together they are the text.
  const std::string text = "a€b😀cé—中文 x\xF0\x9F\x8E\x89!";
  std::mt19937 rng(5);
  for (int trial = 0; trial < 50; ++trial) {
    TextStream s;
    std::string out;
    for (size_t i = 0; i < text.size();) {
      const size_t n = std::min(text.size() - i, size_t(1 + rng() % 3));
      const std::string piece = s.push(std::string_view(text).substr(i, n));
      EXPECT_EQ(utf8_complete_prefix(piece), piece.size());
      if (!piece.empty()) {
        EXPECT_NE((unsigned char)piece[0] & 0xC0, 0x80u);
      }
      out += piece;
      i += n;
    }
    out += s.finish(false);
    EXPECT_EQ(out, text);
  }
}

TEST(TextStream, SendsNothingOfAStopString) {
  // Pieces as tokens might come; the piece that completes a stop string is
  // pushed, then finish(true) follows.
  const std::vector<std::string> pieces = {"Hel", "lo E", "N", "D", " more"};
  TextStream s({"END", "zz"});
  std::string out;
  for (int i = 0; i < 4; ++i) {
    out += s.push(pieces[i]);
    EXPECT_EQ(out.find('E'), std::string::npos) << "sent part of the stop: " << out;
  }
  out += s.finish(true);
  EXPECT_EQ(out, "Hello ");
  TextStream plain({"END"});
  std::string all = plain.push("abc");
  all += plain.finish(false);
  EXPECT_EQ(all, "abc");
}

}  // namespace test_openai_protocol
}  // namespace
}  // namespace lsgpt::serve
