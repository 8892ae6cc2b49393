// NCCL over the CUDA backend. Device collectives run on a communication stream
// of their own; events order them against the backend's compute stream, so a
// layer's gradients are reduced while the backward pass computes the layers
// below it.
#include "dist/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "core/error.h"
#include "dist/mpi_communicator.h"
#include "ops/backend.h"
#include "ops/cuda/cuda_backend.h"

#define CUDA_OK(call)                                                                      \
  do {                                                                                     \
    const cudaError_t lsgpt_err_ = (call);                                                 \
    if (lsgpt_err_ != cudaSuccess)                                                         \
      ::lsgpt::fail("CUDA error in " #call ": ", cudaGetErrorString(lsgpt_err_));          \
  } while (0)

#define NCCL_OK(call)                                                                      \
  do {                                                                                     \
    const ncclResult_t lsgpt_nccl_ = (call);                                               \
    if (lsgpt_nccl_ != ncclSuccess)                                                        \
      ::lsgpt::fail("NCCL error in " #call ": ", ncclGetErrorString(lsgpt_nccl_),          \
                    " (NCCL_DEBUG=WARN prints NCCL's own explanation)");                   \
  } while (0)

namespace lsgpt {
namespace {

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    case DType::i32: return ncclInt32;
  }
  fail("no NCCL type for ", dtype_name(t));
}

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(Backend& backend, std::unique_ptr<MpiCommunicator> host)
      : host_(std::move(host)) {
    compute_ = static_cast<cudaStream_t>(cuda_stream_of(backend));
    LSGPT_CHECK(compute_ != nullptr, "the NCCL communicator needs the CUDA backend");
    ncclUniqueId id;
    if (host_->rank() == 0) NCCL_OK(ncclGetUniqueId(&id));
    host_->broadcast_host(&id, sizeof id, 0);
    NCCL_OK(ncclCommInitRank(&comm_, host_->size(), id, host_->rank()));
    CUDA_OK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUDA_OK(cudaEventCreateWithFlags(&compute_done_, cudaEventDisableTiming));
    CUDA_OK(cudaEventCreateWithFlags(&comm_done_, cudaEventDisableTiming));
  }
  ~NcclCommunicator() override {
    cudaStreamSynchronize(stream_);
    ncclCommDestroy(comm_);
    cudaEventDestroy(compute_done_);
    cudaEventDestroy(comm_done_);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  std::string name() const override { return "NCCL"; }
  void all_gather_host(const void* in, void* out, size_t bytes) override {
    host_->all_gather_host(in, out, bytes);
  }

  void all_gather(void* buf, size_t count, DType dtype) override {
    const char* own = static_cast<const char*>(buf) + size_t(rank()) * count * dtype_size(dtype);
    NCCL_OK(ncclAllGather(own, buf, count, nccl_type(dtype), comm_, stream_));
  }

  void all_to_all(const void* send, void* recv, size_t count, DType dtype) override {
    const size_t bytes = count * dtype_size(dtype);
    NCCL_OK(ncclGroupStart());
    for (int r = 0; r < size(); ++r) {
      NCCL_OK(ncclSend(static_cast<const char*>(send) + r * bytes, count, nccl_type(dtype), r,
                       comm_, stream_));
      NCCL_OK(ncclRecv(static_cast<char*>(recv) + r * bytes, count, nccl_type(dtype), r, comm_,
                       stream_));
    }
    NCCL_OK(ncclGroupEnd());
  }

  void reduce(void* buf, size_t count, DType dtype, int root) override {
    NCCL_OK(ncclReduce(buf, buf, count, nccl_type(dtype), ncclSum, root, comm_, stream_));
  }
  void group_begin() override { NCCL_OK(ncclGroupStart()); }
  void group_end() override { NCCL_OK(ncclGroupEnd()); }

  void wait_for_compute() override {
    CUDA_OK(cudaEventRecord(compute_done_, compute_));
    CUDA_OK(cudaStreamWaitEvent(stream_, compute_done_, 0));
  }
  void compute_waits() override {
    CUDA_OK(cudaEventRecord(comm_done_, stream_));
    CUDA_OK(cudaStreamWaitEvent(compute_, comm_done_, 0));
  }

 private:
  std::unique_ptr<MpiCommunicator> host_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t compute_ = nullptr, stream_ = nullptr;
  cudaEvent_t compute_done_ = nullptr, comm_done_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Backend& backend,
                                                     std::unique_ptr<MpiCommunicator> host) {
  return std::make_unique<NcclCommunicator>(backend, std::move(host));
}

void select_cuda_device(int local_rank, int local_size) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0)
    fail("no CUDA GPU found for rank ", local_rank, " on this host",
         err != cudaSuccess ? std::string(": ") + cudaGetErrorString(err) : std::string());
  if (local_size > count)
    fail(local_size, " ranks on this host but only ", count,
         " CUDA GPUs: lsgpt runs one rank per GPU (mpirun -np ", count, ")");
  CUDA_OK(cudaSetDevice(local_rank));
}

}  // namespace lsgpt
