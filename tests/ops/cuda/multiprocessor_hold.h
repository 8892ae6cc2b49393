// Holds multiprocessors of the current GPU with a kernel on a stream of its
// own, as another kernel may in real use (NCCL on the data-parallel
// trainer's communication stream, another process's under MPS): for the
// tests of persistent kernels, which must finish on however many
// multiprocessors they are given.
#pragma once

#ifdef LSGPT_HAVE_CUDA
#include <cuda_runtime_api.h>

namespace lsgpt::cuda_test {

class MultiprocessorHold {
 public:
  // Starts `blocks` one-thread blocks, each with all the shared memory a
  // block may have (so that no block of another kernel that uses shared
  // memory fits beside it), and returns once every one is running. They
  // spin until release() or for at most `limit_s` seconds. Throws
  // lsgpt::Error when a CUDA call fails or the blocks have not all started
  // within 10 s (the GPU has fewer multiprocessors free than `blocks`).
  MultiprocessorHold(int blocks, double limit_s);
  ~MultiprocessorHold();  // releases them and waits for them to end
  MultiprocessorHold(const MultiprocessorHold&) = delete;
  MultiprocessorHold& operator=(const MultiprocessorHold&) = delete;

  // True while every block still holds its multiprocessor: not released,
  // none past its time limit.
  bool holding() const;
  // Lets the blocks end (they notice within about 20 us).
  void release();

 private:
  void start(double limit_s);
  void end();  // releases, waits, frees; safe on a partial start

  // Host-mapped: [0] release (the host writes it), [1] a block ran out of
  // time, [2 + b] block b has started (the kernel writes those).
  int* flags_ = nullptr;
  cudaStream_t stream_ = nullptr;
  int blocks_ = 0;
};

}  // namespace lsgpt::cuda_test
#endif
