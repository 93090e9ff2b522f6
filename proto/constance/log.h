// Process-wide logging setup shared by the binaries.
//
// constance logs through spdlog (Debian's libspdlog-dev) to stderr, one
// line per event with a UTC timestamp. gRPC's own log lines are routed into
// the same logger so an operator reads one stream.
//
// Call InitLogging once at the start of main, before any thread starts.
#ifndef CONSTANCE_LOG_H_
#define CONSTANCE_LOG_H_

#include "absl/strings/string_view.h"
#include "spdlog/spdlog.h"

namespace constance {

// `level` is one of trace, debug, info, warn, error; unknown names mean info.
void InitLogging(absl::string_view program, absl::string_view level);

}  // namespace constance

#endif  // CONSTANCE_LOG_H_
