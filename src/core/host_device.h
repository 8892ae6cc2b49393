// LSGPT_HOST_DEVICE marks a function that both backends must share: host and
// device code under nvcc, plain host code under g++ (which has no
// __host__ / __device__).
#pragma once

#ifdef __CUDACC__
#define LSGPT_HOST_DEVICE __host__ __device__
#else
#define LSGPT_HOST_DEVICE
#endif
