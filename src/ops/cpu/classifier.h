// CPU softmax + cross-entropy over the (padded) vocabulary. Semantics in ops/backend.h.
// A target >= V is a caller bug and fails LSGPT_CHECK before anything is written.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lsgpt::cpu {

template <typename T>
void softmax_cross_entropy(T* losses, T* logits, const int32_t* targets, int N, int V, int Vp,
                           double dloss, bool compute_grad, double z_coef = 0,
                           T* lse = nullptr);

}  // namespace lsgpt::cpu
