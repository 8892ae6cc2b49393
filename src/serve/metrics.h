// The server's counters and gauges, rendered in the Prometheus text format
// (version 0.0.4) for GET /metrics. Counters are atomics bumped by the HTTP
// threads and the engine thread; gauges are set by the engine thread.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

namespace lsgpt::serve {

struct Metrics {
  // Requests by how they ended.
  std::atomic<uint64_t> requests_received{0};
  std::atomic<uint64_t> finished_length{0}, finished_stop{0}, finished_cancelled{0},
      finished_error{0};
  std::atomic<uint64_t> rejected_4xx{0}, rejected_queue_full{0}, rejected_shutting_down{0};
  std::atomic<uint64_t> client_disconnects{0};
  // Tokens.
  std::atomic<uint64_t> prompt_tokens{0}, generated_tokens{0};
  // Scheduling.
  std::atomic<uint64_t> decode_steps{0}, decode_rows{0}, prefills{0};
  std::atomic<int64_t> running{0}, queued{0};
  int64_t slots = 0, max_queue = 0, context = 0;

  std::string render() const;
};

}  // namespace lsgpt::serve
