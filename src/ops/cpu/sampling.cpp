// The sampling rule of ops/sampling_spec.h, one row at a time, written as the
// plain reference the CUDA kernel is tested against:
//   y = float(z) / temperature; the top_k threshold is the exact k-th largest
//   key (nth_element); the top_p threshold is the key at which the quantised
//   masses (ops/sampling_noise.h), summed from the highest key down, first
//   reach ceil(top_p * total); the token is the argmax over keys >= both
//   thresholds of y + gumbel(u(seed, step, id)), the lowest id among ties.
// Integer masses make the top_p cut independent of summation order, so this
// and the GPU's radix select find the same threshold.
#include "ops/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <utility>
#include <vector>

#include "core/error.h"
#include "ops/sampling_noise.h"

namespace lsgpt::cpu {
namespace {

constexpr int32_t kNaNToken = -2;  // a row holding a NaN (reported by the caller)
// Below this many logits a parallel region costs more than it saves.
constexpr size_t kParallelMin = size_t(1) << 15;

template <typename T>
int32_t choose(const T* logits, int V, const SampleParams& p) {
  // Per-thread buffers that only ever grow: a decode step allocates nothing
  // once the first has run.
  thread_local std::vector<float> y;
  thread_local std::vector<uint32_t> keys, sorted;
  thread_local std::vector<std::pair<uint32_t, uint64_t>> kept;  // (key, mass)
  y.resize(V);
  for (int i = 0; i < V; ++i) {
    y[i] = float(logits[i]);
    if (std::isnan(y[i])) return kNaNToken;
  }
  if (!(p.temperature > 0.0f)) {  // greedy (also for a negative or NaN temperature)
    int best = 0;
    for (int i = 1; i < V; ++i)
      if (y[i] > y[best]) best = i;
    return best;
  }
  float y_max = -INFINITY;
  keys.resize(V);
  for (int i = 0; i < V; ++i) {
    y[i] /= p.temperature;
    y_max = std::max(y_max, y[i]);
    keys[i] = sampling_key(y[i]);
  }
  uint32_t threshold = 0;  // keeps every token
  if (p.top_k > 0 && p.top_k < V) {
    sorted.assign(keys.begin(), keys.end());
    std::nth_element(sorted.begin(), sorted.begin() + (p.top_k - 1), sorted.end(),
                     std::greater<uint32_t>());
    threshold = sorted[p.top_k - 1];
  }
  if (p.top_p < 1.0f) {
    kept.clear();
    uint64_t total = 0;
    for (int i = 0; i < V; ++i)
      if (keys[i] >= threshold) {
        kept.emplace_back(keys[i], sampling_mass(y[i], y_max));
        total += kept.back().second;
      }
    const uint64_t need = sampling_nucleus_mass(p.top_p, total);
    std::sort(kept.begin(), kept.end(), std::greater<>());
    uint64_t mass = 0;
    for (const auto& [key, q] : kept) {
      mass += q;
      if (mass >= need) {
        threshold = key;
        break;
      }
    }
  }
  const uint64_t stream = sampling_stream(p.seed, p.step);
  int best = -1;
  float best_score = -INFINITY;
  for (int i = 0; i < V; ++i) {
    if (keys[i] < threshold) continue;
    const float score = y[i] + sampling_gumbel(sampling_uniform(stream, uint32_t(i)));
    if (best < 0 || score > best_score) best = i, best_score = score;
  }
  return best;
}

}  // namespace

template <typename T>
int32_t sample_row(const T* logits, int V, const SampleParams& p) {
  LSGPT_CHECK(V >= 1, "vocabulary ", V);
  const int32_t token = choose(logits, V, p);
  if (token == kNaNToken)
    fail("the model produced NaN logits: the weights or activations have diverged");
  return token;
}

template <typename T>
void sample_tokens(int32_t* tokens, const T* logits, SampleParams* params, int B, int V, int Vp,
                   int32_t* advance, int32_t* next_input) {
  LSGPT_CHECK(V >= 1 && V <= Vp, "vocabulary ", V, " vs padded ", Vp);
  // Rows are independent; the choices go straight into `tokens` (no buffer
  // of our own, so a step allocates nothing). A NaN is recorded, not thrown
  // (an exception cannot leave an OpenMP region), and reported before any
  // bookkeeping changes.
#pragma omp parallel for schedule(dynamic) if (B > 1 && size_t(B) * V >= kParallelMin)
  for (int b = 0; b < B; ++b)
    tokens[b] = params[b].active ? choose(logits + size_t(b) * Vp, V, params[b]) : -1;
  for (int b = 0; b < B; ++b)
    if (params[b].active && tokens[b] == kNaNToken)
      fail("the model produced NaN logits (row ", b, " of ", B,
           "): the weights or activations have diverged");
  for (int b = 0; b < B; ++b) {
    if (!params[b].active) continue;
    params[b].step += 1;
    if (advance) advance[b] += 1;
    if (next_input) next_input[b] = tokens[b];
  }
}

template int32_t sample_row<float>(const float*, int, const SampleParams&);
template int32_t sample_row<double>(const double*, int, const SampleParams&);
template void sample_tokens<float>(int32_t*, const float*, SampleParams*, int, int, int, int32_t*,
                                   int32_t*);
template void sample_tokens<double>(int32_t*, const double*, SampleParams*, int, int, int,
                                    int32_t*, int32_t*);

}  // namespace lsgpt::cpu
