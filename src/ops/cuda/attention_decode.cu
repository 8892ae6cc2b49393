// One decoding step: every (batch row, head) block appends the new token's k
// and v to its cache, then attends over it. Local heads keep a ring buffer of
// local_slots() entries (slot pos % slots) and read only the last `window`
// positions; global heads read positions 0..pos. Each warp runs an online
// softmax over a strided share of the keys; the warps' partial results are
// merged in a fixed order, so the output does not depend on scheduling.
#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/ops.h"

namespace lsgpt::cuda {
namespace {

constexpr int kDecodeWarps = 8;

struct DecodeParams {
  bf16* out;
  bf16 *k_local, *v_local, *k_global, *v_global;
  const bf16* qkv;
  int n_head, head_dim, n_local, window, max_T, pos, slots, C;
  float scale_log2;
};

// D: the head dimension padded to 32, 64 or 128; p.head_dim is the real one.
template <int D>
__global__ void __launch_bounds__(kDecodeWarps * kWarpSize)
    attention_decode_kernel(const DecodeParams p) {
  constexpr int kPerLane = D / kWarpSize;
  const int hd = p.head_dim;
  __shared__ float warp_max[kDecodeWarps], warp_sum_exp[kDecodeWarps];
  __shared__ float warp_acc[kDecodeWarps][D];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int b = blockIdx.x / p.n_head, h = blockIdx.x % p.n_head;
  const bool local = h < p.n_local;
  const bf16* token = p.qkv + size_t(b) * 3 * p.C + h * hd;
  bf16 *k_cache, *v_cache;
  int first, capacity;
  if (local) {
    const size_t head = size_t(b) * p.n_local + h;
    k_cache = p.k_local + head * p.slots * hd;
    v_cache = p.v_local + head * p.slots * hd;
    first = max(0, p.pos - p.window + 1);
    capacity = p.slots;
  } else {
    const size_t head = size_t(b) * (p.n_head - p.n_local) + (h - p.n_local);
    k_cache = p.k_global + head * p.max_T * hd;
    v_cache = p.v_global + head * p.max_T * hd;
    first = 0;
    capacity = p.max_T;
  }
  const int new_slot = p.pos % capacity;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    k_cache[size_t(new_slot) * hd + d] = token[p.C + d];
    v_cache[size_t(new_slot) * hd + d] = token[2 * p.C + d];
  }
  __syncthreads();

  float q[kPerLane], acc[kPerLane] = {};
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) {
    const int d = lane * kPerLane + e;
    q[e] = d < hd ? __bfloat162float(token[d]) : 0.f;
  }
  float m = -INFINITY, l = 0.f;  // in log2-scaled logit units
  for (int t = first + warp; t <= p.pos; t += kDecodeWarps) {
    const size_t slot = size_t(t % capacity) * hd + lane * kPerLane;
    const bool lane_active = lane * kPerLane < hd;  // hd is a multiple of 8
    float dot = 0.f;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e)
      if (lane_active) dot += q[e] * __bfloat162float(k_cache[slot + e]);
    const float s = warp_sum(dot) * p.scale_log2;
    const float m_new = fmaxf(m, s);
    const float alpha = exp2f(m - m_new), w = exp2f(s - m_new);
    l = l * alpha + w;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e)
      acc[e] = acc[e] * alpha + (lane_active ? w * __bfloat162float(v_cache[slot + e]) : 0.f);
    m = m_new;
  }
  if (lane == 0) warp_max[warp] = m, warp_sum_exp[warp] = l;
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) warp_acc[warp][lane * kPerLane + e] = acc[e];
  __syncthreads();
  float total_max = -INFINITY;
  for (int w = 0; w < kDecodeWarps; ++w) total_max = fmaxf(total_max, warp_max[w]);
  float total_sum = 0.f;
  for (int w = 0; w < kDecodeWarps; ++w)
    if (warp_max[w] != -INFINITY) total_sum += warp_sum_exp[w] * exp2f(warp_max[w] - total_max);
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.f;
    for (int w = 0; w < kDecodeWarps; ++w)
      if (warp_max[w] != -INFINITY) o += warp_acc[w][d] * exp2f(warp_max[w] - total_max);
    p.out[size_t(b) * p.C + h * hd + d] = __float2bfloat16(o / total_sum);
  }
}

}  // namespace

void attention_decode(CudaContext& ctx, bf16* out, bf16* k_local, bf16* v_local, bf16* k_global,
                      bf16* v_global, const bf16* qkv, const DecodeSpec& spec) {
  attn::check_head_dim(spec.head_dim, "attention_decode");
  if (spec.pos < 0 || spec.pos >= spec.max_T)
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
  p.n_head = spec.n_head, p.head_dim = spec.head_dim, p.n_local = spec.n_local, p.window = spec.window;
  p.max_T = spec.max_T, p.pos = spec.pos, p.slots = spec.local_slots(), p.C = spec.C();
  p.scale_log2 = attn::kLog2e / sqrtf(float(spec.head_dim));
  const int blocks = spec.B * spec.n_head;
  const int threads = kDecodeWarps * kWarpSize;
  switch (attn::padded_head_dim(spec.head_dim)) {
    case 32: attention_decode_kernel<32><<<blocks, threads, 0, ctx.stream()>>>(p); break;
    case 64: attention_decode_kernel<64><<<blocks, threads, 0, ctx.stream()>>>(p); break;
    default: attention_decode_kernel<128><<<blocks, threads, 0, ctx.stream()>>>(p);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace lsgpt::cuda
