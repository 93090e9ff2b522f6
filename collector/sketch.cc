#include "collector/sketch.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace constance::collector {

QuantileSketch::QuantileSketch(double relative_accuracy, uint32_t max_buckets)
    : relative_accuracy_(relative_accuracy),
      gamma_((1 + relative_accuracy) / (1 - relative_accuracy)),
      log_gamma_(std::log(gamma_)),
      max_buckets_(std::max<uint32_t>(max_buckets, 16)) {}

int32_t QuantileSketch::IndexOf(double value) const {
  return static_cast<int32_t>(std::ceil(std::log(value) / log_gamma_));
}

double QuantileSketch::LowerBound(int32_t index) const {
  return std::exp((index - 1) * log_gamma_);
}
double QuantileSketch::UpperBound(int32_t index) const { return std::exp(index * log_gamma_); }

// 2 gamma^i / (gamma + 1) is at most a relative `a` from any value in
// (gamma^(i-1), gamma^i].
double QuantileSketch::Representative(int32_t index) const {
  return 2 * UpperBound(index) / (gamma_ + 1);
}

void QuantileSketch::AddToBucket(int32_t index, uint64_t count) {
  if (counts_.empty()) {
    offset_ = index;
    counts_.assign(1, 0);
  } else if (index < offset_) {
    counts_.insert(counts_.begin(), offset_ - index, 0);
    offset_ = index;
  } else if (index >= offset_ + static_cast<int32_t>(counts_.size())) {
    counts_.resize(index - offset_ + 1, 0);
  }
  uint32_t& c = counts_[index - offset_];
  // Saturate rather than wrap: 4 billion waits in one bin of one store is
  // not a real workload, and a wrapped count would be silently wrong.
  c = static_cast<uint32_t>(std::min<uint64_t>(uint64_t{c} + count, UINT32_MAX));
  if (counts_.size() > max_buckets_) Collapse();
}

void QuantileSketch::Collapse() {
  // Fold the lowest buckets into the first kept one.
  const size_t excess = counts_.size() - max_buckets_;
  uint64_t folded = 0;
  for (size_t i = 0; i <= excess; ++i) folded += counts_[i];
  counts_.erase(counts_.begin(), counts_.begin() + excess);
  counts_[0] = static_cast<uint32_t>(std::min<uint64_t>(folded, UINT32_MAX));
  counts_.shrink_to_fit();
  offset_ += static_cast<int32_t>(excess);
}

void QuantileSketch::Add(double value, uint64_t count) {
  if (count == 0 || !(value >= 0) || !std::isfinite(value)) return;
  if (count_ == 0) {
    min_ = max_ = value;
  } else {
    min_ = std::min(min_, value);
    max_ = std::max(max_, value);
  }
  count_ += count;
  sum_ += value * count;
  if (value < kMinPositive) {
    zero_count_ += count;
  } else {
    AddToBucket(IndexOf(value), count);
  }
}

absl::Status QuantileSketch::Merge(const QuantileSketch& other) {
  if (other.relative_accuracy_ != relative_accuracy_) {
    return absl::InvalidArgumentError(absl::StrCat("sketches of accuracy ", relative_accuracy_,
                                                   " and ", other.relative_accuracy_,
                                                   " cannot merge"));
  }
  if (other.count_ == 0) return absl::OkStatus();
  if (count_ == 0) {
    min_ = other.min_;
    max_ = other.max_;
  } else {
    min_ = std::min(min_, other.min_);
    max_ = std::max(max_, other.max_);
  }
  count_ += other.count_;
  sum_ += other.sum_;
  zero_count_ += other.zero_count_;
  for (size_t i = 0; i < other.counts_.size(); ++i) {
    if (other.counts_[i] != 0)
      AddToBucket(other.offset_ + static_cast<int32_t>(i), other.counts_[i]);
  }
  return absl::OkStatus();
}

double QuantileSketch::Quantile(double q) const {
  if (count_ == 0) return 0;
  q = std::clamp(q, 0.0, 1.0);
  const uint64_t rank = static_cast<uint64_t>(std::floor(q * (count_ - 1)));
  // The extremes are kept exactly.
  if (rank == 0) return min_;
  if (rank == count_ - 1) return max_;
  if (rank < zero_count_) return std::clamp(0.0, min_, max_);
  uint64_t seen = zero_count_;
  for (size_t i = 0; i < counts_.size(); ++i) {
    seen += counts_[i];
    if (seen > rank) {
      return std::clamp(Representative(offset_ + static_cast<int32_t>(i)), min_, max_);
    }
  }
  return max_;
}

double QuantileSketch::ShareAtOrBelow(double value) const {
  if (count_ == 0) return 0;
  if (value < 0) return 0;
  uint64_t at_or_below = zero_count_;
  for (size_t i = 0; i < counts_.size(); ++i) {
    const int32_t index = offset_ + static_cast<int32_t>(i);
    if (LowerBound(index) >= value) break;
    at_or_below += counts_[i];
  }
  return static_cast<double>(at_or_below) / count_;
}

void QuantileSketch::Clear() {
  counts_.clear();
  offset_ = 0;
  zero_count_ = count_ = 0;
  sum_ = min_ = max_ = 0;
}

void QuantileSketch::ForEachBucket(const std::function<void(double, uint64_t)>& fn) const {
  uint64_t cumulative = zero_count_;
  if (zero_count_ > 0) fn(0, cumulative);
  for (size_t i = 0; i < counts_.size(); ++i) {
    if (counts_[i] == 0) continue;
    cumulative += counts_[i];
    fn(UpperBound(offset_ + static_cast<int32_t>(i)), cumulative);
  }
}

namespace {

template <typename T>
void Put(std::string* out, T v) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));
  out->append(buf, sizeof(T));
}

template <typename T>
bool Get(absl::string_view* in, T* v) {
  if (in->size() < sizeof(T)) return false;
  std::memcpy(v, in->data(), sizeof(T));
  in->remove_prefix(sizeof(T));
  return true;
}

}  // namespace

void QuantileSketch::EncodeTo(std::string* out) const {
  Put(out, relative_accuracy_);
  Put(out, max_buckets_);
  Put(out, offset_);
  Put(out, static_cast<uint32_t>(counts_.size()));
  for (uint32_t c : counts_) Put(out, c);
  Put(out, zero_count_);
  Put(out, count_);
  Put(out, sum_);
  Put(out, min_);
  Put(out, max_);
}

absl::Status QuantileSketch::Decode(absl::string_view in, QuantileSketch* out) {
  double accuracy;
  uint32_t max_buckets, n;
  int32_t offset;
  if (!Get(&in, &accuracy) || !Get(&in, &max_buckets) || !Get(&in, &offset) || !Get(&in, &n) ||
      !(accuracy > 0 && accuracy < 0.5) || n > max_buckets || in.size() < n * sizeof(uint32_t)) {
    return absl::DataLossError("sketch: corrupt header");
  }
  QuantileSketch s(accuracy, max_buckets);
  s.offset_ = offset;
  s.counts_.resize(n);
  for (uint32_t i = 0; i < n; ++i) Get(&in, &s.counts_[i]);
  if (!Get(&in, &s.zero_count_) || !Get(&in, &s.count_) || !Get(&in, &s.sum_) ||
      !Get(&in, &s.min_) || !Get(&in, &s.max_) || !in.empty()) {
    return absl::DataLossError("sketch: corrupt body");
  }
  *out = std::move(s);
  return absl::OkStatus();
}

}  // namespace constance::collector
