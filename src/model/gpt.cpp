#include "model/gpt.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/env_switch.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/grad_norms.h"

namespace lsgpt {

namespace {
// Byte offset helper: every activation is addressed as base + elements.
inline void* at(void* base, size_t elements, size_t elem_bytes) {
  return static_cast<char*>(base) + elements * elem_bytes;
}
}  // namespace

// Per-layer activations saved by the forward pass for the backward pass.
struct LayerActs {
  // residual2 and residual3 first receive the attention's and the MLP's
  // output projections, to which the forward then adds the residual stream.
  DeviceBuffer ln1, ln1_mean, ln1_rstd, qkv, atty, lse, kbar, residual2, ln2, ln2_mean,
      ln2_rstd, fch, fch_gelu, residual3;
  void* max_logit = nullptr;  // [n_head] (acc), this layer's row of Activations::max_logits
  // With QK-norm: the attention's input (qkv with q and k normalised) and the
  // norm's statistics [N, 2, n_head]; qkv keeps the projection's output.
  DeviceBuffer qkv_normed, qk_rstd;
  const DeviceBuffer& attention_input() const { return qkv_normed.get() ? qkv_normed : qkv; }
};

struct GPT::Activations {
  int B = 0, T = 0;
  DeviceBuffer tokens, targets, encoded, lnf, lnf_mean, lnf_rstd, logits, losses;
  DeviceBuffer log_z;  // [N] (acc), with z-loss only
  // [n_layer, n_head] (acc): one buffer, so the host reads every layer's
  // maxima in one copy (one wait for the GPU, not one per layer).
  DeviceBuffer max_logits;
  std::vector<LayerActs> layers;
  // Backward scratch, shared by all layers.
  DeviceBuffer dresidual, dln, datty, dqkv, dfch, dlnf;
};

// A captured step stays valid while everything its kernels were given is:
// the shape, the loss scale (a kernel argument), the activation buffers
// (token and target buffers included) and the backend's scratch; the
// parameters and gradients never move. One graph is kept: a batch whose
// count of targets differs (ignored targets) changes the loss scale and is
// captured again after one eager step.
struct GPT::StepGraph {
  int B = 0, T = 0;
  double dloss = 0;
  uint64_t acts_generation = 0, backend_generation = 0;
  bool ran_eagerly = false;  // the key's first step, which sizes the scratch
  std::unique_ptr<CapturedWork> work;
  bool matches(const StepGraph& o) const {
    return B == o.B && T == o.T && dloss == o.dloss && acts_generation == o.acts_generation &&
           backend_generation == o.backend_generation;
  }
};

GPT::GPT(const ModelConfig& cfg, Backend& backend, size_t flat_elements)
    : cfg_(cfg), be_(backend) {
  cfg_.normalize_and_validate();
  layout_ = make_param_layout(cfg_);
  flat_ = std::max(layout_.total, flat_elements);
  es_ = dtype_size(be_.dtype());
  acc_ = dtype_size(be_.acc_dtype());
  has_master_ = be_.dtype() != be_.acc_dtype();
  params_ = DeviceBuffer(be_, flat_ * es_);
  grads_ = DeviceBuffer(be_, flat_ * es_);
  be_.zero(params_.get(), flat_ * es_);  // the padding past the layout stays 0
  if (has_master_) {
    master_ = DeviceBuffer(be_, flat_ * acc_);
    be_.zero(master_.get(), flat_ * acc_);
  }
  max_logits_.assign(cfg_.n_layer, std::vector<float>(cfg_.n_head, -INFINITY));
  init_random(0);
  zero_grad();
}

GPT::~GPT() = default;

void* GPT::param(int index) const { return at(params_.get(), layout_[index].offset, es_); }
void* GPT::grad(int index) const { return at(grads_.get(), layout_[index].offset, es_); }

void GPT::init_random(uint64_t seed) {
  std::vector<float> host(layout_.total, 0.0f);
  Rng rng(seed);
  const float std_base = 0.02f;
  const float std_resid = 0.02f / std::sqrt(2.0f * cfg_.n_layer);
  auto normal_fill = [&](int index, float stddev, size_t rows_used = 0) {
    const ParamInfo& p = layout_[index];
    size_t n = rows_used ? rows_used * size_t(p.shape[1]) : p.numel;
    for (size_t i = 0; i < n; ++i) host[p.offset + i] = stddev * float(rng.normal());
  };
  auto fill = [&](int index, float value) {
    const ParamInfo& p = layout_[index];
    std::fill_n(host.begin() + p.offset, p.numel, value);
  };
  normal_fill(layout_.wte, std_base, size_t(cfg_.vocab_size));  // padded rows stay 0
  normal_fill(layout_.wpe, 0.01f);
  for (const LayerParams& lp : layout_.layers) {
    fill(lp.ln1_w, 1.0f);
    normal_fill(lp.qkv_w, std_base);
    if (lp.q_norm_w >= 0) fill(lp.q_norm_w, 1.0f), fill(lp.k_norm_w, 1.0f);
    normal_fill(lp.attn_proj_w, std_resid);
    fill(lp.ln2_w, 1.0f);
    normal_fill(lp.fc_w, std_base);
    normal_fill(lp.fc_proj_w, std_resid);
  }
  fill(layout_.lnf_w, 1.0f);
  set_parameters(host);
}

void GPT::set_parameters(std::span<const float> flat) {
  if (flat.size() != layout_.total)
    fail("parameter count mismatch: got ", flat.size(), ", the model has ", layout_.total);
  be_.upload_f32(params_.get(), be_.dtype(), flat.data(), flat.size());
  if (has_master_) be_.upload_f32(master_.get(), be_.acc_dtype(), flat.data(), flat.size());
}

std::vector<float> GPT::parameters() const {
  std::vector<float> host(layout_.total);
  if (has_master_)
    be_.download_f32(host.data(), master_.get(), be_.acc_dtype(), host.size());
  else
    be_.download_f32(host.data(), params_.get(), be_.dtype(), host.size());
  return host;
}

std::vector<float> GPT::gradients() const {
  std::vector<float> host(layout_.total);
  be_.download_f32(host.data(), grads_.get(), be_.dtype(), host.size());
  return host;
}

void GPT::ensure_activations(int B, int T) {
  if (T > cfg_.seq_len) fail("sequence of ", T, " tokens exceeds the context of ", cfg_.seq_len);
  if (acts_ && B * T <= acts_->B * acts_->T && T <= acts_->T && B <= acts_->B) return;
  acts_.reset();  // free first so peak memory stays at one set
  auto a = std::make_unique<Activations>();
  a->B = B, a->T = T;
  const size_t N = size_t(B) * T, C = cfg_.d_model, H = cfg_.n_head;
  const size_t Vp = cfg_.padded_vocab();
  auto act = [&](size_t n) { return DeviceBuffer(be_, n * es_); };
  auto stat = [&](size_t n) { return DeviceBuffer(be_, n * acc_); };
  a->tokens = DeviceBuffer(be_, N * sizeof(int32_t));
  a->targets = DeviceBuffer(be_, N * sizeof(int32_t));
  a->encoded = act(N * C);
  a->layers.resize(cfg_.n_layer);
  a->max_logits = stat(size_t(cfg_.n_layer) * H);
  for (int l = 0; l < cfg_.n_layer; ++l) {
    LayerActs& L = a->layers[l];
    L.ln1 = act(N * C), L.ln1_mean = stat(N), L.ln1_rstd = stat(N);
    L.qkv = act(N * 3 * C), L.atty = act(N * C), L.lse = stat(size_t(B) * H * T);
    if (cfg_.qk_norm) L.qkv_normed = act(N * 3 * C), L.qk_rstd = stat(N * 2 * H);
    if (cfg_.span_layer(l).needs_kbar()) L.kbar = act(N * C);
    L.max_logit = at(a->max_logits.get(), size_t(l) * H, acc_);
    L.residual2 = act(N * C);
    L.ln2 = act(N * C), L.ln2_mean = stat(N), L.ln2_rstd = stat(N);
    L.fch = act(N * 4 * C), L.fch_gelu = act(N * 4 * C);
    L.residual3 = act(N * C);
  }
  a->lnf = act(N * C), a->lnf_mean = stat(N), a->lnf_rstd = stat(N);
  a->logits = act(N * Vp), a->losses = stat(N);
  if (cfg_.z_loss > 0) a->log_z = stat(N);
  a->dresidual = act(N * C), a->dln = act(N * C), a->datty = act(N * C);
  a->dqkv = act(N * 3 * C), a->dfch = act(N * 4 * C), a->dlnf = act(N * C);
  acts_ = std::move(a);
  ++acts_generation_;
}

void GPT::forward(const int32_t* inputs, int B, int T) {
  ensure_activations(B, T);
  upload_inputs(inputs, B, T);
  enqueue_forward(B, T);
  fold_max_logits();
}

void GPT::upload_inputs(const int32_t* inputs, int B, int T) {
  const int N = B * T;
  for (int i = 0; i < N; ++i)
    if (inputs[i] < 0 || inputs[i] >= cfg_.vocab_size)
      fail("input token ", inputs[i], " is outside the vocabulary of ", cfg_.vocab_size);
  be_.upload(acts_->tokens.get(), inputs, size_t(N) * sizeof(int32_t));
}

void GPT::enqueue_forward(int B, int T) {
  Activations& a = *acts_;
  const int N = B * T, C = cfg_.d_model, Vp = cfg_.padded_vocab();
  be_.embedding_forward(a.encoded.get(), a.tokens.as<int32_t>(), param(layout_.wte),
                        param(layout_.wpe), B, T, C, 0);
  // Each residual add runs fused with the LayerNorm after it
  // (add_layernorm_forward): a block's projection lands in residual2 or
  // residual3 and the stream so far is added into it in place, so the sum is
  // written once and not read back, and the projection needs no buffer of
  // its own. Addition commutes, so the bits are those of residual_forward
  // then layernorm_forward.
  // The LayerNorm that opens layer l, or ln_f for l == n_layer.
  struct Norm {
    void *out, *mean, *rstd;
    const void *weight, *bias;
  };
  auto norm_opening = [&](int l) -> Norm {
    if (l == cfg_.n_layer)
      return {a.lnf.get(), a.lnf_mean.get(), a.lnf_rstd.get(), param(layout_.lnf_w),
              param(layout_.lnf_b)};
    LayerActs& L = a.layers[l];
    return {L.ln1.get(), L.ln1_mean.get(), L.ln1_rstd.get(), param(layout_.layers[l].ln1_w),
            param(layout_.layers[l].ln1_b)};
  };
  const Norm first = norm_opening(0);
  be_.layernorm_forward(first.out, first.mean, first.rstd, a.encoded.get(), first.weight,
                        first.bias, N, C);
  const void* residual = a.encoded.get();
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const LayerParams& p = layout_.layers[l];
    LayerActs& L = a.layers[l];
    const AttentionSpec spec = cfg_.attention_spec(l, B, T);
    be_.matmul_forward(L.qkv.get(), nullptr, L.ln1.get(), param(p.qkv_w), param(p.qkv_b), N, C,
                       3 * C);
    if (cfg_.qk_norm) qk_norm_forward(L.qkv_normed.get(), L.qk_rstd.get(), L.qkv.get(), l, N);
    be_.attention_forward(L.atty.get(), L.lse.get(), L.max_logit, L.kbar.get(),
                          L.attention_input().get(), spec);
    be_.matmul_forward(L.residual2.get(), nullptr, L.atty.get(), param(p.attn_proj_w),
                       param(p.attn_proj_b), N, C, C);
    be_.add_layernorm_forward(L.residual2.get(), L.ln2.get(), L.ln2_mean.get(), L.ln2_rstd.get(),
                              residual, param(p.ln2_w), param(p.ln2_b), N, C);
    be_.matmul_forward(L.fch_gelu.get(), L.fch.get(), L.ln2.get(), param(p.fc_w), param(p.fc_b),
                       N, C, 4 * C);
    be_.matmul_forward(L.residual3.get(), nullptr, L.fch_gelu.get(), param(p.fc_proj_w),
                       param(p.fc_proj_b), N, 4 * C, C);
    const Norm next = norm_opening(l + 1);
    be_.add_layernorm_forward(L.residual3.get(), next.out, next.mean, next.rstd,
                              L.residual2.get(), next.weight, next.bias, N, C);
    residual = L.residual3.get();
  }
  // Tied embedding: the classifier reuses wte, padded rows included (they are
  // masked out of the softmax, so they are never predicted).
  be_.matmul_forward(a.logits.get(), nullptr, a.lnf.get(), param(layout_.wte), nullptr, N, C,
                     Vp);
  last_B_ = B, last_T_ = T;
}

void GPT::qk_norm_forward(void* out, void* rstd, const void* qkv, int layer, int N) {
  const LayerParams& p = layout_.layers[layer];
  be_.qk_norm_forward(out, rstd, qkv, param(p.q_norm_w), param(p.k_norm_w), N, cfg_.n_head,
                      cfg_.head_dim(), ModelConfig::kQkNormEps);
}

void GPT::fold_max_logits() {
  const size_t H = cfg_.n_head;
  std::vector<float> all(size_t(cfg_.n_layer) * H);
  if (all.empty()) return;
  be_.download_f32(all.data(), acts_->max_logits.get(), be_.acc_dtype(), all.size());
  for (int l = 0; l < cfg_.n_layer; ++l)
    for (size_t h = 0; h < H; ++h)
      max_logits_[l][h] = std::max(max_logits_[l][h], all[l * H + h]);
}

void GPT::reset_max_logits() {
  for (auto& layer : max_logits_) std::fill(layer.begin(), layer.end(), -INFINITY);
}

long GPT::upload_targets(const int32_t* targets, int B, int T) {
  const int N = B * T;
  long count = 0;
  for (int i = 0; i < N; ++i) {
    if (targets[i] >= cfg_.vocab_size)
      fail("target token ", targets[i], " is outside the vocabulary of ", cfg_.vocab_size);
    count += targets[i] >= 0;
  }
  if (count == 0) fail("batch has no targets to predict");
  be_.upload(acts_->targets.get(), targets, size_t(N) * sizeof(int32_t));
  return count;
}

void GPT::enqueue_loss(long count, int B, int T, double weight, bool grad) {
  Activations& a = *acts_;
  be_.softmax_cross_entropy(a.losses.get(), a.logits.get(), a.targets.as<int32_t>(), B * T,
                            cfg_.vocab_size, cfg_.padded_vocab(), weight / double(count), grad,
                            cfg_.z_loss, a.log_z.get());
}

double GPT::read_loss(const int32_t* targets, long count, int B, int T) {
  Activations& a = *acts_;
  const int N = B * T;
  const std::vector<double> losses = download_stats(a.losses.get(), N);
  double sum = 0;
  for (int i = 0; i < N; ++i)
    if (targets[i] >= 0) sum += losses[i];
  last_z_loss_ = 0;
  if (cfg_.z_loss > 0) {
    const std::vector<double> log_z = download_stats(a.log_z.get(), N);
    double z = 0;
    for (int i = 0; i < N; ++i)
      if (targets[i] >= 0) z += log_z[i] * log_z[i];
    last_z_loss_ = cfg_.z_loss * z / double(count);
  }
  return sum / double(count);
}

// Summed in double on the host; an f64 backend's statistics are read without
// narrowing, so finite-difference checks see the full precision.
std::vector<double> GPT::download_stats(const void* src, int n) const {
  std::vector<double> out(n);
  if (be_.acc_dtype() == DType::f64) {
    be_.download(out.data(), src, size_t(n) * sizeof(double));
  } else {
    std::vector<float> narrow(n);
    be_.download_f32(narrow.data(), src, be_.acc_dtype(), narrow.size());
    std::copy(narrow.begin(), narrow.end(), out.begin());
  }
  return out;
}

long GPT::upload_batch(const int32_t* inputs, const int32_t* targets, int B, int T) {
  ensure_activations(B, T);
  const long count = upload_targets(targets, B, T);
  upload_inputs(inputs, B, T);
  return count;
}

double GPT::evaluate(const int32_t* inputs, const int32_t* targets, int B, int T) {
  const long count = upload_batch(inputs, targets, B, T);
  enqueue_forward(B, T);
  enqueue_loss(count, B, T, 1.0, false);
  fold_max_logits();
  return read_loss(targets, count, B, T);
}

// The whole step is enqueued before the host reads anything back (the
// maxima, the losses), so the GPU does not drain and wait for the host
// between the forward, the classifier and the backward.
double GPT::forward_backward(const int32_t* inputs, const int32_t* targets, int B, int T,
                             double weight) {
  const long count = upload_batch(inputs, targets, B, T);
  run_step(count, B, T, weight);
  last_B_ = B, last_T_ = T;  // a replayed step skips enqueue_forward, which sets them
  fold_max_logits();
  return read_loss(targets, count, B, T);
}

void GPT::enqueue_step(long count, int B, int T, double weight) {
  enqueue_forward(B, T);
  enqueue_loss(count, B, T, weight, true);
  backward(B, T);
}

bool GPT::step_graphs_wanted() { return env_switch("LSGPT_STEP_GRAPHS", {"on", "off"}) == 0; }

void GPT::set_step_graphs(bool on) {
  step_graphs_ = on;
  if (!on) step_graph_.reset();
}

// Eager runs of the step tune the backend's kernels for its shapes
// (Backend::set_tuning); replays and later steps reuse what was chosen.
void GPT::eager_step(long count, int B, int T, double weight) {
  struct TuningScope {
    Backend& be;
    explicit TuningScope(Backend& b) : be(b) { be.set_tuning(true); }
    ~TuningScope() { be.set_tuning(false); }
  } scope(be_);
  enqueue_step(count, B, T, weight);
}

void GPT::run_step(long count, int B, int T, double weight) {
  last_step_replayed_ = false;
  if (!step_graphs_ || grad_ready_) return eager_step(count, B, T, weight);
  StepGraph key;
  key.B = B, key.T = T, key.dloss = weight / double(count);
  key.acts_generation = acts_generation_, key.backend_generation = be_.capture_generation();
  if (!step_graph_ || !step_graph_->matches(key))
    step_graph_ = std::make_unique<StepGraph>(std::move(key));
  StepGraph& g = *step_graph_;
  // The first step of a shape runs eagerly: it grows the scratch to the
  // size the step needs, which a capture may not do; the key then takes the
  // scratch as it left it.
  if (!g.work && !g.ran_eagerly) {
    eager_step(count, B, T, weight);
    g.backend_generation = be_.capture_generation();
    g.ran_eagerly = true;
    return;
  }
  if (!g.work) {
    // A backend that cannot capture, or a step that cannot be captured (one
    // that waits for the device), runs eagerly from now on; a real fault
    // shows again in that eager run.
    try {
      g.work = be_.capture([&] { enqueue_step(count, B, T, weight); });
      if (!g.work) step_graph_error_ = "the " + be_.name() + " backend does not capture work";
    } catch (const Error& e) {
      step_graph_error_ = e.what();
    }
    if (!g.work) {
      set_step_graphs(false);
      return eager_step(count, B, T, weight);
    }
  }
  g.work->replay();
  last_step_replayed_ = true;
}

void GPT::backward(int B, int T) {
  Activations& a = *acts_;
  const int N = B * T, C = cfg_.d_model, Vp = cfg_.padded_vocab();
  // logits now hold dloss/dlogits (written in place by the classifier).
  be_.matmul_backward(a.dlnf.get(), grad(layout_.wte), nullptr, a.logits.get(), a.lnf.get(),
                      param(layout_.wte), nullptr, nullptr, N, C, Vp);
  const void* last_residual =
      cfg_.n_layer ? a.layers.back().residual3.get() : a.encoded.get();
  // A projection that adds into the residual stream has as output gradient
  // dresidual once the LayerNorm backward above it has added in, so that
  // LayerNorm backward sums the projection's bias gradient (dinp_colsum),
  // sparing matmul_backward a pass over dresidual: fc_proj_b of the last
  // layer at ln_f, of layer l - 1 at layer l's ln_1, attn_proj_b at ln_2.
  // All come before their layer's ready() call.
  auto fc_proj_bias_grad = [&](int l) {
    return l >= 0 ? grad(layout_.layers[l].fc_proj_b) : nullptr;
  };
  be_.zero(a.dresidual.get(), size_t(N) * C * es_);
  be_.layernorm_backward(a.dresidual.get(), grad(layout_.lnf_w), grad(layout_.lnf_b),
                         fc_proj_bias_grad(cfg_.n_layer - 1), a.dlnf.get(), last_residual,
                         param(layout_.lnf_w), a.lnf_mean.get(), a.lnf_rstd.get(), N, C);
  // The layout is wte, wpe, the layers' tensors layer by layer, then ln_f:
  // a layer's range runs to the next layer's first tensor, so tensors added
  // to a layer later are covered too.
  auto layer_begin = [&](int l) {
    return l < cfg_.n_layer ? layout_[layout_.layers[l].ln1_w].offset
                            : layout_[layout_.lnf_w].offset;
  };
  auto ready = [&](size_t begin, size_t end) {
    if (grad_ready_) grad_ready_(begin, end);
  };
  ready(layout_[layout_.lnf_w].offset, layout_.total);
  for (int l = cfg_.n_layer - 1; l >= 0; --l) {
    const LayerParams& p = layout_.layers[l];
    LayerActs& L = a.layers[l];
    const void* residual = l == 0 ? a.encoded.get() : a.layers[l - 1].residual3.get();
    const AttentionSpec spec = cfg_.attention_spec(l, B, T);
    // residual3 = residual2 + the MLP's projection: dresidual flows to both
    // unchanged. The GELU between fc and fc_proj is differentiated inside
    // fc_proj's backward (dfch is the gradient of the pre-activation fch).
    be_.matmul_backward(a.dfch.get(), grad(p.fc_proj_w), nullptr, a.dresidual.get(),
                        L.fch_gelu.get(), param(p.fc_proj_w), nullptr, L.fch.get(), N, 4 * C, C);
    be_.matmul_backward(a.dln.get(), grad(p.fc_w), grad(p.fc_b), a.dfch.get(), L.ln2.get(),
                        param(p.fc_w), nullptr, nullptr, N, C, 4 * C);
    be_.layernorm_backward(a.dresidual.get(), grad(p.ln2_w), grad(p.ln2_b),
                           grad(p.attn_proj_b), a.dln.get(), L.residual2.get(), param(p.ln2_w),
                           L.ln2_mean.get(), L.ln2_rstd.get(), N, C);
    // residual2 = residual + the attention's projection.
    be_.matmul_backward(a.datty.get(), grad(p.attn_proj_w), nullptr, a.dresidual.get(),
                        L.atty.get(), param(p.attn_proj_w), nullptr, nullptr, N, C, C);
    // Without QK-norm dqkv is the qkv projection's output gradient as the
    // attention backward writes it, so that op sums the projection's bias
    // gradient (in its row epilogues on CUDA) and matmul_backward skips its
    // pass over dqkv; with QK-norm the norm's backward changes dqkv first.
    void* qkv_bias_grad = grad(p.qkv_b);
    be_.attention_backward(a.dqkv.get(), cfg_.qk_norm ? nullptr : qkv_bias_grad, a.datty.get(),
                           L.attention_input().get(), L.atty.get(), L.lse.get(), L.kbar.get(),
                           spec);
    // The span decomposition above acted on dQ/dK of the normalised q and k;
    // the norm's backward carries them to the projection's output.
    if (cfg_.qk_norm)
      be_.qk_norm_backward(a.dqkv.get(), grad(p.q_norm_w), grad(p.k_norm_w), a.dqkv.get(),
                           L.qkv.get(), param(p.q_norm_w), param(p.k_norm_w), L.qk_rstd.get(), N,
                           cfg_.n_head, cfg_.head_dim());
    be_.matmul_backward(a.dln.get(), grad(p.qkv_w), cfg_.qk_norm ? qkv_bias_grad : nullptr,
                        a.dqkv.get(), L.ln1.get(), param(p.qkv_w), nullptr, nullptr, N, C, 3 * C);
    be_.layernorm_backward(a.dresidual.get(), grad(p.ln1_w), grad(p.ln1_b),
                           fc_proj_bias_grad(l - 1), a.dln.get(), residual, param(p.ln1_w),
                           L.ln1_mean.get(), L.ln1_rstd.get(), N, C);
    ready(layer_begin(l), layer_begin(l + 1));
  }
  be_.embedding_backward(grad(layout_.wte), grad(layout_.wpe), a.dresidual.get(),
                         a.tokens.as<int32_t>(), B, T, C);
  ready(0, layer_begin(0));
}

void GPT::zero_grad() { be_.zero(grads_.get(), flat_ * es_); }

void GPT::drop_master_weights() {
  master_.reset();
  has_master_ = false;
}

double GPT::grad_norm() { return std::sqrt(be_.sum_squares(grads_.get(), layout_.total)); }

void GPT::init_optimizer() {
  if (!m_.get()) {
    m_ = DeviceBuffer(be_, layout_.total * acc_);
    v_ = DeviceBuffer(be_, layout_.total * acc_);
  }
  be_.zero(m_.get(), layout_.total * acc_);
  be_.zero(v_.get(), layout_.total * acc_);
}

std::vector<double> GPT::grad_sum_squares() {
  return tensor_sum_squares(be_, grads_.get(), es_, layout_.tensors);
}

void GPT::adamw_step(const AdamWSettings& s, std::span<const double> tensor_scale) {
  if (!m_.get()) init_optimizer();
  LSGPT_CHECK(tensor_scale.empty() || tensor_scale.size() == layout_.tensors.size(),
              "per-tensor scales: ", tensor_scale.size(), " for ", layout_.tensors.size(),
              " tensors");
  // One segment per tensor: its decay mask and per-tensor scale ride along,
  // so a backend can update every tensor in one pass.
  std::vector<AdamWSegment> segments(layout_.tensors.size());
  for (size_t i = 0; i < layout_.tensors.size(); ++i) {
    const ParamInfo& p = layout_.tensors[i];
    segments[i].begin = p.offset, segments[i].end = p.offset + p.numel;
    segments[i].weight_decay = p.decay ? s.weight_decay : 0;
    segments[i].grad_scale = tensor_scale.empty() ? s.grad_scale : s.grad_scale * tensor_scale[i];
  }
  be_.adamw_update_segments(params_.get(), has_master_ ? master_.get() : nullptr, grads_.get(),
                            m_.get(), v_.get(), segments.data(), segments.size(), s);
}

std::vector<float> GPT::adam_m() const {
  std::vector<float> host(m_.get() ? layout_.total : 0);
  if (!host.empty()) be_.download_f32(host.data(), m_.get(), be_.acc_dtype(), host.size());
  return host;
}

std::vector<float> GPT::adam_v() const {
  std::vector<float> host(v_.get() ? layout_.total : 0);
  if (!host.empty()) be_.download_f32(host.data(), v_.get(), be_.acc_dtype(), host.size());
  return host;
}

void GPT::set_adam_state(std::span<const float> m, std::span<const float> v) {
  if (m.size() != layout_.total || v.size() != layout_.total)
    fail("optimizer state has ", m.size(), "/", v.size(), " entries; the model has ",
         layout_.total, " parameters");
  init_optimizer();
  be_.upload_f32(m_.get(), be_.acc_dtype(), m.data(), m.size());
  be_.upload_f32(v_.get(), be_.acc_dtype(), v.data(), v.size());
}

void GPT::poison_gradient() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  be_.upload_f32(grads_.get(), be_.dtype(), &nan, 1);
}

void GPT::poison_parameter() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  void* target = at(params_.get(), layout_[layout_.lnf_w].offset, es_);
  be_.upload_f32(target, be_.dtype(), &nan, 1);
  if (has_master_)
    be_.upload_f32(at(master_.get(), layout_[layout_.lnf_w].offset, acc_), be_.acc_dtype(),
                   &nan, 1);
}

std::vector<float> GPT::logits_row_block(int b) const {
  LSGPT_CHECK(acts_ && b < last_B_, "no forward pass for batch row ", b);
  const size_t Vp = cfg_.padded_vocab(), V = cfg_.vocab_size, T = last_T_;
  std::vector<float> padded(T * Vp), out(T * V);
  be_.download_f32(padded.data(), at(acts_->logits.get(), size_t(b) * T * Vp, es_),
                   be_.dtype(), padded.size());
  for (size_t t = 0; t < T; ++t)
    std::copy_n(padded.begin() + t * Vp, V, out.begin() + t * V);
  return out;
}

std::vector<float> GPT::last_logits(const int32_t* tokens, int B, int T) {
  forward(tokens, B, T);
  const size_t Vp = cfg_.padded_vocab(), V = cfg_.vocab_size;
  std::vector<float> row(Vp), out(size_t(B) * V);
  for (int b = 0; b < B; ++b) {
    be_.download_f32(row.data(), at(acts_->logits.get(), (size_t(b) * T + T - 1) * Vp, es_),
                     be_.dtype(), Vp);
    std::copy_n(row.begin(), V, out.begin() + size_t(b) * V);
  }
  return out;
}

std::unique_ptr<GPT::KVCache> GPT::make_kv_cache(int B) {
  auto c = std::make_unique<KVCache>();
  c->B = B;
  const size_t C = cfg_.d_model, D = cfg_.head_dim(), Vp = cfg_.padded_vocab();
  const int slots = std::min(cfg_.window, cfg_.seq_len);
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const size_t local = size_t(B) * cfg_.n_local[l] * slots * D;
    const size_t global = size_t(B) * (cfg_.n_head - cfg_.n_local[l]) * cfg_.seq_len * D;
    c->k_local.emplace_back(be_, local * es_), c->v_local.emplace_back(be_, local * es_);
    c->k_global.emplace_back(be_, global * es_), c->v_global.emplace_back(be_, global * es_);
  }
  auto act = [&](size_t n) { return DeviceBuffer(be_, n * es_); };
  c->tokens = DeviceBuffer(be_, size_t(B) * sizeof(int32_t));
  c->x = act(B * C), c->ln = act(B * C), c->qkv = act(B * 3 * C), c->atty = act(B * C);
  c->proj = act(B * C), c->fch = act(B * 4 * C), c->fch_gelu = act(B * 4 * C);
  c->logits = act(B * Vp);
  c->ln_mean = DeviceBuffer(be_, B * acc_), c->ln_rstd = DeviceBuffer(be_, B * acc_);
  return c;
}

std::vector<float> GPT::decode_step(KVCache& c, const int32_t* tokens, int pos) {
  if (pos < 0 || pos >= cfg_.seq_len)
    fail("position ", pos, " is outside the context of ", cfg_.seq_len, " tokens");
  const int B = c.B, C = cfg_.d_model, Vp = cfg_.padded_vocab();
  for (int b = 0; b < B; ++b)
    if (tokens[b] < 0 || tokens[b] >= cfg_.vocab_size)
      fail("token ", tokens[b], " is outside the vocabulary of ", cfg_.vocab_size);
  be_.upload(c.tokens.get(), tokens, size_t(B) * sizeof(int32_t));
  be_.embedding_forward(c.x.get(), c.tokens.as<int32_t>(), param(layout_.wte),
                        param(layout_.wpe), B, 1, C, pos);
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const LayerParams& p = layout_.layers[l];
    DecodeSpec spec;
    spec.B = B, spec.n_head = cfg_.n_head, spec.head_dim = cfg_.head_dim();
    spec.n_local = cfg_.n_local[l], spec.window = cfg_.window, spec.max_T = cfg_.seq_len;
    spec.pos = pos;
    be_.layernorm_forward(c.ln.get(), c.ln_mean.get(), c.ln_rstd.get(), c.x.get(),
                          param(p.ln1_w), param(p.ln1_b), B, C);
    be_.matmul_forward(c.qkv.get(), nullptr, c.ln.get(), param(p.qkv_w), param(p.qkv_b), B, C,
                       3 * C);
    // QK-norm in place: the cache holds normalised keys.
    if (cfg_.qk_norm) qk_norm_forward(c.qkv.get(), nullptr, c.qkv.get(), l, B);
    be_.attention_decode(c.atty.get(), c.k_local[l].get(), c.v_local[l].get(),
                         c.k_global[l].get(), c.v_global[l].get(), c.qkv.get(), spec);
    be_.matmul_forward(c.proj.get(), nullptr, c.atty.get(), param(p.attn_proj_w),
                       param(p.attn_proj_b), B, C, C);
    be_.add_inplace(c.x.get(), c.proj.get(), size_t(B) * C);
    be_.layernorm_forward(c.ln.get(), c.ln_mean.get(), c.ln_rstd.get(), c.x.get(),
                          param(p.ln2_w), param(p.ln2_b), B, C);
    be_.matmul_forward(c.fch_gelu.get(), c.fch.get(), c.ln.get(), param(p.fc_w), param(p.fc_b),
                       B, C, 4 * C);
    be_.matmul_forward(c.proj.get(), nullptr, c.fch_gelu.get(), param(p.fc_proj_w),
                       param(p.fc_proj_b), B, 4 * C, C);
    be_.add_inplace(c.x.get(), c.proj.get(), size_t(B) * C);
  }
  be_.layernorm_forward(c.ln.get(), c.ln_mean.get(), c.ln_rstd.get(), c.x.get(),
                        param(layout_.lnf_w), param(layout_.lnf_b), B, C);
  be_.matmul_forward(c.logits.get(), nullptr, c.ln.get(), param(layout_.wte), nullptr, B, C, Vp);
  std::vector<float> padded(size_t(B) * Vp), out(size_t(B) * cfg_.vocab_size);
  be_.download_f32(padded.data(), c.logits.get(), be_.dtype(), padded.size());
  for (int b = 0; b < B; ++b)
    std::copy_n(padded.begin() + size_t(b) * Vp, cfg_.vocab_size,
                out.begin() + size_t(b) * cfg_.vocab_size);
  return out;
}

}  // namespace lsgpt
