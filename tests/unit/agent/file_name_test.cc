// What a file's name says (file_name.h): the location and the time of a
// published price list named like "Supermarket 269_..._22.01.2026_7.15h.csv",
// and a FileParser taking them for rows without their own.
#include "agent/file_name.h"

#include <string>
#include <vector>

#include "agent/file_input.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"

namespace constance::agent {
namespace {

using ::testing::HasSubstr;

constexpr char kRealName[] = "Supermarket 269_Zagreb Ilica 12_10000_22.01.2026_7.15h.csv";

InputMapping PriceList() {
  InputMapping m;
  m.pattern = "Supermarket *.csv";
  m.records = InputMapping::Records::kPrice;
  m.delimiter = ';';
  m.decimal = ',';
  m.key_column = "Barkod";
  m.value_column = "Cijena";
  m.currency = "EUR";
  m.name_regex =
      R"(^Supermarket (?P<location>\d+)_.*_(?P<observed_at>\d{2}\.\d{2}\.\d{4}_\d{1,2}\.\d{2})h\.csv$)";
  m.name_time_format = "%d.%m.%Y_%H.%M";
  m.location_prefix = "store-";
  return m;
}

absl::Time At(const char* rfc3339) {
  absl::Time t;
  std::string err;
  EXPECT_TRUE(absl::ParseTime(absl::RFC3339_full, rfc3339, &t, &err)) << err;
  return t;
}

TEST(ReadFileNameTest, LocationAndTimeFromARealLookingName) {
  absl::StatusOr<FileNameFacts> facts = ReadFileName(PriceList(), kRealName);
  ASSERT_TRUE(facts.ok()) << facts.status();
  EXPECT_EQ(facts->location, "store-269");
  EXPECT_EQ(facts->observed_at, At("2026-01-22T07:15:00Z"));
}

TEST(ReadFileNameTest, WithoutARegexTheNameSaysNothing) {
  InputMapping m = PriceList();
  m.name_regex.clear();
  m.name_time_format.clear();
  m.location_prefix.clear();
  absl::StatusOr<FileNameFacts> facts = ReadFileName(m, kRealName);
  ASSERT_TRUE(facts.ok()) << facts.status();
  EXPECT_EQ(facts->location, "");
  EXPECT_EQ(facts->observed_at, absl::InfinitePast());
}

TEST(ReadFileNameTest, BadNamesAreErrorsNamingTheFile) {
  static const struct {
    const char* name;
    const char* error;
  } cases[] = {
      // Not the shape at all, and a match of only part of the name.
      {"prices.csv", "'prices.csv': the name does not match name_regex"},
      {"Supermarket 269_x_22.01.2026_7.15h.csv.bak", "does not match name_regex"},
      // Shaped like a date, not one.
      {"Supermarket 269_x_32.01.2026_7.15h.csv", "observed_at from the name: '32.01.2026_7.15'"},
      {"Supermarket 269_x_22.13.2026_7.15h.csv", "is not a time in format %d.%m.%Y_%H.%M"},
  };
  for (const auto& c : cases) {
    absl::StatusOr<FileNameFacts> facts = ReadFileName(PriceList(), c.name);
    ASSERT_FALSE(facts.ok()) << c.name;
    EXPECT_EQ(facts.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(facts.status().message()), HasSubstr(c.error)) << c.name;
    EXPECT_THAT(std::string(facts.status().message()), HasSubstr(c.name)) << c.name;
  }
}

TEST(ReadFileNameTest, LocationIsLowerCasedAfterItsPrefix) {
  InputMapping m;
  m.name_regex = R"((?P<location>[A-Za-z-]+)_prices\.csv)";
  m.location_prefix = "hr-";
  absl::StatusOr<FileNameFacts> facts = ReadFileName(m, "Zagreb-Centar_prices.csv");
  ASSERT_TRUE(facts.ok()) << facts.status();
  EXPECT_EQ(facts->location, "hr-zagreb-centar");
  EXPECT_EQ(facts->observed_at, absl::InfinitePast());

  // A capture that cannot become a location id is refused, never mangled.
  m.name_regex = R"((?P<location>.+)_prices\.csv)";
  facts = ReadFileName(m, "Zagreb Centar_prices.csv");
  ASSERT_FALSE(facts.ok());
  EXPECT_THAT(std::string(facts.status().message()),
              HasSubstr("location 'Zagreb Centar' from the name gives 'hr-zagreb centar', not a "
                        "location id"));
}

TEST(ReadFileNameTest, ParserTakesTheNamesTimeAndLocationForRowsWithoutTheirOwn) {
  const InputMapping m = PriceList();
  absl::StatusOr<FileNameFacts> facts = ReadFileName(m, kRealName);
  ASSERT_TRUE(facts.ok()) << facts.status();
  FileParser parser(m, Limits{}, *facts);
  const std::string data = "Barkod;Cijena\n3850001;1,99\n";
  std::vector<InputRecord> records;
  // Validated at a clock a day later: the file's time is not now.
  parser.Parse(data, 1, /*at_end=*/true, At("2026-01-23T00:00:00Z"), 0, &records);
  ASSERT_EQ(records.size(), 2u);
  ASSERT_EQ(records[1].error, "");
  EXPECT_EQ(records[1].location, "store-269");
  ASSERT_EQ(records[1].observations.size(), 1u);
  EXPECT_EQ(google::protobuf::util::TimeUtil::ToString(records[1].observations[0].observed_at()),
            "2026-01-22T07:15:00Z");
}

TEST(ReadFileNameTest, AnObservedAtColumnStillWinsOverTheName) {
  InputMapping m = PriceList();
  m.observed_at_column = "Vrijeme";
  absl::StatusOr<FileNameFacts> facts = ReadFileName(m, kRealName);
  ASSERT_TRUE(facts.ok()) << facts.status();
  FileParser parser(m, Limits{}, *facts);
  std::vector<InputRecord> records;
  parser.Parse("Barkod;Cijena;Vrijeme\n3850001;1,99;2026-01-22T09:00:00Z\n", 1, true,
               At("2026-01-23T00:00:00Z"), 0, &records);
  ASSERT_EQ(records.size(), 2u);
  ASSERT_EQ(records[1].observations.size(), 1u) << records[1].error;
  EXPECT_EQ(google::protobuf::util::TimeUtil::ToString(records[1].observations[0].observed_at()),
            "2026-01-22T09:00:00Z");
}

}  // namespace
}  // namespace constance::agent
