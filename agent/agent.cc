#include "agent/agent.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "agent/sqlite_spool.h"
#include "constance/version.h"
#include "spdlog/spdlog.h"

namespace constance::agent {
namespace {

std::string WithPort(const std::string& listen, int port) {
  return absl::StrCat(listen.substr(0, listen.rfind(':')), ":", port);
}

// The spool: in memory, or the SQLite file at spool_path (saying what it
// kept from before).
absl::StatusOr<std::unique_ptr<Spool>> OpenSpool(const AgentConfig& c) {
  SpoolOptions spool_options;
  spool_options.max_observations = c.spool_max_observations;
  spool_options.max_bytes = c.spool_max_bytes;
  spool_options.when_full = c.spool_when_full;
  spool_options.idempotency_window = c.idempotency_window;
  if (c.spool_path.empty()) return std::make_unique<MemorySpool>(std::move(spool_options));
  absl::StatusOr<std::unique_ptr<SqliteSpool>> spool =
      SqliteSpool::Open(c.spool_path, std::move(spool_options));
  if (!spool.ok()) return spool.status();
  if ((*spool)->Depth() > 0) {
    spdlog::info("spool {}: {} unacknowledged observations from before (sequence {}..{})",
                 c.spool_path, (*spool)->Depth(), (*spool)->LastSequence() - (*spool)->Depth() + 1,
                 (*spool)->LastSequence());
  }
  return *std::move(spool);
}

// The sender's options; unless `insecure`, with the TLS files checked and
// loaded.
absl::StatusOr<SenderOptions> SenderOptionsOf(const AgentConfig& c) {
  SenderOptions sender_options;
  sender_options.location = c.location;
  sender_options.collector = c.collector;
  if (c.insecure) {
    spdlog::warn("insecure: observations go to the collector in plaintext, unauthenticated");
  } else {
    TlsFiles tls;
    tls.ca = c.tls.ca;
    tls.cert = c.tls.cert;
    tls.key = c.tls.key;
    tls.server_name = c.tls.server_name;
    tls.refresh_interval = c.tls.refresh_interval;
    if (absl::Status s = CheckTlsFiles(tls, /*need_identity=*/true, "tls."); !s.ok()) return s;
    absl::StatusOr<ChannelSecurity> security = MakeChannelSecurity(tls);
    if (!security.ok()) return security.status();
    sender_options.security = *std::move(security);
  }
  sender_options.flush_interval = c.flush_interval;
  sender_options.max_batch = c.max_batch;
  sender_options.max_in_flight_batches = c.max_in_flight_batches;
  sender_options.backoff_initial = c.backoff_initial;
  sender_options.backoff_max = c.backoff_max;
  sender_options.heartbeat_interval = c.heartbeat_interval;
  sender_options.version = std::string(AgentVersion());
  sender_options.labels = c.labels;
  sender_options.data_cadence = ExpectedCadence(c);
  return sender_options;
}

}  // namespace

absl::string_view AgentVersion() { return Version(); }

Agent::Agent(AgentConfig config) : config_(std::move(config)), current_(config_) {}

absl::StatusOr<std::unique_ptr<Agent>> Agent::Start(const AgentConfig& config) {
  std::unique_ptr<Agent> agent(new Agent(config));
  const AgentConfig& c = agent->config_;
  absl::StatusOr<std::unique_ptr<Spool>> spool = OpenSpool(c);
  if (!spool.ok()) return spool.status();
  agent->spool_ = *std::move(spool);
  agent->metrics_ = std::make_unique<AgentMetrics>(c.location, std::string(AgentVersion()));
  absl::StatusOr<SenderOptions> sender_options = SenderOptionsOf(c);
  if (!sender_options.ok()) return sender_options.status();
  agent->sender_ = std::make_unique<Sender>(*std::move(sender_options), agent->spool_.get(),
                                            agent->metrics_.get());
  if (absl::Status s = agent->OpenTickets(); !s.ok()) return s;
  if (absl::Status s = agent->StartHttpIngest(); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<MetricsServer>> metrics_server =
      MetricsServer::Start(c.metrics_listen, agent->metrics_.get());
  if (!metrics_server.ok()) return metrics_server.status();
  agent->metrics_server_ = *std::move(metrics_server);
  if (absl::Status s = agent->CreateDropDirectory(); !s.ok()) return s;

  agent->sender_->Start();
  agent->drop_dir_->Start();
  if (!c.drop_directory.path.empty()) {
    spdlog::info("drop directory {}: {} file mappings, scanned every {}", c.drop_directory.path,
                 c.drop_directory.files.size(),
                 absl::FormatDuration(c.drop_directory.poll_interval));
  }
  spdlog::info(
      "agent {} (version {}, spool {} incarnation {:016x}): ingest on http://{}, metrics "
      "on http://{}/metrics, delivering to {} ({})",
      c.location, std::string(AgentVersion()), c.spool_path.empty() ? "in memory" : c.spool_path,
      agent->spool_->incarnation(), agent->http_address(), agent->metrics_address(), c.collector,
      c.insecure ? "plaintext" : "mTLS");
  return agent;
}

absl::Status Agent::OpenTickets() {
  TicketOptions ticket_options;
  ticket_options.ttl = config_.open_ticket_ttl;
  ticket_options.max_open = config_.max_open_tickets;
  absl::StatusOr<std::unique_ptr<TicketTracker>> tickets =
      TicketTracker::Open(spool_.get(), std::move(ticket_options));
  if (!tickets.ok()) return tickets.status();
  tickets_ = *std::move(tickets);
  if (tickets_->open_tickets() > 0) {
    spdlog::info("{} open queue tickets from before", tickets_->open_tickets());
  }
  Spool* spool = spool_.get();
  Sender* sender = sender_.get();
  TicketTracker* tracker = tickets_.get();
  metrics_->SetGaugeSource([spool, sender, tracker] {
    AgentMetrics::Gauges g;
    g.spool_depth = spool->Depth();
    g.spool_bytes = spool->Bytes();
    g.spool_dropped = spool->DroppedOldest();
    g.oldest_unacknowledged_seconds = absl::ToDoubleSeconds(spool->OldestUnacknowledgedAge());
    g.connected = sender->connected();
    g.collector_protocol = sender->collector_protocol();
    g.open_tickets = tracker->open_tickets();
    return g;
  });
  return absl::OkStatus();
}

absl::Status Agent::StartHttpIngest() {
  HttpIngestOptions http_options;
  http_options.listen = config_.listen;
  http_options.max_body_bytes = config_.max_body_bytes;
  http_options.threads = config_.http_threads;
  http_options.request_timeout = config_.http_request_timeout;
  http_options.allowed_hosts = config_.http_allowed_hosts;
  http_options.location = config_.location;
  http_options.tickets = tickets_.get();
  for (const InputMapping& m : config_.drop_directory.files) {
    http_options.max_requested_lateness =
        std::max(http_options.max_requested_lateness, m.max_lateness);
  }
  Sender* sender = sender_.get();
  absl::StatusOr<std::unique_ptr<HttpIngest>> http = HttpIngest::Start(
      std::move(http_options), spool_.get(), metrics_.get(),
      [sender](uint64_t last_sequence) { sender->NotifyAppended(last_sequence); });
  if (!http.ok()) return http.status();
  http_ = *std::move(http);
  return absl::OkStatus();
}

absl::Status Agent::CreateDropDirectory() {
  DropDirectoryDeps drop_deps;
  drop_deps.spool = spool_.get();
  drop_deps.tickets = tickets_.get();
  drop_deps.metrics = metrics_.get();
  Sender* sender = sender_.get();
  drop_deps.on_appended = [sender](uint64_t last) { sender->NotifyAppended(last); };
  drop_deps.location = config_.location;
  absl::StatusOr<std::unique_ptr<DropDirectory>> drop_dir =
      DropDirectory::Create(config_.drop_directory, std::move(drop_deps));
  if (!drop_dir.ok()) return drop_dir.status();
  drop_dir_ = *std::move(drop_dir);
  return absl::OkStatus();
}

Agent::~Agent() { Shutdown(); }

std::string Agent::http_address() const {
  return http_ ? WithPort(config_.listen, http_->port()) : "";
}

std::string Agent::metrics_address() const {
  return metrics_server_ ? WithPort(config_.metrics_listen, metrics_server_->port()) : "";
}

absl::StatusOr<std::vector<std::string>> Agent::Reload(const AgentConfig& next) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return absl::FailedPreconditionError("the agent is shutting down");
  const AgentConfig& c = current_;
  // Fields fixed at start: compared, never applied.
  std::vector<std::string> restart;
  const struct {
    const char* name;
    bool same;
  } kFixed[] = {
      {"location", next.location == c.location},
      {"labels", next.labels == c.labels},
      {"collector", next.collector == c.collector},
      {"insecure", next.insecure == c.insecure},
      {"listen", next.listen == c.listen},
      {"metrics_listen", next.metrics_listen == c.metrics_listen},
      {"spool_path", next.spool_path == c.spool_path},
      {"spool_max_observations", next.spool_max_observations == c.spool_max_observations},
      {"spool_max_bytes", next.spool_max_bytes == c.spool_max_bytes},
      {"idempotency_window", next.idempotency_window == c.idempotency_window},
      {"flush_interval", next.flush_interval == c.flush_interval},
      {"max_batch", next.max_batch == c.max_batch},
      {"max_in_flight_batches", next.max_in_flight_batches == c.max_in_flight_batches},
      {"backoff_initial", next.backoff_initial == c.backoff_initial},
      {"backoff_max", next.backoff_max == c.backoff_max},
      {"heartbeat_interval", next.heartbeat_interval == c.heartbeat_interval},
      {"spool_when_full", next.spool_when_full == c.spool_when_full},
      {"max_open_tickets", next.max_open_tickets == c.max_open_tickets},
  };
  for (const auto& f : kFixed) {
    if (!f.same) restart.push_back(f.name);
  }
  if (drop_dir_) {
    if (absl::Status s = drop_dir_->Reconfigure(next.drop_directory); !s.ok()) return s;
  }
  if (tickets_) tickets_->SetTtl(next.open_ticket_ttl);
  if (http_) http_->SetMaxBodyBytes(next.max_body_bytes);
  // Applied fields take the new values; fixed ones keep the old.
  AgentConfig applied = c;
  applied.drop_directory = next.drop_directory;
  applied.open_ticket_ttl = next.open_ticket_ttl;
  applied.max_body_bytes = next.max_body_bytes;
  applied.drain_timeout = next.drain_timeout;
  current_ = std::move(applied);
  for (const std::string& name : restart) {
    spdlog::warn(
        "config reload: '{}' changed but takes effect only after a restart; the old "
        "value stays until then",
        name);
  }
  spdlog::info(
      "config reloaded: drop directory {} ({} file mappings), open_ticket_ttl {}, "
      "max_body_bytes {}, drain_timeout {}",
      current_.drop_directory.path.empty() ? "off" : current_.drop_directory.path,
      current_.drop_directory.files.size(), absl::FormatDuration(current_.open_ticket_ttl),
      current_.max_body_bytes, absl::FormatDuration(current_.drain_timeout));
  return restart;
}

uint64_t Agent::Shutdown() {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return left_;
  shut_down_ = true;
  // Inputs stop first: no file is read that could not be delivered.
  if (drop_dir_) drop_dir_->Stop();
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
                   absl::FormatDuration(current_.drain_timeout));
    }
    left_ = sender_->Stop(current_.drain_timeout);
    if (left_ > 0 && config_.spool_path.empty()) {
      spdlog::error(
          "{} observations were not acknowledged by {} within {} and are lost "
          "(the spool is in memory: set spool_path to keep them)",
          left_, config_.collector, absl::FormatDuration(current_.drain_timeout));
    } else if (left_ > 0) {
      spdlog::warn(
          "{} observations were not acknowledged by {} within {}; they stay in {} and go "
          "after the next start",
          left_, config_.collector, absl::FormatDuration(current_.drain_timeout),
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
