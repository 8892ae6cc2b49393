// One decoding step of LS attention for a batch of rows, each at its own
// position (flash-decoding). A block handles one (row, head, split): local
// heads read only the last `window` keys of their ring buffer in one split;
// a global head's keys 0..pos are cut into num_splits equal pieces so that a
// single long sequence still fills the GPU. The block that finishes a
// (row, head) last (a counter per row and head in the workspace) merges the
// pieces' partial softmax results in split order, so the result does not
// depend on scheduling and no second launch is needed. Inside a block,
// groups of D/8 lanes own one key at a time (each lane 16 bytes of it), so a
// warp reads 32/(D/8) keys per load with no idle lanes, and each group keeps
// its own online softmax; the groups are merged in a fixed order at the end.
// Positions and cache rows are read from device memory, so one captured CUDA
// graph serves every step.
#include <algorithm>

#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops.h"

namespace lsgpt::cuda {
namespace {

constexpr int kDecodeThreads = 128;
constexpr int kMinKeysPerSplit = 64;
constexpr int kMaxSplits = 128;
constexpr int kUnroll = 4;  // keys whose loads are in flight together per group

struct DecodeParams {
  bf16* out;
  bf16 *k_local, *v_local, *k_global, *v_global;
  const bf16* qkv;
  const int* positions;   // null: every row at pos
  const int* cache_rows;  // null: identity
  float* partials;        // [B, n_global, splits, D + 2] when splits > 1
  int* counters;          // [B, n_global]: splits finished; the last one merges and resets
  int n_head, head_dim, n_local, window, max_T, pos, slots, C, splits;
  float scale_log2;
};

__device__ __forceinline__ int row_position(const DecodeParams& p, int b) {
  return p.positions ? p.positions[b] : p.pos;
}

// The cache of (row b, head h): its keys/values base pointers and capacity.
struct HeadCache {
  bf16 *k, *v;
  int capacity;
};

__device__ __forceinline__ HeadCache head_cache(const DecodeParams& p, int b, int h) {
  const int entry = p.cache_rows ? p.cache_rows[b] : b;
  const int hd = p.head_dim;
  if (h < p.n_local) {
    const size_t head = size_t(entry) * p.n_local + h;
    return {p.k_local + head * p.slots * hd, p.v_local + head * p.slots * hd, p.slots};
  }
  const size_t head = size_t(entry) * (p.n_head - p.n_local) + (h - p.n_local);
  return {p.k_global + head * p.max_T * hd, p.v_global + head * p.max_T * hd, p.max_T};
}

__device__ __forceinline__ void load8(float (&x)[8], const bf16* src) {
  const Bf16x8 v = *reinterpret_cast<const Bf16x8*>(src);
#pragma unroll
  for (int e = 0; e < 8; ++e) x[e] = __bfloat162float(v.v[e]);
}

// Merges the splits of (row b, global head g_head), run by the block that
// finished last. Each split's weight
// 2^(m_s - M) is computed once into shared memory; then thread groups sum
// interleaved subsets of the splits per output element and combine them in a
// fixed order, so the result does not depend on scheduling.
template <int D>
__device__ void merge_splits(const DecodeParams& p, int b, int g_head) {
  constexpr int kLanesPerD = kDecodeThreads / D;  // threads sharing one output element
  __shared__ float weight[kMaxSplits];
  __shared__ float partial_out[kLanesPerD][D];
  __shared__ float reduce[kDecodeThreads / kWarpSize];
  const int n_global = p.n_head - p.n_local;
  const int h = p.n_local + g_head, hd = p.head_dim;
  bf16* out = p.out + size_t(b) * p.C + h * hd;
  const float* parts = p.partials + (size_t(b) * n_global + g_head) * p.splits * (D + 2);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  float m = -INFINITY;
  for (int s = threadIdx.x; s < p.splits; s += blockDim.x) m = fmaxf(m, __ldcg(parts + s * (D + 2) + D));
  m = warp_max(m);
  if (lane == 0) reduce[warp] = m;
  __syncthreads();
  float total_max = -INFINITY;
  for (int w = 0; w < kDecodeThreads / kWarpSize; ++w) total_max = fmaxf(total_max, reduce[w]);
  __syncthreads();
  float l = 0.f;
  for (int s = threadIdx.x; s < p.splits; s += blockDim.x) {
    const float ms = __ldcg(parts + s * (D + 2) + D);
    const float w = ms == -INFINITY ? 0.f : exp2f(ms - total_max);
    weight[s] = w;
    l += __ldcg(parts + s * (D + 2) + D + 1) * w;
  }
  l = warp_sum(l);
  if (lane == 0) reduce[warp] = l;
  __syncthreads();
  float total_sum = 0.f;
  for (int w = 0; w < kDecodeThreads / kWarpSize; ++w) total_sum += reduce[w];
  const int d = threadIdx.x % D, part = threadIdx.x / D;
  float o = 0.f;
#pragma unroll 4
  for (int s = part; s < p.splits; s += kLanesPerD) o += __ldcg(parts + s * (D + 2) + d) * weight[s];
  partial_out[part][d] = o;
  __syncthreads();
  if (threadIdx.x < hd) {
    float sum = 0.f;
    for (int k = 0; k < kLanesPerD; ++k) sum += partial_out[k][threadIdx.x];
    out[threadIdx.x] = __float2bfloat16(sum / total_sum);
  }
}

// D: the head dimension padded to 32, 64 or 128 (p.head_dim is the real one,
// a multiple of 8: lanes past it hold zeros).
template <int D>
__global__ void __launch_bounds__(kDecodeThreads) attention_decode_kernel(const DecodeParams p) {
  wait_for_previous_grid();
  allow_next_grid();
  constexpr int kGroup = D / 8;                      // lanes per key
  constexpr int kGroupsPerWarp = kWarpSize / kGroup;
  constexpr int kGroups = kDecodeThreads / kGroup;
  __shared__ float group_max[kGroups], group_sum[kGroups];
  __shared__ float group_acc[kGroups][D];
  const int b = blockIdx.x / p.n_head, h = blockIdx.x % p.n_head, split = blockIdx.y;
  const bool local = h < p.n_local;
  const int pos = row_position(p, b);
  const int hd = p.head_dim;
  const bool to_partials = !local && p.splits > 1;
  if (pos < 0) {  // idle row: zeros
    if (split == 0)
      for (int d = threadIdx.x; d < hd; d += blockDim.x) p.out[size_t(b) * p.C + h * hd + d] = 0;
    return;
  }
  if (local && split > 0) return;  // a band of w keys needs no split
  const HeadCache cache = head_cache(p, b, h);
  const bf16* token = p.qkv + size_t(b) * 3 * p.C + h * hd;
  // The new key and value are read from qkv, not the cache, so no block
  // depends on another's write; split 0 stores them for later steps.
  if (split == 0)
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
      const size_t slot = size_t(pos % cache.capacity) * hd + d;
      cache.k[slot] = token[p.C + d];
      cache.v[slot] = token[2 * p.C + d];
    }
  const int first = local ? max(0, pos - p.window + 1) : 0;
  const int n_keys = pos + 1 - first;
  const int per_split = to_partials ? (n_keys + p.splits - 1) / p.splits : n_keys;
  const int begin = first + split * per_split;
  const int end = min(pos + 1, begin + per_split);

  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int group = warp * kGroupsPerWarp + lane / kGroup;
  const int d0 = (lane % kGroup) * 8;
  const bool lane_active = d0 < hd;
  float q[8], acc[8] = {};
  if (lane_active) {
    load8(q, token + d0);
#pragma unroll
    for (int e = 0; e < 8; ++e) q[e] *= p.scale_log2;
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) q[e] = 0.f;
  }
  float m = -INFINITY, l = 0.f;  // log2-scaled logit units
  // The loop bounds are the same for the whole block, so every lane reaches
  // the group's shuffles.
  for (int base = begin; base < end; base += kGroups * kUnroll) {
    const int t0 = base + group;
    float k[kUnroll][8], v[kUnroll][8];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int t = t0 + u * kGroups;
      const bool valid = t < end && lane_active;
      const bf16* k_src = t == pos ? token + p.C : cache.k + size_t(t % cache.capacity) * hd;
      const bf16* v_src = t == pos ? token + 2 * p.C : cache.v + size_t(t % cache.capacity) * hd;
      if (valid) {
        load8(k[u], k_src + d0);
        load8(v[u], v_src + d0);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) k[u][e] = v[u][e] = 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float s = 0.f;
#pragma unroll
      for (int e = 0; e < 8; ++e) s += q[e] * k[u][e];
#pragma unroll
      for (int offset = kGroup / 2; offset > 0; offset >>= 1)
        s += __shfl_xor_sync(0xffffffffu, s, offset);
      if (t0 + u * kGroups >= end) continue;  // uniform within the group
      const float m_new = fmaxf(m, s);
      const float alpha = exp2f(m - m_new), w = exp2f(s - m_new);
      l = l * alpha + w;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[e] = acc[e] * alpha + w * v[u][e];
      m = m_new;
    }
  }
  if (lane % kGroup == 0) group_max[group] = m, group_sum[group] = l;
#pragma unroll
  for (int e = 0; e < 8; ++e) group_acc[group][d0 + e] = acc[e];
  __syncthreads();
  float block_max = -INFINITY;
  for (int g = 0; g < kGroups; ++g) block_max = fmaxf(block_max, group_max[g]);
  float block_sum = 0.f;
  for (int g = 0; g < kGroups; ++g)
    if (group_max[g] != -INFINITY) block_sum += group_sum[g] * exp2f(group_max[g] - block_max);
  if (to_partials) {
    const int g_head = h - p.n_local, n_global = p.n_head - p.n_local;
    float* part = p.partials + ((size_t(b) * n_global + g_head) * p.splits + split) * (D + 2);
    if (threadIdx.x == 0) part[D] = block_max, part[D + 1] = block_sum;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      float o = 0.f;
      for (int g = 0; g < kGroups; ++g)
        if (group_max[g] != -INFINITY) o += group_acc[g][d] * exp2f(group_max[g] - block_max);
      part[d] = o;
    }
    // The last split of this (row, head) to finish merges them all: no
    // second launch, and the merge order is the split order all the same.
    __shared__ bool is_last;
    __threadfence();
    __syncthreads();
    int* counter = p.counters + size_t(b) * n_global + g_head;
    if (threadIdx.x == 0) is_last = atomicAdd(counter, 1) == p.splits - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    merge_splits<D>(p, b, g_head);
    if (threadIdx.x == 0) *counter = 0;  // ready for the next step (graph replays)
    return;
  }
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.f;
    for (int g = 0; g < kGroups; ++g)
      if (group_max[g] != -INFINITY) o += group_acc[g][d] * exp2f(group_max[g] - block_max);
    p.out[size_t(b) * p.C + h * hd + d] = __float2bfloat16(o / block_sum);
  }
}

// Splits of a global head: enough blocks to fill the GPU about four times over,
// but no piece shorter than kMinKeysPerSplit keys at full context.
int choose_splits(const DecodeSpec& spec, int sm_count) {
  const int n_global = spec.n_head - spec.n_local;
  if (n_global == 0 || spec.workspace == nullptr) return 1;
  if (spec.num_splits > 0) return std::min(spec.num_splits, kMaxSplits);
  const int by_occupancy = ceil_div(4LL * sm_count, (long long)spec.B * n_global);
  const int by_length = std::max(1, spec.max_T / kMinKeysPerSplit);
  return std::max(1, std::min({by_occupancy, by_length, kMaxSplits}));
}

int device_sm_count() {
  static const int count = [] {
    int device = 0, sms = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    return sms;
  }();
  return count;
}

size_t workspace_bytes(const DecodeSpec& spec, int splits) {
  if (splits <= 1) return 0;
  const size_t D = attn::padded_head_dim(spec.head_dim);
  const size_t heads = size_t(spec.B) * (spec.n_head - spec.n_local);
  return heads * splits * (D + 2) * sizeof(float) + heads * sizeof(int);
}

template <int D>
void launch(CudaContext& ctx, const DecodeParams& p, int B) {
  const dim3 grid(B * p.n_head, p.splits);
  launch_kernel(ctx, attention_decode_kernel<D>, grid, kDecodeThreads, 0, p);
}

}  // namespace

size_t attention_decode_workspace_bytes(const DecodeSpec& spec) {
  DecodeSpec with_workspace = spec;
  with_workspace.workspace = reinterpret_cast<void*>(1);  // "one will be given"
  return workspace_bytes(spec, choose_splits(with_workspace, device_sm_count()));
}

void attention_decode(CudaContext& ctx, bf16* out, bf16* k_local, bf16* v_local, bf16* k_global,
                      bf16* v_global, const bf16* qkv, const DecodeSpec& spec) {
  attn::check_head_dim(spec.head_dim, "attention_decode");
  if (!spec.positions && (spec.pos < 0 || spec.pos >= spec.max_T))
    fail("attention_decode: position ", spec.pos, " is outside the cache of ", spec.max_T,
         " positions");
  LSGPT_CHECK(spec.n_local >= 0 && spec.n_local <= spec.n_head && spec.window >= 1);
  LSGPT_CHECK(spec.n_local == 0 || (k_local && v_local), "attention_decode: local cache missing");
  LSGPT_CHECK(spec.n_local == spec.n_head || (k_global && v_global),
              "attention_decode: global cache missing");
  if (spec.B == 0 || spec.n_head == 0) return;
  DecodeParams p;
  p.out = out, p.k_local = k_local, p.v_local = v_local, p.k_global = k_global;
  p.v_global = v_global, p.qkv = qkv;
  p.positions = spec.positions, p.cache_rows = spec.cache_rows;
  p.n_head = spec.n_head, p.head_dim = spec.head_dim, p.n_local = spec.n_local;
  p.window = spec.window, p.max_T = spec.max_T, p.pos = spec.pos, p.slots = spec.local_slots();
  p.C = spec.C();
  p.splits = choose_splits(spec, ctx.sm_count());
  p.partials = static_cast<float*>(spec.workspace);
  if (p.splits > 1)
    p.counters = reinterpret_cast<int*>(
        p.partials + size_t(spec.B) * (spec.n_head - spec.n_local) * p.splits *
                         (attn::padded_head_dim(spec.head_dim) + 2));
  p.scale_log2 = kLog2e / sqrtf(float(spec.head_dim));
  switch (attn::padded_head_dim(spec.head_dim)) {
    case 32: launch<32>(ctx, p, spec.B); break;
    case 64: launch<64>(ctx, p, spec.B); break;
    default: launch<128>(ctx, p, spec.B);
  }
}

}  // namespace lsgpt::cuda
