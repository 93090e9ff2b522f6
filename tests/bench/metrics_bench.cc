// metrics_bench: what one scrape of the collector's /metrics costs at
// chain scale, with findings active.
//
// Builds an Engine in process with --keys price series over --locations
// locations, declared in a catalog with a `region` label (--regions
// values) and a peer-group rule on it, so every key is published once per
// region (a location belongs to one group per key). The first --deviants locations charge half as
// much again as everyone else on every key; two evaluations (persistence
// 2) open their outlier findings. It then times what a scrape does:
// CollectorMetrics::Collect() from the published snapshot, and
// prometheus-cpp's text serialization of the result; and reports the
// exposition's size and sample count.
//
//   metrics_bench --keys=10000 --locations=50 --regions=5 --renders=10
//   metrics_bench --smoke        # a tiny run (ctest)
//
// Exits 1 when no finding is active (the figure would not be the one
// asked for), never for being slow.
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
#include "collector/services.h"
#include "prometheus/text_serializer.h"

ABSL_FLAG(int, keys, 10'000, "Price series (items)");
ABSL_FLAG(int, locations, 50, "Locations, each reporting every key");
ABSL_FLAG(int, regions, 5, "Values of the region label: the peer groups of every key");
ABSL_FLAG(int, deviants, 1, "Locations overcharging on every key (one outlier finding per key)");
ABSL_FLAG(int, renders, 10, "Scrapes timed");
ABSL_FLAG(bool, smoke, false, "A tiny run: 200 keys, 20 locations, 2 regions");

namespace constance::collector {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1'767'225'600);

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
  catalog.Index();

  absl::Time now = kStart + absl::Minutes(1);
  Engine::Options options;
  options.catalog = std::make_shared<const Catalog>(std::move(catalog));
  options.clock = [&now] { return now; };
  Engine engine(options);
  IngestService ingest(&engine);

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
  prometheus::TextSerializer serializer;
  std::vector<double> collect_ms, serialize_ms, total_ms;
  size_t bytes = 0, samples = 0;
  for (int r = 0; r < renders; ++r) {
    const absl::Time t0 = absl::Now();
    std::vector<prometheus::MetricFamily> families = metrics.Collect();
    const absl::Time t1 = absl::Now();
    const std::string text = serializer.Serialize(families);
    const absl::Time t2 = absl::Now();
    collect_ms.push_back(absl::ToDoubleMilliseconds(t1 - t0));
    serialize_ms.push_back(absl::ToDoubleMilliseconds(t2 - t1));
    total_ms.push_back(absl::ToDoubleMilliseconds(t2 - t0));
    bytes = text.size();
    samples = 0;
    for (const auto& f : families) samples += f.metric.size();
  }
  std::printf(
      "metrics_bench: %d keys x %d locations (%d regions = %zu published series), %zu "
      "findings active (setup %.1f s); /metrics render over %d scrapes: median %.1f ms "
      "(collect %.1f ms + serialize %.1f ms), max %.1f ms; %zu bytes, %zu samples\n",
      keys, locations, regions, series, findings, setup_s, renders, Median(total_ms),
      Median(collect_ms), Median(serialize_ms), *std::max_element(total_ms.begin(), total_ms.end()),
      bytes, samples);
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
