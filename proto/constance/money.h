// Money: amounts in a currency's minor units, read from and written as the
// decimal text people type, with the number of decimals ISO 4217 gives each
// currency (JPY 0, EUR 2, KWD 3, CLF 4).
//
// Every place that reads a decimal price (the agent's `observe`, drop
// directory, import and price checks, the collector's catalog) and every
// place that shows one (findings, reports) goes through this file, so "450"
// yen typed on a command line and `minor_units: 450` sent as JSON are the
// same cell. Amounts are read by string arithmetic, never through a float,
// whose rounding would turn 4.35 into 434 somewhere.
//
// Example:
//   absl::StatusOr<int64_t> yen = ParseMoney("450", "JPY");          // 450
//   absl::StatusOr<int64_t> dinar = ParseMoney("1.25", "KWD");       // 1250
//   absl::StatusOr<int64_t> euro = ParseMoney("1 234,5", "EUR", ',', " ");  // 123450
//   FormatMoney(1250, "KWD");                                        // "1.250 KWD"
//
// Pure functions over a constant table; thread-safe.
#ifndef CONSTANCE_MONEY_H_
#define CONSTANCE_MONEY_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace constance {

// The number of decimals of `currency`, an ISO 4217 alphabetic code in
// capitals: 0 for JPY, 2 for EUR, 3 for KWD, 4 for CLF. Codes ISO 4217 gives
// no minor unit (gold XAU, the testing code XTS, XXX, ...) count in whole
// units: 0. NotFound naming the code for anything that is not ISO 4217.
absl::StatusOr<int> CurrencyExponent(absl::string_view currency);

// `text` (a non-negative decimal amount in `currency`) in minor units:
// "4.49" EUR -> 449, "450" JPY -> 450, "1.25" KWD -> 1250. Decimals past the
// currency's are accepted only when they are zeros ("450.00" JPY is 450).
// `decimal_separator` is '.' or ','; `thousands` is a separator removed
// before reading ("" for none; " " also removes no-break and narrow no-break
// spaces). Surrounding spaces are ignored. InvalidArgument, with a message
// that starts with the quoted text and says what to write instead, for an
// empty or negative amount, a character that is not a digit, a decimal the
// currency does not have ("'450.5' has 1 decimal, but JPY has no decimals"),
// an amount beyond int64, or a currency that is not ISO 4217.
absl::StatusOr<int64_t> ParseMoney(absl::string_view text, absl::string_view currency,
                                   char decimal_separator = '.', absl::string_view thousands = "");

// `minor_units` as the decimal amount and code people read, exactly:
// "450 JPY", "1.250 KWD", "4.49 EUR", "-0.05 EUR". A code that is not ISO
// 4217 shows the bare minor units: "449 minor units of XYZ".
std::string FormatMoney(int64_t minor_units, absl::string_view currency);

// A statistic over minor units (a mean, a MAD) shown like FormatMoney,
// rounded to the currency's minor unit; whole values are shown exactly.
std::string FormatMoneyStatistic(double minor_units, absl::string_view currency);

// `text` without surrounding ASCII white space, no-break and narrow
// no-break spaces (UTF-8), as spreadsheets and point-of-sale exports pad.
absl::string_view TrimNumberSpaces(absl::string_view text);

// `text` trimmed, with the `thousands` separator removed and the decimal
// separator made a point, as ParseMoney reads it; also for plain numbers (a
// wait in seconds) written the same way. InvalidArgument naming the text
// when it is empty or has the other separator where it cannot be.
absl::StatusOr<std::string> NormalizeDecimal(absl::string_view text, char decimal_separator,
                                             absl::string_view thousands);

}  // namespace constance

#endif  // CONSTANCE_MONEY_H_
