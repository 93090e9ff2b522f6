// ingest_bench: acknowledged observations per second, agent streams to a
// real collector over loopback, with durability on.
//
// Starts constance-collector (from the build) with a fresh --state_dir, so
// every acknowledgement waits for the batch log's group commit (SQLite WAL,
// synchronous=FULL), and without a rate limit. N load-generator streams
// speak constance.v1.Ingest/Stream directly, as agents would (one location
// and incarnation each, consecutive sequences), each keeping up to
// --window batches unacknowledged. Batches are built and serialized before
// the clock starts and sent as bytes through gRPC's generic stub (the same
// bytes on the wire as the generated stub's), so the generator costs gRPC's
// work only. It reports:
//   - acknowledged observations per second (first write to last ack);
//   - p50/p99 ack latency: from a batch's write to its ack;
//   - collector CPU seconds per million observations (/proc/PID/stat,
//     user + system, over the load only);
//   - the load generator's own CPU (this process), in total and per million.
//
//   ingest_bench --streams=4 --observations=2000000 --batch=500 --window=8
//   ingest_bench --family=price ...   # prices with observed_at (default: scores)
//   ingest_bench --smoke        # a tiny run (ctest)
//   ingest_bench --address=127.0.0.1:PORT ...   # a collector started by hand
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "tests/bench/load_stream.h"
#include "tests/bench/proc_stats.h"
#include "tests/integration/harness.h"

ABSL_FLAG(int, streams, 4, "Concurrent agent streams (one location each)");
ABSL_FLAG(int64_t, observations, 1'000'000, "Observations in total, over all streams");
ABSL_FLAG(int, batch, 500, "Observations per batch");
ABSL_FLAG(int, window, 8, "Unacknowledged batches per stream at most");
ABSL_FLAG(std::string, family, "score",
          "What the observations are: score (key and value) or price (with currency, kind "
          "and observed_at)");
ABSL_FLAG(bool, smoke, false, "A tiny run: 2 streams, 20,000 observations");
ABSL_FLAG(std::string, address, "",
          "Load a collector already running at HOST:PORT (e.g. under a profiler, started with "
          "--max_rate_per_location=0) instead of starting one; its CPU is then not reported");

namespace constance::testing {
namespace {

// One agent stream's batches, serialized before the clock starts: sending
// then costs no protobuf work, so the generator's CPU is gRPC's alone and
// what is measured is the collector. The bytes are exactly what the
// generated stub would send (an AgentMessage holding the batch).
// Observations are scores (key and value) or, with `prices`, shelf prices
// in EUR stamped with an observed_at a minute ago onwards, as agents send
// them (three nested messages and two strings each on the wire).
std::vector<grpc::ByteBuffer> BuildBatches(int index, int64_t total, int batch, bool prices) {
  const std::string location = absl::StrCat("bench-", index);
  const int64_t base_ms = absl::ToUnixMillis(absl::Now() - absl::Minutes(1));
  const uint64_t incarnation = 0x1000 + static_cast<uint64_t>(index);
  std::vector<grpc::ByteBuffer> out;
  for (int64_t b = 0; b * batch < total; ++b) {
    v1::AgentMessage msg;
    v1::Batch* batch_msg = msg.mutable_batch();
    batch_msg->set_location(location);
    batch_msg->set_incarnation(incarnation);
    batch_msg->set_first_sequence(static_cast<uint64_t>(b * batch + 1));
    const int64_t count = std::min<int64_t>(batch, total - b * batch);
    for (int64_t i = 0; i < count; ++i) {
      v1::Observation* o = batch_msg->add_observations();
      const int64_t n = b * batch + i;
      o->set_key(absl::StrCat("k", n % 100));
      if (prices) {
        const int64_t ms = base_ms + n / 100;  // Each key's observations move forward.
        o->mutable_observed_at()->set_seconds(ms / 1000);
        o->mutable_observed_at()->set_nanos(static_cast<int32_t>(ms % 1000) * 1'000'000);
        v1::Price* p = o->mutable_price();
        p->set_minor_units(1000 + n % 100);
        p->set_currency("EUR");
        p->set_kind(v1::SHELF);
      } else {
        o->set_score(static_cast<double>(n % 1000));
      }
    }
    out.push_back(SerializeMessage(msg));
  }
  return out;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1))];
}

int Run() {
  int streams = absl::GetFlag(FLAGS_streams);
  int64_t total = absl::GetFlag(FLAGS_observations);
  const int batch = absl::GetFlag(FLAGS_batch);
  const int window = absl::GetFlag(FLAGS_window);
  if (absl::GetFlag(FLAGS_smoke)) {
    streams = 2;
    total = 20'000;
  }
  if (streams < 1 || total < streams || batch < 1 || window < 1) {
    std::fprintf(stderr,
                 "ingest_bench: --streams, --observations, --batch, --window must be >= 1\n");
    return 2;
  }
  const std::string family = absl::GetFlag(FLAGS_family);
  if (family != "score" && family != "price") {
    std::fprintf(stderr, "ingest_bench: --family=%s: use score or price\n", family.c_str());
    return 2;
  }
  TempDir dir;
  std::string address = absl::GetFlag(FLAGS_address);
  std::unique_ptr<Subprocess> collector;
  if (address.empty()) {
    const std::string ready = dir.File("ready");
    collector = std::make_unique<Subprocess>(
        std::vector<std::string>{BinDir() + "/constance-collector", "--insecure",
                                 "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
                                 "--state_dir=" + dir.path(), "--max_rate_per_location=0",
                                 "--log_level=warn", "--ready_file=" + ready},
        dir.File("collector.log"));
    auto addresses = WaitForReadyFile(ready, *collector, absl::Seconds(30));
    if (!addresses.ok()) {
      std::fprintf(stderr, "ingest_bench: %s\n", std::string(addresses.status().message()).c_str());
      return 1;
    }
    address = (*addresses)["grpc"];
  }
  auto collector_cpu = [&] { return collector != nullptr ? CpuSeconds(collector->pid()) : 0.0; };

  // Every batch is built and serialized before the clock starts (not
  // counted as the generator's CPU below).
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  std::vector<std::unique_ptr<LoadStream>> loads;
  for (int i = 0; i < streams; ++i) {
    const int64_t share = total / streams + (i < total % streams ? 1 : 0);
    // A channel per stream, as each agent has its own.
    stubs.push_back(std::make_unique<grpc::GenericStub>(
        grpc::CreateChannel(address, grpc::InsecureChannelCredentials())));
    loads.push_back(std::make_unique<LoadStream>(stubs.back().get(), BuildBatches(i, share, batch, family == "price"),
                                                 absl::StrCat("bench-", i), share, batch, window));
  }

  const double cpu_before = collector_cpu();
  const double self_before = CpuSeconds(getpid());
  const absl::Time start = absl::Now();
  for (auto& load : loads) load->Start();
  std::vector<StreamResult> results;
  for (auto& load : loads) results.push_back(load->Wait());
  const absl::Duration elapsed = absl::Now() - start;
  const double cpu = collector_cpu() - cpu_before;
  const double self_cpu = CpuSeconds(getpid()) - self_before;

  int64_t acknowledged = 0;
  std::vector<double> latencies;
  int failures = 0;
  for (const StreamResult& r : results) {
    acknowledged += r.acknowledged;
    latencies.insert(latencies.end(), r.latencies_ms.begin(), r.latencies_ms.end());
    if (!r.error.empty()) {
      std::fprintf(stderr, "ingest_bench: %s\n", r.error.c_str());
      ++failures;
    }
  }
  absl::StatusOr<int> stopped = 0;
  if (collector != nullptr) stopped = collector->Stop(SIGTERM, absl::Seconds(15));
  std::printf(
      "ingest_bench: %d streams, batch %d, window %d, %s: %lld observations acknowledged in "
      "%.2f s = "
      "%.0f observations/s; ack latency p50 %.2f ms, p99 %.2f ms; collector CPU %.2f s = %.2f s "
      "per million observations; load generator CPU %.2f s = %.2f s per million (batches "
      "prebuilt)\n",
      streams, batch, window, family.c_str(), static_cast<long long>(acknowledged),
      absl::ToDoubleSeconds(elapsed),
      static_cast<double>(acknowledged) / absl::ToDoubleSeconds(elapsed),
      Percentile(latencies, 0.5), Percentile(latencies, 0.99), cpu,
      cpu / (static_cast<double>(acknowledged) / 1e6), self_cpu,
      self_cpu / (static_cast<double>(acknowledged) / 1e6));
  if (failures > 0 || acknowledged != total) return 1;
  if (!stopped.ok() || *stopped != 0) {
    std::fprintf(stderr, "ingest_bench: the collector did not stop cleanly:\n%s\n",
                 collector->Log().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace constance::testing

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return constance::testing::Run();
}
