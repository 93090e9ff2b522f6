// restart_bench: how long a collector holding --locations x --keys price
// cells (10M by default) takes from exec to serving again.
//
// Starts constance-collector (from the build) with a fresh --state_dir and
// fills it over gRPC as agents would: one Ingest stream per location, one
// batch of --keys prices each, --streams of them at a time, every batch
// acknowledged (so durable in the batch log). Then, with the resident
// memory of the filled collector noted:
//   1. kill -9 and restart: the batch log is replayed (no snapshot was
//      taken: --snapshot_interval is an hour);
//   2. SIGTERM (timed: a clean shutdown snapshots the whole state) and
//      restart: the snapshot is loaded, nothing replayed.
// Each restart is timed from exec to the ready file (written once the
// state is restored and both listeners serve; the health service answers
// SERVING from then on) and to the first published statistics covering
// every cell (ChainSummary's cell count).
//
// With --snapshot_load_seconds the restarted collector takes a snapshot
// every --snapshot_every_seconds while --load_streams agents stream
// batches of --keys prices onto the existing series for that long (each
// agent sends its next batch once the last is acknowledged); reported are
// the ack latencies of batches sent while a snapshot was being taken (from
// its start to stored, from /metrics) and of the others.
//
//   restart_bench --locations=10000 --keys=1000
//   restart_bench --kill=false --snapshot_load_seconds=60   # acks during snapshots
//   restart_bench --smoke        # a tiny run (ctest)
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <algorithm>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "constance/v1/query.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "tests/bench/proc_stats.h"
#include "tests/integration/harness.h"

ABSL_FLAG(int, locations, 10'000, "Locations (one stream and one batch each)");
ABSL_FLAG(int, keys, 1'000, "Price keys per location");
ABSL_FLAG(int, streams, 8, "Streams filling at once");
ABSL_FLAG(bool, kill, true, "Also time the kill -9 + replay restart");
ABSL_FLAG(bool, smoke, false, "A tiny run: 50 locations x 20 keys");
ABSL_FLAG(int, snapshot_load_seconds, 0,
          "After the restart from the snapshot, agents stream for this long while the collector "
          "snapshots every --snapshot_every_seconds (0: no such phase)");
ABSL_FLAG(int, snapshot_every_seconds, 15, "The collector's --snapshot_interval in that phase");
ABSL_FLAG(int, load_streams, 4, "Agents streaming in that phase");
ABSL_FLAG(std::string, collector, "",
          "The collector binary (default: the build's), e.g. an older tree's, to compare");

namespace constance::testing {
namespace {

const absl::Duration kStartTimeout = absl::Minutes(10);

// VmRSS of `pid` in bytes (0 if unreadable).
double ResidentBytes(pid_t pid) {
  return static_cast<double>(std::max<int64_t>(0, ProcStatusKb(pid, "VmRSS"))) * 1024;
}

// Sends one batch of `keys` prices for location `l` on its own stream and
// waits for its ack. Empty on success, else what went wrong.
std::string FillLocation(v1::Ingest::Stub& stub, int l, int keys, int64_t at_seconds) {
  grpc::ClientContext ctx;
  auto stream = stub.Stream(&ctx);
  v1::AgentMessage msg;
  v1::Batch* batch = msg.mutable_batch();
  batch->set_location(absl::StrCat("store-", l));
  batch->set_incarnation(0x2000 + static_cast<uint64_t>(l));
  batch->set_first_sequence(1);
  for (int k = 0; k < keys; ++k) {
    v1::Observation* o = batch->add_observations();
    o->set_key(absl::StrCat("sku-", k));
    o->mutable_observed_at()->set_seconds(at_seconds);
    o->mutable_price()->set_minor_units(100 + (l + k) % 7);
    o->mutable_price()->set_currency("EUR");
  }
  if (!stream->Write(msg)) return absl::StrCat("store-", l, ": write failed");
  v1::CollectorMessage in;
  std::string error = absl::StrCat("store-", l, ": no ack");
  while (stream->Read(&in)) {
    if (!in.has_ack()) continue;
    error =
        in.ack().outcome() == v1::Ack::APPLIED && in.ack().count() == static_cast<uint64_t>(keys)
            ? ""
            : absl::StrCat("store-", l, ": ack outcome ", in.ack().outcome(), " count ",
                           in.ack().count());
    break;
  }
  stream->WritesDone();
  grpc::Status status = stream->Finish();
  if (error.empty() && !status.ok()) error = status.error_message();
  return error;
}

struct Started {
  std::unique_ptr<Subprocess> process;
  std::string grpc;
  std::string metrics;
  double ready_s = 0;  // Exec to ready file.
};

std::optional<Started> StartCollector(const TempDir& dir, const std::string& log_name,
                                      const std::string& snapshot_interval = "1h") {
  std::string binary = absl::GetFlag(FLAGS_collector);
  if (binary.empty()) binary = BinDir() + "/constance-collector";
  const std::string ready = dir.File("ready");
  std::remove(ready.c_str());
  Started s;
  const absl::Time t0 = absl::Now();
  s.process = std::make_unique<Subprocess>(
      std::vector<std::string>{binary, "--insecure", "--listen=127.0.0.1:0",
                               "--metrics_listen=127.0.0.1:0", "--state_dir=" + dir.File("state"),
                               "--snapshot_interval=" + snapshot_interval,
                               "--max_rate_per_location=0", "--log_level=info",
                               "--ready_file=" + ready},
      dir.File(log_name));
  auto addresses = WaitForReadyFile(ready, *s.process, kStartTimeout);
  s.ready_s = absl::ToDoubleSeconds(absl::Now() - t0);
  if (!addresses.ok()) {
    std::fprintf(stderr, "restart_bench: %s\n%s\n",
                 std::string(addresses.status().message()).c_str(), s.process->Log().c_str());
    return std::nullopt;
  }
  s.grpc = (*addresses)["grpc"];
  s.metrics = (*addresses)["metrics"];
  return s;
}

// Seconds from `since` until ChainSummary reports `cells` cells (polling
// with a deadline), or -1.
double WaitForCells(const std::string& address, uint64_t cells, absl::Time since) {
  auto stub = v1::Query::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  const absl::Time deadline = absl::Now() + kStartTimeout;
  while (absl::Now() < deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    v1::ChainSummaryRequest request;
    v1::ChainSummaryResponse response;
    if (stub->ChainSummary(&ctx, request, &response).ok() && response.cells() >= cells) {
      return absl::ToDoubleSeconds(absl::Now() - since);
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return -1;
}

struct AckTime {
  absl::Time sent;
  double ms = 0;
};

// An agent for location `l` (a new one) streaming batches of `keys` prices
// of the existing keys until `until`, each sent once the last is
// acknowledged. Empty on success, else what went wrong.
std::string StreamUntil(v1::Ingest::Stub& stub, int l, int keys, absl::Time until,
                        std::vector<AckTime>* acks) {
  grpc::ClientContext ctx;
  auto stream = stub.Stream(&ctx);
  uint64_t sequence = 1;
  for (int round = 0; absl::Now() < until; ++round) {
    v1::AgentMessage msg;
    v1::Batch* batch = msg.mutable_batch();
    batch->set_location(absl::StrCat("agent-", l));
    batch->set_incarnation(0x3000 + static_cast<uint64_t>(l));
    batch->set_first_sequence(sequence);
    const int64_t at = absl::ToUnixSeconds(absl::Now()) - 1;
    for (int k = 0; k < keys; ++k) {
      v1::Observation* o = batch->add_observations();
      o->set_key(absl::StrCat("sku-", k));
      o->mutable_observed_at()->set_seconds(at);
      o->mutable_price()->set_minor_units(100 + (l + k + round) % 7);
      o->mutable_price()->set_currency("EUR");
    }
    sequence += static_cast<uint64_t>(keys);
    const absl::Time sent = absl::Now();
    if (!stream->Write(msg)) return absl::StrCat("agent-", l, ": write failed");
    v1::CollectorMessage in;
    bool acked = false;
    while (!acked && stream->Read(&in)) acked = in.has_ack();
    if (!acked || in.ack().outcome() != v1::Ack::APPLIED) {
      return absl::StrCat("agent-", l, ": no APPLIED ack");
    }
    acks->push_back({sent, absl::ToDoubleMilliseconds(absl::Now() - sent)});
  }
  stream->WritesDone();
  grpc::Status status = stream->Finish();
  return status.ok() ? "" : status.error_message();
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1))];
}

// The load phase (--snapshot_load_seconds) against `collector`.
bool AcksDuringSnapshots(const Started& collector, int keys, uint64_t cells) {
  const int seconds = absl::GetFlag(FLAGS_snapshot_load_seconds);
  const int agents = absl::GetFlag(FLAGS_load_streams);
  const absl::Time until = absl::Now() + absl::Seconds(seconds);
  // Snapshots seen on /metrics (polled every 100 ms): [start, stored].
  struct Window {
    absl::Time start, stored;
    double store_s = 0;
  };
  std::vector<Window> windows;
  std::atomic<bool> loading{true};
  std::thread poller([&] {
    double seen = -1;
    while (loading.load()) {
      absl::StatusOr<HttpResponse> r = HttpGet(collector.metrics, "/metrics");
      const absl::Time now = absl::Now();
      if (r.ok()) {
        absl::StatusOr<double> n = MetricValue(r->body, "constance_snapshots_total{result=\"ok\"");
        absl::StatusOr<double> took = MetricValue(r->body, "constance_snapshot_seconds");
        absl::StatusOr<double> store = MetricValue(r->body, "constance_snapshot_store_seconds");
        if (n.ok() && took.ok()) {
          if (seen >= 0 && *n > seen) {
            // Stored at most one poll before it was seen.
            windows.push_back({now - absl::Seconds(*took) - absl::Milliseconds(100), now,
                               store.ok() ? *store : -1});
          }
          seen = *n;
        }
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  });
  std::vector<std::vector<AckTime>> acks(agents);
  std::vector<std::string> errors(agents);
  std::vector<std::thread> threads;
  for (int a = 0; a < agents; ++a) {
    threads.emplace_back([&, a] {
      auto stub = v1::Ingest::NewStub(
          grpc::CreateChannel(collector.grpc, grpc::InsecureChannelCredentials()));
      errors[a] = StreamUntil(*stub, a, keys, until, &acks[a]);
    });
  }
  for (std::thread& t : threads) t.join();
  loading.store(false);
  poller.join();
  std::vector<double> during, outside;
  for (const auto& per_agent : acks) {
    for (const AckTime& a : per_agent) {
      bool in = false;
      for (const Window& w : windows) in = in || (a.sent >= w.start && a.sent <= w.stored);
      (in ? during : outside).push_back(a.ms);
    }
  }
  std::string stores;
  for (const Window& w : windows) {
    absl::StrAppend(&stores, stores.empty() ? "" : ", ",
                    absl::StrFormat("%.2f s (stored in %.2f s)",
                                    absl::ToDoubleSeconds(w.stored - w.start) - 0.1, w.store_s));
  }
  std::printf(
      "restart_bench: %d agents streaming batches of %d prices for %d s onto %llu cells, a "
      "snapshot every %d s: %zu snapshots (%s); acks of batches sent during a snapshot: %zu, p50 "
      "%.2f ms, p99 %.2f ms, max %.2f ms; other acks: %zu, p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
      agents, keys, seconds, static_cast<unsigned long long>(cells),
      absl::GetFlag(FLAGS_snapshot_every_seconds), windows.size(), stores.c_str(), during.size(),
      Percentile(during, 0.5), Percentile(during, 0.99), Percentile(during, 1.0), outside.size(),
      Percentile(outside, 0.5), Percentile(outside, 0.99), Percentile(outside, 1.0));
  std::fflush(stdout);
  for (const std::string& e : errors) {
    if (!e.empty()) {
      std::fprintf(stderr, "restart_bench: %s\n", e.c_str());
      return false;
    }
  }
  return !windows.empty();
}

int Run() {
  int locations = absl::GetFlag(FLAGS_locations);
  int keys = absl::GetFlag(FLAGS_keys);
  const int streams = absl::GetFlag(FLAGS_streams);
  if (absl::GetFlag(FLAGS_smoke)) {
    locations = 50;
    keys = 20;
  }
  if (locations < 1 || keys < 1 || keys > 10'000 || streams < 1) {
    std::fprintf(stderr, "restart_bench: need locations >= 1, 1 <= keys <= 10000, streams >= 1\n");
    return 2;
  }
  const uint64_t cells = static_cast<uint64_t>(locations) * static_cast<uint64_t>(keys);
  TempDir dir;
  std::filesystem::create_directories(dir.File("state"));
  std::optional<Started> collector = StartCollector(dir, "fill.log");
  if (!collector) return 1;

  // Fill: every location's batch acknowledged, so durable.
  const absl::Time fill_start = absl::Now();
  const int64_t at_seconds = absl::ToUnixSeconds(absl::Now()) - 1;
  std::atomic<int> next{0};
  absl::Mutex mu;
  std::string first_error;
  std::vector<std::thread> workers;
  for (int w = 0; w < streams; ++w) {
    workers.emplace_back([&] {
      auto stub = v1::Ingest::NewStub(
          grpc::CreateChannel(collector->grpc, grpc::InsecureChannelCredentials()));
      for (int l = next++; l < locations; l = next++) {
        std::string error = FillLocation(*stub, l, keys, at_seconds);
        if (!error.empty()) {
          absl::MutexLock lock(&mu);
          if (first_error.empty()) first_error = error;
          return;
        }
      }
    });
  }
  for (std::thread& t : workers) t.join();
  const double fill_s = absl::ToDoubleSeconds(absl::Now() - fill_start);
  if (!first_error.empty()) {
    std::fprintf(stderr, "restart_bench: fill failed: %s\n", first_error.c_str());
    return 1;
  }
  const double rss = ResidentBytes(collector->process->pid());
  std::printf(
      "restart_bench: filled %llu price cells (%d locations x %d keys) in %.1f s = %.0f "
      "observations/s; collector resident %.0f MiB = %.0f bytes per cell\n",
      static_cast<unsigned long long>(cells), locations, keys, fill_s,
      static_cast<double>(cells) / fill_s, rss / (1 << 20), rss / static_cast<double>(cells));
  std::fflush(stdout);

  if (absl::GetFlag(FLAGS_kill)) {
    (void)collector->process->Stop(SIGKILL, absl::Seconds(30));
    collector = StartCollector(dir, "replay.log");
    if (!collector) return 1;
    const double cells_s =
        WaitForCells(collector->grpc, cells, absl::Now() - absl::Seconds(collector->ready_s));
    std::printf(
        "restart_bench: kill -9, restart replaying the batch log: serving (ready file) after "
        "%.2f s; statistics over all %llu cells after %.2f s\n",
        collector->ready_s, static_cast<unsigned long long>(cells), cells_s);
    std::fflush(stdout);
    if (cells_s < 0) return 1;
  }

  const absl::Time stop_start = absl::Now();
  auto stopped = collector->process->Stop(SIGTERM, absl::Minutes(5));
  const double stop_s = absl::ToDoubleSeconds(absl::Now() - stop_start);
  if (!stopped.ok() || !WIFEXITED(*stopped) || WEXITSTATUS(*stopped) != 0) {
    std::fprintf(stderr, "restart_bench: the collector did not stop cleanly:\n%s\n",
                 collector->process->Log().c_str());
    return 1;
  }
  const bool load = absl::GetFlag(FLAGS_snapshot_load_seconds) > 0;
  collector = StartCollector(
      dir, "snapshot.log",
      load ? absl::StrCat(absl::GetFlag(FLAGS_snapshot_every_seconds), "s") : "1h");
  if (!collector) return 1;
  const double cells_s =
      WaitForCells(collector->grpc, cells, absl::Now() - absl::Seconds(collector->ready_s));
  std::printf(
      "restart_bench: SIGTERM (clean stop with snapshot) took %.2f s; restart loading the "
      "snapshot: serving (ready file) after %.2f s; statistics over all %llu cells after %.2f s\n",
      stop_s, collector->ready_s, static_cast<unsigned long long>(cells), cells_s);
  std::fflush(stdout);
  if (load && !AcksDuringSnapshots(*collector, keys, cells)) return 1;
  auto final_stop = collector->process->Stop(SIGTERM, absl::Minutes(5));
  if (cells_s < 0 || !final_stop.ok()) return 1;
  return 0;
}

}  // namespace
}  // namespace constance::testing

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return constance::testing::Run();
}
