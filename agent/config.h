// The agent's configuration: what one location's agent needs to know to take
// observations locally and deliver them to its collector.
//
// A configuration comes from a YAML file (LoadAgentConfig), from command-line
// flags alone, or from both: flags override the file (ApplyOverrides), then
// FinishAgentConfig checks that what the agent needs to run is there. Errors
// name where the bad value came from: `agent.yaml:3: location: ...`
// for the file, `--location: ...` for a flag. Unknown keys in the file are
// errors, so a typo is never silently ignored.
//
// Example:
//   absl::StatusOr<AgentConfig> config = LoadAgentConfig("/etc/constance/agent.yaml");
//   if (config.ok()) status = ApplyOverrides(overrides, &*config);
//   if (status.ok()) status = FinishAgentConfig(*config);
//
// Plain values; the functions are pure (LoadAgentConfig reads one file) and
// thread-safe.
#ifndef CONSTANCE_AGENT_CONFIG_H_
#define CONSTANCE_AGENT_CONFIG_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/spool.h"

namespace constance::agent {

// ---- Inputs from store systems: drop directory and queue tickets ----

// How one kind of exported file becomes observations: which files (a
// file-name glob), how they are written (format, encoding, delimiter,
// decimal separator) and which column holds what. A column is named by its
// header text, or by its 1-based number when the file has no header row.
// JSONL lines are objects; their fields are the columns, except for
// records observation / ticket / checklist / price_check, whose lines have
// the shape of the matching HTTP endpoint's items.
struct InputMapping {
  enum class Format { kCsv, kJsonl };
  enum class Encoding { kUtf8, kWindows1250, kLatin1 };
  // What one record (CSV row or JSONL line) is.
  enum class Records {
    kObservation,  // JSONL only: a /v1/observations item
    kPrice,        // one price: key, value (kind fixed), currency
    kPriceCheck,   // shelf, POS and list price of one item
    kWait,         // key (service) and value (seconds)
    kCompliance,   // key and value (pass/fail; n.a. and empty produce nothing)
    kScore,        // key and value (a number)
    kTicket,       // a queue event: ticket, event, key (service), observed_at
    kChecklist,    // JSONL only: a /v1/checklists submission
  };
  std::string pattern = "*";
  Format format = Format::kCsv;
  Encoding encoding = Encoding::kUtf8;
  Records records = Records::kPrice;
  char delimiter = ',';
  char quote = '"';
  bool header = true;
  // Decimal separator of numbers ('.' or ','), and the thousands separator
  // (empty: none; "space" in the file also matches no-break spaces).
  char decimal = '.';
  std::string thousands;
  // Columns; empty: not present.
  std::string key_column;
  std::string value_column;
  std::string shelf_column, pos_column, list_column;
  std::string currency_column;
  std::string observed_at_column;
  std::string critical_column;
  std::string id_column;
  std::string ticket_column;
  std::string event_column;
  // Rows whose location column differs from this agent's location are
  // skipped (exports of a central system covering several stores).
  std::string location_column;
  // Constants: the key when no key_column gives it (a file about one
  // item, check or indicator), the currency when no column gives it, the
  // price kind of `value_column` (shelf, pos, list, promo), a prefix for
  // every key.
  std::string key;
  std::string currency;
  std::string kind = "shelf";
  std::string key_prefix;
  // observed_at: empty = RFC 3339; "unix" = seconds since the epoch; else
  // an absl::ParseTime format, read as UTC.
  std::string time_format;
  // Facts taken from the file's name (file_name.h), for exports that name
  // their store and date only there: an RE2 regex over the base name whose
  // named groups `location` and `observed_at` (no others) capture them, the
  // format of `observed_at` (as time_format, read as UTC), and a prefix put
  // before the lower-cased location ("269" -> "store-269"). Empty: unused.
  std::string name_regex;
  std::string name_time_format;
  std::string location_prefix;
  // Price records with several prices per row (a shelf and a promotion
  // price): each column with its kind. Empty: the one `value_column` of
  // `kind`. An empty cell of a listed column produces nothing.
  struct ValueColumn {
    std::string column;
    std::string kind;
  };
  std::vector<ValueColumn> values;
  // How often files of this kind arrive (a daily export: 24h); zero: not
  // said. ExpectedCadence reports the longest.
  absl::Duration cadence = absl::ZeroDuration();
  // How old an observation of these files may be (backfills of exports);
  // zero keeps the agent's default (7 days).
  absl::Duration max_lateness = absl::ZeroDuration();
};

// Longest line of a dropped file by default (bytes, newline excluded).
inline constexpr size_t kDefaultMaxLineBytes = size_t{1} << 20;
// The most max_line_bytes may be set to.
inline constexpr size_t kMaxMaxLineBytes = size_t{16} << 20;

struct DropDirectoryConfig {
  // The watched folder; empty: no drop directory.
  std::string path;
  // How often the folder is scanned.
  absl::Duration poll_interval = absl::Seconds(2);
  // A file unchanged this long is complete: a last line without its newline
  // is then read, and the file moved aside (or kept).
  absl::Duration settle_time = absl::Seconds(30);
  // Processed files: moved to processed_dir (default <path>/processed), or
  // kept where they are (keep_processed), remembered so never read twice.
  bool keep_processed = false;
  std::string processed_dir;
  // Records committed to the spool per transaction (with the checkpoint).
  size_t max_records_per_commit = 1000;
  // A longer line is reported as FILE:LINE and skipped to its newline.
  size_t max_line_bytes = kDefaultMaxLineBytes;
  // Where a file is moved when reading it stopped the agent twice at the
  // same place (default <path>/quarantine); it is never read again unless
  // moved back.
  std::string quarantine_dir;
  // Tried in order; the first whose pattern matches a file name is used.
  std::vector<InputMapping> files;
};

struct AgentConfig {
  // This location's id ([a-z0-9][a-z0-9._-]{0,62}). Required.
  std::string location;
  // Descriptive labels (brand, region, district, format), sent in every
  // heartbeat: the collector groups locations the catalog does not list by
  // them (the catalog's labels win where both give a name).
  std::map<std::string, std::string> labels;
  // The collector's gRPC target, HOST:PORT. Required.
  std::string collector;
  // Plaintext to the collector (demo, tests). Without it the `tls:` block
  // is required: the agent never falls back to plaintext by itself.
  bool insecure = false;
  // mTLS to the collector (README, "Certificates"): this location's
  // certificate (URI SAN spiffe://constance/location/<location>) and key,
  // the chain's CA, and the name in the collector's certificate when it
  // differs from the host dialled. Files are re-read when they change.
  struct Tls {
    std::string ca;
    std::string cert;
    std::string key;
    std::string server_name;
    absl::Duration refresh_interval = absl::Minutes(1);
  } tls;
  // Local HTTP ingest, HOST:PORT. Loopback by default: store systems on the
  // same server post here; port 0 picks a free port.
  std::string listen = "127.0.0.1:8080";
  // The agent's own /metrics (local debugging), HOST:PORT.
  std::string metrics_listen = "127.0.0.1:9465";
  // How long the sender gathers observations into one batch.
  absl::Duration flush_interval = absl::Milliseconds(100);
  // Observations per batch (at most).
  size_t max_batch = 1000;
  // Batches sent and not yet acknowledged, at most: bounds what one stream
  // pushes before the collector answers.
  size_t max_in_flight_batches = 20;
  // Reconnect backoff: initial delay, x1.6 per failure up to backoff_max,
  // +-20% jitter.
  absl::Duration backoff_initial = absl::Seconds(1);
  absl::Duration backoff_max = absl::Seconds(120);
  // Application heartbeat carrying the agent's health up the stream.
  absl::Duration heartbeat_interval = absl::Seconds(30);
  // On SIGTERM/SIGINT, how long to keep delivering before exiting anyway.
  absl::Duration drain_timeout = absl::Seconds(5);
  // Spool bound: observations not yet acknowledged by the collector. When
  // full, local writers get a clear error (HTTP 507) instead of data loss.
  uint64_t spool_max_observations = 1'000'000;
  // Spool bound in serialized bytes of unacknowledged observations.
  uint64_t spool_max_bytes = uint64_t{256} << 20;
  // spool_when_full: what a full spool does with new observations. refuse
  // (default): writers get HTTP 507 and nothing accepted is ever lost;
  // drop_oldest: the oldest unacknowledged observations make room, counted
  // in constance_agent_spool_dropped_total.
  SpoolWhenFull spool_when_full = SpoolWhenFull::kRefuse;
  // The durable spool's SQLite file, e.g. /var/lib/constance-agent/spool.db
  // (its directory must exist). Empty: an in-memory spool, lost on exit.
  std::string spool_path;
  // How long observation ids and Idempotency-Key answers are remembered, so
  // that a retried write is acknowledged again and not stored twice.
  absl::Duration idempotency_window = absl::Hours(24);
  // Largest HTTP request body accepted by the local ingest.
  size_t max_body_bytes = 4 << 20;
  // A request's headers and body must arrive within this time; a slower
  // client is disconnected.
  absl::Duration http_request_timeout = absl::Seconds(10);
  // HTTP worker threads: connections served at once (an idle connection
  // holds one until http_request_timeout).
  int http_threads = 64;
  // Host names, besides the listen host, localhost, 127.0.0.1 and [::1],
  // under which the ingest may be addressed (the Host header; DNS
  // rebinding protection). Matched with the listen port.
  std::vector<std::string> http_allowed_hosts;
  // `listen` on an address other than loopback must be meant: other
  // machines can then post. Logged as a warning when set.
  bool allow_non_loopback_listen = false;

  // ---- Inputs (drop directory, queue tickets); reloaded on SIGHUP ----
  DropDirectoryConfig drop_directory;
  // A queue ticket created and never called, served or abandoned within
  // this time is forgotten (the queue system lost its event).
  absl::Duration open_ticket_ttl = absl::Hours(12);
  // Open queue tickets kept at most; past it the oldest are forgotten.
  // Read at start.
  size_t max_open_tickets = 100'000;
};

// Parses `yaml` (the contents of the file called `filename`, used in error
// messages only). Values not in the text keep AgentConfig's defaults.
// Returns InvalidArgument naming file, line and field on any error.
absl::StatusOr<AgentConfig> ParseAgentConfig(absl::string_view yaml, absl::string_view filename);

// Reads and parses the file at `path`. NotFound/PermissionDenied-style
// errors name the path.
absl::StatusOr<AgentConfig> LoadAgentConfig(const std::string& path);

// Values given on the command line; unset members leave the config as is.
struct ConfigOverrides {
  std::optional<std::string> location;
  std::optional<std::string> collector;
  std::optional<std::string> listen;
  std::optional<std::string> metrics_listen;
  // Only `true` overrides: a flag can allow plaintext, never forbid it.
  bool insecure = false;
  std::optional<std::string> tls_ca, tls_cert, tls_key, tls_server_name;
  std::optional<absl::Duration> tls_refresh_interval;
  std::optional<absl::Duration> flush_interval;
  std::optional<absl::Duration> backoff_initial;
  std::optional<absl::Duration> backoff_max;
  std::optional<absl::Duration> heartbeat_interval;
  std::optional<absl::Duration> drain_timeout;
  std::optional<std::string> spool_path;
};

// Checks each set value (errors name the flag, e.g. `--location: ...`) and
// stores it in `*config`. On error `*config` may be partly updated.
absl::Status ApplyOverrides(const ConfigOverrides& overrides, AgentConfig* config);

// Checks what running needs and no single field can check: required fields
// present, backoff_initial <= backoff_max, either plaintext explicitly
// allowed or the tls block's ca, cert and key given, and a non-loopback
// listen allowed explicitly (FailedPrecondition naming what is missing).
absl::Status FinishAgentConfig(const AgentConfig& config);

// Checks a HOST:PORT listen address (port 0..65535, host not empty).
absl::Status ValidateListenAddress(absl::string_view address);

// True when the host of a HOST:PORT listen address is loopback: localhost,
// 127.x.y.z or [::1].
bool IsLoopbackListen(absl::string_view address);

// How often this agent expects data to arrive: the longest `cadence` of its
// drop directory's mappings; zero when none says.
absl::Duration ExpectedCadence(const AgentConfig& config);

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_CONFIG_H_
