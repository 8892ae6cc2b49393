#include "serve/capacity.h"

#include "infer/engine.h"

namespace lsgpt::serve {

namespace {

// Largest b in [0, hi] with fits(b), for a monotone fits.
template <typename Fits>
int largest_fitting(int hi, Fits fits) {
  int lo = 0;
  while (lo < hi) {
    const int mid = lo + (hi - lo + 1) / 2;
    if (fits(mid)) lo = mid; else hi = mid - 1;
  }
  return lo;
}

}  // namespace

Capacity plan_capacity(GPT& model, int context, size_t budget_bytes, int max_slots) {
  const ModelConfig& cfg = model.config();
  const size_t elem = dtype_size(model.backend().dtype());
  ModelConfig mhsa = cfg;
  mhsa.n_local.assign(cfg.n_local.size(), 0);
  Capacity c;
  c.budget_bytes = budget_bytes;
  c.kv_bytes_per_sequence = GPT::kv_cache_bytes(cfg, 1, context, elem);
  c.mhsa_kv_bytes_per_sequence = GPT::kv_cache_bytes(mhsa, 1, context, elem);
  c.slots = largest_fitting(max_slots, [&](int b) {
    return b == 0 || InferenceEngine::required_bytes(model, b, context) <= budget_bytes;
  });
  // The same engine with MHSA's cache in place of this model's.
  c.mhsa_slots = largest_fitting(max_slots, [&](int b) {
    if (b == 0) return true;
    const size_t total = InferenceEngine::required_bytes(model, b, context) -
                         GPT::kv_cache_bytes(cfg, b, context, elem) +
                         GPT::kv_cache_bytes(mhsa, b, context, elem);
    return total <= budget_bytes;
  });
  return c;
}

}  // namespace lsgpt::serve
