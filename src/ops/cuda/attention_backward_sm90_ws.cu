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
//   from blockIdx.x kConsumers + c on: a key block or a query block of one
//   (batch row, head), global heads' first and, among them, the longest
//   walks first (attention_sm90_choice.h picks this variant where that pays).
//   An item's fixed pair (K and V of a key block; Q and dO of a query
//   block) sits in one of kFixedStages slots, the tiles it walks (Q, dO,
//   lse, delta; or K, V) in a ring of kStages stages, each with `full` and
//   `empty` mbarriers (tma.cuh's protocol). The consumers never wait for
//   each other, and the producer runs ahead across items, so the next
//   item's tiles load while a consumer finishes one and stores its rows.
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
template <int D, bool kQbar, bool kShortWalks = false>
struct WsBackwardPolicy {
  static_assert(!kShortWalks || (D == 64 && !kQbar), "short walks: D 64 without qbar");
  static constexpr int kConsumers = D == 64 ? (kQbar ? 2 : 3) : (kQbar ? 1 : 2);
  static constexpr int kProducerRegs = kConsumers == 3 ? 32 : 40;
  static constexpr int kConsumerRegs = kConsumers == 3 ? 160 : kConsumers == 2 ? 232 : 256;
  static constexpr int kStages = kShortWalks ? 2 : D == 64 || kConsumers == 1 ? 3 : 2;
  static constexpr int kFixedStages =
      kShortWalks || !(kConsumers == 3 || (D == 128 && kConsumers == 2)) ? 2 : 1;
};

// One consumer's pipeline state: the ring (`full`: the producer warp's 32
// lanes, one with the TMA byte count; `empty`: the consumer's threads), the
// fixed slots (`fixed_full`: the TMA bytes; `fixed_empty`: the consumer's
// threads), and the ring stages' lse (log2 units) and delta rows.
template <class Policy>
struct ConsumerPipe {
  uint64_t full[Policy::kStages], empty[Policy::kStages];
  uint64_t fixed_full[Policy::kFixedStages], fixed_empty[Policy::kFixedStages];
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
  static constexpr int kConsumerBytes = (Policy::kFixedStages + Policy::kStages) * kPairBytes;
  static constexpr size_t kSmemBytes = size_t(kConsumers) * kConsumerBytes + kAtomBytes;
  // With the static pipes beside it.
  static_assert(kSmemBytes + sizeof(ConsumerPipe<Policy>) * kConsumers <= 227 * 1024,
                "over the opt-in shared memory of one block");
  static_assert(Policy::kProducerRegs * kThreads + Policy::kConsumerRegs * kConsumers * kThreads <=
                    launch_register_pool(kBlockThreads),
                "setmaxnreg would wait for registers the launch did not allocate");
};

#if LSGPT_SM90A_DEVICE

// One work item: a key block or a query block of one (batch row, head).
// Items 0 .. (global heads' count) - 1 are the global heads', then the
// local heads'; within each, rank-major over the class's (batch row, head)
// pairs, ranks alternating key block 0, 1, ... (longest walk first) and
// query block n - 1, n - 2, ... (likewise).
struct BackwardItem {
  bool key;
  int block, b, h;

  __device__ __forceinline__ BackwardItem(const BackwardParams& p, int B, int item) {
    const int n_blocks = p.n_key_blocks, n_global = p.n_head - p.n_local;
    const int global_items = B * n_global * 2 * n_blocks;
    int heads = n_global, first_head = p.n_local;
    if (item >= global_items) item -= global_items, heads = p.n_local, first_head = 0;
    const int n_bh = B * heads, rank = item / n_bh, x = item % n_bh;
    b = x / heads, h = first_head + x % heads;
    key = rank % 2 == 0;
    block = key ? rank / 2 : n_blocks - 1 - rank / 2;
  }
};

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

// One tile (D / 64 panels of `rows` rows) of head slot `slot`, rows from r0.
template <int D, int kTileRows>
__device__ __forceinline__ void load_tile(unsigned char* dst, const CUtensorMap* map,
                                          uint64_t* bar, int slot, int r0, int b) {
#pragma unroll
  for (int panel = 0; panel < D / kPanelCols; ++panel)
    tma_load_4d(dst + panel * kTileRows * kSwizzleRowBytes, map, bar, panel * kPanelCols, slot, r0,
                b);
}

// Producer warp of one consumer (all 32 lanes call it): for each of the
// consumer's items its fixed pair, then each walked tile into the ring.
// `it` counts walked tiles over all the consumer's items: tile `it` goes to
// stage it % kStages, its (it / kStages)-th use; `k` counts items likewise
// for the fixed slots.
template <int D, bool kQbar, class Policy>
__device__ void produce(const WsMaps& maps, const BackwardParams& p, int B, int n_items,
                        int stream, int n_streams, unsigned char* smem,
                        ConsumerPipe<Policy>& pipe) {
  using Shape = WsBackwardShape<D, kQbar, Policy>;
  constexpr int kQ = Shape::kQ, kStages = Policy::kStages, kFixed = Policy::kFixedStages;
  const int lane = threadIdx.x % kWarpSize;
  unsigned char* ring = smem + kFixed * Shape::kPairBytes;
  int it = 0, k = 0;
  for (int item = stream; item < n_items; item += n_streams, ++k) {
    const BackwardItem w(p, B, item);
    const QueryTileRange walk = item_walk<kQ>(p, w);
    const int r0 = w.block * kRows, fs = k % kFixed;
    if (k >= kFixed) mbarrier_wait(&pipe.fixed_empty[fs], (k / kFixed - 1) & 1);
    if (lane == 0) {
      unsigned char* dst = smem + fs * Shape::kPairBytes;
      uint64_t* bar = &pipe.fixed_full[fs];
      mbarrier_arrive_expect_tx(bar, Shape::kPairBytes);
      load_tile<D, kRows>(dst, maps.qkv, bar, (w.key ? p.n_head : 0) + w.h, r0, w.b);
      if (w.key)
        load_tile<D, kRows>(dst + Shape::kTileBytes, maps.qkv, bar, 2 * p.n_head + w.h, r0, w.b);
      else
        load_tile<D, kRows>(dst + Shape::kTileBytes, maps.dout, bar, w.h, r0, w.b);
    }
    const size_t stats_row = size_t(w.b * p.n_head + w.h) * p.T;
    for (int tile = walk.first; tile <= walk.last; ++tile, ++it) {
      const int s = it % kStages;
      if (it >= kStages) mbarrier_wait(&pipe.empty[s], (it / kStages - 1) & 1);
      unsigned char* dst = ring + s * Shape::kPairBytes;
      uint64_t* bar = &pipe.full[s];
      if (w.key) {
        const int i0 = tile * kQ;
        for (int i = lane; i < kQ; i += kWarpSize) {
          const bool valid = i0 + i < p.T;
          pipe.lse[s][i] = valid ? p.lse[stats_row + i0 + i] * kLog2e : 0.f;
          pipe.delta[s][i] = valid ? p.delta[stats_row + i0 + i] : 0.f;
        }
        if (lane == 0) {
          mbarrier_arrive_expect_tx(bar, 2 * sw128_tile_bytes<kQ, D>());
          load_tile<D, kQ>(dst, maps.q_walk, bar, w.h, i0, w.b);
          load_tile<D, kQ>(dst + Shape::kTileBytes, maps.do_walk, bar, w.h, i0, w.b);
        }
      } else if (lane == 0) {
        const int j0 = tile * kQueryBlockKeyTile;
        mbarrier_arrive_expect_tx(bar, Shape::kPairBytes);
        load_tile<D, kRows>(dst, maps.qkv, bar, p.n_head + w.h, j0, w.b);
        load_tile<D, kRows>(dst + Shape::kTileBytes, maps.qkv, bar, 2 * p.n_head + w.h, j0, w.b);
      }
      if (lane != 0) mbarrier_arrive(bar);  // after this lane's lse and delta stores
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
    key_tile_step<D, kRows, kQ, kQbar>(dv, dk, qbar, colsum, k_addr, v_addr, query_tile, p, i0,
                                       k0, mask, key_row, quad);
    mbarrier_arrive(&pipe.empty[s]);  // its products have completed (wgmma_wait<0>)
  }
  mbarrier_arrive(fixed_empty);  // K, V read no more: the next item's pair may load
  finish_key_rows<D, kSpan, kQbar>(p, dk, dv, qbar, colsum, key_row, rows, quad);
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

// One consumer warpgroup: its items in order, each after its fixed pair
// has arrived. The pair is released when the walk ends, before the item's
// rows are finished and stored (from registers), so the producer loads the
// next item's pair meanwhile.
template <int D, bool kSpan, bool kQbar, class Policy>
__device__ void consume(const BackwardParams& p, int B, int n_items, int stream, int n_streams,
                        unsigned char* smem, ConsumerPipe<Policy>& pipe) {
  using Shape = WsBackwardShape<D, kQbar, Policy>;
  constexpr int kFixed = Policy::kFixedStages;
  unsigned char* ring = smem + kFixed * Shape::kPairBytes;
  int it = 0, k = 0;
  for (int item = stream; item < n_items; item += n_streams, ++k) {
    const BackwardItem w(p, B, item);
    const QueryTileRange walk = item_walk<Shape::kQ>(p, w);
    const int fs = k % kFixed;
    mbarrier_wait(&pipe.fixed_full[fs], (k / kFixed) & 1);
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

// n_items = 2 ceil(T / 64) B n_head; one block per multiprocessor at most.
template <int D, bool kSpan, bool kQbar, class Policy>
__global__ void __launch_bounds__(WsBackwardShape<D, kQbar, Policy>::kBlockThreads, 1)
    attention_backward_sm90_ws_kernel(const __grid_constant__ CUtensorMap qkv_map,
                                      const __grid_constant__ CUtensorMap dout_map,
                                      const __grid_constant__ CUtensorMap q_walk_map,
                                      const __grid_constant__ CUtensorMap do_walk_map,
                                      const BackwardParams p, int B, int n_items) {
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
                                   smem + c * Shape::kConsumerBytes, pipes[c]);
#else
  __trap();  // only the sm_90a binary has this kernel; the host never launches it elsewhere
#endif
}

template <int D, bool kSpan, bool kQbar, bool kShortWalks>
void launch(CudaContext& ctx, const BackwardParams& p, int B) {
  using Policy = WsBackwardPolicy<D, kQbar, kShortWalks>;
  using Shape = WsBackwardShape<D, kQbar, Policy>;
  auto kernel = attention_backward_sm90_ws_kernel<D, kSpan, kQbar, Policy>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(Shape::kSmemBytes)));
  BackwardParams q = p;
  q.n_key_blocks = q.n_query_blocks = ceil_div(p.T, kRows);
  const long long items = 2LL * q.n_key_blocks * B * p.n_head;
  LSGPT_CHECK(items <= 0x7fffffff, "attention_backward: too many blocks for one launch");
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
  kernel<<<blocks, Shape::kBlockThreads, Shape::kSmemBytes, ctx.stream()>>>(
      qkv_map, dout_map, q_walk_map, do_walk_map, q, B, n_items);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void launch_backward_sm90_ws(CudaContext& ctx, const BackwardParams& p, int B, bool span,
                             bool qbar, bool short_walks) {
  dispatch_backward(p, span, qbar, [&](auto d, auto span_c, auto qbar_c) {
    constexpr int D = decltype(d)::value;
    constexpr bool kSpan = decltype(span_c)::value, kQbar = decltype(qbar_c)::value;
    if constexpr (D == 64 && !kQbar)
      if (short_walks) return launch<D, kSpan, kQbar, true>(ctx, p, B);
    launch<D, kSpan, kQbar, false>(ctx, p, B);
  });
}

}  // namespace lsgpt::cuda::attn
