// CPU QK-norm: per-head RMSNorm of the queries and keys in the qkv buffer.
// Semantics in ops/backend.h (qk_norm_forward / qk_norm_backward).
#pragma once

namespace lsgpt::cpu {

template <typename T>
void qk_norm_forward(T* out, T* rstd, const T* qkv, const T* q_gain, const T* k_gain, int N,
                     int n_head, int D, double eps);
template <typename T>
void qk_norm_backward(T* dqkv, T* dq_gain, T* dk_gain, const T* dout, const T* qkv,
                      const T* q_gain, const T* k_gain, const T* rstd, int N, int n_head, int D);

}  // namespace lsgpt::cpu
