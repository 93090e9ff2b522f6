// A mergeable quantile sketch with a relative-error guarantee (DDSketch).
//
// Wait cells keep one sketch per fixed time bin; a location's comparable
// wait is a quantile of the merged bins of its window. A value x > 0 falls
// in bucket i = ceil(log_gamma(x)), gamma = (1 + a) / (1 - a), and every
// quantile is answered with a relative error of at most `a` (1% by
// default) whatever the distribution. Sketches with the same accuracy merge
// exactly (bucket counts add), which is also what lets shards export them
// as Prometheus histogram buckets.
//
// Written here rather than taken from a library because no C++ DDSketch is
// packaged by Debian; the algorithm is the published one (Masson, Rim, Lee,
// VLDB 2019) with dense buckets and a bounded bucket count (the lowest
// buckets collapse first, so high quantiles, the ones waits are judged on,
// keep their guarantee).
//
//   QuantileSketch s(0.01);
//   for (double w : waits) s.Add(w);
//   double p90 = s.Quantile(0.9);   // within 1% of the exact p90
//
// Not thread-safe: callers serialise access (cells live under the engine's
// lock). Copyable and movable: a sketch is a value.
#ifndef CONSTANCE_COLLECTOR_SKETCH_H_
#define CONSTANCE_COLLECTOR_SKETCH_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace constance::collector {

class QuantileSketch {
 public:
  // `relative_accuracy` in (0, 0.5); `max_buckets` bounds memory.
  explicit QuantileSketch(double relative_accuracy = 0.01, uint32_t max_buckets = 2048);

  // Adds `count` occurrences of `value`. Negative and non-finite values
  // must be rejected by the caller (waits are validated before they get
  // here); values below kMinPositive count as zero.
  void Add(double value, uint64_t count = 1);

  // Adds every count of `other`, which must have the same accuracy
  // (InvalidArgument otherwise, and nothing changes).
  absl::Status Merge(const QuantileSketch& other);

  // The value at rank floor(q * (count - 1)) within the relative accuracy,
  // clamped to [min, max]. 0 for an empty sketch. q is clamped to [0, 1].
  double Quantile(double q) const;

  // Share of the values at or below `value`, exact up to the bucket that
  // holds `value` (counted as at or below when its upper edge is).
  double ShareAtOrBelow(double value) const;

  uint64_t count() const { return count_; }
  double sum() const { return sum_; }
  double min() const { return min_; }
  double max() const { return max_; }
  double relative_accuracy() const { return relative_accuracy_; }
  bool empty() const { return count_ == 0; }
  void Clear();

  // Calls fn(upper_bound, cumulative_count) for each non-empty bucket in
  // increasing order (zero bucket first with upper bound 0): the shape of a
  // Prometheus histogram's `le` buckets.
  void ForEachBucket(const std::function<void(double, uint64_t)>& fn) const;

  // Starts fetching the counts, which live apart from the sketch, ahead
  // of a read (a walk over many cells' sketches).
  void PrefetchCounts() const { __builtin_prefetch(counts_.data()); }
  // Bytes held, for the memory benchmarks.
  size_t MemoryBytes() const { return sizeof(*this) + counts_.capacity() * sizeof(uint32_t); }

  // Compact binary form for snapshots; Decode validates what it reads.
  void EncodeTo(std::string* out) const;
  static absl::Status Decode(absl::string_view in, QuantileSketch* out);

  static constexpr double kMinPositive = 1e-9;

 private:
  int32_t IndexOf(double value) const;
  double LowerBound(int32_t index) const;
  double UpperBound(int32_t index) const;
  double Representative(int32_t index) const;
  void AddToBucket(int32_t index, uint64_t count);
  void Collapse();

  double relative_accuracy_;
  double gamma_;
  double log_gamma_;
  uint32_t max_buckets_;
  int32_t offset_ = 0;            // Index of counts_[0].
  std::vector<uint32_t> counts_;  // Dense buckets from offset_.
  uint64_t zero_count_ = 0;
  uint64_t count_ = 0;
  double sum_ = 0;
  double min_ = 0;
  double max_ = 0;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_SKETCH_H_
