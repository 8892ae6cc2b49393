// The model's half of the inference engine: a per-slot KV cache, the prefill
// (a prompt in one forward pass through the training kernels, writing the
// cache as it goes) and the batched decode step over per-row tables. Only the
// last position's logits are computed in the prefill; activations are reused
// layer after layer, since nothing is kept for a backward pass.
#include <algorithm>
#include <vector>

#include "core/error.h"
#include "model/gpt.h"

namespace lsgpt {

namespace {
inline void* at(void* base, size_t elements, size_t elem_bytes) {
  return static_cast<char*>(base) + elements * elem_bytes;
}

struct CacheSizes {
  size_t local = 0, global = 0;  // elements per layer, each of k and v
};

CacheSizes layer_cache_elements(const ModelConfig& cfg, int layer, int slots, int max_T) {
  const size_t D = cfg.head_dim();
  const int ring = std::min(cfg.window, max_T);
  return {size_t(slots) * cfg.n_local[layer] * ring * D,
          size_t(slots) * (cfg.n_head - cfg.n_local[layer]) * max_T * D};
}
}  // namespace

size_t GPT::kv_cache_bytes(const ModelConfig& config, int slots, int max_T, size_t elem_bytes) {
  ModelConfig cfg = config;
  cfg.normalize_and_validate();
  size_t elements = 0;
  for (int l = 0; l < cfg.n_layer; ++l) {
    const CacheSizes c = layer_cache_elements(cfg, l, slots, max_T);
    elements += 2 * (c.local + c.global);
  }
  return elements * elem_bytes;
}

DecodeSpec GPT::decode_spec(const DecodeState& s, int layer, int B) const {
  DecodeSpec spec;
  spec.B = B, spec.n_head = cfg_.n_head, spec.head_dim = cfg_.head_dim();
  spec.n_local = cfg_.n_local[layer], spec.window = cfg_.window, spec.max_T = s.max_T;
  spec.positions = s.row_positions.as<int32_t>();
  spec.cache_rows = s.row_slots.as<int32_t>();
  spec.cache_B = s.slots;
  spec.num_splits = 0;  // the backend chooses
  spec.workspace = s.workspace.get();
  return spec;
}

namespace {
// Split-KV workspace for a batch of any row count the engine uses (powers
// of two up to max_rows, and max_rows): the split count, and so the bytes,
// depend on the batch.
size_t decode_workspace_bytes(const Backend& be, const ModelConfig& cfg, int max_T, int max_rows) {
  std::vector<int> row_counts{max_rows};
  for (int B = 1; B < max_rows; B *= 2) row_counts.push_back(B);
  size_t most = 0;
  for (int l = 0; l < cfg.n_layer; ++l)
    for (int B : row_counts) {
      DecodeSpec spec;
      spec.B = B, spec.n_head = cfg.n_head, spec.head_dim = cfg.head_dim();
      spec.n_local = cfg.n_local[l], spec.window = cfg.window, spec.max_T = max_T;
      spec.num_splits = 0, spec.workspace = reinterpret_cast<void*>(1);
      most = std::max(most, be.attention_decode_workspace_bytes(spec));
    }
  return most;
}
}  // namespace

size_t GPT::decode_state_bytes(int slots, int max_T, int max_rows) const {
  const size_t C = cfg_.d_model, R = max_rows, Vp = cfg_.padded_vocab();
  const size_t acts = R * C * 4 + R * 3 * C + R * 4 * C * 2 + R * Vp;
  return kv_cache_bytes(cfg_, slots, max_T, es_) + acts * es_ + 2 * R * acc_ +
         R * (4 * sizeof(int32_t) + sizeof(SampleParams)) +
         decode_workspace_bytes(be_, cfg_, max_T, max_rows);
}

std::unique_ptr<GPT::DecodeState> GPT::make_decode_state(int slots, int max_T, int max_rows) {
  LSGPT_CHECK(slots >= 1 && max_rows >= 1 && max_T >= 1 && max_T <= cfg_.seq_len,
              "decode state of ", slots, " slots, ", max_T, " positions, ", max_rows, " rows");
  auto s = std::make_unique<DecodeState>();
  s->slots = slots, s->max_T = max_T, s->max_rows = max_rows;
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const CacheSizes c = layer_cache_elements(cfg_, l, slots, max_T);
    s->k_local.emplace_back(be_, c.local * es_), s->v_local.emplace_back(be_, c.local * es_);
    s->k_global.emplace_back(be_, c.global * es_), s->v_global.emplace_back(be_, c.global * es_);
  }
  const size_t C = cfg_.d_model, R = max_rows, Vp = cfg_.padded_vocab();
  auto ints = [&] { return DeviceBuffer(be_, R * sizeof(int32_t)); };
  s->row_tokens = ints(), s->row_positions = ints(), s->row_slots = ints(), s->sampled = ints();
  s->row_params = DeviceBuffer(be_, R * sizeof(SampleParams));
  auto act = [&](size_t n) { return DeviceBuffer(be_, n * es_); };
  s->x = act(R * C), s->ln = act(R * C), s->atty = act(R * C), s->proj = act(R * C);
  s->qkv = act(R * 3 * C), s->fch = act(R * 4 * C), s->fch_gelu = act(R * 4 * C);
  s->logits = act(R * Vp);
  s->ln_mean = DeviceBuffer(be_, R * acc_), s->ln_rstd = DeviceBuffer(be_, R * acc_);
  s->workspace = DeviceBuffer(be_, decode_workspace_bytes(be_, cfg_, max_T, max_rows));
  be_.zero(s->workspace.get(), s->workspace.bytes());  // the split counters start at 0
  // Idle until the engine says otherwise: every row's position is -1.
  const std::vector<int32_t> idle(R, -1), zeros(R, 0);
  be_.upload(s->row_positions.get(), idle.data(), R * sizeof(int32_t));
  be_.upload(s->row_tokens.get(), zeros.data(), R * sizeof(int32_t));
  be_.upload(s->row_slots.get(), zeros.data(), R * sizeof(int32_t));
  be_.sync();
  return s;
}

void GPT::ensure_prefill_buffers(DecodeState& s, int T) {
  if (T <= s.prefill_T) return;
  const size_t N = T, C = cfg_.d_model;
  auto act = [&](size_t n) { return DeviceBuffer(be_, n * es_); };
  s.p_tokens = DeviceBuffer(be_, N * sizeof(int32_t));
  s.p_x = act(N * C), s.p_ln = act(N * C), s.p_atty = act(N * C), s.p_proj = act(N * C);
  s.p_qkv = act(N * 3 * C), s.p_fch = act(N * 4 * C), s.p_fch_gelu = act(N * 4 * C);
  s.p_mean = DeviceBuffer(be_, N * acc_), s.p_rstd = DeviceBuffer(be_, N * acc_);
  s.p_lse = DeviceBuffer(be_, size_t(cfg_.n_head) * N * acc_);
  s.p_max_logit = DeviceBuffer(be_, size_t(cfg_.n_head) * acc_);
  s.prefill_T = T;
}

void GPT::prefill(DecodeState& s, int slot, const int32_t* tokens, int T, int logits_row) {
  if (T < 1 || T > s.max_T)
    fail("a prompt of ", T, " tokens does not fit the cache of ", s.max_T, " positions");
  LSGPT_CHECK(slot >= 0 && slot < s.slots && logits_row >= 0 && logits_row < s.max_rows);
  for (int i = 0; i < T; ++i)
    if (tokens[i] < 0 || tokens[i] >= cfg_.vocab_size)
      fail("prompt token ", tokens[i], " is outside the vocabulary of ", cfg_.vocab_size);
  ensure_prefill_buffers(s, T);
  const int C = cfg_.d_model, Vp = cfg_.padded_vocab();
  be_.upload(s.p_tokens.get(), tokens, size_t(T) * sizeof(int32_t));
  be_.embedding_forward(s.p_x.get(), s.p_tokens.as<int32_t>(), param(layout_.wte),
                        param(layout_.wpe), 1, T, C, 0);
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const LayerParams& p = layout_.layers[l];
    AttentionSpec spec = cfg_.attention_spec(l, 1, T);
    spec.span = SpanLayer{};  // a backward-only setting: no kbar needed here
    be_.layernorm_forward(s.p_ln.get(), s.p_mean.get(), s.p_rstd.get(), s.p_x.get(),
                          param(p.ln1_w), param(p.ln1_b), T, C);
    be_.matmul_forward(s.p_qkv.get(), nullptr, s.p_ln.get(), param(p.qkv_w), param(p.qkv_b), T,
                       C, 3 * C);
    // QK-norm in place: the cache holds the normalised keys.
    if (cfg_.qk_norm) qk_norm_forward(s.p_qkv.get(), nullptr, s.p_qkv.get(), l, T);
    be_.kv_cache_write(s.k_local[l].get(), s.v_local[l].get(), s.k_global[l].get(),
                       s.v_global[l].get(), s.p_qkv.get(), T, slot, decode_spec(s, l, 1));
    be_.attention_forward(s.p_atty.get(), s.p_lse.get(), s.p_max_logit.get(), nullptr,
                          s.p_qkv.get(), spec);
    be_.matmul_forward(s.p_proj.get(), nullptr, s.p_atty.get(), param(p.attn_proj_w),
                       param(p.attn_proj_b), T, C, C);
    be_.add_inplace(s.p_x.get(), s.p_proj.get(), size_t(T) * C);
    be_.layernorm_forward(s.p_ln.get(), s.p_mean.get(), s.p_rstd.get(), s.p_x.get(),
                          param(p.ln2_w), param(p.ln2_b), T, C);
    be_.matmul_forward(s.p_fch_gelu.get(), s.p_fch.get(), s.p_ln.get(), param(p.fc_w),
                       param(p.fc_b), T, C, 4 * C);
    be_.matmul_forward(s.p_proj.get(), nullptr, s.p_fch_gelu.get(), param(p.fc_proj_w),
                       param(p.fc_proj_b), T, 4 * C, C);
    be_.add_inplace(s.p_x.get(), s.p_proj.get(), size_t(T) * C);
  }
  // Only the last position predicts the next token.
  be_.layernorm_forward(s.p_ln.get(), s.p_mean.get(), s.p_rstd.get(),
                        at(s.p_x.get(), size_t(T - 1) * C, es_), param(layout_.lnf_w),
                        param(layout_.lnf_b), 1, C);
  be_.matmul_forward(at(s.logits.get(), size_t(logits_row) * Vp, es_), nullptr, s.p_ln.get(),
                     param(layout_.wte), nullptr, 1, C, Vp);
}

void GPT::decode_rows(DecodeState& s, int B) {
  LSGPT_CHECK(B >= 1 && B <= s.max_rows, "decode of ", B, " rows; the state holds ", s.max_rows);
  const int C = cfg_.d_model, Vp = cfg_.padded_vocab();
  be_.embedding_decode(s.x.get(), s.row_tokens.as<int32_t>(), s.row_positions.as<int32_t>(),
                       param(layout_.wte), param(layout_.wpe), B, C);
  // Each residual add is fused with the LayerNorm that follows it (the next
  // block's first, or the final one), so a layer is seven launches.
  // (n_layer >= 1: the config refuses fewer.)
  be_.layernorm_forward(s.ln.get(), s.ln_mean.get(), s.ln_rstd.get(), s.x.get(),
                        param(layout_.layers[0].ln1_w), param(layout_.layers[0].ln1_b), B, C);
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const LayerParams& p = layout_.layers[l];
    const bool last = l + 1 == cfg_.n_layer;
    const void* next_w = last ? param(layout_.lnf_w) : param(layout_.layers[l + 1].ln1_w);
    const void* next_b = last ? param(layout_.lnf_b) : param(layout_.layers[l + 1].ln1_b);
    be_.matmul_forward(s.qkv.get(), nullptr, s.ln.get(), param(p.qkv_w), param(p.qkv_b), B, C,
                       3 * C);
    if (cfg_.qk_norm) qk_norm_forward(s.qkv.get(), nullptr, s.qkv.get(), l, B);
    be_.attention_decode(s.atty.get(), s.k_local[l].get(), s.v_local[l].get(),
                         s.k_global[l].get(), s.v_global[l].get(), s.qkv.get(),
                         decode_spec(s, l, B));
    be_.matmul_forward(s.proj.get(), nullptr, s.atty.get(), param(p.attn_proj_w),
                       param(p.attn_proj_b), B, C, C);
    be_.add_layernorm_forward(s.x.get(), s.ln.get(), s.ln_mean.get(), s.ln_rstd.get(),
                              s.proj.get(), param(p.ln2_w), param(p.ln2_b), B, C);
    be_.matmul_forward(s.fch_gelu.get(), s.fch.get(), s.ln.get(), param(p.fc_w), param(p.fc_b),
                       B, C, 4 * C);
    be_.matmul_forward(s.proj.get(), nullptr, s.fch_gelu.get(), param(p.fc_proj_w),
                       param(p.fc_proj_b), B, 4 * C, C);
    be_.add_layernorm_forward(s.x.get(), s.ln.get(), s.ln_mean.get(), s.ln_rstd.get(),
                              s.proj.get(), next_w, next_b, B, C);
  }
  be_.matmul_forward(s.logits.get(), nullptr, s.ln.get(), param(layout_.wte), nullptr, B, C, Vp);
}

}  // namespace lsgpt
