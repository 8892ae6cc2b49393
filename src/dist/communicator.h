// The collectives data-parallel training needs, behind one interface so the
// distributed logic is the same code on every backend: MPI on the CPU (the
// buffers are host memory), NCCL on CUDA (device buffers, on a communication
// stream of its own), and a single-process communicator for runs without a
// launcher. Host collectives carry small control data (losses, norms, flags)
// and always go through MPI when there is more than one rank.
//
// Device collectives take buffers of the backend the communicator was made
// for, with elements of `dtype`. Every rank must call the same collectives in
// the same order (the trainer is written so that it does).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "core/dtype.h"

namespace lsgpt {

class Backend;

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;

  // ---- host (control) collectives ----
  // out receives size() blocks of `bytes`, rank r's `in` at r * bytes.
  virtual void all_gather_host(const void* in, void* out, size_t bytes) = 0;

  // ---- device collectives ----
  // buf holds size() blocks of `count` elements; rank r contributes block r
  // (in place) and afterwards every rank holds every block.
  virtual void all_gather(void* buf, size_t count, DType dtype) = 0;
  // send holds size() blocks of `count` elements, block s for rank s; recv
  // receives rank r's block for this rank at r * count. Moves data only: the
  // caller adds the blocks in the order it chooses (a fixed-order
  // reduce-scatter, bit-reproducible for any number of ranks).
  virtual void all_to_all(const void* send, void* recv, size_t count, DType dtype) = 0;
  // Sum over ranks of buf[0, count) into root's buf (in place); the other
  // ranks' buf is left as it was. Summation order is the library's.
  virtual void reduce(void* buf, size_t count, DType dtype, int root) = 0;
  // Collectives between group_begin() and group_end() are launched together
  // (NCCL's ncclGroupStart/End); no-ops where collectives run one by one.
  virtual void group_begin() {}
  virtual void group_end() {}

  // ---- ordering with the backend's compute stream ----
  // Device collectives enqueued after this call start after the compute work
  // enqueued before it.
  virtual void wait_for_compute() {}
  // Compute work enqueued after this call starts after the device
  // collectives enqueued before it.
  virtual void compute_waits() {}
};

// True when this process was started by an MPI launcher (mpirun, or srun with
// PMIx): the launcher's environment names a world size.
bool launched_by_mpi();

// Initialises MPI (once per process; finalised at exit) and returns this
// process's rank and size and its rank among the processes of its host.
struct MpiWorld {
  int rank = 0, size = 1, local_rank = 0, local_size = 1;
};
MpiWorld init_mpi();

// The communicator of a training run on `backend`: a single-process one
// without a launcher; with one, MPI for the CPU backends and NCCL for CUDA
// (its id is broadcast through MPI). For CUDA the device must already have
// been chosen (select_local_device()).
std::unique_ptr<Communicator> make_communicator(Backend& backend, const std::string& device);

// Before the CUDA backend is made: picks the GPU of this process's local rank
// (OMPI_COMM_WORLD_LOCAL_RANK), refusing a host with fewer GPUs than ranks.
// A no-op for the CPU backends and without a launcher.
void select_local_device(const std::string& device);

// For the error path of main(): when this process is one of several MPI
// ranks, its rank (else -1) ...
int distributed_rank();
// ... and the end of the whole job: MPI_Abort, so every other rank stops too
// (none is left waiting in a collective). Does not return.
[[noreturn]] void abort_all_ranks(int exit_code);

}  // namespace lsgpt
