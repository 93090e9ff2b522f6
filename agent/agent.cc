#include "agent/agent.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "agent/sqlite_spool.h"
#include "spdlog/spdlog.h"

#ifndef CONSTANCE_VERSION
#define CONSTANCE_VERSION "unknown"
#endif

namespace constance::agent {
namespace {

std::string WithPort(const std::string& listen, int port) {
  return absl::StrCat(listen.substr(0, listen.rfind(':')), ":", port);
}

}  // namespace

absl::string_view AgentVersion() { return CONSTANCE_VERSION; }

Agent::Agent(AgentConfig config) : config_(std::move(config)) {}

absl::StatusOr<std::unique_ptr<Agent>> Agent::Start(const AgentConfig& config) {
  std::unique_ptr<Agent> agent(new Agent(config));
  const AgentConfig& c = agent->config_;

  SpoolOptions spool_options;
  spool_options.max_observations = c.spool_max_observations;
  spool_options.max_bytes = c.spool_max_bytes;
  spool_options.idempotency_window = c.idempotency_window;
  if (c.spool_path.empty()) {
    agent->spool_ = std::make_unique<MemorySpool>(std::move(spool_options));
  } else {
    absl::StatusOr<std::unique_ptr<SqliteSpool>> spool =
        SqliteSpool::Open(c.spool_path, std::move(spool_options));
    if (!spool.ok()) return spool.status();
    if ((*spool)->Depth() > 0) {
      spdlog::info("spool {}: {} unacknowledged observations from before (sequence {}..{})",
                   c.spool_path, (*spool)->Depth(),
                   (*spool)->LastSequence() - (*spool)->Depth() + 1, (*spool)->LastSequence());
    }
    agent->spool_ = *std::move(spool);
  }
  agent->metrics_ = std::make_unique<AgentMetrics>(c.location, std::string(AgentVersion()));

  SenderOptions sender_options;
  sender_options.location = c.location;
  sender_options.collector = c.collector;
  sender_options.flush_interval = c.flush_interval;
  sender_options.max_batch = c.max_batch;
  sender_options.max_in_flight_batches = c.max_in_flight_batches;
  sender_options.backoff_initial = c.backoff_initial;
  sender_options.backoff_max = c.backoff_max;
  sender_options.heartbeat_interval = c.heartbeat_interval;
  sender_options.version = std::string(AgentVersion());
  agent->sender_ = std::make_unique<Sender>(std::move(sender_options), agent->spool_.get(),
                                            agent->metrics_.get());

  Spool* spool = agent->spool_.get();
  Sender* sender = agent->sender_.get();
  agent->metrics_->SetGaugeSource([spool, sender] {
    AgentMetrics::Gauges g;
    g.spool_depth = spool->Depth();
    g.oldest_unacknowledged_seconds = absl::ToDoubleSeconds(spool->OldestUnacknowledgedAge());
    g.connected = sender->connected();
    return g;
  });

  HttpIngestOptions http_options;
  http_options.listen = c.listen;
  http_options.max_body_bytes = c.max_body_bytes;
  http_options.location = c.location;
  absl::StatusOr<std::unique_ptr<HttpIngest>> http = HttpIngest::Start(
      std::move(http_options), spool, agent->metrics_.get(),
      [sender](uint64_t last_sequence) { sender->NotifyAppended(last_sequence); });
  if (!http.ok()) return http.status();
  agent->http_ = *std::move(http);

  absl::StatusOr<std::unique_ptr<MetricsServer>> metrics_server =
      MetricsServer::Start(c.metrics_listen, agent->metrics_.get());
  if (!metrics_server.ok()) return metrics_server.status();
  agent->metrics_server_ = *std::move(metrics_server);

  agent->sender_->Start();
  spdlog::info(
      "agent {} (version {}, spool {} incarnation {:016x}): ingest on http://{}, metrics "
      "on http://{}/metrics, delivering to {} (plaintext)",
      c.location, std::string(AgentVersion()), c.spool_path.empty() ? "in memory" : c.spool_path,
      spool->incarnation(), agent->http_address(), agent->metrics_address(), c.collector);
  return agent;
}

Agent::~Agent() { Shutdown(); }

std::string Agent::http_address() const {
  return http_ ? WithPort(config_.listen, http_->port()) : "";
}

std::string Agent::metrics_address() const {
  return metrics_server_ ? WithPort(config_.metrics_listen, metrics_server_->port()) : "";
}

uint64_t Agent::Shutdown() {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return left_;
  shut_down_ = true;
  // New local writes are refused first: nothing is acknowledged to a writer
  // after this that the drain below would not see.
  if (http_) http_->Close();
  // civetweb notices a stop only when its accept poll times out (up to
  // about 2 s); both servers stop in the background, during the drain, so
  // the whole shutdown stays within drain_timeout (or those 2 s).
  std::thread http_stopper([this] {
    if (http_) http_->Stop();
  });
  std::thread metrics_stopper([this] { metrics_server_.reset(); });
  if (sender_) {
    const uint64_t depth = spool_->Depth();
    if (depth > 0) {
      spdlog::info("draining {} observations to {} (at most {})", depth, config_.collector,
                   absl::FormatDuration(config_.drain_timeout));
    }
    left_ = sender_->Stop(config_.drain_timeout);
    if (left_ > 0 && config_.spool_path.empty()) {
      spdlog::error(
          "{} observations were not acknowledged by {} within {} and are lost "
          "(the spool is in memory: set spool_path to keep them)",
          left_, config_.collector, absl::FormatDuration(config_.drain_timeout));
    } else if (left_ > 0) {
      spdlog::warn(
          "{} observations were not acknowledged by {} within {}; they stay in {} and go "
          "after the next start",
          left_, config_.collector, absl::FormatDuration(config_.drain_timeout),
          config_.spool_path);
    }
  }
  http_stopper.join();
  metrics_stopper.join();
  return left_;
}

absl::Status WriteReadyFile(const std::string& path,
                            const std::vector<std::pair<std::string, std::string>>& entries) {
  std::string text;
  for (const auto& [name, value] : entries) absl::StrAppend(&text, name, "=", value, "\n");
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot write ", tmp, ": ", std::strerror(errno)));
  }
  const bool written = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const bool closed = std::fclose(f) == 0;
  if (!written || !closed) {
    std::remove(tmp.c_str());
    return absl::FailedPreconditionError(absl::StrCat("cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    std::remove(tmp.c_str());
    return absl::FailedPreconditionError(
        absl::StrCat("cannot rename ", tmp, " to ", path, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace constance::agent
