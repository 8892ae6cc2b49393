// Token + position embedding. The backward scatters rows of dout into dwte by
// token; instead of float atomics (whose order, and so whose rounding, varies
// run to run) the positions are sorted by token with CUB's stable radix sort
// and each distinct token's rows are summed by one block in position order.
#include <cub/device/device_radix_sort.cuh>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops.h"

namespace lsgpt::cuda {
namespace {

template <bool kVector>
__global__ void embedding_forward_kernel(bf16* out, const int32_t* tokens, const bf16* wte,
                                         const bf16* wpe, int T, int C, int pos0) {
  wait_for_previous_grid();
  allow_next_grid();
  const int row = blockIdx.x;  // b * T + t
  const int t = row % T;
  const bf16* tok_row = wte + size_t(tokens[row]) * C;
  const bf16* pos_row = wpe + size_t(pos0 + t) * C;
  bf16* out_row = out + size_t(row) * C;
  if (kVector) {
    for (int c = threadIdx.x * 8; c < C; c += blockDim.x * 8) {
      Bf16x8 a = *reinterpret_cast<const Bf16x8*>(tok_row + c);
      Bf16x8 b = *reinterpret_cast<const Bf16x8*>(pos_row + c), y;
#pragma unroll
      for (int k = 0; k < 8; ++k)
        y.v[k] = __float2bfloat16(__bfloat162float(a.v[k]) + __bfloat162float(b.v[k]));
      *reinterpret_cast<Bf16x8*>(out_row + c) = y;
    }
  } else {
    for (int c = threadIdx.x; c < C; c += blockDim.x)
      out_row[c] = __float2bfloat16(__bfloat162float(tok_row[c]) + __bfloat162float(pos_row[c]));
  }
}

__global__ void iota_kernel(int32_t* values, int n) {
  wait_for_previous_grid();
  allow_next_grid();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) values[i] = i;
}

// One block per sorted position; the block at the start of a run of equal
// tokens sums that run's dout rows (in ascending position order) into dwte.
__global__ void embedding_token_grad_kernel(bf16* dwte, const bf16* dout,
                                            const int32_t* sorted_tokens,
                                            const int32_t* sorted_positions, int N, int C) {
  wait_for_previous_grid();
  allow_next_grid();
  const int i = blockIdx.x;
  const int token = sorted_tokens[i];
  if (i > 0 && sorted_tokens[i - 1] == token) return;
  int end = i + 1;
  while (end < N && sorted_tokens[end] == token) ++end;
  bf16* grad_row = dwte + size_t(token) * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = 0.0f;
    for (int k = i; k < end; ++k) acc += __bfloat162float(dout[size_t(sorted_positions[k]) * C + c]);
    grad_row[c] = __float2bfloat16(__bfloat162float(grad_row[c]) + acc);
  }
}

__global__ void embedding_position_grad_kernel(bf16* dwpe, const bf16* dout, int B, int T, int C) {
  wait_for_previous_grid();
  allow_next_grid();
  const int t = blockIdx.x;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = 0.0f;
    for (int b = 0; b < B; ++b) acc += __bfloat162float(dout[(size_t(b) * T + t) * C + c]);
    bf16* g = dwpe + size_t(t) * C + c;
    *g = __float2bfloat16(__bfloat162float(*g) + acc);
  }
}

int row_threads(int C, int per_thread) {
  const int needed = ceil_div(C, per_thread);
  return needed >= 256 ? 256 : (needed + 31) / 32 * 32;
}

}  // namespace

void embedding_forward(CudaContext& ctx, bf16* out, const int32_t* tokens, const bf16* wte,
                       const bf16* wpe, int B, int T, int C, int pos0) {
  const int N = B * T;
  if (N == 0 || C == 0) return;
  if (C % 8 == 0 && aligned16(out) && aligned16(wte) && aligned16(wpe))
    launch_kernel(ctx, embedding_forward_kernel<true>, N, row_threads(C, 8), 0, out, tokens, wte,
                  wpe, T, C, pos0);
  else
    launch_kernel(ctx, embedding_forward_kernel<false>, N, row_threads(C, 1), 0, out, tokens, wte,
                  wpe, T, C, pos0);
}

void embedding_backward(CudaContext& ctx, bf16* dwte, bf16* dwpe, const bf16* dout,
                        const int32_t* tokens, int B, int T, int C) {
  const int N = B * T;
  if (N == 0 || C == 0) return;
  size_t sort_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, tokens, (int32_t*)nullptr,
                                             (const int32_t*)nullptr, (int32_t*)nullptr, N, 0,
                                             32, ctx.stream()));
  const size_t ints = ScratchCarver::round(sizeof(int32_t) * N);
  ScratchCarver carve(ctx.scratch(3 * ints + ScratchCarver::round(sort_bytes)));
  int32_t* positions = carve.take<int32_t>(N);
  int32_t* sorted_tokens = carve.take<int32_t>(N);
  int32_t* sorted_positions = carve.take<int32_t>(N);
  void* sort_temp = carve.take<char>(sort_bytes);

  launch_kernel(ctx, iota_kernel, ceil_div(N, 256), 256, 0, positions, N);
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_temp, sort_bytes, tokens, sorted_tokens,
                                             positions, sorted_positions, N, 0, 32,
                                             ctx.stream()));
  launch_kernel(ctx, embedding_token_grad_kernel, N, row_threads(C, 1), 0, dwte, dout,
                sorted_tokens, sorted_positions, N, C);
  launch_kernel(ctx, embedding_position_grad_kernel, T, row_threads(C, 1), 0, dwpe, dout, B, T, C);
}

}  // namespace lsgpt::cuda
