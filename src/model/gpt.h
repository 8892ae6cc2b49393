// The GPT-2 model with LS-attention, written once over the Backend op
// interface: the same code trains on the CPU (fp32) and on CUDA (bf16 with fp32
// master weights). Parameters, gradients and optimizer state each live in one
// flat device buffer laid out by make_param_layout(); activations are sized
// for the largest (B, T) seen so far and reused.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/params.h"
#include "ops/backend.h"

namespace lsgpt {

class GPT {
 public:
  // flat_elements: the parameter and gradient buffers hold at least this
  // many elements (zero past the layout's total), so a data-parallel run can
  // cut them into equal shards; 0 means exactly the layout's total.
  GPT(const ModelConfig& cfg, Backend& backend, size_t flat_elements = 0);
  ~GPT();
  GPT(const GPT&) = delete;
  GPT& operator=(const GPT&) = delete;

  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  Backend& backend() { return be_; }

  // GPT-2 initialisation: weights N(0, 0.02), the two residual projections of
  // each block N(0, 0.02/sqrt(2 n_layer)), biases 0, LayerNorm weights 1,
  // padded vocabulary rows 0. Deterministic in the seed.
  void init_random(uint64_t seed);
  void set_parameters(std::span<const float> flat);  // host fp32, layout order
  std::vector<float> parameters() const;             // master weights where they exist

  // ---- training ----
  // Mean cross-entropy over the targets that are >= 0, without gradients.
  // inputs/targets are host arrays [B*T]. The z-loss term is not included
  // (see last_z_loss()).
  double evaluate(const int32_t* inputs, const int32_t* targets, int B, int T);
  // Forward and backward in one call: accumulates into the gradients the
  // gradient of weight * (mean cross-entropy + z-loss term). Returns the mean
  // cross-entropy; the z-loss term is last_z_loss().
  double forward_backward(const int32_t* inputs, const int32_t* targets, int B, int T,
                          double weight);
  void zero_grad();
  double grad_norm();  // global L2 norm of all gradients (NaN/inf propagate)
  // Sum of squares of each tensor's gradient, in layout order (model/grad_norms.h).
  std::vector<double> grad_sum_squares();
  void init_optimizer();  // zero AdamW moments (allocates them on first use)
  // s.weight_decay applies to decayed tensors only. tensor_scale (empty, or
  // one factor per layout tensor) multiplies s.grad_scale tensor by tensor:
  // per-tensor clipping.
  void adamw_step(const AdamWSettings& s, std::span<const double> tensor_scale = {});
  std::vector<float> adam_m() const;
  std::vector<float> adam_v() const;
  void set_adam_state(std::span<const float> m, std::span<const float> v);
  // Testing hook for the trainer's non-finite handling: overwrite one
  // gradient (or parameter) element with NaN.
  void poison_gradient();
  void poison_parameter();
  std::vector<float> gradients() const;  // host fp32 copy, for tests

  // ---- data parallel (src/dist) ----
  // The flat buffers themselves, flat_size() elements of the backend's dtype().
  size_t flat_size() const { return flat_; }
  void* parameter_buffer() { return params_.get(); }
  void* gradient_buffer() { return grads_.get(); }
  // Frees the master weights: a sharded optimizer keeps its own shard of
  // them. parameters() then reads the working copy.
  void drop_master_weights();
  // Called during backward() with each flat range [begin, end) of parameter
  // elements whose gradients are complete for this pass, from the last layer
  // to the first, so their reduction can start while the rest of the pass runs.
  using GradReadyHook = std::function<void(size_t begin, size_t end)>;
  void set_grad_ready_hook(GradReadyHook hook) { grad_ready_ = std::move(hook); }
  // Training steps replayed from a captured graph, on backends that capture
  // (CUDA): forward_backward's kernels (forward, classifier, backward) are
  // captured on its second call with the same B, T, loss scale and memory,
  // and replayed after, so the GPU runs the step's ~370 kernels without
  // waiting for the host to launch each. Off by default: a captured step
  // keeps the kernels chosen at capture (LSGPT_* switches read then); a
  // grad-ready hook runs the step eagerly.
  void set_step_graphs(bool on);
  // What the trainer and bench_train pass to set_step_graphs: on, unless
  // LSGPT_STEP_GRAPHS=off (any other value than on/off is an error).
  static bool step_graphs_wanted();
  // Whether the last forward_backward ran from a captured graph.
  bool last_step_replayed() const { return last_step_replayed_; }
  // Why the step could not be captured ("" if it was, or was never tried);
  // set_step_graphs is off from then on.
  const std::string& step_graph_error() const { return step_graph_error_; }

  // Largest pre-softmax attention logit per [layer][head] over the forward
  // passes since the last reset (the paper's logit-explosion signal).
  const std::vector<std::vector<float>>& max_logits() const { return max_logits_; }
  void reset_max_logits();
  // z_loss * mean over the targets of (log Z)^2 of the last evaluate() or
  // forward_backward(); 0 when the config's z_loss is 0.
  double last_z_loss() const { return last_z_loss_; }

  // Logits of the last forward pass: host fp32 [T, V] of batch row b (padding dropped).
  std::vector<float> logits_row_block(int b) const;

  // ---- inference with a KV cache ----
  // Local heads keep only their last w keys/values (a ring buffer).
  struct KVCache {
    int B = 0;
    std::vector<DeviceBuffer> k_local, v_local, k_global, v_global;  // per layer
    // Single-token activations, reused every step.
    DeviceBuffer tokens, x, ln, ln_mean, ln_rstd, qkv, atty, proj, fch, fch_gelu, logits;
  };
  std::unique_ptr<KVCache> make_kv_cache(int B);
  // Feeds tokens[B] at position pos (0-based, < seq_len) and returns host
  // fp32 logits [B, V] for the next token.
  std::vector<float> decode_step(KVCache& cache, const int32_t* tokens, int pos);
  // The same without a cache: full forward over tokens [B, T]; logits of the
  // last position [B, V].
  std::vector<float> last_logits(const int32_t* tokens, int B, int T);

  // ---- the inference engine's model half (src/infer/engine.h drives it) ----
  // The KV cache of `slots` sequences of up to max_T positions, the row
  // tables one decode step reads from backend memory (so a captured graph can
  // replay it), and that step's activations for up to max_rows rows. Sized
  // once: a decode step allocates nothing. Prefill buffers grow to the
  // longest prompt seen.
  struct DecodeState {
    int slots = 0, max_T = 0, max_rows = 0;
    std::vector<DeviceBuffer> k_local, v_local, k_global, v_global;  // per layer
    // int32 [max_rows] each, and SampleParams [max_rows]:
    DeviceBuffer row_tokens, row_positions, row_slots, row_params, sampled;
    DeviceBuffer x, ln, ln_mean, ln_rstd, qkv, atty, proj, fch, fch_gelu, logits, workspace;
    int prefill_T = 0;
    DeviceBuffer p_tokens, p_x, p_ln, p_mean, p_rstd, p_qkv, p_atty, p_proj, p_fch, p_fch_gelu,
        p_lse, p_max_logit;
  };
  // Bytes of the KV cache alone, for elements of elem_bytes bytes.
  static size_t kv_cache_bytes(const ModelConfig& cfg, int slots, int max_T, size_t elem_bytes);
  // Bytes make_decode_state() allocates on this model's backend (prefill
  // buffers excluded: they depend on the prompt).
  size_t decode_state_bytes(int slots, int max_T, int max_rows) const;
  std::unique_ptr<DecodeState> make_decode_state(int slots, int max_T, int max_rows);
  // Runs tokens[T] (host) through the model in one forward pass with the
  // training forward kernels, writes their keys and values into cache entry
  // `slot`, and leaves the logits of the last position in row `logits_row`
  // of state.logits. T <= state.max_T.
  void prefill(DecodeState& state, int slot, const int32_t* tokens, int T, int logits_row);
  // One decode step for rows [0, B) as the row tables say (token, position,
  // cache slot; a negative position marks an idle row); leaves logits
  // [B, padded_vocab] in state.logits. Enqueues work only: capturable.
  void decode_rows(DecodeState& state, int B);

 private:
  struct Activations;
  void ensure_activations(int B, int T);
  void forward(const int32_t* inputs, int B, int T);  // upload, enqueue_forward, fold_max_logits
  // Checks the input tokens [B*T] and copies them to the device.
  void upload_inputs(const int32_t* inputs, int B, int T);
  // The forward's kernels up to the logits, no host read-back; activations
  // allocated, inputs uploaded.
  void enqueue_forward(int B, int T);
  // Checks targets [B*T] (< vocab_size, at least one >= 0) and copies them to
  // the device; returns how many are >= 0.
  long upload_targets(const int32_t* targets, int B, int T);
  // ensure_activations, then upload_targets (checked first, so a bad
  // target is reported before any work) and upload_inputs; the count.
  long upload_batch(const int32_t* inputs, const int32_t* targets, int B, int T);
  // The classifier over the uploaded targets, with the logits' gradient
  // (scaled by weight / count) written in place when grad.
  void enqueue_loss(long count, int B, int T, double weight, bool grad);
  // Waits for the classifier; the mean loss over the count targets >= 0.
  double read_loss(const int32_t* targets, long count, int B, int T);
  void backward(int B, int T);
  // The step's kernels after the uploads: forward, classifier, backward.
  void enqueue_step(long count, int B, int T, double weight);
  // enqueue_step with the backend tuning what it has not yet tuned.
  void eager_step(long count, int B, int T, double weight);
  // eager_step, or the captured graph of enqueue_step (set_step_graphs).
  void run_step(long count, int B, int T, double weight);
  void* param(int index) const;
  void* grad(int index) const;
  void fold_max_logits();
  DecodeSpec decode_spec(const DecodeState& state, int layer, int B) const;
  void ensure_prefill_buffers(DecodeState& state, int T);
  // QK-norm of layer l's qkv [N,3C] into out (may be qkv itself); rstd may be null.
  void qk_norm_forward(void* out, void* rstd, const void* qkv, int layer, int N);
  std::vector<double> download_stats(const void* src, int n) const;  // acc_dtype() -> double

  ModelConfig cfg_;
  Backend& be_;
  ParamLayout layout_;
  size_t flat_;  // elements in params_, grads_, master_ (>= layout_.total)
  GradReadyHook grad_ready_;
  size_t es_;   // bytes per element of dtype()
  size_t acc_;  // bytes per element of acc_dtype()
  bool has_master_;
  DeviceBuffer params_, grads_, master_, m_, v_;
  std::unique_ptr<Activations> acts_;
  uint64_t acts_generation_ = 0;  // counts the activation reallocations
  struct StepGraph;
  bool step_graphs_ = false, last_step_replayed_ = false;
  std::string step_graph_error_;
  std::unique_ptr<StepGraph> step_graph_;
  std::vector<std::vector<float>> max_logits_;
  int last_B_ = 0, last_T_ = 0;
  double last_z_loss_ = 0;
};

}  // namespace lsgpt
