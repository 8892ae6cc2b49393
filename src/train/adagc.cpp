#include "train/adagc.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace lsgpt {

AdaGC::AdaGC(const AdaGCSettings& settings, size_t n_tensors)
    : s_(settings), gamma_(n_tensors, std::numeric_limits<double>::infinity()) {}

std::vector<double> AdaGC::scales(std::span<const double> sum_squares, long step) {
  LSGPT_CHECK(sum_squares.size() == gamma_.size(), "AdaGC: ", sum_squares.size(),
              " norms for ", gamma_.size(), " tensors");
  std::vector<double> h(gamma_.size(), 1.0);
  last_clipped_ = 0;
  if (step < s_.warmup) {
    double total = 0;
    for (double sq : sum_squares) total += sq;
    const double norm = std::sqrt(total);
    const double global = norm > s_.lambda_abs ? s_.lambda_abs / norm : 1.0;
    for (size_t i = 0; i < gamma_.size(); ++i) {
      const double g = std::sqrt(sum_squares[i]);
      h[i] = global;
      if (g > 0) gamma_[i] = std::min(gamma_[i], global * g);
      last_clipped_ += global < 1.0 && g > 0;
    }
    return h;
  }
  for (size_t i = 0; i < gamma_.size(); ++i) {
    const double g = std::sqrt(sum_squares[i]);
    if (!(g > 0)) continue;
    const double limit = s_.lambda_rel * gamma_[i];
    if (g > limit) h[i] = limit / g, ++last_clipped_;
    gamma_[i] = s_.beta * gamma_[i] + (1 - s_.beta) * h[i] * g;
  }
  return h;
}

nlohmann::json AdaGC::state_json() const {
  nlohmann::json j = nlohmann::json::array();
  for (double g : gamma_) j.push_back(std::isfinite(g) ? nlohmann::json(g) : nlohmann::json());
  return j;
}

void AdaGC::load_state(const nlohmann::json& j) {
  if (!j.is_array() || j.size() != gamma_.size())
    fail("checkpoint: AdaGC state holds ", j.is_array() ? j.size() : 0, " tensors; the model has ",
         gamma_.size());
  for (size_t i = 0; i < gamma_.size(); ++i) {
    if (j[i].is_null()) gamma_[i] = std::numeric_limits<double>::infinity();
    else if (j[i].is_number()) gamma_[i] = j[i].get<double>();
    else fail("checkpoint: AdaGC state entry ", i, " is not a number");
  }
}

}  // namespace lsgpt
