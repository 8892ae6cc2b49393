// Reductions in a fixed order: column sums (bias gradients) and the squared
// norm used for global-norm clipping. Both are two-pass (per-block partials,
// then an ordered sum) with a partition that does not depend on the GPU, so
// the same inputs give bit-identical results on every run and every device.
#include <vector>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops.h"

namespace lsgpt::cuda {
namespace {

// partials[part, c] = sum of src[r, c] over the part's rows. A thread owns kVec
// adjacent columns: 8 where rows split into 16-byte pieces, else 1. Each
// column is summed over the same rows in the same order for either kVec, so
// the result does not depend on it.
template <int kVec>
__global__ void column_partials_kernel(float* partials, const bf16* src, int rows, int cols) {
  wait_for_previous_grid();
  allow_next_grid();
  const int c0 = (blockIdx.x * kWarpSize + threadIdx.x) * kVec;
  const int part = blockIdx.y;
  const int r_end = min(rows, (part + 1) * kPartRows);
  float acc[kVec] = {};
  if (c0 < cols)
#pragma unroll 4
    for (int r = part * kPartRows + threadIdx.y; r < r_end; r += kPartRowThreads) {
      float v[kVec];
      load_floats(v, src + size_t(r) * cols + c0);
#pragma unroll
      for (int j = 0; j < kVec; ++j) acc[j] += v[j];
    }
  store_column_partials(partials, acc, part, c0, cols);
}

// Up to three part-sum buffers of one shape, reduced by one launch
// (blockIdx.y picks the buffer): the LayerNorm backward's gain, bias and
// input-column sums, which were three launches of a few microseconds each.
struct PartialReduction {
  const float* partials[3];
  bf16* dst[3];
};

// A column's parts are summed by kReduceRows threads, thread y taking parts
// y, y + kReduceRows, ..., and their totals added in y order: a fixed order,
// so the same bits every run. 32 threads a column with eight loads each in
// flight: 512 parts (a GPT-2 small LayerNorm) are two rounds of loads, where
// 8 threads a column needed eight and left most of the GPU idle.
constexpr int kReduceRows = 32;

__global__ void __launch_bounds__(kWarpSize* kReduceRows)
    reduce_partials_kernel(PartialReduction r, int parts, int cols) {
  wait_for_previous_grid();
  allow_next_grid();
  __shared__ float sums[kReduceRows][kWarpSize + 1];
  const float* partials = r.partials[blockIdx.y];
  const int c = blockIdx.x * kWarpSize + threadIdx.x;
  float total = 0.0f;
  if (c < cols)
#pragma unroll 8
    for (int p = threadIdx.y; p < parts; p += kReduceRows) total += partials[size_t(p) * cols + c];
  sums[threadIdx.y][threadIdx.x] = total;
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
  total = 0.0f;
#pragma unroll
  for (int y = 0; y < kReduceRows; ++y) total += sums[y][threadIdx.x];
  bf16* dst = r.dst[blockIdx.y];
  dst[c] = __float2bfloat16(__bfloat162float(dst[c]) + total);
}

void launch_reduce_partials(CudaContext& ctx, const PartialReduction& r, int buffers, int parts,
                            int cols) {
  if (cols == 0) return;
  launch_kernel(ctx, reduce_partials_kernel, dim3(ceil_div(cols, kWarpSize), buffers),
                dim3(kWarpSize, kReduceRows), 0, r, parts, cols);
}

constexpr int kSquareBlocks = 512;
constexpr int kSquareThreads = 256;

// Squares summed in f64. kVec = 8 reads 16-byte pieces (x aligned); the
// n % kVec elements past the last piece go to the first threads of block 0.
template <int kVec>
__global__ void sum_squares_kernel(double* partials, const bf16* x, size_t n) {
  wait_for_previous_grid();
  allow_next_grid();
  __shared__ double warp_sums[kSquareThreads / kWarpSize];
  double acc = 0.0;
  const size_t pieces = n / kVec;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < pieces;
       i += size_t(gridDim.x) * blockDim.x) {
    float v[kVec];
    load_floats(v, x + i * kVec);
#pragma unroll
    for (int j = 0; j < kVec; ++j) acc += double(v[j]) * v[j];
  }
  if (blockIdx.x == 0 && threadIdx.x < n - pieces * kVec) {
    const double v = __bfloat162float(x[pieces * kVec + threadIdx.x]);
    acc += v * v;
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  if (threadIdx.x % kWarpSize == 0) warp_sums[threadIdx.x / kWarpSize] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kSquareThreads / kWarpSize; ++w) total += warp_sums[w];
    partials[blockIdx.x] = total;
  }
}

}  // namespace

void reduce_partials_accumulate(CudaContext& ctx, bf16* dst, const float* partials, int parts,
                                int cols) {
  launch_reduce_partials(ctx, PartialReduction{{partials}, {dst}}, 1, parts, cols);
}

PartialSums::PartialSums(CudaContext& ctx, int parts_, int cols_, bool with_third)
    : parts(parts_), cols(cols_) {
  const size_t count = size_t(parts) * cols;
  const int buffers = with_third ? 3 : 2;
  ScratchCarver carve(ctx.scratch(buffers * ScratchCarver::round(sizeof(float) * count)));
  first = carve.take<float>(count);
  second = carve.take<float>(count);
  if (with_third) third = carve.take<float>(count);
}

void PartialSums::accumulate(CudaContext& ctx, bf16* first_dst, bf16* second_dst,
                             bf16* third_dst) const {
  LSGPT_CHECK(!third || third_dst, "PartialSums: the third sums need a destination");
  const PartialReduction r{{first, second, third}, {first_dst, second_dst, third_dst}};
  launch_reduce_partials(ctx, r, third ? 3 : 2, parts, cols);
}

void column_sum_accumulate(CudaContext& ctx, bf16* dst, const bf16* src, int rows, int cols) {
  if (rows == 0 || cols == 0) return;
  const int parts = ceil_div(rows, kPartRows);
  float* partials = static_cast<float*>(ctx.scratch(sizeof(float) * size_t(parts) * cols));
  const dim3 threads(kWarpSize, kPartRowThreads);
  if (cols % 8 == 0 && aligned16(src))
    launch_kernel(ctx, column_partials_kernel<8>, dim3(ceil_div(cols, 8 * kWarpSize), parts),
                  threads, 0, partials, src, rows, cols);
  else
    launch_kernel(ctx, column_partials_kernel<1>, dim3(ceil_div(cols, kWarpSize), parts), threads,
                  0, partials, src, rows, cols);
  reduce_partials_accumulate(ctx, dst, partials, parts, cols);
}

double sum_squares(CudaContext& ctx, const bf16* x, size_t n) {
  if (n == 0) return 0.0;
  double* partials = static_cast<double*>(ctx.scratch(sizeof(double) * kSquareBlocks));
  if (aligned16(x))
    launch_kernel(ctx, sum_squares_kernel<8>, kSquareBlocks, kSquareThreads, 0, partials, x, n);
  else
    launch_kernel(ctx, sum_squares_kernel<1>, kSquareBlocks, kSquareThreads, 0, partials, x, n);
  std::vector<double> host(kSquareBlocks);
  CUDA_CHECK(cudaMemcpyAsync(host.data(), partials, sizeof(double) * kSquareBlocks,
                             cudaMemcpyDeviceToHost, ctx.stream()));
  CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  double total = 0.0;
  for (double p : host) total += p;
  return total;
}

}  // namespace lsgpt::cuda
