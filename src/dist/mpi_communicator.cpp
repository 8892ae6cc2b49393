#include "dist/mpi_communicator.h"

#include <mpi.h>

#include <climits>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "dist/local_communicator.h"
#include "ops/backend.h"
#ifdef LSGPT_HAVE_CUDA
#include "dist/nccl_communicator.h"
#endif

namespace lsgpt {
namespace {

MpiWorld g_world;
bool g_initialised = false;

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

// MPI counts are int: larger messages are refused with a clear message
// rather than truncated.
int mpi_count(size_t bytes) {
  if (bytes > size_t(INT_MAX))
    fail("an MPI message of ", bytes, " bytes exceeds MPI's limit of ", INT_MAX,
         " bytes (use fewer parameters per rank or the CUDA backend with NCCL)");
  return int(bytes);
}

void require_host_dtype(DType dtype) {
  if (dtype == DType::bf16)
    fail("MPI collectives carry f32/f64 buffers of the CPU backends, not bf16");
}

}  // namespace

bool launched_by_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"})
    if (std::getenv(var)) return true;
  return false;
}

MpiWorld init_mpi() {
  if (g_initialised) return g_world;
  int already = 0;
  MPI_Initialized(&already);
  if (!already) {
    MPI_Init(nullptr, nullptr);
    std::atexit(finalize_at_exit);
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &g_world.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_world.size);
  // The ranks sharing this host (and its GPUs), whatever the launcher.
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_world.rank, MPI_INFO_NULL, &local);
  MPI_Comm_rank(local, &g_world.local_rank);
  MPI_Comm_size(local, &g_world.local_size);
  MPI_Comm_free(&local);
  g_initialised = true;
  return g_world;
}

int distributed_rank() { return g_initialised && g_world.size > 1 ? g_world.rank : -1; }

void abort_all_ranks(int exit_code) {
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);  // MPI_Abort does not return; this only satisfies [[noreturn]]
}

MpiCommunicator::MpiCommunicator() {
  LSGPT_CHECK(g_initialised, "MPI is not initialised");
  rank_ = g_world.rank, size_ = g_world.size;
}

void MpiCommunicator::all_gather_host(const void* in, void* out, size_t bytes) {
  const int n = mpi_count(bytes);
  if (in == out) {
    // MPI forbids aliasing send and receive buffers: gather in place instead.
    std::memmove(static_cast<char*>(out) + size_t(rank_) * bytes, in, bytes);
    MPI_Allgather(MPI_IN_PLACE, 0, MPI_BYTE, out, n, MPI_BYTE, MPI_COMM_WORLD);
    return;
  }
  MPI_Allgather(in, n, MPI_BYTE, out, n, MPI_BYTE, MPI_COMM_WORLD);
}

void MpiCommunicator::broadcast_host(void* buf, size_t bytes, int root) {
  MPI_Bcast(buf, mpi_count(bytes), MPI_BYTE, root, MPI_COMM_WORLD);
}

void MpiCommunicator::all_gather(void* buf, size_t count, DType dtype) {
  require_host_dtype(dtype);
  MPI_Allgather(MPI_IN_PLACE, 0, MPI_BYTE, buf, mpi_count(count * dtype_size(dtype)), MPI_BYTE,
                MPI_COMM_WORLD);
}

void MpiCommunicator::all_to_all(const void* send, void* recv, size_t count, DType dtype) {
  require_host_dtype(dtype);
  const int n = mpi_count(count * dtype_size(dtype));
  MPI_Alltoall(send, n, MPI_BYTE, recv, n, MPI_BYTE, MPI_COMM_WORLD);
}

void MpiCommunicator::reduce(void* buf, size_t count, DType dtype, int root) {
  require_host_dtype(dtype);
  const MPI_Datatype type = dtype == DType::f64 ? MPI_DOUBLE : MPI_FLOAT;
  const int n = mpi_count(count);
  if (rank_ == root)
    MPI_Reduce(MPI_IN_PLACE, buf, n, type, MPI_SUM, root, MPI_COMM_WORLD);
  else
    MPI_Reduce(buf, nullptr, n, type, MPI_SUM, root, MPI_COMM_WORLD);
}

void select_local_device(const std::string& device) {
  if (device != "cuda" || !launched_by_mpi()) return;
  const MpiWorld w = init_mpi();
#ifdef LSGPT_HAVE_CUDA
  select_cuda_device(w.local_rank, w.local_size);
#else
  (void)w;
  fail("this lsgpt was built without the CUDA backend; use --device cpu");
#endif
}

std::unique_ptr<Communicator> make_communicator(Backend& backend, const std::string& device) {
  if (!launched_by_mpi()) return std::make_unique<LocalCommunicator>(backend);
  init_mpi();
  auto mpi = std::make_unique<MpiCommunicator>();
  if (device != "cuda") return mpi;
#ifdef LSGPT_HAVE_CUDA
  if (mpi->size() == 1) return std::make_unique<LocalCommunicator>(backend);
  return make_nccl_communicator(backend, std::move(mpi));
#else
  fail("this lsgpt was built without the CUDA backend; use --device cpu");
#endif
}

}  // namespace lsgpt
