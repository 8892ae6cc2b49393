// CPU LS attention: local heads touch only their band of w keys (O(T*w)),
// global heads the causal prefix; P is recomputed from the saved log-sum-exp
// in the backward, so no T x T matrix is ever stored. Semantics in
// ops/backend.h; the span decomposition in docs/SPAN.md.
//
// Work is split over (batch row, head) pairs, each computed by one thread in
// a fixed order, so every output is bit-identical for any thread count.
// Decode shares the forward's tile functions (attention_tile.h), so a decoded
// row equals the forward's row at that position bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ops/attention_spec.h"

namespace lsgpt::cpu {

// out [B,T,C]; lse [B,n_head,T]; max_logit [n_head] (written); kbar [B,T,C],
// written only when spec.span.needs_kbar() (may be null otherwise).
template <typename T>
void attention_forward(T* out, T* lse, T* max_logit, T* kbar, const T* qkv,
                       const AttentionSpec& spec);
// dqkv [B,T,3C] overwritten: the canonical gradient, then the span rewrite of
// spec.span on the enabled targets. kbar: the forward's, needed only for the
// cross basis on q.
template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse,
                        const T* kbar, const AttentionSpec& spec);
// One token per batch row at its position (spec.pos, or spec.positions[b];
// < max_T, negative: idle row, output zeros): qkv [B,3C], out [B,C]; k and v
// go into slot pos % local_slots() of the local ring buffers and slot pos of
// the global caches before the query attends. Row tables are host memory.
template <typename T>
void attention_decode(T* out, T* k_local, T* v_local, T* k_global, T* v_global, const T* qkv,
                      const DecodeSpec& spec);
// Backend::kv_cache_write: positions 0..T_-1 of qkv [T_,3C] into cache_row.
template <typename T>
void kv_cache_write(T* k_local, T* v_local, T* k_global, T* v_global, const T* qkv, int T_,
                    int cache_row, const DecodeSpec& spec);

}  // namespace lsgpt::cpu
