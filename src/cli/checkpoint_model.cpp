#include "cli/checkpoint_model.h"

#include "core/error.h"
#include "io/checkpoint.h"

namespace lsgpt::cli {

LoadedModel load_model(const std::string& checkpoint, const std::string& device) {
  if (checkpoint.empty()) fail("no checkpoint given: pass --checkpoint FILE");
  Checkpoint ck = load_checkpoint(checkpoint);
  LoadedModel m;
  m.backend = make_backend(device);
  m.model = std::make_unique<GPT>(ck.model, *m.backend);
  m.model->set_parameters(ck.params);
  m.step = ck.step;
  return m;
}

}  // namespace lsgpt::cli
