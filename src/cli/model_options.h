// The model-shape flags shared by train and info: a JSON config file plus
// per-field overrides.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <string>

#include "model/config.h"

namespace lsgpt::cli {

struct ModelOptions {
  std::string config_path;
  int n_layer = 0, n_head = 0, d_model = 0, seq_len = 0, window = 0, vocab_size = 0,
      eot_token = 0;
  std::string n_local;  // "3" or "3,3,2,2"
  std::string span;
  std::string span_preset;
  bool qk_norm = false;
  double z_loss = 0;
  std::vector<CLI::Option*> options;  // to tell whether any was given

  void add_to(CLI::App* cmd);
  bool any_given() const;
  std::string given_flags() const;  // "--window, --n-local": the ones typed
  // Loads the config file (configs/default.json when none is given) and applies overrides.
  ModelConfig resolve() const;
  // Only what the user gave, as ModelConfig JSON keys: the keys of a --config
  // file, then the flags on top; nothing from configs/default.json. For runs
  // whose model comes from a checkpoint, where defaults must not count as
  // requests.
  nlohmann::json given_json() const;
};

// configs/<name> in the source tree, for defaults that work from any directory.
std::string bundled_path(const std::string& relative);

}  // namespace lsgpt::cli
