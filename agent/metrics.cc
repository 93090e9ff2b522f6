#include "agent/metrics.h"

#include <exception>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "prometheus/collectable.h"
#include "prometheus/exposer.h"
#include "prometheus/metric_family.h"

namespace constance::agent {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily Family(const char* name, const char* help, MetricType type) {
  MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  return f;
}

ClientMetric CounterValue(uint64_t value, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric m;
  m.label = std::move(labels);
  m.counter.value = static_cast<double>(value);
  return m;
}

ClientMetric GaugeValue(double value, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric m;
  m.label = std::move(labels);
  m.gauge.value = value;
  return m;
}

// Builds the exposition from one snapshot at scrape time.
class AgentCollectable : public prometheus::Collectable {
 public:
  explicit AgentCollectable(const AgentMetrics* metrics) : metrics_(metrics) {}

  std::vector<MetricFamily> Collect() const override {
    const AgentMetrics::Snapshot s = metrics_->Read();
    std::vector<MetricFamily> out;
    auto add = [&out](MetricFamily f, ClientMetric m) {
      f.metric.push_back(std::move(m));
      out.push_back(std::move(f));
    };
    add(Family("constance_agent_observations_accepted_total",
               "Observations accepted by the local ingest and appended to the spool.",
               MetricType::Counter),
        CounterValue(s.accepted));
    MetricFamily rejected =
        Family("constance_agent_observations_rejected_total",
               "Observations the local ingest refused, by reason (invalid: failed validation; "
               "spool_full: valid but the spool was full).",
               MetricType::Counter);
    rejected.metric.push_back(CounterValue(s.rejected_invalid, {{"reason", "invalid"}}));
    rejected.metric.push_back(CounterValue(s.rejected_spool_full, {{"reason", "spool_full"}}));
    out.push_back(std::move(rejected));
    add(Family("constance_agent_observations_delivered_total",
               "Observations acknowledged by the collector (applied, duplicate or refused for "
               "good) and deleted from the spool.",
               MetricType::Counter),
        CounterValue(s.delivered));
    add(Family("constance_agent_observations_refused_by_collector_total",
               "Delivered observations the collector refused for good (see the agent's log for "
               "reasons).",
               MetricType::Counter),
        CounterValue(s.refused_by_collector));
    add(Family("constance_agent_spool_depth",
               "Observations in the spool not yet acknowledged by the collector.",
               MetricType::Gauge),
        GaugeValue(static_cast<double>(s.gauges.spool_depth)));
    add(Family("constance_agent_spool_bytes",
               "Serialized bytes of the observations not yet acknowledged by the collector.",
               MetricType::Gauge),
        GaugeValue(static_cast<double>(s.gauges.spool_bytes)));
    add(Family("constance_agent_spool_dropped_total",
               "Observations the full spool deleted unacknowledged to make room for new ones "
               "(spool_when_full: drop_oldest); they never reach the collector.",
               MetricType::Counter),
        CounterValue(s.gauges.spool_dropped));
    add(Family("constance_agent_oldest_unacknowledged_seconds",
               "Age of the oldest observation not yet acknowledged by the collector (0 when the "
               "spool is empty).",
               MetricType::Gauge),
        GaugeValue(s.gauges.oldest_unacknowledged_seconds));
    add(Family("constance_agent_connected",
               "1 while the stream to the collector is established, 0 otherwise.",
               MetricType::Gauge),
        GaugeValue(s.gauges.connected ? 1 : 0));
    add(Family("constance_agent_collector_protocol",
               "The Ingest protocol version the collector speaks (1: constance 0.1.0, which "
               "announces none); 0 until the first answer. The agent uses nothing newer.",
               MetricType::Gauge),
        GaugeValue(s.gauges.collector_protocol));
    add(Family("constance_agent_reconnects_total",
               "Stream attempts to the collector after a failed or closed one.",
               MetricType::Counter),
        CounterValue(s.reconnects));
    add(Family("constance_agent_batches_sent_total",
               "Batches written to the collector stream, resends included.", MetricType::Counter),
        CounterValue(s.batches_sent));
    add(Family("constance_agent_input_records_rejected_total",
               "Drop-directory records (CSV rows, JSONL lines) that could not be read or mapped; "
               "the log names each file and line.",
               MetricType::Counter),
        CounterValue(s.input_records_rejected));
    add(Family("constance_agent_input_files_processed_total",
               "Drop-directory files read to their end and moved aside or kept.",
               MetricType::Counter),
        CounterValue(s.input_files_processed));
    add(Family("constance_agent_ticket_events_ignored_total",
               "Queue events that changed nothing: unknown ticket or repeated event.",
               MetricType::Counter),
        CounterValue(s.ticket_events_ignored));
    add(Family("constance_agent_tickets_evicted_total",
               "Open queue tickets forgotten, oldest first, past max_open_tickets.",
               MetricType::Counter),
        CounterValue(s.tickets_evicted));
    add(Family("constance_agent_open_tickets",
               "Queue tickets created and not yet called, served or abandoned.", MetricType::Gauge),
        GaugeValue(static_cast<double>(s.gauges.open_tickets)));
    add(Family("constance_agent_info", "The agent's version and location; always 1.",
               MetricType::Gauge),
        GaugeValue(1, {{"location", metrics_->location()}, {"version", metrics_->version()}}));
    return out;
  }

 private:
  const AgentMetrics* metrics_;
};

}  // namespace

AgentMetrics::AgentMetrics(std::string location, std::string version)
    : location_(std::move(location)), version_(std::move(version)) {}

void AgentMetrics::SetGaugeSource(std::function<Gauges()> source) {
  absl::MutexLock lock(&mu_);
  gauge_source_ = std::move(source);
}

AgentMetrics::Snapshot AgentMetrics::Read() const {
  Snapshot s;
  s.accepted = accepted_.load();
  s.rejected_invalid = rejected_invalid_.load();
  s.rejected_spool_full = rejected_spool_full_.load();
  s.delivered = delivered_.load();
  s.refused_by_collector = refused_by_collector_.load();
  s.reconnects = reconnects_.load();
  s.batches_sent = batches_sent_.load();
  s.input_records_rejected = input_records_rejected_.load();
  s.input_files_processed = input_files_processed_.load();
  s.ticket_events_ignored = ticket_events_ignored_.load();
  s.tickets_evicted = tickets_evicted_.load();
  absl::MutexLock lock(&mu_);
  if (gauge_source_) s.gauges = gauge_source_();
  return s;
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& address,
                                                                    const AgentMetrics* metrics) {
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  server->collectable_ = std::make_shared<AgentCollectable>(metrics);
  // prometheus-cpp reports a failure to listen by throwing from the
  // constructor; nothing it throws leaves this function.
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/2);
    server->exposer_->RegisterCollectable(server->collectable_);
    std::vector<int> ports = server->exposer_->GetListeningPorts();
    if (ports.empty()) {
      return absl::UnavailableError(absl::StrCat("metrics: no listening port on ", address));
    }
    server->port_ = ports.front();
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("metrics: cannot listen on ", address, ": ", e.what()));
  }
  return server;
}

MetricsServer::~MetricsServer() = default;

}  // namespace constance::agent
