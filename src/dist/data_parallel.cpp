#include "dist/data_parallel.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "core/error.h"

namespace lsgpt {
namespace {

char* byte_at(void* base, size_t elements, size_t elem_bytes) {
  return static_cast<char*>(base) + elements * elem_bytes;
}

}  // namespace

ShardPlan plan_shards(size_t total, int ranks) {
  LSGPT_CHECK(ranks >= 1, "ranks ", ranks);
  ShardPlan p;
  p.total = total, p.ranks = ranks;
  const size_t chunks = (total + sum_squares_chunk - 1) / sum_squares_chunk;
  p.shard = (chunks + size_t(ranks) - 1) / size_t(ranks) * sum_squares_chunk;
  return p;
}

DataParallel::DataParallel(GPT& model, Communicator& comm, std::span<const float> m,
                           std::span<const float> v)
    : model_(model), be_(model.backend()), comm_(comm) {
  plan_ = plan_shards(model.layout().total, comm.size());
  LSGPT_CHECK(model.flat_size() >= plan_.padded(), "model buffers of ", model.flat_size(),
              " elements, the shards need ", plan_.padded());
  // The CPU backends compute in the order we choose at little cost; CUDA
  // keeps its in-place accumulation and lets NCCL reduce. For tests,
  // LSGPT_DP_REDUCE=overlapped runs CUDA's way on the CPU (with MPI_Reduce),
  // so CI covers its logic without a GPU.
  const bool has_master = be_.dtype() != be_.acc_dtype();
  const char* mode = std::getenv("LSGPT_DP_REDUCE");
  ordered_ = !has_master && !(mode && std::string(mode) == "overlapped");
  lo_ = plan_.begin(comm.rank()), hi_ = plan_.end(comm.rank());
  es_ = dtype_size(be_.dtype()), acc_ = dtype_size(be_.acc_dtype());
  const size_t S = plan_.shard;
  if (ordered_) {
    sum_ = DeviceBuffer(be_, S * es_);
    if (comm.size() > 1) received_ = DeviceBuffer(be_, plan_.padded() * es_);
  }
  if (has_master) {
    master_ = DeviceBuffer(be_, S * acc_);
    upload_shard(master_, model.parameters());
    model.drop_master_weights();
  }
  m_ = DeviceBuffer(be_, S * acc_);
  v_ = DeviceBuffer(be_, S * acc_);
  if (m.empty()) {
    be_.zero(m_.get(), S * acc_);
    be_.zero(v_.get(), S * acc_);
  } else {
    upload_shard(m_, m);
    upload_shard(v_, v);
  }
}

void DataParallel::upload_shard(DeviceBuffer& dst, std::span<const float> full) {
  LSGPT_CHECK(full.size() == plan_.total, "state of ", full.size(), " entries, model of ",
              plan_.total);
  be_.zero(dst.get(), plan_.shard * acc_);
  if (hi_ > lo_) be_.upload_f32(dst.get(), be_.acc_dtype(), full.data() + lo_, hi_ - lo_);
}

void* DataParallel::grad_at(size_t element) const {
  if (ordered_) return byte_at(sum_.get(), element - lo_, es_);
  return byte_at(model_.gradient_buffer(), element, es_);
}

void DataParallel::begin_step() {
  model_.zero_grad();
  if (ordered_) be_.zero(sum_.get(), plan_.shard * es_);
}

// Overlapped mode: the elements [begin, end) are final on this rank; send
// each owner's part to it on the communication stream.
void DataParallel::reduce_to_owners(size_t begin, size_t end) {
  comm_.wait_for_compute();
  comm_.group_begin();
  for (int r = 0; r < comm_.size(); ++r) {
    const size_t a = std::max(begin, plan_.begin(r)), b = std::min(end, plan_.end(r));
    if (a < b) comm_.reduce(byte_at(model_.gradient_buffer(), a, es_), b - a, be_.dtype(), r);
  }
  comm_.group_end();
}

double DataParallel::micro_step(const int32_t* inputs, const int32_t* targets, int B, int T,
                                double weight, bool last) {
  if (!ordered_) {
    const bool reduce = last && comm_.size() > 1;
    if (reduce) model_.set_grad_ready_hook([this](size_t b, size_t e) { reduce_to_owners(b, e); });
    double loss;
    try {
      loss = model_.forward_backward(inputs, targets, B, T, weight);
    } catch (...) {
      model_.set_grad_ready_hook(nullptr);
      throw;
    }
    model_.set_grad_ready_hook(nullptr);
    if (reduce) comm_.compute_waits();
    return loss;
  }
  // Ordered: this micro-batch's gradient alone, then added slice by slice in
  // rank order into the owners' sums.
  model_.zero_grad();
  const double loss = model_.forward_backward(inputs, targets, B, T, weight);
  const size_t S = plan_.shard;
  if (comm_.size() == 1) {
    be_.add_inplace(sum_.get(), model_.gradient_buffer(), S);
  } else {
    comm_.all_to_all(model_.gradient_buffer(), received_.get(), S, be_.dtype());
    for (int r = 0; r < comm_.size(); ++r)
      be_.add_inplace(sum_.get(), byte_at(received_.get(), size_t(r) * S, es_), S);
  }
  return loss;
}

double DataParallel::grad_norm() {
  if (!ordered_) {
    // One sum per shard, added in rank order: the same on every rank.
    double own = hi_ > lo_ ? be_.sum_squares(grad_at(lo_), hi_ - lo_) : 0.0;
    std::vector<double> all(comm_.size());
    comm_.all_gather_host(&own, all.data(), sizeof(double));
    double total = 0;
    for (double s : all) total += s;
    return std::sqrt(total);
  }
  // The chunk sums the CPU backend's sum_squares would form over the whole
  // buffer, added in the same order: the bits of a single-rank run.
  const size_t per_rank = plan_.shard / sum_squares_chunk;
  std::vector<double> own(per_rank, 0.0), all(per_rank * comm_.size());
  for (size_t c = 0; c < per_rank; ++c) {
    const size_t a = lo_ + c * sum_squares_chunk;
    if (a >= hi_) break;
    own[c] = be_.sum_squares(grad_at(a), std::min(sum_squares_chunk, hi_ - a));
  }
  comm_.all_gather_host(own.data(), all.data(), per_rank * sizeof(double));
  double total = 0;
  for (double s : all) total += s;
  return std::sqrt(total);
}

std::vector<DataParallel::Piece> DataParallel::pieces(int r) const {
  const auto& tensors = model_.layout().tensors;
  const size_t lo = plan_.begin(r), hi = plan_.end(r);
  // Ordered: cut at the chunk grid too; overlapped: whole parts (each piece
  // is one sum_squares call, which waits for the device).
  const size_t grid = ordered_ ? sum_squares_chunk : plan_.padded() + 1;
  std::vector<Piece> out;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const size_t a0 = std::max(lo, tensors[i].offset);
    const size_t b0 = std::min(hi, tensors[i].offset + tensors[i].numel);
    for (size_t a = a0; a < b0;) {
      const size_t b = std::min(b0, (a / grid + 1) * grid);
      out.push_back({i, a, b});
      a = b;
    }
  }
  return out;
}

std::vector<double> DataParallel::tensor_sum_squares() {
  const std::vector<Piece> own = pieces(comm_.rank());
  size_t most = 0;
  std::vector<std::vector<Piece>> all_pieces(comm_.size());
  for (int r = 0; r < comm_.size(); ++r) {
    all_pieces[r] = r == comm_.rank() ? own : pieces(r);
    most = std::max(most, all_pieces[r].size());
  }
  std::vector<double> mine(most, 0.0), all(most * comm_.size());
  for (size_t k = 0; k < own.size(); ++k)
    mine[k] = be_.sum_squares(grad_at(own[k].begin), own[k].end - own[k].begin);
  comm_.all_gather_host(mine.data(), all.data(), most * sizeof(double));
  std::vector<double> out(model_.layout().tensors.size(), 0.0);
  for (int r = 0; r < comm_.size(); ++r)
    for (size_t k = 0; k < all_pieces[r].size(); ++k)
      out[all_pieces[r][k].tensor] += all[r * most + k];
  return out;
}

void DataParallel::adamw_step(const AdamWSettings& s, std::span<const double> tensor_scale) {
  const auto& tensors = model_.layout().tensors;
  LSGPT_CHECK(tensor_scale.empty() || tensor_scale.size() == tensors.size(),
              "per-tensor scales: ", tensor_scale.size(), " for ", tensors.size(), " tensors");
  // The shard's part of each tensor, as segments relative to the shard's
  // first element: one multi-tensor update (ops/backend.h).
  std::vector<AdamWSegment> segments;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const ParamInfo& p = tensors[i];
    const size_t a = std::max(lo_, p.offset), b = std::min(hi_, p.offset + p.numel);
    if (a >= b) continue;
    AdamWSegment seg;
    seg.begin = a - lo_, seg.end = b - lo_;
    seg.weight_decay = p.decay ? s.weight_decay : 0;
    seg.grad_scale = tensor_scale.empty() ? s.grad_scale : s.grad_scale * tensor_scale[i];
    segments.push_back(seg);
  }
  if (!segments.empty())
    be_.adamw_update_segments(byte_at(model_.parameter_buffer(), lo_, es_), master_.get(),
                              grad_at(lo_), m_.get(), v_.get(), segments.data(),
                              segments.size(), s);
  comm_.wait_for_compute();
  comm_.all_gather(model_.parameter_buffer(), plan_.shard, be_.dtype());
  comm_.compute_waits();
}

void DataParallel::poison_gradient() {
  if (comm_.rank() != 0) return;  // element 0 is rank 0's
  const float nan = std::numeric_limits<float>::quiet_NaN();
  be_.upload_f32(grad_at(0), be_.dtype(), &nan, 1);
}

// In pieces of at most 64Mi floats: MPI counts are int, and a large model's
// shard is more than 2 GiB.
std::vector<float> DataParallel::gather_shard(const DeviceBuffer& shard, DType dtype) {
  constexpr size_t kPiece = size_t(1) << 26;
  const size_t S = plan_.shard, N = size_t(comm_.size());
  std::vector<float> own(S), all(plan_.padded()), piece(std::min(S, kPiece) * N);
  be_.download_f32(own.data(), shard.get(), dtype, own.size());
  for (size_t at = 0; at < S; at += kPiece) {
    const size_t n = std::min(kPiece, S - at);
    comm_.all_gather_host(own.data() + at, piece.data(), n * sizeof(float));
    for (size_t r = 0; r < N; ++r)
      std::copy_n(piece.begin() + r * n, n, all.begin() + r * S + at);
  }
  all.resize(plan_.total);
  return all;
}

std::vector<float> DataParallel::parameters() {
  // Without master weights the all-gathered working copy is the whole state.
  if (!master_.get()) return model_.parameters();
  return gather_shard(master_, be_.acc_dtype());
}

std::vector<float> DataParallel::adam_m() { return gather_shard(m_, be_.acc_dtype()); }
std::vector<float> DataParallel::adam_v() { return gather_shard(v_, be_.acc_dtype()); }

}  // namespace lsgpt
