#include "infer/engine.h"

#include <algorithm>
#include <map>

#include "core/error.h"

namespace lsgpt {

namespace {

constexpr size_t kMiB = size_t(1) << 20;

SampleParams sample_params(const SequenceRequest& r, uint64_t step) {
  return to_sample_params(r.sampling, r.seed, step);
}

// Smallest power of two >= n, capped: one captured graph per bucket.
int bucket_of(int n, int cap) {
  int b = 1;
  while (b < n) b *= 2;
  return std::min(b, cap);
}

}  // namespace

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::length: return "length";
    case FinishReason::end_of_text: return "stop";
    case FinishReason::stop_string: return "stop";
    case FinishReason::cancelled: return "cancelled";
    default: return "none";
  }
}

struct InferenceEngine::Impl {
  struct Sequence {
    SequenceRequest request;
    int slot = -1;
    int prompt_len = 0;
    std::vector<int32_t> produced;
    std::string text;  // only kept when stop strings are in use
  };

  std::unique_ptr<GPT::DecodeState> state;
  DeviceBuffer first_params, first_token;  // the prefill's own sampling row
  std::vector<int> slot_owner;             // slot -> sequence id, -1 when free
  std::map<int, Sequence> running;
  std::vector<TokenEvent> pending;
  int next_id = 0;

  // The decode batch: row r decodes sequence rows[r]; rows [rows.size(),
  // bucket) are idle padding up to the captured graph's size.
  std::vector<int> rows;
  int bucket = 0;
  bool rows_dirty = true;
  std::vector<int32_t> h_tokens, h_positions, h_slots, h_sampled;
  std::vector<SampleParams> h_params;
  std::map<int, std::unique_ptr<CapturedWork>> graphs;  // by bucket
};

size_t InferenceEngine::kv_cache_bytes(const ModelConfig& cfg, int max_batch, int max_context,
                                       size_t elem_bytes) {
  return GPT::kv_cache_bytes(cfg, max_batch, max_context, elem_bytes);
}

size_t InferenceEngine::required_bytes(GPT& model, int max_batch, int max_context) {
  // The decode state, plus the prefill buffers of a full-context prompt
  // (about 15 activations of T x d_model).
  const size_t prefill = size_t(max_context) * model.config().d_model * 15 *
                         dtype_size(model.backend().dtype());
  return model.decode_state_bytes(max_batch, max_context, max_batch) + prefill;
}

InferenceEngine::InferenceEngine(GPT& model, const EngineOptions& options)
    : model_(model), options_(options), impl_(std::make_unique<Impl>()) {
  const ModelConfig& cfg = model.config();
  if (options_.max_context == 0) options_.max_context = cfg.seq_len;
  if (options_.max_batch < 1) fail("the batch must hold at least 1 sequence, got ", options_.max_batch);
  if (options_.max_context < 1 || options_.max_context > cfg.seq_len)
    fail("the context must be between 1 and the model's ", cfg.seq_len, " positions, got ",
         options_.max_context);
  Backend& be = model.backend();
  const int B = options_.max_batch, T = options_.max_context;
  memory_bytes_ = required_bytes(model, B, T);
  const size_t kv = GPT::kv_cache_bytes(cfg, B, T, dtype_size(be.dtype()));
  const size_t available = be.free_memory_bytes();
  if (available && memory_bytes_ > available)
    fail("a batch of ", B, " sequences of ", T, " positions needs ", memory_bytes_ / kMiB,
         " MiB (KV cache ", kv / kMiB, " MiB, buffers and a full-context prefill ",
         (memory_bytes_ - kv) / kMiB, " MiB) but the ", be.name(), " device has ",
         available / kMiB, " MiB free; use fewer sequences or a shorter context");
  Impl& s = *impl_;
  s.state = model.make_decode_state(B, T, B);
  s.first_params = DeviceBuffer(be, sizeof(SampleParams));
  s.first_token = DeviceBuffer(be, sizeof(int32_t));
  s.slot_owner.assign(B, -1);
}

InferenceEngine::~InferenceEngine() = default;

void validate_request(const ModelConfig& cfg, int context, const SequenceRequest& r,
                      bool can_detokenize) {
  r.sampling.validate();
  if (r.max_new_tokens < 0) fail("the number of new tokens must be >= 0, got ", r.max_new_tokens);
  for (int32_t t : r.prompt)
    if (t < 0 || t >= cfg.vocab_size)
      fail("prompt token ", t, " is outside the model's vocabulary of ", cfg.vocab_size,
           " tokens");
  const int prompt_len = std::max<int>(1, int(r.prompt.size()));
  if (prompt_len > context)
    fail("the prompt is ", prompt_len, " tokens long but the context is ", context, " tokens");
  // The last new token is predicted from a full window and never fed back,
  // so prompt + new tokens may reach context + 1.
  if (prompt_len + r.max_new_tokens > context + 1)
    fail("the prompt (", prompt_len, " tokens) plus ", r.max_new_tokens,
         " new tokens exceed the context of ", context, " tokens; at most ",
         context + 1 - prompt_len, " new tokens fit");
  for (const std::string& stop : r.stop_strings)
    if (stop.empty()) fail("stop strings must not be empty");
  if (!r.stop_strings.empty() && !can_detokenize)
    fail("stop strings need a tokenizer to turn tokens into text");
}

void InferenceEngine::validate(const SequenceRequest& r) const {
  validate_request(model_.config(), options_.max_context, r, bool(options_.detokenize));
}

int InferenceEngine::free_slots() const {
  return int(std::count(impl_->slot_owner.begin(), impl_->slot_owner.end(), -1));
}

int InferenceEngine::running() const { return int(impl_->running.size()); }

bool InferenceEngine::has_pending() const { return !impl_->pending.empty(); }

const std::vector<int32_t>& InferenceEngine::output(int sequence) const {
  const auto it = impl_->running.find(sequence);
  if (it == impl_->running.end()) fail("sequence ", sequence, " is not running");
  return it->second.produced;
}

namespace {

// Records `token` for the sequence and says whether (and why) it finished.
FinishReason accept_token(const ModelConfig& cfg, const EngineOptions& options,
                          InferenceEngine::Impl& s, int id, int32_t token);

}  // namespace

int InferenceEngine::add(const SequenceRequest& request) {
  validate(request);
  Impl& s = *impl_;
  const int id = s.next_id++;
  if (request.max_new_tokens == 0) {
    s.pending.push_back({id, -1, true, FinishReason::length});
    return id;
  }
  const auto free_slot = std::find(s.slot_owner.begin(), s.slot_owner.end(), -1);
  if (free_slot == s.slot_owner.end())
    fail("no free slot: all ", options_.max_batch, " sequences of the batch are running");
  const int slot = int(free_slot - s.slot_owner.begin());
  Impl::Sequence seq;
  seq.request = request;
  seq.slot = slot;
  if (seq.request.prompt.empty()) seq.request.prompt.push_back(model_.config().eot_token);
  seq.prompt_len = int(seq.request.prompt.size());

  Backend& be = model_.backend();
  const ModelConfig& cfg = model_.config();
  model_.prefill(*s.state, slot, seq.request.prompt.data(), seq.prompt_len, 0);
  const SampleParams params = sample_params(seq.request, 0);
  be.upload(s.first_params.get(), &params, sizeof(params));
  be.sample_tokens(s.first_token.as<int32_t>(), s.state->logits.get(),
                   s.first_params.as<SampleParams>(), 1, cfg.vocab_size, cfg.padded_vocab(),
                   nullptr, nullptr);
  int32_t token = -1;
  be.download(&token, s.first_token.get(), sizeof(token));

  s.slot_owner[slot] = id;
  s.running.emplace(id, std::move(seq));
  s.rows_dirty = true;
  const FinishReason reason = accept_token(cfg, options_, s, id, token);
  s.pending.push_back({id, token, reason != FinishReason::none, reason});
  return id;
}

namespace {

FinishReason accept_token(const ModelConfig& cfg, const EngineOptions& options,
                          InferenceEngine::Impl& s, int id, int32_t token) {
  if (token < 0 || token >= cfg.vocab_size)
    fail("the model produced NaN logits (sampled token ", token,
         "); the checkpoint is probably broken");
  auto it = s.running.find(id);
  InferenceEngine::Impl::Sequence& seq = it->second;
  seq.produced.push_back(token);
  FinishReason reason = FinishReason::none;
  if (seq.request.stop_at_eot && token == cfg.eot_token) {
    reason = FinishReason::end_of_text;
  } else if (!seq.request.stop_strings.empty()) {
    const size_t before = seq.text.size();
    seq.text += options.detokenize(token);
    for (const std::string& stop : seq.request.stop_strings) {
      // Only a match that ends in the new piece is new.
      const size_t from = before >= stop.size() ? before - stop.size() + 1 : 0;
      if (seq.text.find(stop, from) != std::string::npos) reason = FinishReason::stop_string;
    }
  }
  if (reason == FinishReason::none && int(seq.produced.size()) >= seq.request.max_new_tokens)
    reason = FinishReason::length;
  if (reason != FinishReason::none) {
    s.slot_owner[seq.slot] = -1;
    s.running.erase(it);
    s.rows_dirty = true;
  }
  return reason;
}

}  // namespace

void InferenceEngine::cancel(int sequence) {
  Impl& s = *impl_;
  const auto it = s.running.find(sequence);
  if (it == s.running.end()) return;
  s.slot_owner[it->second.slot] = -1;
  s.running.erase(it);
  s.rows_dirty = true;
  s.pending.push_back({sequence, -1, true, FinishReason::cancelled});
}

namespace {

// Rebuilds the row tables from the running sequences (in slot order) and
// uploads them; rows past the running ones are idle.
void upload_rows(GPT& model, InferenceEngine::Impl& s, int max_batch) {
  s.rows.clear();
  for (int slot = 0; slot < int(s.slot_owner.size()); ++slot)
    if (s.slot_owner[slot] >= 0) s.rows.push_back(s.slot_owner[slot]);
  s.bucket = bucket_of(int(s.rows.size()), max_batch);
  const int B = s.bucket;
  s.h_tokens.assign(B, 0), s.h_positions.assign(B, -1), s.h_slots.assign(B, 0);
  s.h_params.assign(B, SampleParams{});
  s.h_sampled.assign(B, -1);
  for (int r = 0; r < int(s.rows.size()); ++r) {
    const InferenceEngine::Impl::Sequence& seq = s.running.at(s.rows[r]);
    const int produced = int(seq.produced.size());
    s.h_tokens[r] = seq.produced.back();
    s.h_positions[r] = seq.prompt_len + produced - 1;
    s.h_slots[r] = seq.slot;
    s.h_params[r] = sample_params(seq.request, uint64_t(produced));
  }
  Backend& be = model.backend();
  GPT::DecodeState& st = *s.state;
  be.upload(st.row_tokens.get(), s.h_tokens.data(), B * sizeof(int32_t));
  be.upload(st.row_positions.get(), s.h_positions.data(), B * sizeof(int32_t));
  be.upload(st.row_slots.get(), s.h_slots.data(), B * sizeof(int32_t));
  be.upload(st.row_params.get(), s.h_params.data(), B * sizeof(SampleParams));
  s.rows_dirty = false;
}

}  // namespace

std::vector<TokenEvent> InferenceEngine::step() {
  Impl& s = *impl_;
  std::vector<TokenEvent> events;
  events.swap(s.pending);
  if (s.running.empty()) return events;
  if (s.rows_dirty) upload_rows(model_, s, options_.max_batch);
  Backend& be = model_.backend();
  GPT::DecodeState& st = *s.state;
  const ModelConfig& cfg = model_.config();
  const int B = s.bucket;
  // The whole step, sampling and the rows' bookkeeping included, so the
  // host only reads the new tokens back.
  auto work = [&, B] {
    model_.decode_rows(st, B);
    be.sample_tokens(st.sampled.as<int32_t>(), st.logits.get(), st.row_params.as<SampleParams>(),
                     B, cfg.vocab_size, cfg.padded_vocab(), st.row_positions.as<int32_t>(),
                     st.row_tokens.as<int32_t>());
  };
  if (options_.use_graphs) {
    auto& graph = s.graphs[B];
    if (!graph) graph = be.capture(work);
    if (graph) {
      graph->replay();
    } else {
      work();
    }
  } else {
    work();
  }
  be.download(s.h_sampled.data(), st.sampled.get(), B * sizeof(int32_t));
  // A finished sequence frees its slot and marks the rows dirty; s.rows
  // itself changes only in the next step's upload_rows.
  for (int r = 0; r < int(s.rows.size()); ++r) {
    const int sequence = s.rows[r];
    const FinishReason reason = accept_token(cfg, options_, s, sequence, s.h_sampled[r]);
    events.push_back({sequence, s.h_sampled[r], reason != FinishReason::none, reason});
  }
  return events;
}

std::vector<std::vector<int32_t>> run_to_completion(
    InferenceEngine& engine, const std::vector<SequenceRequest>& requests,
    const std::function<void(int request, const TokenEvent&)>& on_event) {
  for (const SequenceRequest& r : requests) engine.validate(r);  // all before any work
  std::vector<std::vector<int32_t>> outputs(requests.size());
  std::map<int, int> request_of;  // sequence id -> request index
  size_t next = 0;
  while (next < requests.size() || engine.running() > 0 || engine.has_pending()) {
    while (next < requests.size() && engine.free_slots() > 0) {
      request_of[engine.add(requests[next])] = int(next);
      ++next;
    }
    for (const TokenEvent& e : engine.step()) {
      const int index = request_of.at(e.sequence);
      if (e.token >= 0) outputs[index].push_back(e.token);
      if (on_event) on_event(index, e);
    }
  }
  return outputs;
}

}  // namespace lsgpt
