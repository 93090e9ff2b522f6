// The agent's configuration: what one location's agent needs to know to take
// observations locally and deliver them to its collector.
//
// A configuration comes from a YAML file (LoadAgentConfig), from command-line
// flags alone, or from both: flags override the file (ApplyOverrides), then
// FinishAgentConfig checks that what the agent needs to run is there. Errors
// name where the bad value came from: `agent.yaml:3: field 'location': ...`
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

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace constance::agent {

struct AgentConfig {
  // This location's id ([a-z0-9][a-z0-9._-]{0,62}). Required.
  std::string location;
  // Descriptive labels (brand, region, district, format). Parsed and checked
  // now; the wire contract carries them in a later issue.
  std::map<std::string, std::string> labels;
  // The collector's gRPC target, HOST:PORT. Required.
  std::string collector;
  // Plaintext to the collector. Required to be true until TLS lands: the
  // agent refuses to start otherwise rather than pretend to be secure.
  bool insecure = false;
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
  // The durable spool's SQLite file, e.g. /var/lib/constance-agent/spool.db
  // (its directory must exist). Empty: an in-memory spool, lost on exit.
  std::string spool_path;
  // How long observation ids and Idempotency-Key answers are remembered, so
  // that a retried write is acknowledged again and not stored twice.
  absl::Duration idempotency_window = absl::Hours(24);
  // Largest HTTP request body accepted by the local ingest.
  size_t max_body_bytes = 4 << 20;
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
// present, backoff_initial <= backoff_max, and plaintext explicitly allowed
// (FailedPrecondition otherwise: TLS is not implemented yet).
absl::Status FinishAgentConfig(const AgentConfig& config);

// Checks a HOST:PORT listen address (port 0..65535, host not empty).
absl::Status ValidateListenAddress(absl::string_view address);

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_CONFIG_H_
