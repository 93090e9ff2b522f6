// What an exported file's name says about its contents: the location and the
// time of observation, for exports that carry them only there
// ("Supermarket 269_..._22.01.2026_7.15h.csv"). The mapping's name_regex,
// name_time_format and location_prefix (config.h) say how to read them.
//
// One function decides it for every reader of files: the drop directory,
// `constance-agent import` and replays. A FileParser (file_input.h) given
// the facts uses them for records without a location column or an
// observed_at column of their own.
//
// Example:
//   absl::StatusOr<FileNameFacts> facts = ReadFileName(mapping, "Supermarket 269_x_22.01.2026_7.15h.csv");
//   // facts->location == "store-269" (location_prefix "store-"),
//   // facts->observed_at == 2026-01-22T07:15:00Z
//   FileParser parser(mapping, limits, *facts);
//
// Pure functions; thread-safe.
#ifndef CONSTANCE_AGENT_FILE_NAME_H_
#define CONSTANCE_AGENT_FILE_NAME_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/config.h"

namespace constance::agent {

struct FileNameFacts {
  // A valid location id (location_prefix + the lower-cased capture); empty
  // when the name says none.
  std::string location;
  // InfinitePast when the name says no time.
  absl::Time observed_at = absl::InfinitePast();
};

// Reads `base_name` (a file name without its folder) with `mapping`. A
// mapping without name_regex gives empty facts. InvalidArgument naming the
// file when the name does not match the regex, its time does not parse
// with name_time_format, or its location is not a valid location id.
absl::StatusOr<FileNameFacts> ReadFileName(const InputMapping& mapping,
                                           absl::string_view base_name);

// Checks a mapping's name_regex, name_time_format and location_prefix at
// config load: the regex compiles, its only named groups are `location`
// and `observed_at`, a time capture has a format and each of the other two
// keys has the capture it applies to. The reason names the field.
absl::Status ValidateFileNameRules(const InputMapping& mapping);

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_FILE_NAME_H_
