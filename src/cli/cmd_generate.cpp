// lsgpt generate: sample text from a checkpoint, printing tokens as they come.
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>

#include "cli/checkpoint_model.h"
#include "cli/commands.h"
#include "core/error.h"
#include "infer/generator.h"
#include "io/standard_output.h"
#include "tokenizer/tokenizer.h"

namespace lsgpt::cli {
namespace {

struct GenerateFlags {
  std::string checkpoint, prompt, prompt_file, device = "cpu", tokenizer_dir;
  GenerateOptions options;
  bool no_cache = false, ids = false;
};

void run_generate(GenerateFlags& f) {
  std::string prompt = f.prompt;
  if (!f.prompt_file.empty()) {
    if (!f.prompt.empty()) fail("give either --prompt or --prompt-file, not both");
    std::ifstream in(f.prompt_file, std::ios::binary);
    if (!in) fail("cannot read prompt file '", f.prompt_file, "'");
    std::stringstream ss;
    ss << in.rdbuf();
    prompt = ss.str();
  }
  const Tokenizer tok =
      Tokenizer::load(f.tokenizer_dir.empty() ? Tokenizer::default_dir() : f.tokenizer_dir);
  LoadedModel m = load_model(f.checkpoint, f.device);
  f.options.use_cache = !f.no_cache;
  const std::vector<int32_t> prompt_ids = tok.encode(prompt);
  // Each write is checked as it happens, so a full disk or a closed pipe
  // stops generation at the first lost token rather than after all of them.
  if (!f.ids) write_stdout(prompt);
  const std::vector<int32_t> out =
      generate(*m.model, prompt_ids, f.options, [&](int32_t id) {
        write_stdout(f.ids ? std::to_string(id) + " " : tok.decode_token(id));
      });
  write_stdout("\n");
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto f = std::make_shared<GenerateFlags>();
  CLI::App* cmd = app.add_subcommand("generate", "Sample text from a checkpoint");
  cmd->add_option("--checkpoint", f->checkpoint, "checkpoint file")->required();
  cmd->add_option("--prompt", f->prompt, "prompt text (empty: start from <|endoftext|>)");
  cmd->add_option("--prompt-file", f->prompt_file, "read the prompt from a file");
  cmd->add_option("-n,--tokens", f->options.max_new_tokens, "new tokens to generate")
      ->capture_default_str();
  cmd->add_option("--temperature", f->options.sampling.temperature, "0 is greedy")
      ->capture_default_str();
  cmd->add_option("--top-k", f->options.sampling.top_k, "keep the k most likely (0: off)")
      ->capture_default_str();
  cmd->add_option("--top-p", f->options.sampling.top_p, "nucleus sampling mass (1: off)")
      ->capture_default_str();
  cmd->add_option("--seed", f->options.seed, "sampling seed")->capture_default_str();
  cmd->add_flag("--stop-at-eot", f->options.stop_at_eot, "stop at <|endoftext|>");
  cmd->add_flag("--no-cache", f->no_cache,
                "recompute the whole context every step instead of using the KV cache");
  cmd->add_flag("--ids", f->ids, "print token ids instead of text");
  cmd->add_option("--device", f->device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--tokenizer-dir", f->tokenizer_dir, "directory with encoder.json and vocab.bpe");
  cmd->callback([f] { run_generate(*f); });
}

}  // namespace lsgpt::cli
