// The one thread that owns the inference engine (which is not thread-safe)
// and the bounded queue in front of it. HTTP threads submit requests and
// read each request's tokens from its Job; between two decode steps the
// engine thread applies cancellations, admits waiting requests into free
// slots (prefilling at most a token budget's worth of prompts while other
// sequences are decoding, so running streams keep flowing), then advances
// every running sequence by one token (continuous batching).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "infer/engine.h"
#include "serve/metrics.h"

namespace lsgpt::serve {

// One request's life, shared by its HTTP thread and the engine thread.
class Job {
 public:
  explicit Job(SequenceRequest request) : request(std::move(request)) {}
  struct Update {
    std::vector<int32_t> tokens;  // new since the last wait()
    bool finished = false;
    FinishReason reason = FinishReason::none;
    std::string error;   // set when the engine refused or failed the request
    int error_status = 0;
  };
  // Returns at once when tokens or the end are there, else after `timeout`.
  Update wait(std::chrono::milliseconds timeout);
  bool finished() const;

  const SequenceRequest request;

 private:
  friend class Scheduler;
  void deliver(int32_t token, bool finished, FinishReason reason);
  void fail(int status, const std::string& message);

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<int32_t> tokens_;
  bool finished_ = false, taken_end_ = false;
  FinishReason reason_ = FinishReason::none;
  std::string error_;
  int error_status_ = 0;
  std::atomic<bool> cancel_requested_{false};
};

struct SchedulerOptions {
  int max_queue = 64;  // requests waiting beyond the free slots; more get 429
  int prefill_tokens_per_step = 2048;  // prompt tokens prefilled between two decode steps
};

class Scheduler {
 public:
  // Starts the engine thread; `engine` is touched only by it from now on.
  Scheduler(InferenceEngine& engine, const SchedulerOptions& options, Metrics& metrics);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request. Throws ApiError: 429 when the queue is full, 503 once
  // drain() was called.
  std::shared_ptr<Job> submit(SequenceRequest request);
  // The client is gone: a waiting request leaves the queue now, a running
  // one frees its slot before the next step.
  void cancel(const std::shared_ptr<Job>& job);
  void drain();       // refuse new requests from now on
  void cancel_all();  // cancel every queued and running request
  int active() const; // queued + running requests
  // Cancels what is left and joins the engine thread.
  void stop();

 private:
  void loop();
  void admit_and_cancel(std::unique_lock<std::mutex>& lock);
  void run_step();
  void fail_running(const std::string& message);

  InferenceEngine& engine_;
  SchedulerOptions options_;
  Metrics& metrics_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool draining_ = false, stopping_ = false, cancel_pending_ = false, stop_running_ = false;
  std::atomic<int> running_count_{0};
  // Engine thread only: sequence id -> its job.
  std::map<int, std::shared_ptr<Job>> running_;
  std::thread thread_;
};

}  // namespace lsgpt::serve
