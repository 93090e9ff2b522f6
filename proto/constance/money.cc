#include "constance/money.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"

namespace constance {
namespace {

struct Currency {
  absl::string_view code;
  int exponent;
};

// ISO 4217 alphabetic codes and their minor-unit exponents, sorted by code:
// the codes of Debian's iso-codes package (/usr/share/iso-codes/json/
// iso_4217.json) plus ZWG and XCG, which are newer. iso-codes does not carry
// the exponents, so they are written here from ISO 4217's list one; its
// "N.A." (metals, funds units, XTS, XXX) is 0. A closed list keeps a typo
// ("EUE") from creating a series of its own.
constexpr Currency kCurrencies[] = {
    {"AED", 2}, {"AFN", 2}, {"ALL", 2}, {"AMD", 2}, {"ANG", 2}, {"AOA", 2}, {"ARS", 2}, {"AUD", 2},
    {"AWG", 2}, {"AZN", 2}, {"BAM", 2}, {"BBD", 2}, {"BDT", 2}, {"BGN", 2}, {"BHD", 3}, {"BIF", 0},
    {"BMD", 2}, {"BND", 2}, {"BOB", 2}, {"BOV", 2}, {"BRL", 2}, {"BSD", 2}, {"BTN", 2}, {"BWP", 2},
    {"BYN", 2}, {"BZD", 2}, {"CAD", 2}, {"CDF", 2}, {"CHE", 2}, {"CHF", 2}, {"CHW", 2}, {"CLF", 4},
    {"CLP", 0}, {"CNY", 2}, {"COP", 2}, {"COU", 2}, {"CRC", 2}, {"CUC", 2}, {"CUP", 2}, {"CVE", 2},
    {"CZK", 2}, {"DJF", 0}, {"DKK", 2}, {"DOP", 2}, {"DZD", 2}, {"EGP", 2}, {"ERN", 2}, {"ETB", 2},
    {"EUR", 2}, {"FJD", 2}, {"FKP", 2}, {"GBP", 2}, {"GEL", 2}, {"GHS", 2}, {"GIP", 2}, {"GMD", 2},
    {"GNF", 0}, {"GTQ", 2}, {"GYD", 2}, {"HKD", 2}, {"HNL", 2}, {"HRK", 2}, {"HTG", 2}, {"HUF", 2},
    {"IDR", 2}, {"ILS", 2}, {"INR", 2}, {"IQD", 3}, {"IRR", 2}, {"ISK", 0}, {"JMD", 2}, {"JOD", 3},
    {"JPY", 0}, {"KES", 2}, {"KGS", 2}, {"KHR", 2}, {"KMF", 0}, {"KPW", 2}, {"KRW", 0}, {"KWD", 3},
    {"KYD", 2}, {"KZT", 2}, {"LAK", 2}, {"LBP", 2}, {"LKR", 2}, {"LRD", 2}, {"LSL", 2}, {"LYD", 3},
    {"MAD", 2}, {"MDL", 2}, {"MGA", 2}, {"MKD", 2}, {"MMK", 2}, {"MNT", 2}, {"MOP", 2}, {"MRU", 2},
    {"MUR", 2}, {"MVR", 2}, {"MWK", 2}, {"MXN", 2}, {"MXV", 2}, {"MYR", 2}, {"MZN", 2}, {"NAD", 2},
    {"NGN", 2}, {"NIO", 2}, {"NOK", 2}, {"NPR", 2}, {"NZD", 2}, {"OMR", 3}, {"PAB", 2}, {"PEN", 2},
    {"PGK", 2}, {"PHP", 2}, {"PKR", 2}, {"PLN", 2}, {"PYG", 0}, {"QAR", 2}, {"RON", 2}, {"RSD", 2},
    {"RUB", 2}, {"RWF", 0}, {"SAR", 2}, {"SBD", 2}, {"SCR", 2}, {"SDG", 2}, {"SEK", 2}, {"SGD", 2},
    {"SHP", 2}, {"SLE", 2}, {"SLL", 2}, {"SOS", 2}, {"SRD", 2}, {"SSP", 2}, {"STN", 2}, {"SVC", 2},
    {"SYP", 2}, {"SZL", 2}, {"THB", 2}, {"TJS", 2}, {"TMT", 2}, {"TND", 3}, {"TOP", 2}, {"TRY", 2},
    {"TTD", 2}, {"TWD", 2}, {"TZS", 2}, {"UAH", 2}, {"UGX", 0}, {"USD", 2}, {"USN", 2}, {"UYI", 0},
    {"UYU", 2}, {"UYW", 4}, {"UZS", 2}, {"VED", 2}, {"VES", 2}, {"VND", 0}, {"VUV", 0}, {"WST", 2},
    {"XAF", 0}, {"XAG", 0}, {"XAU", 0}, {"XBA", 0}, {"XBB", 0}, {"XBC", 0}, {"XBD", 0}, {"XCD", 2},
    {"XCG", 2}, {"XDR", 0}, {"XOF", 0}, {"XPD", 0}, {"XPF", 0}, {"XPT", 0}, {"XSU", 0}, {"XTS", 0},
    {"XUA", 0}, {"XXX", 0}, {"YER", 2}, {"ZAR", 2}, {"ZMW", 2}, {"ZWG", 2}, {"ZWL", 2},
};

constexpr absl::string_view kNoBreakSpace = "\xC2\xA0";
constexpr absl::string_view kNarrowNoBreakSpace = "\xE2\x80\xAF";

// Every code is three capitals: a table indexed by them finds one with a
// single read (each price observation validates its currency on the
// ingest path). Holds the code's index in kCurrencies, -1 for none.
constexpr int kCodes = 26 * 26 * 26;

int CodeIndex(absl::string_view code) {
  return ((code[0] - 'A') * 26 + (code[1] - 'A')) * 26 + (code[2] - 'A');
}

const std::array<int16_t, kCodes>& CurrencyTable() {
  static const std::array<int16_t, kCodes> table = [] {
    std::array<int16_t, kCodes> t;
    t.fill(-1);
    for (size_t i = 0; i < std::size(kCurrencies); ++i) {
      t[CodeIndex(kCurrencies[i].code)] = static_cast<int16_t>(i);
    }
    return t;
  }();
  return table;
}

const Currency* Find(absl::string_view code) {
  if (code.size() != 3 || !absl::ascii_isupper(code[0]) || !absl::ascii_isupper(code[1]) ||
      !absl::ascii_isupper(code[2])) {
    return nullptr;
  }
  const int16_t i = CurrencyTable()[CodeIndex(code)];
  return i < 0 ? nullptr : &kCurrencies[i];
}

// What an amount in a currency with `exponent` decimals looks like.
absl::string_view Example(int exponent) {
  switch (exponent) {
    case 0:
      return "450";
    case 3:
      return "1.250";
    case 4:
      return "1.2500";
    default:
      return "4.49";
  }
}

std::string Decimals(absl::string_view currency, int exponent) {
  if (exponent == 0) return absl::StrCat(currency, " has no decimals");
  return absl::StrCat(currency, " has ", exponent, exponent == 1 ? " decimal" : " decimals");
}

bool AllDigits(absl::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return absl::ascii_isdigit(c); });
}

// `*value` * 10 + digit, false on int64 overflow.
bool PushDigit(int digit, int64_t* value) {
  if (*value > (std::numeric_limits<int64_t>::max() - digit) / 10) return false;
  *value = *value * 10 + digit;
  return true;
}

}  // namespace

absl::StatusOr<int> CurrencyExponent(absl::string_view currency) {
  if (const Currency* c = Find(currency)) return c->exponent;
  if (Find(absl::AsciiStrToUpper(currency)) != nullptr) {
    return absl::NotFoundError(absl::StrCat("currency '", currency,
                                            "' is not an ISO 4217 code: write it in capitals, ",
                                            absl::AsciiStrToUpper(currency)));
  }
  if (currency.empty()) return absl::NotFoundError("no currency given (an ISO 4217 code, e.g. EUR)");
  return absl::NotFoundError(
      absl::StrCat("currency '", currency, "' is not an ISO 4217 code (e.g. EUR, JPY, KWD)"));
}

absl::string_view TrimNumberSpaces(absl::string_view s) {
  for (;;) {
    s = absl::StripAsciiWhitespace(s);
    if (absl::ConsumePrefix(&s, kNoBreakSpace) || absl::ConsumePrefix(&s, kNarrowNoBreakSpace) ||
        absl::ConsumeSuffix(&s, kNoBreakSpace) || absl::ConsumeSuffix(&s, kNarrowNoBreakSpace)) {
      continue;
    }
    return s;
  }
}

absl::StatusOr<std::string> NormalizeDecimal(absl::string_view text, char decimal,
                                             absl::string_view thousands) {
  std::string s(TrimNumberSpaces(text));
  if (s.empty()) return absl::InvalidArgumentError("empty value");
  if (thousands == " ") {
    s = absl::StrReplaceAll(s, {{kNoBreakSpace, ""}, {kNarrowNoBreakSpace, ""}, {" ", ""}});
  } else if (!thousands.empty()) {
    s = absl::StrReplaceAll(s, {{thousands, ""}});
  }
  const char other = decimal == ',' ? '.' : ',';
  if (s.find(other) != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' has a '", std::string(1, other),
                     "' but the decimal separator is '", std::string(1, decimal), "'",
                     thousands.empty() ? " and no thousands separator is set" : ""));
  }
  if (decimal == ',') std::replace(s.begin(), s.end(), ',', '.');
  return s;
}

absl::StatusOr<int64_t> ParseMoney(absl::string_view text, absl::string_view currency,
                                   char decimal_separator, absl::string_view thousands) {
  absl::StatusOr<int> exponent = CurrencyExponent(currency);
  if (!exponent.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' cannot be read: ", exponent.status().message()));
  }
  const std::string example = absl::StrCat(Example(*exponent), " ", currency);
  if (TrimNumberSpaces(text).empty()) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is empty: write an amount like ",
                                                   example));
  }
  absl::StatusOr<std::string> normalized = NormalizeDecimal(text, decimal_separator, thousands);
  if (!normalized.ok()) return normalized.status();
  absl::string_view s = *normalized;
  const std::string shown = absl::StrCat("'", text, "'");
  if (absl::StartsWith(s, "-")) return absl::InvalidArgumentError(shown + " must not be negative");
  absl::string_view whole = s, fraction;
  const size_t point = s.find('.');
  if (point != s.npos) {
    whole = s.substr(0, point);
    fraction = s.substr(point + 1);
  }
  if (!AllDigits(whole) || (point != s.npos && !AllDigits(fraction))) {
    return absl::InvalidArgumentError(
        absl::StrCat(shown, " is not a decimal amount like ", example));
  }
  absl::string_view significant = fraction;
  while (significant.size() > static_cast<size_t>(*exponent) && significant.back() == '0') {
    significant.remove_suffix(1);
  }
  if (significant.size() > static_cast<size_t>(*exponent)) {
    return absl::InvalidArgumentError(absl::StrCat(
        shown, " has ", fraction.size(), fraction.size() == 1 ? " decimal" : " decimals",
        ", but ", Decimals(currency, *exponent), " (e.g. ", example, ")"));
  }
  int64_t minor = 0;
  bool fits = true;
  for (char c : whole) fits = fits && PushDigit(c - '0', &minor);
  for (size_t i = 0; i < static_cast<size_t>(*exponent); ++i) {
    fits = fits && PushDigit(i < significant.size() ? significant[i] - '0' : 0, &minor);
  }
  if (!fits) return absl::InvalidArgumentError(absl::StrCat(shown, " is too large"));
  return minor;
}

std::string FormatMoney(int64_t minor_units, absl::string_view currency) {
  absl::StatusOr<int> exponent = CurrencyExponent(currency);
  if (!exponent.ok()) return absl::StrCat(minor_units, " minor units of ", currency);
  // Unsigned, so that the most negative int64 has a magnitude too.
  const uint64_t magnitude = minor_units < 0 ? 0 - static_cast<uint64_t>(minor_units)
                                             : static_cast<uint64_t>(minor_units);
  std::string digits = absl::StrCat(magnitude);
  const size_t e = static_cast<size_t>(*exponent);
  if (e > 0) {
    if (digits.size() <= e) digits.insert(0, e + 1 - digits.size(), '0');
    digits.insert(digits.size() - e, ".");
  }
  return absl::StrCat(minor_units < 0 ? "-" : "", digits, " ", currency);
}

std::string FormatMoneyStatistic(double minor_units, absl::string_view currency) {
  // Rounded in minor units, then shown exactly: dividing first would show
  // 449.5 cents, 4.495 as a double, as 4.49.
  constexpr double kInt64 = 9223372036854775808.0;  // 2^63
  if (std::isfinite(minor_units) && std::fabs(minor_units) < kInt64) {
    return FormatMoney(std::llround(minor_units), currency);
  }
  absl::StatusOr<int> exponent = CurrencyExponent(currency);
  if (!exponent.ok()) return absl::StrFormat("%.0f minor units of %s", minor_units, currency);
  return absl::StrFormat("%.*f %s", *exponent, minor_units / std::pow(10.0, *exponent), currency);
}

}  // namespace constance
