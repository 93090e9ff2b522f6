// The collector's exposition: bounded cardinality under many findings.
#include "collector/metrics.h"

#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace constance::collector {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1'767'225'600);

std::map<std::string, const prometheus::MetricFamily*> ByName(
    const std::vector<prometheus::MetricFamily>& families) {
  std::map<std::string, const prometheus::MetricFamily*> out;
  for (const auto& f : families) out[f.name] = &f;
  return out;
}

TEST(CollectorMetricsTest, FindingSeriesAreCappedAndTheRestCounted) {
  static const struct {
    uint64_t cap;
    size_t exported;
    double suppressed;
  } kCases[] = {{1000, 12, 0}, {5, 5, 7}, {0, 0, 12}};
  for (const auto& c : kCases) {
    Catalog catalog = DefaultCatalog();
    catalog.thresholds.finding_cap = c.cap;
    Engine::Options options;
    options.catalog = std::make_shared<const Catalog>(catalog);
    options.clock = [] { return kNow; };
    Engine engine(options);
    // 12 stores, each overcharging on its own item among 100 honest ones.
    for (int i = 0; i < 112; ++i) {
      v1::Batch b;
      b.set_location(absl::StrCat("store-", i));
      b.set_incarnation(1);
      b.set_first_sequence(1);
      for (int k = 0; k < 12; ++k) {
        v1::Observation* o = b.add_observations();
        o->set_key(absl::StrCat("sku-", k));
        o->mutable_price()->set_minor_units(i == 100 + k ? 199 : 149);
        o->mutable_price()->set_currency("EUR");
      }
      ASSERT_TRUE(engine.ApplyBatch(b).ok());
    }
    engine.Evaluate();
    engine.Evaluate();
    ASSERT_EQ(engine.snapshot()->findings->active.size(), 12u);
    IngestService ingest(&engine);
    CollectorMetrics metrics(&engine, &ingest);
    auto families = metrics.Collect();
    auto by = ByName(families);
    ASSERT_TRUE(by.count("constance_finding"));
    EXPECT_EQ(by["constance_finding"]->metric.size(), c.exported) << "cap " << c.cap;
    EXPECT_EQ(by["constance_findings_suppressed"]->metric.at(0).gauge.value, c.suppressed);
    // Counts by kind are never capped.
    double total = 0;
    for (const auto& m : by["constance_findings_active"]->metric) total += m.gauge.value;
    EXPECT_EQ(total, 12);
  }
}

}  // namespace
}  // namespace constance::collector
