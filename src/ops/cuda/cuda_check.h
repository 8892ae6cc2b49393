// Error checking for every CUDA runtime and cuBLASLt call: a failure becomes an
// lsgpt::Error naming the call, the source line and the driver's message, so a
// broken launch surfaces at the op that caused it, not at a later sync.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "core/error.h"

#define CUDA_CHECK(call)                                                            \
  do {                                                                              \
    const cudaError_t lsgpt_cuda_err_ = (call);                                     \
    if (lsgpt_cuda_err_ != cudaSuccess)                                             \
      ::lsgpt::fail("CUDA error at ", __FILE__, ":", __LINE__, " in " #call ": ",   \
                    cudaGetErrorString(lsgpt_cuda_err_));                           \
  } while (0)

// After a kernel launch: launch-configuration errors are reported here, and
// asynchronous faults of earlier kernels at the next checked call.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

#define CUBLAS_CHECK(call)                                                          \
  do {                                                                              \
    const cublasStatus_t lsgpt_cublas_st_ = (call);                                 \
    if (lsgpt_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                  \
      ::lsgpt::fail("cuBLASLt error at ", __FILE__, ":", __LINE__, " in " #call ": ", \
                    cublasLtGetStatusString(lsgpt_cublas_st_));                     \
  } while (0)
