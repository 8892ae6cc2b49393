// What one attention call needs to know besides its tensors: the LS head split
// and the span/violation gradient settings of the layer (see
// docs/SPAN.md, "lsgpt's reconstruction" of arXiv:2512.13033).
#pragma once

namespace lsgpt {

enum class SpanBasis { cross, self };

// Rewrites one gradient tensor (dQ, dK or dV) row by row:
// g' = alpha_par * g_par + alpha_perp * g_perp along the row's direction u.
struct SpanTarget {
  bool enabled = false;
  SpanBasis basis = SpanBasis::cross;
  double alpha_par = 1.0;
  double alpha_perp = 1.0;
};

// The span settings in force for one layer. Disabled targets must cost nothing.
struct SpanLayer {
  SpanTarget q, k, v;
  bool any() const { return q.enabled || k.enabled || v.enabled; }
  // kbar (P K next to P V) is needed only for the cross basis on dQ.
  bool needs_kbar() const { return q.enabled && q.basis == SpanBasis::cross; }
};

// Heads [0, n_local) are local: query i sees keys max(0, i-window+1) .. i.
// Heads [n_local, n_head) are global causal. Scale is 1/sqrt(head_dim).
struct AttentionSpec {
  int B = 0, T = 0, n_head = 0, head_dim = 0;
  int n_local = 0;
  int window = 1;
  SpanLayer span;  // all-disabled by default
  int C() const { return n_head * head_dim; }
};

// One decoding step: every batch row appends the token at position `pos`
// (the same for all rows) and attends over its cache. Local heads keep a ring
// buffer of local_slots() = min(window, max_T) slots (slot pos % local_slots());
// global heads keep `max_T`.
struct DecodeSpec {
  int B = 0, n_head = 0, head_dim = 0;
  int n_local = 0;
  int window = 1;
  int max_T = 0;
  int pos = 0;
  int local_slots() const { return window < max_T ? window : max_T; }
  int C() const { return n_head * head_dim; }
};

}  // namespace lsgpt
