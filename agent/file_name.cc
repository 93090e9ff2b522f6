#include "agent/file_name.h"

#include <map>
#include <memory>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "agent/input_values.h"
#include "constance/validate.h"
#include "re2/re2.h"

namespace constance::agent {
namespace {

constexpr char kLocationGroup[] = "location";
constexpr char kTimeGroup[] = "observed_at";

// The compiled regex, or the reason it does not compile. Names are read
// whole (anchored at both ends) so a partial match never passes.
absl::StatusOr<std::unique_ptr<RE2>> Compile(const std::string& pattern) {
  RE2::Options options;
  options.set_log_errors(false);
  auto re = std::make_unique<RE2>(pattern, options);
  if (!re->ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("field 'name_regex': '", pattern, "' is not a valid RE2 regex: ", re->error()));
  }
  return re;
}

}  // namespace

absl::Status ValidateFileNameRules(const InputMapping& m) {
  if (m.name_regex.empty()) {
    if (!m.name_time_format.empty() || !m.location_prefix.empty()) {
      return absl::InvalidArgumentError(
          "fields 'name_time_format' and 'location_prefix' need a 'name_regex' with the "
          "group they apply to");
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::unique_ptr<RE2>> re = Compile(m.name_regex);
  if (!re.ok()) return re.status();
  const std::map<std::string, int>& groups = (*re)->NamedCapturingGroups();
  for (const auto& [name, index] : groups) {
    if (name != kLocationGroup && name != kTimeGroup) {
      return absl::InvalidArgumentError(absl::StrCat(
          "field 'name_regex': unknown group '", name,
          "' (write (?P<location>...) and/or (?P<observed_at>...); other groups unnamed)"));
    }
  }
  const bool has_time = groups.count(kTimeGroup) > 0;
  if (has_time && m.name_time_format.empty()) {
    return absl::InvalidArgumentError(
        "field 'name_regex' captures observed_at: give its format in 'name_time_format' "
        "(e.g. '%d.%m.%Y_%H.%M')");
  }
  if (!has_time && !m.name_time_format.empty()) {
    return absl::InvalidArgumentError(
        "field 'name_time_format' needs a group (?P<observed_at>...) in 'name_regex'");
  }
  if (groups.count(kLocationGroup) == 0 && !m.location_prefix.empty()) {
    return absl::InvalidArgumentError(
        "field 'location_prefix' needs a group (?P<location>...) in 'name_regex'");
  }
  return absl::OkStatus();
}

absl::StatusOr<FileNameFacts> ReadFileName(const InputMapping& m, absl::string_view base_name) {
  FileNameFacts facts;
  if (m.name_regex.empty()) return facts;
  absl::StatusOr<std::unique_ptr<RE2>> re = Compile(m.name_regex);
  if (!re.ok()) return re.status();
  const std::map<std::string, int>& groups = (*re)->NamedCapturingGroups();
  std::vector<re2::StringPiece> captures(static_cast<size_t>((*re)->NumberOfCapturingGroups()) + 1);
  if (!(*re)->Match(re2::StringPiece(base_name.data(), base_name.size()), 0, base_name.size(),
                    RE2::ANCHOR_BOTH, captures.data(), static_cast<int>(captures.size()))) {
    return absl::InvalidArgumentError(
        absl::StrCat("file '", base_name, "': the name does not match name_regex '",
                     m.name_regex, "'"));
  }
  auto capture = [&](const char* group) -> std::string {
    auto it = groups.find(group);
    if (it == groups.end()) return "";
    const re2::StringPiece& c = captures[static_cast<size_t>(it->second)];
    return std::string(c.data() == nullptr ? "" : absl::string_view(c.data(), c.size()));
  };
  if (groups.count(kLocationGroup) > 0) {
    const std::string raw = capture(kLocationGroup);
    facts.location = absl::StrCat(m.location_prefix, absl::AsciiStrToLower(raw));
    if (absl::Status s = ValidateLocationId(facts.location); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "file '", base_name, "': location '", raw, "' from the name gives '", facts.location,
          "', not a location id ([a-z0-9][a-z0-9._-]{0,62}); change location_prefix or "
          "name_regex"));
    }
  }
  if (groups.count(kTimeGroup) > 0) {
    absl::StatusOr<absl::Time> t = ParseInputTime(capture(kTimeGroup), m.name_time_format);
    if (!t.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("file '", base_name, "': observed_at from the name: ", t.status().message(),
                       " (name_time_format)"));
    }
    facts.observed_at = *t;
  }
  return facts;
}

}  // namespace constance::agent
