// Process-wide logging setup shared by the binaries.
//
// constance logs through spdlog (Debian's libspdlog-dev) to stderr, one
// line per event with a UTC timestamp. gRPC's own log lines are routed into
// the same logger so an operator reads one stream.
//
// Every line's message passes through EscapeForLog: a newline or another
// control character in a claimed location id, a file name in the drop
// directory or any other outside text cannot forge a log line.
//
// Call InitLogging once at the start of main, before any thread starts.
#ifndef CONSTANCE_LOG_H_
#define CONSTANCE_LOG_H_

#include <string>

#include "absl/strings/string_view.h"
#include "spdlog/spdlog.h"

namespace constance {

// `level` is one of trace, debug, info, warn, error; unknown names mean info.
void InitLogging(absl::string_view program, absl::string_view level);

// `text` with control characters written as \n, \r, \t or \xNN and bytes
// that are not valid UTF-8 as \xNN; valid UTF-8 (accented file names) is
// kept as it is. Thread-safe.
std::string EscapeForLog(absl::string_view text);

}  // namespace constance

#endif  // CONSTANCE_LOG_H_
