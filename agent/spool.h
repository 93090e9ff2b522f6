// The agent's spool: observations accepted locally and not yet acknowledged
// by the collector.
//
// A spool numbers observations with consecutive sequence numbers, starting
// at 1, within an incarnation: a random nonzero id chosen when the spool is
// created. The collector applies each (location, incarnation, sequence) once,
// so a spool that is wiped and recreated starts a new incarnation and is never
// mistaken for duplicates. Sequence numbers are never reused within an
// incarnation, even after everything has been acknowledged.
//
// Spool is the interface the agent codes against; MemorySpool keeps
// everything in memory (lost on exit: this walking skeleton). The
// durable SQLite spool of a later issue implements the same interface, which
// is why every operation that could touch a disk returns a Status.
//
// Example:
//   MemorySpool spool(SpoolOptions{});
//   absl::StatusOr<uint64_t> first = spool.Append(std::move(observations));
//   auto batch = spool.Read(/*from_sequence=*/1, /*max=*/100);
//   spool.Acknowledge(/*watermark=*/42);   // drops 1..42
//
// Thread-safe: every method may be called from any thread.
#ifndef CONSTANCE_AGENT_SPOOL_H_
#define CONSTANCE_AGENT_SPOOL_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "constance/v1/observation.pb.h"

namespace constance::agent {

// One spooled observation and its sequence number.
struct SpoolEntry {
  uint64_t sequence = 0;
  v1::Observation observation;
};

class Spool {
 public:
  virtual ~Spool() = default;

  // The random id of this spool's numbering; never 0.
  virtual uint64_t incarnation() const = 0;

  // Appends all of `observations` or none. Returns the sequence number given
  // to the first one (the others follow consecutively). ResourceExhausted
  // when they do not fit under the bound; the spool is then unchanged.
  // Appending an empty vector appends nothing and returns the next number.
  virtual absl::StatusOr<uint64_t> Append(std::vector<v1::Observation> observations) = 0;

  // Up to `max` consecutive unacknowledged observations, the first being
  // `from_sequence` or, if that one is already acknowledged, the oldest
  // unacknowledged one. Empty when there is nothing at or after it.
  virtual absl::StatusOr<std::vector<SpoolEntry>> Read(uint64_t from_sequence,
                                                       size_t max) const = 0;

  // Deletes every observation with sequence <= `watermark`. Watermarks at or
  // below an earlier one are no-ops.
  virtual absl::Status Acknowledge(uint64_t watermark) = 0;

  // Observations appended and not yet acknowledged.
  virtual uint64_t Depth() const = 0;

  // Serialized size of those observations, in bytes.
  virtual uint64_t Bytes() const = 0;

  // How long the oldest unacknowledged observation has been in the spool;
  // zero when the spool is empty.
  virtual absl::Duration OldestUnacknowledgedAge() const = 0;

  // The sequence number of the last observation appended (0 before any).
  virtual uint64_t LastSequence() const = 0;
};

struct SpoolOptions {
  // Unacknowledged observations the spool holds at most.
  uint64_t max_observations = 1'000'000;
  // The spool's clock, for OldestUnacknowledgedAge (injectable for tests).
  std::function<absl::Time()> now = [] { return absl::Now(); };
};

class MemorySpool : public Spool {
 public:
  explicit MemorySpool(SpoolOptions options);
  MemorySpool(const MemorySpool&) = delete;
  MemorySpool& operator=(const MemorySpool&) = delete;

  uint64_t incarnation() const override { return incarnation_; }
  absl::StatusOr<uint64_t> Append(std::vector<v1::Observation> observations) override;
  absl::StatusOr<std::vector<SpoolEntry>> Read(uint64_t from_sequence, size_t max) const override;
  absl::Status Acknowledge(uint64_t watermark) override;
  uint64_t Depth() const override;
  uint64_t Bytes() const override;
  absl::Duration OldestUnacknowledgedAge() const override;
  uint64_t LastSequence() const override;

 private:
  struct Stored {
    v1::Observation observation;
    absl::Time appended_at;
    uint64_t bytes;
  };

  const SpoolOptions options_;
  const uint64_t incarnation_;
  mutable absl::Mutex mu_;
  // entries_[i] has sequence first_sequence_ + i.
  std::deque<Stored> entries_ ABSL_GUARDED_BY(mu_);
  uint64_t first_sequence_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_SPOOL_H_
