// The collector's /metrics: rendered at scrape time from the Engine's
// latest snapshot straight into the text format (collector/exposition.h),
// never by updating gauges on the ingest path.
//
// Cardinality is bounded by the chain's shape, not by traffic: one series
// per (statistic, series, group), one per location for delivery facts, and
// one per active outlier. Values are in the family's unit: prices in minor
// units of their currency, waits in seconds, compliance as a pass ratio
// 0..1, scores in their own unit.
//
// Sharded collectors (deploy/SCALING.md) also export, per series and not
// per group or location, mergeable sufficient statistics that Prometheus
// adds up across shards (deploy/prometheus/sharding_rules.yml): the count
// n of locations with a comparable value, S1 = sum(x - r) and
// S2 = sum((x - r)^2) about a reference r, r itself, and for waits the
// locations' comparable values as a cumulative histogram with fixed
// bounds. Chain-wide: mean = r + S1/n, variance = S2/n - (S1/n)^2 (the
// population variance, as SummarizeGroup), quantiles by histogram_quantile.
//
// Thread-safety: Render may run on several HTTP threads at once and
// concurrently with ingest; it only reads immutable snapshots and atomics.
#ifndef CONSTANCE_COLLECTOR_METRICS_H_
#define CONSTANCE_COLLECTOR_METRICS_H_

#include <string>
#include <vector>

#include "collector/engine.h"
#include "collector/exposition.h"
#include "collector/ingest_service.h"
#include "collector/services.h"
#include "collector/silences.h"

namespace constance::collector {

// The reference r of a series' mergeable sums. It must be the same on every
// shard without coordination, so it comes from the catalog all shards
// load, never from a shard's data: a price's list price (its first
// chain-wide promise, else its first zone promise, whatever the effective
// date, so shards never disagree while a change takes effect), a wait's
// promised within_seconds, a check's min_pass_rate (1 without a promise),
// else 0. A value derived from the key alone could not be near the
// values, which is the point: the variance S2/n - (S1/n)^2 keeps a
// relative accuracy of about 1e-16 * (1 + ((mean - r) / stddev)^2), so a
// reference near the values keeps it exact, and r = 0 still keeps the
// stddev within 1e-6 unless the cv is below ~1e-5, where its absolute
// error (~1.5e-8 * |mean|) is far below every family's floor. `catalog`
// may be null (the defaults). A shard with a different catalog exports a
// different r; the rules then publish nothing rather than a wrong figure.
double MergeReference(const SeriesKey& key, const Catalog* catalog);

// One series' mergeable sums over `snap`'s groups (which partition its
// locations): n_g locations with mean m_g and population stddev s_g
// contribute n_g * (m_g - r) to s1 and n_g * (s_g^2 + (m_g - r)^2) to s2.
// /metrics and the Query API's ChainSummary both read these.
struct MergeableSeries {
  const SeriesKey* key = nullptr;  // Owned by the snapshot.
  double reference = 0;
  uint64_t n = 0;
  double s1 = 0;
  double s2 = 0;
  std::vector<const SeriesStats*> groups;  // Owned by the snapshot.
};
// Every series of `snap` with a comparable value, in first-seen order.
std::vector<MergeableSeries> Mergeable(const Snapshot& snap);

// The fixed bucket bounds of the mergeable wait histogram: 10^(i/k) for
// integer i from 0.1 s to the first bound above one day (the longest
// valid wait), k the fewest buckets per decade whose ratio is at most
// 1 + accuracy (232 for 1%). They depend only on the accuracy, so every
// shard sharing a catalog emits the same `le` values, and
// histogram_quantile's linear interpolation inside a bucket (l, u] with
// u <= (1 + accuracy) * l is within `accuracy` of the value it targets.
// Values at or below 0.1 s share the lowest bucket. A plain value: cheap
// to build (one pow per bound), immutable, thread-safe.
class WaitBuckets {
 public:
  static constexpr double kLowestSeconds = 0.1;
  static constexpr double kHighestSeconds = 86'400;

  explicit WaitBuckets(double relative_accuracy);

  // Bucket indexes run from lowest() to highest(); highest() + 1 is +Inf.
  int lowest() const { return lowest_; }
  int highest() const { return highest_; }
  int per_decade() const { return per_decade_; }
  // The upper bound of bucket `i`, lowest() <= i <= highest().
  double Bound(int i) const { return bounds_[i - lowest_]; }
  // The bucket holding `seconds`: the smallest i with seconds <= Bound(i).
  int Index(double seconds) const;

 private:
  int per_decade_ = 0;
  int lowest_ = 0;
  int highest_ = 0;
  std::vector<double> bounds_;
};

class CollectorMetrics {
 public:
  // The pointers must outlive this object; with `silences`, findings a
  // silence covers are exported with its id in `silenced_by` (matched once
  // per evaluation, not per scrape).
  CollectorMetrics(const Engine* engine, const IngestService* ingest,
                   SilenceMatches* silences = nullptr)
      : engine_(engine), ingest_(ingest), silences_(silences) {}

  // The whole exposition (text format 0.0.4) from the latest snapshot, in
  // one string.
  std::string Render() const;
  // The same, handed to `sink` in pieces of about `chunk_bytes` (whole
  // lines), so that a scrape of any size holds one piece in memory.
  void Render(const TextExposition::Sink& sink, size_t chunk_bytes = 256 * 1024) const;

 private:
  void RenderTo(TextExposition* out) const;
  // Ingest counters and refusals, from the snapshot and the ingest service.
  void RenderIngest(const Snapshot& snap, TextExposition* out) const;
  // The mergeable statistics described above.
  void RenderMergeable(const Snapshot& snap, TextExposition* out) const;

  const Engine* const engine_;
  const IngestService* const ingest_;
  SilenceMatches* const silences_;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_METRICS_H_
