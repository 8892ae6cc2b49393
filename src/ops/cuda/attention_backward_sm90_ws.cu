// LS flash-attention backward for Hopper (sm_90a), warp-specialised: the
// contract and the two-pass algorithm of attention_backward_sm90.cu (key
// blocks own 64 keys and finish dK, dV; query blocks own 64 queries and
// finish dQ; no atomics, and the same products in the same order, so the
// same bits as `base`), with the tile loads moved off the computing warps
// as in FlashAttention-3:
//
// - A block is 1 + kConsumers warpgroups (2, 3 or 4), one per multiprocessor
//   (persistent). Warpgroup 0 gives its registers back (setmaxnreg.dec);
//   its warp c is consumer c's producer: lane 0 loads tiles with TMA
//   (cp.async.bulk.tensor, 128-byte swizzle, zeros past T and past the real
//   head dim) and the warp's lanes copy the lse and delta rows a key block
//   needs beside them.
// - Consumer warpgroup c takes every (gridDim.x kConsumers)-th work item
//   from blockIdx.x kConsumers + c on, or (kDynamic) the next item no
//   consumer has taken yet: a key block or a query block of one (batch row,
//   head), global heads' first and, among them, the longest walks first
//   (within groups of p.head_group (batch row, head) pairs where that is
//   set; attention_sm90_choice.h picks this variant and its schedule where
//   they pay).
//   An item's fixed pair (K and V of a key block; Q and dO of a query
//   block) sits in one of kFixedStages slots, the tiles it walks (Q, dO,
//   lse, delta; or K, V) in a ring of kStages stages, each with `full` and
//   `empty` mbarriers (tma.cuh's protocol). The consumers never wait for
//   each other, and the producer runs ahead across items, so the next
//   item's tiles load while a consumer finishes one and stores its rows.
//
// Band runs (ws_band, D 64 without qbar; opt-in since ws with its items
// from a counter beat it everywhere, attention_sm90_choice.h): a local
// head's work becomes runs of p.band_run key blocks
// in ONE pass instead of key and query blocks in two. A run walks its key
// blocks in order, each over the query tiles of its band, and forms dV and
// dK as a key block does and also each tile's share of dQ, dS K_j
// (one_pass's product: dS^T stored transposed by stmatrix into a dS tile
// of the consumer's own), so 5 products a tile pair instead of 7. A tile's
// dQ sum lives in one of the consumer's slots (global memory, 16 KiB each)
// from its first key block to its own, which finishes the rows; the key
// blocks before a run (its halo: a key block's tiles - 1, 2 at w 100) are
// computed again for their share of its first tiles' dQ only. The sums
// run in key-block order whatever the run length: deterministic, and dK,
// dV are base's bits (dQ within rounding). Runs are long and few, so the items (runs first, then the
// global heads' two-pass items) go to whichever consumer asks next, from
// a counter the producer warp reads (the item's id rides with its first
// fixed pair), rather than by static striding.
//
// The device code exists only in the sm_90a compilation; the compute_80 PTX
// carries a body that traps, and the host never launches it there
// (sm90_backward_supported checks the loaded binary).
#include <cuda.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "core/error.h"
#include "ops/cuda/attention_backward.cuh"
#include "ops/cuda/attention_backward_sm90.cuh"
#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/tma.cuh"
#include "ops/cuda/tma_map.h"
#include "ops/cuda/wgmma.cuh"

namespace lsgpt::cuda::attn {
namespace {

// Keys of a key block, queries of a query block: the m64 of every product.
constexpr int kRows = 64;

// Consumers a block and the registers each gets, and the ring as deep as
// shared memory allows at one block per multiprocessor. D 64: three
// consumers at 160 registers and the producers at 32, the whole register
// file (base's key and query blocks fit 160; three were 1.02-1.28x faster
// than two on the H200, 2026-11-30), one fixed slot and 3 stages each,
// 192 KiB; with qbar (dK, dV and qbar accumulators) two
// at 232, 2 slots and 3 stages. D 128 (32 KiB a pair): two at 232, 1 and
// 2, 192 KiB; with qbar base's ~250 registers leave room for one consumer,
// at 256 (at 232 it spilled, and compute-sanitizer's instrumentation found
// no registers left and stopped the kernel), 2 and 3.
// kShortWalks (D 64 without qbar only; ws_backward_short_walks chooses it):
// 2 fixed slots and 2 stages in the same 192 KiB. With one slot the next
// item's pair can load only once the current walk has ended, so a consumer
// waits for it after every item; a local head's items walk about 3 tiles,
// and that wait is a large share of each (H200, 2026-12-01: local heads'
// backward 7-9% faster with two slots, MHSA at T 1k 1-3% slower, its long
// walks wanting the deeper ring).
// kBand (ws_band; on top of kShortWalks' buffering): local heads' work is
// band runs, one pass that also forms dQ, through a dS tile of its own
// (8 KiB a consumer, 216 KiB in all).
// kDynamic (implied by kBand): a consumer's next item is the next one no
// consumer has taken yet, from a counter, instead of every (consumers)-th.
template <int D, bool kQbar, bool kShortWalks = false, bool kBand = false, bool kDynamic = kBand>
struct WsBackwardPolicy {
  static_assert(!kShortWalks || (D == 64 && !kQbar), "short walks: D 64 without qbar");
  static_assert(!kBand || kShortWalks, "band runs: the two-slot buffering");
  static_assert(!kBand || kDynamic, "band runs: items from the counter");
  static constexpr bool kBandRuns = kBand;
  static constexpr bool kDynamicItems = kDynamic;
  static constexpr int kConsumers = ws_backward_consumers(D, kQbar);
  static constexpr int kProducerRegs = kConsumers == 3 ? 32 : 40;
  static constexpr int kConsumerRegs = kConsumers == 3 ? 160 : kConsumers == 2 ? 232 : 256;
  static constexpr int kStages = kShortWalks ? 2 : D == 64 || kConsumers == 1 ? 3 : 2;
  static constexpr int kFixedStages =
      kShortWalks || !(kConsumers == 3 || (D == 128 && kConsumers == 2)) ? 2 : 1;
};

// One consumer's pipeline state: the ring (`full`: the producer warp's 32
// lanes, one with the TMA byte count; `empty`: the consumer's threads), the
// fixed slots (`fixed_full`: the TMA bytes; `fixed_empty`: the consumer's
// threads) with the item each pair belongs to (-1 after the last: the
// producer hands the consumer its items), and the ring stages' lse (log2
// units) and delta rows.
template <class Policy>
struct ConsumerPipe {
  uint64_t full[Policy::kStages], empty[Policy::kStages];
  uint64_t fixed_full[Policy::kFixedStages], fixed_empty[Policy::kFixedStages];
  int fixed_item[Policy::kFixedStages];
  float lse[Policy::kStages][kRows], delta[Policy::kStages][kRows];
};

template <int D, bool kQbar, class Policy>
struct WsBackwardShape {
  static_assert(D == 64 || D == 128, "the wgmma backward is built for D = 64 and 128");
  static_assert(Policy::kStages >= 2 && Policy::kFixedStages >= 1, "a stage loading, one in use");
  static constexpr int kConsumers = Policy::kConsumers;
  static constexpr int kBlockThreads = (1 + kConsumers) * kThreads;
  static constexpr int kQ = kKeyBlockQueryTile<D, kQbar>;  // queries per tile a key block walks
  static constexpr int kTileBytes = sw128_tile_bytes<kRows, D>();
  // A fixed pair or a ring stage: two tiles of up to 64 rows.
  static constexpr int kPairBytes = 2 * kTileBytes;
  // The band runs' dS tile (64 queries x 64 keys), after the ring.
  static constexpr int kDsBytes = Policy::kBandRuns ? sw128_tile_bytes<kRows, kRows>() : 0;
  static constexpr int kConsumerBytes =
      (Policy::kFixedStages + Policy::kStages) * kPairBytes + kDsBytes;
  static constexpr size_t kSmemBytes = size_t(kConsumers) * kConsumerBytes + kAtomBytes;
  // With the static pipes beside it.
  static_assert(kSmemBytes + sizeof(ConsumerPipe<Policy>) * kConsumers <= 227 * 1024,
                "over the opt-in shared memory of one block");
  static_assert(Policy::kProducerRegs * kThreads + Policy::kConsumerRegs * kConsumers * kThreads <=
                    launch_register_pool(kBlockThreads),
                "setmaxnreg would wait for registers the launch did not allocate");
};

#if LSGPT_SM90A_DEVICE

// One work item: a key block or a query block of one (batch row, head),
// or (p.band_run > 0) a band run of a local head. Items 0 .. (global heads'
// count) - 1 are the global heads', then the local heads'; within each,
// rank-major over the class's (batch row, head) pairs, ranks alternating
// key block 0, 1, ... (longest walk first) and query block n - 1, n - 2,
// ... (likewise); with p.head_group, rank-major within each group of that
// many pairs, group after group, so that the items in flight share their
// heads' tiles in L2. With band runs they come first (long items, best
// taken while every consumer is free), ranked by run (block = the run's
// index), then the global heads' items.
struct BackwardItem {
  bool key, band;
  int block, b, h;

  __device__ __forceinline__ BackwardItem(const BackwardParams& p, int B, int item) {
    const int n_blocks = p.n_key_blocks, n_global = p.n_head - p.n_local;
    const int global_items = B * n_global * 2 * n_blocks;
    int heads = n_global, first_head = p.n_local;
    band = false;
    if (p.band_run > 0) {
      const int band_items = B * p.n_local * ((n_blocks + p.band_run - 1) / p.band_run);
      if (item < band_items)
        heads = p.n_local, first_head = 0, band = true;
      else
        item -= band_items;
    } else if (item >= global_items) {
      item -= global_items, heads = p.n_local, first_head = 0;
    }
    const int n_bh = B * heads;
    const int ranks = band ? (n_blocks + p.band_run - 1) / p.band_run : 2 * n_blocks;
    int rank = item / n_bh, x = item % n_bh;
    if (p.head_group > 0 && p.head_group < n_bh) {
      const int per_group = p.head_group * ranks, g = item / per_group, r = item % per_group;
      const int size = min(p.head_group, n_bh - g * p.head_group);  // the last may be smaller
      rank = r / size, x = g * p.head_group + r % size;
    }
    b = x / heads, h = first_head + x % heads;
    key = band || rank % 2 == 0;
    block = band ? rank : key ? rank / 2 : n_blocks - 1 - rank / 2;
  }
};

// A band run of a local head: it finishes dK, dV of key blocks [j0, j1)
// and dQ of query tiles [j0, j1) in one pass, key block by key block; the
// halo key blocks [jh, j0) add only their share of those tiles' dQ (the
// previous run computes their S^T, dP^T again for its own tiles). Query
// tile i's dQ takes key blocks first_key_block(i) .. i in that order, in
// whichever run they fall, so the run length changes no bit.
struct BandRun {
  int jh, j0, j1;
};

__device__ __forceinline__ int first_key_block(const BackwardParams& p, int tile) {
  return max(0, tile * kRows - p.window + 1) / kRows;
}

__device__ __forceinline__ BandRun band_run(const BackwardParams& p, int run) {
  const int j0 = run * p.band_run, j1 = min(p.n_key_blocks, j0 + p.band_run);
  return {first_key_block(p, j0), j0, j1};
}

// The query tiles key block j walks in `run`: its whole band for the run's
// own key blocks (dK, dV), only the run's tiles for a halo block.
__device__ __forceinline__ QueryTileRange band_walk(const BackwardParams& p, const BandRun& run,
                                                    int j) {
  const QueryTileRange band = query_tiles_seeing<kRows>(HeadMask{true, p.window}, j * kRows,
                                                        kRows, p.T);
  if (j >= run.j0) return band;
  return {run.j0, min(band.last, run.j1 - 1)};
}

// The tiles an item walks, first and last (inclusive): query tiles of kQ
// rows seeing a key block's keys, or key tiles of 64 in a query block's band.
template <int kQ>
__device__ __forceinline__ QueryTileRange item_walk(const BackwardParams& p,
                                                    const BackwardItem& w) {
  const HeadMask mask{w.h < p.n_local, p.window};
  const int r0 = w.block * kRows;
  if (w.key) return query_tiles_seeing<kQ>(mask, r0, kRows, p.T);
  const int key_lo = mask.local ? max(0, r0 - p.window + 1) : 0;
  return {key_lo / kQueryBlockKeyTile, (min(p.T, r0 + kRows) - 1) / kQueryBlockKeyTile};
}

// The arrival counts of a consumer's barriers (ConsumerPipe).
template <class Policy>
__device__ __forceinline__ void init_pipe(ConsumerPipe<Policy>& pipe) {
  // fixed_full: one arrival (the producer's lane 0, with the TMA bytes or,
  // after the last item, alone).
  for (int s = 0; s < Policy::kStages; ++s)
    mbarrier_init(&pipe.full[s], kWarpSize), mbarrier_init(&pipe.empty[s], kThreads);
  for (int s = 0; s < Policy::kFixedStages; ++s)
    mbarrier_init(&pipe.fixed_full[s], 1), mbarrier_init(&pipe.fixed_empty[s], kThreads);
}

// The tensor maps (tma_map.h) the producer loads from: qkv and dout with
// 64-row boxes, and with kQ-row boxes for the tiles a key block walks (the
// same maps when kQ is 64).
struct WsMaps {
  const CUtensorMap *qkv, *dout, *q_walk, *do_walk;
};

// The producer's tiles of one walk (all 32 lanes): query tiles (Q, dO, lse,
// delta) for a key block, key tiles (K, V) for a query block, each into the
// next ring stage once the consumer has released it.
template <int D, bool kQbar, class Policy>
__device__ __forceinline__ void walk_tiles(const WsMaps& maps, const BackwardParams& p,
                                           const BackwardItem& w, QueryTileRange walk, int& it,
                                           unsigned char* ring, ConsumerPipe<Policy>& pipe) {
  using Shape = WsBackwardShape<D, kQbar, Policy>;
  constexpr int kQ = Shape::kQ, kStages = Policy::kStages;
  // lse and delta read before the wait where the producer's registers
  // allow (QueryTileStats); at 32 (three consumers) ptxas spilled more.
  constexpr bool kStatsEarly = Policy::kProducerRegs >= 40;
  const int lane = threadIdx.x % kWarpSize;
  const size_t stats_row = size_t(w.b * p.n_head + w.h) * p.T;
  for (int tile = walk.first; tile <= walk.last; ++tile, ++it) {
    const int s = it % kStages;
    const int i0 = tile * kQ;
    QueryTileStats<kQ> stats;
    if (kStatsEarly && w.key) stats.load(p, stats_row, i0, lane);
    if (it >= kStages) mbarrier_wait(&pipe.empty[s], (it / kStages - 1) & 1);
    unsigned char* dst = ring + s * Shape::kPairBytes;
    uint64_t* bar = &pipe.full[s];
    if (w.key) {
      if (lane == 0) {  // the copies first: they take longest
        mbarrier_expect_tx(bar, 2 * sw128_tile_bytes<kQ, D>());
        tma_load_head_tile<D, kQ>(dst, maps.q_walk, bar, w.h, i0, w.b);
        tma_load_head_tile<D, kQ>(dst + Shape::kTileBytes, maps.do_walk, bar, w.h, i0, w.b);
      }
      if (!kStatsEarly) stats.load(p, stats_row, i0, lane);
      stats.store(pipe.lse[s], pipe.delta[s], lane);
      mbarrier_arrive(bar);  // after this lane's lse and delta stores
    } else {
      if (lane == 0) {
        const int j0 = tile * kQueryBlockKeyTile;
        mbarrier_arrive_expect_tx(bar, Shape::kPairBytes);
        tma_load_head_tile<D, kRows>(dst, maps.qkv, bar, p.n_head + w.h, j0, w.b);
        tma_load_head_tile<D, kRows>(dst + Shape::kTileBytes, maps.qkv, bar, 2 * p.n_head + w.h,
                                     j0, w.b);
      } else {
        mbarrier_arrive(bar);
      }
    }
  }
}

// The item a producer warp takes after `item` (every lane calls it): the
// next stream's turn (static striding), or with kDynamicItems the next not
// yet taken by any consumer (take_next_item; each stream's first item is
// its own index).
template <class Policy>
__device__ __forceinline__ int next_item(const BackwardParams& p, int item, int n_items,
                                         int n_streams) {
  if constexpr (!Policy::kDynamicItems) {
    return item + n_streams;
  } else {
    int next = 0;
    if (threadIdx.x % kWarpSize == 0) next = take_next_item(p.item_counter, n_items, n_streams);
    return __shfl_sync(0xffffffffu, next, 0);
  }
}

// Producer warp of one consumer (all 32 lanes call it): for each of the
// consumer's items its fixed pair, then each walked tile into the ring.
// `it` counts walked tiles over all the consumer's items: tile `it` goes to
// stage it % kStages, its (it / kStages)-th use; `k` counts fixed pairs
// likewise for the fixed slots (one an item, one a key block of a band run).
template <int D, bool kQbar, class Policy>
__device__ void produce(const WsMaps& maps, const BackwardParams& p, int B, int n_items,
                        int stream, int n_streams, unsigned char* smem,
                        ConsumerPipe<Policy>& pipe) {
  using Shape = WsBackwardShape<D, kQbar, Policy>;
  constexpr int kQ = Shape::kQ, kFixed = Policy::kFixedStages;
  const int lane = threadIdx.x % kWarpSize;
  unsigned char* ring = smem + kFixed * Shape::kPairBytes;
  int it = 0, k = 0;
  // The k-th fixed pair, of `item`: K, V of key block r0 / 64 (key) or Q,
  // dO of query block r0 / 64. The item's id goes with it (before the
  // arrival, which releases it to the consumer).
  auto fixed_pair = [&](int item, bool key, int b, int h, int r0) {
    const int fs = k % kFixed;
    if (k >= kFixed) mbarrier_wait(&pipe.fixed_empty[fs], (k / kFixed - 1) & 1);
    ++k;
    if (lane != 0) return;
    unsigned char* dst = smem + fs * Shape::kPairBytes;
    uint64_t* bar = &pipe.fixed_full[fs];
    pipe.fixed_item[fs] = item;
    mbarrier_arrive_expect_tx(bar, Shape::kPairBytes);
    tma_load_head_tile<D, kRows>(dst, maps.qkv, bar, (key ? p.n_head : 0) + h, r0, b);
    if (key)
      tma_load_head_tile<D, kRows>(dst + Shape::kTileBytes, maps.qkv, bar, 2 * p.n_head + h, r0, b);
    else
      tma_load_head_tile<D, kRows>(dst + Shape::kTileBytes, maps.dout, bar, h, r0, b);
  };
  for (int item = stream; item < n_items; item = next_item<Policy>(p, item, n_items, n_streams)) {
    const BackwardItem w(p, B, item);
    if constexpr (Policy::kBandRuns) {
      if (w.band) {
        const BandRun run = band_run(p, w.block);
        for (int j = run.jh; j < run.j1; ++j) {
          fixed_pair(item, true, w.b, w.h, j * kRows);
          walk_tiles<D, kQbar, Policy>(maps, p, w, band_walk(p, run, j), it, ring, pipe);
        }
        continue;
      }
    }
    fixed_pair(item, w.key, w.b, w.h, w.block * kRows);
    walk_tiles<D, kQbar, Policy>(maps, p, w, item_walk<kQ>(p, w), it, ring, pipe);
  }
  if constexpr (Policy::kDynamicItems) {
    // No more items from the counter: the next fixed slot says so (-1, no bytes).
    const int fs = k % kFixed;
    if (k >= kFixed) mbarrier_wait(&pipe.fixed_empty[fs], (k / kFixed - 1) & 1);
    if (lane == 0) {
      pipe.fixed_item[fs] = -1;
      mbarrier_arrive(&pipe.fixed_full[fs]);
    }
  }
}

// A consumer's key block: base's key_block walk, each query tile waited for
// in the ring and released once its products have completed.
template <int D, bool kSpan, bool kQbar, class Policy>
__device__ __forceinline__ void consume_key_block(const BackwardParams& p, const BackwardItem& w,
                                                  QueryTileRange walk, int& it,
                                                  uint32_t fixed_addr, uint64_t* fixed_empty,
                                                  unsigned char* ring,
                                                  ConsumerPipe<Policy>& pipe) {
  using Shape = WsBackwardShape<D, kQbar, Policy>;
  constexpr int kQ = Shape::kQ, kStages = Policy::kStages;
  const int wg_thread = threadIdx.x % kThreads;
  const int lane = threadIdx.x % kWarpSize, warp = wg_thread / kWarpSize;
  const int group = lane >> 2, quad = lane & 3;
  const int bh = w.b * p.n_head + w.h, k0 = w.block * kRows;
  const HeadRows rows = head_rows(p, bh, w.b, w.h);
  const HeadMask mask{w.h < p.n_local, p.window};
  const int key_row = k0 + warp * 16 + group;  // and key_row + 8
  const uint32_t k_addr = fixed_addr, v_addr = fixed_addr + Shape::kTileBytes;
  float dk[D / 2] = {}, dv[D / 2] = {}, qbar[kQbar ? D / 2 : 1] = {}, colsum[2] = {};

  for (int tile = walk.first; tile <= walk.last; ++tile, ++it) {
    const int s = it % kStages;
    mbarrier_wait(&pipe.full[s], (it / kStages) & 1);
    const uint32_t q_addr = smem_address(ring + s * Shape::kPairBytes);
    const QueryTile query_tile{q_addr, q_addr + Shape::kTileBytes, pipe.lse[s], pipe.delta[s]};
    const int i0 = tile * kQ;
    // Band runs' kernels keep the element-by-element mask (key_softmax).
    key_tile_step<D, kRows, kQ, kQbar, !Policy::kBandRuns>(dv, dk, qbar, colsum, k_addr, v_addr,
                                                           query_tile, p, i0, k0, mask, key_row,
                                                           quad);
    mbarrier_arrive(&pipe.empty[s]);  // its products have completed (wgmma_wait<0>)
  }
  mbarrier_arrive(fixed_empty);  // K, V read no more: the next item's pair may load
  finish_wgmma_key_rows<D, kSpan, kQbar>(p, dk, dv, qbar, colsum, key_row, rows, quad);
}

// A consumer's query block: base's query_block walk over the ring's K, V tiles.
template <int D, bool kSpan, bool kQbar, class Policy>
__device__ __forceinline__ void consume_query_block(const BackwardParams& p,
                                                    const BackwardItem& w, QueryTileRange walk,
                                                    int& it, uint32_t fixed_addr,
                                                    uint64_t* fixed_empty, unsigned char* ring,
                                                    ConsumerPipe<Policy>& pipe) {
  using Shape = WsBackwardShape<D, kQbar, Policy>;
  constexpr int kStages = Policy::kStages;
  const int wg_thread = threadIdx.x % kThreads;
  const int lane = threadIdx.x % kWarpSize, warp = wg_thread / kWarpSize;
  const int group = lane >> 2, quad = lane & 3;
  const int bh = w.b * p.n_head + w.h, q0 = w.block * kRows;
  const HeadMask mask{w.h < p.n_local, p.window};
  const int row_a = q0 + warp * 16 + group;  // and row_a + 8
  float lse_log2[2], delta[2];
  load_query_stats(lse_log2, delta, p, bh, row_a);
  const uint32_t q_addr = fixed_addr, do_addr = fixed_addr + Shape::kTileBytes;
  float dq[D / 2];
  zero(dq);

  for (int tile = walk.first; tile <= walk.last; ++tile, ++it) {
    const int s = it % kStages;
    mbarrier_wait(&pipe.full[s], (it / kStages) & 1);
    const uint32_t k_addr = smem_address(ring + s * Shape::kPairBytes);
    const uint32_t v_addr = k_addr + Shape::kTileBytes;
    const int j0 = tile * kQueryBlockKeyTile;
    query_tile_step<D>(dq, q_addr, k_addr, do_addr, v_addr, p, q0, j0, lse_log2, delta, mask,
                       row_a, quad);
    mbarrier_arrive(&pipe.empty[s]);
  }
  mbarrier_arrive(fixed_empty);  // Q, dO read no more: the next item's pair may load
  const __nv_bfloat16* q_base = p.qkv + size_t(w.b) * p.T * 3 * p.C + w.h * p.head_dim;
  finish_query_rows<D / 8, kSpan>(
      p, [&](int db, int i) { return dq[4 * db + i]; }, row_a, w.b, w.h, q_base, quad);
}

// Where a band run's query tile keeps its dQ part sum between key blocks:
// slot tile % band_slots of its consumer. A tile is live from its first key
// block to its own, and a key block walks its tiles in order, finishing its
// own tile first, so band_slots = (tiles a key block walks) - 1 slots never
// hold two live tiles. A slot holds the warpgroup's accumulator elements
// 4 i .. 4 i + 3 of all 128 threads side by side for each i, so each
// warp's 16-byte pieces make whole 512-byte lines. (H200, 2026-12-01,
// GPT-2 small's LS layer: a thread's own 128 bytes in one piece made the
// band runs 30% slower, the sums in dqkv's own rows (no memory, 16-byte
// pieces of eight rows a warp) 29% slower.) Only the thread that wrote a
// value reads it back, so no barrier orders them.
struct BandDq {
  float* slot;
  bool first, last;  // the key block starts the tile's sum / is the tile's own, which finishes it
};

template <int N>
__device__ __forceinline__ void load_part_sum(float (&acc)[N], const float* slot) {
  const float* mine = slot + 4 * (threadIdx.x % kThreads);
#pragma unroll
  for (int i = 0; i < N; i += 4) {
    const float4 x = *reinterpret_cast<const float4*>(mine + i * kThreads);
    acc[i] = x.x, acc[i + 1] = x.y, acc[i + 2] = x.z, acc[i + 3] = x.w;
  }
}

template <int N>
__device__ __forceinline__ void store_part_sum(float* slot, const float (&acc)[N]) {
  float* mine = slot + 4 * (threadIdx.x % kThreads);
#pragma unroll
  for (int i = 0; i < N; i += 4)
    *reinterpret_cast<float4*>(mine + i * kThreads) =
        make_float4(acc[i], acc[i + 1], acc[i + 2], acc[i + 3]);
}

// A band run's step on the query tile at i0 for key block k_addr / v_addr
// (kMasked as key_tile_step): S^T, dP^T and the softmax step as a key
// block's; with kKeySide (the run's own key blocks) dV += P^T dO and
// dK += dS^T Q; with kQuerySide (tiles the run finishes) dS^T stored
// transposed into the dS tile and dQ's part sum += dS K_j (one_pass's
// product, accumulated onto the sum read back from its slot), then either
// stored back or, at the tile's own key block, finished as a query block
// finishes its rows. The dS tile is the warpgroup's: a barrier
// before the store (the previous product has read it in every warp) and
// one after it (every warp's part is in). barrier_id: the consumer's.
template <int D, bool kSpan, bool kMasked, bool kKeySide, bool kQuerySide>
__device__ __forceinline__ void band_tile_step(float (&dv)[D / 2], float (&dk)[D / 2],
                                               float (&colsum)[2], uint32_t k_addr,
                                               uint32_t v_addr, uint32_t ds_addr,
                                               const QueryTile& tile, const BackwardParams& p,
                                               const HeadRows& rows, int i0, int key_row,
                                               const BandDq& dq, int barrier_id) {
  static_assert(D == 64, "band runs: one 64-column panel of K for the dQ product");
  constexpr int kQ = kRows;
  const int lane = threadIdx.x % kWarpSize, warp = (threadIdx.x % kThreads) / kWarpSize;
  const int quad = lane & 3;
  uint32_t a_p[kQ / 16][4], a_ds[kQ / 16][4];
  key_tile_fragments<D, kRows, kQ, kMasked, false, false>(a_p, a_ds, colsum, k_addr, v_addr, tile,
                                                          p, i0, HeadMask{true, p.window}, key_row,
                                                          quad);
  float acc[D / 2];
  if constexpr (kQuerySide) {
    named_barrier_sync<kThreads>(barrier_id);
    store_transposed_sw128<kQ>(ds_addr, a_ds);
    fence_proxy_async_shared();  // stmatrix wrote what wgmma reads
    if (dq.first)
      zero(acc);
    else
      load_part_sum(acc, dq.slot);
  }
  if constexpr (kKeySide) {
    float no_qbar[1];
    issue_key_gradients<D, kQ, false>(dv, dk, no_qbar, a_p, a_ds, tile.q_addr, tile.do_addr);
  }
  if constexpr (kQuerySide) {
    named_barrier_sync<kThreads>(barrier_id);
    fence_operands(acc);
    wgmma_fence();
#pragma unroll
    for (int kc = 0; kc < kRows / 16; ++kc)
      wgmma_ss<D, Major::K, Major::MN>(acc, k_major_descriptor<kQ>(ds_addr, kc),
                                       n_major_descriptor<kRows>(k_addr, kc), 1);
    wgmma_commit();
  }
  wgmma_wait<0>();
  if constexpr (kKeySide) fence_operands(dv), fence_operands(dk);
  if constexpr (kQuerySide) {
    fence_operands(acc);
    if (dq.last) {
      finish_query_rows<D / 8, kSpan>(
          p, [&](int db, int i) { return acc[4 * db + i]; }, i0 + warp * 16 + (lane >> 2),
          rows.b, rows.h, rows.q_base, quad);
    } else {
      store_part_sum(dq.slot, acc);
    }
  }
}

// A consumer's band run (module comment, BandRun): key block by key block,
// each K, V pair from a fixed slot and its query tiles from the ring, as a
// key block's walk; dK, dV of the run's own key blocks finished as a key
// block's, dQ of its tiles in band_tile_step. `k` counts fixed pairs.
template <int D, bool kSpan, class Policy>
__device__ void consume_band_run(const BackwardParams& p, const BackwardItem& w, int& it, int& k,
                                 unsigned char* smem, ConsumerPipe<Policy>& pipe,
                                 float* dq_slots, int barrier_id) {
  using Shape = WsBackwardShape<D, false, Policy>;
  constexpr int kFixed = Policy::kFixedStages, kStages = Policy::kStages;
  unsigned char* ring = smem + kFixed * Shape::kPairBytes;
  const uint32_t ds_addr = smem_address(ring + kStages * Shape::kPairBytes);
  const int wg_thread = threadIdx.x % kThreads;
  const int lane = threadIdx.x % kWarpSize, warp = wg_thread / kWarpSize;
  const int group = lane >> 2, quad = lane & 3;
  const HeadRows rows = head_rows(p, w.b * p.n_head + w.h, w.b, w.h);
  const HeadMask mask{true, p.window};
  const BandRun run = band_run(p, w.block);

  for (int j = run.jh; j < run.j1; ++j, ++k) {
    const int fs = k % kFixed;
    if (j > run.jh) mbarrier_wait(&pipe.fixed_full[fs], (k / kFixed) & 1);  // the first: consume's
    const uint32_t k_addr = smem_address(smem + fs * Shape::kPairBytes);
    const uint32_t v_addr = k_addr + Shape::kTileBytes;
    const int k0 = j * kRows, key_row = k0 + warp * 16 + group;  // and key_row + 8
    const bool own = j >= run.j0;
    float dk[D / 2] = {}, dv[D / 2] = {}, colsum[2] = {};
    const QueryTileRange walk = band_walk(p, run, j);
    for (int tile = walk.first; tile <= walk.last; ++tile, ++it) {
      const int s = it % kStages;
      mbarrier_wait(&pipe.full[s], (it / kStages) & 1);
      const uint32_t q_addr = smem_address(ring + s * Shape::kPairBytes);
      const QueryTile query_tile{q_addr, q_addr + Shape::kTileBytes, pipe.lse[s], pipe.delta[s]};
      const int i0 = tile * kRows;
      const BandDq dq{dq_slots + size_t(tile % p.band_slots) * kRows * D,
                      j == first_key_block(p, tile), j == tile};
      auto step = [&](auto masked, auto key_side, auto query_side) {
        band_tile_step<D, kSpan, decltype(masked)::value, decltype(key_side)::value,
                       decltype(query_side)::value>(dv, dk, colsum, k_addr, v_addr, ds_addr,
                                                    query_tile, p, rows, i0, key_row, dq,
                                                    barrier_id);
      };
      auto sides = [&](auto masked) {
        if (!own)
          step(masked, std::false_type{}, std::true_type{});
        else if (tile < run.j1)
          step(masked, std::true_type{}, std::true_type{});
        else
          step(masked, std::true_type{}, std::false_type{});
      };
      if (mask.tile_needs_mask(i0, kRows, k0, kRows) || i0 + kRows > p.T)
        sides(std::true_type{});
      else
        sides(std::false_type{});
      mbarrier_arrive(&pipe.empty[s]);  // its products have completed (wgmma_wait<0>)
    }
    mbarrier_arrive(&pipe.fixed_empty[fs]);  // K, V read no more
    if (own) {
      const float no_qbar[1] = {};
      finish_wgmma_key_rows<D, kSpan, false>(p, dk, dv, no_qbar, colsum, key_row, rows, quad);
    }
  }
}

// One consumer warpgroup: its items in order, each after its fixed pair
// has arrived. The pair is released when the walk ends, before the item's
// rows are finished and stored (from registers), so the producer loads the
// next item's pair meanwhile.
template <int D, bool kSpan, bool kQbar, class Policy>
__device__ void consume(const BackwardParams& p, int B, int n_items, int stream, int n_streams,
                        unsigned char* smem, ConsumerPipe<Policy>& pipe, int barrier_id) {
  using Shape = WsBackwardShape<D, kQbar, Policy>;
  constexpr int kFixed = Policy::kFixedStages;
  unsigned char* ring = smem + kFixed * Shape::kPairBytes;
  int it = 0, k = 0;
  // Static striding: every n_streams-th item from `stream`; with items from
  // the counter (where `item` is overwritten) until the producer says none
  // is left, which is after n_items turns at most. (An endless loop made
  // ptxas spill four times as much.)
  for (int item = stream, turn = 0; Policy::kDynamicItems ? turn < n_items : item < n_items;
       item += n_streams, ++turn) {
    const int fs = k % kFixed;
    mbarrier_wait(&pipe.fixed_full[fs], (k / kFixed) & 1);
    if constexpr (Policy::kDynamicItems) {
      // The producer took the item from the counter; it comes with its
      // first fixed pair (-1: none left). Read through a shuffle, so that
      // ptxas sees a warp-uniform value.
      item = __shfl_sync(0xffffffffu, pipe.fixed_item[fs], 0);
      if (item < 0) break;
    }
    const BackwardItem w(p, B, item);
    if constexpr (Policy::kBandRuns) {
      if (w.band) {
        float* dq_slots = p.band_dq + size_t(stream) * p.band_slots * kRows * D;
        consume_band_run<D, kSpan, Policy>(p, w, it, k, smem, pipe, dq_slots, barrier_id);
        continue;
      }
    }
    const QueryTileRange walk = item_walk<Shape::kQ>(p, w);
    ++k;
    const uint32_t fixed_addr = smem_address(smem + fs * Shape::kPairBytes);
    if (w.key)
      consume_key_block<D, kSpan, kQbar, Policy>(p, w, walk, it, fixed_addr,
                                                 &pipe.fixed_empty[fs], ring, pipe);
    else
      consume_query_block<D, kSpan, kQbar, Policy>(p, w, walk, it, fixed_addr,
                                                   &pipe.fixed_empty[fs], ring, pipe);
  }
}

#endif  // LSGPT_SM90A_DEVICE

// n_items = 2 ceil(T / 64) B n_head (with band runs: 2 ceil(T / 64) B
// global heads + B n_local runs a head); one block per multiprocessor at most.
template <int D, bool kSpan, bool kQbar, class Policy>
__global__ void __launch_bounds__(WsBackwardShape<D, kQbar, Policy>::kBlockThreads, 1)
    attention_backward_sm90_ws_kernel(const __grid_constant__ CUtensorMap qkv_map,
                                      const __grid_constant__ CUtensorMap dout_map,
                                      const __grid_constant__ CUtensorMap q_walk_map,
                                      const __grid_constant__ CUtensorMap do_walk_map,
                                      const BackwardParams p, int B, int n_items) {
  wait_for_previous_grid();
  allow_next_grid();
#if LSGPT_SM90A_DEVICE
  constexpr int kConsumers = Policy::kConsumers;
  using Shape = WsBackwardShape<D, kQbar, Policy>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ ConsumerPipe<Policy> pipes[kConsumers];
  unsigned char* smem = align_to_atom(smem_raw);

  // 0: the producers, 1..kConsumers: consumers. Read through a shuffle so
  // that ptxas sees a warp-uniform value (as the forward's ws kernel).
  const int role = __shfl_sync(0xffffffffu, int(threadIdx.x) / kThreads, 0);
  if (threadIdx.x == 0) {
    for (int c = 0; c < kConsumers; ++c) init_pipe(pipes[c]);
    fence_mbarrier_init();
  }
  __syncthreads();  // the last block-wide barrier: the roles part here

  const int n_streams = int(gridDim.x) * kConsumers;
  if (role == 0) {
    setmaxnreg_dec<Policy::kProducerRegs>();
    const int warp = threadIdx.x / kWarpSize;
    if (warp < kConsumers) {
      const WsMaps maps{&qkv_map, &dout_map, &q_walk_map, &do_walk_map};
      produce<D, kQbar, Policy>(maps, p, B, n_items, blockIdx.x * kConsumers + warp, n_streams,
                                smem + warp * Shape::kConsumerBytes, pipes[warp]);
    }
    return;
  }
  setmaxnreg_inc<Policy::kConsumerRegs>();
  const int c = role - 1;
  consume<D, kSpan, kQbar, Policy>(p, B, n_items, blockIdx.x * kConsumers + c, n_streams,
                                   smem + c * Shape::kConsumerBytes, pipes[c], 1 + c);
#else
  __trap();  // only the sm_90a binary has this kernel; the host never launches it elsewhere
#endif
}

template <int D, bool kSpan, bool kQbar, bool kShortWalks, bool kBand = false,
          bool kDynamic = kBand>
void launch(CudaContext& ctx, const BackwardParams& p, int B) {
  using Policy = WsBackwardPolicy<D, kQbar, kShortWalks, kBand, kDynamic>;
  using Shape = WsBackwardShape<D, kQbar, Policy>;
  auto kernel = attention_backward_sm90_ws_kernel<D, kSpan, kQbar, Policy>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(Shape::kSmemBytes)));
  BackwardParams q = p;
  q.n_key_blocks = q.n_query_blocks = ceil_div(p.T, kRows);
  const long long global_items = 2LL * q.n_key_blocks * B * (p.n_head - p.n_local);
  const long long items =
      global_items + (kBand ? 1LL * ceil_div(q.n_key_blocks, q.band_run) * B * p.n_local
                            : 2LL * q.n_key_blocks * B * p.n_local);
  // From the counter, up to items + (streams - 1) are handed out before
  // every producer has seen the end.
  LSGPT_CHECK(items + 4LL * std::max(1, ctx.sm_count()) <= 0x7fffffff,
              "attention_backward: too many work items for one launch");
  const int n_items = int(items);
  const size_t qkv_row = size_t(3) * p.C;
  const CUtensorMap qkv_map = head_tensor_map(p.qkv, p.head_dim, 3 * p.n_head, qkv_row, p.T, B,
                                              kRows, "qkv (attention_backward)");
  const CUtensorMap dout_map = head_tensor_map(p.dout, p.head_dim, p.n_head, size_t(p.C), p.T, B,
                                               kRows, "dout (attention_backward)");
  CUtensorMap q_walk_map = qkv_map, do_walk_map = dout_map;
  if (Shape::kQ != kRows) {
    q_walk_map = head_tensor_map(p.qkv, p.head_dim, 3 * p.n_head, qkv_row, p.T, B, Shape::kQ,
                                 "qkv (attention_backward)");
    do_walk_map = head_tensor_map(p.dout, p.head_dim, p.n_head, size_t(p.C), p.T, B, Shape::kQ,
                                  "dout (attention_backward)");
  }
  const int blocks =
      std::min(ceil_div(n_items, Policy::kConsumers), std::max(1, ctx.sm_count()));
  if (kBand)
    LSGPT_CHECK(q.band_dq && q.band_slots >= ws_band_slots(std::min(p.window, p.T)),
                "attention_backward: band runs without their dQ slots");
  LSGPT_CHECK(!Policy::kDynamicItems || q.item_counter,
              "attention_backward: items from a counter without the counter");
  launch_kernel(ctx, kernel, blocks, Shape::kBlockThreads, Shape::kSmemBytes, qkv_map, dout_map,
                q_walk_map, do_walk_map, q, B, n_items);
}

}  // namespace

void launch_backward_sm90_ws(CudaContext& ctx, const BackwardParams& p, int B, bool span,
                             bool qbar, bool short_walks, bool dynamic) {
  dispatch_backward(p, span, qbar, [&](auto d, auto span_c, auto qbar_c) {
    constexpr int D = decltype(d)::value;
    constexpr bool kSpan = decltype(span_c)::value, kQbar = decltype(qbar_c)::value;
    if constexpr (D == 64 && !kQbar) {
      if (p.band_run > 0) return launch<D, kSpan, kQbar, true, true>(ctx, p, B);
      if (short_walks && dynamic) return launch<D, kSpan, kQbar, true, false, true>(ctx, p, B);
      if (short_walks) return launch<D, kSpan, kQbar, true>(ctx, p, B);
    }
    LSGPT_CHECK(p.band_run == 0, "attention_backward: band runs need D 64 without qbar");
    if (dynamic) return launch<D, kSpan, kQbar, false, false, true>(ctx, p, B);
    launch<D, kSpan, kQbar, false>(ctx, p, B);
  });
}

size_t ws_band_dq_floats(const CudaContext& ctx, int band_slots) {
  using Policy = WsBackwardPolicy<64, false, true, true>;
  return size_t(std::max(1, ctx.sm_count())) * Policy::kConsumers * band_slots * kRows * 64;
}

}  // namespace lsgpt::cuda::attn
