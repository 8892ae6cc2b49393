// LS flash-attention forward for Hopper (sm_90a), warp-specialised: the
// contract of attention_forward_sm90.cu (local heads walk only their band,
// global heads are causal; out, lse, one max-logit partial per 64 queries,
// kbar = P K in the kKbar instantiation; zero fill past T and past the real
// head dim) with FlashAttention-3's division of labour:
//
// - A block is 1 + kConsumers warpgroups. Warpgroup 0 is the producer: one
//   thread loads every consumer's Q tile (into one of two Q stages) and then
//   each K/V tile with TMA (cp.async.bulk.tensor, 128-byte swizzle done by
//   the copy engine, zeros out of bounds) into a ring of kStages stages, each with a `full` and an
//   `empty` mbarrier (tma.cuh). It gives its registers back
//   (setmaxnreg.dec to 24).
// - Warpgroups 1 .. kConsumers are consumers of 64 queries each, sharing
//   the K/V tiles: two at D 128 (128 queries a block, setmaxnreg.inc to
//   240), three at D 64 (192 queries, 160 registers each, as
//   FlashAttention-3's D 64 forward). Each copies its Q into registers
//   and releases the Q stage at once, then runs the overlapped
//   order of attention_forward_consumer.cuh (S_j issued with P_{j-1} V_{j-1},
//   the softmax of S_j while the latter runs) and, after each step, arrives
//   on the `empty` barrier of the tile it has finished with. They never wait
//   for each other: only the producer couples them, through the ring.
// - Each consumer writes its O through a swizzled staging tile of its own
//   (stmatrix) and one TMA store (FlashAttention-3's and cuDNN's epilogue),
//   which runs on while the consumer starts its next item: with O
//   normalised and stored by each thread (4-byte stores, half of each
//   32-byte sector), the epilogue took about 17% of the consumers' stall
//   samples at MHSA D 128 T 1k against cuDNN's 13% for all of its per-item
//   code (Nsight Compute source counters, H200, 2026-12-01).
// - Work items are blocks of 64 kConsumers queries of one (batch row,
//   head), heaviest first. `ws` launches one block per item;
//   `ws_persistent` one per multiprocessor, each taking every gridDim.x-th
//   item: the ring and the Q stages run on across items, so the producer
//   loads the next item's tiles while the consumers finish the current one
//   and write its outputs (a local head's item walks only about 4 tiles, so
//   a block per item spends much of its life filling and draining the
//   pipeline). `ws_dynamic` is ws_persistent whose producer takes each
//   next item from a counter (the next one no block has taken: heaviest
//   first, each to whichever block frees up first) and hands its id to the
//   consumers with the item's Q stage; striding gives some blocks more of
//   the long global-head items than others.
//
// The tile loads need a tensor map of qkv, made on the host for each call
// (tma_map.h): a 4-d view (head column, head slot of q|k|v, t, batch row)
// whose out-of-bounds elements past the real head dim and past T read as
// zeros. A box is one 64-column panel of 64 rows: the swizzled panel layout
// of wgmma.cuh. The stores use the same view of out (head slots 0 ..
// n_head - 1), whose bounds clip the rows past T and the columns past the
// real head dim; they need out 16-byte aligned (the dispatch runs base
// otherwise, attention_forward.cu).
//
// The device code exists only in the sm_90a compilation; the compute_80 PTX
// carries a body that traps, and the host never launches it there (the
// dispatch checks the loaded binary, attention_forward_sm90.cu).
#include <cuda.h>

#include <algorithm>
#include <cstdint>

#include "core/error.h"
#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/attention_forward.cuh"
#include "ops/cuda/attention_forward_consumer.cuh"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/tma.cuh"
#include "ops/cuda/tma_map.h"
#include "ops/cuda/wgmma.cuh"

namespace lsgpt::cuda::attn {
namespace {

using bf16 = __nv_bfloat16;

// Stages of the K/V ring: consumers read two tiles at a step (S_j, P_{j-1}
// V_{j-1}); the rest let the producer run ahead. Q is double-buffered so
// the producer can load the next work item's while the consumers finish
// the current one. Two consumers at 240 registers and the producer at 24 is
// FlashAttention-3's split; three (192 queries a block, as its D 64
// forward) fit at 160, D 64 only.
// kDynamic: the items from a counter (ws_dynamic) instead of every
// gridDim.x-th.
template <int kConsumers_, bool kDynamic = false>
struct WsPolicy {
  static constexpr int kConsumers = kConsumers_;
  static constexpr bool kDynamicItems = kDynamic;
  static constexpr int kStages = 4;
  static constexpr int kQStages = 2;
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = kConsumers == 2 ? 240 : 160;
  static constexpr int kConsumerThreads = kConsumers * kThreads;
  static constexpr int kBlockThreads = kThreads + kConsumerThreads;  // the producer warpgroup first
  static constexpr int kCtaRows = kConsumers * kWgRows;
  static_assert(kConsumers == 2 || kConsumers == 3, "two or three consumer warpgroups");
  static_assert(kProducerRegs * kThreads + kConsumerRegs * kConsumerThreads <=
                    launch_register_pool(kBlockThreads),
                "setmaxnreg would wait for registers the launch did not allocate");
};

template <int D, class Policy>
struct WsShape {
  static_assert(D == 64 || D == 128, "the wgmma forward is built for D = 64 and 128");
  static_assert(Policy::kStages >= 3, "two tiles in use and one loading");
  static_assert(kWgRows == kTileKeys, "Q and K/V tiles share the box shape");
  static constexpr int kTileBytes = sw128_tile_bytes<kTileKeys, D>();  // one K or V tile
  static constexpr int kQBytes = sw128_tile_bytes<kWgRows, D>();       // one consumer's Q
  static constexpr int kQStageBytes = Policy::kConsumers * kQBytes;   // every consumer's Q
  static constexpr int kStagingBytes = kQStageBytes;  // every consumer's O, for its TMA store
  // Two Q stages, the K and V stages, the O staging tiles and room to align
  // the start to a swizzle atom: D 128 (two consumers) with 4 stages 64 +
  // 128 + 32 + 1 KiB = 225 KiB, D 64 (three) 48 + 64 + 24 + 1 = 137 KiB;
  // one block per multiprocessor either way (384 threads at up to 240
  // registers, or 512 at 160). The static barriers and maxima (under 200
  // bytes) leave about 1.8 KiB of the 227 at D 128.
  static constexpr size_t kSmemBytes = Policy::kQStages * size_t(kQStageBytes) +
                                       2 * Policy::kStages * size_t(kTileBytes) + kStagingBytes +
                                       kAtomBytes;
  static_assert(kSmemBytes <= 227 * 1024, "over the opt-in shared memory of one block");
};

#if LSGPT_SM90A_DEVICE

// A position in the K/V ring: tile n of the block's walk goes to stage n %
// kStages and is that stage's use n / kStages, whose barriers' phase has
// parity `phase`. Advanced one tile at a time, so that no step divides.
template <int kStages>
struct RingPosition {
  uint32_t stage = 0, phase = 0;
  __device__ __forceinline__ void advance() {
    if (++stage == kStages) stage = 0, phase ^= 1;
  }
};

// One work item: a block of kCtaRows queries (64 a consumer) of one (batch
// row, head), and the key tiles it walks (the union of the consumers'
// bands). Items are numbered so that the first ones carry the most keys (the last query
// blocks; global heads' grow with the query position): a block takes items
// blockIdx.x, blockIdx.x + gridDim.x, ... (one item per block when the grid
// has one block per item), or with kDynamicItems blockIdx.x and then the
// next one no block has taken.
template <int kCtaRows>
struct WorkItem {
  int cta_block, b, h, cta_q0, tile_begin, tile_end;
  HeadMask mask;

  __device__ __forceinline__ WorkItem(const ForwardParams& p, int n_bh, int item) {
    const int n_cta_blocks = (p.T + kCtaRows - 1) / kCtaRows;
    cta_block = n_cta_blocks - 1 - item / n_bh;
    const int bh = item % n_bh;
    b = bh / p.n_head, h = bh % p.n_head;
    cta_q0 = cta_block * kCtaRows;
    mask = HeadMask{h < p.n_local, p.window};
    tile_begin = (mask.local ? max(0, cta_q0 - p.window + 1) : 0) / kTileKeys;
    tile_end = (min(p.T, cta_q0 + kCtaRows) - 1) / kTileKeys;
  }
};

// Shared-memory pipeline state: the K/V ring (`full`: the producer's
// arrive.expect_tx, completed by the copies; `empty`: one arrival per
// consumer thread) and the same pair for the Q stages, with the item each
// Q stage holds (kDynamicItems; -1 after the last).
template <class Policy>
struct Barriers {
  static constexpr int kStages = Policy::kStages, kQStages = Policy::kQStages;
  static constexpr int kConsumerThreads = Policy::kConsumerThreads;
  uint64_t full[kStages], empty[kStages];
  uint64_t q_full[kQStages], q_empty[kQStages];
  int q_item[kQStages];

  __device__ __forceinline__ void init() {
    for (int s = 0; s < kStages; ++s)
      mbarrier_init(&full[s], 1), mbarrier_init(&empty[s], kConsumerThreads);
    for (int s = 0; s < kQStages; ++s)
      mbarrier_init(&q_full[s], 1), mbarrier_init(&q_empty[s], kConsumerThreads);
    fence_mbarrier_init();
  }
};

// The producer's thread: for each work item of the block, both Q tiles into
// the item's Q stage, then every K/V tile of the item's walk into the ring.
// The ring position runs on over all the block's items; a stage is
// refilled once all consumer threads have released its previous use (the
// Q stages likewise, by item count).
template <int D, class Policy>
__device__ __forceinline__ void produce(const CUtensorMap* map, const ForwardParams& p, int n_bh,
                                        int n_items, unsigned char* q_stages,
                                        unsigned char* k_tiles, unsigned char* v_tiles,
                                        Barriers<Policy>& bars) {
  using Shape = WsShape<D, Policy>;
  constexpr int kStages = Policy::kStages, kQStages = Policy::kQStages;
  constexpr int kPanels = D / kPanelCols;
  constexpr int kPanelBytes = kTileKeys * kSwizzleRowBytes;  // one TMA box: 64 rows of a panel
  RingPosition<kStages> ring;
  bool refill = false;  // from the ring's second lap on, a stage is refilled
  uint32_t k = 0;       // the block's items so far
  auto next_item = [&](int item) {
    if constexpr (Policy::kDynamicItems)
      return take_next_item(p.item_counter, n_items, int(gridDim.x));
    else
      return item + int(gridDim.x);
  };
  for (int item = blockIdx.x; item < n_items; item = next_item(item), ++k) {
    const WorkItem<Policy::kCtaRows> w(p, n_bh, item);
    const uint32_t qs = k % kQStages;
    if (k >= kQStages) mbarrier_wait(&bars.q_empty[qs], (k / kQStages - 1) & 1);
    bars.q_item[qs] = item;  // released to the consumers by the arrival
    mbarrier_arrive_expect_tx(&bars.q_full[qs], Shape::kQStageBytes);
    for (int c = 0; c < Policy::kConsumers; ++c)
      for (int panel = 0; panel < kPanels; ++panel)
        tma_load_4d(q_stages + qs * Shape::kQStageBytes + c * Shape::kQBytes + panel * kPanelBytes,
                    map, &bars.q_full[qs], panel * kPanelCols, w.h, w.cta_q0 + c * kWgRows, w.b);
    for (int t = w.tile_begin; t <= w.tile_end; ++t, ring.advance()) {
      const uint32_t stage = ring.stage;
      if (refill) mbarrier_wait(&bars.empty[stage], ring.phase ^ 1);
      if (stage == kStages - 1) refill = true;
      mbarrier_arrive_expect_tx(&bars.full[stage], 2 * Shape::kTileBytes);
      for (int panel = 0; panel < kPanels; ++panel) {
        const int offset = stage * Shape::kTileBytes + panel * kPanelBytes;
        tma_load_4d(k_tiles + offset, map, &bars.full[stage], panel * kPanelCols,
                    p.n_head + w.h, t * kTileKeys, w.b);
        tma_load_4d(v_tiles + offset, map, &bars.full[stage], panel * kPanelCols,
                    2 * p.n_head + w.h, t * kTileKeys, w.b);
      }
    }
  }
  if constexpr (Policy::kDynamicItems) {
    // No more items: the next Q stage says so (-1, no bytes).
    const uint32_t qs = k % kQStages;
    if (k >= kQStages) mbarrier_wait(&bars.q_empty[qs], (k / kQStages - 1) & 1);
    bars.q_item[qs] = -1;
    mbarrier_arrive(&bars.q_full[qs]);
  }
}

// Syncs the 4 warps of consumer warpgroup wg (named barrier 1 + wg; wg is
// warp-uniform).
__device__ __forceinline__ void consumer_barrier(int wg) {
  if (wg == 0)
    named_barrier_sync<1, kThreads>();
  else if (wg == 1)
    named_barrier_sync<2, kThreads>();
  else
    named_barrier_sync<3, kThreads>();
}

// One consumer warpgroup's share of one work item: its 64 queries over the
// item's walk (its tiles from ring position `ring`, which it leaves past
// the item's last tile), then out (through `staging`, this warpgroup's
// tile, and a TMA store), lse, kbar and its max-logit partial.
// `warp_maxima` is the block's scratch (4 floats a consumer).
template <int D, bool kKbar, class Policy>
__device__ __forceinline__ void consume(const ForwardParams& p, const CUtensorMap* out_map,
                                        const WorkItem<Policy::kCtaRows>& w,
                                        RingPosition<Policy::kStages>& ring, uint32_t qs,
                                        uint32_t q_phase, int wg, unsigned char* q_stages,
                                        unsigned char* k_tiles, unsigned char* v_tiles,
                                        unsigned char* staging, Barriers<Policy>& bars,
                                        float* warp_maxima) {
  using Shape = WsShape<D, Policy>;
  using Ring = RingPosition<Policy::kStages>;
  const int wg_thread = threadIdx.x % kThreads, T = p.T;
  const int q0 = w.cta_q0 + wg * kWgRows;
  // This consumer's tiles; none (begin past the item's end) when all its
  // rows are past T.
  int my_begin = w.tile_end + 1, my_end = w.tile_end;
  if (q0 < T) {
    my_begin = (w.mask.local ? max(0, q0 - p.window + 1) : 0) / kTileKeys;
    my_end = (min(T, q0 + kWgRows) - 1) / kTileKeys;
  }
  const uint32_t k_base = smem_address(k_tiles), v_base = smem_address(v_tiles);
  auto k_addr = [&](const Ring& r) { return k_base + r.stage * Shape::kTileBytes; };
  auto v_addr = [&](const Ring& r) { return v_base + r.stage * Shape::kTileBytes; };
  auto wait_full = [&](const Ring& r) { mbarrier_wait(&bars.full[r.stage], r.phase); };
  auto release = [&](const Ring& r) { mbarrier_arrive(&bars.empty[r.stage]); };
  ConsumerWarpgroup<D, kKbar> consumer(
      q0, wg_thread, smem_address(q_stages + qs * Shape::kQStageBytes + wg * Shape::kQBytes),
      w.mask, p.scale_log2);
  mbarrier_wait(&bars.q_full[qs], q_phase);
  consumer.load_q(wg_thread);
  mbarrier_arrive(&bars.q_empty[qs]);  // Q is in registers: its stage may be refilled

  // Every consumer thread waits for every tile of the item and releases
  // each, used or not, so the ring's phases stay in step: first the tiles
  // before this consumer's walk, then the walk (a tile is released once
  // every wgmma that reads it has completed: after the next step), then
  // the tiles after it.
  int t = w.tile_begin;
  for (; t < my_begin; ++t, ring.advance()) wait_full(ring), release(ring);
  if (my_begin <= my_end) {
    wait_full(ring);
    consumer.first(t, k_addr(ring));
    Ring prev = ring;
    ring.advance();
    for (++t; t <= my_end; ++t) {
      wait_full(ring);
      consumer.overlapped(t, k_addr(ring), v_addr(prev), k_addr(prev));
      release(prev);
      prev = ring;
      ring.advance();
    }
    consumer.last(v_addr(prev), k_addr(prev));  // the walk's last P V
    release(prev);
  }
  for (; t <= w.tile_end; ++t, ring.advance()) wait_full(ring), release(ring);

  // Epilogue: lse, kbar, O through the staging tile, the max-logit partial.
  const int lane = threadIdx.x % kWarpSize, warp = wg_thread / kWarpSize;
  float inv[2];
  const float thread_max = consumer.finish_rows(p, w.b * p.n_head + w.h, inv);
  consumer.store_kbar(p, w.b, w.h, inv);
  // The staging tile is free once the previous item's store has read it.
  if (wg_thread == 0) bulk_wait_group_read<0>();
  consumer_barrier(wg);
  const uint32_t tile = smem_address(staging);
  consumer.stage_out(tile, inv, warp, lane);
  fence_proxy_async_shared();  // the tile's writes, before the TMA unit reads them
  const float wg_max = warp_max(thread_max);
  if (lane == 0) warp_maxima[wg * 4 + warp] = wg_max;
  // The tile's fenced writes are complete before its store is issued, and
  // the maxima before they are read (named barrier 1 + wg of this
  // warpgroup's 4 warps; wg is warp-uniform).
  consumer_barrier(wg);
  const int q_block = w.cta_block * Policy::kConsumers + wg;
  if (wg_thread == 0 && q_block < p.n_query_blocks) {
    for (int panel = 0; panel < D / kPanelCols; ++panel)
      tma_store_4d(out_map, staging + panel * kWgRows * kSwizzleRowBytes, panel * kPanelCols, w.h,
                   q0, w.b);
    bulk_commit_group();
    float m = warp_maxima[wg * 4];
    for (int x = 1; x < 4; ++x) m = fmaxf(m, warp_maxima[wg * 4 + x]);
    const int bh = w.b * p.n_head + w.h;
    p.max_partials[size_t(bh) * p.n_query_blocks + q_block] = m;
  }
}

#endif  // LSGPT_SM90A_DEVICE

// n_bh = B * n_head; n_items = ceil(T / kCtaRows) * n_bh.
template <int D, bool kKbar, class Policy>
__global__ void __launch_bounds__(Policy::kBlockThreads, 1)
    attention_forward_sm90_ws_kernel(const __grid_constant__ CUtensorMap qkv_map,
                                     const __grid_constant__ CUtensorMap out_map,
                                     const ForwardParams p, int n_bh, int n_items) {
  wait_for_previous_grid();
  allow_next_grid();
#if LSGPT_SM90A_DEVICE
  using Shape = WsShape<D, Policy>;
  constexpr int kQStages = Policy::kQStages;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ Barriers<Policy> bars;
  // The epilogue's per-warp maxima: a warpgroup writes its own 4 entries
  // between its two named barriers of an item and reads them after the
  // second; a warp cannot write the next item's before the reading thread
  // has passed the next item's first barrier.
  __shared__ float warp_maxima[Policy::kConsumerThreads / kWarpSize];
  unsigned char* smem = align_to_atom(smem_raw);
  unsigned char* q_stages = smem;
  unsigned char* k_tiles = smem + kQStages * Shape::kQStageBytes;
  unsigned char* v_tiles = k_tiles + Policy::kStages * Shape::kTileBytes;
  unsigned char* staging = v_tiles + Policy::kStages * Shape::kTileBytes;

  // 0: the producer, 1 .. kConsumers: consumers. Read through a shuffle so that
  // ptxas sees a warp-uniform value (as CUTLASS's canonical_warp_group_idx):
  // branches on it do not count as divergent around the wgmma pipeline.
  const int role = __shfl_sync(0xffffffffu, int(threadIdx.x) / kThreads, 0);
  if (threadIdx.x == 0) bars.init();
  __syncthreads();  // the last block-wide barrier: the roles part here

  if (role == 0) {
    setmaxnreg_dec<Policy::kProducerRegs>();
    if (threadIdx.x == 0)
      produce<D, Policy>(&qkv_map, p, n_bh, n_items, q_stages, k_tiles, v_tiles, bars);
    return;
  }
  setmaxnreg_inc<Policy::kConsumerRegs>();
  const int wg = role - 1;
  RingPosition<Policy::kStages> ring;
  uint32_t k = 0;
  // With the items from the counter the producer names each with its Q
  // stage (overwriting `item`, whose striding step is then unused), until
  // it says none is left: after n_items + 1 turns at most (one block taking
  // every item, then the -1), so the loop always leaves by the break; the
  // bound only keeps the loop finite for ptxas.
  for (int item = blockIdx.x, turn = 0;
       Policy::kDynamicItems ? turn <= n_items : item < n_items;
       item += gridDim.x, ++k, ++turn) {
    const uint32_t qs = k % kQStages;
    if constexpr (Policy::kDynamicItems) {
      mbarrier_wait(&bars.q_full[qs], (k / kQStages) & 1);
      // Through a shuffle, so that ptxas sees a warp-uniform value.
      item = __shfl_sync(0xffffffffu, bars.q_item[qs], 0);
      if (item < 0) {
        if (threadIdx.x % kThreads == 0) bulk_wait_group_read<0>();  // see below
        break;
      }
    }
    const WorkItem<Policy::kCtaRows> w(p, n_bh, item);
    consume<D, kKbar, Policy>(p, &out_map, w, ring, qs, (k / kQStages) & 1, wg, q_stages,
                              k_tiles, v_tiles, staging + wg * Shape::kQBytes, bars, warp_maxima);
    // The block's shared memory must outlive its last store's reads: wait
    // after the last item (striding) or at the -1 (from the counter). Not
    // after the loop: code there made ptxas spill 24 to 540 bytes.
    if (!Policy::kDynamicItems && item + int(gridDim.x) >= n_items && threadIdx.x % kThreads == 0)
      bulk_wait_group_read<0>();
  }
#else
  __trap();  // only the sm_90a binary has this kernel; the host never launches it elsewhere
#endif
}

// qkv [B, T, 3C] as (head column, head slot, t, batch row): slot h is q's
// head h, n_head + h k's, 2 n_head + h v's; a box is one panel of 64 rows.
CUtensorMap qkv_tensor_map(const ForwardParams& p, int B) {
  return head_tensor_map(p.qkv, p.head_dim, 3 * p.n_head, size_t(3) * p.C, p.T, B, kTileKeys,
                         "qkv (attention_forward)");
}

// out [B, T, C] as (head column, head, t, batch row), for the epilogue's
// stores: a box is one panel of a consumer's 64 rows.
CUtensorMap out_tensor_map(const ForwardParams& p, int B) {
  return head_tensor_map(p.out, p.head_dim, p.n_head, size_t(p.C), p.T, B, kWgRows,
                         "out (attention_forward)");
}

// One block per work item, or (persistent) one per multiprocessor, each
// taking every gridDim.x-th item or (Policy::kDynamicItems) the next from
// the counter.
template <int D, bool kKbar, class Policy>
void launch_policy(CudaContext& ctx, const CUtensorMap& map, const CUtensorMap& out_map,
                   const ForwardParams& p, int B, bool persistent) {
  using Shape = WsShape<D, Policy>;
  auto kernel = attention_forward_sm90_ws_kernel<D, kKbar, Policy>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(Shape::kSmemBytes)));
  const int n_bh = B * p.n_head;
  const long long items = (long long)ceil_div(p.T, Policy::kCtaRows) * n_bh;
  // From the counter, up to items + (blocks - 1) are handed out before
  // every producer has seen the end.
  LSGPT_CHECK(items + std::max(1, ctx.sm_count()) <= 0x7fffffff,
              "attention_forward: too many query blocks for one launch");
  const int n_items = int(items);
  const int blocks = persistent ? std::min(n_items, std::max(1, ctx.sm_count())) : n_items;
  LSGPT_CHECK(!Policy::kDynamicItems || (persistent && p.item_counter),
              "attention_forward: items from a counter need the counter and persistent blocks");
  launch_kernel(ctx, kernel, blocks, Policy::kBlockThreads, Shape::kSmemBytes, map, out_map, p,
                n_bh, n_items);
}

template <int D, bool kKbar>
void launch(CudaContext& ctx, const CUtensorMap& map, const CUtensorMap& out_map,
            const ForwardParams& p, int B, Sm90ForwardVariant variant) {
  constexpr int kConsumers = ws_forward_consumers(D);
  if (variant == Sm90ForwardVariant::ws_dynamic)
    return launch_policy<D, kKbar, WsPolicy<kConsumers, true>>(ctx, map, out_map, p, B, true);
  launch_policy<D, kKbar, WsPolicy<kConsumers>>(ctx, map, out_map, p, B,
                                                variant == Sm90ForwardVariant::ws_persistent);
}

}  // namespace

void launch_forward_sm90_ws(CudaContext& ctx, const ForwardParams& p, int B, bool with_kbar,
                            Sm90ForwardVariant variant) {
  LSGPT_CHECK(variant != Sm90ForwardVariant::base, "attention_forward: base is not a ws variant");
  const CUtensorMap map = qkv_tensor_map(p, B);
  const CUtensorMap out_map = out_tensor_map(p, B);
  if (padded_head_dim(p.head_dim) == 64)
    with_kbar ? launch<64, true>(ctx, map, out_map, p, B, variant)
              : launch<64, false>(ctx, map, out_map, p, B, variant);
  else
    with_kbar ? launch<128, true>(ctx, map, out_map, p, B, variant)
              : launch<128, false>(ctx, map, out_map, p, B, variant);
}

}  // namespace lsgpt::cuda::attn
