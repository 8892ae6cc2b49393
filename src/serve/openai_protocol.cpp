#include "serve/openai_protocol.h"

#include <cmath>
#include <limits>

#include "core/error.h"

namespace lsgpt::serve {

using nlohmann::json;

namespace {

ApiError bad(const std::string& param, const std::string& message) {
  return ApiError(400, message, "invalid_request_error", param);
}

// A present, non-null field of the wrong JSON type is refused by name, so
// {"max_tokens": "5"} is an error rather than silently the default.
const json* field(const json& body, const char* name) {
  const auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

double number_field(const json& body, const char* name, double fallback) {
  const json* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_number()) throw bad(name, std::string("'") + name + "' must be a number");
  const double x = v->get<double>();
  if (!std::isfinite(x)) throw bad(name, std::string("'") + name + "' must be finite");
  return x;
}

long long integer_field(const json& body, const char* name, long long fallback, long long lo,
                        long long hi) {
  const json* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_number_integer())
    throw bad(name, std::string("'") + name + "' must be an integer");
  if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(hi))
    throw bad(name, std::string("'") + name + "' must be at most " + std::to_string(hi));
  const long long x = v->get<long long>();
  if (x < lo || x > hi)
    throw bad(name, std::string("'") + name + "' must be between " + std::to_string(lo) +
                        " and " + std::to_string(hi) + ", got " + std::to_string(x));
  return x;
}

bool bool_field(const json& body, const char* name, bool fallback) {
  const json* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_boolean()) throw bad(name, std::string("'") + name + "' must be true or false");
  return v->get<bool>();
}

std::vector<int32_t> token_prompt(const json& array, const ServerLimits& limits) {
  std::vector<int32_t> ids;
  for (const json& t : array) {
    if (!t.is_number_integer() || t.get<long long>() < 0 ||
        t.get<long long>() >= limits.vocab_size)
      throw bad("prompt", "a token-id prompt holds integers from 0 to " +
                              std::to_string(limits.vocab_size - 1) + " (the model's vocabulary)");
    ids.push_back(int32_t(t.get<long long>()));
  }
  return ids;
}

std::vector<int32_t> text_prompt(const std::string& text, const Tokenizer* tokenizer) {
  if (!tokenizer)
    throw bad("prompt", "this model's vocabulary is not the GPT-2 tokenizer's, so a text prompt "
                        "cannot be encoded; give the prompt as an array of token ids");
  return tokenizer->encode(text);
}

// "text", [ids...], or ["text"] / [[ids...]] (one prompt: n = 1).
std::vector<int32_t> parse_prompt(const json& body, const ServerLimits& limits,
                                  const Tokenizer* tokenizer) {
  const json* p = field(body, "prompt");
  if (!p) throw bad("prompt", "'prompt' is required (text or an array of token ids)");
  if (p->is_string()) return text_prompt(p->get<std::string>(), tokenizer);
  if (!p->is_array())
    throw bad("prompt", "'prompt' must be a string or an array of token ids");
  if (p->size() == 1 && ((*p)[0].is_string() || (*p)[0].is_array())) {
    const json& only = (*p)[0];
    return only.is_string() ? text_prompt(only.get<std::string>(), tokenizer)
                            : token_prompt(only, limits);
  }
  for (const json& item : *p)
    if (item.is_string() || item.is_array())
      throw bad("prompt", "one prompt per request (n = 1): batches of prompts are not served");
  return token_prompt(*p, limits);
}

std::vector<std::string> parse_stop(const json& body, const ServerLimits& limits,
                                    const Tokenizer* tokenizer) {
  const json* s = field(body, "stop");
  if (!s) return {};
  std::vector<std::string> stops;
  if (s->is_string()) {
    stops.push_back(s->get<std::string>());
  } else if (s->is_array()) {
    for (const json& item : *s) {
      if (!item.is_string()) throw bad("stop", "'stop' must be a string or an array of strings");
      stops.push_back(item.get<std::string>());
    }
  } else {
    throw bad("stop", "'stop' must be a string or an array of strings");
  }
  if (int(stops.size()) > limits.max_stop_strings)
    throw bad("stop", "at most " + std::to_string(limits.max_stop_strings) + " stop strings");
  for (const std::string& stop : stops)
    if (stop.empty()) throw bad("stop", "stop strings must not be empty");
  if (!stops.empty() && !tokenizer)
    throw bad("stop", "stop strings need text, and this model's vocabulary has no tokenizer");
  return stops;
}

// Features of the OpenAI API this server does not implement are refused
// when asked for, rather than silently ignored.
void refuse_unsupported(const json& body) {
  if (integer_field(body, "n", 1, 1, 1) != 1) throw bad("n", "only n = 1 is served");
  integer_field(body, "best_of", 1, 1, 1);
  if (field(body, "logprobs")) throw bad("logprobs", "'logprobs' is not supported");
  if (bool_field(body, "echo", false)) throw bad("echo", "'echo' is not supported");
  if (field(body, "suffix")) throw bad("suffix", "'suffix' is not supported");
  for (const char* penalty : {"presence_penalty", "frequency_penalty"})
    if (number_field(body, penalty, 0) != 0)
      throw bad(penalty, std::string("'") + penalty + "' is not supported (only 0)");
  const json* bias = field(body, "logit_bias");
  if (bias && !(bias->is_object() && bias->empty()))
    throw bad("logit_bias", "'logit_bias' is not supported");
}

void check_lengths(const SequenceRequest& r, const ServerLimits& limits) {
  const int prompt_len = std::max<int>(1, int(r.prompt.size()));
  if (prompt_len > limits.context)
    throw ApiError(400,
                   "the prompt is " + std::to_string(prompt_len) + " tokens long but the context "
                   "is " + std::to_string(limits.context) + " tokens",
                   "invalid_request_error", "prompt", "context_length_exceeded");
  const int cap = limits.max_tokens > 0 ? limits.max_tokens : limits.context;
  if (r.max_new_tokens > cap)
    throw bad("max_tokens", "'max_tokens' is " + std::to_string(r.max_new_tokens) +
                                " but this server allows at most " + std::to_string(cap));
  if (prompt_len + r.max_new_tokens > limits.context + 1)
    throw ApiError(400,
                   "the prompt (" + std::to_string(prompt_len) + " tokens) plus max_tokens " +
                       std::to_string(r.max_new_tokens) + " exceed the context of " +
                       std::to_string(limits.context) + " tokens; at most " +
                       std::to_string(limits.context + 1 - prompt_len) + " new tokens fit",
                   "invalid_request_error", "max_tokens", "context_length_exceeded");
}

}  // namespace

CompletionRequest parse_completion_request(std::string_view text, const ServerLimits& limits,
                                           const Tokenizer* tokenizer, uint64_t default_seed) {
  json body = json::parse(text, nullptr, false);
  if (body.is_discarded())
    throw ApiError(400, "the request body is not valid JSON", "invalid_request_error");
  if (!body.is_object()) throw ApiError(400, "the request body must be a JSON object");
  const json* model = field(body, "model");
  if (model && !model->is_string()) throw bad("model", "'model' must be a string");
  refuse_unsupported(body);

  CompletionRequest out;
  SequenceRequest& r = out.sequence;
  r.prompt = parse_prompt(body, limits, tokenizer);
  r.max_new_tokens = int(integer_field(body, "max_tokens", 16, 0, std::numeric_limits<int>::max()));
  r.sampling.temperature = number_field(body, "temperature", 1.0);
  if (r.sampling.temperature < 0 || r.sampling.temperature > 2)
    throw bad("temperature", "'temperature' must be between 0 and 2");
  r.sampling.top_p = number_field(body, "top_p", 1.0);
  if (!(r.sampling.top_p > 0 && r.sampling.top_p <= 1))
    throw bad("top_p", "'top_p' must be in (0, 1]");
  r.sampling.top_k = int(integer_field(body, "top_k", 0, -1, limits.vocab_size));
  if (r.sampling.top_k < 0) r.sampling.top_k = 0;  // -1 means no limit, as in vLLM
  const json* seed = field(body, "seed");
  out.seed_given = seed != nullptr;
  if (seed && !(seed->is_number_integer() && (seed->is_number_unsigned() || seed->get<long long>() >= 0)))
    throw bad("seed", "'seed' must be an integer from 0 to 18446744073709551615");
  r.seed = seed ? seed->get<uint64_t>() : default_seed;
  r.stop_strings = parse_stop(body, limits, tokenizer);
  r.stop_at_eot = true;  // a completion ends at the model's end-of-text token
  out.stream = bool_field(body, "stream", false);
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) throw bad("stream_options", "'stream_options' must be an object");
    out.include_usage = bool_field(*so, "include_usage", false);
  }
  check_lengths(r, limits);
  return out;
}

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string sse_event(const json& j) { return "data: " + dump(j) + "\n\n"; }

std::string error_body(const ApiError& e) {
  json err = {{"message", e.what()},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}};
  return dump(json{{"error", err}});
}

ApiError error_for_status(int status) {
  switch (status) {
    case 404: return ApiError(404, "no such endpoint", "invalid_request_error", "", "not_found");
    case 405: return ApiError(405, "method not allowed for this endpoint");
    case 411:
      return ApiError(411, "a request body needs a Content-Length (chunked bodies are refused)",
                      "invalid_request_error", "", "length_required");
    case 413:
      return ApiError(413, "the request body is larger than this server accepts",
                      "invalid_request_error", "", "request_too_large");
    case 429: return ApiError(429, "too many requests", "rate_limit_exceeded");
    case 503: return ApiError(503, "the server is shutting down", "server_error");
    default:
      if (status >= 500) return ApiError(status, "internal server error", "server_error");
      return ApiError(status, "bad request");
  }
}

json usage_json(int prompt_tokens, int completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

namespace {

json choice(const std::string& text, const std::vector<int32_t>& ids, const char* finish_reason) {
  return {{"index", 0},
          {"text", text},
          {"token_ids", ids},
          {"logprobs", nullptr},
          {"finish_reason", finish_reason ? json(finish_reason) : json(nullptr)}};
}

}  // namespace

json completion_body(const std::string& id, long created, const std::string& model,
                     const std::string& text, const std::vector<int32_t>& token_ids,
                     const char* finish_reason, int prompt_tokens) {
  return {{"id", id},
          {"object", "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({choice(text, token_ids, finish_reason)})},
          {"usage", usage_json(prompt_tokens, int(token_ids.size()))}};
}

json completion_chunk(const std::string& id, long created, const std::string& model,
                      const std::string& text, const std::vector<int32_t>& token_ids,
                      const char* finish_reason) {
  return {{"id", id},
          {"object", "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({choice(text, token_ids, finish_reason)})}};
}

json models_body(const std::string& model_id, long created) {
  return {{"object", "list"},
          {"data", json::array({{{"id", model_id},
                                 {"object", "model"},
                                 {"created", created},
                                 {"owned_by", "lsgpt"}}})}};
}

}  // namespace lsgpt::serve
