// Reading the `drop_directory:` section of the agent's YAML config into a
// DropDirectoryConfig (config.h), and the names used for its enums.
//
// Kept apart from config.cc so the section's rules (which columns each kind
// of record needs) sit next to their documentation; config.cc calls
// ParseDropDirectorySection for the key and prefixes file and line.
//
// Example:
//   DropDirectoryConfig dd;
//   absl::Status s = ParseDropDirectorySection(node, &dd);
//   // "files[1] (line 14): field 'encoding': 'cp1252' is not one of ..."
//
// Pure functions; thread-safe.
#ifndef CONSTANCE_AGENT_INPUT_CONFIG_H_
#define CONSTANCE_AGENT_INPUT_CONFIG_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "agent/config.h"

namespace YAML {
class Node;
}  // namespace YAML

namespace constance::agent {

// Reads `node` (a map, or null for "no drop directory") into `*out`.
// InvalidArgument naming the entry, its line and the field on error;
// `*out` is then unspecified.
absl::Status ParseDropDirectorySection(const YAML::Node& node, DropDirectoryConfig* out);

// Checks that `mapping` names what its kind of record needs (a key and a
// value column, a currency for prices, ...). The reason names the field.
absl::Status ValidateInputMapping(const InputMapping& mapping);

// "price", "price_check", ... and back; "csv"/"jsonl"; "utf-8",
// "windows-1250", "latin-1".
absl::string_view RecordsName(InputMapping::Records records);
absl::Status ParseRecordsName(absl::string_view name, InputMapping::Records* out);
absl::Status ParseFormatName(absl::string_view name, InputMapping::Format* out);
absl::Status ParseEncodingName(absl::string_view name, InputMapping::Encoding* out);

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_INPUT_CONFIG_H_
