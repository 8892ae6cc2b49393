// Fused softmax + cross-entropy over the padded vocabulary, one block per row,
// in place: the bf16 logits are read twice (max/sum, then the gradient) and
// overwritten by dloss * (softmax - onehot), so no f32 copy of the [N, Vp]
// logits ever exists. Padded columns [V, Vp) get gradient 0.
// z-loss (PaLM) is fused: with z_coef > 0 the softmax term of the gradient is
// scaled by 1 + 2 z_coef log Z, and lse (when given) receives log Z per row.
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/ops.h"

namespace lsgpt::cuda {
namespace {

constexpr int kThreads = 512;

struct MaxSum {
  float max, sum;  // sum of exp(x - max)
};

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, 0.0f};
  return {m, a.sum * __expf(a.max - m) + b.sum * __expf(b.max - m)};
}

__device__ __forceinline__ MaxSum add_value(MaxSum a, float x) {
  if (x <= a.max) return {a.max, a.sum + __expf(x - a.max)};
  return {x, a.sum * __expf(a.max - x) + 1.0f};
}

template <bool kVector>
__global__ void softmax_cross_entropy_kernel(float* losses, bf16* logits, const int32_t* targets,
                                             int V, int Vp, float dloss, bool compute_grad,
                                             float z_coef, float* lse_out) {
  __shared__ MaxSum warp_parts[kThreads / kWarpSize];
  __shared__ MaxSum row_total;
  const int row = blockIdx.x;
  bf16* x = logits + size_t(row) * Vp;
  const int target = targets[row];

  MaxSum acc{-INFINITY, 0.0f};
  if (kVector) {
    for (int c = threadIdx.x * 8; c < V; c += kThreads * 8) {
      const Bf16x8 v = *reinterpret_cast<const Bf16x8*>(x + c);
#pragma unroll
      for (int k = 0; k < 8; ++k)
        if (c + k < V) acc = add_value(acc, __bfloat162float(v.v[k]));
    }
  } else {
    for (int c = threadIdx.x; c < V; c += kThreads) acc = add_value(acc, __bfloat162float(x[c]));
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    MaxSum other{__shfl_xor_sync(0xffffffffu, acc.max, offset),
                 __shfl_xor_sync(0xffffffffu, acc.sum, offset)};
    acc = combine(acc, other);
  }
  if (threadIdx.x % kWarpSize == 0) warp_parts[threadIdx.x / kWarpSize] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    MaxSum total = warp_parts[0];
    for (int w = 1; w < kThreads / kWarpSize; ++w) total = combine(total, warp_parts[w]);
    row_total = total;
    const float lse = total.max + logf(total.sum);
    float loss = 0.0f;
    if (target >= 0) loss = target < V ? lse - __bfloat162float(x[target]) : NAN;
    losses[row] = loss;
    if (lse_out) lse_out[row] = target >= 0 ? lse : 0.0f;
  }
  __syncthreads();
  if (!compute_grad) return;
  const float max = row_total.max;
  const float log_z = max + logf(row_total.sum);
  const float inv_sum = (1.0f + 2.0f * z_coef * log_z) / row_total.sum;
  const float scale = target >= 0 ? dloss : 0.0f;
  if (kVector) {
    for (int c = threadIdx.x * 8; c < Vp; c += kThreads * 8) {
      Bf16x8 v = *reinterpret_cast<const Bf16x8*>(x + c);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const int col = c + k;
        float g = 0.0f;
        if (col < V) g = scale * (__expf(__bfloat162float(v.v[k]) - max) * inv_sum - (col == target));
        v.v[k] = __float2bfloat16(g);
      }
      *reinterpret_cast<Bf16x8*>(x + c) = v;
    }
  } else {
    for (int c = threadIdx.x; c < Vp; c += kThreads) {
      float g = 0.0f;
      if (c < V) g = scale * (__expf(__bfloat162float(x[c]) - max) * inv_sum - (c == target));
      x[c] = __float2bfloat16(g);
    }
  }
}

}  // namespace

void softmax_cross_entropy(CudaContext& ctx, float* losses, bf16* logits, const int32_t* targets,
                           int N, int V, int Vp, float dloss, bool compute_grad, float z_coef,
                           float* lse) {
  if (N == 0) return;
  LSGPT_CHECK(V > 0 && V <= Vp, "classifier: need 0 < V <= Vp");
  if (Vp % 8 == 0 && aligned16(logits))
    softmax_cross_entropy_kernel<true><<<N, kThreads, 0, ctx.stream()>>>(
        losses, logits, targets, V, Vp, dloss, compute_grad, z_coef, lse);
  else
    softmax_cross_entropy_kernel<false><<<N, kThreads, 0, ctx.stream()>>>(
        losses, logits, targets, V, Vp, dloss, compute_grad, z_coef, lse);
  CUDA_CHECK_LAUNCH();
}

}  // namespace lsgpt::cuda
