// AdamW: the f32 master weights are updated and the bf16 working copy is
// refreshed from them with round-to-nearest (not stochastic rounding), so a
// resumed run reproduces the uninterrupted one bit for bit.
//
// Two launchers share one element update (adamw_element), so they give the
// same bits: adamw_update on one tensor, and adamw_update_segments, the
// training step's multi-tensor form, which updates every tensor of the flat
// buffers in one launch (a few launches past kMaxSegments tensors). Each block
// owns a chunk of one segment, found by a binary search over the segments'
// first blocks; the segment table travels as a __grid_constant__ kernel
// parameter (up to 32 KB since CUDA 12.1), so the step needs no upload and
// stays capturable in a graph. LSGPT_CUDA_ADAMW=per-tensor selects the
// one-launch-per-tensor path instead (cuda_backend.cu).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops.h"

namespace lsgpt::cuda {
namespace {

struct AdamWCoefficients {
  float lr, beta1, beta2, eps, weight_decay, grad_scale;
  float bias_correction1, bias_correction2;  // 1 - beta^step
};

AdamWCoefficients coefficients(const AdamWSettings& s) {
  AdamWCoefficients k;
  k.lr = float(s.lr), k.beta1 = float(s.beta1), k.beta2 = float(s.beta2), k.eps = float(s.eps);
  k.weight_decay = float(s.weight_decay), k.grad_scale = float(s.grad_scale);
  k.bias_correction1 = float(1.0 - std::pow(s.beta1, double(s.step)));
  k.bias_correction2 = float(1.0 - std::pow(s.beta2, double(s.step)));
  return k;
}

// The update of one element; both kernels inline this same code, so the
// compiler makes the same contractions (FMAs) in each.
__device__ __forceinline__ void adamw_element(float& master, float& m, float& v, bf16& param,
                                              bf16 grad, const AdamWCoefficients& k) {
  const float g = __bfloat162float(grad) * k.grad_scale;
  const float mi = k.beta1 * m + (1.0f - k.beta1) * g;
  const float vi = k.beta2 * v + (1.0f - k.beta2) * g * g;
  m = mi;
  v = vi;
  const float m_hat = mi / k.bias_correction1;
  const float v_hat = vi / k.bias_correction2;
  const float w = master;
  const float updated = w - k.lr * (m_hat / (sqrtf(v_hat) + k.eps) + k.weight_decay * w);
  master = updated;
  param = __float2bfloat16(updated);
}

__global__ void adamw_kernel(bf16* param, float* master, const bf16* grad, float* m, float* v,
                             size_t n, AdamWCoefficients k) {
  wait_for_previous_grid();
  allow_next_grid();
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  adamw_element(master[i], m[i], v[i], param[i], grad[i], k);
}

// ---- multi-tensor ----

constexpr int kThreads = 256;
constexpr int kVec = 8;                              // elements per thread per pass
constexpr size_t kChunk = size_t(kThreads) * kVec * 4;  // elements per block
// 32 bytes a segment: 512 of them fill 16 KB of the 32 KB parameter limit.
constexpr int kMaxSegments = 512;

struct SegmentArg {
  uint64_t begin, end;   // elements of the flat buffers
  uint32_t first_block;  // the segment's chunks are blocks first_block, first_block + 1, ...
  float grad_scale, weight_decay;
};

struct SegmentTable {
  SegmentArg seg[kMaxSegments];
  int count;
  bool vector_ok;  // the five base pointers are 16-byte aligned
};

// The segment whose blocks include `block` (segments are in block order).
__device__ __forceinline__ int find_segment(const SegmentTable& t, uint32_t block) {
  int lo = 0, hi = t.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (t.seg[mid].first_block <= block) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// Eight consecutive elements with 16-byte accesses; i is a multiple of 8.
__device__ __forceinline__ void adamw_vec8(bf16* param, float* master, const bf16* grad,
                                           float* m, float* v, size_t i,
                                           const AdamWCoefficients& k) {
  Bf16x8 g = *reinterpret_cast<const Bf16x8*>(grad + i);
  float4 w[2], mm[2], vv[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    w[h] = reinterpret_cast<const float4*>(master + i)[h];
    mm[h] = reinterpret_cast<const float4*>(m + i)[h];
    vv[h] = reinterpret_cast<const float4*>(v + i)[h];
  }
  Bf16x8 p;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    adamw_element(w[h].x, mm[h].x, vv[h].x, p.v[4 * h + 0], g.v[4 * h + 0], k);
    adamw_element(w[h].y, mm[h].y, vv[h].y, p.v[4 * h + 1], g.v[4 * h + 1], k);
    adamw_element(w[h].z, mm[h].z, vv[h].z, p.v[4 * h + 2], g.v[4 * h + 2], k);
    adamw_element(w[h].w, mm[h].w, vv[h].w, p.v[4 * h + 3], g.v[4 * h + 3], k);
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    reinterpret_cast<float4*>(master + i)[h] = w[h];
    reinterpret_cast<float4*>(m + i)[h] = mm[h];
    reinterpret_cast<float4*>(v + i)[h] = vv[h];
  }
  *reinterpret_cast<Bf16x8*>(param + i) = p;
}

__global__ void __launch_bounds__(kThreads)
    adamw_segments_kernel(bf16* param, float* master, const bf16* grad, float* m, float* v,
                          AdamWCoefficients k, const __grid_constant__ SegmentTable table) {
  wait_for_previous_grid();
  allow_next_grid();
  const SegmentArg& seg = table.seg[find_segment(table, blockIdx.x)];
  k.grad_scale = seg.grad_scale, k.weight_decay = seg.weight_decay;
  const size_t lo = seg.begin + size_t(blockIdx.x - seg.first_block) * kChunk;
  const size_t hi = seg.end < lo + kChunk ? size_t(seg.end) : lo + kChunk;
  // Whole vectors from the first multiple of 8 on; the few elements before
  // it (a segment that starts unaligned) and after the last whole vector go
  // one by one.
  size_t body = lo;
  if (table.vector_ok) {
    body = (lo + kVec - 1) / kVec * kVec;
    if (body > hi) body = hi;
    for (size_t i = body + size_t(threadIdx.x) * kVec; i + kVec <= hi; i += size_t(kThreads) * kVec)
      adamw_vec8(param, master, grad, m, v, i, k);
    const size_t tail = body + (hi - body) / kVec * kVec;
    const size_t head_n = body - lo, tail_n = hi - tail;
    if (threadIdx.x < head_n) {
      const size_t i = lo + threadIdx.x;
      adamw_element(master[i], m[i], v[i], param[i], grad[i], k);
    } else if (threadIdx.x >= kVec && threadIdx.x - kVec < tail_n) {
      const size_t i = tail + threadIdx.x - kVec;
      adamw_element(master[i], m[i], v[i], param[i], grad[i], k);
    }
    return;
  }
  for (size_t i = lo + threadIdx.x; i < hi; i += kThreads)
    adamw_element(master[i], m[i], v[i], param[i], grad[i], k);
}

void check_settings(const float* master, const AdamWSettings& s) {
  LSGPT_CHECK(master != nullptr, "the CUDA backend updates f32 master weights; master is null");
  LSGPT_CHECK(s.step >= 1, "AdamW step is 1-based");
}

}  // namespace

void adamw_update(CudaContext& ctx, bf16* param, float* master, const bf16* grad, float* m,
                  float* v, size_t n, const AdamWSettings& s) {
  check_settings(master, s);
  if (n == 0) return;
  launch_kernel(ctx, adamw_kernel, ceil_div((long long)n, 256), 256, 0, param, master, grad, m, v,
                n, coefficients(s));
}

void adamw_update_segments(CudaContext& ctx, bf16* param, float* master, const bf16* grad,
                           float* m, float* v, const AdamWSegment* segments,
                           size_t n_segments, const AdamWSettings& s) {
  check_settings(master, s);
  const AdamWCoefficients k = coefficients(s);
  SegmentTable table{};
  table.vector_ok = aligned16(param) && aligned16(master) && aligned16(grad) && aligned16(m) &&
                    aligned16(v);
  size_t blocks = 0;
  auto launch_table = [&] {
    if (table.count == 0) return;
    LSGPT_CHECK(blocks <= size_t(INT32_MAX), "AdamW over ", blocks, " blocks in one launch");
    launch_kernel(ctx, adamw_segments_kernel, unsigned(blocks), kThreads, 0, param, master, grad, m,
                  v, k, table);
    table.count = 0, blocks = 0;
  };
  for (size_t i = 0; i < n_segments; ++i) {
    const AdamWSegment& seg = segments[i];
    LSGPT_CHECK(seg.begin <= seg.end, "AdamW segment [", seg.begin, ", ", seg.end, ")");
    if (seg.begin == seg.end) continue;
    if (table.count == kMaxSegments) launch_table();
    SegmentArg& a = table.seg[table.count++];
    a.begin = seg.begin, a.end = seg.end, a.first_block = uint32_t(blocks);
    // As adamw_update receives them: the double product, then rounded once.
    a.grad_scale = float(seg.grad_scale), a.weight_decay = float(seg.weight_decay);
    blocks += (seg.end - seg.begin + kChunk - 1) / kChunk;
  }
  launch_table();
}

}  // namespace lsgpt::cuda
