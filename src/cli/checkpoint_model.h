// Loads a checkpoint's weights into a model on the chosen device; used by the
// commands that only run a trained model (eval, generate).
#pragma once

#include <memory>
#include <string>

#include "model/gpt.h"
#include "ops/backend.h"

namespace lsgpt::cli {

struct LoadedModel {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<GPT> model;
  long step = 0;
};

LoadedModel load_model(const std::string& checkpoint, const std::string& device);

}  // namespace lsgpt::cli
