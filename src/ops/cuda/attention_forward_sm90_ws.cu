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
// of wgmma.cuh.
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
  static_assert(Policy::kQStages == 2, "the epilogue's scratch alternates with the Q stage");
  static_assert(kWgRows == kTileKeys, "Q and K/V tiles share the box shape");
  static constexpr int kTileBytes = sw128_tile_bytes<kTileKeys, D>();  // one K or V tile
  static constexpr int kQBytes = sw128_tile_bytes<kWgRows, D>();       // one consumer's Q
  static constexpr int kQStageBytes = Policy::kConsumers * kQBytes;   // every consumer's Q
  // Two Q stages, the K and V stages, and room to align the start to a
  // swizzle atom: D 128 (two consumers) with 4 stages 64 + 128 + 1 KiB =
  // 193 KiB, D 64 (three) 48 + 64 + 1 = 113 KiB; one block per
  // multiprocessor either way (384 threads at up to 240 registers, or 512
  // at 160).
  static constexpr size_t kSmemBytes = Policy::kQStages * size_t(kQStageBytes) +
                                       2 * Policy::kStages * size_t(kTileBytes) + kAtomBytes;
  static_assert(kSmemBytes <= 227 * 1024, "over the opt-in shared memory of one block");
};

#if LSGPT_SM90A_DEVICE

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
  __device__ __forceinline__ int tiles() const { return tile_end - tile_begin + 1; }
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
// `it` counts K/V tiles over all the block's items: tile `it` goes to stage
// it % kStages, its (it / kStages)-th use; a stage is refilled once all
// consumer threads have released its previous use (the Q stages likewise,
// by item count).
template <int D, class Policy>
__device__ __forceinline__ void produce(const CUtensorMap* map, const ForwardParams& p, int n_bh,
                                        int n_items, unsigned char* q_stages,
                                        unsigned char* k_tiles, unsigned char* v_tiles,
                                        Barriers<Policy>& bars) {
  using Shape = WsShape<D, Policy>;
  constexpr int kStages = Policy::kStages, kQStages = Policy::kQStages;
  constexpr int kPanels = D / kPanelCols;
  constexpr int kPanelBytes = kTileKeys * kSwizzleRowBytes;  // one TMA box: 64 rows of a panel
  int it = 0, k = 0;
  auto next_item = [&](int item) {
    if constexpr (Policy::kDynamicItems)
      return take_next_item(p.item_counter, n_items, int(gridDim.x));
    else
      return item + int(gridDim.x);
  };
  for (int item = blockIdx.x; item < n_items; item = next_item(item), ++k) {
    const WorkItem<Policy::kCtaRows> w(p, n_bh, item);
    const int qs = k % kQStages;
    if (k >= kQStages) mbarrier_wait(&bars.q_empty[qs], (k / kQStages - 1) & 1);
    bars.q_item[qs] = item;  // released to the consumers by the arrival
    mbarrier_arrive_expect_tx(&bars.q_full[qs], Shape::kQStageBytes);
    for (int c = 0; c < Policy::kConsumers; ++c)
      for (int panel = 0; panel < kPanels; ++panel)
        tma_load_4d(q_stages + qs * Shape::kQStageBytes + c * Shape::kQBytes + panel * kPanelBytes,
                    map, &bars.q_full[qs], panel * kPanelCols, w.h, w.cta_q0 + c * kWgRows, w.b);
    for (int t = w.tile_begin; t <= w.tile_end; ++t, ++it) {
      const int stage = it % kStages;
      if (it >= kStages) mbarrier_wait(&bars.empty[stage], (it / kStages - 1) & 1);
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
    const int qs = k % kQStages;
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
// item's walk (tiles from ring position `it`), then out, lse, kbar and its
// max-logit partial. `warp_maxima` is this item's scratch (4 floats a consumer).
template <int D, bool kKbar, class Policy>
__device__ __forceinline__ void consume(const ForwardParams& p,
                                        const WorkItem<Policy::kCtaRows>& w, int it, int qs,
                                        int q_phase, int wg, unsigned char* q_stages,
                                        unsigned char* k_tiles, unsigned char* v_tiles,
                                        Barriers<Policy>& bars,
                                        float* warp_maxima) {
  using Shape = WsShape<D, Policy>;
  constexpr int kStages = Policy::kStages;
  const int wg_thread = threadIdx.x % kThreads, T = p.T;
  const int q0 = w.cta_q0 + wg * kWgRows;
  // This consumer's tiles; empty (begin > end) when all its rows are past T.
  int my_begin = 1, my_end = 0;
  if (q0 < T) {
    my_begin = (w.mask.local ? max(0, q0 - p.window + 1) : 0) / kTileKeys;
    my_end = (min(T, q0 + kWgRows) - 1) / kTileKeys;
  }
  // Ring position of tile t of this item.
  auto k_addr = [&](int t) {
    return smem_address(k_tiles + ((it + t - w.tile_begin) % kStages) * Shape::kTileBytes);
  };
  auto v_addr = [&](int t) {
    return smem_address(v_tiles + ((it + t - w.tile_begin) % kStages) * Shape::kTileBytes);
  };
  ConsumerWarpgroup<D, kKbar> consumer(
      q0, wg_thread, smem_address(q_stages + qs * Shape::kQStageBytes + wg * Shape::kQBytes),
      w.mask, p.scale_log2);
  mbarrier_wait(&bars.q_full[qs], q_phase);
  consumer.load_q(wg_thread);
  mbarrier_arrive(&bars.q_empty[qs]);  // Q is in registers: its stage may be refilled

  // One step past the last tile: that step only issues the last tile's P V.
  // Every consumer thread waits for every tile of the item and releases
  // each, used or not, so the ring's phases stay in step.
  for (int t = w.tile_begin; t <= w.tile_end + 1; ++t) {
    const int i = it + t - w.tile_begin;  // ring position
    if (t <= w.tile_end) mbarrier_wait(&bars.full[i % kStages], (i / kStages) & 1);
    const bool has_s = t >= my_begin && t <= my_end;  // uniform in the warpgroup
    const bool has_pv = t - 1 >= my_begin && t - 1 <= my_end;
    if (has_s && has_pv)
      consumer.overlapped(t, k_addr(t), v_addr(t - 1), k_addr(t - 1));
    else if (has_s)  // the consumer's first tile: nothing to overlap
      consumer.first(t, k_addr(t));
    else if (has_pv)  // one step past its last tile
      consumer.last(v_addr(t - 1), k_addr(t - 1));
    // Every wgmma of this step has completed: tile t - 1 is read no more.
    if (t > w.tile_begin) mbarrier_arrive(&bars.empty[(i - 1) % kStages]);
  }

  // Epilogue: out (and kbar), lse, and this consumer's max-logit partial.
  const int lane = threadIdx.x % kWarpSize, warp = wg_thread / kWarpSize;
  const float wg_max = warp_max(consumer.store(p, w.b, w.h));
  if (lane == 0) warp_maxima[wg * 4 + warp] = wg_max;
  // This warpgroup's 4 warps (named barrier 1 + wg; wg is warp-uniform).
  consumer_barrier(wg);
  const int q_block = w.cta_block * Policy::kConsumers + wg;
  if (wg_thread == 0 && q_block < p.n_query_blocks) {
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
                                     const ForwardParams p, int n_bh, int n_items) {
  wait_for_previous_grid();
  allow_next_grid();
#if LSGPT_SM90A_DEVICE
  using Shape = WsShape<D, Policy>;
  constexpr int kQStages = Policy::kQStages;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ Barriers<Policy> bars;
  // The epilogue's per-warp maxima, one buffer per item parity: a warpgroup
  // writes and reads only its own 4 entries, around its own named barrier,
  // and a warp that runs ahead into the next item's epilogue (it can, when
  // its warpgroup has no tile there and no wgmma holds its warps together)
  // writes the other buffer; two items ahead it would first have to pass
  // the next item's barrier, which waits for the reading warp.
  __shared__ float warp_maxima[kQStages][Policy::kConsumerThreads / kWarpSize];
  unsigned char* smem = align_to_atom(smem_raw);
  unsigned char* q_stages = smem;
  unsigned char* k_tiles = smem + kQStages * Shape::kQStageBytes;
  unsigned char* v_tiles = k_tiles + Policy::kStages * Shape::kTileBytes;

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
  int it = 0, k = 0;
  // With the items from the counter the producer names each with its Q
  // stage (overwriting `item`, whose striding step is then unused), until
  // it says none is left (after n_items turns at most: the bound only keeps
  // the loop finite for ptxas).
  for (int item = blockIdx.x, turn = 0;
       Policy::kDynamicItems ? turn < n_items : item < n_items;
       item += gridDim.x, ++k, ++turn) {
    const int qs = k % kQStages;
    if constexpr (Policy::kDynamicItems) {
      mbarrier_wait(&bars.q_full[qs], (k / kQStages) & 1);
      // Through a shuffle, so that ptxas sees a warp-uniform value.
      item = __shfl_sync(0xffffffffu, bars.q_item[qs], 0);
      if (item < 0) break;
    }
    const WorkItem<Policy::kCtaRows> w(p, n_bh, item);
    consume<D, kKbar, Policy>(p, w, it, qs, (k / kQStages) & 1, wg, q_stages, k_tiles, v_tiles,
                              bars, warp_maxima[qs]);
    it += w.tiles();
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

// One block per work item, or (persistent) one per multiprocessor, each
// taking every gridDim.x-th item or (Policy::kDynamicItems) the next from
// the counter.
template <int D, bool kKbar, class Policy>
void launch_policy(CudaContext& ctx, const CUtensorMap& map, const ForwardParams& p, int B,
                   bool persistent) {
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
  launch_kernel(ctx, kernel, blocks, Policy::kBlockThreads, Shape::kSmemBytes, map, p, n_bh,
                n_items);
}

template <int D, bool kKbar>
void launch(CudaContext& ctx, const CUtensorMap& map, const ForwardParams& p, int B,
            Sm90ForwardVariant variant) {
  constexpr int kConsumers = ws_forward_consumers(D);
  if (variant == Sm90ForwardVariant::ws_dynamic)
    return launch_policy<D, kKbar, WsPolicy<kConsumers, true>>(ctx, map, p, B, true);
  launch_policy<D, kKbar, WsPolicy<kConsumers>>(ctx, map, p, B,
                                                variant == Sm90ForwardVariant::ws_persistent);
}

}  // namespace

void launch_forward_sm90_ws(CudaContext& ctx, const ForwardParams& p, int B, bool with_kbar,
                            Sm90ForwardVariant variant) {
  LSGPT_CHECK(variant != Sm90ForwardVariant::base, "attention_forward: base is not a ws variant");
  const CUtensorMap map = qkv_tensor_map(p, B);
  if (padded_head_dim(p.head_dim) == 64)
    with_kbar ? launch<64, true>(ctx, map, p, B, variant)
              : launch<64, false>(ctx, map, p, B, variant);
  else
    with_kbar ? launch<128, true>(ctx, map, p, B, variant)
              : launch<128, false>(ctx, map, p, B, variant);
}

}  // namespace lsgpt::cuda::attn
