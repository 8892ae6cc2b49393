// Small device helpers shared by the kernels: warp/block reductions in a fixed
// order (deterministic), 16-byte bf16 vectors, and launch-size arithmetic.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace lsgpt::cuda {

constexpr int kWarpSize = 32;
constexpr float kLog2e = 1.4426950408889634f;  // exp(x) = exp2(x log2 e)

inline int ceil_div(long long a, long long b) { return int((a + b - 1) / b); }

// The next work item of a persistent kernel whose n_streams streams (blocks,
// or warpgroups of them) start at items 0 .. n_streams - 1 and then take
// the next item nobody has taken yet: n_streams + (items taken so far).
// Each stream asks until it is handed an item >= n_items, so a launch asks
// exactly n_items times (n_items - n_streams items after the first ones,
// and one past the end for each stream; n_items times as well when there
// are more streams than items, those past the end never asking). The one
// handed n_items - 1 + n_streams asks last and sets `counter` back to zero
// for the next launch (CudaContext::item_counter). The reset rests on two
// rules: every stream keeps asking until it is handed an item past the
// end (a stream that stopped early would leave the counter short of zero,
// and the next launch would skip items), and the next kernel touches the
// counter only after griddepcontrol.wait (launch.cuh), which returns once
// this grid has completed and its writes are visible.
__device__ __forceinline__ int take_next_item(int* counter, int n_items, int n_streams) {
  const int taken = atomicAdd(counter, 1);
  if (taken == n_items - 1) atomicExch(counter, 0);
  return n_streams + taken;
}

// take_next_item for streams that take every item from the counter, their
// first ones too, so that an item belongs only to a stream that is running:
// a kernel whose items wait for each other (ws_one_pass_ordered) must not
// hand one to a block that is not yet resident. Each stream asks until it
// is handed an item >= n_items, n_items + n_streams asks in all; the last
// sets `counter` back to zero (take_next_item's two rules hold here too).
__device__ __forceinline__ int take_item(int* counter, int n_items, int n_streams) {
  const int taken = atomicAdd(counter, 1);
  if (taken == n_items + n_streams - 1) atomicExch(counter, 0);
  return taken;
}

// 2^x on the special-function unit alone, results below 2^-126 flushed to
// zero (exp2(-inf) = 0, NaN stays NaN). exp2f without fast math wraps the same
// MUFU.EX2 in a range test and two multiplies to keep subnormal results:
// three more instructions for every score of the attention kernels and
// every logit of the classifier. Probabilities that small add nothing
// measurable: a softmax row's sum is at least 1 (its maximum's term), and a
// key whose every probability is below 2^-126 gets dK, dV of 0 instead of
// about 1e-38.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

// Sum over the whole block, returned to every thread. `shared` holds 32 floats.
// Every thread must call it (it synchronizes the block twice).
__device__ __forceinline__ float block_sum(float x, float* shared) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int n_warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  x = warp_sum(x);
  __syncthreads();
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  float total = lane < n_warps ? shared[lane] : 0.0f;
  return warp_sum(total);
}

__device__ __forceinline__ float block_max(float x, float* shared) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int n_warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  x = warp_max(x);
  __syncthreads();
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  float total = lane < n_warps ? shared[lane] : -INFINITY;
  return warp_max(total);
}

// Eight bf16 in one 16-byte load/store.
struct alignas(16) Bf16x8 {
  __nv_bfloat16 v[8];
};

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// kVec consecutive bf16 as floats: one 16-byte load for kVec = 8 (p must be
// 16-byte aligned), element loads otherwise.
template <int kVec>
__device__ __forceinline__ void load_floats(float (&out)[kVec], const __nv_bfloat16* p) {
  if constexpr (kVec == 8) {
    const Bf16x8 v = *reinterpret_cast<const Bf16x8*>(p);
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j] = __bfloat162float(v.v[j]);
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j) out[j] = __bfloat162float(p[j]);
  }
}

// Ordered column sums over fixed row parts (bias and LayerNorm parameter
// gradients): a block of kWarpSize x kPartRowThreads threads covers one part
// of kPartRows rows; thread (x, y) owns kVec adjacent columns from c0 and the
// part's rows y, y + kPartRowThreads, ...
constexpr int kPartRows = 256;
constexpr int kPartRowThreads = 8;

// Adds the block's per-thread sums of each column over threadIdx.y in order
// and writes partials[part, c0 .. c0 + kVec - 1]. Every thread of the block
// must call it; a kernel may call it more than once.
template <int kVec>
__device__ __forceinline__ void store_column_partials(float* partials, const float (&acc)[kVec],
                                                      int part, int c0, int cols) {
  __shared__ float sums[kPartRowThreads][kVec][kWarpSize];
  __syncthreads();  // a previous call's readers are done with sums
#pragma unroll
  for (int j = 0; j < kVec; ++j) sums[threadIdx.y][j][threadIdx.x] = acc[j];
  __syncthreads();
  if (threadIdx.y == 0 && c0 < cols)
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      float total = 0.0f;
#pragma unroll
      for (int k = 0; k < kPartRowThreads; ++k) total += sums[k][j][threadIdx.x];
      partials[size_t(part) * cols + c0 + j] = total;
    }
}

}  // namespace lsgpt::cuda
