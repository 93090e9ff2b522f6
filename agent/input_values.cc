#include "agent/input_values.h"

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "constance/money.h"

namespace constance::agent {

absl::StatusOr<double> ParseDecimalNumber(absl::string_view text, char decimal,
                                          absl::string_view thousands) {
  absl::StatusOr<std::string> s = NormalizeDecimal(text, decimal, thousands);
  if (!s.ok()) return s.status();
  double v = 0;
  if (!absl::SimpleAtod(*s, &v) || !std::isfinite(v)) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a number"));
  }
  return v;
}

absl::StatusOr<std::optional<bool>> ParsePassFail(absl::string_view text) {
  const std::string t = absl::AsciiStrToLower(TrimNumberSpaces(text));
  for (const char* w : {"", "n.a.", "na", "n/a", "-", "not applicable"}) {
    if (t == w) return std::optional<bool>();
  }
  for (const char* w : {"pass", "passed", "ok", "yes", "y", "true", "1"}) {
    if (t == w) return std::optional<bool>(true);
  }
  for (const char* w : {"fail", "failed", "ko", "no", "n", "false", "0"}) {
    if (t == w) return std::optional<bool>(false);
  }
  return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not pass, fail or n.a."));
}

absl::StatusOr<absl::Time> ParseInputTime(absl::string_view text, const std::string& format) {
  const std::string t(TrimNumberSpaces(text));
  absl::Time out;
  std::string err;
  if (format == "unix") {
    double seconds = 0;
    if (!absl::SimpleAtod(t, &seconds) || !std::isfinite(seconds)) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", text, "' is not seconds since the epoch"));
    }
    return absl::FromUnixNanos(static_cast<int64_t>(std::llround(seconds * 1e9)));
  }
  const std::string& f = format.empty() ? absl::RFC3339_full : format;
  if (!absl::ParseTime(f, t, absl::UTCTimeZone(), &out, &err)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text, "' is not a time in format ", format.empty() ? "RFC 3339" : format, ": ", err));
  }
  return out;
}

uint64_t StableHash(absl::string_view data, uint64_t seed) {
  uint64_t h = seed;
  for (unsigned char c : data) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

}  // namespace constance::agent
