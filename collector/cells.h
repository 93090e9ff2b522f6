// Per-family cell state: what the collector keeps of one (location, series).
//
// Each family keeps what its comparable value needs and nothing else:
//   price       the latest price by event time, and its last few changes
//               (kept out of line: most prices never change);
//   wait        a quantile sketch per fixed event-time bin (default 15 min)
//               over a window (default 1 h); comparable = a quantile of the
//               merged bins, plus the share served within a promise;
//   compliance  pass / fail / critical-fail counts per bin (default 1 d)
//               over a window (default 7 d); comparable = pass rate, 0 when
//               a critical check failed in the window;
//   score       sum and count per bin over a window; comparable = mean.
// A cell whose latest event is older than its family's TTL, or with fewer
// samples in its window than min_samples, is not compared.
//
// Cells are plain values without locking: the Engine guards them.
#ifndef CONSTANCE_COLLECTOR_CELLS_H_
#define CONSTANCE_COLLECTOR_CELLS_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/time/time.h"
#include "collector/catalog.h"
#include "collector/sketch.h"
#include "constance/v1/observation.pb.h"

namespace constance::collector {

// One price change at a location, by event time.
struct PriceChange {
  int64_t at_ns = 0;
  int64_t from = 0;
  int64_t to = 0;
};

// The last kPriceChanges changes, oldest first.
constexpr int kPriceChanges = 4;
struct PriceChanges {
  std::array<PriceChange, kPriceChanges> ring;
  int size = 0;
  void Add(const PriceChange& c);
  // Changes with at_ns >= since_ns.
  int CountSince(int64_t since_ns) const;
  const PriceChange* latest() const { return size == 0 ? nullptr : &ring[size - 1]; }
};

struct PriceCell {
  int64_t observed_at_ns = 0;
  int64_t minor_units = 0;
  std::unique_ptr<PriceChanges> changes;  // Null until the price first changes.
  // Applies a price observed at `at_ns`: the latest event time wins.
  // Whether it recorded a change (then changes->latest()).
  bool Apply(int64_t minor_units, int64_t at_ns);
};

// A family's bins in nanoseconds. absl::Duration's conversions are out of
// line, so the ingest path converts a policy once per batch, not once per
// observation.
struct BinSpan {
  explicit BinSpan(const FamilyPolicy& policy);
  int64_t bin_ns = 0;    // The width of a bin.
  int64_t reach_ns = 0;  // window + bin: how far behind the newest bin one is kept.
};

// What a cell offers for comparison at a given time.
struct Comparable {
  double value = 0;
  uint64_t samples = 0;
  // Wait: share of waits within the promised time (when a promise exists).
  double share_within = 0;
  // Compliance: a critical check failed in the window.
  bool critical_failure = false;
  // Event time of the evidence: compliance, the start of the earliest bin
  // with a failed check among those compared (0 when none failed); other
  // families, the newest observation's.
  int64_t evidence_ns = 0;
};

// A family's policy read at one `now`, its instants and spans converted
// to nanoseconds once for a walk over a series' cells: absl's Time and
// Duration arithmetic is out of line, and a walk read it at every cell.
// What Compare* and CellHorizon below read of the policy.
class PolicyAt {
 public:
  PolicyAt(absl::Time now, const FamilyPolicy& policy);
  const FamilyPolicy& policy() const { return policy_; }
  // Older than the TTL.
  bool Stale(int64_t observed_at_ns) const { return observed_at_ns < stale_before_ns_; }
  // Whether the bin starting at `start_ns` overlaps the window (now - window, now].
  bool InWindow(int64_t start_ns) const {
    return start_ns + bin_ns_ > from_ns_ && start_ns <= now_ns_;
  }
  // Horizon::After's spans: ttl + 1 ns (stale from then), bin + window (a
  // bin out of the window from then).
  const std::optional<int64_t>& stale_span() const { return stale_span_; }
  const std::optional<int64_t>& window_span() const { return window_span_; }

 private:
  const FamilyPolicy& policy_;
  int64_t now_ns_, stale_before_ns_, from_ns_, bin_ns_;
  std::optional<int64_t> stale_span_, window_span_;
};

struct WaitCell {
  int64_t observed_at_ns = 0;
  struct Bin {
    int64_t start_ns;
    QuantileSketch sketch;
  };
  std::vector<Bin> bins;  // By start, oldest first.
  void Apply(double seconds, int64_t at_ns, const FamilyPolicy& policy, const WaitPolicy& sketch);
  // The same with `policy`'s bins converted (the ingest path).
  void Apply(double seconds, int64_t at_ns, const BinSpan& span, const WaitPolicy& sketch);
  // The window's merged sketch at `now`.
  QuantileSketch Window(absl::Time now, const FamilyPolicy& policy, const WaitPolicy& sketch) const;
  QuantileSketch Window(const PolicyAt& at, const WaitPolicy& sketch) const;
  // What Window reads lives apart from the cell, two fetches deep: a walk
  // over many cells starts fetching the bins some cells ahead
  // (PrefetchBins), then, fewer cells ahead, once the bins are in, each
  // bin's counts (PrefetchCounts).
  void PrefetchBins() const {
    const char* p = reinterpret_cast<const char*>(bins.data());
    const char* end = reinterpret_cast<const char*>(bins.data() + bins.size());
    for (; p < end; p += 64) __builtin_prefetch(p);
  }
  void PrefetchCounts() const {
    for (const Bin& b : bins) b.sketch.PrefetchCounts();
  }
};

struct CountBin {
  int64_t start_ns = 0;
  uint32_t passed = 0;
  uint32_t failed = 0;
  uint32_t critical_failed = 0;
};

struct ComplianceCell {
  int64_t observed_at_ns = 0;
  std::vector<CountBin> bins;
  void Apply(bool passed, bool critical, int64_t at_ns, const FamilyPolicy& policy);
  void Apply(bool passed, bool critical, int64_t at_ns, const BinSpan& span);
};

struct SumBin {
  int64_t start_ns = 0;
  double sum = 0;
  uint64_t count = 0;
};

struct ScoreCell {
  int64_t observed_at_ns = 0;
  std::vector<SumBin> bins;
  void Apply(double value, int64_t at_ns, const FamilyPolicy& policy);
  void Apply(double value, int64_t at_ns, const BinSpan& span);
};

// The first instant after `now` at which something read at `now` can
// read differently with time alone, the rules read forwards: for a cell
// (Compare* below), leaving its TTL and a bin entering or leaving its
// window. Evaluation recomputes a series whose horizon has come even when
// no observation touched it. INT64_MAX: nothing will.
class Horizon {
 public:
  explicit Horizon(absl::Time now) : now_ns_(absl::ToUnixNanos(now)) {}
  // Folds in `at_ns` when it is after now.
  void At(int64_t at_ns) {
    if (at_ns > now_ns_ && at_ns < until_ns_) until_ns_ = at_ns;
  }
  void At(absl::Time at);
  // `from_ns` + `d` (a window's edge), saturating; nothing for an infinite d.
  void After(int64_t from_ns, absl::Duration d) { After(from_ns, SpanNs(d)); }
  // The same with `d` converted once (SpanNs).
  void After(int64_t from_ns, const std::optional<int64_t>& span_ns);
  // `d` in nanoseconds (saturating), nullopt when infinite.
  static std::optional<int64_t> SpanNs(absl::Duration d);
  int64_t now_ns() const { return now_ns_; }
  int64_t until_ns() const { return until_ns_; }

 private:
  int64_t now_ns_;
  int64_t until_ns_ = INT64_MAX;
};

// `at`: the cell's family policy (any now: the spans alone are read).
void CellHorizon(const PriceCell& cell, const PolicyAt& at, Horizon* h);
void CellHorizon(const WaitCell& cell, const PolicyAt& at, Horizon* h);
void CellHorizon(const ComplianceCell& cell, const PolicyAt& at, Horizon* h);
void CellHorizon(const ScoreCell& cell, const PolicyAt& at, Horizon* h);

// The comparable value of a cell at `now`, or nullopt when it is stale
// (older than the TTL) or has too few samples in its window.
// `within_seconds` > 0 asks waits for the share served within it.
std::optional<Comparable> ComparePrice(const PriceCell& cell, absl::Time now,
                                       const FamilyPolicy& policy);
std::optional<Comparable> CompareWait(const WaitCell& cell, absl::Time now,
                                      const FamilyPolicy& policy, const WaitPolicy& sketch,
                                      double within_seconds);
// Compliance by `mode` (catalog.h, KeyJudging): the pass rate over the
// window, or the newest bin's alone (a latest inspection is compared
// whatever min_samples says: one result is what there is). A critical
// failure in the window is compared whatever min_samples says too.
std::optional<Comparable> CompareCompliance(const ComplianceCell& cell, absl::Time now,
                                            const FamilyPolicy& policy,
                                            JudgingMode mode = JudgingMode::kRate);
std::optional<Comparable> CompareScore(const ScoreCell& cell, absl::Time now,
                                       const FamilyPolicy& policy);
// The same with the policy read once for many cells (PolicyAt).
std::optional<Comparable> ComparePrice(const PriceCell& cell, const PolicyAt& at);
std::optional<Comparable> CompareWait(const WaitCell& cell, const PolicyAt& at,
                                      const WaitPolicy& sketch, double within_seconds);
std::optional<Comparable> CompareCompliance(const ComplianceCell& cell, const PolicyAt& at,
                                            JudgingMode mode = JudgingMode::kRate);
std::optional<Comparable> CompareScore(const ScoreCell& cell, const PolicyAt& at);

// The start of the fixed bin holding `at_ns`.
int64_t BinStart(int64_t at_ns, absl::Duration bin);

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_CELLS_H_
