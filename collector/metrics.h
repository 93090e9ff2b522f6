// The collector's /metrics: computed at scrape time from the Engine's
// latest snapshot (a prometheus::Collectable), never by updating gauges on
// the ingest path.
//
// Cardinality is bounded by the chain's shape, not by traffic: one series
// per (statistic, series, group), one per location for delivery facts, and
// one per active outlier. Values are in the family's unit: prices in minor
// units of their currency, waits in seconds, compliance as a pass ratio
// 0..1, scores in their own unit.
//
// Thread-safety: Collect may run on the exposer's threads concurrently with
// ingest; it only reads immutable snapshots and atomics.
#ifndef CONSTANCE_COLLECTOR_METRICS_H_
#define CONSTANCE_COLLECTOR_METRICS_H_

#include <vector>

#include "collector/engine.h"
#include "collector/services.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace constance::collector {

class CollectorMetrics final : public prometheus::Collectable {
 public:
  // Both pointers must outlive this object's registration with an exposer.
  CollectorMetrics(const Engine* engine, const IngestService* ingest)
      : engine_(engine), ingest_(ingest) {}

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const Engine* const engine_;
  const IngestService* const ingest_;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_METRICS_H_
