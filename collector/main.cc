// constance-collector: the central collector.
//
//   constance-collector --insecure [--listen=0.0.0.0:7070]
//       [--metrics_listen=127.0.0.1:9464] [--ready_file=PATH]
//
// Exit codes: 0 after SIGTERM/SIGINT and a clean shutdown, 1 when it cannot
// start (the message says what to fix), 2 on usage errors.
#include <signal.h>

#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "collector/server.h"
#include "constance/log.h"
#include "constance/process.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:7070", "gRPC address for agents and the Query API");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "Address of /metrics (loopback by default)");
ABSL_FLAG(bool, insecure, false, "Accept plaintext gRPC (required until TLS is configured)");
ABSL_FLAG(absl::Duration, stats_interval, absl::Seconds(1),
          "How often dirty series are recomputed and published");
ABSL_FLAG(uint64_t, min_group, 5, "Fewest reporting locations for outliers to be flagged");
ABSL_FLAG(double, z_threshold, 3.5, "Modified z-score above which a location may be an outlier");
ABSL_FLAG(int, max_message_bytes, 4 << 20, "Largest gRPC message accepted from an agent");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(5),
          "How long open streams get to finish on shutdown");
ABSL_FLAG(std::string, ready_file, "",
          "Write grpc=HOST:PORT and metrics=HOST:PORT here once serving");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn or error");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "constance-collector --insecure [--listen=HOST:PORT] [--metrics_listen=HOST:PORT]");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() > 1) {
    std::cerr << "constance-collector: unexpected argument '" << args[1]
              << "' (options are --flags; see --help)\n";
    return 2;
  }
  constance::BlockTerminationSignals();
  constance::InitLogging("constance-collector", absl::GetFlag(FLAGS_log_level));

  constance::collector::ServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.insecure = absl::GetFlag(FLAGS_insecure);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.engine.stats_interval = absl::GetFlag(FLAGS_stats_interval);
  options.engine.policy.min_group = absl::GetFlag(FLAGS_min_group);
  options.engine.policy.z_threshold = absl::GetFlag(FLAGS_z_threshold);
  if (options.engine.stats_interval <= absl::ZeroDuration()) {
    std::cerr << "constance-collector: --stats_interval must be positive\n";
    return 2;
  }

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
  int sig = constance::WaitForTerminationSignal();
  spdlog::info("signal {}: shutting down", sig);
  server.Shutdown(absl::GetFlag(FLAGS_shutdown_grace));
  return 0;
}
