#include "serve/scheduler.h"

#include <algorithm>

#include "core/error.h"
#include "serve/openai_protocol.h"

namespace lsgpt::serve {

Job::Update Job::wait(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait_for(lock, timeout, [&] { return !tokens_.empty() || (finished_ && !taken_end_); });
  Update u;
  u.tokens.swap(tokens_);
  if (finished_) {
    taken_end_ = true;
    u.finished = true;
    u.reason = reason_;
    u.error = error_;
    u.error_status = error_status_;
  }
  return u;
}

bool Job::finished() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return finished_;
}

void Job::deliver(int32_t token, bool finished, FinishReason reason) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (finished_) return;
    if (token >= 0) tokens_.push_back(token);
    if (finished) finished_ = true, reason_ = reason;
  }
  changed_.notify_all();
}

void Job::fail(int status, const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (finished_) return;
    finished_ = true;
    reason_ = FinishReason::cancelled;
    error_ = message;
    error_status_ = status;
  }
  changed_.notify_all();
}

Scheduler::Scheduler(InferenceEngine& engine, const SchedulerOptions& options, Metrics& metrics)
    : engine_(engine), options_(options), metrics_(metrics) {
  metrics_.slots = engine.options().max_batch;
  metrics_.max_queue = options.max_queue;
  metrics_.context = engine.options().max_context;
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() { stop(); }

std::shared_ptr<Job> Scheduler::submit(SequenceRequest request) {
  auto job = std::make_shared<Job>(std::move(request));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (draining_ || stopping_) {
      ++metrics_.rejected_shutting_down;
      throw ApiError(503, "the server is shutting down and accepts no new requests",
                     "server_error", "", "shutting_down");
    }
    // Requests that a free slot will take at the next step do not count
    // against the queue limit.
    const int free_slots = std::max(0, engine_.options().max_batch - running_count_.load());
    if (int(queue_.size()) >= options_.max_queue + free_slots) {
      ++metrics_.rejected_queue_full;
      throw ApiError(429,
                     "the server is at capacity (" + std::to_string(options_.max_queue) +
                         " requests already waiting for a slot); retry later",
                     "rate_limit_exceeded", "", "queue_full");
    }
    queue_.push_back(job);
    metrics_.queued = int64_t(queue_.size());
    ++metrics_.requests_received;
  }
  wake_.notify_all();
  return job;
}

void Scheduler::cancel(const std::shared_ptr<Job>& job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (*it != job) continue;
      queue_.erase(it);
      metrics_.queued = int64_t(queue_.size());
      ++metrics_.finished_cancelled;
      job->deliver(-1, true, FinishReason::cancelled);
      return;
    }
    job->cancel_requested_ = true;
    cancel_pending_ = true;
  }
  wake_.notify_all();
}

void Scheduler::drain() {
  std::lock_guard<std::mutex> lock(mutex_);
  draining_ = true;
}

void Scheduler::cancel_all() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& job : queue_) {
      ++metrics_.finished_cancelled;
      job->deliver(-1, true, FinishReason::cancelled);
    }
    queue_.clear();
    metrics_.queued = 0;
    stop_running_ = true;
  }
  wake_.notify_all();
}

int Scheduler::active() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return int(queue_.size()) + running_count_.load();
}

void Scheduler::stop() {
  if (!thread_.joinable()) return;
  cancel_all();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void Scheduler::loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_.wait(lock, [&] {
      return stopping_ || stop_running_ || cancel_pending_ || !running_.empty() ||
             engine_.has_pending() || (!queue_.empty() && engine_.free_slots() > 0);
    });
    if (stopping_ && queue_.empty() && running_.empty() && !engine_.has_pending()) return;
    admit_and_cancel(lock);
    lock.unlock();
    run_step();
    lock.lock();
  }
}

// Called with the lock held; releases it around the engine's prefills.
void Scheduler::admit_and_cancel(std::unique_lock<std::mutex>& lock) {
  const bool cancel_everything = stop_running_;
  stop_running_ = false;
  cancel_pending_ = false;
  std::vector<int> to_cancel;
  for (const auto& [sequence, job] : running_)
    if (cancel_everything || job->cancel_requested_) to_cancel.push_back(sequence);
  // Prefill is interleaved with decoding: while sequences are running, one
  // step admits prompts up to the token budget (always at least one).
  std::vector<std::shared_ptr<Job>> admitted;
  const bool decoding = !running_.empty();
  int free = engine_.free_slots() + int(to_cancel.size());
  long budget = options_.prefill_tokens_per_step;
  while (!queue_.empty() && free > 0 && (!decoding || admitted.empty() || budget > 0)) {
    admitted.push_back(queue_.front());
    queue_.pop_front();
    budget -= long(std::max<size_t>(1, admitted.back()->request.prompt.size()));
    --free;
  }
  metrics_.queued = int64_t(queue_.size());
  // Counted as running from the moment they leave the queue, so that queue +
  // running (the queue limit, active()) never misses a request being prefilled.
  running_count_ += int(admitted.size());
  lock.unlock();
  for (int sequence : to_cancel) engine_.cancel(sequence);  // events come with the next step
  for (const auto& job : admitted) {
    if (job->cancel_requested_) {
      ++metrics_.finished_cancelled;
      job->deliver(-1, true, FinishReason::cancelled);
      continue;
    }
    try {
      const int sequence = engine_.add(job->request);
      running_[sequence] = job;
      ++metrics_.prefills;
      metrics_.prompt_tokens += std::max<size_t>(1, job->request.prompt.size());
    } catch (const Error& e) {
      ++metrics_.finished_error;
      job->fail(400, e.what());
    }
  }
  running_count_ = int(running_.size());
  metrics_.running = engine_.running();
  lock.lock();
}

void Scheduler::run_step() {
  if (running_.empty() && !engine_.has_pending()) return;
  std::vector<TokenEvent> events;
  try {
    const int rows = engine_.running();
    events = engine_.step();
    // The engine has freed the finished sequences' slots: the gauge drops
    // before their clients can see their last token (and read /metrics).
    metrics_.running = engine_.running();
    if (rows > 0) {
      ++metrics_.decode_steps;
      metrics_.decode_rows += uint64_t(rows);
    }
  } catch (const Error& e) {
    fail_running(e.what());
    return;
  }
  for (const TokenEvent& e : events) {
    const auto it = running_.find(e.sequence);
    if (it == running_.end()) continue;  // failed earlier
    if (e.token >= 0) ++metrics_.generated_tokens;
    if (e.finished) {  // counted before the client can see the end
      switch (e.reason) {
        case FinishReason::length: ++metrics_.finished_length; break;
        case FinishReason::cancelled: ++metrics_.finished_cancelled; break;
        default: ++metrics_.finished_stop; break;
      }
    }
    it->second->deliver(e.token, e.finished, e.reason);
    if (e.finished) running_.erase(it);
  }
  running_count_ = int(running_.size());
}

// A step that throws (NaN logits from a broken checkpoint) ends every running
// request with an error; the server keeps serving.
void Scheduler::fail_running(const std::string& message) {
  for (const auto& [sequence, job] : running_) engine_.cancel(sequence);
  metrics_.running = engine_.running();  // before any client sees its error
  for (const auto& [sequence, job] : running_) {
    ++metrics_.finished_error;
    job->fail(500, message);
  }
  running_.clear();
  running_count_ = 0;
}

}  // namespace lsgpt::serve
