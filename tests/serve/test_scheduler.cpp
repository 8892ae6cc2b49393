// The scheduler alone (no HTTP) on the CPU: while a sequence is decoding,
// waiting prompts are admitted a token budget's worth per step, so the
// running sequence keeps producing tokens between their prefills.
#include <gtest/gtest.h>

#include <chrono>

#include "../io/io_test_support.h"
#include "serve/openai_protocol.h"
#include "serve_test_support.h"

namespace lsgpt {
namespace {
namespace test_scheduler {

using namespace std::chrono_literals;

TEST(ServeScheduler, PrefillIsInterleavedWithDecoding) {
  testing::ScratchDir dir;
  testing::write_tiny_checkpoint(dir.file("s.ckpt"), testing::serve_model_config(512), 4);
  testing::LoadedTiny m(dir.file("s.ckpt"));
  EngineOptions eo;
  eo.max_batch = 8;
  InferenceEngine engine(*m.model, eo);
  serve::Metrics metrics;
  serve::SchedulerOptions so;
  so.max_queue = 16;
  so.prefill_tokens_per_step = 1;  // one prompt per step while anything decodes
  serve::Scheduler scheduler(engine, so, metrics);

  SequenceRequest a;
  a.prompt = {1};
  a.max_new_tokens = 500;
  a.sampling.temperature = 0;
  const auto running = scheduler.submit(a);
  size_t running_tokens = 0;
  for (int i = 0; i < 100 && running_tokens == 0; ++i)
    running_tokens += running->wait(100ms).tokens.size();
  ASSERT_GT(running_tokens, 0u);

  constexpr int kWaiting = 4;
  std::vector<std::shared_ptr<serve::Job>> waiting;
  for (int i = 0; i < kWaiting; ++i) {
    SequenceRequest r;
    r.prompt = {10, 20, 30, 40, int32_t(50 + i)};
    r.max_new_tokens = 1;
    waiting.push_back(scheduler.submit(r));
  }
  const size_t before = running_tokens;
  for (const auto& job : waiting) {
    bool finished = false;
    for (int i = 0; i < 300 && !finished; ++i) finished = job->wait(100ms).finished;
    ASSERT_TRUE(finished);
  }
  running_tokens += running->wait(0ms).tokens.size();
  // Four prompts, one per step: the running sequence advanced at least
  // three steps meanwhile (admitted all at once it would be one).
  EXPECT_GE(running_tokens - before, size_t(kWaiting - 1));
  EXPECT_EQ(metrics.prefills.load(), uint64_t(1 + kWaiting));
  EXPECT_FALSE(running->finished());
  scheduler.cancel(running);
  bool cancelled = false;
  for (int i = 0; i < 100 && !cancelled; ++i) {
    const serve::Job::Update u = running->wait(100ms);
    cancelled = u.finished && u.reason == FinishReason::cancelled;
  }
  EXPECT_TRUE(cancelled);
  EXPECT_EQ(metrics.finished_cancelled.load(), 1u);
  EXPECT_EQ(metrics.finished_length.load(), uint64_t(kWaiting));
}

// A full queue refuses with 429; after drain() every submit is 503.
TEST(ServeScheduler, QueueLimitAndDrain) {
  testing::ScratchDir dir;
  testing::write_tiny_checkpoint(dir.file("s.ckpt"), testing::serve_model_config(512), 4);
  testing::LoadedTiny m(dir.file("s.ckpt"));
  InferenceEngine engine(*m.model, EngineOptions{});
  serve::Metrics metrics;
  serve::SchedulerOptions so;
  so.max_queue = 0;  // only what the one slot holds
  serve::Scheduler scheduler(engine, so, metrics);
  SequenceRequest r;
  r.prompt = {1};
  r.max_new_tokens = 500;
  auto first = [&] {
    try {
      return scheduler.submit(r);
    } catch (const serve::ApiError& e) {
      ADD_FAILURE() << e.what();
      return std::shared_ptr<serve::Job>();
    }
  }();
  ASSERT_TRUE(first);
  try {
    scheduler.submit(r);
    ADD_FAILURE() << "a second request was queued past a queue of 0";
  } catch (const serve::ApiError& e) {
    EXPECT_EQ(e.status, 429);
  }
  scheduler.drain();
  try {
    scheduler.submit(r);
    ADD_FAILURE() << "accepted while draining";
  } catch (const serve::ApiError& e) {
    EXPECT_EQ(e.status, 503);
  }
  scheduler.stop();  // cancels what runs
  bool finished = false;
  for (int i = 0; i < 50 && !finished; ++i) finished = first->wait(100ms).finished;
  EXPECT_TRUE(finished);
}

}  // namespace test_scheduler
}  // namespace
}  // namespace lsgpt
