// `constance replay`: the collector's engine run over exported files, in
// event time, to try constance on history.
//
// The files are read with the agent's drop-directory mappings
// (agent/file_input.h: the first mapping whose pattern matches a file's
// name; its location and time from columns or from the file's name,
// agent/file_name.h), every observation is sorted by its observation time, and an
// Engine (collector/engine.h) is fed in-process: per location, batches of
// increasing sequence numbers, exactly as an agent would send them. The
// engine's clock follows event time, so nothing is refused as late and
// every TTL is measured in event time. Findings are evaluated at each
// `every` boundary of event time; each one that opens or closes is
// printed with its event-time stamp, and the final chain report (the one
// `constance report` prints) ends the output.
//
// What makes the replay honest about the live collector's rules:
//   - a finding opens after `persistence` consecutive evaluations: after
//     the last row the replay keeps evaluating until what the last rows
//     show has had that many evaluations (and a price change is at least
//     irregular_settle old), so the end of the files does not hide it;
//   - `silent` means "no report for location_ttl": exports come at their
//     own cadence (a file a day), so when the mappings' `cadence` (or,
//     when none says, the usual gap between a location's observation
//     times) exceeds location_ttl, the replay raises location_ttl to it
//     plus one evaluation and says so; silent then means a missing file.
//     restart_grace is raised to location_ttl, because at the start a
//     location's first file may come that late.
//   - a location in the files but not in the catalog is compared as the
//     live collector compares it (auto_register), or refused with the
//     collector's message when the catalog sets auto_register off.
//
// Example:
//   ReplayOptions options;
//   options.inputs = {"exports/"};
//   options.drop = agent_config.drop_directory;
//   options.catalog = *LoadCatalog("catalog.yaml");
//   absl::StatusOr<ReplayStats> stats = Replay(options, std::cout, std::cerr);
//
// Memory: every observation is held until it is replayed (about 330
// bytes each: 330 MiB per million rows, tests/bench/RESULTS.md), since
// files need not come in time order. Thread-compatible: one replay per call, no shared state.
#ifndef CONSTANCE_COLLECTOR_CLI_REPLAY_H_
#define CONSTANCE_COLLECTOR_CLI_REPLAY_H_

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/config.h"
#include "collector/catalog.h"

namespace constance::cli {

struct ReplayOptions {
  // Files and directories (read recursively; files no pattern matches are
  // skipped and counted). A named file no pattern matches is an error.
  std::vector<std::string> inputs;
  // The mappings: an agent.yaml's drop_directory section.
  agent::DropDirectoryConfig drop;
  collector::Catalog catalog = collector::DefaultCatalog();
  // Evaluation boundaries: multiples of `every` since the Unix epoch.
  absl::Duration every = absl::Hours(1);
  // JSON lines instead of tables (protobuf JSON mapping of each finding
  // and of the final ChainSummaryResponse).
  bool json = false;
  // Series in the final report's dispersion table (0 = all).
  int max_series = 20;
  // Progress lines on the error stream at most this often (wall time).
  absl::Duration progress_interval = absl::Seconds(5);
  // Bad rows printed per file; the rest are counted.
  int max_errors_per_file = 20;
};

// What a replay read and found.
struct ReplayStats {
  uint64_t files = 0;
  uint64_t skipped_files = 0;  // In a directory, matched by no pattern.
  uint64_t bad_files = 0;      // Names their mapping's name_regex cannot read (skipped, said).
  uint64_t rows = 0;           // Records other than headers and blank lines.
  uint64_t bad_rows = 0;       // Refused by the parser (FILE:LINE: reason).
  uint64_t applied = 0;        // Observations the engine applied.
  uint64_t rejected = 0;       // Observations the engine refused.
  uint64_t evaluations = 0;
  uint64_t opened = 0;  // Findings opened during the replay.
  uint64_t closed = 0;
  uint64_t active = 0;                      // Still open at the end.
  absl::Time first = absl::InfinitePast();  // Event time of the first and last row.
  absl::Time last = absl::InfinitePast();
  absl::Time evaluated_until = absl::InfinitePast();
  // location_ttl as the replay applied it (raised to the files' cadence).
  absl::Duration location_ttl;
  absl::Duration read_time;  // Wall time reading and parsing files.
};

// Runs the replay: findings and the final report go to `out`, progress,
// notes, bad rows and a summary line to `err`. Errors stop the run before
// any finding is printed and say what to fix: NotFound (an input does not
// exist), InvalidArgument (a named file no mapping matches, a mapping that
// gives no location or no observation time, no rows at all).
absl::StatusOr<ReplayStats> Replay(const ReplayOptions& options, std::ostream& out,
                                   std::ostream& err);

}  // namespace constance::cli

#endif  // CONSTANCE_COLLECTOR_CLI_REPLAY_H_
