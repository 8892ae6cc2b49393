// Which Hopper (sm_90a) attention kernel runs for a shape. Host-only, so the
// choice is tested without a GPU.
//
// The rules come from bench_cuda_attention forward_kernels=1 and
// backward_kernels=1 on an NVIDIA H200, 2026-11-30 and 2026-12-01, with the
// ws kernels' policies as they are now (docs/BENCHMARKS.md; the reasoning
// in docs/CUDA.md "Choosing a Hopper kernel"). They pick the fastest
// measured variant, or one within 2% of it, for every measured shape
// (MHSA, LS 11/12 w 100, LS 1/2 w 256; D 64 and 128; T 1k, 4k, 16k).
#pragma once

#include <algorithm>
#include <cstdint>

namespace lsgpt::cuda::attn {

// base: one warpgroup, 64 queries a block, cp.async (attention_forward_sm90.cu).
// ws: a TMA producer warpgroup and three (D 64) or two (D 128) consumer
// warpgroups of 64 queries, one block per query block; ws_persistent: the same, one block per
// multiprocessor walking the query blocks (every gridDim.x-th); ws_dynamic:
// ws_persistent taking the next query block from a counter
// (attention_forward_sm90_ws.cu).
enum class Sm90ForwardVariant { base, ws, ws_persistent, ws_dynamic };
// base: one warpgroup a block; wg2: two (128 keys or queries a block);
// one_pass: key blocks only, dQ summed by float atomics (not bit-reproducible);
// one_pass_wg2: the same with two warpgroups (128 keys) a block sharing one
// dQ product, half the atomics. ws: base's two passes and bits, warp-
// specialised (TMA producer warps, three consumer warpgroups at D 64 and
// two at D 128, persistent). ws_band: ws with local heads' work in band runs
// (one pass, dQ summed in order; D 64 without qbar, else ws). ws_one_pass:
// one_pass_wg2 warp-specialised as ws (FlashAttention-3's backward; dQ by
// float atomics, not bit-reproducible; one_pass_wg2 with qbar).
// ws_one_pass_ordered: ws_one_pass with each query tile's dQ slices added
// in key-block order (bit-reproducible; ws with qbar).
enum class Sm90BackwardVariant {
  base,
  wg2,
  ws,
  one_pass,
  one_pass_wg2,
  ws_band,
  ws_one_pass,
  ws_one_pass_ordered
};

// The sizes the choice depends on. window counts the keys a local head sees;
// span_qbar: the span decomposition's cross basis on k (qbar accumulated in
// key blocks beside dK and dV).
struct AttentionShape {
  int B = 0, T = 0, n_head = 0, n_local = 0, window = 1, head_dim = 0;
  bool span_qbar = false;
};

// The share of the score work (query-key pairs) that falls in local heads,
// in [0, 1]; 0 with no heads or no rows.
inline double local_work_share(const AttentionShape& s) {
  const double T = s.T, w = std::min(s.window, s.T);
  const double global_pairs = T * (T + 1) / 2;
  const double local_pairs = w * (w + 1) / 2 + (T - w) * w;
  const double local = s.n_local * local_pairs;
  const double total = local + (s.n_head - s.n_local) * global_pairs;
  return total > 0 ? local / total : 0.0;
}

// Consumer warpgroups of 64 queries a ws forward block has (WsPolicy):
// three at D 64 (1.03-1.16x faster than two on the H200's grid,
// 2026-11-30), two at D 128, whose O and kbar need two's registers.
constexpr int ws_forward_consumers(int padded_head_dim) { return padded_head_dim <= 64 ? 3 : 2; }

// H200, 2026-12-01 (bench_cuda_attention forward_kernels=1; docs/
// BENCHMARKS.md "Forward variants"): ws_dynamic, persistent blocks taking
// the heaviest item left from a counter, was the fastest at D 64 but where
// nearly every head is local: there base (one warpgroup, 64-query blocks,
// several a multiprocessor) stays (GPT-2 small's all-local layer: 0.0653
// ms against ws_dynamic's 0.0661, 23:40 UTC). Until the ws epilogue's TMA
// store (23:40 UTC) base also won where band rows carried half the work and
// each multiprocessor had 16 items or more (LS 11/12 with 32 heads at T
// 1k, 1-3%); now ws_dynamic is 9% faster there (0.1546 against 0.1706 ms).
// At D 128 ws_dynamic won up to T 4k and ws, one block per item, at T 16k
// (as many items as at T 4k, but walks of up to 256 tiles; not understood
// yet). The multiprocessor count is no longer used; kept in the signature
// for the rules that will need it.
inline Sm90ForwardVariant choose_sm90_forward(const AttentionShape& s, int /*sm_count*/) {
  if (s.head_dim > 64)
    return s.T <= 4096 ? Sm90ForwardVariant::ws_dynamic : Sm90ForwardVariant::ws;
  return local_work_share(s) >= 0.9 ? Sm90ForwardVariant::base : Sm90ForwardVariant::ws_dynamic;
}

// ws_band: the query tiles a 64-key block of a local head walks, (w + 62)
// / 64 + 1 (a band run's halo is one block fewer), and whether the band
// runs apply: D 64 (head dims 40 to 64, padded) without qbar, with local
// heads, and bands of at most kMaxBandTiles tiles (w up to 449): the slots
// are global memory (a consumer's tiles - 1 of 16 KiB: 43 MiB at most on
// 132 multiprocessors) and the halo grows with the band; wider ones run ws.
constexpr int kMaxBandTiles = 8;
inline int ws_band_tiles(int window) { return (window + 62) / 64 + 1; }
// The dQ part-sum slots a consumer needs (attention_backward_sm90_ws.cu):
// one fewer than the tiles a key block walks, at least one.
inline int ws_band_slots(int window) { return std::max(1, ws_band_tiles(window) - 1); }
inline bool ws_band_applies(const AttentionShape& s) {
  return s.head_dim > 32 && s.head_dim <= 64 && !s.span_qbar && s.n_local > 0 &&
         ws_band_tiles(std::min(s.window, s.T)) <= kMaxBandTiles;
}

// Key blocks a band run, by default: about two runs a consumer of the
// grid's (three a multiprocessor), but never fewer than 8 blocks (or the
// whole head): a run's halo, the tiles - 1 blocks before it recomputed for
// dQ (2 at w 100), costs it about (tiles - 1) / (run length) of its work.
// H200, 2026-12-01, consumers taking the next item from a counter, w 100:
// runs of 8 within 2.5% of the best of 2, 8, 9 and 16 at LS 11/12, T 1k to
// 16k, and on GPT-2 small's LS and all-local layers; runs of 2 (the halo)
// 3-12% slower, of 16 3-70% (one run a head: fewer items than consumers).
inline int ws_band_run(const AttentionShape& s, int sm_count) {
  const int64_t blocks = (int64_t(s.T) + 63) / 64;
  const int64_t local_blocks = int64_t(s.B) * s.n_local * blocks;
  const int64_t per_run = local_blocks / (2 * 3 * int64_t(std::max(1, sm_count)));
  return int(std::clamp<int64_t>(per_run, std::min<int64_t>(8, blocks),
                                 std::max<int64_t>(blocks, 1)));
}

// ws (TMA producers, two or three consumer warpgroups, persistent) was the
// fastest at every shape of the grid (1.02-1.43x base, H200, 2026-11-30)
// but one: D 128 with qbar, where its accumulators leave room for one
// consumer a block only. There, as before ws existed: wg2 halves the number
// of blocks and wins (3-7%) only while the global heads alone still give
// every multiprocessor two blocks, since the global heads carry most of
// the work. ws_band (band runs) is never the default: ws with its items
// from a counter (the default) is faster wherever band runs had
// won (H200, 2026-12-01, the backward alone: LS 11/12 at T 4k 0.541 ms
// against 0.565, at T 16k 1.005 against 1.045, GPT-2 small's all-local
// layer 0.164 against 0.178); what the band runs had gained over ws was
// the counter.
//
// deterministic = false (LSGPT_ATTENTION_DETERMINISTIC=0) also allows the
// variants that sum dQ by float atomics, as cuDNN's and FlashAttention's
// backwards do: ws_one_pass where nearly all the work is in global heads
// (under 5% in local ones) at T 16384 and longer, without qbar. H200,
// 2026-12-02: at T 16384 it matched or beat ws in every comparison
// (backward alone, alternating builds: MHSA D 64 3-5% faster, D 128
// between 16% faster and 1% slower, LS 1/2 D 128 within 5% either way,
// ws's own time swinging by up to 20% within a run; forward+backward
// against PyTorch: 1.05x, 1.09x, 1.05x, 1.10x the default at MHSA D 64,
// D 128, LS 1/2 D 64, D 128; after ws_one_pass's second round, 07:35 UTC:
// 1.10x, 1.14x, 1.15x, 1.12x, and 1.01x, 1.00x cuDNN at MHSA). At T 4096
// it lost (MHSA D 128 3-9% slower backward, 0.85-0.94x forward+backward
// elsewhere; 0.87x, 0.93x at MHSA after the second round), at T 1024 by
// 0.74-0.81x (short walks pay its per-item costs). Lengths between were
// not measured, nor LS 11/12 (12% local at T 16k).
//
// Deterministic (the default), the same shapes take ws_one_pass_ordered,
// whose turn keepers add each query tile's dQ slices in key-block order.
// H200, 2026-12-02 10:13 UTC (backward alone, one binary, two alternating
// runs): MHSA D 128 T 16k 5.52, 5.28 ms against ws 6.23, 6.32; D 64 6.72,
// 6.69 against 7.26, 7.48; LS 1/2 D 128 2.77, 2.84 against 2.89, 2.88; at
// T 4096 (MHSA D 128, B 4) it lost, 1.54 against 1.49; LS 1/2 D 64 T 16k
// a tie (10:35 UTC: 3.46, 3.43 against 3.53, 3.33).
inline bool ws_one_pass_pays(const AttentionShape& s) {
  return !s.span_qbar && s.T >= 16384 && local_work_share(s) < 0.05;
}

// The span's cross basis on k (s.span_qbar) as a pass of its own before
// the backward (launch_key_direction_sm90) rather than qbar accumulated in
// the backward's key blocks: at D 128, where qbar's accumulator leaves ws
// one consumer a block and base 16-query tiles. At D 64 ws holds qbar with
// two consumers.
inline bool key_direction_pass_pays(const AttentionShape& s) {
  return s.span_qbar && s.head_dim > 64;
}

inline Sm90BackwardVariant choose_sm90_backward(const AttentionShape& s, int sm_count,
                                                bool deterministic = true) {
  if (ws_one_pass_pays(s))
    return deterministic ? Sm90BackwardVariant::ws_one_pass_ordered
                         : Sm90BackwardVariant::ws_one_pass;
  if (s.head_dim <= 64 || !s.span_qbar) return Sm90BackwardVariant::ws;
  const int64_t global_blocks =
      int64_t(s.B) * (s.n_head - s.n_local) * ((int64_t(s.T) + 127) / 128);
  return global_blocks >= 2 * int64_t(sm_count) ? Sm90BackwardVariant::wg2
                                                : Sm90BackwardVariant::base;
}

// ws's buffering at D 64 without qbar: two fixed slots and a two-stage ring
// where a quarter or more of the work is band rows (local items walk about
// w / 64 + 2 tiles, and with one slot each item waits for its K, V or Q,
// dO pair), else one slot and three stages. H200, 2026-12-01, both in the
// same run (bench_cuda_attention, two rounds): two slots 7-9% faster at
// GPT-2 small's LS 11/12 and all-local layers (local share 0.67 and 1), 5%
// and 4% at LS 11/12 T 1k and 4k of the grid (0.64, 0.32); within 2% either
// way at LS 1/2 T 1k and 4k (0.30, 0.11); one slot better by 1-3% for MHSA
// at T 1k and by 5% at LS 1/2 T 16k (0.03). (MHSA at T 4k and 16k came out
// 5% faster with two slots in that run, against the larger losses at T 1k
// and at LS 1/2 T 16k: not taken.)
inline bool ws_backward_short_walks(const AttentionShape& s) {
  return s.head_dim <= 64 && !s.span_qbar && local_work_share(s) >= 0.25;
}

// Consumer warpgroups a ws backward block has (WsBackwardPolicy): three at
// D 64, two with qbar's accumulators or at D 128, one at D 128 with qbar.
constexpr int ws_backward_consumers(int padded_head_dim, bool qbar) {
  return padded_head_dim <= 64 ? (qbar ? 2 : 3) : (qbar ? 1 : 2);
}

// Global heads' two-pass items (a key and a query block each 64 rows) for
// each of ws's consumers.
inline double ws_backward_global_items_per_consumer(const AttentionShape& s, int sm_count) {
  const int64_t streams =
      int64_t(std::max(1, sm_count)) * ws_backward_consumers(s.head_dim, s.span_qbar);
  const int64_t global_items =
      2 * int64_t(s.B) * (s.n_head - s.n_local) * ((int64_t(s.T) + 63) / 64);
  return double(global_items) / double(streams);
}

// ws's items in groups of this many (batch row, head) pairs: every item of
// a group (heaviest first within it) before the next group's, instead of
// every pair's heaviest items first; 0: one group. Items from the counter
// spread over every pair lose L2 reuse (Nsight Compute, H200, MHSA D 128
// T 4k: hit rate 45% by striding, 29% from the counter; the items in
// flight touch every pair's Q, K, V and dO, 256 MiB, against about 50 MB
// of L2). Groups pay where the global heads' long walks are many: a global
// item walks up to T / 64 tiles of its pair's Q, dO or K, V, a local one
// about 3. H200, 2026-12-01 (docs/CUDA.md "Backward on Hopper: ws items
// from a counter"): 6-20% faster wherever the global heads give each
// consumer 8 items or more (MHSA, LS 1/2 w 256, T 1k to 16k) and at LS
// 11/12 D 128 T 1k, within 1% at LS 11/12 D 128 T 4k and 16k, 1-4% slower
// at LS 11/12 D 64 (1.3 to 3.9 global items a consumer), which keeps one
// group. The size: the most pairs, at least 2 and at most 4, whose Q, K, V
// and dO fit in 16 MiB, about a third of L2 (2 and 4 were within 1.2% of
// each other on average, 4 ahead only at MHSA D 128 T 4k; 8 lost up to
// 18% at T 16k). Shapes grouped but not measured: head dims padded to 128
// (96), all-local heads at D 128, and D 64 with the span's qbar.
constexpr int64_t kWsHeadGroupL2Bytes = int64_t(16) << 20;
inline int ws_backward_head_group(const AttentionShape& s, int sm_count) {
  if (s.B <= 0 || s.T <= 0 || s.n_head <= 0) return 0;
  if (s.head_dim <= 64 && ws_backward_global_items_per_consumer(s, sm_count) < 8) return 0;
  const int64_t pair_bytes = 4 * int64_t(s.T) * std::max(1, s.head_dim) * 2;  // bf16
  return int(std::clamp<int64_t>(kWsHeadGroupL2Bytes / pair_bytes, 2, 4));
}

}  // namespace lsgpt::cuda::attn
