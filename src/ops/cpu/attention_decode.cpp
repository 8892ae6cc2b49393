// One decoding step of LS attention on the CPU (and the prefill's cache
// write): the new token's k and v go into the cache (local heads: a ring buffer of min(w, max_T) slots, slot pos % slots;
// global heads: slot pos of max_T), then its query attends over the last
// min(pos + 1, w) positions (local) or all pos + 1 (global). The non-obvious
// decision: the visible keys are first gathered in position order and pushed
// through the forward's own tile functions, so a decoded row equals row pos of
// attention_forward bit for bit, not just to rounding; that keeps generation
// with and without the cache on the same tokens.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/attention_tile.h"

namespace lsgpt::cpu {

namespace {

template <typename T>
T* head_cache(T* local, T* global, const DecodeSpec& spec, int entry, int h) {
  const int n_local = spec.n_local, D = spec.head_dim;
  if (h < n_local) return local + (size_t(entry) * n_local + h) * spec.local_slots() * D;
  return global + (size_t(entry) * (spec.n_head - n_local) + (h - n_local)) * spec.max_T * D;
}

}  // namespace

template <typename T>
void attention_decode(T* out, T* k_local, T* v_local, T* k_global, T* v_global, const T* qkv,
                      const DecodeSpec& spec) {
  namespace tile = attention_tile;
  const int B = spec.B, H = spec.n_head, D = spec.head_dim, C = spec.C();
  const int n_local = spec.n_local, n_global = H - n_local;
  LSGPT_CHECK(B >= 1 && H >= 1 && D >= 1 && spec.max_T >= 1, "B=", B, " n_head=", H,
              " head_dim=", D, " max_T=", spec.max_T);
  LSGPT_CHECK(n_local >= 0 && n_local <= H, "n_local=", n_local);
  LSGPT_CHECK(n_local == 0 || spec.window >= 1, "window=", spec.window);
  LSGPT_CHECK(n_local == 0 || (k_local && v_local), "local heads need the local cache");
  LSGPT_CHECK(n_global == 0 || (k_global && v_global), "global heads need the global cache");
  auto position_of = [&](int b) { return spec.positions ? spec.positions[b] : spec.pos; };
  auto entry_of = [&](int b) { return spec.cache_rows ? spec.cache_rows[b] : b; };
  int max_keys = 1;
  for (int b = 0; b < B; ++b) {
    const int pos = position_of(b);
    LSGPT_CHECK(pos < spec.max_T, "decode position ", pos, " outside the cache of ", spec.max_T);
    LSGPT_CHECK(pos < 0 || (entry_of(b) >= 0 && entry_of(b) < spec.cache_entries()),
                "cache row ", entry_of(b), " outside the cache of ", spec.cache_entries());
    max_keys = std::max(max_keys, pos + 1);
  }
  const int slots = spec.local_slots();
  const T tau = T(1.0 / std::sqrt(double(D)));

#pragma omp parallel if (size_t(B) * H * max_keys * D > 32768)
  {
    // Sized for the whole cache, not this step's keys, so the per-thread
    // buffers are allocated by the first step and never again.
    // Named one by one: clang < 16 cannot use structured bindings inside OpenMP regions.
    const size_t cap = size_t(spec.max_T);
    const auto scratch =
        tile::thread_scratch<T, 4>({size_t(D) * cap, cap * D, cap, size_t(D)});
    T* const kt = scratch[0];
    T* const v = scratch[1];
    T* const s = scratch[2];
    T* const o = scratch[3];
#pragma omp for schedule(static)
    for (int task = 0; task < B * H; ++task) {
      const int b = task / H, h = task % H;
      const int pos = position_of(b);
      T* dst = out + size_t(b) * C + size_t(h) * D;
      if (pos < 0) {  // idle row
        std::fill_n(dst, D, T(0));
        continue;
      }
      const bool local = h < n_local;
      const T* q_new = qkv + size_t(b) * 3 * C + size_t(h) * D;
      const T* k_new = q_new + C;
      const T* v_new = q_new + 2 * C;
      T* k_cache = head_cache(k_local, k_global, spec, entry_of(b), h);
      T* v_cache = head_cache(v_local, v_global, spec, entry_of(b), h);
      auto slot_of = [&](int position) { return local ? position % slots : position; };
      std::copy_n(k_new, D, k_cache + size_t(slot_of(pos)) * D);
      std::copy_n(v_new, D, v_cache + size_t(slot_of(pos)) * D);

      const int first = local ? std::max(0, pos - spec.window + 1) : 0;
      const int n = pos + 1 - first;
      for (int j = 0; j < n; ++j) {
        const size_t slot = size_t(slot_of(first + j)) * D;
        for (int d = 0; d < D; ++d) kt[size_t(d) * n + j] = k_cache[slot + d];
        std::copy_n(v_cache + slot, D, v + size_t(j) * D);
      }
      std::fill_n(s, n, T(0));
      tile::matmul_acc(s, n, q_new, D, kt, n, 1, n, D);
      for (int j = 0; j < n; ++j) s[j] *= tau;
      T m, sum;
      tile::softmax_row(s, n, 0, n, m, sum);
      const T inv_sum = T(1) / sum;
      std::fill_n(o, D, T(0));
      tile::matmul_acc(o, D, s, n, v, D, 1, D, n);
      for (int d = 0; d < D; ++d) dst[d] = o[d] * inv_sum;
    }
  }
}

template <typename T>
void kv_cache_write(T* k_local, T* v_local, T* k_global, T* v_global, const T* qkv, int T_,
                    int cache_row, const DecodeSpec& spec) {
  const int H = spec.n_head, D = spec.head_dim, C = spec.C(), slots = spec.local_slots();
  LSGPT_CHECK(T_ >= 0 && T_ <= spec.max_T, "prefill of ", T_, " positions into a cache of ",
              spec.max_T);
  LSGPT_CHECK(cache_row >= 0 && cache_row < spec.cache_entries(), "cache row ", cache_row,
              " outside the cache of ", spec.cache_entries());
  for (int h = 0; h < H; ++h) {
    const bool local = h < spec.n_local;
    T* k_cache = head_cache(k_local, k_global, spec, cache_row, h);
    T* v_cache = head_cache(v_local, v_global, spec, cache_row, h);
    // A local head keeps only what its ring buffer can hold: the last slots positions.
    const int first = local ? std::max(0, T_ - slots) : 0;
    for (int t = first; t < T_; ++t) {
      const size_t slot = size_t(local ? t % slots : t) * D;
      const T* row = qkv + size_t(t) * 3 * C + size_t(h) * D;
      std::copy_n(row + C, D, k_cache + slot);
      std::copy_n(row + 2 * C, D, v_cache + slot);
    }
  }
}

template void kv_cache_write(float*, float*, float*, float*, const float*, int, int,
                             const DecodeSpec&);
template void kv_cache_write(double*, double*, double*, double*, const double*, int, int,
                             const DecodeSpec&);
template void attention_decode(float*, float*, float*, float*, float*, const float*,
                               const DecodeSpec&);
template void attention_decode(double*, double*, double*, double*, double*, const double*,
                               const DecodeSpec&);

}  // namespace lsgpt::cpu
