// JSON from outside the agent cannot recurse it off its stack: nesting is
// measured before anything recurses, a too-deep request item is refused
// alone by index, a too-deep body or line with a reason, and the rest is
// taken. Run on a thread with an HTTP worker's stack, as in production.
#include "agent/bounded_json.h"

#include <string>
#include <vector>

#include "agent/file_input.h"
#include "agent/ingest_json.h"
#include "gtest/gtest.h"
#include "tests/fuzz/small_stack.h"

namespace constance::agent {
namespace {

std::string Nested(int levels, char open, char close, const std::string& inner = "1") {
  std::string s;
  for (int i = 0; i < levels; ++i) s += open == '{' ? "{\"a\":" : "[";
  s += inner;
  for (int i = 0; i < levels; ++i) s += close;
  return s;
}

TEST(BoundedJsonTest, MeasuresNestingWithoutParsing) {
  static const struct {
    const char* text;
    int depth;
    std::vector<int> items;
  } kCases[] = {
      {"1", 0, {}},
      {"{}", 1, {}},
      {"[]", 1, {}},
      {R"({"a":{"b":[1]}})", 3, {}},
      {R"([{"a":[1]}, 2, {"b":"[[[{"}])", 3, {2, 0, 1}},
      {R"(["\"[", [[]]])", 3, {0, 2}},
      {R"([1,)", 1, {0}},
  };
  for (const auto& c : kCases) {
    SCOPED_TRACE(c.text);
    JsonNesting n = MeasureJsonNesting(c.text);
    EXPECT_EQ(n.depth, c.depth);
    EXPECT_EQ(n.item_depths, c.items);
  }
}

TEST(BoundedJsonTest, ATooDeepItemIsRefusedAloneOnAWorkersStack) {
  const std::string good = R"({"key":"coffee-250g","price":{"minor_units":449,"currency":"EUR"}})";
  const std::string body =
      "[" + good + "," + Nested(2000, '[', ']') + "," + Nested(700, '{', '}') + "," + good + "]";
  absl::StatusOr<ParsedObservations> parsed;
  testing::RunOnSmallStack([&] { parsed = ParseObservations(body, absl::Now(), Limits{}); });
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->accepted.size(), 2u);
  ASSERT_EQ(parsed->rejected.size(), 2u);
  EXPECT_EQ(parsed->rejected[0].index, 1u);
  EXPECT_EQ(parsed->rejected[1].index, 2u);
  EXPECT_NE(parsed->rejected[0].reason.find("nested deeper than 64 levels"), std::string::npos)
      << parsed->rejected[0].reason;
  // The limit itself is taken: an item of 64 levels.
  testing::RunOnSmallStack([&] {
    parsed = ParseItems(
        "[" + Nested(64, '{', '}') + "]",
        [](absl::string_view, std::vector<v1::Observation>*) { return absl::OkStatus(); });
  });
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->items_accepted, 1u);
}

TEST(BoundedJsonTest, ATooDeepBodyIsRefusedWithItsReason) {
  absl::StatusOr<ParsedObservations> parsed;
  testing::RunOnSmallStack(
      [&] { parsed = ParseObservations(Nested(700, '{', '}'), absl::Now(), Limits{}); });
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("nested deeper than 64 levels"), std::string::npos);
  absl::StatusOr<nlohmann::json> doc = ParseBoundedJson(Nested(100'000, '[', ']'));
  EXPECT_FALSE(doc.ok());
}

TEST(BoundedJsonTest, ATooDeepLineIsReportedAndTheNextLinesRead) {
  for (InputMapping::Records r :
       {InputMapping::Records::kObservation, InputMapping::Records::kTicket,
        InputMapping::Records::kChecklist, InputMapping::Records::kPriceCheck,
        InputMapping::Records::kPrice}) {
    InputMapping m;
    m.format = InputMapping::Format::kJsonl;
    m.records = r;
    if (r == InputMapping::Records::kPrice) {
      m.key_column = "sku";
      m.value_column = "price";
      m.currency = "EUR";
    }
    SCOPED_TRACE(static_cast<int>(r));
    const std::string file = Nested(100'000, '{', '}') + "\n" + Nested(3000, '[', ']') + "\n";
    std::vector<InputRecord> records;
    size_t used = 0;
    testing::RunOnSmallStack([&] {
      FileParser parser(m, Limits{});
      used = parser.Parse(file, 1, /*at_end=*/true, absl::Now(), 0, &records);
    });
    EXPECT_EQ(used, file.size());
    ASSERT_EQ(records.size(), 2u);
    for (const InputRecord& rec : records) {
      EXPECT_NE(rec.error.find("nested deeper than 64 levels"), std::string::npos) << rec.error;
    }
    EXPECT_EQ(records[1].line, 2);
  }
}

}  // namespace
}  // namespace constance::agent
