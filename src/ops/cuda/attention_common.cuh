// Building blocks shared by the attention kernels: bf16 tensor-core MMA
// (mma.sync m16n8k16, sm_80+), ldmatrix fragment loads, cp.async tile copies
// with zero fill past the sequence end, and the LS mask. Register fragments
// follow the PTX ISA layout for m16n8k16: lane = 4 * group + quad_index; an
// accumulator tile holds rows (group, group + 8), columns 2*quad_index + {0,1}.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/error.h"
#include "ops/attention_spec.h"
#include "ops/cuda/attention_mask_columns.h"
#include "ops/cuda/device_utils.cuh"  // kLog2e, kWarpSize

namespace lsgpt::cuda::attn {

constexpr int kThreads = 128;  // 4 warps; every attention kernel uses this block size

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// At a shared-memory address (smem_address), or at a pointer into shared memory.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t smem_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  ldmatrix_x4(r, smem_address(p));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}

// 16-byte global -> shared copy; src_bytes 0 fills the destination with zeros.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)),
               "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ float2 unpack_bf16x2(uint32_t v) {
  __nv_bfloat162 b = *reinterpret_cast<__nv_bfloat162*>(&v);
  return __bfloat1622float2(b);
}

// A operand (16 x 16, row-major) at (row0, col0) of a shared tile with `stride` elements a row.
template <int kStride>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const __nv_bfloat16* tile, int row0,
                                       int col0, int lane) {
  ldmatrix_x4(a, tile + (row0 + (lane & 15)) * kStride + col0 + (lane >> 4) * 8);
}

// B operands of two n8 blocks for X Y^T: Y's rows n0..n0+15 are the n index,
// its columns k0..k0+15 the k index. b[0..1]: block n0, b[2..3]: block n0 + 8.
template <int kStride>
__device__ __forceinline__ void load_b_rows(uint32_t (&b)[4], const __nv_bfloat16* tile, int n0,
                                            int k0, int lane) {
  ldmatrix_x4(b, tile + (n0 + (lane & 7) + ((lane >> 4) << 3)) * kStride + k0 +
                     ((lane >> 3) & 1) * 8);
}

// B operands of two n8 blocks for X Y: Y's rows k0..k0+15 are the k index,
// its columns n0..n0+15 the n index. b[0..1]: block n0, b[2..3]: block n0 + 8.
template <int kStride>
__device__ __forceinline__ void load_b_cols(uint32_t (&b)[4], const __nv_bfloat16* tile, int k0,
                                            int n0, int lane) {
  ldmatrix_x4_trans(b, tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * kStride + n0 +
                           (lane >> 4) * 8);
}

// Copies rows [row0, row0 + kRows) of one head's columns into a shared tile of
// width D (the padded head dimension); rows at or past T and columns at or past
// `cols` (the real head dimension, a multiple of 8) are zero, so masked and
// padded products stay finite and padded columns add nothing.
template <int kRows, int D, int kStride>
__device__ __forceinline__ void load_tile_async(__nv_bfloat16* tile, const __nv_bfloat16* head_base,
                                                size_t row_stride, int row0, int T, int cols) {
  constexpr int kChunksPerRow = D / 8;
  for (int c = threadIdx.x; c < kRows * kChunksPerRow; c += kThreads) {
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    const int t = row0 + r;
    const bool valid = t < T && col < cols;
    const __nv_bfloat16* src = head_base + (valid ? size_t(t) * row_stride + col : 0);
    cp_async_16(tile + r * kStride + col, src, valid ? 16 : 0);
  }
}

// The LS mask: query i sees key j iff j <= i, and j > i - window on local heads.
struct HeadMask {
  bool local;
  int window;
  __device__ __forceinline__ bool visible(int i, int j) const {
    return j <= i && (!local || j > i - window);
  }
  // Whether some (query in [i0, i0 + rows), key in [j0, j0 + cols)) pair is masked.
  __device__ __forceinline__ bool tile_needs_mask(int i0, int rows, int j0, int cols) const {
    return j0 + cols - 1 > i0 || (local && i0 + rows - 1 - j0 >= window);
  }
  // The same for one warp's share of an m16n8 score tile: queries
  // [i0, i0 + 16), keys [j0, j0 + 8). The ws forward's consumers test it
  // before masking an n8 block element by element, and skip the blocks the
  // mask leaves whole (blocks it hides whole are still masked element by
  // element): on a local head of w 100, most of the band's interior. 0-5%
  // faster there (H200, 2026-12-01). The same test made the backward's key
  // and query steps 15-22% slower on local heads (their masks sit among the
  // exponentials and the products), and the base forward four registers
  // larger (100: four blocks a multiprocessor instead of five) for no gain:
  // neither uses it. i0 must be warp-uniform to ptxas where a wgmma is in
  // flight, or the branch serializes the wgmma pipeline.
  __device__ __forceinline__ bool n8_block_needs_mask(int i0, int j0) const {
    return tile_needs_mask(i0, 16, j0, 8);
  }
  // One fragment row's visible columns (attention_mask_columns.h): of key
  // `key`'s row in S^T (queries from base, below T), of query `query`'s row
  // in S (keys from base).
  __device__ __forceinline__ VisibleColumns queries_seeing(int key, int T, int base) const {
    return queries_seeing_key(local, window, key, T, base);
  }
  __device__ __forceinline__ VisibleColumns keys_seen_by(int query, int base) const {
    return keys_seen_by_query(local, window, query, base);
  }
};

// Span settings of one call, in the form the kernels use.
struct SpanArgs {
  bool q, k, v;                 // which gradients are rewritten
  bool q_cross, k_cross;        // basis: cross (kbar / qbar) or self
  float q_par, q_perp, k_par, k_perp, v_par, v_perp;
};

inline SpanArgs make_span_args(const SpanLayer& s) {
  SpanArgs a{};
  a.q = s.q.enabled, a.k = s.k.enabled, a.v = s.v.enabled;
  a.q_cross = s.q.basis == SpanBasis::cross, a.k_cross = s.k.basis == SpanBasis::cross;
  a.q_par = float(s.q.alpha_par), a.q_perp = float(s.q.alpha_perp);
  a.k_par = float(s.k.alpha_par), a.k_perp = float(s.k.alpha_perp);
  a.v_par = float(s.v.alpha_par), a.v_perp = float(s.v.alpha_perp);
  return a;
}

// g' = alpha_perp * g + (alpha_par - alpha_perp) * (g.u / u.u) u for one row
// spread over the 4 lanes of a quad (each holding `kCount` of its elements);
// unchanged when u.u <= 1e-12 (1 + g.g).
template <int kCount>
__device__ __forceinline__ void project_row(float (&g)[kCount], const float (&u)[kCount],
                                            float alpha_par, float alpha_perp) {
  float gu = 0.f, uu = 0.f, gg = 0.f;
#pragma unroll
  for (int e = 0; e < kCount; ++e) gu += g[e] * u[e], uu += u[e] * u[e], gg += g[e] * g[e];
#pragma unroll
  for (int offset = 1; offset <= 2; offset <<= 1) {
    gu += __shfl_xor_sync(0xffffffffu, gu, offset);
    uu += __shfl_xor_sync(0xffffffffu, uu, offset);
    gg += __shfl_xor_sync(0xffffffffu, gg, offset);
  }
  if (!(uu > 1e-12f * (1.0f + gg))) return;  // NaN-safe, as the CPU version
  const float coef = (alpha_par - alpha_perp) * gu / uu;
#pragma unroll
  for (int e = 0; e < kCount; ++e) g[e] = alpha_perp * g[e] + coef * u[e];
}

// The kernels are instantiated for padded head dimensions 32, 64 and 128;
// any real head dimension that is a multiple of 8 up to 128 runs on the
// smallest one that holds it (8 x 16-byte copies per row at most).
inline int padded_head_dim(int head_dim) { return head_dim <= 32 ? 32 : head_dim <= 64 ? 64 : 128; }

inline void check_head_dim(int head_dim, const char* op) {
  if (head_dim < 8 || head_dim > 128 || head_dim % 8 != 0)
    fail("cuda ", op, ": head_dim ", head_dim,
         " is not supported by the attention kernels (a multiple of 8 up to 128; "
         "64 and 128 are the tuned sizes)");
}

// LSGPT_ATTENTION_SM80=1 keeps the sm_80 kernels (forward and backward) on
// a compute capability 9.0 GPU: the parity reference, and the way back if a
// wgmma kernel misbehaves. Read at every call so a test or benchmark can
// switch; 0 or unset is the default, any other value an error.
// Defined in attention_forward.cu.
bool sm80_forced();

// Tiles are copied in 16-byte pieces; outputs are written as bf16 pairs.
inline void check_alignment(const void* p, unsigned bytes, const char* what, const char* op) {
  if (p && (reinterpret_cast<uintptr_t>(p) % bytes) != 0)
    fail("cuda ", op, ": ", what, " must be ", bytes, "-byte aligned");
}

}  // namespace lsgpt::cuda::attn
