// The local ingest's JSON handling, without a server: framing of objects and
// arrays, per-item mapping and validation, and the answer's shape.
#include "agent/ingest_json.h"

#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"

namespace constance::agent {
namespace {

using ::testing::HasSubstr;

const absl::Time kNow = absl::FromUnixSeconds(1'700'000'000);  // 2023-11-14T22:13:20Z

TEST(ParseObservationsTest, Table) {
  static const struct {
    const char* body;
    size_t accepted;
    // (index, substring of the reason) per refused item, in order.
    std::vector<std::pair<size_t, const char*>> rejected;
  } kCases[] = {
      {R"({"key":"coffee","price":{"minor_units":449,"currency":"EUR"}})", 1, {}},
      {R"({"key":"coffee","price":{"minor_units":"449","currency":"EUR","kind":"POS"}})", 1, {}},
      {R"([{"key":"checkout","wait_seconds":182},{"key":"fridge","check":{"passed":false}}])",
       2,
       {}},
      {"[]", 0, {}},
      {"  [ ]  ", 0, {}},
      // One bad item among good ones: the good ones are kept.
      {R"([{"key":"a","score":1},{"key":"b","wait_seconds":-1},{"key":"c","check":{"passed":true}}])",
       2,
       {{1, "wait_seconds: must not be negative"}}},
      // Items that are not objects.
      {R"([1,"x",null,[],{"key":"a","score":1}])",
       1,
       {{0, "expected a JSON object, got number"},
        {1, "expected a JSON object, got string"},
        {2, "expected a JSON object, got null"},
        {3, "expected a JSON object, got array"}}},
      // Protobuf's mapping errors pass through and name the field.
      {R"({"key":"a","score":1,"scor":2})", 0, {{0, "scor"}}},
      {R"({"key":"a","price":{"minor_units":4.49,"currency":"EUR"}})", 0, {{0, "minor_units"}}},
      {R"({"key":"a","wait_seconds":"slow"})", 0, {{0, "wait_seconds"}}},
      {R"({"key":"a","price":{"minor_units":1,"currency":"EUR","kind":"SHELVES"}})",
       0,
       {{0, "kind"}}},
      // ValidateObservation's reasons name the field too.
      {R"({"key":"a"})", 0, {{0, "one of price"}}},
      {R"({"key":"a b","score":1})", 0, {{0, "key: character ' ' not allowed"}}},
      {R"({"key":"a","price":{"minor_units":1,"currency":"eur"}})", 0, {{0, "price.currency"}}},
      {R"({"key":"a","score":1,"observed_at":"2030-01-01T00:00:00Z"})", 0, {{0, "observed_at"}}},
  };
  Limits limits;
  for (const auto& c : kCases) {
    absl::StatusOr<ParsedObservations> parsed = ParseObservations(c.body, kNow, limits);
    ASSERT_TRUE(parsed.ok()) << c.body << ": " << parsed.status();
    EXPECT_EQ(parsed->accepted.size(), c.accepted) << c.body;
    ASSERT_EQ(parsed->rejected.size(), c.rejected.size()) << c.body;
    for (size_t i = 0; i < c.rejected.size(); ++i) {
      EXPECT_EQ(parsed->rejected[i].index, c.rejected[i].first) << c.body;
      EXPECT_THAT(parsed->rejected[i].reason, HasSubstr(c.rejected[i].second)) << c.body;
    }
  }
}

TEST(ParseObservationsTest, WholeRequestErrors) {
  static const struct {
    const char* body;
    const char* error;
  } kCases[] = {
      {"", "malformed JSON"},
      {R"([{"key":)", "malformed JSON"},
      {R"({"key":"a"} trailing)", "malformed JSON"},
      {"[1,]", "malformed JSON"},
      {"42", "expected a JSON object or an array of objects, got number"},
      {R"("text")", "got string"},
      {"null", "got null"},
  };
  for (const auto& c : kCases) {
    absl::StatusOr<ParsedObservations> parsed = ParseObservations(c.body, kNow, Limits());
    ASSERT_FALSE(parsed.ok()) << c.body;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(c.error)) << c.body;
  }
}

TEST(ParseObservationsTest, StampsReceiveTimeOnlyWhenMissing) {
  absl::StatusOr<ParsedObservations> parsed = ParseObservations(
      R"([{"key":"a","score":1},{"key":"b","score":2,"observed_at":"2023-11-14T20:00:00Z"}])", kNow,
      Limits());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->accepted.size(), 2u);
  using google::protobuf::util::TimeUtil;
  EXPECT_EQ(TimeUtil::TimestampToSeconds(parsed->accepted[0].observed_at()),
            absl::ToUnixSeconds(kNow));
  EXPECT_EQ(TimeUtil::ToString(parsed->accepted[1].observed_at()), "2023-11-14T20:00:00Z");
  // Order and content survive the mapping.
  EXPECT_EQ(parsed->accepted[0].key(), "a");
  EXPECT_EQ(parsed->accepted[1].score(), 2);
}

TEST(ParseObservationsTest, PriceStaysInteger) {
  absl::StatusOr<ParsedObservations> parsed = ParseObservations(
      R"({"key":"a","price":{"minor_units":99999999,"currency":"EUR"}})", kNow, Limits());
  ASSERT_TRUE(parsed.ok());
  ASSERT_EQ(parsed->accepted.size(), 1u);
  EXPECT_EQ(parsed->accepted[0].price().minor_units(), 99999999);
}

TEST(RenderIngestAnswerTest, Shape) {
  EXPECT_EQ(RenderIngestAnswer(3, {}), R"({"accepted":3,"rejected":[]})");
  EXPECT_EQ(
      RenderIngestAnswer(1, {{2, "wait_seconds: must not be negative"}}),
      R"({"accepted":1,"rejected":[{"index":2,"reason":"wait_seconds: must not be negative"}]})");
  EXPECT_EQ(RenderIngestError("spool \"full\""), R"({"error":"spool \"full\""})");
}

}  // namespace
}  // namespace constance::agent
