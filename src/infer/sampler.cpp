#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"

namespace lsgpt {

void SamplingSettings::validate() const {
  if (!(temperature >= 0) || !std::isfinite(temperature))
    fail("--temperature must be >= 0 (0 is greedy), got ", temperature);
  if (top_k < 0) fail("--top-k must be >= 0 (0 disables it), got ", top_k);
  if (!(top_p > 0 && top_p <= 1)) fail("--top-p must be in (0, 1], got ", top_p);
}

int32_t sample_token(std::span<const float> logits, const SamplingSettings& s, Rng& rng) {
  const int V = int(logits.size());
  for (float x : logits)
    if (std::isnan(x)) fail("the model produced NaN logits; the checkpoint is probably broken");
  if (s.temperature == 0)
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  // Candidates sorted by logit, highest first; ties broken by id for determinism.
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  const int keep_k = s.top_k > 0 ? std::min(s.top_k, V) : V;
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(order.begin(), order.begin() + keep_k, order.end(), by_logit);
  order.resize(keep_k);
  const double top = logits[order[0]];
  std::vector<double> p(keep_k);
  double sum = 0;
  for (int i = 0; i < keep_k; ++i) sum += p[i] = std::exp((logits[order[i]] - top) / s.temperature);
  int keep = keep_k;
  if (s.top_p < 1) {
    double cum = 0;
    for (int i = 0; i < keep_k; ++i) {
      cum += p[i] / sum;
      if (cum >= s.top_p) {
        keep = i + 1;
        break;
      }
    }
    sum = std::accumulate(p.begin(), p.begin() + keep, 0.0);
  }
  double u = rng.uniform() * sum;
  for (int i = 0; i < keep; ++i) {
    u -= p[i];
    if (u < 0) return order[i];
  }
  return order[keep - 1];
}

}  // namespace lsgpt
