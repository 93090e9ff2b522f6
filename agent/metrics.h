// The agent's own metrics and the /metrics endpoint that serves them.
//
// AgentMetrics holds the counters the ingest path and the sender bump (plain
// atomics: the hot path never touches prometheus-cpp) and pulls its gauges
// (spool depth, oldest unacknowledged age, connected) from a source function
// at scrape time, so they are read from the spool and sender when someone
// looks rather than kept up to date on every observation.
//
// MetricsServer exposes an AgentMetrics with prometheus-cpp's Exposer on its
// own address (loopback by default). Agents sit behind store NAT and are not
// scraped centrally: this is for local debugging; their health travels up
// the stream in heartbeats.
//
// Example:
//   AgentMetrics metrics("fr-paris-0042", "0.1.0");
//   metrics.SetGaugeSource([&] { return AgentMetrics::Gauges{...}; });
//   auto server = MetricsServer::Start("127.0.0.1:0", &metrics);
//   int port = (*server)->port();
//
// AgentMetrics is thread-safe. MetricsServer serves from its own threads;
// `metrics` must outlive it.
#ifndef CONSTANCE_AGENT_METRICS_H_
#define CONSTANCE_AGENT_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace prometheus {
class Collectable;
class Exposer;
}  // namespace prometheus

namespace constance::agent {

class AgentMetrics {
 public:
  // Values read at scrape time.
  struct Gauges {
    uint64_t spool_depth = 0;
    // Serialized bytes of those observations.
    uint64_t spool_bytes = 0;
    // Observations the spool dropped unacknowledged (spool_when_full:
    // drop_oldest) since the agent started: a counter read at scrape time.
    uint64_t spool_dropped = 0;
    double oldest_unacknowledged_seconds = 0;
    bool connected = false;
    // The collector's Ingest protocol (Sender::collector_protocol); 0 =
    // not known yet.
    uint32_t collector_protocol = 0;
    // Queue tickets created and not yet called, served or abandoned.
    uint64_t open_tickets = 0;
  };

  // Every value at one moment, for exposition and tests.
  struct Snapshot {
    uint64_t accepted = 0;
    uint64_t rejected_invalid = 0;
    uint64_t rejected_spool_full = 0;
    uint64_t delivered = 0;
    uint64_t refused_by_collector = 0;
    uint64_t reconnects = 0;
    uint64_t batches_sent = 0;
    uint64_t input_records_rejected = 0;
    uint64_t input_files_processed = 0;
    uint64_t ticket_events_ignored = 0;
    uint64_t tickets_evicted = 0;
    Gauges gauges;
  };

  AgentMetrics(std::string location, std::string version);
  AgentMetrics(const AgentMetrics&) = delete;
  AgentMetrics& operator=(const AgentMetrics&) = delete;

  // Observations the local ingest appended to the spool.
  void AddAccepted(uint64_t n) { accepted_ += n; }
  // Observations the local ingest refused because they were invalid.
  void AddRejectedInvalid(uint64_t n) { rejected_invalid_ += n; }
  // Valid observations refused because the spool was full.
  void AddRejectedSpoolFull(uint64_t n) { rejected_spool_full_ += n; }
  // Observations the collector settled (its watermark moved past them).
  void AddDelivered(uint64_t n) { delivered_ += n; }
  // Of those, observations the collector refused for good.
  void AddRefusedByCollector(uint64_t n) { refused_by_collector_ += n; }
  void AddReconnect() { ++reconnects_; }
  void AddBatchSent() { ++batches_sent_; }
  // Drop-directory records (CSV rows, JSONL lines) that could not be read or
  // mapped; each is logged with its file and line.
  void AddInputRejected(uint64_t n) { input_records_rejected_ += n; }
  // Drop-directory files read to their end and moved aside (or kept).
  void AddInputFileProcessed() { ++input_files_processed_; }
  // Queue events that changed nothing (unknown ticket, repeated event).
  void AddTicketEventsIgnored(uint64_t n) { ticket_events_ignored_ += n; }
  // Open tickets forgotten, oldest first, to stay within max_open_tickets.
  void AddTicketsEvicted(uint64_t n) { tickets_evicted_ += n; }

  // Where gauges come from. `source` is called on the scraping thread and
  // must stay valid until it is replaced or this object is destroyed;
  // until set, gauges read 0.
  void SetGaugeSource(std::function<Gauges()> source);

  Snapshot Read() const;

  const std::string& location() const { return location_; }
  const std::string& version() const { return version_; }

 private:
  const std::string location_;
  const std::string version_;
  std::atomic<uint64_t> accepted_{0};
  std::atomic<uint64_t> rejected_invalid_{0};
  std::atomic<uint64_t> rejected_spool_full_{0};
  std::atomic<uint64_t> delivered_{0};
  std::atomic<uint64_t> refused_by_collector_{0};
  std::atomic<uint64_t> reconnects_{0};
  std::atomic<uint64_t> batches_sent_{0};
  std::atomic<uint64_t> input_records_rejected_{0};
  std::atomic<uint64_t> input_files_processed_{0};
  std::atomic<uint64_t> ticket_events_ignored_{0};
  std::atomic<uint64_t> tickets_evicted_{0};
  mutable absl::Mutex mu_;
  std::function<Gauges()> gauge_source_ ABSL_GUARDED_BY(mu_);
};

class MetricsServer {
 public:
  // Serves `metrics` on `address` (HOST:PORT; port 0 picks a free one) at
  // /metrics. Unavailable (naming the address) if it cannot listen.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& address,
                                                              const AgentMetrics* metrics);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The port actually listened on.
  int port() const { return port_; }

 private:
  MetricsServer() = default;

  std::shared_ptr<prometheus::Collectable> collectable_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_METRICS_H_
