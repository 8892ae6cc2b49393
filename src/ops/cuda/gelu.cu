// GELU, tanh form (GPT-2), forward and backward on bf16 with f32 math. Each
// thread handles 8 elements so aligned tensors move in 16-byte vectors; the
// scalar path covers odd sizes and unaligned views.
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops.h"

namespace lsgpt::cuda {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

__device__ __forceinline__ float gelu(float x) {
  const float inner = kSqrt2OverPi * (x + kGeluCubic * x * x * x);
  return 0.5f * x * (1.0f + tanhf(inner));
}

__device__ __forceinline__ float gelu_grad(float x) {
  const float inner = kSqrt2OverPi * (x + kGeluCubic * x * x * x);
  const float t = tanhf(inner);
  const float sech2 = 1.0f - t * t;
  return 0.5f * (1.0f + t) + 0.5f * x * sech2 * kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * x * x);
}

template <bool kVector>
__global__ void gelu_forward_kernel(bf16* out, const bf16* inp, size_t n) {
  wait_for_previous_grid();
  allow_next_grid();
  const size_t base = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
  if (base >= n) return;
  if (kVector && base + 8 <= n) {
    Bf16x8 x = *reinterpret_cast<const Bf16x8*>(inp + base), y;
#pragma unroll
    for (int k = 0; k < 8; ++k) y.v[k] = __float2bfloat16(gelu(__bfloat162float(x.v[k])));
    *reinterpret_cast<Bf16x8*>(out + base) = y;
  } else {
    for (size_t i = base; i < base + 8 && i < n; ++i)
      out[i] = __float2bfloat16(gelu(__bfloat162float(inp[i])));
  }
}

template <bool kVector>
__global__ void gelu_backward_kernel(bf16* dinp, const bf16* inp, const bf16* dout, size_t n) {
  wait_for_previous_grid();
  allow_next_grid();
  const size_t base = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
  if (base >= n) return;
  if (kVector && base + 8 <= n) {
    Bf16x8 x = *reinterpret_cast<const Bf16x8*>(inp + base);
    Bf16x8 g = *reinterpret_cast<const Bf16x8*>(dout + base), y;
#pragma unroll
    for (int k = 0; k < 8; ++k)
      y.v[k] = __float2bfloat16(__bfloat162float(g.v[k]) * gelu_grad(__bfloat162float(x.v[k])));
    *reinterpret_cast<Bf16x8*>(dinp + base) = y;
  } else {
    for (size_t i = base; i < base + 8 && i < n; ++i)
      dinp[i] = __float2bfloat16(__bfloat162float(dout[i]) * gelu_grad(__bfloat162float(inp[i])));
  }
}

constexpr int kThreads = 256;

}  // namespace

void gelu_forward(CudaContext& ctx, bf16* out, const bf16* inp, size_t n) {
  if (n == 0) return;
  const int blocks = ceil_div((long long)((n + 7) / 8), kThreads);
  if (aligned16(out) && aligned16(inp))
    launch_kernel(ctx, gelu_forward_kernel<true>, blocks, kThreads, 0, out, inp, n);
  else
    launch_kernel(ctx, gelu_forward_kernel<false>, blocks, kThreads, 0, out, inp, n);
}

void gelu_backward(CudaContext& ctx, bf16* dinp, const bf16* inp, const bf16* dout, size_t n) {
  if (n == 0) return;
  const int blocks = ceil_div((long long)((n + 7) / 8), kThreads);
  if (aligned16(dinp) && aligned16(inp) && aligned16(dout))
    launch_kernel(ctx, gelu_backward_kernel<true>, blocks, kThreads, 0, dinp, inp, dout, n);
  else
    launch_kernel(ctx, gelu_backward_kernel<false>, blocks, kThreads, 0, dinp, inp, dout, n);
}

}  // namespace lsgpt::cuda
