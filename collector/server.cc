#include "collector/server.h"

#include <algorithm>
#include <exception>

#include "absl/strings/str_cat.h"
#include "constance/process.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "spdlog/spdlog.h"

namespace constance::collector {

CollectorServer::CollectorServer(ServerOptions options)
    : options_(std::move(options)), engine_(options_.engine), query_(&engine_) {}

CollectorServer::~CollectorServer() { Shutdown(absl::ZeroDuration()); }

absl::Status CollectorServer::OpenSilences() {
  if (options_.state_dir.empty()) {
    silences_ = std::make_unique<SilenceStore>();
    return absl::OkStatus();
  }
  absl::StatusOr<std::unique_ptr<SilenceStore>> store =
      SilenceStore::Open(options_.state_dir + "/silences.db");
  if (!store.ok()) return store.status();
  silences_ = *std::move(store);
  return absl::OkStatus();
}

absl::Status CollectorServer::OpenHistory() {
  FindingHistory::Options options;
  options.retention = options_.history_retention;
  if (options_.state_dir.empty()) {
    history_ = std::make_unique<FindingHistory>(options);
  } else {
    absl::StatusOr<std::unique_ptr<FindingHistory>> history =
        FindingHistory::Open(options_.state_dir + "/history.db", options);
    if (!history.ok()) return history.status();
    history_ = *std::move(history);
  }
  history_service_ =
      std::make_unique<HistoryService>(history_.get(), !options_.insecure, &refusals_);
  return absl::OkStatus();
}

absl::Status CollectorServer::OpenBoard() {
  PriceDropFeed::Options options;
  options.retention = options_.price_drop_retention;
  absl::StatusOr<std::unique_ptr<PriceDropFeed>> feed = PriceDropFeed::Open(
      options_.state_dir.empty() ? "" : options_.state_dir + "/price_drops.db", options);
  if (!feed.ok()) return feed.status();
  price_drops_ = *std::move(feed);
  absl::StatusOr<std::unique_ptr<PromiseRecordStore>> record = PromiseRecordStore::Open(
      options_.state_dir.empty() ? "" : options_.state_dir + "/promise_record.db", {});
  if (!record.ok()) return record.status();
  promise_record_ = *std::move(record);
  board_service_ = std::make_unique<BoardService>(&engine_, price_drops_.get(),
                                                  promise_record_.get(), !options_.insecure,
                                                  &refusals_);
  return absl::OkStatus();
}

namespace {

// mTLS credentials from the TLS files, or plaintext with --insecure.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> CredentialsFor(
    const ServerOptions& options) {
  if (options.insecure) {
    spdlog::warn(
        "--insecure: agent streams and queries are plaintext and unauthenticated; any client "
        "may claim any location and read every answer");
    return grpc::InsecureServerCredentials();
  }
  if (absl::Status s = CheckTlsFiles(options.tls, /*need_identity=*/true, "--tls_"); !s.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat(s.message(),
                     " (TLS is the default: give --tls_ca, --tls_cert and --tls_key, see "
                     "deploy/pki/; or --insecure for plaintext on a trusted network)"));
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> tls = MakeServerCredentials(options.tls);
  if (!tls.ok()) return tls.status();
  if (options.tls.crl_dir.empty()) {
    spdlog::warn("no --tls_crl_dir: revoked certificates are not refused");
  }
  return tls;
}

// Message size, keepalive and connection age.
void SetChannelArguments(const ServerOptions& options, grpc::ServerBuilder* builder) {
  builder->SetMaxReceiveMessageSize(options.max_message_bytes);
  // Keepalive, consistent with the agent's: the agent pings every 20 s,
  // above the 10 s minimum accepted here, with or without calls in flight,
  // so NAT idle timeouts never cut a healthy stream and no agent is ever
  // sent GOAWAY for pinging too often.
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30'000);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10'000);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10'000);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  if (options.max_connection_age > absl::ZeroDuration()) {
    // gRPC adds +-10% jitter, so agents do not all reconnect at once.
    builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                                static_cast<int>(absl::ToInt64Milliseconds(
                                    std::min(options.max_connection_age, absl::Hours(24 * 24)))));
    builder->AddChannelArgument(
        GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
        static_cast<int>(absl::ToInt64Milliseconds(std::clamp(
            options.max_connection_age_grace, absl::Milliseconds(1), absl::Hours(24 * 24)))));
  }
}

}  // namespace

absl::Status CollectorServer::Start() {
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = CredentialsFor(options_);
  if (!credentials.ok()) return credentials.status();
  if (!options_.state_dir.empty()) {
    if (absl::Status s = OpenLog(); !s.ok()) return s;
  } else {
    spdlog::warn("no --state_dir: acknowledged batches are not durable across restarts");
  }
  if (absl::Status s = OpenSilences(); !s.ok()) return s;
  if (absl::Status s = OpenHistory(); !s.ok()) return s;
  if (absl::Status s = OpenBoard(); !s.ok()) return s;
  CreateServices();
  if (absl::Status s = ServeGrpc(*std::move(credentials)); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<MetricsServer>> metrics_server =
      MetricsServer::Start(options_.metrics_listen, metrics_.get());
  if (!metrics_server.ok()) return metrics_server.status();
  metrics_server_ = *std::move(metrics_server);
  metrics_address_ = DialAddress(options_.metrics_listen, metrics_server_->port());
  engine_.Start();
  history_recorder_ = std::make_unique<HistoryRecorder>(&engine_, silence_matches_.get(),
                                                        history_.get(), absl::Seconds(1));
  board_recorder_ = std::make_unique<BoardRecorder>(&engine_, price_drops_.get(),
                                                    promise_record_.get(), absl::Seconds(1));
  if (!options_.board_dir.empty()) {
    board_publisher_ = std::make_unique<BoardPublisher>(&engine_, promise_record_.get(),
                                                        options_.board_dir, options_.board_every);
  }
  spdlog::info("serving gRPC on {} ({}) and /metrics on {}", grpc_address_,
               options_.insecure ? "plaintext" : "mTLS", metrics_address_);
  return absl::OkStatus();
}

absl::Status CollectorServer::OpenLog() {
  const std::string path = options_.state_dir + "/batches.db";
  BatchLog::Options log_options;
  log_options.apply_threads = options_.apply_threads;
  absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path, log_options);
  if (!log.ok()) return log.status();
  log_ = std::move(*log);
  const absl::Time start = absl::Now();
  absl::StatusOr<int64_t> through = RestoreSnapshot(path);
  if (!through.ok()) return through.status();
  absl::StatusOr<uint64_t> replayed = log_->Replay(
      [this](const v1::Batch& b, absl::Time at) {
        // Batch-level errors were refused the first time too; capacity
        // limits are not decided again (Engine::ReplayBatch).
        (void)engine_.ReplayBatch(b, at);
      },
      *through);
  if (!replayed.ok()) return replayed.status();
  replayed_ = *replayed;
  for (const std::string& over : engine_.OverCapacity()) {
    // The replay keeps what was acknowledged whatever the limits
    // (Engine::ReplayBatch); operators see what that left over them.
    spdlog::warn(
        "after replaying the batch log: {} (what a limit refused before the restart came in "
        "with the rest); new ones are refused until retention brings it under",
        over);
  }
  // Ingest goes on while a snapshot is taken: only its Begin step holds
  // the engine (and the applier) for a moment (engine.h).
  log_->SetCheckpoint(options_.snapshot_interval, [this]() -> BatchLog::Begin {
    std::shared_ptr<Engine::StateCapture> capture = engine_.PrepareCapture();
    return [this, capture]() -> BatchLog::Finish {
      engine_.BeginCapture(capture);
      return [this, capture] { return engine_.FinishCapture(capture); };
    };
  });
  log_->Start();
  spdlog::info("replayed {} batches from {} in {}", replayed_, path,
               absl::FormatDuration(absl::Now() - start));
  return absl::OkStatus();
}

absl::StatusOr<int64_t> CollectorServer::RestoreSnapshot(const std::string& path) {
  absl::StatusOr<BatchLog::Snapshot> snapshot = log_->LoadSnapshot();
  if (absl::IsNotFound(snapshot.status())) return 0;
  if (!snapshot.ok()) return snapshot.status();
  if (absl::Status s = engine_.LoadState(snapshot->state); !s.ok()) {
    // A newer format: nothing was read or written; the message says
    // which versions read it.
    if (absl::IsFailedPrecondition(s)) {
      return absl::FailedPreconditionError(absl::StrCat(path, ": ", s.message()));
    }
    return absl::DataLossError(absl::StrCat(
        path, ": ", s.message(),
        " (the batches it covers were compacted away: restore the state directory from a "
        "backup, or move it aside to start empty)"));
  }
  spdlog::info("loaded the snapshot of {} ({} bytes, log position {})",
               absl::FormatTime(snapshot->saved_at), snapshot->state.size(), snapshot->through);
  return snapshot->through;
}

void CollectorServer::CreateServices() {
  IngestOptions ingest;
  ingest.log = log_.get();
  ingest.rate_per_location = options_.rate_per_location;
  ingest.burst = options_.rate_burst;
  ingest.require_location = !options_.insecure;
  ingest.max_streams = options_.max_streams;
  ingest.refusals = &refusals_;
  ingest_ = std::make_unique<IngestService>(&engine_, ingest);
  if (!options_.insecure) query_.RequireOperator(&refusals_);
  query_.UseSilences(silences_.get());
  query_.UseHistory(history_.get());
  silence_service_ =
      std::make_unique<SilenceService>(silences_.get(), !options_.insecure, &refusals_);
  silence_matches_ = std::make_unique<SilenceMatches>(silences_.get());
  metrics_ = std::make_unique<CollectorMetrics>(&engine_, ingest_.get(), silence_matches_.get());
}

absl::Status CollectorServer::ServeGrpc(std::shared_ptr<grpc::ServerCredentials> credentials) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options_.listen, credentials, &port);
  builder.RegisterService(ingest_.get());
  builder.RegisterService(&query_);
  builder.RegisterService(silence_service_.get());
  builder.RegisterService(history_service_.get());
  builder.RegisterService(board_service_.get());
  SetChannelArguments(options_, &builder);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("--listen=", options_.listen,
                                               ": cannot listen there (address in use, or "
                                               "not HOST:PORT?)"));
  }
  grpc_address_ = DialAddress(options_.listen, port);
  return absl::OkStatus();
}

void CollectorServer::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  metrics_server_.reset();
  history_recorder_.reset();
  board_publisher_.reset();
  board_recorder_.reset();
  // After the server: no stream can queue a batch any more; the log
  // commits what is queued (running the last callbacks) and closes.
  log_.reset();
  engine_.Stop();
}

}  // namespace constance::collector
