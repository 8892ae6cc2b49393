// LayerNorm (eps 1e-5) on bf16 rows with f32 statistics. One warp per row.
// Where rows split into 16-byte pieces (C % 8 == 0, C <= 2048, aligned) a lane
// keeps its pieces of the row in registers, so each row is read from memory
// once with full-width loads; the scalar kernels are the fallback for other
// shapes. The backward adds into dinp (the residual stream) and computes the
// weight and bias gradients (and, when asked, the column sums of dinp: the
// bias gradient of the projection below) as ordered column sums over fixed
// row blocks rather than with atomics, so gradient accumulation is
// reproducible.
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops.h"

#include <array>
#include <initializer_list>
#include <utility>

namespace lsgpt::cuda {
namespace {

constexpr float kEps = 1e-5f;
constexpr int kRowsPerBlock = 8;  // one warp each

__global__ void layernorm_forward_kernel(bf16* out, float* mean_out, float* rstd_out,
                                         const bf16* inp, const bf16* weight, const bf16* bias,
                                         int N, int C) {
  wait_for_previous_grid();
  allow_next_grid();
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

__global__ void layernorm_backward_input_kernel(bf16* __restrict__ dinp,
                                                const bf16* __restrict__ dout,
                                                const bf16* __restrict__ inp,
                                                const bf16* __restrict__ weight,
                                                const float* mean_in, const float* rstd_in, int N,
                                                int C) {
  wait_for_previous_grid();
  allow_next_grid();
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

// Vectorized row kernels: lane `lane` holds 16-byte pieces lane, lane + 32, ...
// (kPieces of them at most), so every warp access is 512 contiguous bytes.
constexpr int kPieceElems = 8;
constexpr int kMaxPiecesPerLane = 8;  // C <= 8 * 8 * 32 = 2048

__device__ __forceinline__ float f(bf16 x) { return __bfloat162float(x); }

// With delta non-null (add_layernorm_forward), the row first becomes
// inp + delta, rounded to bf16 as the residual add rounds it, and is written
// back to inp (which is then not const: the residual stream, in place).
template <int kPieces>
__global__ void layernorm_forward_vec_kernel(bf16* __restrict__ out, float* mean_out,
                                             float* rstd_out, const bf16* __restrict__ inp,
                                             const bf16* __restrict__ weight,
                                             const bf16* __restrict__ bias, int N, int C,
                                             const bf16* __restrict__ delta) {
  wait_for_previous_grid();
  allow_next_grid();
  const int lane = threadIdx.x % kWarpSize;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (row >= N) return;
  const int pieces = C / kPieceElems;
  const Bf16x8* x = reinterpret_cast<const Bf16x8*>(inp + size_t(row) * C);
  Bf16x8 xv[kPieces];
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < kPieces; ++k) {
    const int p = k * kWarpSize + lane;
    if (p < pieces) {
      xv[k] = x[p];
      if (delta) {
        const Bf16x8 dv = reinterpret_cast<const Bf16x8*>(delta + size_t(row) * C)[p];
#pragma unroll
        for (int j = 0; j < kPieceElems; ++j)
          xv[k].v[j] = __float2bfloat16(f(xv[k].v[j]) + f(dv.v[j]));
        const_cast<Bf16x8*>(x)[p] = xv[k];
      }
#pragma unroll
      for (int j = 0; j < kPieceElems; ++j) sum += f(xv[k].v[j]);
    }
  }
  const float mean = warp_sum(sum) / C;
  float sq = 0.0f;
#pragma unroll
  for (int k = 0; k < kPieces; ++k)
    if (k * kWarpSize + lane < pieces)
#pragma unroll
      for (int j = 0; j < kPieceElems; ++j) {
        const float d = f(xv[k].v[j]) - mean;
        sq += d * d;
      }
  const float rstd = rsqrtf(warp_sum(sq) / C + kEps);
  Bf16x8* y = reinterpret_cast<Bf16x8*>(out + size_t(row) * C);
#pragma unroll
  for (int k = 0; k < kPieces; ++k) {
    const int p = k * kWarpSize + lane;
    if (p < pieces) {
      const Bf16x8 w = reinterpret_cast<const Bf16x8*>(weight)[p];
      const Bf16x8 b = reinterpret_cast<const Bf16x8*>(bias)[p];
      Bf16x8 v;
#pragma unroll
      for (int j = 0; j < kPieceElems; ++j)
        v.v[j] = __float2bfloat16((f(xv[k].v[j]) - mean) * rstd * f(w.v[j]) + f(b.v[j]));
      y[p] = v;
    }
  }
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// The backward. Without kParams a block takes kRowsPerBlock rows, one a
// warp, and the parameter gradients come from the column-sum kernel below,
// which reads dout and inp again. With kParams (up to kMaxFusedPieces a
// lane) a block of kFusedWarps walks one part of kFusedPartRows rows (warp
// w takes rows w, w + kFusedWarps, ...) and also sums the part's weight and
// bias gradients: a lane holds the same columns of every row, so it adds
// them into its warp's row of shared-memory sums, and the block adds the
// warps' rows in order at the end (reproducible, no atomics). Shared memory
// rather than registers keeps three or four blocks on a multiprocessor,
// which a latency-bound row walk needs; dinp's old value is loaded with the
// row so one memory latency, not two, lies on each row's path. With
// kDinpSums (kParams only) a third set of sums takes the column sums of the
// dinp values as stored (old + new, rounded to bf16): the values a separate
// column-sum pass over dinp would read, one more shared-memory add each.
constexpr int kFusedWarps = 4;
constexpr int kFusedPartRows = 32;  // 512 parts at 16k rows
// C <= 1024: 32 KiB of sums a block, 48 KiB (the static limit) with dinp's.
constexpr int kMaxFusedPieces = 4;

template <int kPieces, bool kParams, bool kDinpSums>
__global__ void __launch_bounds__((kParams ? kFusedWarps : kRowsPerBlock) * kWarpSize)
    layernorm_backward_vec_kernel(bf16* __restrict__ dinp, float* __restrict__ dweight_partials,
                                  float* __restrict__ dbias_partials,
                                  float* __restrict__ dinp_partials,
                                  const bf16* __restrict__ dout, const bf16* __restrict__ inp,
                                  const bf16* __restrict__ weight, const float* mean_in,
                                  const float* rstd_in, int N, int C) {
  wait_for_previous_grid();
  allow_next_grid();
  static_assert(kParams || !kDinpSums, "dinp's sums ride on the fused parameter sums");
  constexpr int kWarps = kParams ? kFusedWarps : kRowsPerBlock;
  constexpr int kRows = kParams ? kFusedPartRows : kRowsPerBlock;
  // sums[warp][j][p]: column 8 p + j, so a warp's lanes touch consecutive words (no bank conflicts).
  constexpr int kSumWarps = kParams ? kWarps : 1, kSumPieces = kParams ? kPieces * kWarpSize : 1;
  constexpr int kXWarps = kDinpSums ? kSumWarps : 1, kXPieces = kDinpSums ? kSumPieces : 1;
  __shared__ float sums_w[kSumWarps][kPieceElems][kSumPieces];
  __shared__ float sums_b[kSumWarps][kPieceElems][kSumPieces];
  __shared__ float sums_x[kXWarps][kPieceElems][kXPieces];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int pieces = C / kPieceElems;
  const Bf16x8* w = reinterpret_cast<const Bf16x8*>(weight);
  if constexpr (kParams)
    for (int p = lane; p < kSumPieces; p += kWarpSize)
#pragma unroll
      for (int j = 0; j < kPieceElems; ++j) {
        sums_w[warp][j][p] = sums_b[warp][j][p] = 0.0f;
        if constexpr (kDinpSums) sums_x[warp][j][p] = 0.0f;
      }
  const int row_end = min(N, (int(blockIdx.x) + 1) * kRows);
  for (int row = blockIdx.x * kRows + warp; row < row_end; row += kWarps) {
    const Bf16x8* x = reinterpret_cast<const Bf16x8*>(inp + size_t(row) * C);
    const Bf16x8* g = reinterpret_cast<const Bf16x8*>(dout + size_t(row) * C);
    Bf16x8* dx = reinterpret_cast<Bf16x8*>(dinp + size_t(row) * C);
    const float mean = mean_in[row], rstd = rstd_in[row];
    Bf16x8 xv[kPieces], gv[kPieces], dxv[kPieces];
    float sum_dnorm = 0.0f, sum_dnorm_norm = 0.0f;
#pragma unroll
    for (int k = 0; k < kPieces; ++k) {
      const int p = k * kWarpSize + lane;
      if (p < pieces) {
        xv[k] = x[p];
        gv[k] = g[p];
        dxv[k] = dx[p];
        const Bf16x8 wv = w[p];
#pragma unroll
        for (int j = 0; j < kPieceElems; ++j) {
          const float dn = f(gv[k].v[j]) * f(wv.v[j]);
          sum_dnorm += dn;
          sum_dnorm_norm += dn * (f(xv[k].v[j]) - mean) * rstd;
        }
      }
    }
    const float mean_dnorm = warp_sum(sum_dnorm) / C;
    const float mean_dnorm_norm = warp_sum(sum_dnorm_norm) / C;
#pragma unroll
    for (int k = 0; k < kPieces; ++k) {
      const int p = k * kWarpSize + lane;
      if (p < pieces) {
        const Bf16x8 wv = w[p];
        Bf16x8 acc = dxv[k];
#pragma unroll
        for (int j = 0; j < kPieceElems; ++j) {
          const float n = (f(xv[k].v[j]) - mean) * rstd;
          const float dn = f(gv[k].v[j]) * f(wv.v[j]);
          acc.v[j] =
              __float2bfloat16(f(acc.v[j]) + rstd * (dn - mean_dnorm - n * mean_dnorm_norm));
          if constexpr (kParams) {
            sums_w[warp][j][p] += f(gv[k].v[j]) * n;
            sums_b[warp][j][p] += f(gv[k].v[j]);
          }
          if constexpr (kDinpSums) sums_x[warp][j][p] += f(acc.v[j]);
        }
        dx[p] = acc;
      }
    }
  }
  if constexpr (kParams) {
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += kWarps * kWarpSize) {
      const int j = c % kPieceElems, p = c / kPieceElems;
      float total_w = 0.0f, total_b = 0.0f, total_x = 0.0f;
#pragma unroll
      for (int v = 0; v < kWarps; ++v) {
        total_w += sums_w[v][j][p];
        total_b += sums_b[v][j][p];
        if constexpr (kDinpSums) total_x += sums_x[v][j][p];
      }
      dweight_partials[size_t(blockIdx.x) * C + c] = total_w;
      dbias_partials[size_t(blockIdx.x) * C + c] = total_b;
      if constexpr (kDinpSums) dinp_partials[size_t(blockIdx.x) * C + c] = total_x;
    }
  }
}

// How many 16-byte pieces each lane holds for rows of C, or 0 where the
// vectorized kernels do not apply.
int pieces_per_lane(int C, std::initializer_list<const void*> rows) {
  if (C % kPieceElems != 0) return 0;
  for (const void* p : rows)
    if (!aligned16(p)) return 0;
  const int per_lane = ceil_div(C / kPieceElems, kWarpSize);
  return per_lane <= kMaxPiecesPerLane ? per_lane : 0;
}

using ForwardKernel = void (*)(bf16*, float*, float*, const bf16*, const bf16*, const bf16*, int,
                               int, const bf16*);
using BackwardKernel = void (*)(bf16*, float*, float*, float*, const bf16*, const bf16*,
                                const bf16*, const float*, const float*, int, int);
template <int... K>
constexpr std::array<ForwardKernel, sizeof...(K)> forward_kernels(std::integer_sequence<int, K...>) {
  return {layernorm_forward_vec_kernel<K + 1>...};
}
template <bool kParams, bool kDinpSums, int... K>
constexpr std::array<BackwardKernel, sizeof...(K)> backward_kernels(
    std::integer_sequence<int, K...>) {
  return {layernorm_backward_vec_kernel<K + 1, kParams, kDinpSums>...};
}

// Per row block: sum of dout * norm (weight grad) and of dout (bias grad). A
// thread owns kVec adjacent columns (8 where rows split into 16-byte pieces,
// else 1); the order of every column's sum is the same for both.
template <int kVec>
__global__ void layernorm_param_partials_kernel(float* dweight_partials, float* dbias_partials,
                                                const bf16* __restrict__ dout,
                                                const bf16* __restrict__ inp,
                                                const float* mean_in, const float* rstd_in,
                                                int N, int C) {
  wait_for_previous_grid();
  allow_next_grid();
  const int c0 = (blockIdx.x * kWarpSize + threadIdx.x) * kVec;
  const int part = blockIdx.y;
  const int r_end = min(N, (part + 1) * kPartRows);
  float acc_w[kVec] = {}, acc_b[kVec] = {};
  if (c0 < C)
#pragma unroll 2
    for (int r = part * kPartRows + threadIdx.y; r < r_end; r += kPartRowThreads) {
      float g[kVec], x[kVec];
      load_floats(g, dout + size_t(r) * C + c0);
      load_floats(x, inp + size_t(r) * C + c0);
      const float mean = mean_in[r], rstd = rstd_in[r];
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        acc_w[j] += g[j] * (x[j] - mean) * rstd;
        acc_b[j] += g[j];
      }
    }
  store_column_partials(dweight_partials, acc_w, part, c0, C);
  store_column_partials(dbias_partials, acc_b, part, c0, C);
}

// The fused path: dinp and the gradients' row-part sums (weight, bias, and
// dinp's own with dinp_colsum) in one kernel (kPieces <= kMaxFusedPieces),
// then the ordered sums over the parts.
void layernorm_backward_fused(CudaContext& ctx, int pieces, bf16* dinp, bf16* dweight,
                              bf16* dbias, bf16* dinp_colsum, const bf16* dout, const bf16* inp,
                              const bf16* weight, const float* mean, const float* rstd, int N,
                              int C) {
  const PartialSums partials(ctx, ceil_div(N, kFusedPartRows), C, dinp_colsum != nullptr);
  static constexpr auto kernels =
      backward_kernels<true, false>(std::make_integer_sequence<int, kMaxFusedPieces>());
  static constexpr auto kernels_dinp_sums =
      backward_kernels<true, true>(std::make_integer_sequence<int, kMaxFusedPieces>());
  const BackwardKernel kernel = (dinp_colsum ? kernels_dinp_sums : kernels)[pieces - 1];
  launch_kernel(ctx, kernel, partials.parts, kFusedWarps * kWarpSize, 0, dinp, partials.first,
                partials.second, partials.third, dout, inp, weight, mean, rstd, N, C);
  partials.accumulate(ctx, dweight, dbias, dinp_colsum);
}

}  // namespace

void layernorm_forward(CudaContext& ctx, bf16* out, float* mean, float* rstd, const bf16* inp,
                       const bf16* weight, const bf16* bias, int N, int C) {
  if (N == 0 || C == 0) return;
  const int blocks = ceil_div(N, kRowsPerBlock), threads = kRowsPerBlock * kWarpSize;
  if (const int k = pieces_per_lane(C, {out, inp, weight, bias})) {
    static constexpr auto kernels =
        forward_kernels(std::make_integer_sequence<int, kMaxPiecesPerLane>());
    launch_kernel(ctx, kernels[k - 1], blocks, threads, 0, out, mean, rstd, inp, weight, bias, N, C,
                  nullptr);
  } else {
    launch_kernel(ctx, layernorm_forward_kernel, blocks, threads, 0, out, mean, rstd, inp, weight,
                  bias, N, C);
  }
}

void add_layernorm_forward(CudaContext& ctx, bf16* residual, bf16* out, float* mean, float* rstd,
                           const bf16* delta, const bf16* weight, const bf16* bias, int N, int C) {
  if (N == 0 || C == 0) return;
  const int k = pieces_per_lane(C, {residual, out, delta, weight, bias});
  if (k == 0) {  // the two-pass path for shapes the fused kernel does not take
    add_inplace(ctx, residual, delta, size_t(N) * C);
    layernorm_forward(ctx, out, mean, rstd, residual, weight, bias, N, C);
    return;
  }
  static constexpr auto kernels =
      forward_kernels(std::make_integer_sequence<int, kMaxPiecesPerLane>());
  launch_kernel(ctx, kernels[k - 1], ceil_div(N, kRowsPerBlock), kRowsPerBlock * kWarpSize, 0, out,
                mean, rstd, residual, weight, bias, N, C, delta);
}

// Beyond the fused kernel's widths (or without 16-byte pieces) the parameter
// sums are a second kernel, and dinp's column sums, if asked for, one more
// pass over dinp: the pass matmul_backward's bias gradient would have made.
void layernorm_backward(CudaContext& ctx, bf16* dinp, bf16* dweight, bf16* dbias,
                        bf16* dinp_colsum, const bf16* dout, const bf16* inp, const bf16* weight,
                        const float* mean, const float* rstd, int N, int C) {
  if (N == 0 || C == 0) return;
  const int k = pieces_per_lane(C, {dinp, dout, inp, weight});
  if (k >= 1 && k <= kMaxFusedPieces) {
    layernorm_backward_fused(ctx, k, dinp, dweight, dbias, dinp_colsum, dout, inp, weight, mean,
                             rstd, N, C);
    return;
  }
  const int blocks = ceil_div(N, kRowsPerBlock), threads = kRowsPerBlock * kWarpSize;
  if (k != 0) {
    static constexpr auto kernels =
        backward_kernels<false, false>(std::make_integer_sequence<int, kMaxPiecesPerLane>());
    launch_kernel(ctx, kernels[k - 1], blocks, threads, 0, dinp, nullptr, nullptr, nullptr, dout,
                  inp, weight, mean, rstd, N, C);
  } else {
    launch_kernel(ctx, layernorm_backward_input_kernel, blocks, threads, 0, dinp, dout, inp, weight,
                  mean, rstd, N, C);
  }
  const PartialSums partials(ctx, ceil_div(N, kPartRows), C);  // weight, bias
  const int parts = partials.parts;
  const dim3 part_threads(kWarpSize, kPartRowThreads);
  if (C % 8 == 0 && aligned16(dout) && aligned16(inp))
    launch_kernel(ctx, layernorm_param_partials_kernel<8>, dim3(ceil_div(C, 8 * kWarpSize), parts),
                  part_threads, 0, partials.first, partials.second, dout, inp, mean, rstd, N, C);
  else
    launch_kernel(ctx, layernorm_param_partials_kernel<1>, dim3(ceil_div(C, kWarpSize), parts),
                  part_threads, 0, partials.first, partials.second, dout, inp, mean, rstd, N, C);
  partials.accumulate(ctx, dweight, dbias);
  // After the partials' reduction: the column sum takes the scratch they live in.
  if (dinp_colsum) column_sum_accumulate(ctx, dinp_colsum, dinp, N, C);
}

}  // namespace lsgpt::cuda
