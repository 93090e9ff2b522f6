// The shared YAML layer: one rule and one wording for every config file.
#include "constance/yaml_reader.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace constance::yaml {
namespace {

using ::testing::HasSubstr;

struct Settings {
  int64_t count = 1;
  absl::Duration every = absl::Seconds(1);
  absl::Duration grace = absl::ZeroDuration();
  bool on = false;
  std::string name;
};

std::vector<Key<Settings>> SettingsKeys() {
  return {
      {"count",
       [](const Reader& r, const Field& f, Settings* s) {
         return r.Integer(f, 1, 100, &s->count);
       }},
      {"every",
       [](const Reader& r, const Field& f, Settings* s) {
         return r.Duration(f, {.allow_zero = false, .days = true}, &s->every);
       }},
      {"grace",
       [](const Reader& r, const Field& f, Settings* s) {
         return r.Duration(f, {.allow_zero = true}, &s->grace);
       }},
      {"on", [](const Reader& r, const Field& f, Settings* s) { return r.Bool(f, &s->on); }},
      {"name", [](const Reader& r, const Field& f, Settings* s) { return r.Text(f, &s->name); },
       "every setting has a name"},
  };
}

absl::Status ParseSettings(const std::string& text, Settings* out) {
  return Parse(text, Reader("s.yaml", "settings"), SettingsKeys(), out);
}

TEST(YamlReaderTest, ReadsEveryKind) {
  Settings s;
  ASSERT_TRUE(ParseSettings("name: a\ncount: 7\nevery: 365d\ngrace: 0s\non: yes\n", &s).ok());
  EXPECT_EQ(s.name, "a");
  EXPECT_EQ(s.count, 7);
  EXPECT_EQ(s.every, absl::Hours(24 * 365));
  EXPECT_EQ(s.grace, absl::ZeroDuration());
  EXPECT_TRUE(s.on);
}

TEST(YamlReaderTest, ErrorsNameFileLineFieldAndWhatToWrite) {
  static const struct {
    const char* yaml;
    const char* error;
  } kCases[] = {
      {"name: a\ncount: 0\n", "s.yaml:2: count: must be in 1..100, got 0"},
      {"name: a\ncount: 1.5\n", "s.yaml:2: count: expected a whole number in 1..100, got '1.5'"},
      {"name: a\nevery: 0s\n", "s.yaml:2: every: must be positive, got 0"},
      {"name: a\nevery: soon\n",
       "s.yaml:2: every: 'soon' is not a duration (e.g. 90s, 1h30m, 168h, 365d)"},
      {"name: a\ngrace: -1s\n", "s.yaml:2: grace: must not be negative, got -1s"},
      {"name: a\ngrace: 1d\n", "s.yaml:2: grace: '1d' is not a duration (e.g. 90s, 1h30m, 168h)"},
      {"name: a\non: maybe\n", "s.yaml:2: on: expected true or false, got 'maybe'"},
      {"name: [a]\n", "s.yaml:1: name: expected a single value"},
      {"name:\n", "s.yaml:1: name: has no value"},
      {"count: 2\n", "s.yaml:1: name: required (every setting has a name)"},
      {"name: a\nnmae: b\n", "s.yaml:2: nmae: unknown key (allowed: count, every, grace, on, name)"},
      {"name: a\nname: b\n", "s.yaml:2: name: duplicate key (first at line 1)"},
      {"- a\n", "s.yaml:1: settings: expected a mapping"},
      {"name: [a\n", "s.yaml:2: syntax error"},
  };
  for (const auto& c : kCases) {
    Settings s;
    absl::Status status = ParseSettings(c.yaml, &s);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.yaml;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.error)) << c.yaml;
  }
}

TEST(YamlReaderTest, EmptyDocumentStillNeedsRequiredKeys) {
  Settings s;
  // `name` is required only when the mapping is there to hold it.
  EXPECT_THAT(std::string(ParseSettings("# nothing\n", &s).message()),
              HasSubstr("name: required"));
}

TEST(YamlReaderTest, FlagsShareTheDurationRule) {
  EXPECT_TRUE(CheckDuration(absl::Seconds(1), {}).ok());
  EXPECT_EQ(CheckDuration(absl::ZeroDuration(), {}).message(), "must be positive, got 0");
  EXPECT_TRUE(CheckDuration(absl::ZeroDuration(), {.allow_zero = true}).ok());
  EXPECT_EQ(CheckDuration(-absl::Seconds(1), {.allow_zero = true}).message(),
            "must not be negative, got -1s");
}

TEST(YamlReaderTest, MissingFileIsNotFoundNamingThePath) {
  absl::StatusOr<std::string> text = ReadConfigFile("/nonexistent/s.yaml");
  EXPECT_EQ(text.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(text.status().message()), HasSubstr("/nonexistent/s.yaml"));
}

}  // namespace
}  // namespace constance::yaml
