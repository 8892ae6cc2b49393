#include "core/stop_signals.h"

#include <signal.h>

#include <atomic>

#include "core/error.h"

namespace lsgpt {
namespace {

volatile sig_atomic_t first_signal = 0;
std::atomic<bool> installed{false};
struct sigaction previous_int, previous_term;

extern "C" void record_stop_signal(int sig) {
  if (first_signal != 0) {  // the second: what the default action does
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  first_signal = sig;
}

}  // namespace

ScopedStopSignals::ScopedStopSignals() {
  LSGPT_CHECK(!installed.exchange(true), "ScopedStopSignals: one at a time");
  first_signal = 0;
  struct sigaction action {};
  action.sa_handler = record_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // a read or write under way completes
  sigaction(SIGINT, &action, &previous_int);
  sigaction(SIGTERM, &action, &previous_term);
}

ScopedStopSignals::~ScopedStopSignals() {
  sigaction(SIGINT, &previous_int, nullptr);
  sigaction(SIGTERM, &previous_term, nullptr);
  installed = false;
}

int ScopedStopSignals::received() { return first_signal; }

const char* ScopedStopSignals::name(int signal) {
  if (signal == SIGINT) return "SIGINT";
  if (signal == SIGTERM) return "SIGTERM";
  return "a stop signal";
}

}  // namespace lsgpt
