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

// One decoding step over a KV cache of `cache_B` sequences (cache entries).
// Local heads keep a ring buffer of local_slots() = min(window, max_T) slots
// (position p lives in slot p % local_slots()); global heads keep `max_T`.
//
// Two ways to say where each of the B rows stands:
// - positions == nullptr: every row appends the token at `pos`, and row b
//   uses cache entry b (the simple form the tests of the op use);
// - positions != nullptr (a backend pointer to int32 [B]): row b appends at
//   positions[b]; a row with a negative position is idle (its output is
//   zeros and the cache is not touched). cache_rows (int32 [B], or null for
//   the identity) maps row b to its cache entry. Reading these from device
//   memory lets one captured CUDA graph serve every step.
// Long global contexts are split into num_splits pieces whose partial
// softmax results are merged in a fixed order (flash-decoding); the pieces
// need `workspace` of Backend::attention_decode_workspace_bytes(spec) bytes,
// zero-filled before its first use (the op leaves it so: it holds a
// completion counter per row and head). num_splits 0: the backend chooses.
struct DecodeSpec {
  int B = 0, n_head = 0, head_dim = 0;
  int n_local = 0;
  int window = 1;
  int max_T = 0;
  int pos = 0;
  const int* positions = nullptr;
  const int* cache_rows = nullptr;
  int cache_B = 0;  // cache entries; 0 means B
  int num_splits = 1;
  void* workspace = nullptr;
  int local_slots() const { return window < max_T ? window : max_T; }
  int C() const { return n_head * head_dim; }
  int cache_entries() const { return cache_B > 0 ? cache_B : B; }
};

}  // namespace lsgpt
