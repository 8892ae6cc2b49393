// CPU LS attention: local heads touch only their band of w keys (O(T*w)), global heads the causal prefix; P is recomputed from the saved log-sum-exp in the backward, so no T x T matrix is ever stored. Semantics in ops/backend.h.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ops/attention_spec.h"

namespace lsgpt::cpu {

template <typename T>
void attention_forward(T* out, T* lse, T* max_logit, T* kbar, const T* qkv,
                       const AttentionSpec& spec);
template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse,
                        const T* kbar, const AttentionSpec& spec);
template <typename T>
void attention_decode(T* out, T* k_local, T* v_local, T* k_global, T* v_global, const T* qkv,
                      const DecodeSpec& spec);

}  // namespace lsgpt::cpu
