// metrics_bench: what one scrape of the collector's /metrics costs at
// chain scale, with findings active.
//
// Builds an Engine in process with --keys price series over --locations
// locations, declared in a catalog with a `region` label (--regions
// values) and a peer-group rule on it, so every key is published once per
// region (a location belongs to one group per key). The first --deviants locations charge half as
// much again as everyone else on every key; two evaluations (persistence
// 2) open their outlier findings. It then times what a scrape does:
// CollectorMetrics::Render() from the published snapshot (wall and thread
// CPU time), and a whole HTTP GET /metrics from the collector's metrics
// server on loopback; and reports the exposition's size and sample count.
//
//   metrics_bench --keys=10000 --locations=50 --regions=5 --renders=10
//   metrics_bench --smoke        # a tiny run (ctest)
//
// Exits 1 when no finding is active (the figure would not be the one
// asked for), never for being slow.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "collector/engine.h"
#include "collector/metrics.h"
#include "collector/metrics_server.h"
#include "collector/services.h"
#include "tests/integration/harness.h"

ABSL_FLAG(int, keys, 10'000, "Price series (items)");
ABSL_FLAG(int, locations, 50, "Locations, each reporting every key");
ABSL_FLAG(int, regions, 5, "Values of the region label: the peer groups of every key");
ABSL_FLAG(int, deviants, 1, "Locations overcharging on every key (one outlier finding per key)");
ABSL_FLAG(int, renders, 10, "Scrapes timed");
ABSL_FLAG(
    bool, list_prices, false,
    "Also list a chain-wide price for every key in the catalog (the price the stores charge)");
ABSL_FLAG(bool, smoke, false, "A tiny run: 200 keys, 20 locations, 2 regions");

namespace constance::collector {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1'767'225'600);

// CPU time of the calling thread: the render's own cost, whatever else
// the machine is doing.
double ThreadCpuMs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

// GET /metrics from 127.0.0.1:port over a plain socket, reading the
// answer into one reused buffer until the server closes: the bytes
// received (status line, headers, chunk framing and body), or -1 unless
// it ended with the chunked body's last chunk.
int64_t RawScrape(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  static const char kRequest[] =
      "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0 ||
      send(fd, kRequest, sizeof(kRequest) - 1, 0) != static_cast<ssize_t>(sizeof(kRequest) - 1)) {
    close(fd);
    return -1;
  }
  static std::vector<char> buffer(1 << 20);
  std::string tail;  // The last bytes received.
  int64_t total = 0;
  for (;;) {
    const ssize_t n = recv(fd, buffer.data(), buffer.size(), 0);
    if (n <= 0) break;
    total += n;
    tail.append(buffer.data() + std::max<ssize_t>(0, n - 5), buffer.data() + n);
    if (tail.size() > 5) tail.erase(0, tail.size() - 5);
  }
  close(fd);
  return tail == "0\r\n\r\n" ? total : -1;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Run() {
  int keys = absl::GetFlag(FLAGS_keys);
  int locations = absl::GetFlag(FLAGS_locations);
  int regions = absl::GetFlag(FLAGS_regions);
  const int deviants = absl::GetFlag(FLAGS_deviants);
  int renders = absl::GetFlag(FLAGS_renders);
  if (absl::GetFlag(FLAGS_smoke)) {
    keys = 200;
    locations = 20;
    regions = 2;
    renders = 2;
  }
  if (keys < 1 || regions < 1 || locations < regions || deviants < 0 || deviants >= locations ||
      renders < 1) {
    std::fprintf(stderr,
                 "metrics_bench: need keys >= 1, locations >= regions >= 1, "
                 "0 <= deviants < locations, renders >= 1\n");
    return 2;
  }

  Catalog catalog = DefaultCatalog();
  for (int l = 0; l < locations; ++l) {
    LocationEntry entry;
    entry.id = absl::StrCat("store-", l);
    entry.labels["region"] = absl::StrCat("r", l % regions);
    catalog.locations.push_back(std::move(entry));
  }
  PeerGroupRule region;
  region.name = "region";
  region.label = "region";
  catalog.peer_groups.push_back(region);
  for (int k = 0; absl::GetFlag(FLAGS_list_prices) && k < keys; ++k) {
    PricePromise& p = catalog.price_promises.emplace_back();
    p.key = absl::StrCat("sku-", k);
    p.currency = "EUR";
    p.list_minor_units = 100;
  }
  catalog.Index();

  absl::Time now = kStart + absl::Minutes(1);
  Engine::Options options;
  options.catalog = std::make_shared<const Catalog>(std::move(catalog));
  options.clock = [&now] { return now; };
  Engine engine(options);
  IngestService ingest(&engine, IngestOptions{});

  const absl::Time fill_start = absl::Now();
  for (int l = 0; l < locations; ++l) {
    v1::Batch batch;
    batch.set_location(absl::StrCat("store-", l));
    batch.set_incarnation(1);
    for (int k = 0; k < keys; ++k) {
      if (batch.observations_size() == 1000) {
        if (auto ack = engine.ApplyBatch(batch); !ack.ok()) {
          std::fprintf(stderr, "metrics_bench: %s\n", std::string(ack.status().message()).c_str());
          return 1;
        }
        batch.clear_observations();
      }
      if (batch.observations_size() == 0) batch.set_first_sequence(1 + static_cast<uint64_t>(k));
      v1::Observation* o = batch.add_observations();
      o->set_key(absl::StrCat("sku-", k));
      o->mutable_observed_at()->set_seconds(absl::ToUnixSeconds(kStart));
      o->mutable_price()->set_minor_units(l < deviants ? 150 : 100);
      o->mutable_price()->set_currency("EUR");
    }
    if (auto ack = engine.ApplyBatch(batch); !ack.ok()) {
      std::fprintf(stderr, "metrics_bench: %s\n", std::string(ack.status().message()).c_str());
      return 1;
    }
  }
  // Findings open after `persistence` consecutive evaluations.
  for (int i = 0; i < options.catalog->thresholds.persistence; ++i) {
    now += absl::Minutes(1);
    engine.Evaluate();
  }
  const double setup_s = absl::ToDoubleSeconds(absl::Now() - fill_start);
  const auto snapshot = engine.snapshot();
  const size_t findings = snapshot->findings->active.size();
  const size_t series = snapshot->series.size();

  CollectorMetrics metrics(&engine, &ingest);
  auto server = MetricsServer::Start("127.0.0.1:0", &metrics);
  if (!server.ok()) {
    std::fprintf(stderr, "metrics_bench: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  const std::string address = absl::StrCat("127.0.0.1:", (*server)->port());
  std::vector<double> render_ms, render_cpu_ms, scrape_ms;
  size_t bytes = 0, samples = 0;
  for (int r = 0; r < renders; ++r) {
    // The render as the server does it, in pieces handed to a sink, which
    // here only counts the bytes.
    bytes = 0;
    const double cpu0 = ThreadCpuMs();
    const absl::Time t0 = absl::Now();
    metrics.Render([&](absl::string_view piece) { bytes += piece.size(); });
    render_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
    render_cpu_ms.push_back(ThreadCpuMs() - cpu0);
    // The same render, as a scraper sees it: a whole HTTP GET on loopback,
    // read by a client that drops the body as it arrives (as one parsing
    // it on the fly would) and so times the server, not the client.
    const absl::Time t1 = absl::Now();
    const int64_t received = RawScrape((*server)->port());
    scrape_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - t1));
    if (received < static_cast<int64_t>(bytes)) {
      std::fprintf(stderr, "metrics_bench: GET /metrics got %lld bytes, not a whole answer\n",
                   static_cast<long long>(received));
      return 1;
    }
  }
  // Once more through an HTTP client that decodes the chunked answer: the
  // same body, whose lines give the sample count.
  absl::StatusOr<testing::HttpResponse> scrape = testing::HttpGet(address, "/metrics");
  if (!scrape.ok() || scrape->status != 200 || scrape->body.size() != bytes) {
    std::fprintf(stderr, "metrics_bench: GET /metrics failed: %s\n",
                 scrape.ok() ? absl::StrCat("status ", scrape->status, ", ", scrape->body.size(),
                                            " bytes of ", bytes)
                                   .c_str()
                             : std::string(scrape.status().message()).c_str());
    return 1;
  }
  for (size_t i = 0; i < scrape->body.size(); i = scrape->body.find('\n', i) + 1) {
    if (scrape->body[i] != '#') ++samples;
  }
  std::printf(
      "metrics_bench: %d keys x %d locations (%d regions = %zu published series), %zu "
      "findings active (setup %.1f s); /metrics render over %d scrapes: median %.1f ms (CPU "
      "%.1f ms), max %.1f ms; GET /metrics on loopback median %.1f ms, max %.1f ms; %zu bytes, %zu "
      "samples\n",
      keys, locations, regions, series, findings, setup_s, renders, Median(render_ms),
      Median(render_cpu_ms), *std::max_element(render_ms.begin(), render_ms.end()),
      Median(scrape_ms), *std::max_element(scrape_ms.begin(), scrape_ms.end()), bytes, samples);
  if (findings == 0) {
    std::fprintf(stderr, "metrics_bench: no finding is active; the scrape is not the one asked\n");
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace constance::collector

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return constance::collector::Run();
}
