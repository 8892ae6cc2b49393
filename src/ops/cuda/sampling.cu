// Sampling (ops/sampling_spec.h) on the GPU: one block of 1024 threads per
// row, the same rule as the CPU reference (ops/cpu/sampling.cpp) with the same
// arithmetic (ops/sampling_noise.h):
//   pass 1: argmax of the logits (lowest id among ties) and the NaN check;
//           with temperature 0 that is the whole op (the decode hot path);
//   top_k:  the k-th largest logit by an exact radix select over the
//           order-preserving keys of the bf16 values: 2 passes over the row,
//           one per significant byte of the key, each a shared-memory
//           histogram of counts; the threshold is the key of y = z / t there;
//   top_p:  the total of the quantised masses of y, then the same radix
//           select weighted by the masses: the logit where the masses summed
//           from the highest down first reach ceil(top_p * total);
//   last:   the argmax of y + gumbel(u(seed, step, id)) over the kept tokens.
// The histograms and the total are integer sums, so the thresholds do not
// depend on the order atomics land in: the op is deterministic, and matches
// the CPU up to the rounding of expf/logf. The row is re-read from memory for
// each pass (it is 100 KB of bf16 and stays in L2).
//
// A row whose logits hold a NaN gets token -2 and nothing else changes (step,
// advance and next_input keep their values, so a replayed graph never feeds
// an invalid id to the embedding); the host turns a negative token of an
// active row into an error. The kernel neither allocates nor synchronizes
// with the host, so it can be captured in a CUDA graph.
#include <climits>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops.h"
#include "ops/sampling_noise.h"

namespace lsgpt::cuda {
namespace {

using u64 = unsigned long long;

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int32_t kNaNToken = -2;

// Calls f(i, z_i) for this thread's share of the first V logits of a row.
// kVector: 16-byte loads of 8 bf16 (the row is 16-byte aligned and Vp % 8 == 0,
// so the up to 7 padded columns read past V are inside the row; they are
// skipped).
template <bool kVector, typename F>
__device__ __forceinline__ void for_each_logit(const bf16* z, int V, F&& f) {
  if constexpr (kVector) {
    for (int c = threadIdx.x * 8; c < V; c += kThreads * 8) {
      const Bf16x8 v = *reinterpret_cast<const Bf16x8*>(z + c);
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (c + j < V) f(c + j, __bfloat162float(v.v[j]));
    }
  } else {
    for (int c = threadIdx.x; c < V; c += kThreads) f(c, __bfloat162float(z[c]));
  }
}

// A candidate of an argmax: the higher score wins, the lower index among ties
// (NaN scores never win).
struct Best {
  float score;
  int index;
};

__device__ __forceinline__ Best better(Best a, Best b) {
  return (b.score > a.score || (b.score == a.score && b.index < a.index)) ? b : a;
}

__device__ __forceinline__ Best warp_argmax(Best x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    x = better(x, Best{__shfl_xor_sync(0xffffffffu, x.score, offset),
                       __shfl_xor_sync(0xffffffffu, x.index, offset)});
  return x;
}

// Every thread must call these two; all get the block's result.
__device__ Best block_argmax(Best x, Best* shared /* [kWarps] */) {
  x = warp_argmax(x);
  __syncthreads();  // a previous call's readers are done with shared
  if (threadIdx.x % kWarpSize == 0) shared[threadIdx.x / kWarpSize] = x;
  __syncthreads();
  return warp_argmax(shared[threadIdx.x % kWarpSize]);
}

__device__ __forceinline__ u64 warp_sum_u64(u64 x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

__device__ u64 block_sum_u64(u64 x, u64* shared /* [kWarps] */) {
  x = warp_sum_u64(x);
  __syncthreads();
  if (threadIdx.x % kWarpSize == 0) shared[threadIdx.x / kWarpSize] = x;
  __syncthreads();
  return warp_sum_u64(shared[threadIdx.x % kWarpSize]);
}

// The histogram of a radix pass is kept in kCopies copies, lane l adding to
// copy l % kCopies: the top bytes of the keys of a row take only a few values,
// and shared atomics on one address serialize. The atomics are 32-bit (64-bit
// ones on shared memory are compare-and-swap loops, 3x slower here): a weight
// w <= 2^24 is added as w mod 2^12 and w / 2^12, whose sums over a copy stay
// below 2^32 for any V < 2^24. A copy's stride of 257 puts the copies of one
// byte in different banks.
constexpr int kCopies = 16;

struct SelectShared {
  uint32_t low[kCopies][257], high[kCopies][257];
  u64 hist[256];  // the sum of the copies
  int digit;      // the chosen byte of a pass
  u64 above;      // the weight of the higher bytes of that pass
};

// Among the logits of positive weight (weight(i, z_i) returns it), the value
// X at which the weights summed from the highest logit down first reach rank:
//   weight(z > X) < rank <= weight(z >= X),   1 <= rank <= total weight.
// With weight 1 for every logit, X is the rank-th largest. The radix runs
// over the order-preserving keys of the logits; a bf16 value leaves the low
// 16 bits of its float key constant, so the top two bytes (two passes) settle
// the key exactly. Every thread must call it.
//
// Selecting on z rather than y = z / t gives the same thresholds: x -> x / t
// is monotone, so the k-th largest y is (the k-th largest z) / t, and the key
// of X / t is the largest y key whose mass (summed over y keys) reaches rank.
template <bool kVector, typename Weight>
__device__ float radix_select(const bf16* z, int V, u64 rank, Weight weight, SelectShared& sh) {
  const int lane = threadIdx.x % kWarpSize;
  uint32_t prefix = 0, mask = 0;  // the bytes chosen so far
  for (int shift = 24; shift >= 16; shift -= 8) {
    uint32_t* low = sh.low[lane % kCopies];
    uint32_t* high = sh.high[lane % kCopies];
    for (int j = threadIdx.x; j < kCopies * 257; j += kThreads)
      (&sh.low[0][0])[j] = (&sh.high[0][0])[j] = 0;
    __syncthreads();
    for_each_logit<kVector>(z, V, [&](int i, float x) {
      const uint32_t key = sampling_key(x);
      if ((key & mask) != prefix) return;
      const uint32_t w = uint32_t(weight(i, x)), d = (key >> shift) & 255u;
      if (w & 0xfffu) atomicAdd(&low[d], w & 0xfffu);
      if (w >> 12) atomicAdd(&high[d], w >> 12);
    });
    __syncthreads();
    if (threadIdx.x < 256) {
      u64 low_sum = 0, high_sum = 0;
#pragma unroll
      for (int c = 0; c < kCopies; ++c)
        low_sum += sh.low[c][threadIdx.x], high_sum += sh.high[c][threadIdx.x];
      sh.hist[threadIdx.x] = (high_sum << 12) + low_sum;
    }
    __syncthreads();
    if (threadIdx.x < kWarpSize) {
      // Lane l owns the bytes 255 - 8l down to 248 - 8l; an inclusive scan
      // over the lanes gives the weight from the top byte down to its last.
      u64 own = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) own += sh.hist[255 - 8 * lane - j];
      u64 upto = own;
#pragma unroll
      for (int offset = 1; offset < kWarpSize; offset <<= 1) {
        const u64 other = __shfl_up_sync(0xffffffffu, upto, offset);
        if (lane >= offset) upto += other;
      }
      u64 above = upto - own;
      if (above < rank && rank <= upto) {  // exactly one lane
        for (int j = 0; j < 8; ++j) {
          const int d = 255 - 8 * lane - j;
          if (rank <= above + sh.hist[d]) {
            sh.digit = d;
            sh.above = above;
            break;
          }
          above += sh.hist[d];
        }
      }
    }
    __syncthreads();
    prefix |= uint32_t(sh.digit) << shift;
    mask |= 255u << shift;
    rank -= sh.above;
  }
  // Back from the key to the value: the low 16 key bits of a bf16 are 0 for
  // a positive value (key = bits | 2^31) and 0xffff for a negative one
  // (key = ~bits).
  const uint32_t key = prefix | ((prefix & 0x80000000u) ? 0u : 0xffffu);
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

template <bool kVector>
__global__ void __launch_bounds__(kThreads)
    sample_kernel(int32_t* tokens, const bf16* logits, SampleParams* params, int V, int Vp,
                  int32_t* advance, int32_t* next_input) {
  wait_for_previous_grid();
  allow_next_grid();
  __shared__ Best best_parts[kWarps];
  __shared__ u64 sum_parts[kWarps];
  __shared__ SelectShared select;
  const int row = blockIdx.x;
  const SampleParams p = params[row];
  if (!p.active) {
    if (threadIdx.x == 0) tokens[row] = -1;
    return;
  }
  const bf16* z = logits + size_t(row) * Vp;

  Best best{-INFINITY, INT_MAX};
  bool nan = false;
  for_each_logit<kVector>(z, V, [&](int i, float x) {
    nan |= isnan(x);
    best = better(best, Best{x, i});
  });
  if (__syncthreads_or(nan)) {
    if (threadIdx.x == 0) tokens[row] = kNaNToken;
    return;
  }
  best = block_argmax(best, best_parts);

  if (p.temperature > 0.0f) {
    const float t = p.temperature;
    const float y_max = best.score / t;  // x -> x / t is monotone for t > 0
    uint32_t threshold = 0;  // the key of the lowest kept y (0 keeps every token)
    if (p.top_k > 0 && p.top_k < V) {
      const float kth = radix_select<kVector>(
          z, V, u64(p.top_k), [](int, float) -> u64 { return 1; }, select);
      threshold = sampling_key(kth / t);
    }
    if (p.top_p < 1.0f) {
      const uint32_t k_threshold = threshold;
      const auto mass = [&](int, float x) -> u64 {
        const float y = x / t;
        return sampling_key(y) >= k_threshold ? sampling_mass(y, y_max) : 0;
      };
      u64 total = 0;
      for_each_logit<kVector>(z, V, [&](int i, float x) { total += mass(i, x); });
      total = block_sum_u64(total, sum_parts);
      const float cut =
          radix_select<kVector>(z, V, sampling_nucleus_mass(p.top_p, total), mass, select);
      threshold = sampling_key(cut / t);
    }
    const uint64_t stream = sampling_stream(p.seed, p.step);
    best = Best{-INFINITY, INT_MAX};
    for_each_logit<kVector>(z, V, [&](int i, float x) {
      const float y = x / t;
      if (sampling_key(y) >= threshold)
        best = better(best, Best{y + sampling_gumbel(sampling_uniform(stream, uint32_t(i))), i});
    });
    best = block_argmax(best, best_parts);
  }

  if (threadIdx.x == 0) {
    tokens[row] = best.index;
    params[row].step = p.step + 1;
    if (advance) advance[row] += 1;
    if (next_input) next_input[row] = best.index;
  }
}

}  // namespace

void sample_tokens(CudaContext& ctx, int32_t* tokens, const bf16* logits, SampleParams* params,
                   int B, int V, int Vp, int32_t* advance, int32_t* next_input) {
  if (B == 0) return;
  LSGPT_CHECK(V > 0 && V <= Vp && V < (1 << 24), "sampling: need 0 < V <= Vp, V < 2^24");
  if (Vp % 8 == 0 && aligned16(logits))
    launch_kernel(ctx, sample_kernel<true>, B, kThreads, 0, tokens, logits, params, V, Vp, advance,
                  next_input);
  else
    launch_kernel(ctx, sample_kernel<false>, B, kThreads, 0, tokens, logits, params, V, Vp, advance,
                  next_input);
}

}  // namespace lsgpt::cuda
