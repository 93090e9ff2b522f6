// The running agent: spool, local HTTP ingest, sender and /metrics, wired
// together from one AgentConfig.
//
// Start() brings the parts up in order (spool, sender, HTTP ingest,
// /metrics) and fails as a whole if any cannot start. Shutdown() takes them
// down so that nothing is accepted that cannot be delivered: local ingest
// refuses new writes first, then the sender drains the spool to the
// collector for at most drain_timeout and closes its stream, while both HTTP
// servers stop in the background.
//
// Example (see main.cc):
//   absl::StatusOr<std::unique_ptr<Agent>> agent = Agent::Start(config);
//   WriteReadyFile(path, {{"http", (*agent)->http_address()}, ...});
//   ... wait for SIGTERM ...
//   (*agent)->Shutdown();
//
// Inputs. Besides the HTTP ingest, the agent runs a TicketTracker (queue
// events, tickets.h) and a DropDirectory (drop_dir.h), both keeping their
// state in the spool. Reload() applies a new configuration's inputs and
// tunables (drop_directory, open_ticket_ttl, max_body_bytes,
// drain_timeout) at once; every other field that differs is logged as
// needing a restart and keeps its old value.
//
// Thread-safe; the parts run on their own threads.
#ifndef CONSTANCE_AGENT_AGENT_H_
#define CONSTANCE_AGENT_AGENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "agent/config.h"
#include "agent/drop_dir.h"
#include "agent/http_ingest.h"
#include "agent/metrics.h"
#include "agent/sender.h"
#include "agent/spool.h"
#include "agent/tickets.h"

namespace constance::agent {

// The agent's version (the project's), reported in heartbeats and metrics.
absl::string_view AgentVersion();

class Agent {
 public:
  // `config` must have passed FinishAgentConfig.
  static absl::StatusOr<std::unique_ptr<Agent>> Start(const AgentConfig& config);
  // Shuts down (draining) if Shutdown() was not called.
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // HOST:PORT actually listened on (the configured host, the real port).
  // Call before Shutdown().
  std::string http_address() const;
  std::string metrics_address() const;

  // Applies what can change at runtime from `config` (which must have
  // passed FinishAgentConfig) and returns the names of the fields that
  // differ but need a restart (logged, old values kept). InvalidArgument
  // (nothing changed) when the new drop directory cannot be used.
  absl::StatusOr<std::vector<std::string>> Reload(const AgentConfig& config);

  // See the file comment. Returns how many observations were left
  // unacknowledged (lost with an in-memory spool; kept in a durable one
  // and sent after a restart). Idempotent.
  uint64_t Shutdown();

 private:
  explicit Agent(AgentConfig config);
  // Start's steps, in this order once the spool, the metrics and the
  // sender exist: the ticket tracker (and the metrics' gauges), the HTTP
  // ingest, the drop directory (created, not started).
  absl::Status OpenTickets();
  absl::Status StartHttpIngest();
  absl::Status CreateDropDirectory();

  const AgentConfig config_;
  // Declared in dependency order: destroyed in reverse, users first.
  std::unique_ptr<Spool> spool_;
  std::unique_ptr<AgentMetrics> metrics_;
  std::unique_ptr<Sender> sender_;
  std::unique_ptr<TicketTracker> tickets_;
  std::unique_ptr<HttpIngest> http_;
  std::unique_ptr<MetricsServer> metrics_server_;
  std::unique_ptr<DropDirectory> drop_dir_;
  absl::Mutex mu_;
  // The configuration as last reloaded (config_ is the one started with).
  AgentConfig current_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t left_ ABSL_GUARDED_BY(mu_) = 0;
};

// Writes `name=value` lines to `path` atomically (`path`.tmp, then rename),
// so a reader never sees a partial file.
absl::Status WriteReadyFile(const std::string& path,
                            const std::vector<std::pair<std::string, std::string>>& entries);

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_AGENT_H_
