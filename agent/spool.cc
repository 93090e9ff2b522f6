#include "agent/spool.h"

#include <algorithm>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"

namespace constance::agent {
namespace {

uint64_t NewIncarnation() {
  absl::BitGen gen;
  uint64_t id = 0;
  // 0 is what an unset proto field reads as; never use it.
  while (id == 0) id = absl::Uniform<uint64_t>(gen);
  return id;
}

}  // namespace

MemorySpool::MemorySpool(SpoolOptions options)
    : options_(std::move(options)), incarnation_(NewIncarnation()) {}

absl::StatusOr<uint64_t> MemorySpool::Append(std::vector<v1::Observation> observations) {
  const absl::Time now = options_.now();
  absl::MutexLock lock(&mu_);
  const uint64_t first = first_sequence_ + entries_.size();
  if (entries_.size() + observations.size() > options_.max_observations) {
    return absl::ResourceExhaustedError(absl::StrCat("spool full: ", entries_.size(),
                                                     " observations wait for the collector's "
                                                     "acknowledgement and the spool holds at most ",
                                                     options_.max_observations, "; these ",
                                                     observations.size(),
                                                     " were not stored, retry later"));
  }
  for (v1::Observation& obs : observations) {
    uint64_t bytes = obs.ByteSizeLong();
    bytes_ += bytes;
    entries_.push_back(Stored{std::move(obs), now, bytes});
  }
  return first;
}

absl::StatusOr<std::vector<SpoolEntry>> MemorySpool::Read(uint64_t from_sequence,
                                                          size_t max) const {
  absl::MutexLock lock(&mu_);
  std::vector<SpoolEntry> out;
  uint64_t from = std::max(from_sequence, first_sequence_);
  uint64_t end = first_sequence_ + entries_.size();  // One past the last.
  if (from >= end) return out;
  size_t n = static_cast<size_t>(std::min<uint64_t>(end - from, max));
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(SpoolEntry{from + i, entries_[from - first_sequence_ + i].observation});
  }
  return out;
}

absl::Status MemorySpool::Acknowledge(uint64_t watermark) {
  absl::MutexLock lock(&mu_);
  while (!entries_.empty() && first_sequence_ <= watermark) {
    bytes_ -= entries_.front().bytes;
    entries_.pop_front();
    ++first_sequence_;
  }
  // An empty spool still remembers where numbering continues: a watermark
  // past the end moves nothing, so numbers are never reused.
  return absl::OkStatus();
}

uint64_t MemorySpool::Depth() const {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

uint64_t MemorySpool::Bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

absl::Duration MemorySpool::OldestUnacknowledgedAge() const {
  absl::Time oldest;
  {
    absl::MutexLock lock(&mu_);
    if (entries_.empty()) return absl::ZeroDuration();
    oldest = entries_.front().appended_at;
  }
  return std::max(options_.now() - oldest, absl::ZeroDuration());
}

uint64_t MemorySpool::LastSequence() const {
  absl::MutexLock lock(&mu_);
  return first_sequence_ + entries_.size() - 1;
}

}  // namespace constance::agent
