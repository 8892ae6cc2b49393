// How many sequences a server holds at once: fixed at start from a memory
// budget and the model's per-sequence cache (an LS model's local heads keep
// only w positions, so it holds many more long sequences than plain MHSA).
#pragma once

#include <cstddef>

#include "model/gpt.h"

namespace lsgpt::serve {

struct Capacity {
  int slots = 0;                // sequences of `context` positions that fit
  int mhsa_slots = 0;           // the same shape with every head global, for comparison
  size_t kv_bytes_per_sequence = 0, mhsa_kv_bytes_per_sequence = 0;
  size_t budget_bytes = 0;
};

// The largest batch (at most max_slots) whose engine fits in budget_bytes.
Capacity plan_capacity(GPT& model, int context, size_t budget_bytes, int max_slots = 65536);

}  // namespace lsgpt::serve
