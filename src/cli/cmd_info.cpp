// lsgpt info: what a checkpoint, a config or a token file contains.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "core/error.h"
#include "data/token_file.h"
#include "io/checkpoint.h"
#include "model/params.h"

namespace lsgpt::cli {
namespace {

struct InfoFlags {
  std::string checkpoint, data;
  ModelOptions model;
  bool json = false;
};

void print_model(const ModelConfig& c) {
  std::printf("model\n");
  std::printf("  layers %d | heads %d | d_model %d | head_dim %d | context %d\n", c.n_layer,
              c.n_head, c.d_model, c.head_dim(), c.seq_len);
  std::printf("  vocab %d (padded to %d) | end-of-text token %d\n", c.vocab_size,
              c.padded_vocab(), c.eot_token);
  // The window means nothing without local heads: say MHSA rather than show it.
  if (std::all_of(c.n_local.begin(), c.n_local.end(), [](int n) { return n == 0; })) {
    std::printf("  attention: MHSA in every layer (no local heads)\n");
  } else {
    std::printf("  attention: local heads per layer [");
    for (size_t l = 0; l < c.n_local.size(); ++l) std::printf("%s%d", l ? ", " : "", c.n_local[l]);
    std::printf("] of %d, window w = %d%s\n", c.n_head, c.window,
                c.n_local[0] == 0 ? " (layer 0 is plain MHSA)" : "");
  }
  std::printf("  span gradient scaling: %s\n", c.span.to_string().c_str());
  char z_loss[32] = "off";
  if (c.z_loss > 0) std::snprintf(z_loss, sizeof z_loss, "%g", c.z_loss);
  std::printf("  stabilisers: QK-norm %s | z-loss %s\n",
              c.qk_norm ? "on (per-head RMSNorm, eps 1e-6)" : "off", z_loss);
  const ParamLayout lay = make_param_layout(c);
  const size_t padded = size_t(c.padded_vocab() - c.vocab_size) * c.d_model;
  std::printf("  parameters %zu (%.2fM; %zu of them padded vocabulary rows)\n", lay.total,
              lay.total / 1e6, padded);
}

void run_info(const InfoFlags& f) {
  const int sources = !f.checkpoint.empty() + !f.data.empty();
  if (sources > 1) fail("give one of --checkpoint, --data or a model config");
  // Silently describing the file as it is would read as if the flags had applied.
  if (sources > 0 && f.model.any_given())
    fail(f.model.given_flags(), " describe a model config and do nothing with ",
         f.checkpoint.empty() ? "--data" : "--checkpoint", "; give them without it");
  if (!f.checkpoint.empty()) {
    const Checkpoint ck = load_checkpoint(f.checkpoint);
    if (f.json) {
      std::printf("%s\n", nlohmann::json{{"model", ck.model.to_json()},
                                         {"train", ck.train},
                                         {"state", ck.state},
                                         {"step", ck.step},
                                         {"has_optimizer_state", !ck.adam_m.empty()}}
                              .dump(2)
                              .c_str());
      return;
    }
    std::printf("checkpoint %s (%.1f MB)\n", f.checkpoint.c_str(),
                std::filesystem::file_size(f.checkpoint) / 1e6);
    std::printf("  step %ld | optimizer state %s\n", long(ck.step),
                ck.adam_m.empty() ? "none" : "yes");
    print_model(ck.model);
    if (!ck.train.empty()) std::printf("training settings\n  %s\n", ck.train.dump().c_str());
    if (!ck.state.empty()) std::printf("run state\n  %s\n", ck.state.dump().c_str());
    return;
  }
  if (!f.data.empty()) {
    const TokenFile file(f.data, 0);
    std::printf("token file %s\n  %zu tokens | vocabulary %d\n", f.data.c_str(),
                size_t(file.size()), file.vocab_size());
    return;
  }
  const ModelConfig c = f.model.resolve();
  if (f.json) {
    std::printf("%s\n", c.to_json().dump(2).c_str());
    return;
  }
  print_model(c);
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto f = std::make_shared<InfoFlags>();
  CLI::App* cmd = app.add_subcommand(
      "info", "Describe a checkpoint, a token file, or a model config (with overrides)");
  cmd->add_option("--checkpoint", f->checkpoint, "checkpoint file");
  cmd->add_option("--data", f->data, "token file");
  cmd->add_flag("--json", f->json, "print JSON");
  f->model.add_to(cmd);
  cmd->callback([f] { run_info(*f); });
}

}  // namespace lsgpt::cli
