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
// everything in memory (lost on exit), SqliteSpool (sqlite_spool.h) keeps it
// in one durable file. Every operation that could touch a disk returns a
// Status.
//
// Bounds. A spool holds at most max_observations unacknowledged
// observations and max_bytes of them. What an append that does not fit
// gets depends on SpoolOptions::when_full: kRefuse (the default) refuses it
// whole (ResourceExhausted, the spool unchanged), kDropOldest deletes the
// oldest unacknowledged observations, in the append's own transaction,
// until it fits, and counts them (DroppedOldest). Dropped observations are
// never delivered and their ids are forgotten. An append larger than the
// bounds themselves is refused under either policy.
//
// Idempotency. A local writer may set Observation.id: an observation whose id
// is already in the spool, or was acknowledged within the idempotency window,
// is a duplicate: it is acknowledged again (counted in AppendResult) and not
// stored twice, whatever its other fields say. A writer may also give a whole
// request a key (HTTP Idempotency-Key): the spool remembers the answer given
// for that key for the same window, in the same transaction as the append,
// so a retry gets the same answer and stores nothing.
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
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
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

// The answer given to a local writer's request, remembered under the
// request's idempotency key.
struct RequestAnswer {
  int status = 0;
  std::string body;
  // What the request was (endpoint and a hash of its body), so that the key
  // reused for another request is told apart from a retry. Empty for
  // answers remembered by agents that kept none.
  std::string fingerprint;
};

// A request key and the answer to remember for it (see AppendBatch).
struct RememberRequest {
  std::string key;
  RequestAnswer answer;
};

// One change to the input state (see Spool::AppendWithState): `value`
// stored under `key`, or `key` deleted when `value` is empty.
struct StateWrite {
  std::string key;
  std::optional<std::string> value;
};

// What AppendBatch did.
struct AppendResult {
  // The number given to the first stored observation; the other stored ones
  // follow consecutively. When nothing was stored: the next number.
  uint64_t first_sequence = 0;
  // Observations stored, in the order given, duplicates left out.
  uint64_t stored = 0;
  // Observations not stored because their id was already known.
  uint64_t duplicates = 0;
  // Set when the request key was already remembered: the answer given then.
  // Nothing was stored (stored == duplicates == 0).
  std::optional<RequestAnswer> earlier_answer;
};

class Spool {
 public:
  virtual ~Spool() = default;

  // The random id of this spool's numbering; never 0.
  virtual uint64_t incarnation() const = 0;

  // AppendBatch(observations, nullptr), returning first_sequence: what
  // callers that never set ids need.
  absl::StatusOr<uint64_t> Append(std::vector<v1::Observation> observations);

  // Appends the observations that are not duplicates (see the file comment;
  // two observations of one call with the same id store the first), all or
  // none, in one transaction. ResourceExhausted when they do not fit under
  // the bounds; the spool is then unchanged. If `remember` is not null, the
  // same transaction remembers its answer under its key for the
  // idempotency window, unless that key is remembered already: then nothing
  // is stored and the result carries the earlier answer. Appending nothing
  // stores nothing and returns the next number.
  virtual absl::StatusOr<AppendResult> AppendBatch(std::vector<v1::Observation> observations,
                                                   const RememberRequest* remember) = 0;

  // The answer remembered for request key `key` within the idempotency
  // window, or nullopt.
  virtual absl::StatusOr<std::optional<RequestAnswer>> LookupRequest(
      const std::string& key) const = 0;

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

  // Observations deleted unacknowledged by the kDropOldest policy since
  // this spool was opened (0 for spools without that policy).
  virtual uint64_t DroppedOldest() const { return 0; }

  // Input state: small named values the agent's inputs keep next to the
  // observations they produced (a drop-directory file's checkpoint, an open
  // queue ticket), so that a restart sees both or neither.
  //
  // AppendBatch(observations, nullptr) and, in the same transaction, `writes`
  // applied in order (a write without a value deletes its key). All or
  // nothing: when the observations do not fit, no state changes either.
  // The default refuses (Unimplemented): a spool without input state.
  virtual absl::StatusOr<AppendResult> AppendWithState(std::vector<v1::Observation> observations,
                                                       const std::vector<StateWrite>& writes);
  // Every input state entry whose key starts with `prefix`, by key.
  virtual absl::StatusOr<std::map<std::string, std::string>> ReadState(
      const std::string& prefix) const;
};

// A random nonzero incarnation (0 is what an unset proto field reads as).
uint64_t NewSpoolIncarnation();

struct SpoolOptions;

// The ResourceExhausted error of a full spool: `depth`/`bytes` waiting,
// `adding`/`adding_bytes` refused.
absl::Status SpoolFullError(uint64_t depth, uint64_t bytes, uint64_t adding, uint64_t adding_bytes,
                            const SpoolOptions& options);

// Whether `adding` more observations (`adding_bytes`) fit beside `depth`
// (`bytes`) within `options`' bounds.
bool SpoolFits(uint64_t depth, uint64_t bytes, uint64_t adding, uint64_t adding_bytes,
               const SpoolOptions& options);

// For an append of `adding` (`adding_bytes`) beside `depth` (`bytes`):
// false when it fits; true when it fits once the oldest are dropped
// (kDropOldest, and it fits an empty spool); else SpoolFullError. Every
// spool decides by it.
absl::StatusOr<bool> MustDropOldest(uint64_t depth, uint64_t bytes, uint64_t adding,
                                    uint64_t adding_bytes, const SpoolOptions& options);

// What a full spool does with an append that does not fit.
enum class SpoolWhenFull {
  kRefuse,      // Refuse it: the writer gets the error, nothing is lost.
  kDropOldest,  // Make room by deleting the oldest unacknowledged ones.
};

// "refuse" / "drop_oldest", as the agent's config spells them.
absl::StatusOr<SpoolWhenFull> ParseSpoolWhenFull(absl::string_view text);

struct SpoolOptions {
  SpoolWhenFull when_full = SpoolWhenFull::kRefuse;
  // Unacknowledged observations the spool holds at most.
  uint64_t max_observations = 1'000'000;
  // Serialized bytes of unacknowledged observations the spool holds at most.
  uint64_t max_bytes = uint64_t{256} << 20;
  // How long acknowledged observation ids and request answers are
  // remembered for idempotent retries.
  absl::Duration idempotency_window = absl::Hours(24);
  // The spool's clock, for OldestUnacknowledgedAge (injectable for tests).
  std::function<absl::Time()> now = [] { return absl::Now(); };
};

class MemorySpool : public Spool {
 public:
  explicit MemorySpool(SpoolOptions options);
  MemorySpool(const MemorySpool&) = delete;
  MemorySpool& operator=(const MemorySpool&) = delete;

  uint64_t incarnation() const override { return incarnation_; }
  absl::StatusOr<AppendResult> AppendBatch(std::vector<v1::Observation> observations,
                                           const RememberRequest* remember) override;
  absl::StatusOr<std::optional<RequestAnswer>> LookupRequest(const std::string& key) const override;
  absl::StatusOr<std::vector<SpoolEntry>> Read(uint64_t from_sequence, size_t max) const override;
  absl::Status Acknowledge(uint64_t watermark) override;
  uint64_t Depth() const override;
  uint64_t Bytes() const override;
  absl::Duration OldestUnacknowledgedAge() const override;
  uint64_t LastSequence() const override;
  uint64_t DroppedOldest() const override;
  absl::StatusOr<AppendResult> AppendWithState(std::vector<v1::Observation> observations,
                                               const std::vector<StateWrite>& writes) override;
  absl::StatusOr<std::map<std::string, std::string>> ReadState(
      const std::string& prefix) const override;

 private:
  struct Stored {
    v1::Observation observation;
    absl::Time appended_at;
    uint64_t bytes;
  };
  struct Remembered {
    RequestAnswer answer;
    absl::Time at;
  };

  // Forgets acknowledged ids and request answers older than the window.
  void PruneLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SpoolOptions options_;
  const uint64_t incarnation_;
  mutable absl::Mutex mu_;
  // entries_[i] has sequence first_sequence_ + i.
  std::deque<Stored> entries_ ABSL_GUARDED_BY(mu_);
  uint64_t first_sequence_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  // Ids of the observations in entries_.
  std::set<std::string> ids_ ABSL_GUARDED_BY(mu_);
  // Ids acknowledged within the window -> when.
  std::map<std::string, absl::Time> acknowledged_ids_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Remembered> requests_ ABSL_GUARDED_BY(mu_);
  // Input state; kept apart from mu_ (AppendWithState calls AppendBatch).
  mutable absl::Mutex state_mu_;
  std::map<std::string, std::string> state_ ABSL_GUARDED_BY(state_mu_);
};

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_SPOOL_H_
