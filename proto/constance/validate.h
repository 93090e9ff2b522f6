// Validation of observations and identifiers, shared by agent and collector.
//
// The agent validates before it spools (so a writer hears about a bad item
// at once) and the collector validates again on arrival (an agent is never
// trusted). Both call the same functions so they can never disagree.
//
// Example:
//   constance::Limits limits;
//   absl::Status s = constance::ValidateObservation(obs, absl::Now(), limits);
//   if (!s.ok()) reject(obs, s.message());
//
// All functions are pure and thread-safe.
#ifndef CONSTANCE_VALIDATE_H_
#define CONSTANCE_VALIDATE_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "constance/batch_view.h"
#include "constance/v1/ingest.pb.h"
#include "constance/v1/observation.pb.h"

namespace constance {

// Bounds every observation must meet. Every field is a configuration key.
struct Limits {
  // Observations more than this far ahead of the receiver's clock are
  // rejected (a store server with a wrong clock must not win "latest").
  absl::Duration max_future_skew = absl::Minutes(5);
  // Observations older than this are rejected; a backlog after an outage
  // shorter than this still counts.
  absl::Duration max_lateness = absl::Hours(24 * 7);
  // Prices at or above this many minor units are rejected as typos.
  int64_t max_price_minor_units = 100'000'000;  // 1,000,000.00
  // A single ticket's wait above this is a broken queue system, not a wait.
  double max_wait_seconds = 86'400;
  // Scores are free-form indicators but must stay in a sane range.
  double max_abs_score = 1e9;
  // Observations in one batch, at most (the agent's max_batch stays at or
  // below it). A larger batch is refused whole.
  size_t max_batch_observations = 10'000;

  // Collector-wide resource bounds (0 = unlimited). Past max_series a new
  // series' observations are rejected with reason "series"; past
  // max_locations a new location's stream is refused RESOURCE_EXHAUSTED
  // (retryable: nothing is acknowledged, the agent keeps its spool).
  uint64_t max_series = 0;
  uint64_t max_locations = 0;
  // Cells (keys) one location may hold, checked before max_series so that
  // one store cannot use up the collector's series for the others: past
  // it the location's observations of a new key are rejected with reason
  // "location_cells" (0 = unlimited).
  uint64_t max_cells_per_location = 0;
};

// A location id: [a-z0-9][a-z0-9._-]{0,62}.
absl::Status ValidateLocationId(absl::string_view id);

// A spool incarnation as a client sends it in a batch or heartbeat: any
// value but 0, which is what a client that forgot to set it sends.
absl::Status ValidateIncarnation(uint64_t incarnation, absl::string_view field);

// A key: [A-Za-z0-9._:/-]{1,128}.
absl::Status ValidateKey(absl::string_view key);

// An ISO 4217 currency code (the closed list of constance/money.h, including
// the X.. codes for metals and testing), e.g. "EUR".
absl::Status ValidateCurrency(absl::string_view currency);

// A location label (brand, region, ...) as an agent declares it: the name
// matches [a-z][a-z0-9_]{0,62}, the value is at most 128 printable ASCII
// bytes. ValidateLabels also bounds their number (kMaxLabels).
inline constexpr size_t kMaxLabels = 32;
absl::Status ValidateLabel(absl::string_view name, absl::string_view value);
absl::Status ValidateLabels(const std::map<std::string, std::string>& labels);

// An observation's idempotency id: up to 128 printable ASCII characters
// (space to '~'); empty means none.
absl::Status ValidateObservationId(absl::string_view id);

// The batch-level rules: a valid location id, first_sequence >= 1 with no
// overflow of the sequence range, at most limits.max_batch_observations
// observations, a skipped_from (if set) below first_sequence.
// Observations themselves are checked one by one with
// ValidateObservation, so one bad item never refuses the rest.
absl::Status ValidateBatchShape(const v1::Batch& batch, const Limits& limits);
absl::Status ValidateBatchShape(const BatchView& batch, const Limits& limits);
absl::Status ValidateBatchShape(absl::string_view location, uint64_t first_sequence,
                                uint64_t count, const Limits& limits);

// Checks every field of `obs` against `limits`, with `now` as the
// receiver's clock. Returns InvalidArgument naming the field and the rule
// on failure (the first rule broken, in a fixed order: key, id, value,
// observed_at). An unset observed_at is accepted (the agent stamps it).
absl::Status ValidateObservation(const v1::Observation& obs, absl::Time now, const Limits& limits);
// The same checks on a view (see batch_view.h), as the collector reads a
// batch.
absl::Status ValidateObservation(const ObservationView& obs, absl::Time now,
                                 const Limits& limits);

// ValidateObservation for many observations against one clock, e.g. a
// batch's: the bounds on observed_at are computed once, not once per
// observation (absl's Time arithmetic is out of line). Check(obs) is
// ValidateObservation(obs, now, limits), which forwards to it. `limits`
// must outlive the validator.
class ObservationValidator {
 public:
  ObservationValidator(absl::Time now, const Limits& limits);
  absl::Status Check(const ObservationView& obs) const;

 private:
  absl::Status CheckObservedAt(int64_t seconds, int32_t nanos) const;

  const Limits& limits_;
  absl::Time earliest_, latest_;  // now - max_lateness, now + max_future_skew.
  // Their whole seconds, rounded down: a time whose whole seconds lie
  // strictly between is after earliest_ and before latest_.
  int64_t earliest_seconds_, latest_seconds_;
};

// The family implied by which value is set (FAMILY_UNSPECIFIED if none).
v1::Family FamilyOf(const v1::Observation& obs);
v1::Family FamilyOf(const ObservationView& obs);
v1::Family FamilyOf(v1::Observation::ValueCase value);

// "price", "wait", "compliance", "score" (or "unspecified").
absl::string_view FamilyName(v1::Family family);

// Inverse of FamilyName; InvalidArgument for anything else.
absl::Status ParseFamily(absl::string_view name, v1::Family* family);

}  // namespace constance

#endif  // CONSTANCE_VALIDATE_H_
