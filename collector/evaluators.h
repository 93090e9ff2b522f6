// The evaluators: one function per finding kind, each deciding over one
// series' computed data (a peer group's members, statistics and levels)
// with the thresholds it is given, and nothing else. Engine::Evaluate
// (engine.cc) collects and computes every series, calls these, settles
// trust and hands the conditions to the FindingTracker (findings.h). The
// rules they apply are README's "How constance decides" and
// docs/design.md ("Findings").
//
//   std::vector<WeightedReason> reasons;
//   const bool outlier = OutlierReason(key, group, i, /*weak=*/0.8, &reasons);
//   IrregularChangeReason(key, group, i, changed, IrregularClock(now, catalog.thresholds),
//                         catalog.thresholds, &reasons);
//
// A location finding gathers (strength, reason) pairs: strength 1 or more
// means the reason holds, down to `weak` (1 - hysteresis) it is carried so
// that a finding closes only with the hysteresis margin.
//
// Thread-safety: functions of their arguments alone, except the drift
// evaluators, which update the drift state they are given (callers
// serialise access to it). Pointers into a GroupData (stats, entries) must
// stay live for the call.
#ifndef CONSTANCE_COLLECTOR_EVALUATORS_H_
#define CONSTANCE_COLLECTOR_EVALUATORS_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "collector/catalog.h"
#include "collector/cells.h"
#include "collector/findings.h"
#include "collector/stats.h"
#include "constance/v1/query.pb.h"

namespace constance::collector {

struct SeriesKey;      // engine.h
struct SeriesStats;    // engine.h
struct LocationState;  // engine.h

// One location's comparable value in a series, with what findings need.
// Millions are built each evaluation: the name is a pointer (MemberNames).
struct GroupMember {
  uint32_t location = 0;
  int changes_in_flip_window = 0;
  Comparable value;
  PriceChange latest_change;  // at_ns = 0: no change kept.
  const LocationEntry* entry = nullptr;
  const std::string* name = nullptr;  // Into the MemberNames it was collected with.
  // False for a member of a declared peer group copied into the chain
  // fallback: it is compared against, and judged in its own group only.
  bool judged = true;
};

// The location names a recomputation's members point at: each location's
// name as the recomputation started, by location index, and a copy of the
// name of any location added (or a freed slot reused) since. A location's
// slot is freed only while no recomputation runs (Engine::ForgetLocked,
// under recompute_mu_), so a name taken at the start still names its
// slot's location until the end. Lives as long as the members do.
class MemberNames {
 public:
  MemberNames() = default;  // Copies every name: for a few members.
  explicit MemberNames(std::vector<std::string> by_location)
      : by_location_(std::move(by_location)) {}
  MemberNames(const MemberNames&) = delete;
  MemberNames& operator=(const MemberNames&) = delete;

  // `loc`'s name; `current` is its name now (read under the ingest lock).
  // Safe from several threads at once.
  const std::string* Of(uint32_t loc, const std::string& current);

 private:
  std::vector<std::string> by_location_;  // Set once. Empty: a freed slot.
  absl::Mutex mu_;
  std::deque<std::string> added_ ABSL_GUARDED_BY(mu_);  // Never moves a name.
};

// One peer group of a series, computed (Engine::ComputeGroups).
struct GroupData {
  std::string group;
  std::vector<GroupMember> members;  // Sorted by location, each at most once.
  // The chain fallback of a series with declared peer groups: members of
  // groups too small to compare, judged against every location of the
  // series (the others' members are there, not judged).
  bool fallback = false;
  // Each member's standing under the outlier rule (stats.h AssessValue),
  // by member index, with the group's structure applied: a member of a
  // level or of a rollout is no outlier. The statistics' outliers and
  // the findings both read it.
  std::vector<Assessment> assessed;
  std::shared_ptr<SeriesStats> stats;
  Levels levels;
  std::vector<double> rollout_values;
  // Prices: the members' latest changes within the rollout grace, sorted
  // by (from, to, at_ns): each move's changes are one run, oldest first
  // (RolloutMoves, engine.cc). A move made by min_level locations or more is
  // a rollout.
  std::vector<PriceChange> moves;
};

// The member of g at `location`, or null (a binary search).
const GroupMember* FindMember(const GroupData& g, uint32_t location);

// The rollout rule's test: whether `v` is within `floor` (the group's band
// floor) of one of `values`, the levels a chain-wide change goes to
// (GroupData::rollout_values). Engine::ComputeGroups exempts such levels
// and members from outliers and splits; IrregularChangeReason and the
// price-drop feed (Engine::PriceDropsOf) read a change ending there as a
// rollout.
bool NearAny(const std::vector<double>& values, double v, double floor);

using WeightedReason = std::pair<double, v1::Reason>;  // (strength, reason)

// A reason with its direction from the sign of `deviation`.
v1::Reason MakeReason(v1::FindingKind kind, std::string detail, double value, double expected,
                      double low, double high, double magnitude, double deviation);

// A finding about group g of series `key` as a whole, for HQ: id
// "<prefix>|<group_id>", the series, group and group size filled in;
// the caller adds levels, locations and reasons. Drift and split use it.
Condition GroupCondition(const SeriesKey& key, const std::string& group_id, const GroupData& g,
                         absl::string_view prefix, v1::FindingKind kind, v1::Severity severity,
                         double strength);

// ---- Drift (not for prices; not for judged compliance keys) ----------

// A cell's CUSUM measures its deviation against its own calm baseline,
// so a store that is always a little slower (inside the band) is steady,
// not drifting.
struct CellDriftState {
  DriftBaseline baseline;
  Cusum up, down;
  int64_t last_bin = INT64_MIN;
};

// A group's dispersion drift: the EWMA of its scale against a calm
// baseline, which freezes after drift.baseline_bins bins.
struct GroupDriftState {
  DriftBaseline baseline;
  Ewma ewma;
  int64_t last_bin = INT64_MIN;
  double scale = 0;  // Frozen baseline scale (robust sigma), floored.
  bool alarm = false;
  double level = 0;  // >= 1: drifting.
  // Its members' cells' drift, by location index: found per member
  // without hashing the group's id again.
  absl::flat_hash_map<uint32_t, CellDriftState> cells;
};

// Updates *state once per drift bin (`bin`, the bin now falls in) from
// g's band scale, and returns the drift condition while its level is at
// least `weak`.
std::optional<Condition> GroupDriftCondition(const SeriesKey& key, const std::string& group_id,
                                             const GroupData& g, int64_t bin,
                                             const DriftPolicy& drift, double z_threshold,
                                             double weak, GroupDriftState* state);
// Updates member i's CUSUM once per drift bin, measured in the group's
// frozen `group_scale`, and returns its drift reason while it is at least
// `weak` (waits drift up, compliance down, others both ways).
std::optional<WeightedReason> CellDriftReason(const SeriesKey& key, const GroupData& g, size_t i,
                                              double group_scale, int64_t bin,
                                              const DriftPolicy& drift, double weak,
                                              CellDriftState* state);

// ---- Split and zone (prices) ----------------------------------------

// A split found in one group, with one signature (the sorted names of its
// locations) per deviating level, so that zones can gather the splits of
// the same locations on many keys.
struct SplitCandidate {
  Condition condition;
  std::vector<std::string> signatures;  // One per deviating level.
};

// Group g's split: it has deviating levels (g.levels.others non-empty).
SplitCandidate SplitCondition(const SeriesKey& key, const std::string& group_id,
                              const GroupData& g);
// Zones: the same locations split from the rest on th.zone_min_keys keys
// or more, said once; the other splits are added after the zones (copied:
// the candidates stay with the series outcomes that made them).
void ZoneConditions(const std::vector<const SplitCandidate*>& splits, const Thresholds& th,
                    std::vector<Condition>* out);

// ---- Outlier ---------------------------------------------------------

// Member i's outlier reason (the rule's verdict in g.assessed), if its
// strength is at least `weak`; true when the rule counts it an outlier.
// With `detail` false the reason's text is left empty (its numbers are
// set) for a caller that shows it only in a finding that holds, and fills
// it then with OutlierDetail: most reasons found go into no finding.
bool OutlierReason(const SeriesKey& key, const GroupData& g, size_t i, double weak,
                   std::vector<WeightedReason>* reasons, bool detail = true);
// The text of member i's outlier reason.
std::string OutlierDetail(const SeriesKey& key, const GroupData& g, size_t i);

// ---- Irregular change (prices) -----------------------------------------

// The instants the irregular-change rule compares a change's time with,
// taken from now once for a group rather than once for each member
// (absl's time arithmetic is out of line).
struct IrregularClock {
  IrregularClock(absl::Time now, const Thresholds& th);
  int64_t window_from_ns;  // now - irregular_window: changes since count.
  int64_t settled_by_ns;   // now - irregular_settle: changes until then are settled.
};

// Member i's irregular price change, if it made one: flipping
// th.flip_changes times in th.flip_window, or a change few peers made
// (under th.irregular_peer_share) ending away from every level and
// rollout, settled th.irregular_settle and within th.irregular_window.
// `changed`: ChangedInIrregularWindow(g, clock), counted once for the
// group rather than once for each member that may be irregular.
// `clock`: IrregularClock(now, th), taken once for the group.
void IrregularChangeReason(const SeriesKey& key, const GroupData& g, size_t i, uint64_t changed,
                           const IrregularClock& clock, const Thresholds& th,
                           std::vector<WeightedReason>* reasons);

// How many members of g changed their price within th.irregular_window of
// now (a member's latest change): the peers who changed, and the member.
uint64_t ChangedInIrregularWindow(const GroupData& g, const IrregularClock& clock);

// Whether member i's latest change is within th.irregular_window and away
// from every level and rollout of g: the irregular change above, but for
// flips, settling and the peers who changed too.
bool MayBeIrregular(const GroupData& g, size_t i, const IrregularClock& clock);

// When time alone next changes an irregular-change decision of g: a
// member's latest change leaving the window (it counts among the peers who
// changed), read only while a member may be irregular. Without new data
// none can become so: its change only ages out of the window, and the
// levels and rollouts it is measured against change at horizons of their
// own (cells' TTLs: HorizonWalk, engine.cc; rollouts:
// RolloutHorizon, engine.cc).
void IrregularHorizon(const GroupData& g, absl::Time now, const Thresholds& th, Horizon* h);

// ---- Promises ------------------------------------------------------------

// A location's standing under the promise that applies to it in a series.
struct PromiseVerdict {
  std::string id;  // "price:LINE", "wait:LINE" or "check:LINE".
  // What is promised, in customers' words, for the promise record:
  // "list price 4.49 EUR", "90% served within 150 s".
  std::string promise;
  double strength = -1;   // 1 and above: broken.
  bool critical = false;  // A critical check failed: broken at once.
  v1::Reason reason;
};

// A price above its list price by more than the price floor of the list.
PromiseVerdict PricePromiseVerdict(const SeriesKey& key, const PricePromise& promise, double price,
                                   const OutlierPolicy& policy);
// A share served within the promised seconds below the promised share
// (floor: compliance.floor_absolute).
PromiseVerdict WaitPromiseVerdict(const WaitPromise& promise, const Comparable& value,
                                  double floor);
// A pass rate short of min_pass_rate by its evidence (RateShortfall), or
// a failed critical check of a critical promise: broken at once.
PromiseVerdict CheckPromiseVerdict(const SeriesKey& key, const CheckPromise& promise,
                                   const Comparable& value, double floor);
// The catalog's list prices for series `key` (its key, currency and
// kind; none for other families), in catalog order. Found once for a
// series: a catalog may list a price for every item the chain sells, and a
// series has a member at every location.
std::vector<const PricePromise*> PricePromisesFor(const SeriesKey& key, const Catalog& catalog);

// The promise on `key` at a location (`entry`, may be null) whose value
// is `value`, if one applies: its price promise (of `price_promises`,
// PricePromisesFor), else the series' wait or check promise (looked up
// once per series by the caller, may be null).
std::optional<PromiseVerdict> PromiseVerdictFor(
    const SeriesKey& key, const LocationEntry* entry, const Comparable& value,
    const std::vector<const PricePromise*>& price_promises, const WaitPromise* wait_promise,
    const CheckPromise* check_promise, absl::Time now, const Catalog& catalog);

// Promise id -> (locations it applies to, locations breaking it), in one
// series.
using PromiseTally = std::map<std::string, std::pair<uint64_t, uint64_t>>;
// Unkeepable promises: broken by th.unkeepable_share of at least
// th.min_group locations. One finding for HQ each; returns their ids,
// whose breaks then count against no location.
absl::flat_hash_set<std::string> UnkeepableConditions(const SeriesKey& key,
                                                      const std::string& series_name,
                                                      const PromiseTally& promise_tally,
                                                      const Thresholds& th,
                                                      std::vector<Condition>* out);

// ---- Severity ------------------------------------------------------------

// The severity one reason of a location finding asks for: an outlier's by
// its distance from the expected value in floors (a pass rate's by its
// strength: the evidence), a broken promise high, an irregular change
// medium. Only a failed critical check is ever critical on a compliance
// key (`critical_failure`).
v1::Severity ReasonSeverity(v1::Family family, const v1::Reason& reason, double strength,
                            double floor, bool critical_failure);
// A location finding's severity from its reasons, sorted strongest first:
// those at full strength decide (a near miss carried along does not
// raise it); only while hysteresis alone holds it open do the weaker ones.
// `promise_critical` applies to a broken promise, `critical_failure` to
// the others. *only_drift: every deciding reason is a drift.
v1::Severity LocationSeverity(v1::Family family, const std::vector<WeightedReason>& reasons,
                              double floor, bool promise_critical, bool critical_failure,
                              bool* only_drift);

// ---- Delivery ------------------------------------------------------------

// Silent: a declared location expected open whose agent said nothing (no
// batch, no heartbeat) within th.location_ttl. Stale: its agent is alive
// but its newest data is older than its cadence plus location_ttl.
void DeliveryConditions(const std::vector<LocationState>& states, const Catalog& catalog,
                        absl::Time now, std::vector<Condition>* out);

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_EVALUATORS_H_
