// Cross-location statistics of one series and the outlier rule.
//
// A series (family, key, qualifiers) has one comparable value per reporting
// location. SummarizeGroup computes its exact order statistics (median,
// MAD: no sketches here, the group is at most a chain's size) and moments;
// FindOutliers applies the modified z-score rule with the family's floor
// and direction, so a statistically "significant" one-cent difference never
// shows.
//
//   std::vector<LocatedValue> values = ...;   // one per location
//   GroupSummary s = SummarizeGroup(values);
//   std::vector<OutlierResult> out =
//       FindOutliers(v1::FAMILY_PRICE, values, s, OutlierPolicy());
//
// Everything here is a pure function of its arguments: thread-safe.
#ifndef CONSTANCE_COLLECTOR_STATS_H_
#define CONSTANCE_COLLECTOR_STATS_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "constance/v1/observation.pb.h"
#include "constance/v1/query.pb.h"

namespace constance::collector {

// One location's comparable value in a series. `location` is an opaque
// index the caller maps back to a name.
struct LocatedValue {
  uint32_t location = 0;
  double value = 0;
  // Compliance: the checks the pass rate `value` was measured on (0: a
  // rate known exactly, without its count). Other families leave it 0.
  uint64_t samples = 0;
};

// The statistics of one group. Empty groups have n = 0 and zeros elsewhere.
// stddev is the population standard deviation (divide by n), the same
// definition Prometheus's stddev() uses, so figures agree with PromQL.
struct GroupSummary {
  uint64_t n = 0;
  double mean = 0;
  double stddev = 0;
  double cv = 0;  // stddev / |mean|; 0 when mean is 0.
  double min = 0;
  double max = 0;
  double median = 0;   // Mean of the two middle values when n is even.
  double mad = 0;      // Median of |x - median|.
  double mean_ad = 0;  // Mean of |x - median|: the MAD = 0 fallback's scale.
  double p10 = 0;      // Linearly interpolated quantiles (R type 7).
  double p90 = 0;
};

// A family's floor: a deviation must exceed max(ratio * |median|, absolute).
struct Floor {
  double ratio = 0;
  double absolute = 0;
};

// The outlier rule's parameters, with the catalog's defaults.
struct OutlierPolicy {
  double z_threshold = 3.5;
  // Fewer reporting locations than this: no outliers at all.
  uint64_t min_group = 5;
  Floor price{0.01, 1};       // 1% of the median and more than 1 minor unit.
  Floor wait{0.10, 0};        // 10% of the median wait.
  Floor compliance{0, 0.05};  // 5 points of pass rate (0..1).
  Floor score{0.05, 0};       // 5% of the median score.
};

// The band a value must leave, and by how much, to be an outlier.
struct Band {
  double low = 0;
  double high = 0;
  double floor = 0;  // The family's floor at this median, in value units.
  double scale = 0;  // Robust sigma: MAD/0.6745, or 1.253314*MeanAD, or 0.
};

// How one value stands against its group under the outlier rule. The rule
// is decided here and nowhere else: the statistics on /metrics and the
// Query API, the findings and the trust balance all read this.
struct Assessment {
  double deviation = 0;  // value - median.
  double z = 0;          // Modified z-score (or its MAD = 0 fallback); 0 if not compared.
  // The smaller of |z| / z_threshold (when MAD > 0) and |deviation| /
  // floor: >= 1 exactly when `outlier`; below 1, how near the band's edge
  // (findings close with hysteresis on it). 0 when not compared or in a
  // direction the family ignores.
  double strength = 0;
  bool outlier = false;
  v1::Direction direction = v1::DIRECTION_UNSPECIFIED;
};

struct OutlierResult {
  uint32_t location = 0;
  double value = 0;
  double z = 0;          // Modified z-score (or its MAD = 0 fallback).
  double magnitude = 0;  // |value - median| / |median| (|value - median| if median is 0).
  v1::Direction direction = v1::DIRECTION_UNSPECIFIED;
};

// The rate rule's confidence: the z of the Wilson score interval of a pass
// rate. 3.29 is the normal quantile of a two-sided 99.9% interval: wide
// enough that one failed check (0 of 1: the interval reaches 0.915) or one
// fail cured by a passed re-inspection (1 of 2: 0.93) never lies a 5-point
// floor below a group at 100%, narrow enough that 3 fails of 4 (0.845) or
// 2 of 2 (0.844) do.
constexpr double kRateZ = 3.29;

// A pass rate's interval, within [0, 1].
struct RateInterval {
  double low = 0;
  double high = 1;
};

// The Wilson score interval of `passed` of `total` at `z`. total = 0 is no
// evidence: [0, 1].
RateInterval WilsonInterval(uint64_t passed, uint64_t total, double z = kRateZ);

// The rate rule, the one place that decides whether a pass rate falls
// short: compliance outliers (limit = the group band's low edge) and
// broken rate promises (limit = min_pass_rate) both call it. A pass rate of
// `rate` over `samples` checks (0: known exactly, its interval a point)
// falls short only when its whole Wilson interval lies more than `floor`
// below `limit`. Returns the strength (limit - interval.high) / floor: above
// 1 exactly when it falls short, growing with the evidence (0 of 2 checks:
// 2.1, 0 of 10: 8.6); below 1 (at most just under, at least 0) otherwise,
// how near the edge for hysteresis.
double RateShortfall(double rate, uint64_t samples, double limit, double floor);

// The order statistics' order: by value, then location. Values sorted so
// (by the caller, once) are read in order by SummarizeGroup and FindLevels
// without sorting them again.
struct ByValueThenLocation {
  bool operator()(const LocatedValue& a, const LocatedValue& b) const {
    return a.value != b.value ? a.value < b.value : a.location < b.location;
  }
};

// Sorts `values` by ByValueThenLocation. Values in location order taking
// few distinct values (a price's levels) are bucketed in one pass; the
// rest are sorted.
void SortByValueThenLocation(std::vector<LocatedValue>* values);

// Exact statistics over `values` (any order; copied internally, sorted
// unless already in order). Every value must be finite: the ingest path
// rejects the rest.
GroupSummary SummarizeGroup(absl::Span<const LocatedValue> values);

// The family's floor at `median`: the smallest deviation that may count.
double FamilyFloor(v1::Family family, double median, const OutlierPolicy& policy);

// The expected band around the median: [median - w, median + w] with
// w = max(floor, z_threshold * scale), or w = floor when MAD = 0 (most
// locations share one value: the fallback z-score then counts deviants
// rather than measuring deviations, so the floor decides). A value inside
// the band is never an outlier.
Band ExpectedBand(v1::Family family, const GroupSummary& summary, const OutlierPolicy& policy);

// The outlier rule for one value: an outlier when the group has at least
// min_group locations and some spread (band.scale > 0), the deviation is
// in a direction the family cares about (price: both; wait: above;
// compliance: below; score: both), strictly larger than the family's floor,
// and, when MAD > 0, |z| is strictly above z_threshold. A pass rate
// (compliance) is judged with its uncertainty instead: RateShortfall of
// `value` over `samples` checks against the band's low edge and the floor.
// `band` is ExpectedBand's for `summary`.
Assessment AssessValue(v1::Family family, double value, const GroupSummary& summary,
                       const Band& band, const OutlierPolicy& policy, uint64_t samples = 0);

// The locations whose value (with its samples) is an outlier under AssessValue: |z| > z_threshold
// (when MAD > 0), |deviation| above the family's floor, in a direction the family cares about
// (price: both; wait: above; compliance: below; score: both), and the group has at least min_group
// locations. Sorted by |z| descending, then location.
std::vector<OutlierResult> FindOutliers(v1::Family family, absl::Span<const LocatedValue> values,
                                        const GroupSummary& summary, const OutlierPolicy& policy);

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_STATS_H_
