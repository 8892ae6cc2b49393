// SIGINT and SIGTERM as a request to stop at the next safe point (a long
// loop finishing its step and saving its state) instead of the process
// dying mid-step: a batch scheduler's preemption, a Ctrl-C. While a
// ScopedStopSignals lives, the first such signal is only recorded
// (received()); a second one of either kind ends the process as the
// default action would, so a stuck loop can still be stopped.
#pragma once

namespace lsgpt {

class ScopedStopSignals {
 public:
  // Installs the handlers; the previous ones come back on destruction.
  // One at a time (the process's signal dispositions are global).
  ScopedStopSignals();
  ~ScopedStopSignals();
  ScopedStopSignals(const ScopedStopSignals&) = delete;
  ScopedStopSignals& operator=(const ScopedStopSignals&) = delete;

  // The first signal received since construction (SIGINT or SIGTERM), or 0.
  static int received();
  // "SIGINT", "SIGTERM", or "a stop signal" for anything else.
  static const char* name(int signal);
};

}  // namespace lsgpt
