// peers_bench: constance beside the stock alternatives a team would build
// from Prometheus parts, on one workload (issue 8).
//
// The workload: L locations x K keys, price observations (minor units,
// EUR, shelf), every (location, key) observed --rounds times with the same
// value, 1000 + (7 l + 13 k) mod 500. The same load generator drives three
// paths, one after the other, each with its own fresh server processes:
//
//   constance    constance-collector (--state_dir: every ack waits for the
//                batch log's fsync), one Ingest stream per location,
//                --concurrency streams at a time, up to --window batches
//                of --batch observations unacknowledged per stream.
//   remote_write Prometheus with --web.enable-remote-write-receiver: POST
//                /api/v1/write, a snappy-compressed WriteRequest of --batch
//                samples per request (series bench_price{location,key}),
//                --concurrency keep-alive connections.
//   pushgateway  prometheus-pushgateway scraped by Prometheus every
//                --scrape_interval: each location PUTs its K keys as one
//                group, /metrics/job/bench/location/<id>, --concurrency
//                keep-alive connections.
//
// constance's batches and the remote-write requests are built, serialized
// (and compressed) before the clock starts, so the generator costs those
// two paths only the sending; Pushgateway's text bodies are built as they
// are sent.
//
// Both Prometheus paths record per-key mean and stddev every
// --rule_interval (avg by (key), stddev by (key)), the counterpart of
// constance's statistics tick (--stats_interval, 1 s).
//
// For each path: observations accepted per second (first request to last
// acceptance), CPU seconds per million observations of the server
// processes over the load (/proc/PID/stat; Pushgateway path: pushgateway +
// Prometheus), resident memory after the load minus before it, per series
// (VmRSS; VmHWM too), and freshness: one location's price of key k0 changes
// and the statistic is polled until the per-key mean reflects it
// (constance: /metrics constance_series_mean, the per-tick snapshot
// Prometheus alerts read, and the Query API's KeyDetail, computed on
// demand; Prometheus: the recording rule over the HTTP API). A path also
// checks that everything arrived: constance acks, Prometheus holds every
// series and (remote write) every sample.
//
// --idle also starts constance-agent (spool on disk, insecure stream to a
// collector), collectd (cpu, memory, load, interface; network plugin to a
// loopback port) and prometheus-node-exporter (scraped once), lets them
// idle for --idle_time and reads their resident memory and CPU.
//
//   peers_bench --locations=1000 --keys=100 --rounds=3
//   peers_bench --paths=constance --locations=10000 --keys=1000 --rounds=1
//   peers_bench --smoke     # tiny sizes, every path and --idle (ctest)
//
// Every process it starts is stopped before it returns (Subprocess).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "constance/v1/query.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "snappy.h"
#include "tests/bench/bench_util.h"
#include "tests/bench/load_stream.h"
#include "tests/bench/prompb/remote.pb.h"
#include "tests/integration/harness.h"

ABSL_FLAG(int, locations, 100, "Locations (L)");
ABSL_FLAG(int, keys, 100, "Keys per location (K); series = L x K");
ABSL_FLAG(int, rounds, 3, "Times every (location, key) is observed");
ABSL_FLAG(std::string, paths, "constance,remote_write,pushgateway",
          "Comma-separated paths to run: constance, remote_write, pushgateway");
ABSL_FLAG(int, concurrency, 16, "Locations loaded at a time: constance streams, HTTP connections");
ABSL_FLAG(int, batch, 1000, "Observations per constance batch and per remote-write request");
ABSL_FLAG(int, window, 8, "constance: unacknowledged batches per stream at most");
ABSL_FLAG(absl::Duration, max_load_time, absl::Minutes(10),
          "A path starts no new location after this long (it is then reported incomplete)");
ABSL_FLAG(absl::Duration, rule_interval, absl::Seconds(1),
          "Prometheus recording rules' evaluation interval");
ABSL_FLAG(absl::Duration, scrape_interval, absl::Seconds(1),
          "Prometheus's scrape interval (and timeout) of the Pushgateway");
ABSL_FLAG(absl::Duration, stats_interval, absl::Seconds(1), "constance's statistics tick");
ABSL_FLAG(int, apply_threads, 2,
          "constance: the collector's --apply_threads (threads applying logged batches)");
ABSL_FLAG(bool, collector_huge_pages, true,
          "Run constance-collector as its unit runs it: GLIBC_TUNABLES=glibc.malloc.hugetlb=1:"
          "glibc.malloc.arena_max=1 (glibc's malloc on transparent huge pages, one arena)");
ABSL_FLAG(absl::Duration, settle_timeout, absl::Minutes(5),
          "How long a path may take to show what it accepted (and then the change)");
ABSL_FLAG(bool, idle, false, "Also measure constance-agent, collectd, node-exporter at idle");
ABSL_FLAG(absl::Duration, idle_time, absl::Seconds(30), "The idle measurement window");
ABSL_FLAG(bool, smoke, false,
          "Tiny run of every path plus --idle (20 x 50 x 2, 2 s idle); exits 1 unless every "
          "path delivered everything");
ABSL_FLAG(std::string, prometheus, "/usr/bin/prometheus", "Prometheus binary");
ABSL_FLAG(std::string, pushgateway, "/usr/bin/prometheus-pushgateway", "Pushgateway binary");
ABSL_FLAG(std::string, node_exporter, "/usr/bin/prometheus-node-exporter", "node-exporter binary");
ABSL_FLAG(std::string, collectd, "/usr/sbin/collectd", "collectd binary");

namespace constance::testing {
namespace {

constexpr char kMetric[] = "bench_price";
constexpr int64_t kChange = 100;  // Minor units added to (location 0, k0).

// The workload every path is fed.
struct Workload {
  int locations = 0;
  int keys = 0;
  int rounds = 0;
  int64_t series() const { return static_cast<int64_t>(locations) * keys; }
  int64_t observations() const { return series() * rounds; }
  static std::string Location(int l) { return absl::StrFormat("loc-%05d", l); }
  static std::string Key(int k) { return absl::StrCat("k", k); }
  static int64_t Price(int l, int k) { return 1000 + (7 * l + 13 * k) % 500; }
};

struct PathResult {
  std::string name;
  bool ran = false;
  bool complete = false;   // Every location loaded before --max_load_time.
  bool delivered = false;  // The server shows everything it accepted.
  int loaded_locations = 0;
  int64_t accepted = 0;
  double seconds = 0;
  double cpu_seconds = 0;
  double stolen_percent = 0;  // Of the machine's CPU time over the load.
  int64_t rss_before_kb = 0;
  int64_t rss_after_kb = 0;
  int64_t hwm_kb = 0;
  double freshness_s = -1;        // The per-tick statistic (metrics / rule).
  double freshness_query_s = -1;  // constance KeyDetail (on demand).
  std::string error;

  double Rate() const { return seconds > 0 ? static_cast<double>(accepted) / seconds : 0; }
  double CpuPerMillion() const {
    return accepted > 0 ? cpu_seconds / (static_cast<double>(accepted) / 1e6) : 0;
  }
  double BytesPerSeries(int keys) const {
    const int64_t series = static_cast<int64_t>(loaded_locations) * keys;
    return series > 0 ? static_cast<double>(rss_after_kb - rss_before_kb) * 1024.0 /
                            static_cast<double>(series)
                      : 0;
  }
};

// Processes whose CPU and memory a path counts.
struct Servers {
  std::vector<Subprocess*> processes;
  double Cpu() const {
    double s = 0;
    for (Subprocess* p : processes) s += CpuSeconds(p->pid());
    return s;
  }
  int64_t Kb(const char* field) const {
    int64_t kb = 0;
    for (Subprocess* p : processes) kb += ProcStatusKb(p->pid(), field);
    return kb;
  }
};

// Runs `load(location)` for every location on `concurrency` threads, each
// taking the next location until all are done, one fails, or `deadline`.
// Returns the locations loaded (in no order) or the first error.
absl::StatusOr<std::vector<int>> ForEachLocation(
    int locations, int concurrency, absl::Time deadline,
    const std::function<absl::Status(int, int)>& load) {
  std::atomic<int> next{0};
  std::atomic<bool> failed{false};
  absl::Mutex mu;
  absl::Status error;
  std::vector<int> done;
  std::vector<std::thread> threads;
  for (int w = 0; w < concurrency; ++w) {
    threads.emplace_back([&, w] {
      for (;;) {
        if (failed.load() || absl::Now() > deadline) return;
        const int l = next.fetch_add(1);
        if (l >= locations) return;
        absl::Status s = load(w, l);
        absl::MutexLock lock(&mu);
        if (!s.ok()) {
          if (error.ok()) error = s;
          failed = true;
          return;
        }
        done.push_back(l);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  if (!error.ok()) return error;
  return done;
}

// Mean of key k0 over `loaded`, with location 0 changed by `change`.
double ExpectedMean(const std::vector<int>& loaded, int64_t change) {
  double sum = 0;
  for (int l : loaded) sum += static_cast<double>(Workload::Price(l, 0) + (l == 0 ? change : 0));
  return loaded.empty() ? 0 : sum / static_cast<double>(loaded.size());
}

bool Near(double a, double b) { return std::fabs(a - b) <= 1e-6 * std::max(1.0, std::fabs(b)); }

// Polls `read` every 10 ms until it returns a value near `want`; returns
// when that was seen.
absl::StatusOr<absl::Time> PollUntilNear(const std::function<absl::StatusOr<double>()>& read,
                                         double want, absl::Duration timeout,
                                         const std::string& what) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last = "nothing";
  for (;;) {
    absl::StatusOr<double> v = read();
    const absl::Time now = absl::Now();
    if (v.ok() && Near(*v, want)) return now;
    last = v.ok() ? absl::StrCat(*v) : std::string(v.status().message());
    if (now > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(what, ": want ", want, ", last read ", last,
                                                      " after ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

// The value of an instant query that returns one sample (or NotFound).
absl::StatusOr<double> PromQuery(HttpConnection& prometheus, const std::string& expr) {
  absl::StatusOr<HttpResponse> r =
      prometheus.Request("GET", "/api/v1/query?query=" + UrlEncode(expr), {}, "");
  if (!r.ok()) return r.status();
  if (r->status != 200) {
    return absl::InternalError(absl::StrCat(expr, ": HTTP ", r->status, " ", r->body));
  }
  const size_t at = r->body.find("\"value\":[");
  if (at == std::string::npos) return absl::NotFoundError(absl::StrCat(expr, ": no sample"));
  const size_t open = r->body.find(",\"", at);
  const size_t close = r->body.find('"', open + 2);
  double v = 0;
  if (open == std::string::npos || close == std::string::npos ||
      !absl::SimpleAtod(r->body.substr(open + 2, close - open - 2), &v)) {
    return absl::InternalError(absl::StrCat(expr, ": cannot parse ", r->body));
  }
  return v;
}

// Waits until GET `path` answers 200.
absl::Status WaitHttpOk(const std::string& address, const std::string& path,
                        absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    HttpConnection c(address);
    absl::StatusOr<HttpResponse> r = c.Request("GET", path, {}, "");
    if (r.ok() && r->status == 200) return absl::OkStatus();
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(address, path, " not ready"));
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
}

void WriteFile(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// Starts Prometheus with the per-key recording rules and `scrape_configs`
// (may be empty); returns its HTTP address once it is ready.
absl::StatusOr<std::string> StartPrometheus(const TempDir& dir, const std::string& scrape_configs,
                                            std::unique_ptr<Subprocess>* out) {
  const std::string rules = dir.File("rules.yml");
  WriteFile(rules, absl::StrCat("groups:\n  - name: bench\n    interval: ",
                                absl::FormatDuration(absl::GetFlag(FLAGS_rule_interval)),
                                "\n    rules:\n"
                                "      - record: key:bench_price:avg\n"
                                "        expr: avg by (key) (bench_price)\n"
                                "      - record: key:bench_price:stddev\n"
                                "        expr: stddev by (key) (bench_price)\n"));
  const std::string config = dir.File("prometheus.yml");
  WriteFile(config, absl::StrCat("global:\n  evaluation_interval: ",
                                 absl::FormatDuration(absl::GetFlag(FLAGS_rule_interval)),
                                 "\nrule_files:\n  - ", rules, "\n", scrape_configs));
  *out = std::make_unique<Subprocess>(
      std::vector<std::string>{absl::GetFlag(FLAGS_prometheus), "--config.file=" + config,
                               "--storage.tsdb.path=" + dir.File("tsdb"),
                               "--web.listen-address=127.0.0.1:0",
                               "--web.enable-remote-write-receiver"},
      dir.File("prometheus.log"));
  absl::StatusOr<std::string> address = WaitForListenAddress(**out, absl::Seconds(60));
  if (!address.ok()) return address.status();
  if (absl::Status s = WaitHttpOk(*address, "/-/ready", absl::Seconds(60)); !s.ok()) return s;
  return address;
}

// Timestamps: a location's samples of round r carry (its start in ms) + r,
// so each series only moves forward; the change comes after all of them.
int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

// ---- constance -------------------------------------------------------------

// Location l's rounds x keys observations (or, with a `change`, one: k0's
// price raised by it) as serialized batches from sequence 1, observed at
// `base_ms` plus the round in milliseconds.
std::vector<grpc::ByteBuffer> ConstanceBatches(const Workload& w, int l, int batch,
                                               uint64_t incarnation, int64_t change,
                                               int64_t base_ms) {
  const int64_t total = change != 0 ? 1 : static_cast<int64_t>(w.keys) * w.rounds;
  std::vector<grpc::ByteBuffer> out;
  for (int64_t first = 0; first < total; first += batch) {
    v1::AgentMessage msg;
    v1::Batch* out_batch = msg.mutable_batch();
    out_batch->set_location(Workload::Location(l));
    out_batch->set_incarnation(incarnation);
    out_batch->set_first_sequence(static_cast<uint64_t>(first + 1));
    const int64_t end = std::min<int64_t>(total, first + batch);
    for (int64_t i = first; i < end; ++i) {
      const int k = static_cast<int>(i % w.keys);
      const int64_t ms = base_ms + i / w.keys;
      v1::Observation* o = out_batch->add_observations();
      o->set_key(Workload::Key(k));
      o->mutable_observed_at()->set_seconds(ms / 1000);
      o->mutable_observed_at()->set_nanos(static_cast<int32_t>(ms % 1000) * 1'000'000);
      v1::Price* p = o->mutable_price();
      p->set_minor_units(Workload::Price(l, k) + change);
      p->set_currency("EUR");
      p->set_kind(v1::SHELF);
    }
    out.push_back(SerializeMessage(msg));
  }
  return out;
}

// One location's stream: a heartbeat first, as constance-agent opens
// every stream, then its batches (from ConstanceBatches, of `incarnation`),
// at most `window` unacknowledged; adds what was acknowledged to
// `acknowledged`.
absl::Status ConstanceLocation(grpc::GenericStub* stub, std::vector<grpc::ByteBuffer> batches,
                               int l, uint64_t incarnation, int64_t total, int batch, int window,
                               std::atomic<int64_t>* acknowledged) {
  LoadStream stream(stub, std::move(batches), Workload::Location(l), total, batch, window);
  v1::AgentMessage hello;
  hello.mutable_heartbeat()->set_location(Workload::Location(l));
  hello.mutable_heartbeat()->set_incarnation(incarnation);
  stream.SendFirst(SerializeMessage(hello));
  stream.Start();
  StreamResult r = stream.Wait();
  acknowledged->fetch_add(r.acknowledged);
  if (!r.error.empty()) return absl::InternalError(r.error);
  return absl::OkStatus();
}

// constance_series_mean of price key k0 from the collector's /metrics.
absl::StatusOr<double> ConstanceMetricsMean(HttpConnection& metrics) {
  absl::StatusOr<HttpResponse> r = metrics.Request("GET", "/metrics", {}, "");
  if (!r.ok()) return r.status();
  for (absl::string_view line : absl::StrSplit(r->body, '\n')) {
    if (!absl::StartsWith(line, "constance_series_mean{")) continue;
    if (!absl::StrContains(line, "family=\"price\"") ||
        !(absl::StrContains(line, "key=\"k0\",") || absl::StrContains(line, "key=\"k0\"}"))) {
      continue;
    }
    double v = 0;
    if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &v)) return v;
  }
  return absl::NotFoundError("no constance_series_mean for k0");
}

absl::StatusOr<double> ConstanceQueryMean(v1::Query::Stub* query) {
  v1::KeyDetailRequest request;
  v1::SeriesId* s = request.mutable_series();
  s->set_family(v1::FAMILY_PRICE);
  s->set_key(Workload::Key(0));
  s->set_currency("EUR");
  s->set_kind(v1::SHELF);
  v1::KeyDetailResponse response;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Status status = query->KeyDetail(&ctx, request, &response);
  if (!status.ok()) return absl::UnavailableError(status.error_message());
  if (response.groups_size() > 0) return response.groups(0).stats().mean();
  return response.stats().mean();
}

PathResult RunConstance(const Workload& w) {
  PathResult result;
  result.name = "constance";
  result.ran = true;
  TempDir dir;
  const std::string ready = dir.File("ready");
  std::vector<std::string> argv = {
      BinDir() + "/constance-collector",
      "--insecure",
      "--listen=127.0.0.1:0",
      "--metrics_listen=127.0.0.1:0",
      "--state_dir=" + dir.path(),
      "--max_rate_per_location=0",
      "--max_series=0",
      "--max_locations=0",
      "--log_level=warn",
      "--ready_file=" + ready,
      "--stats_interval=" + absl::FormatDuration(absl::GetFlag(FLAGS_stats_interval)),
      absl::StrCat("--apply_threads=", absl::GetFlag(FLAGS_apply_threads))};
  if (absl::GetFlag(FLAGS_collector_huge_pages)) argv = WithMallocHugePages(std::move(argv));
  Subprocess collector(std::move(argv), dir.File("collector.log"));
  auto addresses = WaitForReadyFile(ready, collector, absl::Seconds(60));
  if (!addresses.ok()) {
    result.error = std::string(addresses.status().message());
    return result;
  }
  const std::string grpc_address = (*addresses)["grpc"];
  const std::string metrics_address = (*addresses)["metrics"];
  Servers servers{{&collector}};
  const int concurrency = absl::GetFlag(FLAGS_concurrency);
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  for (int i = 0; i < concurrency; ++i) {
    stubs.push_back(std::make_unique<grpc::GenericStub>(
        grpc::CreateChannel(grpc_address, grpc::InsecureChannelCredentials())));
  }
  // Every batch is built and serialized before the clock starts, as the
  // remote-write requests are: the generator then costs both paths only
  // the sending.
  const int batch = absl::GetFlag(FLAGS_batch);
  const int64_t base_ms = NowMs();
  std::vector<std::vector<grpc::ByteBuffer>> prebuilt(static_cast<size_t>(w.locations));
  auto incarnation = [](int l) { return 0x1000 + static_cast<uint64_t>(l); };
  for (int l = 0; l < w.locations; ++l) {
    prebuilt[static_cast<size_t>(l)] = ConstanceBatches(w, l, batch, incarnation(l), 0, base_ms);
  }
  result.rss_before_kb = servers.Kb("VmRSS");
  const double cpu_before = servers.Cpu();
  const MachineCpu machine_before = ReadMachineCpu();
  std::atomic<int64_t> acknowledged{0};
  const absl::Time start = absl::Now();
  absl::StatusOr<std::vector<int>> loaded = ForEachLocation(
      w.locations, concurrency, start + absl::GetFlag(FLAGS_max_load_time), [&](int worker, int l) {
        return ConstanceLocation(stubs[static_cast<size_t>(worker)].get(),
                                 std::move(prebuilt[static_cast<size_t>(l)]), l, incarnation(l),
                                 static_cast<int64_t>(w.keys) * w.rounds, batch,
                                 absl::GetFlag(FLAGS_window), &acknowledged);
      });
  result.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  result.cpu_seconds = servers.Cpu() - cpu_before;
  result.stolen_percent = StolenPercent(machine_before, ReadMachineCpu());
  result.rss_after_kb = servers.Kb("VmRSS");
  result.hwm_kb = servers.Kb("VmHWM");
  result.accepted = acknowledged.load();
  if (!loaded.ok()) {
    result.error = std::string(loaded.status().message());
    return result;
  }
  result.loaded_locations = static_cast<int>(loaded->size());
  result.complete = result.loaded_locations == w.locations;
  result.delivered = result.accepted == static_cast<int64_t>(loaded->size()) * w.keys * w.rounds;

  // Freshness: settle on the loaded mean, change (location 0, k0), time
  // until the tick's snapshot (/metrics) and the Query API show it.
  const absl::Duration settle = absl::GetFlag(FLAGS_settle_timeout);
  auto query =
      v1::Query::NewStub(grpc::CreateChannel(grpc_address, grpc::InsecureChannelCredentials()));
  HttpConnection metrics(metrics_address);
  const bool has_location0 = std::count(loaded->begin(), loaded->end(), 0) > 0;
  absl::StatusOr<absl::Time> settled =
      PollUntilNear([&] { return ConstanceMetricsMean(metrics); }, ExpectedMean(*loaded, 0), settle,
                    "constance /metrics mean before the change");
  if (!has_location0) {
    result.error = "location 0 not loaded";
    return result;
  }
  // A tick slower than the settle timeout is reported, and the on-demand
  // query still timed.
  if (!settled.ok()) result.error = std::string(settled.status().message());
  const double want = ExpectedMean(*loaded, kChange);
  const absl::Time t0 = absl::Now();
  absl::Status sent =
      ConstanceLocation(stubs[0].get(), ConstanceBatches(w, 0, 1, 0x9000, kChange, NowMs()), 0,
                        0x9000, /*total=*/1, /*batch=*/1, /*window=*/1, &acknowledged);
  if (!sent.ok()) {
    result.error = std::string(sent.message());
    return result;
  }
  absl::StatusOr<absl::Time> by_query =
      PollUntilNear([&] { return ConstanceQueryMean(query.get()); }, want, settle,
                    "constance KeyDetail mean after the change");
  absl::StatusOr<absl::Time> by_metrics = settled;
  if (settled.ok()) {
    by_metrics = PollUntilNear([&] { return ConstanceMetricsMean(metrics); }, want, settle,
                               "constance /metrics mean after the change");
  }
  if (by_query.ok()) result.freshness_query_s = absl::ToDoubleSeconds(*by_query - t0);
  if (by_metrics.ok()) result.freshness_s = absl::ToDoubleSeconds(*by_metrics - t0);
  if (!by_query.ok() || !by_metrics.ok()) {
    result.error = std::string((by_query.ok() ? by_metrics : by_query).status().message());
  }
  result.hwm_kb = std::max(result.hwm_kb, servers.Kb("VmHWM"));
  auto stopped = collector.Stop(SIGTERM, absl::Seconds(30));
  if (!stopped.ok() || *stopped != 0) {
    result.error = absl::StrCat("the collector did not stop cleanly: ", collector.Log());
  }
  return result;
}

// ---- Prometheus remote write ----------------------------------------------

// Samples [from, to) of location l's flattened rounds x keys as a
// snappy-compressed WriteRequest.
std::string RemoteWriteBody(const Workload& w, int l, int64_t from, int64_t to, int64_t base_ms,
                            int64_t change) {
  prometheus::WriteRequest request;
  const std::string location = Workload::Location(l);
  for (int64_t i = from; i < to; ++i) {
    const int k = static_cast<int>(i % w.keys);
    prometheus::TimeSeries* ts = request.add_timeseries();
    prometheus::Label* label = ts->add_labels();
    label->set_name("__name__");
    label->set_value(kMetric);
    label = ts->add_labels();
    label->set_name("key");
    label->set_value(Workload::Key(k));
    label = ts->add_labels();
    label->set_name("location");
    label->set_value(location);
    prometheus::Sample* sample = ts->add_samples();
    sample->set_value(static_cast<double>(Workload::Price(l, k) + change));
    sample->set_timestamp(base_ms + i / w.keys);
  }
  std::string compressed;
  snappy::Compress(request.SerializeAsString().data(), request.ByteSizeLong(), &compressed);
  return compressed;
}

// POSTs one WriteRequest body.
absl::Status RemoteWrite(HttpConnection& receiver, const std::string& body) {
  absl::StatusOr<HttpResponse> r =
      receiver.Request("POST", "/api/v1/write",
                       {{"Content-Type", "application/x-protobuf"},
                        {"Content-Encoding", "snappy"},
                        {"X-Prometheus-Remote-Write-Version", "0.1.0"}},
                       body);
  if (!r.ok()) return r.status();
  if (r->status / 100 != 2) {
    return absl::InternalError(absl::StrCat("remote write: HTTP ", r->status, " ", r->body));
  }
  return absl::OkStatus();
}

// The load and freshness half both Prometheus paths share: after `load`
// ran, waits until Prometheus holds every series (and `samples`, if >= 0),
// then times a change through the recording rule.
void PrometheusFreshness(HttpConnection& prometheus, const std::vector<int>& loaded,
                         const Workload& w, int64_t samples,
                         const std::function<absl::Status()>& change, PathResult* result) {
  const absl::Duration settle = absl::GetFlag(FLAGS_settle_timeout);
  const double series = static_cast<double>(loaded.size()) * w.keys;
  absl::StatusOr<absl::Time> all =
      PollUntilNear([&] { return PromQuery(prometheus, "count(bench_price)"); }, series, settle,
                    "Prometheus count(bench_price)");
  if (all.ok() && samples >= 0) {
    all = PollUntilNear(
        [&] { return PromQuery(prometheus, "sum(count_over_time(bench_price[1h]))"); },
        static_cast<double>(samples), settle, "Prometheus samples of bench_price");
  }
  if (!all.ok()) {
    result->error = std::string(all.status().message());
    return;
  }
  result->delivered = true;
  const std::string rule = "key:bench_price:avg{key=\"k0\"}";
  absl::StatusOr<absl::Time> settled =
      PollUntilNear([&] { return PromQuery(prometheus, rule); }, ExpectedMean(loaded, 0), settle,
                    "recording rule before the change");
  if (!settled.ok() || std::count(loaded.begin(), loaded.end(), 0) == 0) {
    result->error =
        settled.ok() ? "location 0 not loaded" : std::string(settled.status().message());
    return;
  }
  const absl::Time t0 = absl::Now();
  if (absl::Status s = change(); !s.ok()) {
    result->error = std::string(s.message());
    return;
  }
  absl::StatusOr<absl::Time> seen =
      PollUntilNear([&] { return PromQuery(prometheus, rule); }, ExpectedMean(loaded, kChange),
                    settle, "recording rule after the change");
  if (!seen.ok()) {
    result->error = std::string(seen.status().message());
    return;
  }
  result->freshness_s = absl::ToDoubleSeconds(*seen - t0);
}

PathResult RunRemoteWrite(const Workload& w) {
  PathResult result;
  result.name = "remote_write";
  result.ran = true;
  TempDir dir;
  std::unique_ptr<Subprocess> prom;
  absl::StatusOr<std::string> address = StartPrometheus(dir, "", &prom);
  if (!address.ok()) {
    result.error = std::string(address.status().message());
    return result;
  }
  Servers servers{{prom.get()}};
  const int concurrency = absl::GetFlag(FLAGS_concurrency);
  const int batch = absl::GetFlag(FLAGS_batch);
  std::vector<std::unique_ptr<HttpConnection>> connections;
  for (int i = 0; i < concurrency; ++i)
    connections.push_back(std::make_unique<HttpConnection>(*address));
  std::atomic<int64_t> accepted{0};
  // Every request is built, serialized and compressed before the clock
  // starts, as constance's batches are.
  const int64_t total = static_cast<int64_t>(w.keys) * w.rounds;
  const int64_t base_ms = NowMs();
  std::vector<std::vector<std::string>> prebuilt(static_cast<size_t>(w.locations));
  for (int l = 0; l < w.locations; ++l) {
    for (int64_t from = 0; from < total; from += batch) {
      prebuilt[static_cast<size_t>(l)].push_back(
          RemoteWriteBody(w, l, from, std::min<int64_t>(total, from + batch), base_ms, 0));
    }
  }
  const int64_t max_ms = base_ms + w.rounds - 1;
  result.rss_before_kb = servers.Kb("VmRSS");
  const double cpu_before = servers.Cpu();
  const MachineCpu machine_before = ReadMachineCpu();
  const absl::Time start = absl::Now();
  absl::StatusOr<std::vector<int>> loaded = ForEachLocation(
      w.locations, concurrency, start + absl::GetFlag(FLAGS_max_load_time), [&](int worker, int l) {
        const std::vector<std::string>& bodies = prebuilt[static_cast<size_t>(l)];
        for (size_t i = 0; i < bodies.size(); ++i) {
          absl::Status s = RemoteWrite(*connections[static_cast<size_t>(worker)], bodies[i]);
          if (!s.ok()) return s;
          accepted.fetch_add(std::min<int64_t>(batch, total - static_cast<int64_t>(i) * batch));
        }
        return absl::OkStatus();
      });
  result.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  result.cpu_seconds = servers.Cpu() - cpu_before;
  result.stolen_percent = StolenPercent(machine_before, ReadMachineCpu());
  result.rss_after_kb = servers.Kb("VmRSS");
  result.accepted = accepted.load();
  if (!loaded.ok()) {
    result.error = std::string(loaded.status().message());
    return result;
  }
  result.loaded_locations = static_cast<int>(loaded->size());
  result.complete = result.loaded_locations == w.locations;
  HttpConnection query(*address);
  PrometheusFreshness(
      query, *loaded, w, result.accepted,
      [&] {
        // One sample for (location 0, k0), after every earlier one.
        const int64_t ms = std::max(NowMs(), max_ms + 1);
        return RemoteWrite(*connections[0], RemoteWriteBody(w, 0, 0, 1, ms, kChange));
      },
      &result);
  result.hwm_kb = servers.Kb("VmHWM");
  return result;
}

// ---- Pushgateway ------------------------------------------------------------

absl::Status Push(HttpConnection& pushgateway, const Workload& w, int l, int64_t change) {
  std::string body = absl::StrCat("# TYPE ", kMetric, " gauge\n");
  for (int k = 0; k < w.keys; ++k) {
    absl::StrAppend(&body, kMetric, "{key=\"", Workload::Key(k), "\"} ",
                    Workload::Price(l, k) + (k == 0 ? change : 0), "\n");
  }
  absl::StatusOr<HttpResponse> r =
      pushgateway.Request("PUT", "/metrics/job/bench/location/" + Workload::Location(l),
                          {{"Content-Type", "text/plain; version=0.0.4"}}, body);
  if (!r.ok()) return r.status();
  if (r->status / 100 != 2) {
    return absl::InternalError(absl::StrCat("push: HTTP ", r->status, " ", r->body));
  }
  return absl::OkStatus();
}

PathResult RunPushgateway(const Workload& w) {
  PathResult result;
  result.name = "pushgateway";
  result.ran = true;
  TempDir dir;
  Subprocess pushgateway({absl::GetFlag(FLAGS_pushgateway), "--web.listen-address=127.0.0.1:0",
                          "--persistence.file=" + dir.File("pushgateway.data")},
                         dir.File("pushgateway.log"));
  absl::StatusOr<std::string> pg_address = WaitForListenAddress(pushgateway, absl::Seconds(60));
  if (!pg_address.ok()) {
    result.error = std::string(pg_address.status().message());
    return result;
  }
  const std::string interval = absl::FormatDuration(absl::GetFlag(FLAGS_scrape_interval));
  std::unique_ptr<Subprocess> prom;
  absl::StatusOr<std::string> address = StartPrometheus(
      dir,
      absl::StrCat("scrape_configs:\n  - job_name: pushgateway\n    honor_labels: true\n"
                   "    scrape_interval: ",
                   interval, "\n    scrape_timeout: ", interval,
                   "\n    static_configs:\n      - targets: ['", *pg_address, "']\n"),
      &prom);
  if (!address.ok()) {
    result.error = std::string(address.status().message());
    return result;
  }
  Servers servers{{&pushgateway, prom.get()}};
  const int concurrency = absl::GetFlag(FLAGS_concurrency);
  std::vector<std::unique_ptr<HttpConnection>> connections;
  for (int i = 0; i < concurrency; ++i) {
    connections.push_back(std::make_unique<HttpConnection>(*pg_address));
  }
  std::atomic<int64_t> accepted{0};
  result.rss_before_kb = servers.Kb("VmRSS");
  const double cpu_before = servers.Cpu();
  const MachineCpu machine_before = ReadMachineCpu();
  const absl::Time start = absl::Now();
  absl::StatusOr<std::vector<int>> loaded = ForEachLocation(
      w.locations, concurrency, start + absl::GetFlag(FLAGS_max_load_time), [&](int worker, int l) {
        for (int r = 0; r < w.rounds; ++r) {
          absl::Status s = Push(*connections[static_cast<size_t>(worker)], w, l, 0);
          if (!s.ok()) return s;
          accepted.fetch_add(w.keys);
        }
        return absl::OkStatus();
      });
  result.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  result.cpu_seconds = servers.Cpu() - cpu_before;
  result.stolen_percent = StolenPercent(machine_before, ReadMachineCpu());
  result.rss_after_kb = servers.Kb("VmRSS");
  result.accepted = accepted.load();
  if (!loaded.ok()) {
    result.error = std::string(loaded.status().message());
    return result;
  }
  result.loaded_locations = static_cast<int>(loaded->size());
  result.complete = result.loaded_locations == w.locations;
  HttpConnection query(*address);
  PrometheusFreshness(
      query, *loaded, w, -1, [&] { return Push(*connections[0], w, 0, kChange); }, &result);
  // Memory once Prometheus has scraped everything the gateway holds.
  result.rss_after_kb = std::max(result.rss_after_kb, servers.Kb("VmRSS"));
  result.hwm_kb = servers.Kb("VmHWM");
  return result;
}

// ---- Agents at idle --------------------------------------------------------

struct IdleResult {
  std::string name;
  int64_t rss_kb = 0;
  int64_t hwm_kb = 0;
  double cpu_seconds = 0;  // Over the idle window.
  std::string error;
};

std::vector<IdleResult> RunIdle(absl::Duration idle_time) {
  TempDir dir;
  std::vector<IdleResult> out;
  // The agent streams to a real collector.
  const std::string collector_ready = dir.File("collector.ready");
  Subprocess collector(
      {BinDir() + "/constance-collector", "--insecure", "--listen=127.0.0.1:0",
       "--metrics_listen=127.0.0.1:0", "--log_level=warn", "--ready_file=" + collector_ready},
      dir.File("collector.log"));
  auto collector_addresses = WaitForReadyFile(collector_ready, collector, absl::Seconds(60));
  if (!collector_addresses.ok()) {
    out.push_back(
        {"constance-agent", 0, 0, 0, std::string(collector_addresses.status().message())});
    return out;
  }
  const std::string agent_ready = dir.File("agent.ready");
  Subprocess agent(
      {BinDir() + "/constance-agent", "run", "--location=idle-0001",
       "--collector=" + (*collector_addresses)["grpc"], "--insecure",
       "--spool_path=" + dir.File("spool.db"), "--listen=127.0.0.1:0",
       "--metrics_listen=127.0.0.1:0", "--log_level=warn", "--ready_file=" + agent_ready},
      dir.File("agent.log"));
  auto agent_addresses = WaitForReadyFile(agent_ready, agent, absl::Seconds(60));

  Subprocess node_exporter({absl::GetFlag(FLAGS_node_exporter), "--web.listen-address=127.0.0.1:0"},
                           dir.File("node_exporter.log"));
  absl::StatusOr<std::string> ne_address = WaitForListenAddress(node_exporter, absl::Seconds(60));
  absl::Status ne_scraped = ne_address.status();
  if (ne_address.ok()) ne_scraped = WaitHttpOk(*ne_address, "/metrics", absl::Seconds(30));

  // collectd cannot listen on port 0 (and has nothing to listen for): its
  // network plugin sends to a loopback UDP port nobody reads.
  absl::StatusOr<int> udp = FreeLoopbackPort(true);
  const std::string pid_file = dir.File("collectd.pid");
  const std::string conf = dir.File("collectd.conf");
  WriteFile(conf, absl::StrCat("Hostname \"bench\"\nFQDNLookup false\nBaseDir \"", dir.path(),
                               "\"\nPIDFile \"", pid_file,
                               "\"\nPluginDir \"/usr/lib/collectd\"\n"
                               "TypesDB \"/usr/share/collectd/types.db\"\nInterval 10\n"
                               "LoadPlugin cpu\nLoadPlugin memory\nLoadPlugin load\n"
                               "LoadPlugin interface\nLoadPlugin network\n"
                               "<Plugin network>\n  Server \"127.0.0.1\" \"",
                               udp.ok() ? *udp : 25826, "\"\n</Plugin>\n"));
  Subprocess collectd({absl::GetFlag(FLAGS_collectd), "-f", "-C", conf}, dir.File("collectd.log"));
  // In the foreground (-f) collectd writes no PID file: its log says when
  // it has loaded its plugins.
  absl::Status collectd_up = absl::OkStatus();
  for (const absl::Time deadline = absl::Now() + absl::Seconds(30);;) {
    if (absl::StrContains(collectd.Log(), "entering read-loop")) break;
    if (!collectd.Running() || absl::Now() > deadline) {
      collectd_up =
          absl::UnavailableError(absl::StrCat("collectd did not start: ", collectd.Log()));
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }

  struct Entry {
    std::string name;
    Subprocess* process;
    absl::Status up;
    double cpu0 = 0;
  };
  std::vector<Entry> entries = {
      {"constance-agent", &agent, agent_addresses.status()},
      {"collectd", &collectd, collectd_up},
      {"prometheus-node-exporter", &node_exporter, ne_scraped},
  };
  for (Entry& e : entries) e.cpu0 = CpuSeconds(e.process->pid());
  // The window itself is the measurement, not a synchronisation.
  absl::SleepFor(idle_time);
  for (Entry& e : entries) {
    IdleResult r;
    r.name = e.name;
    if (!e.up.ok() || !e.process->Running()) {
      r.error = e.up.ok() ? absl::StrCat(e.name, " exited: ", e.process->Log())
                          : std::string(e.up.message());
    } else {
      r.cpu_seconds = CpuSeconds(e.process->pid()) - e.cpu0;
      r.rss_kb = ProcStatusKb(e.process->pid(), "VmRSS");
      r.hwm_kb = ProcStatusKb(e.process->pid(), "VmHWM");
    }
    out.push_back(r);
  }
  return out;
}

// ---- Report ----------------------------------------------------------------

std::string Ratio(double a, double b) {
  if (a <= 0 || b <= 0) return "-";
  return absl::StrFormat("%.1fx", a / b);
}

int Run() {
  Workload w{absl::GetFlag(FLAGS_locations), absl::GetFlag(FLAGS_keys),
             absl::GetFlag(FLAGS_rounds)};
  std::vector<std::string> paths =
      absl::StrSplit(absl::GetFlag(FLAGS_paths), ',', absl::SkipEmpty());
  bool idle = absl::GetFlag(FLAGS_idle);
  absl::Duration idle_time = absl::GetFlag(FLAGS_idle_time);
  const bool smoke = absl::GetFlag(FLAGS_smoke);
  if (smoke) {
    w = Workload{20, 50, 2};
    paths = {"constance", "remote_write", "pushgateway"};
    idle = true;
    idle_time = absl::Seconds(2);
  }
  if (w.locations < 1 || w.keys < 1 || w.rounds < 1 || absl::GetFlag(FLAGS_concurrency) < 1 ||
      absl::GetFlag(FLAGS_batch) < 1 || absl::GetFlag(FLAGS_window) < 1) {
    std::fprintf(stderr, "peers_bench: sizes must be >= 1\n");
    return 2;
  }
  std::printf(
      "peers_bench: %d locations x %d keys = %lld series, %d rounds = %lld observations; "
      "concurrency %d, batch %d, window %d, rules every %s, scrape every %s\n",
      w.locations, w.keys, static_cast<long long>(w.series()), w.rounds,
      static_cast<long long>(w.observations()), absl::GetFlag(FLAGS_concurrency),
      absl::GetFlag(FLAGS_batch), absl::GetFlag(FLAGS_window),
      absl::FormatDuration(absl::GetFlag(FLAGS_rule_interval)).c_str(),
      absl::FormatDuration(absl::GetFlag(FLAGS_scrape_interval)).c_str());
  std::fflush(stdout);
  std::vector<PathResult> results;
  for (const std::string& path : paths) {
    PathResult r;
    if (path == "constance") {
      r = RunConstance(w);
    } else if (path == "remote_write") {
      r = RunRemoteWrite(w);
    } else if (path == "pushgateway") {
      r = RunPushgateway(w);
    } else {
      std::fprintf(stderr, "peers_bench: unknown path %s\n", path.c_str());
      return 2;
    }
    std::printf("  %s: %lld accepted in %.2f s%s, delivered %s%s%s\n", r.name.c_str(),
                static_cast<long long>(r.accepted), r.seconds,
                r.complete ? "" : " (INCOMPLETE: --max_load_time)", r.delivered ? "yes" : "NO",
                r.error.empty() ? "" : "; error: ", r.error.c_str());
    std::fflush(stdout);
    results.push_back(std::move(r));
  }

  std::printf(
      "\n| path | series | observations accepted | observations/s | server CPU s per million "
      "| RSS after load | RSS growth per series | VmHWM | freshness (per-tick statistic) "
      "| freshness (on-demand query) | CPU stolen over the load |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const PathResult& r : results) {
    std::printf(
        "| %s | %lld | %lld | %.0f | %.2f | %.1f MiB | %.0f B | %.1f MiB | %s | %s | %.0f%% |\n",
        r.name.c_str(), static_cast<long long>(r.loaded_locations) * w.keys,
        static_cast<long long>(r.accepted), r.Rate(), r.CpuPerMillion(),
        static_cast<double>(r.rss_after_kb) / 1024, r.BytesPerSeries(w.keys),
        static_cast<double>(r.hwm_kb) / 1024,
        r.freshness_s >= 0 ? absl::StrFormat("%.2f s", r.freshness_s).c_str() : "-",
        r.freshness_query_s >= 0 ? absl::StrFormat("%.3f s", r.freshness_query_s).c_str() : "-",
        r.stolen_percent);
  }
  const PathResult* c = nullptr;
  for (const PathResult& r : results) {
    if (r.name == "constance") c = &r;
  }
  if (c != nullptr) {
    std::printf(
        "\n| constance vs | observations/s | CPU per observation | memory per series "
        "| freshness |\n|---|---|---|---|---|\n");
    for (const PathResult& r : results) {
      if (&r == c) continue;
      std::printf("| %s | %s | %s less | %s less | %s sooner |\n", r.name.c_str(),
                  Ratio(c->Rate(), r.Rate()).c_str(),
                  Ratio(r.CpuPerMillion(), c->CpuPerMillion()).c_str(),
                  Ratio(r.BytesPerSeries(w.keys), c->BytesPerSeries(w.keys)).c_str(),
                  Ratio(r.freshness_s, c->freshness_s).c_str());
    }
  }
  bool ok = true;
  for (const PathResult& r : results) ok = ok && r.error.empty() && r.delivered;
  if (idle) {
    std::vector<IdleResult> idles = RunIdle(idle_time);
    std::printf(
        "\nAt idle for %s:\n\n| process | VmRSS | VmHWM | CPU over the window |\n"
        "|---|---|---|---|\n",
        absl::FormatDuration(idle_time).c_str());
    for (const IdleResult& r : idles) {
      if (!r.error.empty()) {
        std::printf("| %s | error: %s | | |\n", r.name.c_str(), r.error.c_str());
        ok = false;
        continue;
      }
      std::printf("| %s | %.1f MiB | %.1f MiB | %.3f s |\n", r.name.c_str(),
                  static_cast<double>(r.rss_kb) / 1024, static_cast<double>(r.hwm_kb) / 1024,
                  r.cpu_seconds);
    }
  }
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace constance::testing

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return constance::testing::Run();
}
