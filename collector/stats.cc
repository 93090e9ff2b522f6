#include "collector/stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

namespace constance::collector {
namespace {

// 0.6745 is the 0.75 quantile of the standard normal: MAD / 0.6745 estimates
// sigma. 1.253314 = sqrt(pi/2) does the same for the mean absolute deviation.
constexpr double kMadToSigma = 0.6745;
constexpr double kMeanAdToSigma = 1.253314;
// The largest strength below 1: not an outlier, as near the edge as can be.
const double kJustInside = std::nextafter(1.0, 0.0);

// |deviation| > floor, strictly, where a deviation equal to the floor but
// for rounding (a pass rate of 19/20 against 1, a floor of 5 points) counts
// as equal: binary fractions must not turn "at the floor" into "past it".
bool ExceedsFloor(double deviation, double floor) {
  return std::fabs(deviation) - floor > 1e-9 * std::max(1.0, floor);
}

// Median of a sorted range.
double SortedMedian(const std::vector<double>& v) {
  const size_t n = v.size();
  if (n == 0) return 0;
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Median of |v[i] - m| over a sorted range, without sorting the
// deviations: they fall from v's first value to m and rise after it (IEEE
// subtraction is monotone), so merging the two runs from m outwards meets
// them in ascending order, and the median is met halfway.
double SortedMedianDeviation(const std::vector<double>& v, double m) {
  const size_t n = v.size();
  if (n == 0) return 0;
  size_t right = std::lower_bound(v.begin(), v.end(), m) - v.begin();
  size_t left = right;  // The next below m is v[left - 1].
  double previous = 0, current = 0;
  for (size_t taken = 0; taken <= n / 2; ++taken) {
    const bool from_left =
        right == n || (left > 0 && std::fabs(v[left - 1] - m) <= std::fabs(v[right] - m));
    previous = current;
    current = from_left ? std::fabs(v[--left] - m) : std::fabs(v[right++] - m);
  }
  return n % 2 == 1 ? current : (previous + current) / 2;
}

// Quantile q of a sorted range, linear interpolation between order
// statistics (R's type 7, numpy's default).
double SortedQuantile(const std::vector<double>& v, double q) {
  if (v.empty()) return 0;
  const double h = (v.size() - 1) * q;
  const size_t lo = static_cast<size_t>(std::floor(h));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (h - lo) * (v[hi] - v[lo]);
}

bool DirectionAllowed(v1::Family family, v1::Direction direction) {
  if (direction == v1::DIRECTION_UNSPECIFIED) return false;
  switch (family) {
    case v1::FAMILY_WAIT:
      return direction == v1::ABOVE;
    case v1::FAMILY_COMPLIANCE:
      return direction == v1::BELOW;
    default:
      return true;
  }
}

}  // namespace

void SortByValueThenLocation(std::vector<LocatedValue>* values) {
  std::vector<LocatedValue>& v = *values;
  // In strictly increasing location order, sorting by value then location
  // is a stable sort by value: each distinct value's bucket, in order.
  constexpr size_t kMaxBuckets = 16;
  std::vector<std::pair<double, size_t>> buckets;  // (value, count), then (value, start).
  for (size_t i = 0; i < v.size(); ++i) {
    if (i > 0 && v[i - 1].location >= v[i].location) {
      buckets.clear();
      break;
    }
    auto it = std::find_if(buckets.begin(), buckets.end(),
                           [&](const auto& b) { return b.first == v[i].value; });
    if (it != buckets.end()) {
      ++it->second;
    } else if (buckets.size() == kMaxBuckets) {
      buckets.clear();
      break;
    } else {
      buckets.emplace_back(v[i].value, 1);
    }
  }
  if (buckets.empty()) {
    std::sort(v.begin(), v.end(), ByValueThenLocation{});
    return;
  }
  std::sort(buckets.begin(), buckets.end());
  size_t start = 0;
  for (auto& b : buckets) start += std::exchange(b.second, start);
  std::vector<LocatedValue> out(v.size());
  for (const LocatedValue& x : v) {
    auto it = std::find_if(buckets.begin(), buckets.end(),
                           [&](const auto& b) { return b.first == x.value; });
    out[it->second++] = x;
  }
  v = std::move(out);
}

GroupSummary SummarizeGroup(absl::Span<const LocatedValue> values) {
  GroupSummary s;
  s.n = values.size();
  if (values.empty()) return s;
  std::vector<double> sorted;
  sorted.reserve(values.size());
  for (const LocatedValue& v : values) sorted.push_back(v.value);
  if (!std::is_sorted(sorted.begin(), sorted.end())) std::sort(sorted.begin(), sorted.end());
  s.min = sorted.front();
  s.max = sorted.back();
  s.median = SortedMedian(sorted);
  s.p10 = SortedQuantile(sorted, 0.10);
  s.p90 = SortedQuantile(sorted, 0.90);

  // Two passes: the mean first, then squared deviations from it, which
  // stays accurate where a running sum of squares would cancel.
  double sum = 0;
  for (double x : sorted) sum += x;
  s.mean = sum / s.n;
  double squares = 0;
  for (double x : sorted) squares += (x - s.mean) * (x - s.mean);
  s.stddev = std::sqrt(squares / s.n);
  s.cv = s.mean != 0 ? s.stddev / std::fabs(s.mean) : 0;

  double abs_sum = 0;
  for (double x : sorted) abs_sum += std::fabs(x - s.median);
  s.mad = SortedMedianDeviation(sorted, s.median);
  s.mean_ad = abs_sum / s.n;
  return s;
}

RateInterval WilsonInterval(uint64_t passed, uint64_t total, double z) {
  if (total == 0) return {};
  const double n = static_cast<double>(total);
  const double p = std::min(static_cast<double>(passed), n) / n;
  const double z2 = z * z;
  const double centre = (p + z2 / (2 * n)) / (1 + z2 / n);
  const double half = z * std::sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n);
  return {std::max(0.0, centre - half), std::min(1.0, centre + half)};
}

double RateShortfall(double rate, uint64_t samples, double limit, double floor) {
  const double high =
      samples == 0
          ? rate
          : WilsonInterval(static_cast<uint64_t>(std::llround(rate * static_cast<double>(samples))),
                           samples)
                .high;
  const double strength = floor > 0      ? (limit - high) / floor
                          : high < limit ? std::numeric_limits<double>::max()
                                         : 0;
  // Strictly past the floor, as a deviation (ExceedsFloor): an interval
  // ending exactly a floor below is not short.
  if (ExceedsFloor(limit - high, floor) && high < limit) return strength;
  return std::clamp(strength, 0.0, kJustInside);
}

double FamilyFloor(v1::Family family, double median, const OutlierPolicy& policy) {
  const Floor* f = nullptr;
  switch (family) {
    case v1::FAMILY_PRICE:
      f = &policy.price;
      break;
    case v1::FAMILY_WAIT:
      f = &policy.wait;
      break;
    case v1::FAMILY_COMPLIANCE:
      f = &policy.compliance;
      break;
    case v1::FAMILY_SCORE:
      f = &policy.score;
      break;
    default:
      return 0;
  }
  return std::max(f->ratio * std::fabs(median), f->absolute);
}

Band ExpectedBand(v1::Family family, const GroupSummary& summary, const OutlierPolicy& policy) {
  Band band;
  band.floor = FamilyFloor(family, summary.median, policy);
  if (summary.mad > 0) {
    band.scale = summary.mad / kMadToSigma;
  } else {
    band.scale = kMeanAdToSigma * summary.mean_ad;
  }
  // With MAD = 0 the fallback z-score depends on how many locations deviate,
  // not by how much, so the floor alone decides.
  const double width =
      summary.mad > 0 ? std::max(band.floor, policy.z_threshold * band.scale) : band.floor;
  band.low = summary.median - width;
  band.high = summary.median + width;
  if (family == v1::FAMILY_COMPLIANCE) {
    // A pass rate lives in [0, 1]; so does its band.
    band.low = std::max(band.low, 0.0);
    band.high = std::min(band.high, 1.0);
  }
  return band;
}

Assessment AssessValue(v1::Family family, double value, const GroupSummary& summary,
                       const Band& band, const OutlierPolicy& policy, uint64_t samples) {
  Assessment a;
  a.deviation = value - summary.median;
  a.direction = a.deviation > 0   ? v1::ABOVE
                : a.deviation < 0 ? v1::BELOW
                                  : v1::DIRECTION_UNSPECIFIED;
  // Too few to compare, or all equal (scale 0): nobody deviates.
  if (summary.n == 0 || summary.n < policy.min_group || band.scale <= 0) return a;
  if (a.deviation == 0 || !DirectionAllowed(family, a.direction)) return a;
  a.z = summary.mad > 0 ? kMadToSigma * a.deviation / summary.mad
                        : a.deviation / (kMeanAdToSigma * summary.mean_ad);
  const double over_floor =
      band.floor > 0 ? std::fabs(a.deviation) / band.floor : std::numeric_limits<double>::max();
  if (family == v1::FAMILY_COMPLIANCE) {
    // A pass rate is judged with its uncertainty: 0 of 1 is no evidence.
    a.strength = RateShortfall(value, samples, band.low, band.floor);
    a.outlier = a.strength > 1;
    return a;
  }
  // With MAD = 0 the floor alone decides (see ExpectedBand).
  a.strength =
      summary.mad > 0 ? std::min(std::fabs(a.z) / policy.z_threshold, over_floor) : over_floor;
  // Strictly past every threshold: a deviation equal to the floor (one
  // cent on a 0.37 price) is not one.
  a.outlier = ExceedsFloor(a.deviation, band.floor) &&
              (summary.mad == 0 || std::fabs(a.z) > policy.z_threshold);
  if (!a.outlier) a.strength = std::min(a.strength, kJustInside);
  return a;
}

std::vector<OutlierResult> FindOutliers(v1::Family family, absl::Span<const LocatedValue> values,
                                        const GroupSummary& summary, const OutlierPolicy& policy) {
  std::vector<OutlierResult> out;
  const Band band = ExpectedBand(family, summary, policy);
  for (const LocatedValue& v : values) {
    const Assessment a = AssessValue(family, v.value, summary, band, policy, v.samples);
    if (!a.outlier) continue;
    OutlierResult r;
    r.location = v.location;
    r.value = v.value;
    r.z = a.z;
    r.magnitude = summary.median != 0 ? std::fabs(a.deviation) / std::fabs(summary.median)
                                      : std::fabs(a.deviation);
    r.direction = a.direction;
    out.push_back(r);
  }
  std::sort(out.begin(), out.end(), [](const OutlierResult& a, const OutlierResult& b) {
    if (std::fabs(a.z) != std::fabs(b.z)) return std::fabs(a.z) > std::fabs(b.z);
    return a.location < b.location;
  });
  return out;
}

}  // namespace constance::collector
