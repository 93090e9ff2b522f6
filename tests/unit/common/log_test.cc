// Outside text cannot forge a log line: every message is escaped before it
// is written (constance/log.h).
#include "constance/log.h"

#include <string>

#include "gtest/gtest.h"

namespace constance {
namespace {

TEST(EscapeForLogTest, ControlCharactersAndInvalidUtf8AreEscaped) {
  static const struct {
    std::string in;
    std::string out;
  } kCases[] = {
      {"store-0042", "store-0042"},
      {"store-1\n2026-12-04T10:00:00Z info fake line",
       "store-1\\n2026-12-04T10:00:00Z info fake line"},
      {"a\rb\tc", "a\\rb\\tc"},
      {std::string("nul\0x", 5), "nul\\x00x"},
      {"esc\x1b[31m", "esc\\x1b[31m"},
      {"del\x7f", "del\\x7f"},
      {"K\xC3\xB3"
       "d zbo\xC5\xBE\xC3\xAD.csv",
       "K\xC3\xB3"
       "d zbo\xC5\xBE\xC3\xAD.csv"},  // Valid UTF-8 kept.
      {"bad \xff\xfe", "bad \\xff\\xfe"},
      {"cut \xC3", "cut \\xc3"},                     // A sequence cut short.
      {"overlong \xC0\xAF", "overlong \\xc0\\xaf"},  // Overlong '/'.
      {"surrogate \xED\xA0\x80", "surrogate \\xed\\xa0\\x80"},
      {"emoji \xF0\x9F\x8F\xAA", "emoji \xF0\x9F\x8F\xAA"},
  };
  for (const auto& c : kCases) {
    EXPECT_EQ(EscapeForLog(c.in), c.out) << c.in;
  }
}

}  // namespace
}  // namespace constance
