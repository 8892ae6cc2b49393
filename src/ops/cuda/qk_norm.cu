// QK-norm on bf16 qkv rows: per-head RMSNorm of q and k with f32 statistics,
// in one pass over the qkv buffer (all heads of q and k, v copied when not in
// place). One warp per head vector. The backward is two kernels: the gain
// gradients as ordered column partials over fixed row parts (deterministic,
// like LayerNorm's), then the input gradient, which may overwrite dout in
// place because the partials have been read by then.
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops.h"

namespace lsgpt::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

// Vector v of row n: part = v / n_head (0 q, 1 k, 2 v), head = v % n_head.
__global__ void qk_norm_forward_kernel(bf16* out, float* rstd_out, const bf16* qkv,
                                       const bf16* q_gain, const bf16* k_gain, int N, int n_head,
                                       int D, float eps) {
  wait_for_previous_grid();
  allow_next_grid();
  const long long vec = (long long)blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (vec >= (long long)N * 3 * n_head) return;
  const int n = int(vec / (3 * n_head)), rest = int(vec % (3 * n_head));
  const int part = rest / n_head, h = rest % n_head;
  const size_t base = size_t(n) * 3 * n_head * D + size_t(part) * n_head * D + size_t(h) * D;
  if (part == 2) {
    if (out != qkv)
      for (int d = lane; d < D; d += kWarpSize) out[base + d] = qkv[base + d];
    return;
  }
  float ss = 0.0f;
  for (int d = lane; d < D; d += kWarpSize) {
    const float x = __bfloat162float(qkv[base + d]);
    ss += x * x;
  }
  const float r = rsqrtf(warp_sum(ss) / float(D) + eps);
  const bf16* gain = part == 0 ? q_gain : k_gain;
  for (int d = lane; d < D; d += kWarpSize)
    out[base + d] =
        __float2bfloat16(__bfloat162float(qkv[base + d]) * r * __bfloat162float(gain[d]));
  if (rstd_out && lane == 0) rstd_out[(size_t(n) * 2 + part) * n_head + h] = r;
}

// partials_q/k [parts, D]: sums of dout * xhat over the part's rows and all heads.
__global__ void qk_norm_gain_partials_kernel(float* partials_q, float* partials_k,
                                             const bf16* dout, const bf16* qkv,
                                             const float* rstd, int N, int n_head, int D) {
  wait_for_previous_grid();
  allow_next_grid();
  const int d = blockIdx.x * kWarpSize + threadIdx.x;
  const int part = blockIdx.y;
  const int r_end = min(N, (part + 1) * kPartRows);
  const size_t C = size_t(n_head) * D;
  float acc_q[1] = {0.0f}, acc_k[1] = {0.0f};
  if (d < D)
    for (int r = part * kPartRows + threadIdx.y; r < r_end; r += kPartRowThreads)
      for (int h = 0; h < n_head; ++h) {
        const size_t q = size_t(r) * 3 * C + size_t(h) * D + d, k = q + C;
        acc_q[0] += __bfloat162float(dout[q]) * __bfloat162float(qkv[q]) *
                    rstd[(size_t(r) * 2) * n_head + h];
        acc_k[0] += __bfloat162float(dout[k]) * __bfloat162float(qkv[k]) *
                    rstd[(size_t(r) * 2 + 1) * n_head + h];
      }
  store_column_partials(partials_q, acc_q, part, d, D);
  store_column_partials(partials_k, acc_k, part, d, D);
}

// dx = rstd * (a - xhat * mean(a * xhat)), a = dout * gain; v copied.
__global__ void qk_norm_backward_input_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv,
                                              const bf16* q_gain, const bf16* k_gain,
                                              const float* rstd, int N, int n_head, int D) {
  wait_for_previous_grid();
  allow_next_grid();
  const long long vec = (long long)blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (vec >= (long long)N * 3 * n_head) return;
  const int n = int(vec / (3 * n_head)), rest = int(vec % (3 * n_head));
  const int part = rest / n_head, h = rest % n_head;
  const size_t base = size_t(n) * 3 * n_head * D + size_t(part) * n_head * D + size_t(h) * D;
  if (part == 2) {
    if (dqkv != dout)
      for (int d = lane; d < D; d += kWarpSize) dqkv[base + d] = dout[base + d];
    return;
  }
  const bf16* gain = part == 0 ? q_gain : k_gain;
  const float r = rstd[(size_t(n) * 2 + part) * n_head + h];
  float dot = 0.0f;
  for (int d = lane; d < D; d += kWarpSize)
    dot += __bfloat162float(dout[base + d]) * __bfloat162float(gain[d]) *
           __bfloat162float(qkv[base + d]) * r;
  const float mean = warp_sum(dot) / float(D);
  for (int d = lane; d < D; d += kWarpSize) {
    const float a = __bfloat162float(dout[base + d]) * __bfloat162float(gain[d]);
    const float xhat = __bfloat162float(qkv[base + d]) * r;
    dqkv[base + d] = __float2bfloat16(r * (a - xhat * mean));
  }
}

}  // namespace

void qk_norm_forward(CudaContext& ctx, bf16* out, float* rstd, const bf16* qkv,
                     const bf16* q_gain, const bf16* k_gain, int N, int n_head, int D, float eps) {
  if (N == 0 || n_head == 0 || D == 0) return;
  const long long vectors = (long long)N * 3 * n_head;
  launch_kernel(ctx, qk_norm_forward_kernel, ceil_div(vectors, kWarpsPerBlock),
                kWarpsPerBlock * kWarpSize, 0, out, rstd, qkv, q_gain, k_gain, N, n_head, D, eps);
}

void qk_norm_backward(CudaContext& ctx, bf16* dqkv, bf16* dq_gain, bf16* dk_gain,
                      const bf16* dout, const bf16* qkv, const bf16* q_gain, const bf16* k_gain,
                      const float* rstd, int N, int n_head, int D) {
  if (N == 0 || n_head == 0 || D == 0) return;
  const PartialSums partials(ctx, ceil_div(N, kPartRows), D);  // q gain, k gain
  launch_kernel(ctx, qk_norm_gain_partials_kernel, dim3(ceil_div(D, kWarpSize), partials.parts),
                dim3(kWarpSize, kPartRowThreads), 0, partials.first, partials.second, dout, qkv,
                rstd, N, n_head, D);
  partials.accumulate(ctx, dq_gain, dk_gain);
  const long long vectors = (long long)N * 3 * n_head;
  launch_kernel(ctx, qk_norm_backward_input_kernel, ceil_div(vectors, kWarpsPerBlock),
                kWarpsPerBlock * kWarpSize, 0, dqkv, dout, qkv, q_gain, k_gain, rstd, N, n_head, D);
}

}  // namespace lsgpt::cuda
