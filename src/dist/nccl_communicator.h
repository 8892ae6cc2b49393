// NCCL collectives over the CUDA backend's device memory, on a stream of their
// own so they overlap the backward pass; MPI carries the NCCL id and the host
// collectives. Built only with the CUDA backend (LSGPT_HAVE_CUDA).
#pragma once

#include <memory>

#include "dist/communicator.h"

namespace lsgpt {

class MpiCommunicator;

std::unique_ptr<Communicator> make_nccl_communicator(Backend& backend,
                                                     std::unique_ptr<MpiCommunicator> host);
// cudaSetDevice(local_rank), refusing a host with too few GPUs.
void select_cuda_device(int local_rank, int local_size);

}  // namespace lsgpt
