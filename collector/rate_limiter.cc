#include "collector/rate_limiter.h"

#include <algorithm>

namespace constance::collector {

absl::Duration RateLimiter::Take(const std::string& location, size_t count, absl::Time now) {
  if (rate_ <= 0) return absl::ZeroDuration();
  absl::MutexLock lock(&mu_);
  Bucket& b = buckets_[location];
  const double capacity = std::max(burst_, rate_);
  if (b.updated == absl::InfinitePast()) {
    b.tokens = capacity;
  } else if (now > b.updated) {
    b.tokens = std::min(capacity, b.tokens + rate_ * absl::ToDoubleSeconds(now - b.updated));
  }
  b.updated = std::max(b.updated, now);
  const double need = std::min<double>(count, capacity);
  if (b.tokens >= need) {
    b.tokens -= need;
    return absl::ZeroDuration();
  }
  return absl::Seconds((need - b.tokens) / rate_);
}

absl::Duration StreamThrottle::Wait(const std::string& location, uint64_t first_sequence,
                                    size_t count, absl::Time now) {
  if (!limiter_->limited()) return absl::ZeroDuration();
  // A later batch waits for the throttled one's resend, briefly: the agent
  // rewinds as soon as the throttled ack reaches it.
  if (throttled_from_ != 0 && first_sequence > throttled_from_) return absl::Milliseconds(100);
  const absl::Duration wait = limiter_->Take(location, count, now);
  throttled_from_ = wait > absl::ZeroDuration() ? first_sequence : 0;
  return wait;
}

}  // namespace constance::collector
