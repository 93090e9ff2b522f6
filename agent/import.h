// `constance-agent import FILE`: a one-off file (an export, a backlog) read
// with the drop directory's parser and mapping (file_input.h) and posted to
// the running agent's local HTTP ingest, which answers only once the
// observations are durable in its spool.
//
// Observations go to /v1/observations in chunks, each with an
// Idempotency-Key made of a hash of the file's contents and the chunk's
// number: running the same import again after a failure (a timeout, the
// agent restarting) stores nothing twice. Queue events go to /v1/tickets,
// whose ticket matching makes a repeat harmless too. Every refused record
// is reported as `FILE:LINE: reason`, from the parser or from the agent.
//
// The mapping comes from the agent config's drop_directory (the entry whose
// pattern matches the file) and/or from flags named as its keys
// (SetMappingFlag). Its max_lateness holds on both sides: the parser drops
// older records, and the requests carry `Max-Lateness` so that the agent
// judges them by it too, up to the largest max_lateness of its own
// drop_directory mappings (HttpIngestOptions::max_requested_lateness).
//
// Example:
//   ImportOptions options;
//   options.file = "prices.csv";
//   options.mapping = mapping;
//   options.agent = {"127.0.0.1", 8080};
//   absl::StatusOr<ImportReport> report = ImportFile(options);
//   // report->errors: {"prices.csv:17: column 'Price': '1,2,3' is not a price ..."}
//
// Thread-safe (no shared state).
#ifndef CONSTANCE_AGENT_IMPORT_H_
#define CONSTANCE_AGENT_IMPORT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/config.h"
#include "agent/observe.h"
#include "constance/validate.h"

namespace constance::agent {

struct ImportOptions {
  std::string file;
  InputMapping mapping;
  HostPort agent;
  absl::Duration timeout = absl::Seconds(30);
  // Observations (or queue events) per request.
  size_t chunk = 500;
  // Rows of a mapping with location_column, and every row of a file whose
  // name gives a location (name_regex), are sent when they name this
  // location (empty: every row).
  std::string location;
  // The time of records without an observed_at column of their own;
  // InfinitePast: the time in the file's name (name_regex), else now.
  absl::Time observed_at = absl::InfinitePast();
  Limits limits;
};

struct ImportReport {
  uint64_t records = 0;
  // Stored by the agent (duplicates of an earlier run included).
  uint64_t observations = 0;
  uint64_t ticket_events = 0;
  uint64_t other_location = 0;
  // The location the file's name gives (empty: none).
  std::string file_location;
  // `FILE:LINE: reason` for every refused record, in file order.
  std::vector<std::string> errors;
};

// Reads, maps and sends the file. An error (nothing more was sent) when
// the file cannot be read, its name cannot be read (ReadFileName), or the
// agent cannot be reached or refuses a whole request (spool full, shutting
// down); records sent before stay.
absl::StatusOr<ImportReport> ImportFile(const ImportOptions& options);

// The first mapping of `config` whose pattern matches `file`'s base name,
// or NotFound naming the patterns.
absl::StatusOr<InputMapping> MappingForFile(const DropDirectoryConfig& config,
                                            const std::string& file);

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_IMPORT_H_
