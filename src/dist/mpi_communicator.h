// MPI collectives over host memory: the communicator of the CPU backends when
// launched by mpirun, and the host (control) half of the NCCL communicator.
// Errors are fatal to the whole job (MPI's default handler), so a failed
// collective never leaves another rank waiting.
#pragma once

#include "dist/communicator.h"

namespace lsgpt {

class MpiCommunicator : public Communicator {
 public:
  MpiCommunicator();  // MPI_COMM_WORLD; init_mpi() must have run
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "MPI"; }
  void all_gather_host(const void* in, void* out, size_t bytes) override;
  void all_gather(void* buf, size_t count, DType dtype) override;
  void all_to_all(const void* send, void* recv, size_t count, DType dtype) override;
  void reduce(void* buf, size_t count, DType dtype, int root) override;
  void broadcast_host(void* buf, size_t bytes, int root);

 private:
  int rank_ = 0, size_ = 1;
};

}  // namespace lsgpt
