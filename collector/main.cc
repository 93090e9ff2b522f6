// constance-collector: the central collector.
//
//   constance-collector --tls_ca=FILE --tls_cert=FILE --tls_key=FILE [--tls_crl_dir=DIR]
//       [--catalog=FILE] [--listen=0.0.0.0:7070] [--metrics_listen=127.0.0.1:9464]
//       [--ready_file=PATH]
//   constance-collector --insecure ...   (plaintext, no identities: demo and tests)
//
// SIGHUP reloads the catalog (a bad file is refused with its error and the
// running catalog stays). Exit codes: 0 after SIGTERM/SIGINT and a clean
// shutdown, 1 when it cannot start (the message says what to fix), 2 on
// usage errors.
#include <signal.h>

#include <iostream>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "collector/catalog.h"
#include "collector/memory.h"
#include "collector/server.h"
#include "constance/log.h"
#include "constance/process.h"
#include "constance/version.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, catalog, "",
          "Catalog YAML (locations, peer groups, promises, thresholds); empty = defaults, any "
          "location");
ABSL_FLAG(std::string, state_dir, "",
          "Directory of the durable batch log; empty = nothing survives a restart");
ABSL_FLAG(absl::Duration, history_retention, absl::Hours(24 * 90),
          "How long closed findings stay in the finding history (--state_dir/history.db; "
          "`constance history`)");
ABSL_FLAG(absl::Duration, price_drop_retention, absl::Hours(24 * 30),
          "How long price decreases stay in the price-drop feed (--state_dir/price_drops.db; "
          "`constance price-drops`)");
ABSL_FLAG(std::string, board_dir, "",
          "Write the public board (catalog `publish: true` locations) into this directory every "
          "--board_every; empty = never (`constance publish` writes it on demand)");
ABSL_FLAG(absl::Duration, board_every, absl::Minutes(5), "How often --board_dir is rewritten");
ABSL_FLAG(absl::Duration, snapshot_interval, absl::Minutes(5),
          "How often the engine's whole state is snapshotted into --state_dir and the batch "
          "log compacted (restarts load the snapshot and replay only what came after)");
ABSL_FLAG(double, max_rate_per_location, 50'000,
          "Observations per second one location may send (0 = unlimited); over it batches are "
          "answered THROTTLED and the agent retries");
ABSL_FLAG(double, rate_burst, 200'000, "Observations one location may send at once");
ABSL_FLAG(std::string, listen, "0.0.0.0:7070", "gRPC address for agents and the Query API");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "Address of /metrics (loopback by default)");
ABSL_FLAG(bool, insecure, false,
          "Plaintext gRPC without identities or authorization (demo, tests); the default is "
          "mTLS with --tls_*");
ABSL_FLAG(std::string, tls_ca, "", "CA bundle agents' and operators' certificates chain to");
ABSL_FLAG(std::string, tls_cert, "", "The collector's certificate chain (PEM)");
ABSL_FLAG(std::string, tls_key, "", "The collector's private key (PEM)");
ABSL_FLAG(std::string, tls_crl_dir, "",
          "Directory of CRLs under hashed names (deploy/pki/); revoked certificates are "
          "refused at their next handshake");
ABSL_FLAG(absl::Duration, tls_refresh_interval, absl::Minutes(1),
          "How often certificate, key, CA files are checked for changes (no restart needed)");
ABSL_FLAG(absl::Duration, max_connection_age, absl::Hours(1),
          "Connections are closed after this age (+-10%) so agents handshake again and a "
          "revoked certificate is refused; 0 = never");
ABSL_FLAG(absl::Duration, max_connection_age_grace, absl::Seconds(30),
          "Time calls get to finish when a connection reaches --max_connection_age");
ABSL_FLAG(int64_t, max_streams, 10'000,
          "Agent streams open at once, at most (0 = unlimited); more are refused "
          "RESOURCE_EXHAUSTED and retry");
ABSL_FLAG(uint64_t, max_locations, 100'000,
          "Distinct locations accepted, at most (0 = unlimited); a new one past it is refused "
          "RESOURCE_EXHAUSTED and retries");
ABSL_FLAG(uint64_t, max_series, 1'000'000,
          "Distinct series (family, key, currency, kind) kept, at most (0 = unlimited); "
          "observations of a new series past it are rejected with reason 'series'");
ABSL_FLAG(uint64_t, max_cells_per_location, 200'000,
          "Keys one location may hold, at most (0 = unlimited), checked before --max_series so "
          "one store cannot use up the series of the others; observations of a new key past "
          "it are rejected with reason 'location_cells'");
ABSL_FLAG(uint64_t, max_batch_observations, 10'000, "Observations in one batch, at most");
ABSL_FLAG(int64_t, max_price_minor_units, 100'000'000,
          "Prices at or above this many minor units are rejected as typos");
ABSL_FLAG(absl::Duration, max_future_skew, absl::Minutes(5),
          "Observations further ahead of the collector's clock are rejected");
ABSL_FLAG(absl::Duration, max_lateness, absl::Hours(24 * 7),
          "Observations older than this are rejected");
ABSL_FLAG(absl::Duration, stats_interval, absl::ZeroDuration(),
          "Overrides the catalog's thresholds.stats_interval (0 = keep it)");
ABSL_FLAG(absl::Duration, evaluation_interval, absl::ZeroDuration(),
          "Overrides the catalog's thresholds.evaluation_interval (0 = keep it)");
ABSL_FLAG(int, evaluation_threads, 1,
          "Threads that recompute and evaluate series at once in a tick (1 to 64): more "
          "shorten a tick that recomputes many series, on a collector with cores to spare; "
          "findings are the same whatever the count");
ABSL_FLAG(int, apply_threads, 2,
          "Threads that apply durably logged batches (with --state_dir; 1 to 64): batches of "
          "different locations apply at once unless one needs an order across locations (a "
          "new series, cell or location, a rejection, a gap); what is acknowledged and what a "
          "restart replays are the same whatever the count");
ABSL_FLAG(int, max_message_bytes, 4 << 20, "Largest gRPC message accepted from an agent");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(5),
          "How long open streams get to finish on shutdown");
ABSL_FLAG(std::string, ready_file, "",
          "Write grpc=HOST:PORT and metrics=HOST:PORT here once serving");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn or error");

namespace {

// The catalog from --catalog (or the defaults) with the interval overrides.
absl::StatusOr<std::shared_ptr<const constance::collector::Catalog>> LoadConfiguredCatalog() {
  using constance::collector::Catalog;
  Catalog catalog = constance::collector::DefaultCatalog();
  if (const std::string path = absl::GetFlag(FLAGS_catalog); !path.empty()) {
    absl::StatusOr<Catalog> loaded = constance::collector::LoadCatalog(path);
    if (!loaded.ok()) return loaded.status();
    catalog = std::move(*loaded);
  }
  if (absl::Duration d = absl::GetFlag(FLAGS_stats_interval); d > absl::ZeroDuration()) {
    catalog.thresholds.stats_interval = d;
  }
  if (absl::Duration d = absl::GetFlag(FLAGS_evaluation_interval); d > absl::ZeroDuration()) {
    catalog.thresholds.evaluation_interval = d;
  }
  return std::make_shared<const Catalog>(std::move(catalog));
}

}  // namespace

int main(int argc, char** argv) {
  constance::SetVersionFlag(
      "constance-collector",
      absl::StrCat("state format ", constance::collector::Engine::kStateFormat, ", log format ",
                   constance::collector::BatchLog::kLogFormat));
  absl::SetProgramUsageMessage(
      "constance-collector --tls_ca=FILE --tls_cert=FILE --tls_key=FILE [--tls_crl_dir=DIR] "
      "[--catalog=FILE] [--listen=HOST:PORT] [--metrics_listen=HOST:PORT]\n"
      "  constance-collector --insecure [--catalog=FILE] ...   (plaintext: demo, tests)");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() > 1) {
    std::cerr << "constance-collector: unexpected argument '" << args[1]
              << "' (options are --flags; see --help)\n";
    return 2;
  }
  constance::BlockTerminationSignals();
  constance::InitLogging("constance-collector", absl::GetFlag(FLAGS_log_level));
  // Debian's Abseil is built without NDEBUG, which leaves Mutex's
  // lock-order graph on: every lock of every thread would go through one
  // global graph. Tests keep it; the served collector does without.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  constance::collector::TuneMalloc();

  auto catalog = LoadConfiguredCatalog();
  if (!catalog.ok()) {
    spdlog::error("cannot start: {}", std::string(catalog.status().message()));
    return 1;
  }
  constance::collector::ServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.insecure = absl::GetFlag(FLAGS_insecure);
  options.tls.ca = absl::GetFlag(FLAGS_tls_ca);
  options.tls.cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls.key = absl::GetFlag(FLAGS_tls_key);
  options.tls.crl_dir = absl::GetFlag(FLAGS_tls_crl_dir);
  options.tls.refresh_interval = absl::GetFlag(FLAGS_tls_refresh_interval);
  options.max_connection_age = absl::GetFlag(FLAGS_max_connection_age);
  options.max_connection_age_grace = absl::GetFlag(FLAGS_max_connection_age_grace);
  options.max_streams = absl::GetFlag(FLAGS_max_streams);
  options.engine.limits.max_locations = absl::GetFlag(FLAGS_max_locations);
  options.engine.limits.max_series = absl::GetFlag(FLAGS_max_series);
  options.engine.limits.max_cells_per_location = absl::GetFlag(FLAGS_max_cells_per_location);
  options.engine.limits.max_batch_observations =
      static_cast<size_t>(absl::GetFlag(FLAGS_max_batch_observations));
  options.engine.limits.max_price_minor_units = absl::GetFlag(FLAGS_max_price_minor_units);
  options.engine.limits.max_future_skew = absl::GetFlag(FLAGS_max_future_skew);
  options.engine.limits.max_lateness = absl::GetFlag(FLAGS_max_lateness);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.engine.evaluation_threads = absl::GetFlag(FLAGS_evaluation_threads);
  if (options.engine.evaluation_threads < 1 || options.engine.evaluation_threads > 64) {
    std::cerr << "constance-collector: --evaluation_threads must be between 1 and 64, got "
              << options.engine.evaluation_threads << "\n";
    return 2;
  }
  options.apply_threads = absl::GetFlag(FLAGS_apply_threads);
  if (options.apply_threads < 1 || options.apply_threads > 64) {
    std::cerr << "constance-collector: --apply_threads must be between 1 and 64, got "
              << options.apply_threads << "\n";
    return 2;
  }
  options.state_dir = absl::GetFlag(FLAGS_state_dir);
  options.history_retention = absl::GetFlag(FLAGS_history_retention);
  options.price_drop_retention = absl::GetFlag(FLAGS_price_drop_retention);
  options.board_dir = absl::GetFlag(FLAGS_board_dir);
  options.board_every = absl::GetFlag(FLAGS_board_every);
  if (!options.board_dir.empty() && options.board_every <= absl::ZeroDuration()) {
    std::cerr << "constance-collector: --board_every must be positive (e.g. 5m)\n";
    return 2;
  }
  options.snapshot_interval = absl::GetFlag(FLAGS_snapshot_interval);
  if (options.snapshot_interval <= absl::ZeroDuration()) {
    std::cerr << "constance-collector: --snapshot_interval must be positive\n";
    return 2;
  }
  options.rate_per_location = absl::GetFlag(FLAGS_max_rate_per_location);
  options.rate_burst = absl::GetFlag(FLAGS_rate_burst);
  options.engine.catalog = *catalog;

  constance::collector::CollectorServer server(options);
  if (absl::Status s = server.Start(); !s.ok()) {
    spdlog::error("cannot start: {}", std::string(s.message()));
    return 1;
  }
  if (absl::Status s = constance::WriteReadyFile(
          absl::GetFlag(FLAGS_ready_file),
          {{"grpc", server.grpc_address()}, {"metrics", server.metrics_address()}});
      !s.ok()) {
    spdlog::error("{}", std::string(s.message()));
    return 1;
  }
  int sig = constance::WaitForTerminationSignal([&server] {
    auto reloaded = LoadConfiguredCatalog();
    if (!reloaded.ok()) {
      spdlog::error("SIGHUP: catalog not reloaded, the running one stays: {}",
                    std::string(reloaded.status().message()));
      return;
    }
    server.engine().SetCatalog(*reloaded);
    spdlog::info("SIGHUP: catalog reloaded");
  });
  spdlog::info("signal {}: shutting down", sig);
  server.Shutdown(absl::GetFlag(FLAGS_shutdown_grace));
  return 0;
}
