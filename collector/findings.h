// The building blocks of findings, free of the engine's state and locking.
//
//   FindLevels        the consistent levels of a series (a split's evidence)
//   FindingTracker    persistence before opening, hysteresis before closing
//   TrustAccount      deposits and withdrawals with exponential decay
//   Cusum / DriftBaseline / Ewma   drift detectors on fixed bins
//   SeverityFor       severity from a deviation's size relative to its floor
//
// Each is a value type without internal locking; the Engine serialises
// access (all of them live under its evaluation lock).
#ifndef CONSTANCE_COLLECTOR_FINDINGS_H_
#define CONSTANCE_COLLECTOR_FINDINGS_H_

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "collector/stats.h"
#include "constance/v1/query.pb.h"

namespace constance::collector {

// A set of locations sharing one value, within the floor of each other.
struct Level {
  double value = 0;               // The most common value of the level.
  std::vector<uint32_t> members;  // Location indexes, ascending.
};

// The levels of a group: `main` holds the locations within `floor` of the
// median; `others` are clusters of at least `min_level` deviating
// locations (|x - median| > floor) whose values lie within `floor` of the
// cluster's lowest value. Deviants in clusters smaller than min_level are
// `scattered`: they stay candidates for outliers, however many.
struct Levels {
  Level main;
  std::vector<Level> others;  // Most populated first.
  std::vector<uint32_t> scattered;
};
Levels FindLevels(absl::Span<const LocatedValue> values, double median, double floor,
                  uint64_t min_level);

// One evaluation's view of one finding's condition.
struct Condition {
  std::string id;  // Stable identity (subject + kind class).
  // >= 1: the condition holds; < 1 - hysteresis: cleared with margin.
  double strength = 0;
  v1::Finding finding;  // Kind, subject, reasons, evidence; id/start set by the tracker.
};

// Opens a finding after `persistence` consecutive evaluations in which its
// condition holds, and closes it after `persistence` consecutive
// evaluations in which it cleared by the hysteresis margin. In between
// (holding weakly) nothing changes, so a value oscillating around the
// threshold neither opens nor closes anything.
class FindingTracker {
 public:
  FindingTracker(int persistence, double hysteresis, size_t history = 1000)
      : persistence_(persistence), hysteresis_(hysteresis), history_limit_(history) {}

  void set_policy(int persistence, double hysteresis) {
    persistence_ = persistence;
    hysteresis_ = hysteresis;
  }

  // One evaluation at `now`. Conditions absent from `conditions` count as
  // strength 0. Returns the findings opened by this evaluation. A
  // condition below strength 1 changes only a condition already tracked,
  // and its finding is not read: one untracked may be left out, and a
  // tracked one passed with its id and strength alone.
  std::vector<v1::Finding> Evaluate(std::vector<Condition> conditions, absl::Time now);

  // Whether a condition at `strength` holds: only then is its finding read.
  static bool Holds(double strength) { return strength >= 1; }

  // Whether the condition `id` is tracked (open, or on its way to opening).
  bool Tracks(const std::string& id) const { return states_.contains(id); }

  // Active findings, in id order.
  std::vector<v1::Finding> Active() const;
  // Recently closed findings, newest last (bounded).
  const std::deque<v1::Finding>& Closed() const { return closed_; }

  // Restores an open finding (durable state after a restart).
  void Restore(const v1::Finding& finding);

  // Every tracked condition as it stands (open or on its way to opening or
  // closing), for snapshots; Load replaces the tracker's state with them.
  struct Saved {
    std::string id;
    v1::Finding finding;
    int met = 0;
    int cleared = 0;
    bool open = false;
    absl::Time first_met = absl::InfinitePast();
  };
  std::vector<Saved> Save() const;
  void Load(std::vector<Saved> saved, std::deque<v1::Finding> closed);

 private:
  struct State {
    v1::Finding finding;
    int met = 0;
    int cleared = 0;
    bool open = false;
    absl::Time first_met = absl::InfinitePast();
  };
  int persistence_;
  double hysteresis_;
  size_t history_limit_;
  absl::flat_hash_map<std::string, State> states_;
  std::deque<v1::Finding> closed_;
};

// A location's trust account: one bad experience erases several good ones,
// and both fade with a half-life.
class TrustAccount {
 public:
  // Decays both sides to `now` (never backwards).
  void DecayTo(absl::Time now, absl::Duration half_life);
  void Deposit(double amount) { deposits_ += amount; }
  void Withdraw(double amount) { withdrawals_ += amount; }
  double balance() const { return deposits_ - withdrawals_; }
  // 0..100: the share of the decayed weight that is deposits (100 when
  // nothing happened yet).
  double score() const;
  double deposits() const { return deposits_; }
  double withdrawals() const { return withdrawals_; }
  absl::Time updated() const { return updated_; }
  void Restore(double deposits, double withdrawals, absl::Time updated) {
    deposits_ = deposits;
    withdrawals_ = withdrawals;
    updated_ = updated;
  }

 private:
  double deposits_ = 0;
  double withdrawals_ = 0;
  absl::Time updated_ = absl::InfinitePast();
};

// A location's trust balance at the end of each of its last `kDays` UTC
// days: Record at every evaluation overwrites today's entry (so a past
// day keeps its last evaluation's balance) and forgets days older than
// kDays - 1 before today. A day without an evaluation has no entry.
class TrustTrend {
 public:
  static constexpr int kDays = 30;
  struct Day {
    int64_t day = 0;  // Days since 1970-01-01, UTC.
    double balance = 0;
    double score = 100;
  };
  static int64_t DayOf(absl::Time t);
  static absl::Time StartOf(int64_t day);
  void Record(absl::Time now, double balance, double score);
  // Oldest first; at most kDays, none older than kDays - 1 before
  // `now`'s day.
  std::vector<Day> Days(absl::Time now) const;
  // Every kept day, as saved (Restore takes them back, oldest first).
  const std::deque<Day>& kept() const { return days_; }
  void Restore(std::deque<Day> days) { days_ = std::move(days); }

 private:
  std::deque<Day> days_;
};

// Tabular CUSUM of standardised deviations: S = max(0, S + x - k).
struct Cusum {
  double s = 0;
  double Update(double x, double k) {
    s = std::max(0.0, s + x - k);
    return s;
  }
};

// A baseline frozen from the first `bins` observations (a calm period):
// mean and standard deviation of what it saw.
struct DriftBaseline {
  int seen = 0;
  double sum = 0;
  double sum_squares = 0;
  bool frozen = false;
  double mean = 0;
  double stddev = 0;
  // Adds one bin's value until `bins` were seen, then freezes.
  void Add(double x, int bins);
};

// EWMA control chart: z = lambda x + (1 - lambda) z, starting at the
// baseline mean; limit = mean + L sigma sqrt(lambda / (2 - lambda)).
struct Ewma {
  double z = 0;
  bool started = false;
  double Update(double x, double lambda, double start) {
    if (!started) {
      z = start;
      started = true;
    }
    z = lambda * x + (1 - lambda) * z;
    return z;
  }
};

// LOW .. CRITICAL from |deviation| / floor: < 3 MEDIUM, < 10 HIGH, else
// CRITICAL (a deviation under the floor is never a finding, so never LOW).
v1::Severity SeverityFor(double deviation, double floor);

// "outlier", "split", ... (lower case, for ids, labels and messages).
std::string KindName(v1::FindingKind kind);

// Which kind wins when a (location, key) has several reasons.
int KindRank(v1::FindingKind kind);

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_FINDINGS_H_
