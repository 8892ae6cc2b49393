// One-pass LS flash-attention backward for Hopper, warp-specialised
// (sm_90a; LSGPT_ATTENTION_SM90_BACKWARD=ws_one_pass, not the default):
// one_pass_wg2's algorithm (attention_backward_sm90_one_pass_wg2.cu) fed
// as ws feeds its two passes (attention_backward_sm90_ws.cu), which is
// FlashAttention-3's backward:
//
// - A block is three warpgroups, one per multiprocessor (persistent).
//   Warpgroup 0 gives its registers back; its first warp is the producer:
//   lane 0 loads tiles with TMA, the lanes copy lse and delta rows beside
//   them. Warpgroups 1 and 2 are the consumers, 64 keys each.
// - Work items are 128-key blocks of one (batch row, head), global heads
//   first and, among them, the longest walks first; the producer takes
//   them from a counter (p.item_counter, take_item), each once the tiles
//   of the one before are issued, and hands each to the consumers (and turn
//   keepers) with its fixed slot (with LSGPT_ATTENTION_SM90_WS_SCHEDULE=
//   static the unordered form takes them in snake rounds instead,
//   block_item). An item's K, V (both warpgroups' tiles) sit in a fixed
//   slot; the query tiles it walks (Q, dO, lse, delta: the union of the two
//   warpgroups' bands) come through a ring of stages, each with `full` and
//   `empty` mbarriers (tma.cuh's protocol).
// - Per query tile each consumer forms S^T, dP^T, the softmax step, dV and
//   dK for its 64 keys exactly as one_pass_wg2 (the same helpers and
//   order, so dK and dV are its bits), a warpgroup off its own band taking
//   the masked step (all zeros), and stores dS^T transposed into its dS
//   tile. Its slice of a tile's dQ^T = K^T dS^T over all 128 keys (D 128:
//   one 64-column panel of D for the tile's 64 queries; D 64: all of D for
//   32 queries) needs the other consumer's dS tile too, so each step forms
//   the PREVIOUS tile's slice, once the other consumer has finished its
//   previous step (DsExchange: three dS buffers, a named barrier one side
//   arrives at and the other waits on), and each item ends with a closing
//   step for its last tile. The consumers drift up to a step apart, one's
//   softmax running under the other's products, instead of both idling
//   the matrix units through their softmax in lockstep.
// - The slice goes into an fp32 buffer by red.global.add.v4.f32 straight
//   from the accumulator, in a layout of this kernel's own (fragment-major:
//   element 4 i .. 4 i + 3 of all 128 threads side by side, so a warp's
//   adds are 512 contiguous bytes), and a second kernel forms the dQ rows
//   of dqkv from it (tau, span on q).
//
// Not deterministic: the additions into a dQ element arrive in whatever
// order the key blocks reach them (dK and dV are bit-reproducible).
// ws_one_pass_ordered (kOrdered) is: each item walks its tiles from the
// last down, and a (query tile, consumer)'s slice is added by the key
// blocks in ascending order, each waiting for its turn, which a turn keeper
// thread of warpgroup 0 takes and passes for each consumer (TurnKeeper). qbar
// (span cross on k) is not built here; the host runs one_pass_wg2 (ws for
// the ordered form) then.
// docs/CUDA.md, "Backward on Hopper: ws one pass".
//
// The device code exists only in the sm_90a compilation; the compute_80 PTX
// carries a body that traps, and the host launches it only where
// sm90_backward_supported says the sm_90a code is loaded.
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
#include "ops/cuda/snake_rounds.h"
#include "ops/cuda/tma.cuh"
#include "ops/cuda/tma_map.h"
#include "ops/cuda/wgmma.cuh"

namespace lsgpt::cuda::attn {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kConsumers = 2;
constexpr int kKeysPerWarpgroup = 64;                              // the m64 of the key side
constexpr int kKeysPerItem = kConsumers * kKeysPerWarpgroup;       // an item's keys
constexpr int kQ = 64;                                             // queries a walked tile
constexpr int kBlockThreads = (1 + kConsumers) * kThreads;
// The whole register pool of a 384-thread block (launch_register_pool):
// the producer needs few, the consumers hold dK, dV, the dQ slice and the
// P^T, dS^T fragments at once.
constexpr int kProducerRegs = 40, kConsumerRegs = 232;
static_assert(kProducerRegs * kThreads + kConsumerRegs * kConsumers * kThreads <=
                  launch_register_pool(kBlockThreads),
              "setmaxnreg would wait for registers the launch did not allocate");
constexpr int kFinishRowsPerBlock = kThreads / 4;  // finish kernel: a quad of lanes a row

template <int D>
struct WsOnePassShape {
  static_assert(D == 64 || D == 128, "the wgmma backward is built for D = 64 and 128");
  static constexpr int kTileBytes = sw128_tile_bytes<64, D>();  // 64 rows of K, V, Q or dO
  // A fixed slot: K, V of consumer 0, then of consumer 1 (one_pass_wg2's
  // layout, which its dQ product reads).
  static constexpr int kFixedBytes = 2 * kConsumers * kTileBytes;
  static constexpr int kStageBytes = 2 * kTileBytes;  // Q, dO
  static constexpr int kDsBytes = sw128_tile_bytes<kQ, kKeysPerWarpgroup>();
  // As deep as 227 KiB allow: D 64 two slots and 4 stages (176 KiB), D 128
  // one slot and 3 stages (208 KiB), with three dS buffers of both
  // consumers (DsExchange).
  static constexpr int kFixedStages = D == 64 ? 2 : 1;
  static constexpr int kStages = D == 64 ? 4 : 3;
  static constexpr size_t kSmemBytes = size_t(kFixedStages) * kFixedBytes +
                                       size_t(kStages) * kStageBytes +
                                       3 * kConsumers * size_t(kDsBytes) + kAtomBytes;
  // A consumer's slice of dQ^T: m64 (columns of D) x kSliceQueries.
  static constexpr int kSliceQueries = kDqSliceQueries<D, kQ>;
  static constexpr int kSliceFloats = kThreads * kSliceQueries / 2;
  static_assert(kSliceFloats * kConsumers == kQ * D, "the slices tile a 64 x D block of dQ");
};

// The consumers' barriers and the ring's lse (log2 units) and delta rows.
// full: the producer warp's 32 lanes (lane 0 with the TMA bytes); empty:
// both consumers' threads; fixed_empty: both consumers' threads and
// (kOrdered) the two turn keepers, who read the slot's item too;
// fixed_full: lane 0 with the bytes, after it wrote fixed_item (the
// last slot, item -1: a plain arrival, no bytes).
template <int D>
struct OnePassPipe {
  using Shape = WsOnePassShape<D>;
  uint64_t full[Shape::kStages], empty[Shape::kStages];
  uint64_t fixed_full[Shape::kFixedStages], fixed_empty[Shape::kFixedStages];
  int fixed_item[Shape::kFixedStages];  // a fixed slot's item; -1: the block has no more
  // kOrdered, per consumer, two each (an add's index & 1): turn_ready, the
  // turn keeper's one thread (the consumer may add); slice_added, the
  // consumer's threads (their adds are issued).
  uint64_t turn_ready[kConsumers][2], slice_added[kConsumers][2];
  float lse[Shape::kStages][kQ], delta[Shape::kStages][kQ];
};

// Where element `e` (0..3) of group `i` of consumer c's slice of query tile
// `tile` of head bh sits in the fp32 buffer, for thread t of the consumer:
// ((bh * tiles + tile) * 2 + c) slices, then i * 128 + t float4s.
__host__ __device__ constexpr size_t slice_offset(int bh, int n_tiles, int tile, int c,
                                                  int slice_floats) {
  return ((size_t(bh) * n_tiles + tile) * kConsumers + c) * size_t(slice_floats);
}

#if LSGPT_SM90A_DEVICE

// One item: key block `block` (128 keys) of batch row b, head h. Items 0 ..
// (global heads' count) - 1 are the global heads', rank-major (key block 0,
// the longest walk, of every (batch row, head) first), then the local heads'.
struct OnePassItem {
  int b, h, block;

  __device__ __forceinline__ OnePassItem(const BackwardParams& p, int B, int item) {
    const int n_global = p.n_head - p.n_local;
    const int global_items = B * n_global * p.n_key_blocks;
    int heads = n_global, first_head = p.n_local;
    if (item >= global_items) item -= global_items, heads = p.n_local, first_head = 0;
    const int n_bh = B * heads;
    block = item / n_bh;
    const int x = item % n_bh;
    b = x / heads, h = first_head + x % heads;
  }
};

// This block's item of round `round` (n_items and beyond: none left), in
// snake rounds (snake_rounds.h): items come longest first. Only the
// unordered form's, with LSGPT_ATTENTION_SM90_WS_SCHEDULE=static.
__device__ __forceinline__ int block_item(int round) {
  return snake_item(round, int(gridDim.x), int(blockIdx.x));
}

// The query tiles key block `block` (128 keys) of head h walks: the union
// of its two warpgroups' bands.
__device__ __forceinline__ QueryTileRange key_block_tiles(const BackwardParams& p, int h,
                                                          int block) {
  return query_tiles_seeing<kQ>(HeadMask{h < p.n_local, p.window}, block * kKeysPerItem,
                                kKeysPerItem, p.T);
}
__device__ __forceinline__ QueryTileRange item_tiles(const BackwardParams& p,
                                                     const OnePassItem& w) {
  return key_block_tiles(p, w.h, w.block);
}

// The n-th query tile an item walks: from walk.first up, or (kDescending)
// from walk.last down. Descending, the key blocks of one head that run at
// once reach a query tile in the same step, so that each waits about a
// step for the one before it (TurnKeeper); ascending, block kb would reach
// tile t 2 steps before block kb - 1 and wait for it at every tile.
template <bool kDescending>
__device__ __forceinline__ int walked_tile(const QueryTileRange& walk, int n) {
  return kDescending ? walk.last - n : walk.first + n;
}

template <int D, bool kOrdered>
__device__ __forceinline__ void init_pipe(OnePassPipe<D>& pipe) {
  using Shape = WsOnePassShape<D>;
  for (int s = 0; s < Shape::kStages; ++s)
    mbarrier_init(&pipe.full[s], kWarpSize), mbarrier_init(&pipe.empty[s], kConsumers * kThreads);
  for (int s = 0; s < Shape::kFixedStages; ++s)
    mbarrier_init(&pipe.fixed_full[s], 1),
        mbarrier_init(&pipe.fixed_empty[s], kConsumers * kThreads + (kOrdered ? kConsumers : 0));
  for (int c = 0; c < kConsumers; ++c)
    for (int x = 0; x < 2; ++x)
      mbarrier_init(&pipe.turn_ready[c][x], 1), mbarrier_init(&pipe.slice_added[c][x], kThreads);
}

// The block's k-th item as the consumers and turn keepers get it: from
// its fixed slot, once the slot's K, V are in.
template <int D>
__device__ __forceinline__ int slot_item(OnePassPipe<D>& pipe, int k) {
  constexpr int kFixed = WsOnePassShape<D>::kFixedStages;
  mbarrier_wait(&pipe.fixed_full[k % kFixed], (k / kFixed) & 1);
  return pipe.fixed_item[k % kFixed];
}

// The block's k-th item (n_items and beyond: none left), all 32 lanes of
// the producer warp: from the counter (one atomic a block and item, taken
// by lane 0), or with `snake` in snake rounds. Every item from the counter,
// the first ones too: a block not yet resident then owns none, which
// ws_one_pass_ordered's waits need (TurnKeeper).
__device__ __forceinline__ int take_block_item(const BackwardParams& p, int n_items, int k,
                                               bool snake) {
  if (snake) return block_item(k);
  int item = 0;
  if (threadIdx.x % kWarpSize == 0) item = take_item(p.item_counter, n_items, int(gridDim.x));
  return __shfl_sync(0xffffffffu, item, 0);
}

// The producer warp (all 32 lanes): for each of the block's items its K, V
// into the next fixed slot, with the item's id, then each walked query tile
// into the ring once the consumers have released the stage; after the
// last, a slot with no bytes and item -1. The next item is taken only once
// the current one's tiles are all issued (the ring kStages tiles ahead of
// the consumers), not when its slot is written: a taken item then waits
// in its block for a few steps, not for a whole item (as when it was
// taken one item ahead), and in the ordered form the key blocks after it
// in its head wait for it. `it` counts walked tiles over all items (stage it % kStages, its
// (it / kStages)-th use), `k` fixed slots.
template <int D, bool kOrdered>
__device__ void produce(const CUtensorMap* qkv_map, const CUtensorMap* dout_map,
                        const BackwardParams& p, int B, int n_items, bool snake,
                        unsigned char* smem, OnePassPipe<D>& pipe) {
  using Shape = WsOnePassShape<D>;
  constexpr int kFixed = Shape::kFixedStages, kStages = Shape::kStages;
  const int lane = threadIdx.x % kWarpSize;
  unsigned char* ring = smem + kFixed * Shape::kFixedBytes;
  int it = 0;
  for (int k = 0, item = take_block_item(p, n_items, 0, snake);; ++k) {
    const int fs = k % kFixed;
    if (k >= kFixed) mbarrier_wait(&pipe.fixed_empty[fs], (k / kFixed - 1) & 1);
    if (item >= n_items) {
      if (lane == 0) {
        pipe.fixed_item[fs] = -1;
        mbarrier_arrive(&pipe.fixed_full[fs]);  // releases the item's store
      }
      return;
    }
    const OnePassItem w(p, B, item);
    if (lane == 0) {
      unsigned char* dst = smem + fs * Shape::kFixedBytes;
      uint64_t* bar = &pipe.fixed_full[fs];
      pipe.fixed_item[fs] = item;
      mbarrier_arrive_expect_tx(bar, Shape::kFixedBytes);
#pragma unroll
      for (int c = 0; c < kConsumers; ++c) {
        // A warpgroup's keys may lie past T (zeros): it then adds nothing.
        const int k0 = w.block * kKeysPerItem + c * kKeysPerWarpgroup;
        tma_load_head_tile<D, 64>(dst + 2 * c * Shape::kTileBytes, qkv_map, bar, p.n_head + w.h,
                                  k0, w.b);
        tma_load_head_tile<D, 64>(dst + (2 * c + 1) * Shape::kTileBytes, qkv_map, bar,
                                  2 * p.n_head + w.h, k0, w.b);
      }
    }
    const QueryTileRange walk = item_tiles(p, w);
    const size_t stats_row = size_t(w.b * p.n_head + w.h) * p.T;
    for (int n = 0; n <= walk.last - walk.first; ++n, ++it) {
      const int s = it % kStages;
      const int i0 = walked_tile<kOrdered>(walk, n) * kQ;
      QueryTileStats<kQ> stats;
      stats.load(p, stats_row, i0, lane);
      if (it >= kStages) mbarrier_wait(&pipe.empty[s], (it / kStages - 1) & 1);
      uint64_t* bar = &pipe.full[s];
      if (lane == 0) {  // the copies first: they take longest
        unsigned char* dst = ring + s * Shape::kStageBytes;
        mbarrier_expect_tx(bar, Shape::kStageBytes);
        tma_load_head_tile<D, kQ>(dst, qkv_map, bar, w.h, i0, w.b);
        tma_load_head_tile<D, kQ>(dst + Shape::kTileBytes, dout_map, bar, w.h, i0, w.b);
      }
      stats.store(pipe.lse[s], pipe.delta[s], lane);
      mbarrier_arrive(bar);  // after this lane's lse and delta stores
    }
    item = take_block_item(p, n_items, k + 1, snake);
  }
}

__device__ __forceinline__ void red_add_v4(float* addr, float a, float b, float c, float d) {
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(addr), "f"(a), "f"(b),
               "f"(c), "f"(d)
               : "memory");
}

// Consumer c's slice of the tile's dQ^T = K^T dS^T over the item's 128 keys
// (one_pass_wg2's product, issue_dq_slice): issued and committed, not
// waited for.
template <int D>
__device__ __forceinline__ void issue_query_gradient(
    float (&acc)[WsOnePassShape<D>::kSliceQueries / 2], uint32_t key_tiles, uint32_t ds_pair,
    int c) {
  discard_operands(acc);
  wgmma_fence();
  issue_dq_slice<D, kQ>(acc, key_tiles, ds_pair, c);
  wgmma_commit();
}

// The consumers' exchange of dS tiles. Each walked tile is a step of a
// consumer, and so is the end of each item; step n stores this consumer's
// dS^T tile (walked tiles only) into buffer n % 3 and, once the other
// consumer has finished its step n - 1 (its dS of that step stored, its
// products waited for), forms the dQ slice of the tile before it, reading
// both consumers' dS of step n - 1. The wait is a named barrier the other
// consumer only arrives at (bar.arrive at the end of its step n - 1, after
// its products), one barrier a consumer and step parity, so neither ever
// waits for the other to be behind it, and the two drift up to a step
// apart: one's softmax runs while the other's products do. Three buffers:
// buffer n % 3 was last read at step n - 2 (dQ of step n - 3) by both
// consumers, and the other had finished step n - 2 before this one could
// pass its wait in step n - 1.
template <int D>
struct DsExchange {
  using Shape = WsOnePassShape<D>;
  uint32_t buffers;  // three of both consumers' dS tiles
  int c;             // this consumer
  int step = 0;

  __device__ __forceinline__ uint32_t tiles(int n) const {
    return buffers + (n % 3) * kConsumers * Shape::kDsBytes;
  }
  __device__ __forceinline__ uint32_t mine() const { return tiles(step) + c * Shape::kDsBytes; }
  __device__ __forceinline__ uint32_t previous() const { return tiles(step + 2); }
  static __device__ __forceinline__ int barrier(int consumer, int parity) {
    return 1 + 2 * consumer + parity;
  }
  // Before reading the other consumer's dS of step - 1.
  __device__ __forceinline__ void wait_for_other() const {
    if (step > 0) named_barrier_sync<kConsumers * kThreads>(barrier(1 - c, (step - 1) & 1));
  }
  // This step's products are done.
  __device__ __forceinline__ void finish_step() {
    named_barrier_arrive<kConsumers * kThreads>(barrier(c, step & 1));
    ++step;
  }
  // After the consumer's final step: the other's last arrival, which no
  // step waits for, so that no barrier is left half-arrived at exit (the
  // consumers take the same items, so the same number of steps).
  __device__ __forceinline__ void drain() const { wait_for_other(); }
};

// A 32-bit word in global memory read with acquire / written with release
// semantics at GPU scope (PTX ISA "ld", "st": .acquire, .release).
__device__ __forceinline__ int load_acquire_gpu(const int* addr) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(addr) : "memory");
  return v;
}
__device__ __forceinline__ void store_release_gpu(int* addr, int v) {
  asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(addr), "r"(v) : "memory");
}
// ws_one_pass_ordered (kOrdered): the key blocks that walk a query tile (a
// run of consecutive blocks) add their dQ slices of it in ascending order,
// so each dQ element takes the same additions in the same order in every
// run. `turns` holds, per (batch row, head, query tile, consumer), the last
// key block that added, plus one (0: none; zeroed with the sums at each
// launch). Block kb waits for the value kb where block kb - 1 walks the
// tile too, and writes kb + 1 after its adds where block kb + 1 walks it.
//
// The waiting and passing are a turn keeper's (one thread of warpgroup 0 per
// consumer, TurnKeeper), not the consumers': done by a thread of the
// computing warpgroup, each step's GPU-scope acquire (a trip to L2, or a
// fence that waits for the previous step's adds) held the warpgroup at a
// barrier behind it, about 0.6-0.7 us a step, which lost to `ws` (three
// tries, H200, 2026-12-02; docs/CUDA.md). The keeper and its consumer meet
// through two shared-memory mbarrier pairs (OnePassPipe::turn_ready,
// slice_added; arrive is a release and wait an acquire at CTA scope, so
// the chain from block kb - 1's adds to block kb's stays ordered). No
// deadlock: a keeper waits only for items of lower index of the same head,
// which running blocks took from the counter before it (take_item: no
// block owns an item before it runs), a block works through its items in
// the order it took them, and the lowest unfinished item waits for
// nobody. So it finishes on however many multiprocessors it is given (a
// kernel on another stream holding the rest, an MPS share): with items
// handed out by block index, a resident block could wait for one that
// never became resident.

// The tiles of an item whose turns its keeper takes and passes.
struct ItemTurns {
  int prev_last = -1;        // the last tile key block - 1 walks (-1: none)
  int next_first = 1 << 30;  // the first tile key block + 1 walks (none: never)

  __device__ __forceinline__ ItemTurns(const BackwardParams& p, const OnePassItem& w) {
    if (w.block > 0) prev_last = key_block_tiles(p, w.h, w.block - 1).last;
    if (w.block + 1 < p.n_key_blocks) next_first = key_block_tiles(p, w.h, w.block + 1).first;
  }
};

// The turn keeper of consumer c (one thread): for each of the consumer's
// adds, in its order (the block's items, each item's walk from the last
// tile down), waits for the add's turn, lets the consumer add (turn_ready),
// and once the consumer's adds are issued (slice_added) passes the turn on.
// Pipelined one add deep: the next add's turn is waited for before the
// previous add's is passed, so a turn's trip to L2 runs while the consumer
// computes the step.
template <int D>
struct TurnKeeper {
  OnePassPipe<D>& pipe;
  int c;
  uint32_t adds = 0;  // the consumer's adds so far

  // After the consumer's add `a`, passes its turn to block `value - 1`
  // (word == nullptr: nobody needs it).
  __device__ __forceinline__ void pass_after(uint32_t a, int* word, int value) {
    mbarrier_wait(&pipe.slice_added[c][a & 1], (a >> 1) & 1);
    if (word) store_release_gpu(word, value);
  }

  __device__ __forceinline__ void run(const BackwardParams& p, int B, int* turns) {
    constexpr int kFixed = WsOnePassShape<D>::kFixedStages;
    const int n_tiles = (p.T + kQ - 1) / kQ;
    int k = 0;
    for (int item = slot_item(pipe, 0); item >= 0; item = slot_item(pipe, ++k)) {
      // Read: the slot may take the next item (a consumer whose item walks
      // one tile releases it before its only add, which waits for us).
      mbarrier_arrive(&pipe.fixed_empty[k % kFixed]);
      const OnePassItem w(p, B, item);
      const ItemTurns t(p, w);
      const int bh = w.b * p.n_head + w.h;
      // One int a (batch row, head, tile, consumer): the slices' layout.
      auto word = [&](int tile) { return turns + slice_offset(bh, n_tiles, tile, c, 1); };
      const QueryTileRange walk = item_tiles(p, w);
      const int n_walked = walk.last - walk.first + 1;
      auto word_to_pass = [&](int tile) { return tile >= t.next_first ? word(tile) : nullptr; };
      for (int n = 0; n < n_walked; ++n, ++adds) {
        const int tile = walked_tile<true>(walk, n);
        if (tile <= t.prev_last) acquire_turn(word(tile), w.block);
        mbarrier_arrive(&pipe.turn_ready[c][adds & 1]);
        if (n > 0) pass_after(adds - 1, word_to_pass(walked_tile<true>(walk, n - 1)), w.block + 1);
      }
      // The item's last add before the next item's first turn: a keeper
      // never holds a pass while it waits on another item's chain.
      pass_after(adds - 1, word_to_pass(walk.first), w.block + 1);
    }
  }

  // Each ld.acquire.gpu try also invalidates the multiprocessor's L1
  // (CCTL.IVALL); spinning with relaxed reads and one fence.acq_rel.gpu
  // instead measured 4-35% slower (H200, 2026-12-02; docs/CUDA.md).
  static __device__ __forceinline__ void acquire_turn(const int* word, int block) {
    if (load_acquire_gpu(word) == block) return;
    const uint64_t start = globaltimer_ns();
    while (load_acquire_gpu(word) != block)
      if (int64_t(globaltimer_ns() - start) > kMbarrierTimeoutNs) __trap();
  }
};

// This consumer's dQ slices into the fp32 sums, this thread's part: each
// slice added by red.global.add.v4.f32 once it is formed. Unordered, in
// whatever order the key blocks get there; kOrdered, each add after its
// turn (TurnKeeper).
template <int D, bool kOrdered>
struct QuerySliceSums {
  using Shape = WsOnePassShape<D>;
  float* dq_accum;
  int n_tiles, bh, c;
  OnePassPipe<D>& pipe;
  uint32_t& adds;  // kOrdered: this consumer's adds so far, over its items

  __device__ __forceinline__ QuerySliceSums(const BackwardParams& p, float* dq,
                                            const OnePassItem& w, int consumer, int tiles,
                                            OnePassPipe<D>& handshake, uint32_t& n_adds)
      : dq_accum(dq), n_tiles(tiles), bh(w.b * p.n_head + w.h), c(consumer), pipe(handshake),
        adds(n_adds) {}

  // The slice of query tile `tile`.
  __device__ __forceinline__ void add(const float (&acc)[Shape::kSliceQueries / 2], int tile) {
    if constexpr (kOrdered) mbarrier_wait(&pipe.turn_ready[c][adds & 1], (adds >> 1) & 1);
    float* slice = dq_accum + slice_offset(bh, n_tiles, tile, c, Shape::kSliceFloats) +
                   4 * (threadIdx.x % kThreads);
#pragma unroll
    for (int i = 0; i < Shape::kSliceQueries / 8; ++i)
      red_add_v4(slice + i * 4 * kThreads, acc[4 * i], acc[4 * i + 1], acc[4 * i + 2],
                 acc[4 * i + 3]);
    if constexpr (kOrdered) {
      mbarrier_arrive(&pipe.slice_added[c][adds & 1]);
      ++adds;
    }
  }
};

// A consumer's item: the walk (one_pass_wg2's step, each step also forming
// the previous tile's dQ slice, DsExchange; kOrdered: tiles from the last
// down), a closing step for the last walked tile's slice, then dK, dV
// finished as a key block's.
template <int D, bool kSpan, bool kOrdered>
__device__ __forceinline__ void consume_item(const BackwardParams& p, const OnePassItem& w,
                                             int c, int& it, uint32_t fixed_addr,
                                             uint64_t* fixed_empty, unsigned char* ring,
                                             DsExchange<D>& ds, OnePassPipe<D>& pipe,
                                             QuerySliceSums<D, kOrdered>& dq) {
  using Shape = WsOnePassShape<D>;
  constexpr int kStages = Shape::kStages;
  const int wg_thread = threadIdx.x % kThreads;
  const int lane = threadIdx.x % kWarpSize, warp = wg_thread / kWarpSize;
  const int group = lane >> 2, quad = lane & 3;
  const int bh = w.b * p.n_head + w.h;
  const int k0 = w.block * kKeysPerItem + c * kKeysPerWarpgroup;  // this consumer's keys
  const HeadRows rows = head_rows(p, bh, w.b, w.h);
  const HeadMask mask{w.h < p.n_local, p.window};
  const QueryTileRange walk = item_tiles(p, w);
  const int n_walked = walk.last - walk.first + 1;
  const QueryTileRange mine = k0 < p.T ? query_tiles_seeing<kQ>(mask, k0, kKeysPerWarpgroup, p.T)
                                       : QueryTileRange{1, 0};
  const int key_row = k0 + warp * 16 + group;  // and key_row + 8
  float dk[D / 2] = {}, dv[D / 2] = {}, no_qbar[1] = {}, colsum[2] = {};

  for (int n = 0; n < n_walked; ++n, ++it) {
    const int tile = walked_tile<kOrdered>(walk, n);
    const int s = it % kStages;
    mbarrier_wait(&pipe.full[s], (it / kStages) & 1);
    const uint32_t q_addr = smem_address(ring + s * Shape::kStageBytes);
    const QueryTile query_tile{q_addr, q_addr + Shape::kTileBytes, pipe.lse[s], pipe.delta[s]};
    const int i0 = tile * kQ;
    const uint32_t key_tiles = opaque(fixed_addr);
    const uint32_t k_addr = key_tiles + 2 * c * Shape::kTileBytes;
    const uint32_t v_addr = k_addr + Shape::kTileBytes;
    const bool has_previous = n > 0;
    // Per iteration, so that it is dead across them (32 registers at D 128).
    float acc[Shape::kSliceQueries / 2];
    auto step = [&](auto masked) {
      uint32_t a_p[kQ / 16][4], a_ds[kQ / 16][4];
      key_tile_fragments<D, kKeysPerWarpgroup, kQ, decltype(masked)::value, false>(
          a_p, a_ds, colsum, k_addr, v_addr, query_tile, p, i0, mask, key_row, quad);
      // The products first, then dS^T's store from the same registers (both
      // only read them): stored first, the products' issue waited for the
      // stmatrix to read its registers (Nsight Compute: 6% of the
      // consumers' time at MHSA D 128 T 16k). The PTX ISA leaves reading a
      // wgmma's A registers before its wait_group undefined; ptxas 13.0
      // keeps them live and inserts no wait, and dK, dV stay one_pass_wg2's
      // bits (WsOnePassMatchesOnePassWg2). If a later ptxas breaks that
      // test, store dS first again (before wgmma_fence).
      issue_key_gradients<D, kQ, false>(dv, dk, no_qbar, a_p, a_ds, query_tile.q_addr,
                                        query_tile.do_addr);
      store_transposed_sw128<kQ>(ds.mine(), a_ds);
      fence_proxy_async_shared();  // stmatrix wrote what the dQ products read
      ds.wait_for_other();
      // Issued on an item's first tile too, where it reads whatever the
      // previous buffer holds and is dropped: behind `if (has_previous)`
      // ptxas spilled 256 bytes at D 128 and serialised the wgmma. One
      // product of five, once an item.
      issue_query_gradient<D>(acc, key_tiles, ds.previous(), c);
      wgmma_wait<0>();
      fence_operands(dv), fence_operands(dk), fence_operands(acc);
    };
    // Uniform in a warpgroup: off its own band (or past T) a consumer takes
    // the masked step, whose P and dS are exact zeros.
    const bool own = tile >= mine.first && tile <= mine.last;
    if (!own || mask.tile_needs_mask(i0, kQ, k0, kKeysPerWarpgroup) || i0 + kQ > p.T)
      step(std::true_type{});
    else
      step(std::false_type{});
    mbarrier_arrive(&pipe.empty[s]);  // Q, dO read no more (the products have completed)
    ds.finish_step();
    if (has_previous) dq.add(acc, walked_tile<kOrdered>(walk, n - 1));
  }
  // The closing step: the last tile's slice.
  float acc[Shape::kSliceQueries / 2];
  ds.wait_for_other();
  issue_query_gradient<D>(acc, opaque(fixed_addr), ds.previous(), c);
  wgmma_wait<0>();
  fence_operands(acc);
  mbarrier_arrive(fixed_empty);  // K, V read no more: the next item's may load
  ds.finish_step();
  dq.add(acc, walked_tile<kOrdered>(walk, n_walked - 1));
  finish_wgmma_key_rows<D, kSpan, false>(p, dk, dv, no_qbar, colsum, key_row, rows, quad);
}

template <int D, bool kSpan, bool kOrdered>
__device__ void consume(const BackwardParams& p, int B, int c, unsigned char* smem,
                        OnePassPipe<D>& pipe, float* dq_accum) {
  using Shape = WsOnePassShape<D>;
  constexpr int kFixed = Shape::kFixedStages;
  unsigned char* ring = smem + kFixed * Shape::kFixedBytes;
  DsExchange<D> ds{smem_address(ring + Shape::kStages * Shape::kStageBytes), c};
  const int n_tiles = (p.T + kQ - 1) / kQ;
  int it = 0;
  uint32_t adds = 0;
  // The loop's exit, and the drain, in its condition: with a `return`
  // after the read in its body, or the drain after the loop, ptxas 13.0
  // spilled 1.5 KiB at D 128.
  int k = 0;
  // The block's n-th item; after the last, the dS exchange drained.
  auto next_item = [&](int n) {
    const int item = slot_item(pipe, n);
    if (item < 0) ds.drain();
    return item;
  };
  for (int item = next_item(0); item >= 0; item = next_item(++k)) {
    const int fs = k % kFixed;
    const OnePassItem w(p, B, item);
    QuerySliceSums<D, kOrdered> dq(p, dq_accum, w, c, n_tiles, pipe, adds);
    consume_item<D, kSpan, kOrdered>(p, w, c, it, smem_address(smem + fs * Shape::kFixedBytes),
                                     &pipe.fixed_empty[fs], ring, ds, pipe, dq);
  }
}

#endif  // LSGPT_SM90A_DEVICE

// n_items = B n_head ceil(T / 128); one block per multiprocessor at most.
// snake: items in snake rounds (unordered only), else from p.item_counter.
template <int D, bool kSpan, bool kOrdered>
__global__ void __launch_bounds__(kBlockThreads, 1)
    attention_backward_sm90_ws_one_pass_kernel(const __grid_constant__ CUtensorMap qkv_map,
                                               const __grid_constant__ CUtensorMap dout_map,
                                               const BackwardParams p, int B, int n_items,
                                               bool snake, float* dq_accum, int* dq_turns) {
  wait_for_previous_grid();
  allow_next_grid();
#if LSGPT_SM90A_DEVICE
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ OnePassPipe<D> pipe;
  unsigned char* smem = align_to_atom(smem_raw);
  // 0: the producer warpgroup, 1 and 2: consumers. Warp-uniform for ptxas.
  const int role = __shfl_sync(0xffffffffu, int(threadIdx.x) / kThreads, 0);
  if (threadIdx.x == 0) {
    init_pipe<D, kOrdered>(pipe);
    fence_mbarrier_init();
  }
  __syncthreads();  // the last block-wide barrier: the roles part here
  if (role == 0) {
    setmaxnreg_dec<kProducerRegs>();
    const int warp = threadIdx.x / kWarpSize;
    if (warp == 0)
      produce<D, kOrdered>(&qkv_map, &dout_map, p, B, n_items, snake, smem, pipe);
    else if (kOrdered && warp <= kConsumers && threadIdx.x % kWarpSize == 0)
      TurnKeeper<D>{pipe, warp - 1}.run(p, B, dq_turns);
    return;
  }
  setmaxnreg_inc<kConsumerRegs>();
  consume<D, kSpan, kOrdered>(p, B, role - 1, smem, pipe, dq_accum);
#else
  (void)qkv_map, (void)dout_map, (void)p, (void)B, (void)n_items, (void)snake, (void)dq_accum,
      (void)dq_turns;
  __trap();  // only the sm_90a binary has this kernel; the host never launches it elsewhere
#endif
}

// dQ rows from the fp32 sums in the slices' layout: scaled by tau,
// projected (span on q) and stored as bf16 by finish_query_row (a quad of
// lanes a row, lane `quad` holding columns 8 db + 2 quad + {0, 1}). Plain
// CUDA: it needs no sm_90a code.
template <int D, bool kSpan>
__global__ void __launch_bounds__(kThreads)
    finish_ws_one_pass_dq_kernel(const BackwardParams p, const float* dq_accum) {
  wait_for_previous_grid();
  allow_next_grid();
  using Shape = WsOnePassShape<D>;
  constexpr int kDBlocks = D / 8;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int group = lane >> 2, quad = lane & 3;
  const int bh = blockIdx.y, b = bh / p.n_head, h = bh % p.n_head;
  const int i = blockIdx.x * kFinishRowsPerBlock + warp * 8 + group;
  const int n_tiles = (p.T + kQ - 1) / kQ, tile = i / kQ, qt = i % kQ;
  float g[2 * kDBlocks];
#pragma unroll
  for (int db = 0; db < kDBlocks; ++db)
#pragma unroll
    for (int x = 0; x < 2; ++x) {
      const int d = 8 * db + 2 * quad + x;
      // The accumulator element holding (query qt, column d): m = the
      // column within the slice's panel, n = the query within the slice.
      const int c = D == 128 ? d / kPanelCols : qt / Shape::kSliceQueries;
      const int m = D == 128 ? d % kPanelCols : d, n = qt % Shape::kSliceQueries;
      const int thread = 32 * (m / 16) + 4 * (m % 8) + (n % 8) / 2;
      const int e = 2 * ((m % 16) / 8) + (n & 1);
      const size_t at = slice_offset(bh, n_tiles, tile, c, Shape::kSliceFloats) +
                        size_t(4) * ((n / 8) * kThreads + thread) + e;
      g[2 * db + x] = i < p.T ? dq_accum[at] * p.scale : 0.f;
    }
  const bf16* q_base = p.qkv + size_t(b) * p.T * (size_t(3) * p.C) + h * p.head_dim;
  finish_query_row<kDBlocks, kSpan>(p, g, i, b, h, q_base, quad);
}

// The fp32 sums, then (ordered) the turn words, each an int: one per
// (batch row, head, query tile, consumer).
size_t dq_sum_floats(int B, int T, int n_head, int head_dim) {
  return size_t(B) * n_head * size_t(ceil_div(T, kQ)) * kQ * padded_head_dim(head_dim);
}
size_t dq_turn_words(int B, int T, int n_head) {
  return size_t(B) * n_head * size_t(ceil_div(T, kQ)) * kConsumers;
}
static_assert(sizeof(int) == sizeof(float), "the turn words sit in the float buffer");

template <int D, bool kSpan, bool kOrdered>
void launch(CudaContext& ctx, const BackwardParams& p, int B, float* dq_accum) {
  using Shape = WsOnePassShape<D>;
  // With the static pipe beside the dynamic shared memory.
  static_assert(Shape::kSmemBytes + sizeof(OnePassPipe<D>) <= 227 * 1024,
                "over the opt-in shared memory of one block");
  const size_t dq_bytes =
      sizeof(float) * ws_one_pass_dq_floats(B, p.T, p.n_head, p.head_dim, kOrdered);
  CUDA_CHECK(cudaMemsetAsync(dq_accum, 0, dq_bytes, ctx.stream()));
  int* dq_turns =
      kOrdered ? reinterpret_cast<int*>(dq_accum + dq_sum_floats(B, p.T, p.n_head, p.head_dim))
               : nullptr;
  auto kernel = attention_backward_sm90_ws_one_pass_kernel<D, kSpan, kOrdered>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(Shape::kSmemBytes)));
  BackwardParams q = p;
  q.n_key_blocks = ceil_div(p.T, kKeysPerItem);
  const long long items = 1LL * q.n_key_blocks * B * p.n_head;
  // One a multiprocessor, or fewer (LSGPT_ATTENTION_SM90_ONE_PASS_BLOCKS).
  const int max_blocks =
      std::max(1, std::min(ctx.sm_count(), sm90_one_pass_blocks_override().value_or(1 << 30)));
  // snake_item reaches n_items - 1 + 2 (blocks - 1) before a block stops,
  // the counter n_items + blocks - 1.
  LSGPT_CHECK(items <= 0x7fffffffLL - 2LL * max_blocks,
              "attention_backward: too many work items for one launch");
  const int n_items = int(items);
  // The ordered form always takes the counter (TurnKeeper says why).
  const bool snake = !kOrdered && sm90_ws_striding_forced();
  LSGPT_CHECK(snake || q.item_counter, "attention_backward: ws_one_pass needs the item counter");
  const CUtensorMap qkv_map = head_tensor_map(p.qkv, p.head_dim, 3 * p.n_head, size_t(3) * p.C,
                                              p.T, B, 64, "qkv (attention_backward)");
  const CUtensorMap dout_map = head_tensor_map(p.dout, p.head_dim, p.n_head, size_t(p.C), p.T, B,
                                               64, "dout (attention_backward)");
  const int blocks = std::min(n_items, max_blocks);
  launch_kernel(ctx, kernel, blocks, kBlockThreads, Shape::kSmemBytes, qkv_map, dout_map, q, B,
                n_items, snake, dq_accum, dq_turns);
  const dim3 finish_grid(ceil_div(p.T, kFinishRowsPerBlock), B * p.n_head);
  launch_kernel(ctx, finish_ws_one_pass_dq_kernel<D, kSpan>, finish_grid, kThreads, 0, p,
                static_cast<const float*>(dq_accum));
}

}  // namespace

size_t ws_one_pass_dq_floats(int B, int T, int n_head, int head_dim, bool ordered) {
  return dq_sum_floats(B, T, n_head, head_dim) + (ordered ? dq_turn_words(B, T, n_head) : 0);
}

void launch_backward_sm90_ws_one_pass(CudaContext& ctx, const BackwardParams& p, int B,
                                      bool span, bool ordered, float* dq_accum) {
  dispatch_backward(p, span, false, [&](auto d, auto span_c, auto) {
    if (ordered)
      launch<decltype(d)::value, decltype(span_c)::value, true>(ctx, p, B, dq_accum);
    else
      launch<decltype(d)::value, decltype(span_c)::value, false>(ctx, p, B, dq_accum);
  });
}

}  // namespace lsgpt::cuda::attn
