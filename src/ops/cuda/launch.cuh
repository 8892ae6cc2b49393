// Kernel launches with programmatic dependent launch (PDL, Hopper and newer).
//
// A kernel launched on a stream normally starts only after the kernel before
// it has finished and flushed its writes: between the two the GPU sits idle
// for the launch's latency and the first kernel's last, partly empty wave.
// With PDL the next kernel's blocks are scheduled while the previous kernel
// still runs and wait in `griddepcontrol.wait` until it has completed and its
// memory is visible (CUDA Programming Guide, "Programmatic Dependent Launch
// and Synchronization"). A GPT-2 small training step is ~330 launches.
//
// The contract every kernel launched through `launch_kernel` keeps:
// - its first statement is `wait_for_previous_grid()`, in every thread,
//   before any global memory access and before any early return. A block
//   that returned without waiting could let the grid finish before the
//   kernel it depends on, and a kernel after it would then start too early;
// - `allow_next_grid()` may follow at once: the next kernel's blocks are
//   only scheduled once every block of this one has started, and they wait
//   for this grid's completion themselves.
// Kernels built for an architecture without griddepcontrol (the compute_80
// PTX, JIT-compiled on a newer GPU) compile both calls to nothing, so
// `launch_kernel` asks for PDL only for kernels whose code was compiled for
// sm_90 or newer (cudaFuncAttributes::ptxVersion). LSGPT_PDL=0 turns it off
// (A/B timing, and a way out should a driver misbehave); 1, the default,
// leaves it on; any other value is refused when the backend starts.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/cuda_context.h"

namespace lsgpt::cuda {

// Waits until the grid this one was launched after has completed and its
// writes are visible; a no-op when the kernel was launched without PDL.
__device__ __forceinline__ void wait_for_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel on the stream be scheduled before this one ends.
__device__ __forceinline__ void allow_next_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// A failed launch: lsgpt::Error naming the kernel (its mangled name) and
// the driver's message.
[[noreturn]] inline void fail_launch(const void* kernel, cudaError_t err) {
  const char* name = nullptr;
  if (cudaFuncGetName(&name, kernel) != cudaSuccess || !name) name = "(unnamed)";
  fail("CUDA error launching kernel ", name, ": ", cudaGetErrorString(err));
}

// kernel<<<grid, block, smem_bytes, ctx.stream()>>>(args...), with PDL where
// the kernel and the GPU support it (ctx.dependent_launch). Errors in the
// launch configuration are reported here as lsgpt::Error.
template <typename... Params, typename... Args>
void launch_kernel(CudaContext& ctx, void (*kernel)(Params...), dim3 grid, dim3 block,
            size_t smem_bytes, Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed =
      ctx.dependent_launch(reinterpret_cast<const void*>(kernel)) ? 1 : 0;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = ctx.stream();
  config.attrs = &attribute;
  config.numAttrs = 1;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (err != cudaSuccess) fail_launch(reinterpret_cast<const void*>(kernel), err);
}

}  // namespace lsgpt::cuda
