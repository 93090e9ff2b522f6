// `constance silence add|list|expire`: what the command line turns into
// Silences calls, and how their answers print. Pure functions; main.cc
// does the calls.
//
//   constance silence add --location=store-17 --key=price:coffee-250g
//       --for=72h --owner=anna --comment="price test, ticket OPS-12"
//   constance silence list [--all]
//   constance silence expire 3
#ifndef CONSTANCE_CLI_SILENCE_H_
#define CONSTANCE_CLI_SILENCE_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "constance/v1/query.pb.h"
#include "constance/v1/silence.pb.h"

namespace constance::cli {

// A finding kind by its lower-case name ("outlier"); InvalidArgument
// listing every kind (read from the enum) otherwise.
absl::StatusOr<v1::FindingKind> ParseFindingKind(absl::string_view name);

// What --key=FAMILY:KEY and --finding=KIND select, in `silence add` and
// `history` alike.
struct SeriesMatcher {
  v1::Family family = v1::FAMILY_UNSPECIFIED;  // With key; unset when no --key.
  std::string key;
  v1::FindingKind kind = v1::FINDING_KIND_UNSPECIFIED;  // Unset when no --finding.
};
// `key` ("" when not given) and `finding` (the same); InvalidArgument
// naming the flag and what to write instead when one is malformed.
absl::StatusOr<SeriesMatcher> ParseSeriesMatcher(absl::string_view key, absl::string_view finding);

struct SilenceArgs {
  std::string location, region;
  std::string key;      // FAMILY:KEY, e.g. price:coffee-250g.
  std::string finding;  // A kind's name.
  absl::Duration for_duration = absl::ZeroDuration();
  std::string until;  // RFC 3339, e.g. 2026-12-24T18:00:00Z.
  std::string owner, comment;
};

// The request `args` describe at `now`; InvalidArgument naming the flag
// when one is malformed, or when neither or both of --for and --until
// are given. What a silence needs beyond that (a matcher, owner, comment)
// the collector checks, in one place.
absl::StatusOr<v1::AddSilenceRequest> BuildSilence(const SilenceArgs& args, absl::Time now);

// One line per silence: id, what it matches, until when, owner, comment,
// author; "(ended)" for those that ended.
std::string RenderSilences(const v1::ListSilencesResponse& list, absl::Time now);

}  // namespace constance::cli

#endif  // CONSTANCE_CLI_SILENCE_H_
