// Hopper (sm_90a) building blocks shared by the wgmma attention kernels
// (attention_forward_sm90.cu, attention_backward_sm90.cu): warpgroup MMA
// (wgmma.mma_async m64nNk16, bf16 in, f32 accumulate) with its fences,
// shared-memory matrix descriptors for the 128-byte swizzle, and cp.async
// copies of head tiles into that swizzled layout (PTX ISA, "Asynchronous
// Warpgroup Level Matrix Multiply-Accumulate"). A warpgroup is the block's
// 4 warps; every thread of it executes each wgmma helper.
//
// Accumulator layout of m64nN (as mma.sync m16n8 per warp): warp w holds
// rows 16w + group and 16w + group + 8 (group = lane / 4); element 4j + e is
// n8 block j, column 2 (lane % 4) + (e & 1), the second row when e >= 2. The
// A register fragment of an m64k16 slice is the accumulator of two n8 blocks
// rounded to bf16 pairs (a_fragments), as in FlashAttention-3.
//
// Tiles of rows x D (D 64 or 128) are stored as D / 64 panels of rows x 64
// bf16, each row 128 bytes, in the 128-byte swizzle: the 16-byte chunk c of
// row r sits at chunk c ^ (r % 8) (Swizzle<3,4,3> on byte addresses). Every
// panel starts 1024-byte aligned (one swizzle atom, 8 rows), so the
// descriptors' base offset is 0.
//
// The device code exists only in the sm_90a compilation
// (LSGPT_SM90A_DEVICE); kernels built from it carry a trapping body in the
// compute_80 PTX, and the host checks the loaded binary before launching.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/device_utils.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LSGPT_SM90A_DEVICE 1
#else
#define LSGPT_SM90A_DEVICE 0
#endif

namespace lsgpt::cuda::attn {

constexpr int kSwizzleRowBytes = 128;
constexpr int kAtomBytes = 8 * kSwizzleRowBytes;   // 8 rows: the swizzle period
constexpr int kPanelCols = kSwizzleRowBytes / 2;  // bf16 columns of one panel

// Bytes of a swizzled rows x D bf16 tile (a multiple of kAtomBytes).
template <int kRows, int D>
constexpr int sw128_tile_bytes() {
  static_assert(kRows % 8 == 0 && D % kPanelCols == 0, "whole swizzle atoms only");
  return kRows * D * 2;
}

#if LSGPT_SM90A_DEVICE

// The first swizzle-atom-aligned byte of a dynamic shared memory window
// (kernels reserve kAtomBytes extra for this).
__device__ __forceinline__ unsigned char* align_to_atom(unsigned char* smem_raw) {
  const uint32_t raw_addr = smem_address(smem_raw);
  return smem_raw + ((kAtomBytes - (raw_addr % kAtomBytes)) % kAtomBytes);
}

// Orders this thread's earlier register and shared-memory accesses before
// the wgmma reads that follow (accumulators rescaled, fragments packed).
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Pins accumulator registers at this point of the program: the compiler may
// not move their reads or writes across it (no data dependence ties them to
// the fence/wait instructions otherwise).
template <int N>
__device__ __forceinline__ void fence_operands(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// Starts new, undefined values in accumulator registers that the next
// wgmma overwrites (its first k-step's scale-d 0): no instruction, unlike
// clearing them (one a register, 32 to 64 a tile), and unlike leaving them
// as they are, it ends the old values' live ranges, which the wgmma's
// read-write operands would otherwise carry across the loop (the ws
// backward at D 128 then spilled 384 to 828 bytes).
template <int N>
__device__ __forceinline__ void discard_operands(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "=f"(d[i])::"memory");
}
// Shared memory written by ordinary stores, stmatrix or cp.async (generic
// proxy) and read next by wgmma or a TMA store (async proxy) needs this in
// each writing thread before the barrier.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// One step of a double-buffered tile walk: starts the copy of the next tile
// into the other stage (when there is one: has_next, prefetch_next issues
// its cp.async copies), then waits for this tile's copies and makes every
// thread's visible to wgmma. The caller's barrier at the end of the step
// keeps the next prefetch off the stage still being read.
template <typename Prefetch>
__device__ __forceinline__ void prefetch_then_wait(bool has_next, Prefetch&& prefetch_next) {
  if (has_next) {
    prefetch_next();
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  fence_proxy_async_shared();  // cp.async wrote what wgmma reads next
  __syncthreads();
}

// Shared-memory matrix descriptor (PTX ISA "Matrix Descriptor Format"):
// bits 0-13 start address >> 4, 16-29 leading-dimension byte offset >> 4,
// 32-45 stride-dimension byte offset >> 4, 49-51 base offset (0: every
// swizzle atom starts 1024-byte aligned), 62-63 layout (1: 128-byte swizzle).
__device__ __forceinline__ uint64_t sw128_descriptor(uint32_t smem_addr, uint32_t leading_bytes,
                                                     uint32_t stride_bytes) {
  return uint64_t((smem_addr & 0x3FFFF) >> 4) | uint64_t((leading_bytes >> 4) & 0x3FFF) << 16 |
         uint64_t((stride_bytes >> 4) & 0x3FFF) << 32 | uint64_t(1) << 62;
}

// The descriptor of the operand `bytes` further on (a multiple of 16; the
// address stays below 256 KiB, as every shared-memory address does): only
// the start-address field moves, so one 32-bit add on the low word, as
// CUTLASS's GmmaDescriptor steps; a tile's descriptor is built once and
// each k-step adds a constant. Built from each k-step's address instead,
// the descriptors were the likely source of the ws forward's 112 (D 64)
// and 143 (D 128) uniform-datapath instructions a warp per 64 x 64 tile,
// against cuDNN's 20 (Nsight Compute, H200, 2026-12-01). With the add
// (and accumulators discarded rather than cleared) the forward ran 0-7%
// faster and forward+backward 0-4.5% (same-run A/B, docs/CUDA.md).
__device__ __forceinline__ uint64_t descriptor_plus(uint64_t desc, uint32_t bytes) {
  uint32_t lo, hi;
  asm("mov.b64 {%0, %1}, %2;" : "=r"(lo), "=r"(hi) : "l"(desc));
  lo += bytes >> 4;
  uint64_t moved;
  asm("mov.b64 %0, {%1, %2};" : "=l"(moved) : "r"(lo), "r"(hi));
  return moved;
}

// K-major operand (kRows x D, D the reduction index), k16 step kc: the
// 16-column slice starts 32 bytes further in its 128-byte row (the hardware
// applies the swizzle to the address it forms); 8-row groups are an atom
// (1024 bytes) apart; the leading offset is unused with 128-byte swizzle.
template <int kRows>
__device__ __forceinline__ uint64_t k_major_descriptor(uint32_t tile, int kc) {
  return descriptor_plus(sw128_descriptor(tile, 16, kAtomBytes),
                         (kc / 4) * (kRows * kSwizzleRowBytes) + (kc % 4) * 32);
}

// N-major B operand (a kRows x D tile whose rows are the k index and whose
// D columns, contiguous, are the n index: V in O += P V), k16 step kc = 16
// rows further; the leading offset steps between 64-column panels, the
// stride offset between 8-row groups.
template <int kRows>
__device__ __forceinline__ uint64_t n_major_descriptor(uint32_t tile, int kc) {
  return descriptor_plus(sw128_descriptor(tile, kRows * kSwizzleRowBytes, kAtomBytes),
                         kc * 16 * kSwizzleRowBytes);
}

// How an operand tile in shared memory is laid out: K-major (the reduction
// index contiguous, as k_major_descriptor reads it) or MN-major (transposed:
// the m index contiguous for A, the n index for B, as n_major_descriptor
// reads it). The value is wgmma's imm-trans-a / imm-trans-b.
enum class Major : int { K = 0, MN = 1 };

// The accumulator operands of an m64nN wgmma (N / 2 registers, read and
// written), spelled once: LSGPT_WGMMA_ACC<n>(d) lists d[0] .. d[n - 1] as
// asm operands 0 .. n - 1, LSGPT_WGMMA_REGS<n> their list in the
// instruction; the operands after them are numbered from n.
#define LSGPT_WGMMA_ACC8(d, i)                                                         \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), \
      "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define LSGPT_WGMMA_ACC16(d, i) LSGPT_WGMMA_ACC8(d, i), LSGPT_WGMMA_ACC8(d, i + 8)
#define LSGPT_WGMMA_ACC32(d, i) LSGPT_WGMMA_ACC16(d, i), LSGPT_WGMMA_ACC16(d, i + 16)
#define LSGPT_WGMMA_ACC64(d) LSGPT_WGMMA_ACC32(d, 0), LSGPT_WGMMA_ACC32(d, 32)
#define LSGPT_WGMMA_REGS8 "%0, %1, %2, %3, %4, %5, %6, %7"
#define LSGPT_WGMMA_REGS16 LSGPT_WGMMA_REGS8 ", %8, %9, %10, %11, %12, %13, %14, %15"
#define LSGPT_WGMMA_REGS32                                            \
  LSGPT_WGMMA_REGS16 ", %16, %17, %18, %19, %20, %21, %22, %23, " \
                     "%24, %25, %26, %27, %28, %29, %30, %31"
#define LSGPT_WGMMA_REGS64                                            \
  LSGPT_WGMMA_REGS32 ", %32, %33, %34, %35, %36, %37, %38, %39, " \
                     "%40, %41, %42, %43, %44, %45, %46, %47, "   \
                     "%48, %49, %50, %51, %52, %53, %54, %55, "   \
                     "%56, %57, %58, %59, %60, %61, %62, %63"

// D[64 x N] += A[64 x 16] B[16 x N], A in registers, B N-major (transposed)
// in shared memory.
template <int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4],
                                         uint64_t desc_b);

// D[64 x N] (+)= A[64 x 16] B[16 x N], A and B in shared memory, laid out
// as kA and kB say; accumulate 0 overwrites D. One overload per N (16, 32,
// 64), picked by the accumulator's size; the layouts are "n" operands, so
// the PTX is what literal flags would give.
template <int N, Major kA = Major::K, Major kB = Major::K>
__device__ __forceinline__ void wgmma_ss(float (&d)[8], uint64_t desc_a, uint64_t desc_b,
                                         int accumulate) {
  static_assert(N == 16, "N / 2 accumulator registers");
  asm volatile(
      "{\n.reg .pred p;\n"
      "setp.ne.b32 p, %10, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
      "{" LSGPT_WGMMA_REGS8 "}, %8, %9, p, 1, 1, %11, %12;\n}\n"
      : LSGPT_WGMMA_ACC8(d, 0)
      : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(int(kA)), "n"(int(kB)));
}

template <int N, Major kA = Major::K, Major kB = Major::K>
__device__ __forceinline__ void wgmma_ss(float (&d)[16], uint64_t desc_a, uint64_t desc_b,
                                         int accumulate) {
  static_assert(N == 32, "N / 2 accumulator registers");
  asm volatile(
      "{\n.reg .pred p;\n"
      "setp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{" LSGPT_WGMMA_REGS16 "}, %16, %17, p, 1, 1, %19, %20;\n}\n"
      : LSGPT_WGMMA_ACC16(d, 0)
      : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(int(kA)), "n"(int(kB)));
}

template <int N, Major kA = Major::K, Major kB = Major::K>
__device__ __forceinline__ void wgmma_ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                         int accumulate) {
  static_assert(N == 64, "N / 2 accumulator registers");
  asm volatile(
      "{\n.reg .pred p;\n"
      "setp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{" LSGPT_WGMMA_REGS32 "}, %32, %33, p, 1, 1, %35, %36;\n}\n"
      : LSGPT_WGMMA_ACC32(d, 0)
      : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(int(kA)), "n"(int(kB)));
}

template <>
__device__ __forceinline__ void wgmma_rs<64>(float (&d)[32], const uint32_t (&a)[4],
                                            uint64_t desc_b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{" LSGPT_WGMMA_REGS32 "}, {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
      : LSGPT_WGMMA_ACC32(d, 0)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}

template <>
__device__ __forceinline__ void wgmma_rs<128>(float (&d)[64], const uint32_t (&a)[4],
                                            uint64_t desc_b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{" LSGPT_WGMMA_REGS64 "}, {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
      : LSGPT_WGMMA_ACC64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}

// D[64 x 64] (+)= A[64 x 16] B[16 x 64], A in registers, B K-major in
// shared memory (S = Q K^T with Q's fragments held); accumulate 0
// overwrites D.
__device__ __forceinline__ void wgmma_rs_k_major_n64(float (&d)[32], const uint32_t (&a)[4],
                                                    uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\n"
      "setp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{" LSGPT_WGMMA_REGS32 "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
      : LSGPT_WGMMA_ACC32(d, 0)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
}

#undef LSGPT_WGMMA_ACC8
#undef LSGPT_WGMMA_ACC16
#undef LSGPT_WGMMA_ACC32
#undef LSGPT_WGMMA_ACC64
#undef LSGPT_WGMMA_REGS8
#undef LSGPT_WGMMA_REGS16
#undef LSGPT_WGMMA_REGS32
#undef LSGPT_WGMMA_REGS64

// Where 16-byte chunk `chunk` (0..7) of row `row` of a swizzled panel sits,
// in bytes from the panel's start: chunk c of row r at c ^ (r % 8) (the
// top of this file). row8 = row % 8, where the caller has it as a value of
// its own (the compiler does not see that it equals row & 7).
__device__ __forceinline__ uint32_t sw128_offset(int row, int chunk, int row8) {
  return row * kSwizzleRowBytes + ((chunk ^ row8) << 4);
}
__device__ __forceinline__ uint32_t sw128_offset(int row, int chunk) {
  return sw128_offset(row, chunk, row & 7);
}

// The A fragments of k16 slice kc of a kRows x D K-major tile in the
// 128-byte swizzle (Q), for this thread's warp of the warpgroup (rows 16
// warp .. 16 warp + 15): ldmatrix x4, lane l naming row l % 16 and the
// slice's first (l < 16) or second 16-byte chunk. Issued after the wait
// that makes the tile's copy visible, and ordered with it and with the
// release after it as volatile asm (ldmatrix_x4).
template <int kRows>
__device__ __forceinline__ void load_a_fragments_sw128(uint32_t (&a)[4], uint32_t tile, int kc,
                                                       int warp, int lane) {
  const int row = 16 * warp + (lane & 15);
  const int chunk = 2 * (kc % 4) + (lane >> 4);
  ldmatrix_x4(a, tile + (kc / 4) * (kRows * kSwizzleRowBytes) + sw128_offset(row, chunk));
}

// The A fragments (one per k16 slice) of the m64 x N accumulator s rounded
// to bf16: slice kc is the accumulator's n8 blocks 2 kc and 2 kc + 1.
template <int N>
__device__ __forceinline__ void a_fragments(uint32_t (&a)[N / 16][4], const float (&s)[N / 2]) {
#pragma unroll
  for (int kc = 0; kc < N / 16; ++kc) {
    a[kc][0] = pack_bf16x2(s[8 * kc + 0], s[8 * kc + 1]);
    a[kc][1] = pack_bf16x2(s[8 * kc + 2], s[8 * kc + 3]);
    a[kc][2] = pack_bf16x2(s[8 * kc + 4], s[8 * kc + 5]);
    a[kc][3] = pack_bf16x2(s[8 * kc + 6], s[8 * kc + 7]);
  }
}

// Stores k16 slice kc of an m64 x D accumulator, as bf16 pairs in A
// fragment order (a_fragments: n8 blocks 2 kc and 2 kc + 1), into a
// swizzled kRows x D tile (panels of 64 columns): element (m, n) at tile
// row m, column n. Register j is the 8 x 8 block of rows 16 warp + 8 (j & 1),
// columns 16 kc + 8 (j >> 1), which stmatrix writes as 8 rows of 16 bytes;
// lane 8 j + i names row i of block j. Every thread of the warpgroup calls
// it (the ws forward's epilogue stages O this way for a TMA store).
template <int kRows>
__device__ __forceinline__ void store_fragment_sw128(uint32_t tile, int kc,
                                                     const uint32_t (&a)[4], int warp, int lane) {
  const int j = lane >> 3, i = lane & 7;
  const int row = 16 * warp + 8 * (j & 1) + i;  // row % 8 == i
  const int chunk = 2 * (kc % 4) + (j >> 1);
  const uint32_t addr =
      tile + (kc / 4) * (kRows * kSwizzleRowBytes) + sw128_offset(row, chunk, i);
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr),
               "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3])
               : "memory");
}

// Stores the transpose of an m64 x N accumulator, already in A fragments
// (a_fragments), as bf16 into a swizzled tile of N rows x 64 columns (one
// panel): accumulator element (m, n) lands at tile row n, column m. Each
// fragment register is an 8 x 8 block (rows 16 w + 8 (j & 1), columns
// 16 kc + 8 (j >> 1) for register j), which stmatrix .trans writes as 8 rows
// of 16 bytes; lane 8 j + i names row i of block j. Every thread of the
// warpgroup calls it.
template <int N>
__device__ __forceinline__ void store_transposed_sw128(uint32_t tile,
                                                       const uint32_t (&a)[N / 16][4]) {
  const int lane = threadIdx.x % kWarpSize, warp = (threadIdx.x / kWarpSize) % 4;
  const int j = lane >> 3, i = lane & 7;
  const int chunk = 2 * warp + (j & 1);  // the 8 columns m of block j
#pragma unroll
  for (int kc = 0; kc < N / 16; ++kc) {
    const int row = 16 * kc + 8 * (j >> 1) + i;  // row % 8 == i
    const uint32_t addr = tile + sw128_offset(row, chunk, i);
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(
                     addr),
                 "r"(a[kc][0]), "r"(a[kc][1]), "r"(a[kc][2]), "r"(a[kc][3])
                 : "memory");
  }
}

// Copies rows [row0, row0 + kRows) of one head into a swizzled tile (see
// the top of this file). Rows at or past T and columns at or past `cols`
// (the real head dim) are zero, so masked and padded products stay finite
// and padded columns add nothing. kLoaders threads share the copy, `thread`
// being this one's index among them: the block's 128 by default; one
// warpgroup's, or all 256 of a two-warpgroup block, in the backward's wg2.
template <int kRows, int D, int kLoaders = kThreads>
__device__ __forceinline__ void load_tile_sw128(__nv_bfloat16* tile, const __nv_bfloat16* head_base,
                                                size_t row_stride, int row0, int T, int cols,
                                                int thread = threadIdx.x) {
  constexpr int kChunksPerRow = D / 8;
  for (int c = thread; c < kRows * kChunksPerRow; c += kLoaders) {
    const int r = c / kChunksPerRow, chunk = c % kChunksPerRow, col = chunk * 8;
    const int t = row0 + r;
    const bool valid = t < T && col < cols;
    const __nv_bfloat16* src = head_base + (valid ? size_t(t) * row_stride + col : 0);
    // The swizzle of sw128_offset, in elements (in bytes the SASS differed).
    __nv_bfloat16* dst =
        tile + (chunk / 8) * (kRows * kPanelCols) + r * kPanelCols + ((chunk % 8) ^ (r % 8)) * 8;
    cp_async_16(dst, src, valid ? 16 : 0);
  }
}

#endif  // LSGPT_SM90A_DEVICE

}  // namespace lsgpt::cuda::attn
