#include "constance/version.h"

#include "absl/flags/usage_config.h"
#include "absl/strings/str_cat.h"

#ifndef CONSTANCE_VERSION
#error "CONSTANCE_VERSION must be defined (CMake's project version)"
#endif

namespace constance {

absl::string_view Version() { return CONSTANCE_VERSION; }

std::string VersionLine(absl::string_view binary, absl::string_view extra) {
  return absl::StrCat(binary, " ", Version(), " (protocol ", kProtocolVersion,
                      extra.empty() ? "" : ", ", extra, ")");
}

void SetVersionFlag(absl::string_view binary, absl::string_view extra) {
  // absl keeps the function; the line is built once, here.
  static std::string* line = new std::string;
  *line = VersionLine(binary, extra);
  absl::FlagsUsageConfig config;
  config.version_string = [] { return *line + "\n"; };
  absl::SetFlagsUsageConfig(config);
}

}  // namespace constance
