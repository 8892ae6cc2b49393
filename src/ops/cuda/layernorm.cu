// LayerNorm (eps 1e-5) on bf16 rows with f32 statistics. One warp per row.
// The backward adds into dinp (the residual stream) and computes the weight
// and bias gradients as ordered column sums over fixed row blocks rather than
// with atomics, so gradient accumulation is reproducible.
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/ops.h"

namespace lsgpt::cuda {
namespace {

constexpr float kEps = 1e-5f;
constexpr int kRowsPerBlock = 8;  // one warp each

__global__ void layernorm_forward_kernel(bf16* out, float* mean_out, float* rstd_out,
                                         const bf16* inp, const bf16* weight, const bf16* bias,
                                         int N, int C) {
  const int lane = threadIdx.x % kWarpSize;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (row >= N) return;
  const bf16* x = inp + size_t(row) * C;
  float sum = 0.0f;
  for (int c = lane; c < C; c += kWarpSize) sum += __bfloat162float(x[c]);
  const float mean = warp_sum(sum) / C;
  float sq = 0.0f;
  for (int c = lane; c < C; c += kWarpSize) {
    const float d = __bfloat162float(x[c]) - mean;
    sq += d * d;
  }
  const float rstd = rsqrtf(warp_sum(sq) / C + kEps);
  bf16* y = out + size_t(row) * C;
  for (int c = lane; c < C; c += kWarpSize) {
    const float n = (__bfloat162float(x[c]) - mean) * rstd;
    y[c] = __float2bfloat16(n * __bfloat162float(weight[c]) + __bfloat162float(bias[c]));
  }
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

__global__ void layernorm_backward_input_kernel(bf16* dinp, const bf16* dout, const bf16* inp,
                                                const bf16* weight, const float* mean_in,
                                                const float* rstd_in, int N, int C) {
  const int lane = threadIdx.x % kWarpSize;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (row >= N) return;
  const bf16* x = inp + size_t(row) * C;
  const bf16* g = dout + size_t(row) * C;
  const float mean = mean_in[row], rstd = rstd_in[row];
  float sum_dnorm = 0.0f, sum_dnorm_norm = 0.0f;
  for (int c = lane; c < C; c += kWarpSize) {
    const float n = (__bfloat162float(x[c]) - mean) * rstd;
    const float dn = __bfloat162float(g[c]) * __bfloat162float(weight[c]);
    sum_dnorm += dn;
    sum_dnorm_norm += dn * n;
  }
  const float mean_dnorm = warp_sum(sum_dnorm) / C;
  const float mean_dnorm_norm = warp_sum(sum_dnorm_norm) / C;
  bf16* dx = dinp + size_t(row) * C;
  for (int c = lane; c < C; c += kWarpSize) {
    const float n = (__bfloat162float(x[c]) - mean) * rstd;
    const float dn = __bfloat162float(g[c]) * __bfloat162float(weight[c]);
    const float d = rstd * (dn - mean_dnorm - n * mean_dnorm_norm);
    dx[c] = __float2bfloat16(__bfloat162float(dx[c]) + d);
  }
}

constexpr int kColsPerBlock = 32;
constexpr int kRowThreads = 8;
constexpr int kRowsPerPart = 256;

// Per row block: sum of dout * norm (weight grad) and of dout (bias grad).
__global__ void layernorm_param_partials_kernel(float* dweight_partials, float* dbias_partials,
                                                const bf16* dout, const bf16* inp,
                                                const float* mean_in, const float* rstd_in,
                                                int N, int C) {
  __shared__ float sums_w[kRowThreads][kColsPerBlock];
  __shared__ float sums_b[kRowThreads][kColsPerBlock];
  const int c = blockIdx.x * kColsPerBlock + threadIdx.x;
  const int part = blockIdx.y;
  const int r_end = min(N, (part + 1) * kRowsPerPart);
  float acc_w = 0.0f, acc_b = 0.0f;
  if (c < C)
    for (int r = part * kRowsPerPart + threadIdx.y; r < r_end; r += kRowThreads) {
      const size_t i = size_t(r) * C + c;
      const float g = __bfloat162float(dout[i]);
      acc_w += g * (__bfloat162float(inp[i]) - mean_in[r]) * rstd_in[r];
      acc_b += g;
    }
  sums_w[threadIdx.y][threadIdx.x] = acc_w;
  sums_b[threadIdx.y][threadIdx.x] = acc_b;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float tw = 0.0f, tb = 0.0f;
#pragma unroll
    for (int k = 0; k < kRowThreads; ++k) tw += sums_w[k][threadIdx.x], tb += sums_b[k][threadIdx.x];
    dweight_partials[size_t(part) * C + c] = tw;
    dbias_partials[size_t(part) * C + c] = tb;
  }
}

}  // namespace

void layernorm_forward(CudaContext& ctx, bf16* out, float* mean, float* rstd, const bf16* inp,
                       const bf16* weight, const bf16* bias, int N, int C) {
  if (N == 0 || C == 0) return;
  layernorm_forward_kernel<<<ceil_div(N, kRowsPerBlock), kRowsPerBlock * kWarpSize, 0,
                             ctx.stream()>>>(out, mean, rstd, inp, weight, bias, N, C);
  CUDA_CHECK_LAUNCH();
}

void layernorm_backward(CudaContext& ctx, bf16* dinp, bf16* dweight, bf16* dbias,
                        const bf16* dout, const bf16* inp, const bf16* weight, const float* mean,
                        const float* rstd, int N, int C) {
  if (N == 0 || C == 0) return;
  layernorm_backward_input_kernel<<<ceil_div(N, kRowsPerBlock), kRowsPerBlock * kWarpSize, 0,
                                    ctx.stream()>>>(dinp, dout, inp, weight, mean, rstd, N, C);
  CUDA_CHECK_LAUNCH();
  const int parts = ceil_div(N, kRowsPerPart);
  ScratchCarver carve(ctx.scratch(2 * ScratchCarver::round(sizeof(float) * size_t(parts) * C)));
  float* dweight_partials = carve.take<float>(size_t(parts) * C);
  float* dbias_partials = carve.take<float>(size_t(parts) * C);
  const dim3 grid(ceil_div(C, kColsPerBlock), parts);
  layernorm_param_partials_kernel<<<grid, dim3(kColsPerBlock, kRowThreads), 0, ctx.stream()>>>(
      dweight_partials, dbias_partials, dout, inp, mean, rstd, N, C);
  CUDA_CHECK_LAUNCH();
  reduce_partials_accumulate(ctx, dweight, dweight_partials, parts, C);
  reduce_partials_accumulate(ctx, dbias, dbias_partials, parts, C);
}

}  // namespace lsgpt::cuda
