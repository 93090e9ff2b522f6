// Reading the values store systems write into their exports: amounts with a
// decimal comma or point and a thousands separator, pass/fail words,
// timestamps in a configured format. Shared by the drop directory, the
// import command and the HTTP inputs so every path reads "1 234,50" alike.
//
// Pure functions; thread-safe.
#ifndef CONSTANCE_AGENT_INPUT_VALUES_H_
#define CONSTANCE_AGENT_INPUT_VALUES_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace constance::agent {

// Prices are read by constance::ParseMoney (constance/money.h), with the
// currency's decimals and the same separators.

// A plain number (a wait in seconds, a score) written as amounts are:
// "1 234,5" (decimal ',', thousands " ") -> 1234.5. Surrounding spaces (also
// UTF-8 no-break spaces) are ignored; with thousands " ", no-break and narrow
// no-break spaces inside the number count as separators too.
absl::StatusOr<double> ParseDecimalNumber(absl::string_view text, char decimal,
                                          absl::string_view thousands);

// pass/fail words: pass, passed, ok, yes, y, true, 1 / fail, failed, ko, no,
// n, false, 0 (any case). nullopt for "not applicable": n.a., na, n/a, -,
// and the empty string.
absl::StatusOr<std::optional<bool>> ParsePassFail(absl::string_view text);

// A timestamp: `format` empty = RFC 3339; "unix" = seconds since the epoch
// (decimals allowed); anything else an absl::ParseTime format read as UTC.
absl::StatusOr<absl::Time> ParseInputTime(absl::string_view text, const std::string& format);

// FNV-1a, 64 bits: a hash stable across processes and builds (absl::Hash is
// seeded per process), for checkpoints and request keys that must survive a
// restart.
uint64_t StableHash(absl::string_view data, uint64_t seed = 0xcbf29ce484222325ULL);

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_INPUT_VALUES_H_
