// lsgpt generate: sample text from a checkpoint, printing tokens as they come.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>

#include "cli/checkpoint_model.h"
#include "cli/commands.h"
#include "core/error.h"
#include "infer/engine.h"
#include "infer/generator.h"
#include "io/standard_output.h"
#include "tokenizer/tokenizer.h"

namespace lsgpt::cli {
namespace {

struct GenerateFlags {
  std::string checkpoint, prompt, prompt_file, prompt_ids, device = "cpu", tokenizer_dir;
  GenerateOptions options;
  bool no_cache = false, ids = false;
};

// "464 3290 318" or "464,3290,318" -> ids (range-checked against the model later).
std::vector<int32_t> parse_prompt_ids(const std::string& text) {
  std::vector<int32_t> ids;
  std::string item;
  std::istringstream in(text);
  while (in >> item) {
    std::stringstream parts(item);
    std::string part;
    while (std::getline(parts, part, ',')) {
      if (part.empty()) continue;
      size_t used = 0;
      long long v = -1;
      try {
        v = std::stoll(part, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != part.size() || v < 0 || v > INT32_MAX)
        fail("--prompt-ids: '", part, "' is not a token id (a non-negative integer)");
      ids.push_back(int32_t(v));
    }
  }
  if (ids.empty()) fail("--prompt-ids needs at least one token id, e.g. --prompt-ids \"464 3290\"");
  return ids;
}

// Every check happens here, before anything is printed: a run either fails
// with one error and no output, or prints the prompt and generates.
void run_generate(GenerateFlags& f) {
  const bool ids_prompt = !f.prompt_ids.empty();
  if (int(!f.prompt.empty()) + int(!f.prompt_file.empty()) + int(ids_prompt) > 1)
    fail("give one of --prompt, --prompt-file and --prompt-ids, not several");
  f.options.sampling.validate();
  if (f.options.max_new_tokens < 0) fail("--tokens must be >= 0, got ", f.options.max_new_tokens);
  std::string prompt = f.prompt;
  if (!f.prompt_file.empty()) {
    if (std::filesystem::is_directory(f.prompt_file))
      fail("prompt file '", f.prompt_file, "' is a directory, not a file");
    std::ifstream in(f.prompt_file, std::ios::binary);
    if (!in) fail("cannot read prompt file '", f.prompt_file, "'");
    std::stringstream ss;
    ss << in.rdbuf();
    prompt = ss.str();
  }
  std::vector<int32_t> prompt_ids;
  if (ids_prompt) prompt_ids = parse_prompt_ids(f.prompt_ids);

  LoadedModel m = load_model(f.checkpoint, f.device);
  const ModelConfig& cfg = m.model->config();
  f.options.use_cache = !f.no_cache;

  // Text in or out needs the BPE tokenizer, and only one whose vocabulary is
  // the model's: any other would map ids to the wrong text.
  std::optional<Tokenizer> tok;
  if (!prompt.empty() || !f.ids) {
    const std::string dir = f.tokenizer_dir.empty() ? Tokenizer::default_dir() : f.tokenizer_dir;
    tok = Tokenizer::load(dir);
    if (tok->vocab_size() != cfg.vocab_size)
      fail("the model's vocabulary has ", cfg.vocab_size, " tokens but the tokenizer in '", dir,
           "' has ", tok->vocab_size(), ", so text cannot be ",
           prompt.empty() ? "decoded" : "encoded", " for this model; use --ids to print token "
           "ids and --prompt-ids to give the prompt as ids");
    if (!prompt.empty()) prompt_ids = tok->encode(prompt);
  }
  // Everything the engine would refuse, refused before anything is printed
  // (prompt + new tokens may fill the context plus one).
  SequenceRequest request;
  request.prompt = prompt_ids;
  request.sampling = f.options.sampling;
  request.max_new_tokens = f.options.max_new_tokens;
  validate_request(cfg, cfg.seq_len, request, false);

  // Each write is checked as it happens, so a full disk or a closed pipe
  // stops generation at the first lost token rather than after all of them.
  if (!f.ids) write_stdout(prompt);
  const std::vector<int32_t> out =
      generate(*m.model, prompt_ids, f.options, [&](int32_t id) {
        write_stdout(f.ids ? std::to_string(id) + " " : tok->decode_token(id));
      });
  write_stdout("\n");
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto f = std::make_shared<GenerateFlags>();
  CLI::App* cmd = app.add_subcommand("generate", "Sample text from a checkpoint");
  cmd->add_option("--checkpoint", f->checkpoint, "checkpoint file")->required();
  cmd->add_option("--prompt", f->prompt,
                  "prompt text (empty: start from the model's end-of-text token)");
  cmd->add_option("--prompt-file", f->prompt_file, "read the prompt from a file");
  cmd->add_option("--prompt-ids", f->prompt_ids,
                  "the prompt as token ids, e.g. \"464 3290\" (no tokenizer needed; for a model "
                  "with another vocabulary than GPT-2's, together with --ids)");
  cmd->add_option("-n,--tokens", f->options.max_new_tokens, "new tokens to generate")
      ->capture_default_str();
  cmd->add_option("--temperature", f->options.sampling.temperature, "0 is greedy")
      ->capture_default_str();
  cmd->add_option("--top-k", f->options.sampling.top_k, "keep the k most likely (0: off)")
      ->capture_default_str();
  cmd->add_option("--top-p", f->options.sampling.top_p, "nucleus sampling mass (1: off)")
      ->capture_default_str();
  cmd->add_option("--seed", f->options.seed, "sampling seed (0 to 2^64-1)")
      ->check(kUnsigned64)
      ->capture_default_str();
  cmd->add_flag("--stop-at-eot", f->options.stop_at_eot,
                "stop at the model's end-of-text token (<|endoftext|> for GPT-2)");
  cmd->add_flag("--no-cache", f->no_cache,
                "recompute the whole context every step instead of using the KV cache");
  cmd->add_flag("--ids", f->ids, "print token ids instead of text (no tokenizer needed)");
  cmd->add_option("--device", f->device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--tokenizer-dir", f->tokenizer_dir, "directory with encoder.json and vocab.bpe");
  cmd->callback([f] { run_generate(*f); });
}

}  // namespace lsgpt::cli
