// Fused softmax + cross-entropy over the padded vocabulary, one block per row,
// in place: the bf16 logits are read twice (max/sum, then the gradient) and
// overwritten by dloss * (softmax - onehot), so no f32 copy of the [N, Vp]
// logits ever exists. Padded columns [V, Vp) get gradient 0.
// z-loss (PaLM) is fused: with z_coef > 0 the softmax term of the gradient is
// scaled by 1 + 2 z_coef log Z, and lse (when given) receives log Z per row.
//
// The kernel is bound by instruction issue as much as by memory (the row of
// 50,304 entries is 1.6 G elements a GPT-2 small step), so the per-element
// work is kept small: the running max moves once per 8 entries, not once
// per entry; exponentials are one FMA and one ex2 in base 2 with the max
// pre-scaled; the target's one-hot is one select.
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops.h"

namespace lsgpt::cuda {
namespace {

constexpr int kThreads = 512;

struct MaxSum {
  float max, sum;  // sum of exp(x - max)
};

// Two maxima of -inf (threads that saw only NaN, or no entries) keep their
// sums' NaN: each sum is then 0 or NaN.
__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, a.sum + b.sum};
  return {m, a.sum * __expf(a.max - m) + b.sum * __expf(b.max - m)};
}

// Adds kN values to the running max/sum: the max moves once for all of
// them. A NaN among them is skipped by fmaxf but makes the sum NaN, so the
// loss is NaN as it should be.
template <int kN>
__device__ __forceinline__ void add_values(MaxSum& acc, const float (&x)[kN]) {
  float m = x[0];
#pragma unroll
  for (int k = 1; k < kN; ++k) m = fmaxf(m, x[k]);
  if (m > acc.max) {
    acc.sum *= exp2_ftz((acc.max - m) * kLog2e);
    acc.max = m;
  }
  const float shift = acc.max * kLog2e;
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < kN; ++k) s += exp2_ftz(fmaf(x[k], kLog2e, -shift));
  acc.sum += s;
}

// This thread's running max/sum over its entries of x[0, V): 8 adjacent
// entries per step with kVector (x 16-byte aligned), else one.
template <bool kVector>
__device__ __forceinline__ MaxSum thread_max_sum(const bf16* x, int V) {
  MaxSum acc{-INFINITY, 0.0f};
  if (kVector) {
    for (int c = threadIdx.x * 8; c < V; c += kThreads * 8) {
      const Bf16x8 v = *reinterpret_cast<const Bf16x8*>(x + c);
      float f[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) f[k] = c + k < V ? __bfloat162float(v.v[k]) : -INFINITY;
      add_values(acc, f);
    }
  } else {
    for (int c = threadIdx.x; c < V; c += kThreads) {
      const float f[1] = {__bfloat162float(x[c])};
      add_values(acc, f);
    }
  }
  return acc;
}

// The whole block's max/sum, combined in a fixed order (lanes by xor
// shuffles, then warps in index order), returned to every thread.
__device__ __forceinline__ MaxSum block_max_sum(MaxSum acc) {
  __shared__ MaxSum warp_parts[kThreads / kWarpSize];
  __shared__ MaxSum row_total;
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
  }
  __syncthreads();
  return row_total;
}

// x[c] = dloss * (softmax(x)[c] * (1 + 2 z_coef log Z) - [c == target]) for
// c < V, 0 for the padding.
template <bool kVector>
__device__ __forceinline__ void store_row_gradient(bf16* x, MaxSum total, int target, int V,
                                                   int Vp, float dloss, float z_coef) {
  const float log_z = total.max + logf(total.sum);
  const float scale = target >= 0 ? dloss : 0.0f;
  const float coef = scale * (1.0f + 2.0f * z_coef * log_z) / total.sum;
  const float shift = total.max * kLog2e;
  auto grad = [&](float logit, int col) {
    const float g = coef * exp2_ftz(fmaf(logit, kLog2e, -shift));
    return col < V ? g - (col == target ? scale : 0.0f) : 0.0f;
  };
  if (kVector) {
    for (int c = threadIdx.x * 8; c < Vp; c += kThreads * 8) {
      Bf16x8 v = *reinterpret_cast<const Bf16x8*>(x + c);
#pragma unroll
      for (int k = 0; k < 8; ++k) v.v[k] = __float2bfloat16(grad(__bfloat162float(v.v[k]), c + k));
      *reinterpret_cast<Bf16x8*>(x + c) = v;
    }
  } else {
    for (int c = threadIdx.x; c < Vp; c += kThreads)
      x[c] = __float2bfloat16(grad(__bfloat162float(x[c]), c));
  }
}

template <bool kVector>
__global__ void __launch_bounds__(kThreads)
    softmax_cross_entropy_kernel(float* losses, bf16* logits, const int32_t* targets, int V,
                                 int Vp, float dloss, bool compute_grad, float z_coef,
                                 float* lse_out) {
  wait_for_previous_grid();
  allow_next_grid();
  bf16* x = logits + size_t(blockIdx.x) * Vp;
  const int target = targets[blockIdx.x];
  // Read before block_max_sum's barriers: after them other threads
  // overwrite the row with the gradient.
  const float target_logit =
      threadIdx.x == 0 && target >= 0 && target < V ? __bfloat162float(x[target]) : 0.0f;
  const MaxSum total = block_max_sum(thread_max_sum<kVector>(x, V));
  if (threadIdx.x == 0) {
    const float lse = total.max + logf(total.sum);
    float loss = 0.0f;
    // A target past V is invalid input the host should have refused: NaN.
    if (target >= 0) loss = target < V ? lse - target_logit : NAN;
    losses[blockIdx.x] = loss;
    if (lse_out) lse_out[blockIdx.x] = target >= 0 ? lse : 0.0f;
  }
  if (compute_grad) store_row_gradient<kVector>(x, total, target, V, Vp, dloss, z_coef);
}

}  // namespace

void softmax_cross_entropy(CudaContext& ctx, float* losses, bf16* logits, const int32_t* targets,
                           int N, int V, int Vp, float dloss, bool compute_grad, float z_coef,
                           float* lse) {
  if (N == 0) return;
  LSGPT_CHECK(V > 0 && V <= Vp, "classifier: need 0 < V <= Vp");
  if (Vp % 8 == 0 && aligned16(logits))
    launch_kernel(ctx, softmax_cross_entropy_kernel<true>, N, kThreads, 0, losses, logits, targets,
                  V, Vp, dloss, compute_grad, z_coef, lse);
  else
    launch_kernel(ctx, softmax_cross_entropy_kernel<false>, N, kThreads, 0, losses, logits, targets,
                  V, Vp, dloss, compute_grad, z_coef, lse);
}

}  // namespace lsgpt::cuda
