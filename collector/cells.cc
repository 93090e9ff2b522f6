#include "collector/cells.h"

#include <algorithm>

namespace constance::collector {
namespace {

int64_t Nanos(absl::Duration d) { return absl::ToInt64Nanoseconds(d); }
int64_t Nanos(absl::Time t) { return absl::ToUnixNanos(t); }

bool Stale(int64_t observed_at_ns, absl::Time now, const FamilyPolicy& policy) {
  return observed_at_ns < Nanos(now - policy.ttl);
}

// Stale from the first nanosecond past observed_at + ttl.
void StaleHorizon(int64_t observed_at_ns, const FamilyPolicy& policy, Horizon* h) {
  h->After(observed_at_ns, policy.ttl + absl::Nanoseconds(1));
}

int64_t BinStartNs(int64_t at_ns, int64_t bin_ns) {
  if (bin_ns <= 0) return at_ns;
  int64_t q = at_ns / bin_ns;
  if (at_ns % bin_ns < 0) --q;  // Floor for times before the epoch.
  return q * bin_ns;
}

// Finds or inserts the bin starting at `start`, keeping bins ordered, and
// drops bins that fell behind the newest one's window. Returns null for a
// sample older than every window that still matters.
template <typename Bins, typename Make>
typename Bins::value_type* BinFor(Bins& bins, int64_t start, const BinSpan& span, Make make) {
  const int64_t reach = span.reach_ns;
  // Most samples land in the newest bin, with nothing to insert or drop
  // (the oldest is still within reach; it may not be after the catalog
  // changed the window): the slow path below would return the same.
  if (!bins.empty() && bins.back().start_ns == start && bins.front().start_ns >= start - reach) {
    return &bins.back();
  }
  if (!bins.empty() && start < bins.back().start_ns - reach) return nullptr;
  auto it = std::lower_bound(bins.begin(), bins.end(), start,
                             [](const auto& b, int64_t s) { return b.start_ns < s; });
  if (it == bins.end() || it->start_ns != start) it = bins.insert(it, make(start));
  const size_t index = it - bins.begin();
  const int64_t horizon = bins.back().start_ns - reach;
  size_t drop = 0;
  while (drop < bins.size() && bins[drop].start_ns < horizon) ++drop;
  bins.erase(bins.begin(), bins.begin() + drop);
  return &bins[index - drop];
}

// Whether a bin overlaps the window (now - window, now], its bounds
// converted once for a cell's bins (absl's conversions are out of line).
class InWindow {
 public:
  InWindow(absl::Time now, const FamilyPolicy& policy)
      : bin_ns_(Nanos(policy.bin)), from_ns_(Nanos(now - policy.window)), now_ns_(Nanos(now)) {}
  bool operator()(int64_t start) const { return start + bin_ns_ > from_ns_ && start <= now_ns_; }

 private:
  const int64_t bin_ns_, from_ns_, now_ns_;
};

// A bin is in the window from its start until start + bin + window
// (InWindow read forwards).
template <typename Bins>
void WindowHorizon(const Bins& bins, const FamilyPolicy& policy, Horizon* h) {
  for (const auto& b : bins) {
    h->At(b.start_ns);
    h->After(b.start_ns, policy.bin + policy.window);
  }
}

}  // namespace

void Horizon::At(absl::Time at) {
  if (at == absl::InfinitePast() || at == absl::InfiniteFuture()) return;
  At(absl::ToUnixNanos(at));
}

void Horizon::After(int64_t from_ns, absl::Duration d) {
  if (d == absl::InfiniteDuration() || d == -absl::InfiniteDuration()) return;
  const int64_t span = absl::ToInt64Nanoseconds(d);
  if (span > 0 && from_ns > INT64_MAX - span) return;
  if (span < 0 && from_ns < INT64_MIN - span) return;
  At(from_ns + span);
}

void CellHorizon(const PriceCell& cell, const FamilyPolicy& policy, Horizon* h) {
  if (cell.observed_at_ns != 0) StaleHorizon(cell.observed_at_ns, policy, h);
}

void CellHorizon(const WaitCell& cell, const FamilyPolicy& policy, Horizon* h) {
  StaleHorizon(cell.observed_at_ns, policy, h);
  WindowHorizon(cell.bins, policy, h);
}

void CellHorizon(const ComplianceCell& cell, const FamilyPolicy& policy, Horizon* h) {
  StaleHorizon(cell.observed_at_ns, policy, h);
  WindowHorizon(cell.bins, policy, h);
}

void CellHorizon(const ScoreCell& cell, const FamilyPolicy& policy, Horizon* h) {
  StaleHorizon(cell.observed_at_ns, policy, h);
  WindowHorizon(cell.bins, policy, h);
}

int64_t BinStart(int64_t at_ns, absl::Duration bin) { return BinStartNs(at_ns, Nanos(bin)); }

BinSpan::BinSpan(const FamilyPolicy& policy)
    : bin_ns(Nanos(policy.bin)), reach_ns(Nanos(policy.window) + Nanos(policy.bin)) {}

void PriceChanges::Add(const PriceChange& c) {
  if (size == kPriceChanges) {
    std::move(ring.begin() + 1, ring.end(), ring.begin());
    --size;
  }
  ring[size++] = c;
}

int PriceChanges::CountSince(int64_t since_ns) const {
  int n = 0;
  for (int i = 0; i < size; ++i) n += ring[i].at_ns >= since_ns;
  return n;
}

bool PriceCell::Apply(int64_t price, int64_t at_ns) {
  if (observed_at_ns != 0 && at_ns < observed_at_ns) return false;  // Older than what we hold.
  const bool changed = observed_at_ns != 0 && price != minor_units;
  if (changed) {
    if (changes == nullptr) changes = std::make_unique<PriceChanges>();
    changes->Add({at_ns, minor_units, price});
  }
  minor_units = price;
  observed_at_ns = at_ns;
  return changed;
}

void WaitCell::Apply(double seconds, int64_t at_ns, const FamilyPolicy& policy,
                     const WaitPolicy& sketch) {
  Apply(seconds, at_ns, BinSpan(policy), sketch);
}

void WaitCell::Apply(double seconds, int64_t at_ns, const BinSpan& span, const WaitPolicy& sketch) {
  Bin* bin = BinFor(bins, BinStartNs(at_ns, span.bin_ns), span, [&](int64_t start) {
    return Bin{start, QuantileSketch(sketch.relative_accuracy)};
  });
  if (bin != nullptr) bin->sketch.Add(seconds);
  observed_at_ns = std::max(observed_at_ns, at_ns);
}

QuantileSketch WaitCell::Window(absl::Time now, const FamilyPolicy& policy,
                                const WaitPolicy& sketch) const {
  QuantileSketch merged(sketch.relative_accuracy);
  const InWindow in_window(now, policy);
  for (const Bin& b : bins) {
    if (in_window(b.start_ns)) (void)merged.Merge(b.sketch);
  }
  return merged;
}

void ComplianceCell::Apply(bool passed, bool critical, int64_t at_ns, const FamilyPolicy& policy) {
  Apply(passed, critical, at_ns, BinSpan(policy));
}

void ComplianceCell::Apply(bool passed, bool critical, int64_t at_ns, const BinSpan& span) {
  CountBin* bin = BinFor(bins, BinStartNs(at_ns, span.bin_ns), span, [](int64_t start) {
    return CountBin{start, 0, 0, 0};
  });
  if (bin == nullptr) return;
  if (passed) {
    ++bin->passed;
  } else {
    ++bin->failed;
    if (critical) ++bin->critical_failed;
  }
  observed_at_ns = std::max(observed_at_ns, at_ns);
}

void ScoreCell::Apply(double value, int64_t at_ns, const FamilyPolicy& policy) {
  Apply(value, at_ns, BinSpan(policy));
}

void ScoreCell::Apply(double value, int64_t at_ns, const BinSpan& span) {
  SumBin* bin = BinFor(bins, BinStartNs(at_ns, span.bin_ns), span, [](int64_t start) {
    return SumBin{start, 0, 0};
  });
  if (bin == nullptr) return;
  bin->sum += value;
  ++bin->count;
  observed_at_ns = std::max(observed_at_ns, at_ns);
}

std::optional<Comparable> ComparePrice(const PriceCell& cell, absl::Time now,
                                       const FamilyPolicy& policy) {
  if (cell.observed_at_ns == 0 || Stale(cell.observed_at_ns, now, policy)) return std::nullopt;
  Comparable c;
  c.value = static_cast<double>(cell.minor_units);
  c.samples = 1;
  c.evidence_ns = cell.observed_at_ns;
  return c;
}

std::optional<Comparable> CompareWait(const WaitCell& cell, absl::Time now,
                                      const FamilyPolicy& policy, const WaitPolicy& sketch,
                                      double within_seconds) {
  if (Stale(cell.observed_at_ns, now, policy)) return std::nullopt;
  QuantileSketch window = cell.Window(now, policy, sketch);
  if (window.count() == 0 || window.count() < policy.min_samples) return std::nullopt;
  Comparable c;
  c.value = window.Quantile(sketch.compared_quantile);
  c.samples = window.count();
  c.evidence_ns = cell.observed_at_ns;
  if (within_seconds > 0) c.share_within = window.ShareAtOrBelow(within_seconds);
  return c;
}

std::optional<Comparable> CompareCompliance(const ComplianceCell& cell, absl::Time now,
                                            const FamilyPolicy& policy, JudgingMode mode) {
  if (Stale(cell.observed_at_ns, now, policy)) return std::nullopt;
  uint64_t passed = 0, total = 0;
  int64_t first_failed_ns = 0;
  bool critical = false;
  const InWindow in_window(now, policy);
  for (auto b = cell.bins.rbegin(); b != cell.bins.rend(); ++b) {
    if (!in_window(b->start_ns)) continue;
    passed += b->passed;
    total += b->passed + b->failed;
    critical = critical || b->critical_failed > 0;
    if (b->failed > 0) first_failed_ns = b->start_ns;
    if (mode == JudgingMode::kLatest && total > 0) break;  // The newest results alone.
  }
  // A failed critical check is compared however few results the window
  // holds: it fails the location outright (below), evidence enough.
  if (total == 0 || (mode == JudgingMode::kRate && total < policy.min_samples && !critical)) {
    return std::nullopt;
  }
  Comparable c;
  c.critical_failure = critical;
  c.evidence_ns = first_failed_ns;
  // A failed critical check fails the location outright.
  c.value = critical ? 0 : static_cast<double>(passed) / total;
  c.samples = total;
  return c;
}

std::optional<Comparable> CompareScore(const ScoreCell& cell, absl::Time now,
                                       const FamilyPolicy& policy) {
  if (Stale(cell.observed_at_ns, now, policy)) return std::nullopt;
  double sum = 0;
  uint64_t count = 0;
  const InWindow in_window(now, policy);
  for (const SumBin& b : cell.bins) {
    if (!in_window(b.start_ns)) continue;
    sum += b.sum;
    count += b.count;
  }
  if (count == 0 || count < policy.min_samples) return std::nullopt;
  Comparable c;
  c.value = sum / count;
  c.samples = count;
  c.evidence_ns = cell.observed_at_ns;
  return c;
}

}  // namespace constance::collector
