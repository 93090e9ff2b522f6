// One price, every way in: the same amount sent as JSON minor_units to the
// HTTP ingest, typed on `constance-agent observe`, written in a drop-file
// row, sent as a price check and promised in the catalog must be the same
// number of minor units in the same currency, whatever that currency's
// decimals (JPY none, EUR 2, KWD 3). Otherwise one store's yen would be 100
// times another's and make a false outlier.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/file_input.h"
#include "agent/ingest_json.h"
#include "agent/observe.h"
#include "agent/price_check.h"
#include "collector/catalog.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace constance::agent {
namespace {

using ::testing::HasSubstr;

const absl::Time kNow = absl::FromUnixSeconds(1'795'000'000);

// The agent's HTTP ingest: {"price":{"minor_units":N,...}} needs no exponent.
v1::Observation FromJson(int64_t minor, const char* currency) {
  const std::string body = absl::StrCat(R"({"key":"sku-1","price":{"minor_units":)", minor,
                                        R"(,"currency":")", currency, R"(","kind":"SHELF"}})");
  absl::StatusOr<ParsedObservations> parsed = ParseObservations(body, kNow, Limits{});
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  if (!parsed.ok() || parsed->accepted.size() != 1) {
    ADD_FAILURE() << body << ": " << (parsed.ok() ? parsed->rejected.size() : 0) << " rejected";
    return v1::Observation();
  }
  return parsed->accepted[0];
}

absl::StatusOr<v1::Observation> FromObserve(const char* text, const char* currency) {
  ObserveRequest r;
  r.family = "price";
  r.key = "sku-1";
  r.value = text;
  r.currency = currency;
  return BuildObservation(r);
}

// A drop-directory CSV row, the currency in its own column.
InputRecord FromDropFile(const char* text, const char* currency) {
  InputMapping m;
  m.records = InputMapping::Records::kPrice;
  m.key_column = "item";
  m.value_column = "price";
  m.currency_column = "currency";
  FileParser parser(m, Limits{});
  const std::string data = absl::StrCat("item,price,currency\nsku-1,", text, ",", currency, "\n");
  std::vector<InputRecord> records;
  parser.Parse(data, 1, /*at_end=*/true, kNow, 0, &records);
  EXPECT_EQ(records.size(), 2u) << data;
  return records.size() == 2 ? records[1] : InputRecord();
}

absl::StatusOr<collector::Catalog> FromCatalog(const char* text, const char* currency) {
  return collector::ParseCatalog(
      absl::StrCat("promises:\n  prices:\n    - {key: sku-1, currency: ", currency, ", list: \"",
                   text, "\"}\n"),
      "c.yaml");
}

TEST(CurrenciesTest, OnePriceIsTheSameCellEveryWayIn) {
  static const struct {
    const char* currency;
    const char* text;  // As people write it.
    int64_t minor;
  } kCases[] = {
      {"JPY", "450", 450},  {"JPY", "450.00", 450}, {"KWD", "1.250", 1250},
      {"KWD", "1.25", 1250}, {"EUR", "4.49", 449},  {"CLF", "0.0001", 1},
  };
  for (const auto& c : kCases) {
    SCOPED_TRACE(absl::StrCat(c.text, " ", c.currency));
    const v1::Observation json = FromJson(c.minor, c.currency);
    EXPECT_EQ(json.price().minor_units(), c.minor);
    EXPECT_EQ(json.price().currency(), c.currency);

    absl::StatusOr<v1::Observation> typed = FromObserve(c.text, c.currency);
    ASSERT_TRUE(typed.ok()) << typed.status();
    EXPECT_EQ(typed->price().minor_units(), c.minor);
    EXPECT_EQ(typed->price().currency(), c.currency);

    const InputRecord row = FromDropFile(c.text, c.currency);
    ASSERT_TRUE(row.error.empty()) << row.error;
    ASSERT_EQ(row.observations.size(), 1u);
    EXPECT_EQ(row.observations[0].price().minor_units(), c.minor);
    EXPECT_EQ(row.observations[0].price().currency(), c.currency);

    absl::StatusOr<PriceCheck> check = ParsePriceCheckJson(
        absl::StrCat(R"({"item":"sku-1","currency":")", c.currency, R"(","shelf":")", c.text,
                     R"("})"));
    ASSERT_TRUE(check.ok()) << check.status();
    EXPECT_EQ(check->shelf, c.minor);

    absl::StatusOr<collector::Catalog> catalog = FromCatalog(c.text, c.currency);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    ASSERT_EQ(catalog->price_promises.size(), 1u);
    EXPECT_EQ(catalog->price_promises[0].list_minor_units, c.minor);
  }
}

TEST(CurrenciesTest, DecimalsTheCurrencyDoesNotHaveAreRefusedEveryWayIn) {
  static const struct {
    const char* currency;
    const char* text;
    const char* why;
  } kCases[] = {
      {"JPY", "450.5", "'450.5' has 1 decimal, but JPY has no decimals"},
      {"KWD", "1.2505", "'1.2505' has 4 decimals, but KWD has 3 decimals"},
      {"EUR", "4.499", "'4.499' has 3 decimals, but EUR has 2 decimals"},
  };
  for (const auto& c : kCases) {
    SCOPED_TRACE(absl::StrCat(c.text, " ", c.currency));
    absl::StatusOr<v1::Observation> typed = FromObserve(c.text, c.currency);
    ASSERT_FALSE(typed.ok());
    EXPECT_THAT(std::string(typed.status().message()), HasSubstr(absl::StrCat("price ", c.why)));

    const InputRecord row = FromDropFile(c.text, c.currency);
    EXPECT_TRUE(row.observations.empty());
    EXPECT_THAT(row.error, HasSubstr(absl::StrCat("column 'price': ", c.why)));

    absl::StatusOr<PriceCheck> check = ParsePriceCheckJson(absl::StrCat(
        R"({"item":"sku-1","currency":")", c.currency, R"(","pos":")", c.text, R"("})"));
    ASSERT_FALSE(check.ok());
    EXPECT_THAT(std::string(check.status().message()), HasSubstr(absl::StrCat("pos: ", c.why)));

    absl::StatusOr<collector::Catalog> catalog = FromCatalog(c.text, c.currency);
    ASSERT_FALSE(catalog.ok());
    EXPECT_THAT(std::string(catalog.status().message()),
                HasSubstr(absl::StrCat("c.yaml:3: promises.prices[0].list: ", c.why)));
  }
}

TEST(CurrenciesTest, ADropFileRowWithoutAKnownCurrencyNamesIt) {
  const InputRecord row = FromDropFile("4.49", "EUE");
  EXPECT_TRUE(row.observations.empty());
  EXPECT_THAT(row.error, HasSubstr("'4.49' cannot be read: currency 'EUE' is not an ISO 4217"));
}

}  // namespace
}  // namespace constance::agent
