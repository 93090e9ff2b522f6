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
#include <vector>

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

// Several collectors (shards.h): `silence add` writes the rule to every
// shard (with one start time, so the copies are the same rule), `list`
// shows every shard's with a shard column, and `expire ID` ends the
// silence ID on the shards holding it and its copies on the others.
struct ShardSilence {
  std::string shard;  // host:port.
  v1::Silence silence;
};
// Every shard's silences (`lists` parallel to `shards`), ordered by start
// and then shard, so the copies of one rule are next to each other.
std::vector<ShardSilence> MergeSilenceLists(const std::vector<std::string>& shards,
                                            const std::vector<v1::ListSilencesResponse>& lists);
// RenderSilences' lines, each after its shard.
std::string RenderShardSilences(const std::vector<ShardSilence>& silences, absl::Time now);
// {"silences": [...]} as --json prints one collector's list, each silence
// with a "shard" field.
std::string ShardSilencesJson(const std::vector<ShardSilence>& silences);
// Copies of one rule: the same matchers, end, owner and comment (their
// ids, starts, authors and creation times may differ).
bool SameRule(const v1::Silence& a, const v1::Silence& b);

// What one shard answered to `silence add` or `expire`.
struct ShardResult {
  std::string shard;
  std::string error;    // Empty: succeeded.
  v1::Silence silence;  // As it stands after the change, when it succeeded.
};
// One line per shard: "SHARD  added silence ID" ("expired"), or
// "SHARD  FAILED: why"; `verb` is "added" or "expired".
std::string RenderShardResults(const std::vector<ShardResult>& results, absl::string_view verb);
// {"results": [{"shard", "silence"} or {"shard", "error"}]}.
std::string ShardResultsJson(const std::vector<ShardResult>& results);

}  // namespace constance::cli

#endif  // CONSTANCE_CLI_SILENCE_H_
