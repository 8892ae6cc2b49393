// What every CUDA op launcher needs besides its tensors: the backend's single
// stream, the cuBLASLt handle and workspace, and a growable scratch buffer for
// two-pass reductions (partial sums are reduced in a fixed order, so results
// are bit-reproducible run to run, unlike float atomics).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <unordered_map>

namespace lsgpt::cuda {

// cudaMalloc with the project's out-of-memory message.
void* device_alloc(size_t bytes);
void device_free(void* ptr) noexcept;
// Bytes held through device_alloc by this process: the most at once since the
// last reset.
size_t peak_allocated_bytes();
void reset_peak_allocated_bytes();

class CudaContext {
 public:
  CudaContext();
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  cudaStream_t stream() const { return stream_; }
  cublasLtHandle_t cublaslt() const { return cublaslt_; }
  void* cublas_workspace() const { return workspace_; }
  size_t cublas_workspace_bytes() const { return kWorkspaceBytes; }
  int sm_count() const { return sm_count_; }
  // 10 * major + minor, e.g. 90 on Hopper: picks the kernels built for it.
  int compute_capability() const { return compute_capability_; }

  // At least `bytes` of device memory, valid until the next scratch() call.
  // Ops on the one stream run in order, so reusing it across ops is safe;
  // growing it first waits for the stream so no queued kernel loses it.
  void* scratch(size_t bytes);
  // Counts the scratch reallocations (captured graphs hold its address).
  uint64_t scratch_generation() const { return scratch_generation_; }

  // While on, a matrix product of a shape not yet tuned times cuBLASLt's
  // candidates before it runs (gemm_tuning.h); Backend::set_tuning.
  bool tuning() const { return tuning_; }
  void set_tuning(bool on) { tuning_ = on; }

  // Whether `kernel` (a __global__ function) is launched with programmatic
  // dependent launch (launch.cuh): a GPU of compute capability 9.0 or newer,
  // the kernel's code compiled for sm_90 or newer (so it waits with
  // griddepcontrol), and LSGPT_PDL not set to 0. Remembered per kernel
  // (not thread-safe: a context, like its stream, serves one thread).
  bool dependent_launch(const void* kernel);

  // Work-item counters of the persistent kernels that hand their items to
  // whichever block or warpgroup asks next (take_next_item, device_utils.cuh):
  // device ints, zero when the context is made, that every launch leaves at
  // zero again itself. Unlike a memset before each launch, that puts no
  // memset node between the kernel and the one before it in a graph, which
  // would keep programmatic dependent launch from reaching the kernel. One
  // counter a kernel family, so that two kernels never share one.
  enum class ItemCounter { attention_forward, attention_backward };
  static constexpr int kItemCounters = int(ItemCounter::attention_backward) + 1;
  int* item_counter(ItemCounter which) const { return item_counters_ + int(which); }

 private:
  static constexpr size_t kWorkspaceBytes = size_t(32) << 20;
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t cublaslt_ = nullptr;
  void* workspace_ = nullptr;
  int* item_counters_ = nullptr;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  uint64_t scratch_generation_ = 0;
  int sm_count_ = 0;
  int compute_capability_ = 0;
  bool tuning_ = false;
  bool dependent_launch_allowed_ = false;
  std::unordered_map<const void*, bool> dependent_launch_kernels_;
};

// Carves aligned pieces out of one scratch allocation.
class ScratchCarver {
 public:
  explicit ScratchCarver(void* base) : base_(static_cast<char*>(base)) {}
  // Size of a region holding pieces of these byte counts, each 256-byte aligned.
  static size_t round(size_t bytes) { return (bytes + 255) / 256 * 256; }
  template <typename T>
  T* take(size_t count) {
    T* p = reinterpret_cast<T*>(base_ + used_);
    used_ += round(count * sizeof(T));
    return p;
  }

 private:
  char* base_;
  size_t used_ = 0;
};

}  // namespace lsgpt::cuda
