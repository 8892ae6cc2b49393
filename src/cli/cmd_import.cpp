// `lsgpt import`: Hugging Face GPT-2 weights (any size) into an lsgpt
// checkpoint at step 0 without optimizer state, ready for fine-tuning; the
// first --n-local heads of every layer can be turned into local heads.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/hf_gpt2.h"

namespace lsgpt::cli {
namespace {

struct Options {
  std::string in, config, out, n_local;
  std::optional<int> window, n_head;
};

// '--in m.safetensors --out m.safetensors' used to replace the weights with
// the checkpoint made from them (prepare refuses the same mistake).
void refuse_overwriting_inputs(const Options& o) {
  namespace fs = std::filesystem;
  const bool dir = fs::is_directory(o.in);
  std::vector<std::string> inputs{dir ? (fs::path(o.in) / "model.safetensors").string() : o.in};
  if (!o.config.empty()) inputs.push_back(o.config);
  else if (dir) inputs.push_back((fs::path(o.in) / "config.json").string());
  refuse_output_over_inputs("import: the output", o.out, inputs);
}

}  // namespace

void add_import_command(CLI::App& app) {
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "import", "Read Hugging Face GPT-2 safetensors weights into an lsgpt checkpoint");
  cmd->add_option("--in", opt->in,
                  "directory with model.safetensors (and config.json), or a .safetensors file")
      ->required();
  cmd->add_option("--config", opt->config,
                  "GPT-2 config.json (default: config.json inside --in when it is a directory; "
                  "without one, sizes come from the tensor shapes)");
  cmd->add_option("--out", opt->out, "lsgpt checkpoint to write")->required();
  cmd->add_option("--n-local", opt->n_local,
                  "local heads per layer: one number or a comma-separated list (default: "
                  "config.json's lsgpt_n_local, else 0 = MHSA)");
  cmd->add_option("--window", opt->window,
                  "local attention window w (default: config.json's lsgpt_window, else 100)");
  cmd->add_option("--n-head", opt->n_head,
                  "number of heads when there is no config.json (default: d_model / 64)");
  cmd->callback([opt] {
    refuse_overwriting_inputs(*opt);
    HfImportOptions options;
    if (!opt->n_local.empty()) options.n_local = parse_int_list(opt->n_local, "--n-local");
    options.window = opt->window;
    options.n_head = opt->n_head;
    const Checkpoint ck = import_hf_gpt2_path(opt->in, opt->config, options);
    save_checkpoint(opt->out, ck);
    std::string n_local;
    for (size_t i = 0; i < ck.model.n_local.size(); ++i)
      n_local += (i ? "," : "") + std::to_string(ck.model.n_local[i]);
    std::printf("imported %s into %s: %d layers, %d heads (local per layer: %s, window %d), "
                "d_model %d, seq_len %d, vocab %d (padded to %d), %zu parameters\n",
                opt->in.c_str(), opt->out.c_str(), ck.model.n_layer, ck.model.n_head,
                n_local.c_str(), ck.model.window, ck.model.d_model, ck.model.seq_len,
                ck.model.vocab_size, ck.model.padded_vocab(), ck.params.size());
  });
}

}  // namespace lsgpt::cli
