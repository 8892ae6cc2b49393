// The inference engine's two small helpers around the KV cache: the prefill's
// copy of a prompt's keys and values into one cache entry (local heads keep
// only the last local_slots() positions, in ring order), and the decode
// step's embedding of one token per row at that row's own position, read
// from device memory so a captured graph can replay it.
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops.h"

namespace lsgpt::cuda {
namespace {

struct CacheLayout {
  int n_head, head_dim, n_local, slots, max_T, C;
};

// One block per (position, head); 16-byte copies (head_dim is a multiple of 8).
__global__ void kv_cache_write_kernel(bf16* k_local, bf16* v_local, bf16* k_global,
                                      bf16* v_global, const bf16* qkv, int T, int cache_row,
                                      CacheLayout c) {
  wait_for_previous_grid();
  allow_next_grid();
  const int t = blockIdx.x, h = blockIdx.y, hd = c.head_dim;
  const bool local = h < c.n_local;
  if (local && t < T - c.slots) return;  // overwritten later in the ring: skip
  bf16 *k, *v;
  if (local) {
    const size_t head = size_t(cache_row) * c.n_local + h;
    const size_t slot = size_t(t % c.slots);
    k = k_local + (head * c.slots + slot) * hd, v = v_local + (head * c.slots + slot) * hd;
  } else {
    const size_t head = size_t(cache_row) * (c.n_head - c.n_local) + (h - c.n_local);
    k = k_global + (head * c.max_T + t) * hd, v = v_global + (head * c.max_T + t) * hd;
  }
  const bf16* row = qkv + size_t(t) * 3 * c.C + size_t(h) * hd;
  for (int d = threadIdx.x * 8; d < hd; d += blockDim.x * 8) {
    *reinterpret_cast<Bf16x8*>(k + d) = *reinterpret_cast<const Bf16x8*>(row + c.C + d);
    *reinterpret_cast<Bf16x8*>(v + d) = *reinterpret_cast<const Bf16x8*>(row + 2 * c.C + d);
  }
}

__global__ void embedding_decode_kernel(bf16* out, const int32_t* tokens,
                                        const int32_t* positions, const bf16* wte,
                                        const bf16* wpe, int C) {
  wait_for_previous_grid();
  allow_next_grid();
  const int b = blockIdx.x;
  const bf16* tok_row = wte + size_t(tokens[b]) * C;
  const bf16* pos_row = wpe + size_t(max(positions[b], 0)) * C;
  bf16* out_row = out + size_t(b) * C;
  for (int c = threadIdx.x * 8; c < C; c += blockDim.x * 8) {
    const Bf16x8 a = *reinterpret_cast<const Bf16x8*>(tok_row + c);
    const Bf16x8 p = *reinterpret_cast<const Bf16x8*>(pos_row + c);
    Bf16x8 y;
#pragma unroll
    for (int k = 0; k < 8; ++k)
      y.v[k] = __float2bfloat16(__bfloat162float(a.v[k]) + __bfloat162float(p.v[k]));
    *reinterpret_cast<Bf16x8*>(out_row + c) = y;
  }
}

}  // namespace

void kv_cache_write(CudaContext& ctx, bf16* k_local, bf16* v_local, bf16* k_global,
                    bf16* v_global, const bf16* qkv, int T, int cache_row, const DecodeSpec& spec) {
  if (spec.head_dim % 8 != 0) fail("cuda kv_cache_write: head_dim must be a multiple of 8");
  if (T < 0 || T > spec.max_T)
    fail("kv_cache_write: prefill of ", T, " positions into a cache of ", spec.max_T);
  LSGPT_CHECK(cache_row >= 0 && cache_row < spec.cache_entries(), "cache row ", cache_row);
  if (T == 0) return;
  const CacheLayout c{spec.n_head, spec.head_dim, spec.n_local, spec.local_slots(), spec.max_T,
                      spec.C()};
  const dim3 grid(T, spec.n_head);
  launch_kernel(ctx, kv_cache_write_kernel, grid, kWarpSize, 0, k_local, v_local, k_global,
                v_global, qkv, T, cache_row, c);
}

void embedding_decode(CudaContext& ctx, bf16* out, const int32_t* tokens, const int32_t* positions,
                      const bf16* wte, const bf16* wpe, int B, int C) {
  if (C % 8 != 0) fail("cuda embedding_decode: d_model must be a multiple of 8");
  if (B == 0) return;
  launch_kernel(ctx, embedding_decode_kernel, B, 128, 0, out, tokens, positions, wte, wpe, C);
}

}  // namespace lsgpt::cuda
