// Reading the `drop_directory:` section of the agent's YAML config into a
// DropDirectoryConfig (config.h), and the names used for its enums.
//
// Kept apart from config.cc so the section's rules (which columns each kind
// of record needs) sit next to their documentation; config.cc calls
// ParseDropDirectorySection for the `drop_directory` key, with the same
// YAML reader (constance/yaml_reader.h), so errors name file and line.
//
// Example:
//   DropDirectoryConfig dd;
//   absl::Status s = ParseDropDirectorySection(reader, field, &dd);
//   // "agent.yaml:14: drop_directory.files[1].encoding: 'cp1252' is not one of ..."
//
// Pure functions; thread-safe.
#ifndef CONSTANCE_AGENT_INPUT_CONFIG_H_
#define CONSTANCE_AGENT_INPUT_CONFIG_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "agent/config.h"
#include "constance/yaml_reader.h"

namespace constance::agent {

// Reads `section` (a map, or null for "no drop directory") into `*out`.
// InvalidArgument naming the file, the line and the field path on error;
// `*out` is then unspecified.
absl::Status ParseDropDirectorySection(const yaml::Reader& reader, const yaml::Field& section,
                                       DropDirectoryConfig* out);

// Sets the mapping field `name` ("decimal", "observed_at_column") from a
// command-line flag's text by the same rule as that key of a
// drop_directory.files entry. InvalidArgument "--NAME: reason".
absl::Status SetMappingFlag(absl::string_view name, const std::string& value,
                            InputMapping* mapping);

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
