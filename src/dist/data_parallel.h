// Data-parallel training with a sharded optimizer (ZeRO stage 1).
//
// The flat parameter buffer (padded to ranks * shard elements) is cut into
// one contiguous shard per rank, shard boundaries on multiples of
// sum_squares_chunk. Each rank computes the gradients of its own
// micro-batches; the gradients are summed into the shard's owner, which
// alone keeps AdamW moments (and, on CUDA, fp32 master weights) for its
// shard, updates it, and all-gathers the updated parameters to every rank.
//
// Two ways to sum, chosen by the backend:
//   ordered (the CPU backends): every micro-batch's gradient is computed
//     fresh (not accumulated inside the backward kernels), its shard slices
//     are exchanged (all-to-all) and each owner adds the ranks' slices in rank
//     order. The global micro-batch k = step*G + j*N + r (rank r, local
//     micro-step j) is added in k order, whatever N is: N ranks give the bits
//     of one rank with N times the accumulation, and so does the gradient
//     norm (chunk sums added in chunk order).
//   overlapped (CUDA): the local micro-batches accumulate in place, and
//     during the last backward pass each layer's gradients are reduced (NCCL)
//     to the owners of their elements on the communication stream as soon as
//     the layer is done, overlapping the layers below. Summation order is
//     NCCL's: equal to one rank within bf16 rounding, not bit for bit.
//     LSGPT_DP_REDUCE=overlapped selects it on the CPU too (MPI_Reduce), so
//     CI tests its logic without a GPU.
//
// The gradient norm is partition-invariant, so global-norm clipping gives
// every rank the same scale; per-tensor norms follow the same pattern (each
// owner sums its part of a tensor, the parts are all-gathered and added).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "dist/communicator.h"
#include "model/gpt.h"
#include "ops/backend.h"

namespace lsgpt {

struct ShardPlan {
  size_t total = 0;  // parameters
  size_t shard = 0;  // elements per rank, a multiple of sum_squares_chunk
  int ranks = 1;
  size_t padded() const { return shard * size_t(ranks); }
  size_t begin(int r) const { return std::min(total, size_t(r) * shard); }
  size_t end(int r) const { return std::min(total, size_t(r + 1) * shard); }
};
ShardPlan plan_shards(size_t total, int ranks);

class DataParallel {
 public:
  // model: made with flat_elements = plan.padded(), holding the starting
  // parameters on every rank. m, v: full AdamW moments (empty: zeros). On
  // CUDA the model's master weights move into this rank's shard here.
  DataParallel(GPT& model, Communicator& comm, std::span<const float> m,
               std::span<const float> v);
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  const ShardPlan& plan() const { return plan_; }
  bool ordered() const { return ordered_; }

  void begin_step();
  // One local micro-batch: forward, backward and (ordered, or on the last
  // micro-batch) the reduction into the shard owners. Returns its mean loss.
  double micro_step(const int32_t* inputs, const int32_t* targets, int B, int T, double weight,
                    bool last);
  double grad_norm();  // global L2 norm of the summed gradients, the same on every rank
  // Each tensor's sum of squares of the summed gradient (per-tensor clipping,
  // e.g. AdaGC), the same on every rank. Ordered mode: the pieces where the
  // tensors meet the sum_squares_chunk grid, added in flat order, so the
  // bits do not depend on the number of ranks. Overlapped: each rank's part
  // of each tensor, added in rank order.
  std::vector<double> tensor_sum_squares();
  // This shard, then all-gather the parameters. tensor_scale (empty, or one
  // factor per layout tensor) multiplies s.grad_scale tensor by tensor.
  void adamw_step(const AdamWSettings& s, std::span<const double> tensor_scale = {});
  void poison_gradient();                   // testing: one summed gradient becomes NaN

  // The whole state, on every rank (rank 0 writes it to the checkpoint).
  std::vector<float> parameters();
  std::vector<float> adam_m();
  std::vector<float> adam_v();

 private:
  void* grad_at(size_t element) const;  // the summed gradient of a flat element of this shard
  // (tensor, begin, end) pieces of rank r's shard, in flat order.
  struct Piece {
    size_t tensor, begin, end;
  };
  std::vector<Piece> pieces(int r) const;
  void reduce_to_owners(size_t begin, size_t end);
  std::vector<float> gather_shard(const DeviceBuffer& shard, DType dtype);
  void upload_shard(DeviceBuffer& dst, std::span<const float> full);

  GPT& model_;
  Backend& be_;
  Communicator& comm_;
  ShardPlan plan_;
  bool ordered_;
  size_t lo_, hi_;  // this rank's elements [lo_, hi_)
  size_t es_, acc_;
  DeviceBuffer sum_;       // ordered: the summed gradient of this shard (dtype)
  DeviceBuffer received_;  // ordered, N > 1: the ranks' slices of one micro-batch
  DeviceBuffer master_, m_, v_;  // this shard (acc_dtype)
};

}  // namespace lsgpt
