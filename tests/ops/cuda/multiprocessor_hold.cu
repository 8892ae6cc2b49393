// MultiprocessorHold (multiprocessor_hold.h): blocks that sit on their
// multiprocessors, polling a host-mapped flag.
#include "multiprocessor_hold.h"

#include <chrono>
#include <cstdint>
#include <thread>

#include "core/error.h"
#include "ops/cuda/cuda_check.h"

namespace lsgpt::cuda_test {
namespace {

// The words of MultiprocessorHold::flags_.
constexpr int kRelease = 0, kTimedOut = 1, kStarted = 2;

__device__ __forceinline__ uint64_t now_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}

// One thread a block; the dynamic shared memory is never touched: it is
// there to fill the multiprocessor. Plain stores, one word a block, rather
// than atomics: system-scope atomics on host memory need a link that
// carries them, a store does not.
__global__ void hold_multiprocessor(volatile int* flags, unsigned long long limit_ns) {
  flags[kStarted + blockIdx.x] = 1;
  const uint64_t start = now_ns();
  while (flags[kRelease] == 0) {
    if (now_ns() - start > limit_ns) {
      flags[kTimedOut] = 1;
      return;
    }
    __nanosleep(20000);
  }
}

int started(const volatile int* flags, int blocks) {
  int n = 0;
  for (int b = 0; b < blocks; ++b) n += flags[kStarted + b];
  return n;
}

}  // namespace

MultiprocessorHold::MultiprocessorHold(int blocks, double limit_s) : blocks_(blocks) {
  LSGPT_CHECK(blocks > 0, "MultiprocessorHold: blocks must be positive, got ", blocks);
  try {
    start(limit_s);
  } catch (...) {
    end();
    throw;
  }
}

void MultiprocessorHold::start(double limit_s) {
  const int blocks = blocks_;
  int device = 0, smem = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int words = kStarted + blocks;
  CUDA_CHECK(cudaHostAlloc(&flags_, words * sizeof(int), cudaHostAllocMapped));
  volatile int* flags = flags_;
  for (int i = 0; i < words; ++i) flags[i] = 0;
  int* device_flags = nullptr;
  CUDA_CHECK(cudaHostGetDevicePointer(&device_flags, flags_, 0));
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  CUDA_CHECK(cudaFuncSetAttribute(hold_multiprocessor,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  hold_multiprocessor<<<blocks, 1, size_t(smem), stream_>>>(
      device_flags, static_cast<unsigned long long>(limit_s * 1e9));
  CUDA_CHECK(cudaGetLastError());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (started(flags, blocks) < blocks) {
    if (std::chrono::steady_clock::now() > deadline)
      fail("MultiprocessorHold: ", started(flags, blocks), " of ", blocks,
           " blocks started within 10 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

bool MultiprocessorHold::holding() const {
  const volatile int* flags = flags_;
  return flags[kRelease] == 0 && flags[kTimedOut] == 0 &&
         cudaStreamQuery(stream_) == cudaErrorNotReady;
}

void MultiprocessorHold::release() {
  if (!flags_) return;
  volatile int* flags = flags_;
  flags[kRelease] = 1;
}

MultiprocessorHold::~MultiprocessorHold() { end(); }

void MultiprocessorHold::end() {
  release();
  // Not checked: it runs in a destructor or on the way out of a failed
  // start, whose error is the one to report.
  if (stream_) cudaStreamSynchronize(stream_), cudaStreamDestroy(stream_);
  if (flags_) cudaFreeHost(flags_);
  stream_ = nullptr, flags_ = nullptr;
}

}  // namespace lsgpt::cuda_test
