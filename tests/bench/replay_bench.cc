// `constance replay` speed: rows read per second on one core.
//
// Writes a plain synthetic chain (tests/integration/synthetic_chain.h:
// 120 stores x 200 items a day, Windows-1250, decimal comma, one file per
// store and day) of --days days into a temporary directory, then replays
// it in this process exactly as `constance replay --json` does (output
// discarded) and prints one line:
//
//   replay_bench: 1008000 rows in 5040 files, read 4.1 s (245000 rows/s),
//   total 9.8 s wall, 9.6 s CPU (103000 rows/s), 720 evaluations, peak RSS 412 MiB
//
// The target is 1M rows per minute on one core (16,667 rows/s), whole run.
// Replay is single-threaded, so wall time is one core's time.
//
//   replay_bench [--days=42]     # 42 days: 1,008,000 rows
//   replay_bench --smoke         # 2 days of 20 stores, for ctest
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "agent/config.h"
#include "collector/cli/replay.h"
#include "tests/integration/synthetic_chain.h"

ABSL_FLAG(int, days, 42, "Days of exports (120 stores x 200 items a day)");
ABSL_FLAG(bool, smoke, false, "Tiny size: 2 days of 20 stores");

namespace {

double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

double PeakRssMiB() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

int Run() {
  constance::testing::SyntheticChainOptions chain_options;
  chain_options.plain = true;
  chain_options.days = absl::GetFlag(FLAGS_days);
  if (absl::GetFlag(FLAGS_smoke)) {
    chain_options.days = 2;
    chain_options.stores = 20;
  }
  const char* tmp = std::getenv("TMPDIR");
  std::string dir = absl::StrFormat("%s/replay_bench.XXXXXX", tmp != nullptr ? tmp : "/tmp");
  if (mkdtemp(dir.data()) == nullptr) {
    std::perror("replay_bench: mkdtemp");
    return 1;
  }
  absl::StatusOr<constance::testing::SyntheticChain> chain =
      constance::testing::WriteSyntheticChain(dir, chain_options);
  if (!chain.ok()) {
    std::cerr << "replay_bench: " << chain.status() << "\n";
    std::filesystem::remove_all(dir);
    return 1;
  }
  absl::StatusOr<constance::agent::AgentConfig> config = constance::agent::ParseAgentConfig(
      constance::testing::SyntheticAgentYaml(), "synthetic agent.yaml");
  if (!config.ok()) {
    std::cerr << "replay_bench: " << config.status() << "\n";
    std::filesystem::remove_all(dir);
    return 1;
  }
  constance::cli::ReplayOptions options;
  options.inputs = {dir};
  options.drop = config->drop_directory;
  options.json = true;
  std::ostringstream out;
  const double cpu0 = CpuSeconds();
  const absl::Time start = absl::Now();
  absl::StatusOr<constance::cli::ReplayStats> stats =
      constance::cli::Replay(options, out, std::cerr);
  const double wall = absl::ToDoubleSeconds(absl::Now() - start);
  const double cpu = CpuSeconds() - cpu0;
  std::filesystem::remove_all(dir);
  if (!stats.ok()) {
    std::cerr << "replay_bench: " << stats.status() << "\n";
    return 1;
  }
  const double read = absl::ToDoubleSeconds(stats->read_time);
  std::cout << absl::StrFormat(
      "replay_bench: %d rows in %d files, read %.1f s (%.0f rows/s), total %.1f s wall, %.1f s "
      "CPU (%.0f rows/s), %d evaluations, peak RSS %.0f MiB\n",
      stats->rows, stats->files, read, static_cast<double>(stats->rows) / read, wall, cpu,
      static_cast<double>(stats->rows) / wall, stats->evaluations, PeakRssMiB());
  if (stats->bad_rows != 0 || stats->applied != stats->rows) {
    std::cerr << "replay_bench: expected every row applied, got " << stats->applied << " of "
              << stats->rows << " (" << stats->bad_rows << " bad)\n";
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return Run();
}
