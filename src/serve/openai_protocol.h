// The OpenAI completions protocol as lsgpt serves it: a request body parsed
// and checked into an engine request, and the JSON of answers, stream chunks
// and errors. Pure functions (no sockets, no engine), so every rule is unit
// tested on its own (docs/SERVE.md lists them).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "infer/engine.h"
#include "tokenizer/tokenizer.h"

namespace lsgpt::serve {

// A refused request: an HTTP status and OpenAI's error object
// {"error": {"message", "type", "param", "code"}}.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string type = "invalid_request_error",
           std::string param = "", std::string code = "")
      : std::runtime_error(message), status(status), type(std::move(type)),
        param(std::move(param)), code(std::move(code)) {}
  int status;
  std::string type, param, code;  // empty param/code are sent as null
};

std::string error_body(const ApiError& e);
// The error type OpenAI uses for an HTTP status without a more specific one.
ApiError error_for_status(int status);

// What a request may ask for on this server.
struct ServerLimits {
  int context = 0;          // positions per sequence (prompt + max_tokens <= context + 1)
  int vocab_size = 0;
  int32_t eot_token = 0;
  int max_tokens = 0;       // server cap on max_tokens (0: the context)
  int max_stop_strings = 4;
  std::string model_id;     // what /v1/models lists
};

struct CompletionRequest {
  SequenceRequest sequence;  // prompt ids, sampling, seed, max_new_tokens, stop strings
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool seed_given = false;
};

// Parses and checks a /v1/completions body. `tokenizer` is null when the
// model's vocabulary is not the tokenizer's: then only token-id prompts are
// accepted (as `lsgpt generate --ids`), and stop strings are refused.
// `default_seed` is used when the body has no seed. Throws ApiError (400).
CompletionRequest parse_completion_request(std::string_view body, const ServerLimits& limits,
                                           const Tokenizer* tokenizer, uint64_t default_seed);

// A finished completion (non-streamed), with usage counts. `token_ids` is an
// lsgpt extension (a model of another vocabulary has no text).
nlohmann::json completion_body(const std::string& id, long created, const std::string& model,
                               const std::string& text, const std::vector<int32_t>& token_ids,
                               const char* finish_reason, int prompt_tokens);
// One server-sent event of a stream; finish_reason null until the last.
nlohmann::json completion_chunk(const std::string& id, long created, const std::string& model,
                                const std::string& text, const std::vector<int32_t>& token_ids,
                                const char* finish_reason);
nlohmann::json usage_json(int prompt_tokens, int completion_tokens);
// "data: <json>\n\n" (invalid UTF-8 from a byte-level model replaced, never thrown).
std::string sse_event(const nlohmann::json& j);
std::string dump(const nlohmann::json& j);

nlohmann::json models_body(const std::string& model_id, long created);

}  // namespace lsgpt::serve
