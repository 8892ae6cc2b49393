// The LS mask (attention_common.cuh, HeadMask) as one interval per row of a
// score fragment, for the backward kernels' masked tiles. A thread's
// columns in a tile are base + K, with K = 8 nb + (e & 1) a constant of the
// unrolled loops; the visible ones are the K in [lo, hi). So a masked
// element costs two compares with immediates instead of HeadMask::visible's
// three on absolute indices plus their additions. Nsight Compute (H200,
// 2026-12-02) found integer compares, selects and logic 31% of the ws
// backward's instructions at GPT-2 small's LS shape, whose local heads mask
// every tile they walk; with the intervals that backward ran 15.7% faster
// in the same call (docs/CUDA.md "Backward on Hopper: the mask as intervals").
//
// Compiles as host code (so the intervals are tested against the mask on the
// CPU) and as device code.
#pragma once

#include <algorithm>

#include "core/host_device.h"

namespace lsgpt::cuda::attn {

// Column base + K of one row is visible iff lo <= K < hi (empty if hi <= lo).
struct VisibleColumns {
  int lo, hi;
  LSGPT_HOST_DEVICE constexpr bool has(int k) const { return k >= lo && k < hi; }
};

// A row of S^T (key `key`; columns are queries from `base` >= 0): the
// queries q < T that see the key, key <= q and, on a local head, q < key +
// window. The same as `q < T && visible(q, key)` for every q >= 0.
LSGPT_HOST_DEVICE constexpr VisibleColumns queries_seeing_key(bool local, int window, int key,
                                                              int T, int base) {
  const int hi = local && window < T - key ? key + window : T;  // no int overflow at any window
  return {key - base, hi - base};
}

// A row of S (query `query`; columns are keys from `base` >= 0): the keys
// j <= query and, on a local head, j > query - window. The same as
// `visible(query, j)` for every j >= 0.
LSGPT_HOST_DEVICE constexpr VisibleColumns keys_seen_by_query(bool local, int window, int query,
                                                              int base) {
  const int lo = local ? std::max(0, query - window + 1) : 0;
  return {lo - base, query + 1 - base};
}

}  // namespace lsgpt::cuda::attn
