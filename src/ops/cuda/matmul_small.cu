// The matrix product for a handful of rows (a decode step: one row per
// sequence), where cuBLASLt's tiles are mostly padding and the product is
// bound by reading the weights once. One output feature per warp (or per
// kSplit warps); its lanes stride over the inner dimension in 16-byte pieces, so
// the weights stream through once at full width, and every input row is
// read from L1/L2 (they are a few KiB). Bias and the GELU epilogue are
// fused, as cuBLASLt's epilogues do for the large products.
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops.h"

namespace lsgpt::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

__device__ __forceinline__ float gelu(float x) {
  return 0.5f * x * (1.0f + tanhf(kSqrt2OverPi * (x + kGeluCubic * x * x * x)));
}

// kSplit warps share one output feature, each summing every kSplit-th run of
// 32 pieces of the inner dimension; their partial sums are added in warp
// order (deterministic). Splitting keeps enough loads in flight when there
// are few output features (768 of them fill a fifth of an H200 otherwise).
template <int kRows, int kSplit>
__global__ void __launch_bounds__(kThreads)
    matmul_small_kernel(bf16* out, bf16* pre_gelu, const bf16* inp, const bf16* weight,
                        const bf16* bias, int C, int OC) {
  wait_for_previous_grid();
  allow_next_grid();
  __shared__ float partial[kWarps][kRows];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int oc = blockIdx.x * (kWarps / kSplit) + warp / kSplit;
  const int part = warp % kSplit;
  const int row = min(oc, OC - 1);  // a clamped duplicate, never stored
  float acc[kRows] = {};
  const int chunks = C / 8;
  const bf16* w_row = weight + size_t(row) * C;
#pragma unroll 4
  for (int k = part * kWarpSize + lane; k < chunks; k += kSplit * kWarpSize) {
    float w[8];
    load_floats<8>(w, w_row + size_t(k) * 8);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float x[8];
      load_floats<8>(x, inp + size_t(r) * C + size_t(k) * 8);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[r] += w[e] * x[e];
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = warp_sum(acc[r]);
  if (kSplit > 1) {
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < kRows; ++r) partial[warp][r] = acc[r];
    __syncthreads();
    if (part != 0) return;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      acc[r] = partial[warp][r];
      for (int q = 1; q < kSplit; ++q) acc[r] += partial[warp + q][r];
    }
  }
  if (lane != 0 || oc >= OC) return;
  const float b = bias ? __bfloat162float(bias[oc]) : 0.f;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float y = acc[r] + b;
    const size_t i = size_t(r) * OC + oc;
    if (pre_gelu) {
      pre_gelu[i] = __float2bfloat16(y);
      out[i] = __float2bfloat16(gelu(y));
    } else {
      out[i] = __float2bfloat16(y);
    }
  }
}

template <int kRows>
void launch(CudaContext& ctx, bf16* out, bf16* pre_gelu, const bf16* inp, const bf16* weight,
            const bf16* bias, int C, int OC) {
  // Fewer features than about 16 warps per multiprocessor: split each over 4 warps.
  if (OC < 16 * ctx.sm_count()) {
    launch_kernel(ctx, matmul_small_kernel<kRows, 4>, ceil_div(OC, kWarps / 4), kThreads, 0, out,
                  pre_gelu, inp, weight, bias, C, OC);
  } else {
    launch_kernel(ctx, matmul_small_kernel<kRows, 1>, ceil_div(OC, kWarps), kThreads, 0, out,
                  pre_gelu, inp, weight, bias, C, OC);
  }
}

}  // namespace

bool matmul_small_forward(CudaContext& ctx, bf16* out, bf16* pre_gelu, const bf16* inp,
                          const bf16* weight, const bf16* bias, int N, int C, int OC) {
  if (N < 1 || N > kMatmulSmallMaxRows || C % 8 != 0 || !aligned16(inp) || !aligned16(weight))
    return false;
  switch (N) {
    case 1: launch<1>(ctx, out, pre_gelu, inp, weight, bias, C, OC); break;
    case 2: launch<2>(ctx, out, pre_gelu, inp, weight, bias, C, OC); break;
    case 3: launch<3>(ctx, out, pre_gelu, inp, weight, bias, C, OC); break;
    case 4: launch<4>(ctx, out, pre_gelu, inp, weight, bias, C, OC); break;
    case 5: launch<5>(ctx, out, pre_gelu, inp, weight, bias, C, OC); break;
    case 6: launch<6>(ctx, out, pre_gelu, inp, weight, bias, C, OC); break;
    case 7: launch<7>(ctx, out, pre_gelu, inp, weight, bias, C, OC); break;
    default: launch<8>(ctx, out, pre_gelu, inp, weight, bias, C, OC);
  }
  return true;
}

}  // namespace lsgpt::cuda
