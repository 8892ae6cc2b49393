// `lsgpt export`: a checkpoint's model as Hugging Face GPT-2 files
// (model.safetensors + config.json), loadable by transformers' GPT2LMHeadModel
// when every head is global. Training state (optimizer, step, RNG) is not
// exported, so exports of the same weights are byte-identical.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/hf_gpt2.h"

namespace lsgpt::cli {
namespace {

// `--out runs/exp1` (the run directory rather than runs/exp1/hf) used to
// replace the run's own config.json, its settings, with the Hugging Face one.
// An earlier export (a config with "model_type") may be replaced; anything
// but a regular file is left to the writer to report.
void refuse_foreign_config(const std::string& out_dir) {
  namespace fs = std::filesystem;
  const fs::path config = fs::path(out_dir) / "config.json";
  if (!fs::is_regular_file(config)) return;
  std::ifstream in(config, std::ios::binary);
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_object() && j.contains("model_type")) return;
  fail("'", config.string(), "' exists and is not a Hugging Face config (an lsgpt run's ",
       "settings?); export to another directory, e.g. --out ", (fs::path(out_dir) / "hf").string());
}

}  // namespace

void add_export_command(CLI::App& app) {
  struct Options {
    std::string checkpoint, out;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "export", "Write a checkpoint's model as Hugging Face GPT-2 model.safetensors + config.json");
  cmd->add_option("--checkpoint", opt->checkpoint, "lsgpt checkpoint to export")->required();
  cmd->add_option("--out", opt->out, "output directory (created if missing)")->required();
  cmd->callback([opt] {
    const Checkpoint ck = load_checkpoint(opt->checkpoint);
    refuse_foreign_config(opt->out);
    export_hf_gpt2(ck.model, ck.params, opt->out);
    const std::filesystem::path dir(opt->out);
    std::printf("exported %s (step %lld, %d layers, d_model %d, vocab %d) to %s and %s\n",
                opt->checkpoint.c_str(), static_cast<long long>(ck.step), ck.model.n_layer,
                ck.model.d_model, ck.model.vocab_size, (dir / "model.safetensors").c_str(),
                (dir / "config.json").c_str());
  });
}

}  // namespace lsgpt::cli
