// Several collectors as one chain for the `constance` command.
//
// A chain sharded over collectors (deploy/SCALING.md: each location on
// exactly one shard, peer groups within a shard) is read by asking every
// shard and merging the answers here:
//
//   constance --collector=shard-north:7070,shard-south:7070 report
//   constance --shards=shards.txt findings
//
// Counts add up and lists are joined and ordered as one collector orders
// them. Each series' chain-wide n, mean and standard deviation come from
// the shards' mergeable sums (ChainSummaryResponse.mergeable), so they are
// exact, not an average of the shards' averages. Pure functions.
#ifndef CONSTANCE_COLLECTOR_CLI_SHARDS_H_
#define CONSTANCE_COLLECTOR_CLI_SHARDS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "constance/v1/history.pb.h"
#include "constance/v1/query.pb.h"

namespace constance::cli {

// The collectors to ask: `collectors` split at commas, or, when `shards_file`
// is not empty, its lines instead (blank lines and # comments skipped).
// InvalidArgument naming the flag, or the file and line, when an address
// is empty or malformed or the file cannot be read.
absl::StatusOr<std::vector<std::string>> CollectorAddresses(const std::string& collectors,
                                                            const std::string& shards_file);

// One chain summary from the shards' summaries. Counts add up, except
// what several shards may hold: a series is counted in uncompared_series
// once (by identity, from each shard's `uncompared` list), and a series'
// mergeable sums are added only where every shard's list (sorted by
// series, cut at the limit) is whole, so no chain-wide figure is partial;
// the rest is counted in mergeable_omitted. What stays inexact is said in
// `disagreements` (may be null): series whose shards report different
// references (their catalogs differ; left out of `mergeable`), a count of
// uncompared series a shard did not list, a location on several shards.
v1::ChainSummaryResponse MergeChainSummaries(const std::vector<v1::ChainSummaryResponse>& shards,
                                             std::vector<std::string>* disagreements);

// A series' chain-wide figures from (merged) mergeable sums: population
// standard deviation, as one collector computes it.
struct ChainWide {
  uint64_t n = 0;
  double mean = 0;
  double stddev = 0;
};
ChainWide FromSums(const v1::MergeableSums& sums);

// One series' detail from the shards holding it (`shards`: their answers,
// NOT_FOUND ones left out): every shard's peer groups, each location in
// its own shard's, and their findings, most severe first. A collector
// that answered with one group in the top-level fields (before `groups`)
// counts as that group. A group name on several shards (the family has no
// peer group, so each shard compares its own locations as "chain") is
// named in `notes` (may be null): its figures are per shard.
v1::KeyDetailResponse MergeKeyDetails(const std::vector<v1::KeyDetailResponse>& shards,
                                      std::vector<std::string>* notes);

// Findings of every shard, most severe first.
v1::FindingsResponse MergeFindings(const std::vector<v1::FindingsResponse>& shards);

// Episodes of every shard, newest first, at most `limit` (0 = 1000) with
// the rest counted in `more`.
v1::HistoryResponse MergeHistory(const std::vector<v1::HistoryResponse>& shards, uint32_t limit);

}  // namespace constance::cli

#endif  // CONSTANCE_COLLECTOR_CLI_SHARDS_H_
