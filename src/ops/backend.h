// The op interface the model and trainer are written against. A backend owns
// its device memory and one stream: every op is enqueued in call order and
// only download()/sync()/sum_squares() wait for the device.
//
// Two element types per backend:
//   dtype()     parameters (working copy), activations, gradients:
//               f32 on the CPU, f64 for the CPU gradient-check backend, bf16 on CUDA.
//   acc_dtype() statistics and optimizer state (LayerNorm mean/rstd, softmax
//               log-sum-exp, per-position losses, max logits, AdamW m and v,
//               master weights): f32, or f64 for the gradient-check backend.
// Master weights exist only where dtype() != acc_dtype().
//
// Conventions (as in llm.c): parameter gradients accumulate (+=) so gradient
// accumulation needs no extra buffer; activation gradients are overwritten (=)
// unless the op says it accumulates (the residual stream does).
// All pointers are device pointers of the backend unless named host_*.
// Matrices are row-major; weights are [out_features, in_features].
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "core/dtype.h"
#include "ops/attention_spec.h"
#include "ops/sampling_spec.h"

namespace lsgpt {

// Work recorded once and replayed many times (a CUDA graph).
class CapturedWork {
 public:
  virtual ~CapturedWork() = default;
  virtual void replay() = 0;  // enqueued on the backend's stream; does not wait
};

struct AdamWSettings {
  double lr = 0;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0;
  long step = 1;            // 1-based, for bias correction
  double grad_scale = 1.0;  // multiplies every gradient first (global-norm clipping)
};

// One parameter tensor's share of a multi-tensor AdamW step
// (Backend::adamw_update_segments): elements [begin, end) of the flat
// buffers, with the tensor's own weight decay and gradient scale in place of
// AdamWSettings's (decay masks, per-tensor clipping).
struct AdamWSegment {
  size_t begin = 0, end = 0;
  double weight_decay = 0;
  double grad_scale = 1.0;
};

// See Backend::sum_squares.
inline constexpr size_t sum_squares_chunk = size_t(1) << 14;

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual DType dtype() const = 0;
  virtual DType acc_dtype() const = 0;

  // ---- memory ----
  virtual void* alloc(size_t bytes) = 0;  // throws lsgpt::Error when out of memory
  virtual void dealloc(void* ptr) noexcept = 0;
  virtual void zero(void* dst, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // device to device
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t bytes) = 0;  // waits
  // Convert while copying; dtype names the device side's element type.
  virtual void upload_f32(void* dst, DType dtype, const float* host_src, size_t n) = 0;
  virtual void download_f32(float* host_dst, const void* src, DType dtype, size_t n) = 0;
  virtual void sync() = 0;
  // Most device memory held at once by this process's allocations through
  // the backend (buffers, workspace, scratch; not the driver's context), since
  // the last reset: the counterpart of torch.cuda.max_memory_allocated().
  // 0 where the backend does not track it (the CPU).
  virtual size_t peak_memory_bytes() const { return 0; }
  virtual void reset_peak_memory() {}
  // Memory this backend could still allocate (device memory on a GPU, the
  // available RAM on the CPU); 0 when unknown. For up-front size checks.
  virtual size_t free_memory_bytes() const { return 0; }

  // ---- embedding ----
  // out[b,t,:] = wte[tokens[b,t],:] + wpe[pos0 + t,:]; out [B,T,C].
  virtual void embedding_forward(void* out, const int32_t* tokens, const void* wte,
                                 const void* wpe, int B, int T, int C, int pos0) = 0;
  // dwte += scatter(dout by token), dwpe[t] += sum over b of dout[b,t].
  virtual void embedding_backward(void* dwte, void* dwpe, const void* dout,
                                  const int32_t* tokens, int B, int T, int C) = 0;

  // ---- layernorm (eps 1e-5) ----
  // mean, rstd: [N] in acc_dtype(), saved for the backward.
  virtual void layernorm_forward(void* out, void* mean, void* rstd, const void* inp,
                                 const void* weight, const void* bias, int N, int C) = 0;
  // residual += delta (rounded to dtype() as residual_forward rounds), then
  // out = layernorm(residual): the decode step's residual add and the next
  // LayerNorm in one pass. residual, out, delta [N,C]; mean, rstd [N] (acc).
  virtual void add_layernorm_forward(void* residual, void* out, void* mean, void* rstd,
                                     const void* delta, const void* weight, const void* bias,
                                     int N, int C) = 0;
  // dinp += (accumulates: the residual stream), dweight += , dbias += .
  // dinp_colsum [C] may be null; otherwise dinp_colsum[c] += the sum over the
  // N rows of dinp[:, c] as this call leaves it (old + new, in dtype()). The
  // residual stream's gradient is the output gradient of the projection that
  // added into it, so that sum is the projection's bias gradient: taking it
  // here saves matmul_backward a pass over dinp (GPT::backward).
  virtual void layernorm_backward(void* dinp, void* dweight, void* dbias, void* dinp_colsum,
                                  const void* dout, const void* inp, const void* weight,
                                  const void* mean, const void* rstd, int N, int C) = 0;

  // ---- matmul: out[N,OC] = inp[N,C] @ weight[OC,C]^T + bias ----
  // bias may be null. With pre_gelu non-null the GELU (tanh form) is fused:
  // pre_gelu receives the pre-activation and out = gelu(pre_gelu).
  virtual void matmul_forward(void* out, void* pre_gelu, const void* inp, const void* weight,
                              const void* bias, int N, int C, int OC) = 0;
  // dinp = (overwritten), dweight += , dbias += (dbias may be null).
  // With pre_gelu non-null, dout is the gradient of gelu(pre_gelu) and is
  // taken through gelu' first; the op may overwrite dout as scratch then.
  // With inp_pre_gelu non-null, inp = gelu(inp_pre_gelu) and dinp is the
  // gradient with respect to inp_pre_gelu (on CUDA, cuBLASLt's DGELU
  // epilogue: the MLP's GELU backward costs no pass of its own).
  virtual void matmul_backward(void* dinp, void* dweight, void* dbias, void* dout,
                               const void* inp, const void* weight, const void* pre_gelu,
                               const void* inp_pre_gelu, int N, int C, int OC) = 0;

  // ---- elementwise ----
  virtual void gelu_forward(void* out, const void* inp, size_t n) = 0;
  // dinp = dout * gelu'(inp); dinp may alias dout.
  virtual void gelu_backward(void* dinp, const void* inp, const void* dout, size_t n) = 0;
  virtual void residual_forward(void* out, const void* a, const void* b, size_t n) = 0;
  // dst += src
  virtual void add_inplace(void* dst, const void* src, size_t n) = 0;

  // ---- attention ----
  // qkv [B,T,3C]: q | k | v along the last axis, head h at columns h*D..h*D+D-1
  // of each part (GPT-2's c_attn layout). out [B,T,C].
  // lse [B,n_head,T] (acc): log-sum-exp of each row's scaled logits.
  // max_logit [n_head] (acc): largest pre-softmax logit tau*q.k over the
  //   unmasked positions of this call, written (not accumulated).
  // kbar [B,T,C] (dtype): P K, written only when spec.span.needs_kbar(), else null.
  virtual void attention_forward(void* out, void* lse, void* max_logit, void* kbar,
                                 const void* qkv, const AttentionSpec& spec) = 0;
  // dqkv [B,T,3C] overwritten, with the span decomposition of spec.span applied.
  // dqkv_colsum [3C] (dtype; may be null; must not overlap dqkv; on CUDA
  // 2-byte aligned): += the column sums of dqkv over its B*T rows, i.e. the
  // bias gradient of the projection that made qkv (the model passes it here
  // instead of to matmul_backward, sparing the CUDA backend a pass over
  // dqkv). The CUDA kernels sum the rows in f32 before their bf16 rounding,
  // so the result may differ in the last bits from a column sum of the
  // stored dqkv.
  virtual void attention_backward(void* dqkv, void* dqkv_colsum, const void* dout,
                                  const void* qkv, const void* out, const void* lse,
                                  const void* kbar, const AttentionSpec& spec) = 0;
  // qkv [B,3C] of the new token at spec.pos; appends its k and v to the cache,
  // then out [B,C] = attention of the new query over the cache.
  // k_local, v_local [B, n_local, local_slots, D]; k_global, v_global
  // [B, n_head - n_local, max_T, D] (dtype); either pair may be null when empty.
  // Rows and positions as DecodeSpec describes (per-row tables, idle rows,
  // split-KV with spec.workspace).
  virtual void attention_decode(void* out, void* k_local, void* v_local, void* k_global,
                                void* v_global, const void* qkv, const DecodeSpec& spec) = 0;
  // Bytes of DecodeSpec::workspace the call needs (0: none).
  virtual size_t attention_decode_workspace_bytes(const DecodeSpec& spec) const { return 0; }
  // The prefill's half of the cache: qkv [T,3C] holds positions 0..T-1 of one
  // sequence; writes their k and v into cache entry `cache_row` (global heads:
  // every position; local heads: the last local_slots() positions, each in
  // slot p % local_slots()). spec gives the cache layout (n_head, head_dim,
  // n_local, window, max_T, cache_entries()); T <= max_T.
  virtual void kv_cache_write(void* k_local, void* v_local, void* k_global, void* v_global,
                              const void* qkv, int T, int cache_row, const DecodeSpec& spec) = 0;
  // out[b,:] = wte[tokens[b],:] + wpe[positions[b],:] for one token per row;
  // tokens, positions int32 [B]; a negative position (idle row) reads wpe[0].
  virtual void embedding_decode(void* out, const int32_t* tokens, const int32_t* positions,
                                const void* wte, const void* wpe, int B, int C) = 0;

  // ---- classifier: softmax + cross-entropy over the vocabulary ----
  // logits [N,Vp] (dtype); columns [V,Vp) are padding and never predicted.
  // losses [N] (acc) receives -log p(target); a target < 0 is ignored (loss 0).
  // With compute_grad, logits is overwritten by dloss * (softmax - onehot)
  // (0 in padded columns and ignored rows).
  // z-loss (PaLM): with z_coef > 0 each row's objective also has
  // z_coef * (log Z)^2, Z the softmax's partition function; its gradient
  // 2 z_coef log Z * softmax is added to the logits' gradient (times dloss).
  // losses stays the pure cross-entropy. lse [N] (acc; may be null) receives
  // each row's log Z (0 for ignored rows), from which the caller reports the
  // z-loss term.
  virtual void softmax_cross_entropy(void* losses, void* logits, const int32_t* targets,
                                     int N, int V, int Vp, double dloss, bool compute_grad,
                                     double z_coef, void* lse) = 0;

  // ---- QK-norm (docs/STABILISERS.md) ----
  // qkv [N,3C] as attention_forward's (C = n_head * D). out [N,3C] receives
  // q and k with each head's D-vector RMS-normalised and scaled by the
  // layer's gains: y = x / sqrt(mean(x^2) + eps) * gain, gain q_gain or
  // k_gain [D] (shared by the heads); v is copied. out may alias qkv (the
  // decode path normalises in place). rstd [N, 2, n_head] (acc) receives
  // 1/sqrt(mean(x^2) + eps) of each q (index 0) and k (index 1) head, for the
  // backward; may be null.
  virtual void qk_norm_forward(void* out, void* rstd, const void* qkv, const void* q_gain,
                               const void* k_gain, int N, int n_head, int D, double eps) = 0;
  // dqkv [N,3C] overwritten with the gradient with respect to the
  // un-normalised qkv (v's part copied from dout); dq_gain, dk_gain += .
  // dqkv may alias dout. qkv is the forward's input, rstd its output.
  virtual void qk_norm_backward(void* dqkv, void* dq_gain, void* dk_gain, const void* dout,
                                const void* qkv, const void* q_gain, const void* k_gain,
                                const void* rstd, int N, int n_head, int D) = 0;

  // ---- sampling (see ops/sampling_spec.h for the rule) ----
  // tokens [B] (int32) receives each row's choice from logits [B,Vp] over the
  // first V columns; params [B] is a SampleParams table in backend memory whose
  // step fields are incremented for active rows. With advance non-null
  // (int32 [B], the rows' positions), active rows also get advance[b] += 1
  // and next_input[b] = tokens[b] (next_input may be null): the bookkeeping of
  // a decode step done without the host.
  virtual void sample_tokens(int32_t* tokens, const void* logits, SampleParams* params, int B,
                             int V, int Vp, int32_t* advance, int32_t* next_input) = 0;

  // ---- graphs ----
  // Records the ops that `work` enqueues, for replay with the same pointers
  // and sizes; nullptr where the backend has no such facility (the CPU), in
  // which case the caller simply runs `work` again each time. `work` must
  // neither allocate nor wait for the device.
  virtual std::unique_ptr<CapturedWork> capture(const std::function<void()>& work) {
    return nullptr;
  }
  // Changes whenever device memory that captured work may use (the
  // backend's scratch) is reallocated: work captured under an older value
  // must be captured again.
  virtual uint64_t capture_generation() const { return 0; }

  // ---- tuning ----
  // While on, the backend may time alternative kernels for work of a shape
  // it has not tuned yet before enqueuing it (CUDA: cuBLASLt's algorithms
  // per matrix product, kept in a per-machine cache file so every process
  // picks the same; src/ops/cuda/gemm_tuning.h). Results stay those of one
  // fixed choice per shape; the first call of a shape waits for the device.
  // Off by default; ignored while capturing and by backends with one kernel
  // per op (the CPU). A flag, not a nesting count: off ends it.
  virtual void set_tuning(bool on) {}

  // ---- optimizer ----
  // sum of x^2 in double precision (NaN/inf propagate). Waits for the result.
  // The CPU backends sum chunks of sum_squares_chunk elements and add the
  // chunk sums in order from 0, so a data-parallel run that sums the same
  // chunks on different ranks gets the same bits (src/dist/data_parallel.h).
  virtual double sum_squares(const void* x, size_t n) = 0;
  // AdamW on one parameter tensor. m, v (and master, when dtype() != acc_dtype())
  // are acc_dtype(); param is refreshed from master when present.
  virtual void adamw_update(void* param, void* master, const void* grad, void* m, void* v,
                            size_t n, const AdamWSettings& s) = 0;
  // AdamW on segments of flat buffers (param, grad: dtype(); master, m, v:
  // acc_dtype(), master null where there is none): the same bits as
  // adamw_update on each segment with s's lr, betas, eps and step and the
  // segment's weight_decay and grad_scale. Segments do not overlap. The
  // CUDA backend does it in one launch; this default calls adamw_update once
  // per segment.
  virtual void adamw_update_segments(void* param, void* master, const void* grad, void* m,
                                     void* v, const AdamWSegment* segments, size_t n_segments,
                                     const AdamWSettings& s) {
    const size_t es = dtype_size(dtype()), acc = dtype_size(acc_dtype());
    auto at = [](void* base, size_t i, size_t bytes) -> void* {
      return base ? static_cast<char*>(base) + i * bytes : nullptr;
    };
    for (size_t i = 0; i < n_segments; ++i) {
      const AdamWSegment& seg = segments[i];
      AdamWSettings t = s;
      t.weight_decay = seg.weight_decay, t.grad_scale = seg.grad_scale;
      const void* g = static_cast<const char*>(grad) + seg.begin * es;
      adamw_update(at(param, seg.begin, es), at(master, seg.begin, acc), g, at(m, seg.begin, acc),
                   at(v, seg.begin, acc), seg.end - seg.begin, t);
    }
  }
};

// "cpu" (fp32), "cpu64" (fp64, for gradient checks) or "cuda" (bf16 + fp32 master).
// Throws lsgpt::Error with a clear message when the device is unavailable.
std::unique_ptr<Backend> make_backend(const std::string& device);

// RAII owner of one device allocation.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend& be, size_t bytes) : be_(&be), bytes_(bytes) {
    ptr_ = bytes ? be.alloc(bytes) : nullptr;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      be_ = o.be_, ptr_ = o.ptr_, bytes_ = o.bytes_;
      o.ptr_ = nullptr, o.bytes_ = 0;
    }
    return *this;
  }
  ~DeviceBuffer() { reset(); }
  void reset() noexcept {
    if (ptr_) be_->dealloc(ptr_);
    ptr_ = nullptr, bytes_ = 0;
  }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  Backend* be_ = nullptr;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace lsgpt
