// env_switch: unset and empty give the default, each listed word its index,
// anything else one message naming every word.
#include <gtest/gtest.h>

#include <string>

#include "core/env_switch.h"
#include "core/error.h"

namespace lsgpt {
namespace {
namespace test_env_switch {

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

// env_whole_number: unset and empty give nullopt, digits in range their
// number, anything else (a sign, blanks, trailing text, out of range,
// past a long) one message naming the range.
TEST(EnvWholeNumber, DigitsInRangeOnly) {
  auto read = [](const char* value) {
    ScopedEnv set(kName, value);
    return env_whole_number(kName, 0, 1 << 20, "heads");
  };
  EXPECT_EQ(read(nullptr), std::nullopt);
  EXPECT_EQ(read(""), std::nullopt);
  EXPECT_EQ(read("0"), 0);
  EXPECT_EQ(read("4"), 4);
  EXPECT_EQ(read("007"), 7);
  EXPECT_EQ(read("1048576"), 1 << 20);
  for (const char* bad :
       {"-1", "+4", " 4", "4 ", "4x", "four", "1048577", "99999999999999999999"}) {
    SCOPED_TRACE(bad);
    try {
      read(bad);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), std::string("LSGPT_TEST_ENV_SWITCH must be a whole number "
                                                   "of heads from 0 to 1048576, got '") +
                                           bad + "'");
    }
  }
  ScopedEnv zero(kName, "0");
  EXPECT_THROW(env_whole_number(kName, 1, 8, "key blocks"), Error);  // below lo
}

}  // namespace test_env_switch
}  // namespace
}  // namespace lsgpt
