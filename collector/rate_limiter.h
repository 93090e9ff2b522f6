// Per-location ingest quotas: a token bucket per location (`rate`
// observations per second, up to `burst` saved), and the rule a stream
// follows once one of its batches was throttled.
//
// Thread-safety: RateLimiter is safe for concurrent use; a StreamThrottle
// belongs to one stream and is used from its reads only.
#ifndef CONSTANCE_COLLECTOR_RATE_LIMITER_H_
#define CONSTANCE_COLLECTOR_RATE_LIMITER_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace constance::collector {

class RateLimiter {
 public:
  // `rate` 0 = unlimited. A bucket holds max(burst, rate) tokens.
  RateLimiter(double rate, double burst) : rate_(rate), burst_(burst) {}
  RateLimiter(const RateLimiter&) = delete;
  RateLimiter& operator=(const RateLimiter&) = delete;

  bool limited() const { return rate_ > 0; }

  // Takes `count` tokens of `location`'s bucket at `now`; when there are
  // not enough, takes none and returns how long until there will be. A
  // batch larger than the bucket can ever hold passes when the bucket is
  // full, so it is never refused forever.
  absl::Duration Take(const std::string& location, size_t count, absl::Time now);

 private:
  struct Bucket {
    double tokens = 0;
    absl::Time updated = absl::InfinitePast();
  };
  const double rate_;
  const double burst_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Bucket> buckets_ ABSL_GUARDED_BY(mu_);
};

// One stream's side of the quota. Once a batch was throttled, every later
// batch of the stream is too until the agent resends from the throttled
// one: applying a later batch would move the high-water mark past the
// throttled observations.
class StreamThrottle {
 public:
  explicit StreamThrottle(RateLimiter* limiter) : limiter_(limiter) {}

  // How long the batch (`first_sequence`, `count` observations) of
  // `location` must wait; zero when it may apply now.
  absl::Duration Wait(const std::string& location, uint64_t first_sequence, size_t count,
                      absl::Time now);

 private:
  RateLimiter* const limiter_;
  uint64_t throttled_from_ = 0;  // First sequence of the throttled batch; 0 = none.
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_RATE_LIMITER_H_
