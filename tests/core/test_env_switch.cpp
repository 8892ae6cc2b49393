// env_switch: unset and empty give the default, each listed word its index,
// anything else one message naming every word.
#include <gtest/gtest.h>

#include <string>

#include "core/env_switch.h"
#include "core/error.h"

namespace lsgpt {
namespace {

constexpr const char* kName = "LSGPT_TEST_ENV_SWITCH";

std::string message_for(const char* value, std::initializer_list<const char*> values) {
  ScopedEnv set(kName, value);
  try {
    env_switch(kName, values);
  } catch (const Error& e) {
    return e.what();
  }
  return "accepted";
}

// The index env_switch gives with kName set to `value` (nullptr: unset).
int index_for(const char* value) {
  ScopedEnv set(kName, value);
  return env_switch(kName, {"auto", "base", "ws"});
}

TEST(EnvSwitch, DefaultAndListedWords) {
  EXPECT_EQ(index_for(nullptr), 0);
  EXPECT_EQ(index_for(""), 0);
  EXPECT_EQ(index_for("ws"), 2);
  EXPECT_EQ(index_for("auto"), 0);
}

TEST(EnvSwitch, AnyOtherValueNamesEveryWord) {
  EXPECT_EQ(message_for("fa3", {"auto", "base", "ws", "ws_persistent"}),
            "LSGPT_TEST_ENV_SWITCH must be auto, base, ws or ws_persistent, got 'fa3'");
  EXPECT_EQ(message_for("yes", {"0", "1"}), "LSGPT_TEST_ENV_SWITCH must be 0 or 1, got 'yes'");
  EXPECT_EQ(message_for("WS", {"ws"}), "LSGPT_TEST_ENV_SWITCH must be ws, got 'WS'");
  EXPECT_EQ(message_for("bas", {"auto", "base"}),
            "LSGPT_TEST_ENV_SWITCH must be auto or base, got 'bas'");
}

}  // namespace
}  // namespace lsgpt
