#include "collector/server.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "constance/process.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "prometheus/exposer.h"
#include "spdlog/spdlog.h"

namespace constance::collector {

CollectorServer::CollectorServer(ServerOptions options)
    : options_(std::move(options)), engine_(options_.engine), query_(&engine_) {}

CollectorServer::~CollectorServer() { Shutdown(absl::ZeroDuration()); }

absl::Status CollectorServer::Start() {
  if (!options_.insecure) {
    return absl::FailedPreconditionError(
        "TLS is not available in this version: start the collector with --insecure to accept "
        "plaintext agent streams on a trusted network");
  }
  spdlog::warn("--insecure: agent streams and queries are plaintext and unauthenticated");
  if (!options_.state_dir.empty()) {
    const std::string path = options_.state_dir + "/batches.db";
    absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path);
    if (!log.ok()) return log.status();
    log_ = std::move(*log);
    const absl::Time start = absl::Now();
    absl::StatusOr<uint64_t> replayed = log_->Replay([this](const v1::Batch& b, absl::Time at) {
      // Batch-level errors were refused the first time too.
      (void)engine_.ApplyBatch(b, at);
    });
    if (!replayed.ok()) return replayed.status();
    replayed_ = *replayed;
    log_->Start();
    spdlog::info("replayed {} batches from {} in {}", replayed_, path,
                 absl::FormatDuration(absl::Now() - start));
  } else {
    spdlog::warn("no --state_dir: acknowledged batches are not durable across restarts");
  }
  ingest_ = std::make_unique<IngestService>(&engine_, log_.get(), options_.rate_per_location,
                                            options_.rate_burst);
  metrics_ = std::make_shared<CollectorMetrics>(&engine_, ingest_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options_.listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(ingest_.get());
  builder.RegisterService(&query_);
  builder.SetMaxReceiveMessageSize(options_.max_message_bytes);
  // Keepalive, consistent with the agent's: the agent pings every 20 s,
  // above the 10 s minimum accepted here, with or without calls in flight,
  // so NAT idle timeouts never cut a healthy stream and no agent is ever
  // sent GOAWAY for pinging too often.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30'000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10'000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10'000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("--listen=", options_.listen,
                                               ": cannot listen there (address in use, or "
                                               "not HOST:PORT?)"));
  }
  grpc_address_ = DialAddress(options_.listen, port);

  try {
    exposer_ = std::make_unique<prometheus::Exposer>(options_.metrics_listen, 2);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("--metrics_listen=", options_.metrics_listen,
                                               ": cannot listen there: ", e.what()));
  }
  exposer_->RegisterCollectable(metrics_);
  std::vector<int> ports = exposer_->GetListeningPorts();
  if (ports.empty()) {
    return absl::UnavailableError(
        absl::StrCat("--metrics_listen=", options_.metrics_listen, ": no listening port"));
  }
  metrics_address_ = DialAddress(options_.metrics_listen, ports.front());
  engine_.Start();
  spdlog::info("serving gRPC on {} and /metrics on {}", grpc_address_, metrics_address_);
  return absl::OkStatus();
}

void CollectorServer::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  exposer_.reset();
  // After the server: no stream can queue a batch any more; the log
  // commits what is queued (running the last callbacks) and closes.
  log_.reset();
  engine_.Stop();
}

}  // namespace constance::collector
