// lsgpt::Error is the one exception type user-facing failures travel as: the
// CLI prints its message once and exits non-zero. Internal invariants use
// LSGPT_CHECK, which throws the same type with the source location attached.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace lsgpt {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// An error every rank of a data-parallel run raises at the same point,
// after agreeing on it (a stop signal): rank 0 carries the message, the
// others an empty one. The CLI prints it once and every process exits with
// status 1 as from a finished run, not through MPI_Abort, whose kill
// sequence (Open MPI: SIGCONT, SIGTERM and SIGKILL a timeout apart) would
// outlast a scheduler's grace period.
class AgreedError : public Error {
 public:
  using Error::Error;
};

// Builds a message from streamable parts: fail("bad n_head ", n, " in ", path).
template <typename... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  std::ostringstream os;
  (os << ... << std::forward<Parts>(parts));
  throw Error(os.str());
}

}  // namespace lsgpt

#define LSGPT_CHECK(cond, ...)                                                   \
  do {                                                                           \
    if (!(cond)) ::lsgpt::fail("internal check failed (" #cond ") at ", __FILE__, \
                               ":", __LINE__, ": " __VA_OPT__(, ) __VA_ARGS__);   \
  } while (0)
