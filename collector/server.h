// Assembles a running collector: Engine, the gRPC services, /metrics.
//
// CollectorServer owns every part and starts them in Start(); Shutdown()
// stops accepting, gives open streams a bounded time to finish, and stops
// the statistics tick. main.cc only parses flags and calls these.
//
//   CollectorServer server(options);
//   absl::Status s = server.Start();   // binds; ports readable afterwards
//   ... WaitForTerminationSignal() ...
//   server.Shutdown(absl::Seconds(5));
//
// Thread-safety: Start and Shutdown from one thread; accessors after Start.
#ifndef CONSTANCE_COLLECTOR_SERVER_H_
#define CONSTANCE_COLLECTOR_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "collector/board.h"
#include "collector/engine.h"
#include "collector/history.h"
#include "collector/ingest_service.h"
#include "collector/metrics.h"
#include "collector/metrics_server.h"
#include "collector/services.h"
#include "collector/silences.h"
#include "constance/tls.h"
#include "grpcpp/grpcpp.h"

namespace constance::collector {

struct ServerOptions {
  // gRPC (Ingest and Query). Port 0 asks the OS for a free port.
  std::string listen = "0.0.0.0:7070";
  // /metrics, loopback by default: Prometheus scrapes it from the same host
  // or through an explicit bind.
  std::string metrics_listen = "127.0.0.1:9464";
  // Plaintext gRPC, no identities, no authorization (demo, tests). Without
  // it `tls` must name the CA, certificate and key.
  bool insecure = false;
  // mTLS: agents present location certificates (Ingest only, for their own
  // location), operators operator certificates (Query). See constance/tls.h.
  TlsFiles tls;
  // Connections older than this are closed (after a grace for calls in
  // flight) so that every agent handshakes again: a revoked certificate
  // fails then. 0 = never.
  absl::Duration max_connection_age = absl::Hours(1);
  absl::Duration max_connection_age_grace = absl::Seconds(30);
  // Agent streams open at once, at most (0 = unlimited).
  int64_t max_streams = 10'000;
  int max_message_bytes = 4 << 20;
  // Where the durable batch log lives (batches.db). Empty: nothing is
  // durable and a restart loses everything (tests, the demo).
  std::string state_dir;
  // How often the engine's state is snapshotted into the log's database
  // (and the log compacted); a clean shutdown takes one too.
  absl::Duration snapshot_interval = absl::Minutes(5);
  // Threads the durable log applies committed batches on: batches of
  // different locations apply at once where none needs an order across
  // locations (batch_log.h). 1: one after the other.
  int apply_threads = 2;
  // Per-location ingest rate (observations/s, 0 = unlimited) and burst.
  double rate_per_location = 0;
  double rate_burst = 0;
  Engine::Options engine;
  // How long closed findings stay in the finding history (history.db).
  absl::Duration history_retention = absl::Hours(24 * 90);
  // How long price drops stay in the feed (price_drops.db).
  absl::Duration price_drop_retention = absl::Hours(24 * 30);
  // The public board: written into this directory every `board_every`
  // (empty: not written; `constance publish` writes it on demand).
  std::string board_dir;
  absl::Duration board_every = absl::Minutes(5);
};

class CollectorServer {
 public:
  explicit CollectorServer(ServerOptions options);
  ~CollectorServer();
  CollectorServer(const CollectorServer&) = delete;
  CollectorServer& operator=(const CollectorServer&) = delete;

  // Replays the batch log (if any), binds both listeners and starts
  // serving. FailedPrecondition when neither `insecure` nor readable TLS
  // files are given, naming the option; Unavailable when an address cannot be bound or the log
  // cannot be opened, naming it.
  absl::Status Start();

  // Stops accepting, waits up to `grace` for calls in flight, then cancels
  // the rest. Idempotent.
  void Shutdown(absl::Duration grace);

  // Addresses a local client dials (wildcards resolved to loopback).
  const std::string& grpc_address() const { return grpc_address_; }
  const std::string& metrics_address() const { return metrics_address_; }

  Engine& engine() { return engine_; }
  // Batches replayed from the log at start.
  uint64_t replayed() const { return replayed_; }

 private:
  // Operators' silences: durable in state_dir/silences.db, else in memory.
  absl::Status OpenSilences();
  // Finding history: durable in state_dir/history.db, else in memory.
  absl::Status OpenHistory();
  // The price-drop feed and the promise record: durable in
  // state_dir/price_drops.db and promise_record.db, else in memory.
  absl::Status OpenBoard();
  // The durable batch log, state_dir/batches.db: its snapshot loaded into
  // the engine, the batches after it replayed, a snapshot scheduled every
  // snapshot_interval; the log started.
  absl::Status OpenLog();
  // Loads the log's snapshot, if it has one, into the engine: the log
  // position it covers (0 without one). Errors name the log's `path`.
  absl::StatusOr<int64_t> RestoreSnapshot(const std::string& path);
  // The ingest, query and silence services and the metrics over them.
  void CreateServices();
  // Builds and starts the gRPC server with every service.
  absl::Status ServeGrpc(std::shared_ptr<grpc::ServerCredentials> credentials);
  const ServerOptions options_;
  Engine engine_;
  std::unique_ptr<BatchLog> log_;
  std::unique_ptr<IngestService> ingest_;
  QueryService query_;
  std::unique_ptr<SilenceStore> silences_;
  // Which silence covers each finding of the latest evaluation, for
  // /metrics and the history.
  std::unique_ptr<SilenceMatches> silence_matches_;
  std::unique_ptr<SilenceService> silence_service_;
  std::unique_ptr<FindingHistory> history_;
  std::unique_ptr<HistoryService> history_service_;
  std::unique_ptr<HistoryRecorder> history_recorder_;
  std::unique_ptr<PriceDropFeed> price_drops_;
  std::unique_ptr<PromiseRecordStore> promise_record_;
  std::unique_ptr<BoardService> board_service_;
  std::unique_ptr<BoardRecorder> board_recorder_;
  std::unique_ptr<BoardPublisher> board_publisher_;
  std::unique_ptr<CollectorMetrics> metrics_;
  RefusalCounter refusals_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<MetricsServer> metrics_server_;
  std::string grpc_address_;
  std::string metrics_address_;
  bool shut_down_ = false;
  uint64_t replayed_ = 0;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_SERVER_H_
