// A path switch read from the environment (LSGPT_ATTENTION_SM80,
// LSGPT_ATTENTION_SM90_FORWARD, LSGPT_CUDA_DBIAS, ...): one of a fixed list
// of words, read at every call so one process can time each path
// (ScopedEnv below sets one for a scope).
// Header-only: the CUDA backend's library links no core sources.
#pragma once

#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <string>

#include "core/error.h"

namespace lsgpt {

// The index in `values` of the value of environment variable `name`; unset
// or empty means values[0], the default. Any other value is an Error
// "NAME must be a, b or c, got 'x'". `values` is not empty.
inline int env_switch(const char* name, std::initializer_list<const char*> values) {
  LSGPT_CHECK(values.size() > 0);
  const char* set = std::getenv(name);
  if (!set || !*set) return 0;
  int index = 0;
  for (const char* value : values) {
    if (std::strcmp(set, value) == 0) return index;
    ++index;
  }
  std::string choices;
  index = 0;
  for (const char* value : values) {
    if (index > 0) choices += index + 1 == int(values.size()) ? " or " : ", ";
    choices += value;
    ++index;
  }
  fail(name, " must be ", choices, ", got '", set, "'");
}

// A whole-number switch (LSGPT_ATTENTION_SM90_BAND_RUN, ..._HEAD_GROUP):
// the value of environment variable `name` as a number from `lo` to `hi`
// (0 <= lo <= hi), digits only; unset or empty: nullopt. Anything else is
// an Error "NAME must be a whole number of UNIT from LO to HI, got 'x'".
inline std::optional<int> env_whole_number(const char* name, int lo, int hi, const char* unit) {
  const char* set = std::getenv(name);
  if (!set || !*set) return std::nullopt;
  char* end = nullptr;
  const long n = std::strtol(set, &end, 10);
  // Digits only: strtol alone would also take leading blanks and a sign.
  if (!(*set >= '0' && *set <= '9' && *end == '\0' && n >= lo && n <= hi))
    fail(name, " must be a whole number of ", unit, " from ", lo, " to ", hi, ", got '", set, "'");
  return int(n);
}

// Sets (or, with nullptr, removes) an environment variable for one scope and
// restores it after: how tests and benchmarks run each switched path in one
// process.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) had_ = true, old_ = old;
    value ? ::setenv(name, value, 1) : ::unsetenv(name);
  }
  ~ScopedEnv() { had_ ? ::setenv(name_, old_.c_str(), 1) : ::unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  bool had_ = false;
  std::string old_;
};

}  // namespace lsgpt
