// Money: ISO 4217 exponents, decimal text to minor units and back, and the
// messages that tell a user what to write instead.
#include "constance/money.h"

#include <cstdint>
#include <limits>
#include <string>

#include "constance/format.h"
#include "constance/validate.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace constance {
namespace {

using ::testing::HasSubstr;

TEST(CurrencyExponentTest, Table) {
  static const struct {
    const char* code;
    int exponent;       // When ok.
    const char* error;  // Substring of the NotFound message, nullptr when ok.
  } kCases[] = {
      {"JPY", 0, nullptr}, {"KRW", 0, nullptr},   {"VND", 0, nullptr}, {"CLP", 0, nullptr},
      {"ISK", 0, nullptr}, {"XAF", 0, nullptr},   {"XOF", 0, nullptr}, {"XPF", 0, nullptr},
      {"EUR", 2, nullptr}, {"USD", 2, nullptr},   {"CZK", 2, nullptr}, {"GBP", 2, nullptr},
      {"KWD", 3, nullptr}, {"BHD", 3, nullptr},   {"JOD", 3, nullptr}, {"OMR", 3, nullptr},
      {"TND", 3, nullptr}, {"IQD", 3, nullptr},   {"LYD", 3, nullptr}, {"CLF", 4, nullptr},
      {"UYW", 4, nullptr}, {"XXX", 0, nullptr},   {"XAU", 0, nullptr}, {"ZWG", 2, nullptr},
      {"EUE", 0, "'EUE' is not an ISO 4217 code"}, {"eur", 0, "write it in capitals, EUR"},
      {"", 0, "no currency given"},               {"EURO", 0, "'EURO' is not an ISO 4217"},
  };
  for (const auto& c : kCases) {
    absl::StatusOr<int> e = CurrencyExponent(c.code);
    if (c.error == nullptr) {
      ASSERT_TRUE(e.ok()) << c.code << ": " << e.status();
      EXPECT_EQ(*e, c.exponent) << c.code;
      EXPECT_TRUE(ValidateCurrency(c.code).ok()) << c.code;
    } else {
      ASSERT_FALSE(e.ok()) << c.code;
      EXPECT_EQ(e.status().code(), absl::StatusCode::kNotFound) << c.code;
      EXPECT_THAT(std::string(e.status().message()), HasSubstr(c.error)) << c.code;
      EXPECT_FALSE(ValidateCurrency(c.code).ok()) << c.code;
    }
  }
}

TEST(ParseMoneyTest, Table) {
  static const struct {
    const char* text;
    const char* currency;
    char decimal;
    const char* thousands;
    int64_t minor;      // When ok.
    const char* error;  // Substring of the error, nullptr when ok.
  } kCases[] = {
      {"4.49", "EUR", '.', "", 449, nullptr},
      {"4.5", "EUR", '.', "", 450, nullptr},
      {"4", "EUR", '.', "", 400, nullptr},
      {"0", "EUR", '.', "", 0, nullptr},
      {"0.01", "EUR", '.', "", 1, nullptr},
      {"4.35", "EUR", '.', "", 435, nullptr},  // 4.35 is 434.99999... as a double.
      {"04.10", "EUR", '.', "", 410, nullptr},
      {"4.490", "EUR", '.', "", 449, nullptr},
      {"450", "JPY", '.', "", 450, nullptr},
      {"450.00", "JPY", '.', "", 450, nullptr},
      {"1.250", "KWD", '.', "", 1250, nullptr},
      {"1.25", "KWD", '.', "", 1250, nullptr},
      {"1", "KWD", '.', "", 1000, nullptr},
      {"1.2345", "CLF", '.', "", 12345, nullptr},
      {"4,49", "EUR", ',', "", 449, nullptr},
      {"1 234,50", "EUR", ',', " ", 123450, nullptr},
      {"1\xC2\xA0"
       "234,5",
       "EUR", ',', " ", 123450, nullptr},
      {"1.234,50", "EUR", ',', ".", 123450, nullptr},
      {"1,234.50", "EUR", '.', ",", 123450, nullptr},
      {"1'234.50", "EUR", '.', "'", 123450, nullptr},
      {"1 250", "JPY", ',', " ", 1250, nullptr},
      {"1,250", "KWD", ',', "", 1250, nullptr},
      {" 7 ", "EUR", '.', "", 700, nullptr},
      {"92233720368547758.07", "EUR", '.', "", std::numeric_limits<int64_t>::max(), nullptr},
      {"450.5", "JPY", '.', "", 0, "'450.5' has 1 decimal, but JPY has no decimals (e.g. 450 JPY)"},
      {"1.2505", "KWD", '.', "", 0, "'1.2505' has 4 decimals, but KWD has 3 decimals"},
      {"4.499", "EUR", '.', "", 0, "'4.499' has 3 decimals, but EUR has 2 decimals"},
      {"4,499", "EUR", ',', "", 0, "but EUR has 2 decimals"},
      {"-1", "EUR", '.', "", 0, "'-1' must not be negative"},
      {"-1,00", "EUR", ',', "", 0, "must not be negative"},
      {"", "JPY", '.', "", 0, "'' is empty: write an amount like 450 JPY"},
      {"  ", "KWD", '.', "", 0, "is empty: write an amount like 1.250 KWD"},
      {"abc", "EUR", '.', "", 0, "'abc' is not a decimal amount like 4.49 EUR"},
      {"4.", "EUR", '.', "", 0, "not a decimal amount"},
      {".5", "EUR", '.', "", 0, "not a decimal amount"},
      {"+4", "EUR", '.', "", 0, "not a decimal amount"},
      {"4.4x", "EUR", '.', "", 0, "not a decimal amount"},
      {"1e3", "EUR", '.', "", 0, "not a decimal amount"},
      {"1.2.3", "EUR", '.', "", 0, "not a decimal amount"},
      {"4,49", "EUR", '.', "", 0, "has a ',' but the decimal separator is '.'"},
      {"4.49", "EUR", ',', "", 0, "has a '.' but the decimal separator is ','"},
      {"92233720368547758.08", "EUR", '.', "", 0, "too large"},
      {"9223372036854775808", "JPY", '.', "", 0, "too large"},
      {"4.49", "EUE", '.', "", 0, "currency 'EUE' is not an ISO 4217 code"},
      {"4.49", "", '.', "", 0, "no currency given"},
  };
  for (const auto& c : kCases) {
    const std::string what = std::string(c.text) + " " + c.currency;
    absl::StatusOr<int64_t> minor = ParseMoney(c.text, c.currency, c.decimal, c.thousands);
    if (c.error == nullptr) {
      ASSERT_TRUE(minor.ok()) << what << ": " << minor.status();
      EXPECT_EQ(*minor, c.minor) << what;
    } else {
      ASSERT_FALSE(minor.ok()) << what << " parsed as " << *minor;
      EXPECT_EQ(minor.status().code(), absl::StatusCode::kInvalidArgument) << what;
      EXPECT_THAT(std::string(minor.status().message()), HasSubstr(c.error)) << what;
    }
  }
}

TEST(FormatMoneyTest, TableAndRoundTrip) {
  static const struct {
    int64_t minor;
    const char* currency;
    const char* want;
  } kCases[] = {
      {450, "JPY", "450 JPY"},
      {0, "JPY", "0 JPY"},
      {1250, "KWD", "1.250 KWD"},
      {5, "KWD", "0.005 KWD"},
      {449, "EUR", "4.49 EUR"},
      {5, "EUR", "0.05 EUR"},
      {0, "EUR", "0.00 EUR"},
      {89900, "EUR", "899.00 EUR"},
      {-5, "EUR", "-0.05 EUR"},
      {12345, "CLF", "1.2345 CLF"},
      {std::numeric_limits<int64_t>::max(), "EUR", "92233720368547758.07 EUR"},
      {std::numeric_limits<int64_t>::min(), "EUR", "-92233720368547758.08 EUR"},
      {449, "XYZ", "449 minor units of XYZ"},
  };
  for (const auto& c : kCases) {
    const std::string shown = FormatMoney(c.minor, c.currency);
    EXPECT_EQ(shown, c.want) << c.minor << " " << c.currency;
    if (c.minor < 0 || !CurrencyExponent(c.currency).ok()) continue;
    // What is shown reads back as the same amount.
    const std::string amount = shown.substr(0, shown.rfind(' '));
    absl::StatusOr<int64_t> back = ParseMoney(amount, c.currency);
    ASSERT_TRUE(back.ok()) << shown << ": " << back.status();
    EXPECT_EQ(*back, c.minor) << shown;
  }
}

TEST(FormatMoneyTest, StatisticsAreRoundedToTheMinorUnit) {
  static const struct {
    double minor;
    const char* currency;
    const char* want;
  } kCases[] = {
      {449, "EUR", "4.49 EUR"},         {449.5, "EUR", "4.50 EUR"},
      {449.4, "JPY", "449 JPY"},        {1250.25, "KWD", "1.250 KWD"},
      {2.5e20, "JPY", "250000000000000000000 JPY"},
  };
  for (const auto& c : kCases) {
    EXPECT_EQ(FormatMoneyStatistic(c.minor, c.currency), c.want) << c.minor << " " << c.currency;
    EXPECT_EQ(FormatValue(v1::FAMILY_PRICE, c.currency, c.minor), c.want) << c.minor;
  }
}

}  // namespace
}  // namespace constance
