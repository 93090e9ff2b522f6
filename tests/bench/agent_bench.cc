// agent_bench: what constance-agent costs the store server it runs on.
//
// Starts constance-agent (from the build) with a durable spool (SQLite)
// and the default spool bounds, pointed at a collector address nobody
// listens on (127.0.0.1:1), so everything posted stays spooled and the
// sender keeps retrying as it would through an outage. Then:
//   1. idle: resident memory (VmRSS, /proc/PID/status) and CPU over
//      --idle_seconds with nothing posted;
//   2. fill: --spooled - --sustain_seconds x --rate observations posted to
//      /v1/observations as fast as one client goes (requests of 1,000);
//   3. sustained: --rate observations/s (requests of rate/10, ten a
//      second) for --sustain_seconds, which brings the spool to --spooled
//      (1M by default): resident memory at the end and at its highest,
//      and CPU per 1,000 observations over this phase.
//   4. drain: the agent is stopped, a real constance-collector starts
//      (durable batch log, no rate limit) and the agent restarts on the
//      same spool pointed at it: the time until its spool is empty (every
//      observation acknowledged after the collector's commit) is the
//      agent-to-collector delivery rate with durability on both sides;
//      the collector's applied count must equal what was spooled.
// Every acknowledgement the agent gives is durable (the spool commits
// before answering), so the CPU figure includes the commits.
//
//   agent_bench --spooled=1000000 --rate=1000 --sustain_seconds=60
//   agent_bench --smoke        # a tiny run (ctest)
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/bench/proc_stats.h"
#include "tests/integration/harness.h"

ABSL_FLAG(int64_t, spooled, 1'000'000, "Observations spooled at the end");
ABSL_FLAG(int, rate, 1'000, "Observations per second in the sustained phase");
ABSL_FLAG(int, sustain_seconds, 60, "Length of the sustained phase");
ABSL_FLAG(double, idle_seconds, 10, "Length of the idle phase");
ABSL_FLAG(bool, smoke, false, "A tiny run: 3,000 spooled, 2 s at 1,000/s");

namespace constance::testing {
namespace {

// A kB field of /proc/PID/status in bytes, 0 if absent.
double StatusBytes(pid_t pid, const std::string& field) {
  return static_cast<double>(std::max<int64_t>(0, ProcStatusKb(pid, field))) * 1024;
}

double MiB(double bytes) { return bytes / (1 << 20); }

// A JSON array of `n` observations, a mix of prices, waits and scores over
// 1,000 keys, numbered from `first`.
std::string Body(int64_t first, int n) {
  std::string body = "[";
  for (int i = 0; i < n; ++i) {
    const int64_t x = first + i;
    if (i > 0) body += ",";
    switch (x % 3) {
      case 0:
        absl::StrAppend(&body, R"({"key":"sku-)", x % 1000, R"(","price":{"minor_units":)",
                        100 + x % 50, R"(,"currency":"EUR"}})");
        break;
      case 1:
        absl::StrAppend(&body, R"({"key":"checkout","wait_seconds":)", 30 + x % 300, "}");
        break;
      default:
        absl::StrAppend(&body, R"({"key":"clean-)", x % 1000, R"(","score":)", x % 100, "}");
        break;
    }
  }
  return body + "]";
}

// The spool depth the agent at `http` reports on /healthz, -1 if unknown.
int64_t SpoolDepth(const std::string& http) {
  auto health = HttpGet(http, "/healthz");
  const std::string field = "\"spool_depth\":";
  if (!health.ok()) return -1;
  const size_t at = health->body.find(field);
  return at == std::string::npos ? -1 : std::stoll(health->body.substr(at + field.size()));
}

// Phase 4: delivers the `spooled` observations of the agent's spool to a
// real collector and times it.
int Drain(const TempDir& dir, const std::string& config, int64_t spooled) {
  Subprocess collector(
      {BinDir() + "/constance-collector", "--insecure", "--listen=127.0.0.1:0",
       "--metrics_listen=127.0.0.1:0", "--state_dir=" + dir.path(), "--max_rate_per_location=0",
       "--log_level=warn", "--ready_file=" + dir.File("collector.ready")},
      dir.File("collector.log"));
  auto collector_ready =
      WaitForReadyFile(dir.File("collector.ready"), collector, absl::Seconds(30));
  if (!collector_ready.ok()) {
    std::fprintf(stderr, "agent_bench: collector: %s\n%s\n",
                 std::string(collector_ready.status().message()).c_str(), collector.Log().c_str());
    return 1;
  }
  const absl::Time start = absl::Now();
  Subprocess agent(
      {BinDir() + "/constance-agent", "run", "--config=" + config, "--log_level=warn",
       "--collector=" + (*collector_ready)["grpc"], "--ready_file=" + dir.File("agent2.ready")},
      dir.File("agent2.log"));
  auto ready = WaitForReadyFile(dir.File("agent2.ready"), agent, absl::Seconds(30));
  if (!ready.ok()) {
    std::fprintf(stderr, "agent_bench: %s\n%s\n", std::string(ready.status().message()).c_str(),
                 agent.Log().c_str());
    return 1;
  }
  const std::string http = (*ready)["http"];
  const double agent_cpu0 = CpuSeconds(agent.pid());
  const double collector_cpu0 = CpuSeconds(collector.pid());
  const absl::Time deadline = absl::Now() + absl::Minutes(10);
  int64_t depth = SpoolDepth(http);
  while (depth != 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));  // Polling, with a deadline.
    depth = SpoolDepth(http);
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const double agent_cpu = CpuSeconds(agent.pid()) - agent_cpu0;
  const double collector_cpu = CpuSeconds(collector.pid()) - collector_cpu0;
  // The collector's count comes from its statistics snapshot (a tick
  // behind the acknowledgements).
  double applied = -1;
  while (applied != static_cast<double>(spooled) && absl::Now() < deadline) {
    if (auto metrics = HttpGet((*collector_ready)["metrics"], "/metrics"); metrics.ok()) {
      const std::string name = "\nconstance_observations_applied_total ";
      const size_t at = metrics->body.find(name);
      if (at != std::string::npos) applied = std::stod(metrics->body.substr(at + name.size()));
    }
    if (applied != static_cast<double>(spooled)) absl::SleepFor(absl::Milliseconds(50));
  }
  std::printf(
      "agent_bench: drain %lld spooled observations to a collector (durable, no rate limit): "
      "%.2f s from the agent's start = %.0f observations/s; agent CPU %.2f s, collector CPU "
      "%.2f s; applied %.0f\n",
      static_cast<long long>(spooled), seconds, static_cast<double>(spooled) / seconds, agent_cpu,
      collector_cpu, applied);
  (void)agent.Stop(SIGTERM, absl::Seconds(30));
  (void)collector.Stop(SIGTERM, absl::Seconds(60));
  if (depth != 0 || applied != static_cast<double>(spooled)) {
    std::fprintf(stderr,
                 "agent_bench: drain left spool depth %lld, collector applied %.0f of %lld\n",
                 static_cast<long long>(depth), applied, static_cast<long long>(spooled));
    return 1;
  }
  return 0;
}

int Run() {
  int64_t spooled = absl::GetFlag(FLAGS_spooled);
  int rate = absl::GetFlag(FLAGS_rate);
  int sustain = absl::GetFlag(FLAGS_sustain_seconds);
  double idle = absl::GetFlag(FLAGS_idle_seconds);
  if (absl::GetFlag(FLAGS_smoke)) {
    spooled = 3'000;
    rate = 1'000;
    sustain = 2;
    idle = 0.5;
  }
  const int64_t sustained = static_cast<int64_t>(rate) * sustain;
  if (rate < 10 || sustain < 1 || spooled < sustained || idle <= 0) {
    std::fprintf(stderr,
                 "agent_bench: need rate >= 10, sustain_seconds >= 1, idle_seconds > 0, "
                 "spooled >= rate x sustain_seconds\n");
    return 2;
  }
  TempDir dir;
  const std::string config = dir.File("agent.yaml");
  // Nothing listens on port 1: the sender retries with its backoff and
  // nothing is acknowledged, so the spool keeps all that is posted. The
  // spool bounds are the defaults (1M observations, 256 MiB).
  std::ofstream(config) << "location: bench-agent\ncollector: 127.0.0.1:1\ninsecure: true\n"
                           "listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\n"
                           "drain_timeout: 0s\nspool_path: "
                        << dir.File("spool.db") << "\n";
  Subprocess agent({BinDir() + "/constance-agent", "run", "--config=" + config, "--log_level=warn",
                    "--ready_file=" + dir.File("agent.ready")},
                   dir.File("agent.log"));
  auto ready = WaitForReadyFile(dir.File("agent.ready"), agent, absl::Seconds(30));
  if (!ready.ok()) {
    std::fprintf(stderr, "agent_bench: %s\n%s\n", std::string(ready.status().message()).c_str(),
                 agent.Log().c_str());
    return 1;
  }
  const std::string http = (*ready)["http"];
  const pid_t pid = agent.pid();

  // 1. Idle: sampled every 100 ms over the phase.
  double idle_rss = 0;
  const double idle_cpu0 = CpuSeconds(pid);
  const absl::Time idle_end = absl::Now() + absl::Seconds(idle);
  while (absl::Now() < idle_end) {
    idle_rss = std::max(idle_rss, StatusBytes(pid, "VmRSS"));
    absl::SleepFor(absl::Milliseconds(100));
  }
  const double idle_cpu = CpuSeconds(pid) - idle_cpu0;
  // Shared libraries (gRPC, protobuf, Abseil, SQLite) are file-backed:
  // shared with any other process mapping them, and reclaimable.
  const double idle_anon = StatusBytes(pid, "RssAnon");
  const double idle_file = StatusBytes(pid, "RssFile");

  auto post = [&](int64_t first, int n) -> bool {
    auto r = HttpPost(http, "/v1/observations", Body(first, n));
    if (!r.ok() || r->status != 200) {
      std::fprintf(stderr, "agent_bench: POST of %d observations: %s\n", n,
                   r.ok() ? absl::StrCat(r->status, " ", r->body).c_str()
                          : std::string(r.status().message()).c_str());
      return false;
    }
    return true;
  };

  // 2. Fill as fast as one client posts.
  const int64_t fill = spooled - sustained;
  const double fill_cpu0 = CpuSeconds(pid);
  const absl::Time fill_start = absl::Now();
  for (int64_t done = 0; done < fill;) {
    const int n = static_cast<int>(std::min<int64_t>(1000, fill - done));
    if (!post(done, n)) return 1;
    done += n;
  }
  const double fill_s = absl::ToDoubleSeconds(absl::Now() - fill_start);
  const double fill_cpu = CpuSeconds(pid) - fill_cpu0;
  const double filled_rss = StatusBytes(pid, "VmRSS");

  // 3. Sustained: ten requests a second, paced on a fixed schedule.
  const int per_request = rate / 10;
  const int64_t requests = static_cast<int64_t>(sustain) * 10;
  double peak_rss = filled_rss;
  const double sustain_cpu0 = CpuSeconds(pid);
  const absl::Time sustain_start = absl::Now();
  int64_t posted = fill;
  for (int64_t r = 0; r < requests; ++r) {
    absl::SleepFor(sustain_start + absl::Milliseconds(100 * r) - absl::Now());
    const int n = r + 1 == requests ? static_cast<int>(spooled - posted) : per_request;
    if (!post(posted, n)) return 1;
    posted += n;
    if (r % 10 == 0) peak_rss = std::max(peak_rss, StatusBytes(pid, "VmRSS"));
  }
  const double sustain_s = absl::ToDoubleSeconds(absl::Now() - sustain_start);
  const double sustain_cpu = CpuSeconds(pid) - sustain_cpu0;
  const double end_rss = StatusBytes(pid, "VmRSS");
  peak_rss = std::max(peak_rss, end_rss);
  const double hwm = StatusBytes(pid, "VmHWM");

  auto health = HttpGet(http, "/healthz");
  const std::string depth_field = "\"spool_depth\":";
  int64_t depth = -1;
  if (health.ok()) {
    const size_t at = health->body.find(depth_field);
    if (at != std::string::npos) depth = std::stoll(health->body.substr(at + depth_field.size()));
  }
  std::ifstream spool_file(dir.File("spool.db"), std::ios::ate | std::ios::binary);
  const double spool_bytes = static_cast<double>(spool_file.tellg());

  std::printf(
      "agent_bench: idle %.1f s: resident %.1f MiB (anonymous %.1f MiB, file-backed %.1f MiB), "
      "CPU %.3f s (%.2f%% of a core)\n"
      "agent_bench: fill %lld observations in %.1f s (%.0f/s, requests of 1,000): CPU %.2f s = "
      "%.3f s per 1,000; resident %.1f MiB\n"
      "agent_bench: %d observations/s for %.1f s up to %lld spooled (spool depth %lld, file "
      "%.0f MiB): resident %.1f MiB at the end, %.1f MiB at most (VmHWM over the run %.1f MiB); "
      "CPU %.2f s = %.4f s per 1,000 observations\n",
      idle, MiB(idle_rss), MiB(idle_anon), MiB(idle_file), idle_cpu, 100 * idle_cpu / idle,
      static_cast<long long>(fill), fill_s, static_cast<double>(fill) / fill_s, fill_cpu,
      fill_cpu / (static_cast<double>(fill) / 1000), MiB(filled_rss), rate, sustain_s,
      static_cast<long long>(spooled), static_cast<long long>(depth), MiB(spool_bytes),
      MiB(end_rss), MiB(peak_rss), MiB(hwm), sustain_cpu,
      sustain_cpu / (static_cast<double>(sustained) / 1000));
  auto stopped = agent.Stop(SIGTERM, absl::Seconds(30));
  if (depth != spooled) {
    std::fprintf(stderr, "agent_bench: spool depth %lld, expected %lld\n",
                 static_cast<long long>(depth), static_cast<long long>(spooled));
    return 1;
  }
  if (!stopped.ok()) {
    std::fprintf(stderr, "agent_bench: the agent did not stop: %s\n",
                 std::string(stopped.status().message()).c_str());
    return 1;
  }
  return Drain(dir, config, spooled);
}

}  // namespace
}  // namespace constance::testing

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return constance::testing::Run();
}
