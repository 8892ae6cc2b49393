#include "serve/metrics.h"

#include <sstream>

namespace lsgpt::serve {

namespace {

void family(std::ostringstream& os, const char* name, const char* type, const char* help) {
  os << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
}

template <typename T>
void sample(std::ostringstream& os, const char* name, const T& value, const char* labels = "") {
  os << name << labels << ' ' << value << '\n';
}

}  // namespace

std::string Metrics::render() const {
  std::ostringstream os;
  family(os, "lsgpt_requests_received_total", "counter", "Completion requests accepted into the queue.");
  sample(os, "lsgpt_requests_received_total", requests_received.load());
  family(os, "lsgpt_requests_finished_total", "counter", "Completion requests finished, by reason.");
  sample(os, "lsgpt_requests_finished_total", finished_length.load(), "{reason=\"length\"}");
  sample(os, "lsgpt_requests_finished_total", finished_stop.load(), "{reason=\"stop\"}");
  sample(os, "lsgpt_requests_finished_total", finished_cancelled.load(), "{reason=\"cancelled\"}");
  sample(os, "lsgpt_requests_finished_total", finished_error.load(), "{reason=\"error\"}");
  family(os, "lsgpt_requests_rejected_total", "counter", "Requests refused before queueing, by cause.");
  sample(os, "lsgpt_requests_rejected_total", rejected_4xx.load(), "{cause=\"invalid\"}");
  sample(os, "lsgpt_requests_rejected_total", rejected_queue_full.load(), "{cause=\"queue_full\"}");
  sample(os, "lsgpt_requests_rejected_total", rejected_shutting_down.load(), "{cause=\"shutting_down\"}");
  family(os, "lsgpt_client_disconnects_total", "counter", "Streams whose client left before the end (the request was cancelled).");
  sample(os, "lsgpt_client_disconnects_total", client_disconnects.load());
  family(os, "lsgpt_prompt_tokens_total", "counter", "Prompt tokens prefilled.");
  sample(os, "lsgpt_prompt_tokens_total", prompt_tokens.load());
  family(os, "lsgpt_generation_tokens_total", "counter", "Tokens generated.");
  sample(os, "lsgpt_generation_tokens_total", generated_tokens.load());
  family(os, "lsgpt_decode_steps_total", "counter", "Engine decode steps.");
  sample(os, "lsgpt_decode_steps_total", decode_steps.load());
  family(os, "lsgpt_decode_rows_total", "counter", "Sequences advanced, summed over decode steps (divide by steps for the mean batch).");
  sample(os, "lsgpt_decode_rows_total", decode_rows.load());
  family(os, "lsgpt_prefills_total", "counter", "Prompts prefilled.");
  sample(os, "lsgpt_prefills_total", prefills.load());
  family(os, "lsgpt_running_requests", "gauge", "Sequences holding a cache slot.");
  sample(os, "lsgpt_running_requests", running.load());
  family(os, "lsgpt_queued_requests", "gauge", "Requests waiting for a slot.");
  sample(os, "lsgpt_queued_requests", queued.load());
  family(os, "lsgpt_batch_slots", "gauge", "Cache slots (sequences decoded at once at most).");
  sample(os, "lsgpt_batch_slots", slots);
  family(os, "lsgpt_batch_occupancy", "gauge", "Running sequences / slots.");
  sample(os, "lsgpt_batch_occupancy", slots ? double(running.load()) / double(slots) : 0.0);
  family(os, "lsgpt_queue_limit", "gauge", "Requests that may wait for a slot before 429.");
  sample(os, "lsgpt_queue_limit", max_queue);
  family(os, "lsgpt_context_tokens", "gauge", "Positions per sequence.");
  sample(os, "lsgpt_context_tokens", context);
  return os.str();
}

}  // namespace lsgpt::serve
