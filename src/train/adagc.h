// AdaGC: adaptive per-tensor gradient clipping (Wang et al., "AdaGC:
// Enhancing LLM Pretraining Stability via Adaptive Gradient Clipping",
// arXiv 2502.11034, Algorithm 1), replacing global-norm clipping when on.
//
// For the first `warmup` optimizer steps every gradient is clipped globally,
// g <- g * min(1, lambda_abs / ||g||), and each tensor's threshold tracks the
// running minimum of its clipped norms, gamma_i = min(gamma_i, ||g_i^clipped||)
// (gamma starts at +inf). After that each tensor is clipped on its own,
// h_i = min(1, lambda_rel * gamma_i / ||g_i||), and gamma_i becomes the
// exponential moving average of the clipped norms,
// gamma_i <- beta * gamma_i + (1 - beta) * h_i ||g_i||.
// One deviation, for a degenerate case the paper does not treat: a tensor
// whose gradient is exactly zero this step leaves its gamma unchanged (its
// norm carries no information, and gamma = 0 would freeze the tensor).
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <span>
#include <vector>

namespace lsgpt {

struct AdaGCSettings {
  long warmup = 100;         // steps of global clipping
  double lambda_abs = 1.0;   // the global threshold during warm-up
  double lambda_rel = 1.05;  // per-tensor threshold, relative to gamma
  double beta = 0.98;        // EMA factor of gamma
};

class AdaGC {
 public:
  AdaGC(const AdaGCSettings& settings, size_t n_tensors);
  // The gradient scale of each tensor for 0-based optimizer step `step`,
  // given each tensor's gradient sum of squares (finite); updates gamma.
  std::vector<double> scales(std::span<const double> sum_squares, long step);
  int last_clipped() const { return last_clipped_; }  // tensors scaled down by the last call
  const std::vector<double>& gamma() const { return gamma_; }
  // Checkpoint state: gamma per tensor (+inf written as null).
  nlohmann::json state_json() const;
  void load_state(const nlohmann::json& j);  // throws lsgpt::Error on a size mismatch

 private:
  AdaGCSettings s_;
  std::vector<double> gamma_;
  int last_clipped_ = 0;
};

}  // namespace lsgpt
