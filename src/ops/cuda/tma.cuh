// Hopper (sm_90a) building blocks of warp-specialised kernels: TMA tile
// loads (cp.async.bulk.tensor) that complete on an mbarrier and TMA tile
// stores in bulk groups, the mbarrier operations of a producer/consumer
// pipeline, named barriers for a subset of the block's warps, and
// setmaxnreg (PTX ISA: "Tensor Copy", "mbarrier",
// "bar", "setmaxnreg"). Used by attention_forward_sm90_ws.cu and
// attention_backward_sm90_ws.cu.
//
// Pipeline protocol (as CUTLASS's PipelineTmaAsync): stage s has a `full`
// barrier (the producer's arrive.expect_tx with the bytes its TMA copies
// will deliver; in the backward's query-tile walks the producer warp's
// lane 0 registers the bytes with expect_tx before it issues the copies,
// and all 32 lanes arrive after their plain stores into the stage of lse
// and delta) and an `empty` barrier
// (one arrival per consumer thread once it no longer reads the stage). The
// n-th use of a stage (n = 0, 1, ...) is phase n of its barriers: consumers
// wait on `full` for parity n & 1; the producer, before the n-th refill
// (n >= 1), waits on `empty` for parity (n - 1) & 1.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "ops/cuda/wgmma.cuh"

namespace lsgpt::cuda::attn {

#if LSGPT_SM90A_DEVICE

__device__ __forceinline__ void mbarrier_init(uint64_t* bar, int arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(arrivals)
               : "memory");
}
// Makes initialised barriers visible to the async proxy (the TMA unit
// completes transactions on them); a block barrier must follow.
__device__ __forceinline__ void fence_mbarrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_address(bar)),
               "r"(bytes)
               : "memory");
}
// The transaction bytes of the current phase, without an arrival (the
// thread arrives later, after stores of its own the phase also covers).
// The caller's own arrival must still be pending in this phase: that is
// what keeps the phase from completing before the bytes are registered.
__device__ __forceinline__ void mbarrier_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.expect_tx.shared::cta.b64 [%0], %1;\n" ::"r"(
                   smem_address(bar)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_address(bar)) : "memory");
}
// The hardware's wait of one try_wait, in nanoseconds: a thread whose
// phase is not complete is suspended until it completes or this long has
// passed (PTX ISA "mbarrier.try_wait", suspendTimeHint; CUTLASS's
// ClusterBarrier::wait passes the same 10 ms). Without the hint each try
// returns after a short system-dependent time, and the retry loop issued
// instructions: the ws forward's producer thread, waiting on `empty` most of
// its life, executed 6.5 million instructions of retries a launch (9% of
// the kernel's, MHSA D 128 T 1k, Nsight Compute, H200, 2026-12-01) in the
// issue slots of the consumer warps that share its scheduler.
constexpr uint32_t kMbarrierSuspendNs = 10'000'000;

// Whether the phase of `bar` with this parity has completed, after
// waiting up to kMbarrierSuspendNs for it.
__device__ __forceinline__ bool mbarrier_try_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2, %3;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(smem_address(bar)), "r"(parity), "r"(kMbarrierSuspendNs)
      : "memory");
  return done != 0;
}

__device__ __forceinline__ uint64_t globaltimer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}

// How long a wait may last before it counts as lost: far beyond any real
// wait (a stage waits for one tile's products, a Q stage for one work
// item's), so a missing arrival or a transaction count that never completes
// (a bug) traps, which the host sees as a launch failure, instead of
// hanging the process. Measured on the clock rather than in tries, since a
// try lasts anything up to kMbarrierSuspendNs; so a debugger that holds the
// kernel longer than this makes it trap when it resumes.
constexpr int64_t kMbarrierTimeoutNs = 60'000'000'000ll;

// Returns once the phase of `bar` with this parity has completed.
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  if (mbarrier_try_wait(bar, parity)) return;
  const uint64_t start = globaltimer_ns();
  // Signed: a clock that steps back (%globaltimer is not promised to be
  // monotonic) must not look like a long wait.
  while (!mbarrier_try_wait(bar, parity))
    if (int64_t(globaltimer_ns() - start) > kMbarrierTimeoutNs) __trap();
}

// One box of a 4-d tensor map (a __grid_constant__ kernel parameter) into
// shared memory at coordinates (c0 innermost); the copy's bytes count
// toward `bar`'s transaction; out-of-bounds elements are written as zeros.
__device__ __forceinline__ void tma_load_4d(void* dst, const void* tensor_map, uint64_t* bar,
                                            int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5, %6}], [%2];\n" ::"r"(smem_address(dst)),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(smem_address(bar)), "r"(c0), "r"(c1),
      "r"(c2), "r"(c3)
      : "memory");
}

// One swizzled tile (D / 64 panels of kTileRows rows, 128-byte swizzle) of
// a head tensor map (tma_map.h: columns, head slot, row, batch row) from
// row r0 of head slot `slot`, batch row b; rows past the tensor are zeros.
template <int D, int kTileRows>
__device__ __forceinline__ void tma_load_head_tile(unsigned char* dst, const CUtensorMap* map,
                                                   uint64_t* bar, int slot, int r0, int b) {
#pragma unroll
  for (int panel = 0; panel < D / kPanelCols; ++panel)
    tma_load_4d(dst + panel * kTileRows * kSwizzleRowBytes, map, bar, panel * kPanelCols, slot, r0,
                b);
}

// One box of shared memory (a 4-d tensor map's box, in its swizzle) to
// global memory at coordinates (c0 innermost), as one bulk async-group
// operation of this thread; elements past the tensor's bounds are not
// written. The box must have been written before, with
// fence_proxy_async_shared in each writing thread and a barrier after.
__device__ __forceinline__ void tma_store_4d(const void* tensor_map, const void* src, int c0,
                                             int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
          reinterpret_cast<uint64_t>(tensor_map)),
      "r"(smem_address(src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
// Closes this thread's bulk operations issued so far into one group.
__device__ __forceinline__ void bulk_commit_group() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
// Returns once at most kPending of this thread's committed groups still
// read their shared memory (which may then be written again or freed).
template <int kPending>
__device__ __forceinline__ void bulk_wait_group_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(kPending) : "memory");
}

// bar.sync on barrier kId (1..15; 0 is __syncthreads) by kCount threads, a
// multiple of the warp size: syncs a subset of the block's warps. The id is
// a constant so that ptxas reserves only the barriers used.
template <int kId, int kCount>
__device__ __forceinline__ void named_barrier_sync() {
  static_assert(kId > 0 && kId < 16 && kCount % 32 == 0, "bar.sync id 1..15, whole warps");
  asm volatile("bar.sync %0, %1;\n" ::"n"(kId), "n"(kCount) : "memory");
}

// The same with the id in a register (one barrier per consumer warpgroup,
// its index known at run time); ptxas then reserves all 16.
template <int kCount>
__device__ __forceinline__ void named_barrier_sync(int id) {
  static_assert(kCount % 32 == 0, "whole warps");
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(kCount) : "memory");
}

// bar.arrive on barrier `id` expecting kCount threads in all: this warp
// counts toward it without waiting; the barrier completes once the
// threads that bar.sync on it have arrived too (a producer-consumer pair
// of warpgroups: one arrives, the other waits).
template <int kCount>
__device__ __forceinline__ void named_barrier_arrive(int id) {
  static_assert(kCount % 32 == 0, "whole warps");
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "n"(kCount) : "memory");
}

#endif  // LSGPT_SM90A_DEVICE

// Registers a block of `threads` threads holds from its launch under
// __launch_bounds__(threads, 1): ptxas's per-thread count (the register
// file over the threads, at most 255) in the hardware's 8-register steps.
// setmaxnreg only moves registers within this pool: a policy that asks
// its warpgroups for more would make setmaxnreg.inc wait forever.
constexpr int launch_register_pool(int threads) {
  const int per_thread = (64 * 1024 / threads) / 8 * 8;
  return (per_thread > 256 ? 256 : per_thread) * threads;
}

#if LSGPT_SM90A_DEVICE

// The warpgroup's registers per thread from here on (every thread of the
// warpgroup executes it): a producer gives registers back, consumers take them.
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  static_assert(kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0,
                "setmaxnreg: 24..256, multiple of 8");
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  static_assert(kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0,
                "setmaxnreg: 24..256, multiple of 8");
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

#endif  // LSGPT_SM90A_DEVICE

}  // namespace lsgpt::cuda::attn
