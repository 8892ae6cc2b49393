// Residual stream adds on bf16 (f32 math, one rounding). out = a + b and
// dst += src; 8 elements per thread so aligned tensors use 16-byte vectors.
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops.h"

namespace lsgpt::cuda {
namespace {

template <bool kVector>
__global__ void residual_kernel(bf16* out, const bf16* a, const bf16* b, size_t n) {
  wait_for_previous_grid();
  allow_next_grid();
  const size_t base = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
  if (base >= n) return;
  if (kVector && base + 8 <= n) {
    Bf16x8 x = *reinterpret_cast<const Bf16x8*>(a + base);
    Bf16x8 y = *reinterpret_cast<const Bf16x8*>(b + base), z;
#pragma unroll
    for (int k = 0; k < 8; ++k)
      z.v[k] = __float2bfloat16(__bfloat162float(x.v[k]) + __bfloat162float(y.v[k]));
    *reinterpret_cast<Bf16x8*>(out + base) = z;
  } else {
    for (size_t i = base; i < base + 8 && i < n; ++i)
      out[i] = __float2bfloat16(__bfloat162float(a[i]) + __bfloat162float(b[i]));
  }
}

constexpr int kThreads = 256;

void launch(CudaContext& ctx, bf16* out, const bf16* a, const bf16* b, size_t n) {
  if (n == 0) return;
  const int blocks = ceil_div((long long)((n + 7) / 8), kThreads);
  if (aligned16(out) && aligned16(a) && aligned16(b))
    launch_kernel(ctx, residual_kernel<true>, blocks, kThreads, 0, out, a, b, n);
  else
    launch_kernel(ctx, residual_kernel<false>, blocks, kThreads, 0, out, a, b, n);
}

}  // namespace

void residual_forward(CudaContext& ctx, bf16* out, const bf16* a, const bf16* b, size_t n) {
  launch(ctx, out, a, b, n);
}

// Each element is read before it is written by the same thread, so dst may
// alias an input.
void add_inplace(CudaContext& ctx, bf16* dst, const bf16* src, size_t n) {
  launch(ctx, dst, dst, src, n);
}

}  // namespace lsgpt::cuda
