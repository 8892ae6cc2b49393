// LS flash-attention forward for Hopper (sm_90a), warp-specialised: the
// contract of attention_forward_sm90.cu (local heads walk only their band,
// global heads are causal; out, lse, one max-logit partial per 64 queries,
// kbar = P K in the kKbar instantiation; zero fill past T and past the real
// head dim) with FlashAttention-3's division of labour:
//
// - A block is 3 warpgroups. Warpgroup 0 is the producer: one thread loads
//   both Q tiles and then each K/V tile with TMA (cp.async.bulk.tensor,
//   128-byte swizzle done by the copy engine, zeros out of bounds) into a
//   ring of kStages stages, each with a `full` and an `empty` mbarrier
//   (tma.cuh). It gives its registers back (setmaxnreg.dec to 24).
// - Warpgroups 1 and 2 are consumers of 64 queries each (128 a block),
//   sharing the K/V tiles (setmaxnreg.inc to 240). Each runs the overlapped
//   order of attention_forward_consumer.cuh (S_j issued with P_{j-1} V_{j-1},
//   the softmax of S_j while the latter runs) and, after each step, arrives
//   on the `empty` barrier of the tile it has finished with. They never wait
//   for each other: only the producer couples them, through the ring.
//
// The tile loads need a tensor map of qkv, made on the host for each call
// (cuTensorMapEncodeTiled through the runtime's driver entry point): a 4-d
// view (head column, head slot of q|k|v, t, batch row) whose out-of-bounds
// elements past the real head dim and past T read as zeros. A box is one
// 64-column panel of 64 rows: the swizzled panel layout of wgmma.cuh.
//
// The device code exists only in the sm_90a compilation; the compute_80 PTX
// carries a body that traps, and the host never launches it there (the
// dispatch checks the loaded binary, attention_forward_sm90.cu).
#include <cuda.h>
#include <cudaTypedefs.h>

#include <cstdint>

#include "core/error.h"
#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/attention_forward.cuh"
#include "ops/cuda/attention_forward_consumer.cuh"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/tma.cuh"
#include "ops/cuda/wgmma.cuh"

namespace lsgpt::cuda::attn {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kConsumers = 2;  // consumer warpgroups
constexpr int kConsumerThreads = kConsumers * kThreads;
constexpr int kBlockThreads = kThreads + kConsumerThreads;  // the producer warpgroup first
constexpr int kCtaRows = kConsumers * kWgRows;
// FlashAttention-3's split for two consumer warpgroups; the register file
// (64 Ki 32-bit registers) holds it at one block per multiprocessor.
constexpr int kProducerRegs = 24;
constexpr int kConsumerRegs = 240;
static_assert(kProducerRegs * kThreads + kConsumerRegs * kConsumerThreads <= 64 * 1024,
              "over the register file");

// Stages of the K/V ring: consumers read two tiles at a step (S_j, P_{j-1}
// V_{j-1}); the rest let the producer run ahead.
struct WsPolicy {
  static constexpr int kStages = 4;
};

template <int D, class Policy>
struct WsShape {
  static_assert(D == 64 || D == 128, "the wgmma forward is built for D = 64 and 128");
  static_assert(Policy::kStages >= 3, "two tiles in use and one loading");
  static_assert(kWgRows == kTileKeys, "Q and K/V tiles share the box shape");
  static constexpr int kTileBytes = sw128_tile_bytes<kTileKeys, D>();  // one K or V tile
  static constexpr int kQBytes = sw128_tile_bytes<kWgRows, D>();       // one consumer's Q
  // Both Q tiles, the K and V stages, and room to align the start to a
  // swizzle atom: D 128 with 4 stages 32 + 128 + 1 KiB = 161 KiB, D 64
  // 81 KiB; one block per multiprocessor either way (384 threads at up to
  // 240 registers).
  static constexpr size_t kSmemBytes =
      kConsumers * size_t(kQBytes) + 2 * Policy::kStages * size_t(kTileBytes) + kAtomBytes;
  static_assert(kSmemBytes <= 227 * 1024, "over the opt-in shared memory of one block");
};

#if LSGPT_SM90A_DEVICE

// The producer's thread: both Q tiles on q_full, then every tile of the
// block's walk into the ring, each stage refilled once its consumers have
// released it.
template <int D, class Policy>
__device__ __forceinline__ void produce(const CUtensorMap* map, unsigned char* q_tiles,
                                        unsigned char* k_tiles, unsigned char* v_tiles,
                                        uint64_t* q_full, uint64_t* full, uint64_t* empty,
                                        int n_head, int h, int b, int cta_q0, int cta_begin,
                                        int cta_end) {
  using Shape = WsShape<D, Policy>;
  constexpr int kStages = Policy::kStages, kPanels = D / kPanelCols;
  constexpr int kPanelBytes = kTileKeys * kSwizzleRowBytes;  // one TMA box: 64 rows of a panel
  mbarrier_arrive_expect_tx(q_full, kConsumers * Shape::kQBytes);
  for (int c = 0; c < kConsumers; ++c)
    for (int panel = 0; panel < kPanels; ++panel)
      tma_load_4d(q_tiles + c * Shape::kQBytes + panel * kPanelBytes, map, q_full,
                  panel * kPanelCols, h, cta_q0 + c * kWgRows, b);
  for (int t = cta_begin; t <= cta_end; ++t) {
    const int i = t - cta_begin, stage = i % kStages;
    if (i >= kStages) mbarrier_wait(&empty[stage], (i / kStages - 1) & 1);
    mbarrier_arrive_expect_tx(&full[stage], 2 * Shape::kTileBytes);
    for (int panel = 0; panel < kPanels; ++panel) {
      const int offset = stage * Shape::kTileBytes + panel * kPanelBytes;
      tma_load_4d(k_tiles + offset, map, &full[stage], panel * kPanelCols, n_head + h,
                  t * kTileKeys, b);
      tma_load_4d(v_tiles + offset, map, &full[stage], panel * kPanelCols, 2 * n_head + h,
                  t * kTileKeys, b);
    }
  }
}

#endif  // LSGPT_SM90A_DEVICE

template <int D, bool kKbar, class Policy>
__global__ void __launch_bounds__(kBlockThreads, 1)
    attention_forward_sm90_ws_kernel(const __grid_constant__ CUtensorMap qkv_map,
                                     const ForwardParams p) {
#if LSGPT_SM90A_DEVICE
  using Shape = WsShape<D, Policy>;
  constexpr int kStages = Policy::kStages;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ uint64_t full[kStages], empty[kStages], q_full;
  __shared__ float warp_maxima[kConsumerThreads / kWarpSize];
  unsigned char* smem = align_to_atom(smem_raw);
  unsigned char* q_tiles = smem;
  unsigned char* k_tiles = smem + kConsumers * Shape::kQBytes;
  unsigned char* v_tiles = k_tiles + kStages * Shape::kTileBytes;

  // 0: the producer, 1 and 2: consumers. Read through a shuffle so that
  // ptxas sees a warp-uniform value (as CUTLASS's canonical_warp_group_idx):
  // branches on it do not count as divergent around the wgmma pipeline.
  const int role = __shfl_sync(0xffffffffu, int(threadIdx.x) / kThreads, 0);
  // Later query blocks have more keys on global heads: start them first.
  const int cta_block = gridDim.x - 1 - blockIdx.x;
  const int bh = blockIdx.y, b = bh / p.n_head, h = bh % p.n_head;
  const int cta_q0 = cta_block * kCtaRows;
  const int T = p.T;
  const HeadMask mask{h < p.n_local, p.window};
  // The block's tiles: the union of both consumers' bands.
  const int cta_begin = (mask.local ? max(0, cta_q0 - p.window + 1) : 0) / kTileKeys;
  const int cta_end = (min(T, cta_q0 + kCtaRows) - 1) / kTileKeys;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&full[s], 1);
      mbarrier_init(&empty[s], kConsumerThreads);
    }
    mbarrier_init(&q_full, 1);
    fence_mbarrier_init();
  }
  __syncthreads();  // the last block-wide barrier: the roles part here

  if (role == 0) {
    setmaxnreg_dec<kProducerRegs>();
    if (threadIdx.x == 0)
      produce<D, Policy>(&qkv_map, q_tiles, k_tiles, v_tiles, &q_full, full, empty, p.n_head, h, b,
                         cta_q0, cta_begin, cta_end);
    return;
  }
  setmaxnreg_inc<kConsumerRegs>();

  const int wg = role - 1, wg_thread = threadIdx.x % kThreads;
  const int q0 = cta_q0 + wg * kWgRows;
  // This consumer's tiles; empty (begin > end) when all its rows are past T.
  int my_begin = 1, my_end = 0;
  if (q0 < T) {
    my_begin = (mask.local ? max(0, q0 - p.window + 1) : 0) / kTileKeys;
    my_end = (min(T, q0 + kWgRows) - 1) / kTileKeys;
  }
  auto k_addr = [&](int t) {
    return smem_address(k_tiles + ((t - cta_begin) % kStages) * Shape::kTileBytes);
  };
  auto v_addr = [&](int t) {
    return smem_address(v_tiles + ((t - cta_begin) % kStages) * Shape::kTileBytes);
  };
  ConsumerWarpgroup<D, kKbar> consumer(q0, wg_thread, smem_address(q_tiles + wg * Shape::kQBytes),
                                       mask, p.scale_log2);
  mbarrier_wait(&q_full, 0);

  // One step past the last tile: that step only issues the last tile's P V.
  // Every consumer thread waits for every tile of the block and releases
  // each, used or not, so the ring's phases stay in step.
  for (int t = cta_begin; t <= cta_end + 1; ++t) {
    const int i = t - cta_begin;
    if (t <= cta_end) mbarrier_wait(&full[i % kStages], (i / kStages) & 1);
    const bool has_s = t >= my_begin && t <= my_end;  // uniform in the warpgroup
    const bool has_pv = t - 1 >= my_begin && t - 1 <= my_end;
    if (has_s && has_pv)
      consumer.overlapped(t, k_addr(t), v_addr(t - 1), k_addr(t - 1));
    else if (has_s)  // the consumer's first tile: nothing to overlap
      consumer.first(t, k_addr(t));
    else if (has_pv)  // one step past its last tile
      consumer.last(v_addr(t - 1), k_addr(t - 1));
    // Every wgmma of this step has completed: tile t - 1 is read no more.
    if (i > 0) mbarrier_arrive(&empty[(i - 1) % kStages]);
  }

  // Epilogue: out (and kbar), lse, and one max-logit partial per consumer.
  const int lane = threadIdx.x % kWarpSize, warp = (threadIdx.x - kThreads) / kWarpSize;
  const float wg_max = warp_max(consumer.store(p, b, h));
  if (lane == 0) warp_maxima[warp] = wg_max;
  named_barrier_sync<1, kConsumerThreads>();  // the producer warpgroup has left
  const int q_block = cta_block * kConsumers + wg;
  if (wg_thread == 0 && q_block < p.n_query_blocks) {
    float m = warp_maxima[wg * 4];
    for (int w = 1; w < 4; ++w) m = fmaxf(m, warp_maxima[wg * 4 + w]);
    p.max_partials[size_t(bh) * p.n_query_blocks + q_block] = m;
  }
#else
  __trap();  // only the sm_90a binary has this kernel; the host never launches it elsewhere
#endif
}

// cuTensorMapEncodeTiled from the driver, found once through the runtime
// (no link against libcuda).
PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult status{};
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                cudaEnableDefault, &status));
    if (status != cudaDriverEntryPointSuccess || !f)
      fail("cuda attention_forward: the driver has no cuTensorMapEncodeTiled (status ", int(status),
           ")");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// qkv [B, T, 3C] as (head column < head_dim, head slot < 3 n_head, t < T,
// batch row < B): slot h is q's head h, n_head + h k's, 2 n_head + h v's. A
// box is 64 columns (one 128-byte swizzled panel) by 64 rows.
CUtensorMap qkv_tensor_map(const ForwardParams& p, int B) {
  const cuuint64_t dims[4] = {cuuint64_t(p.head_dim), cuuint64_t(3) * p.n_head, cuuint64_t(p.T),
                              cuuint64_t(B)};
  const cuuint64_t row_bytes = cuuint64_t(3) * p.C * sizeof(bf16);
  const cuuint64_t strides[3] = {cuuint64_t(p.head_dim) * sizeof(bf16), row_bytes,
                                 row_bytes * cuuint64_t(p.T)};
  const cuuint32_t box[4] = {kPanelCols, 1, kTileKeys, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  CUtensorMap map;
  const CUresult r = encode_tiled()(
      &map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, const_cast<bf16*>(p.qkv), dims, strides, box,
      element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    fail("cuda attention_forward: cuTensorMapEncodeTiled failed (CUresult ", int(r),
         ") for qkv, T ", p.T, ", C ", p.C, ", head_dim ", p.head_dim);
  return map;
}

template <int D, bool kKbar>
void launch(CudaContext& ctx, const CUtensorMap& map, const ForwardParams& p, int B) {
  using Shape = WsShape<D, WsPolicy>;
  auto kernel = attention_forward_sm90_ws_kernel<D, kKbar, WsPolicy>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(Shape::kSmemBytes)));
  const dim3 grid(ceil_div(p.T, kCtaRows), B * p.n_head);
  kernel<<<grid, kBlockThreads, Shape::kSmemBytes, ctx.stream()>>>(map, p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void launch_forward_sm90_ws(CudaContext& ctx, const ForwardParams& p, int B, bool with_kbar) {
  const CUtensorMap map = qkv_tensor_map(p, B);
  if (padded_head_dim(p.head_dim) == 64)
    with_kbar ? launch<64, true>(ctx, map, p, B) : launch<64, false>(ctx, map, p, B);
  else
    with_kbar ? launch<128, true>(ctx, map, p, B) : launch<128, false>(ctx, map, p, B);
}

}  // namespace lsgpt::cuda::attn
