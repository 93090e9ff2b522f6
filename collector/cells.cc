#include "collector/cells.h"

#include <algorithm>

namespace constance::collector {
namespace {

int64_t Nanos(absl::Duration d) { return absl::ToInt64Nanoseconds(d); }
int64_t Nanos(absl::Time t) { return absl::ToUnixNanos(t); }

// Stale from the first nanosecond past observed_at + ttl.
void StaleHorizon(int64_t observed_at_ns, const PolicyAt& at, Horizon* h) {
  h->After(observed_at_ns, at.stale_span());
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

// A bin is in the window from its start until start + bin + window
// (PolicyAt::InWindow read forwards).
template <typename Bins>
void WindowHorizon(const Bins& bins, const PolicyAt& at, Horizon* h) {
  for (const auto& b : bins) {
    h->At(b.start_ns);
    h->After(b.start_ns, at.window_span());
  }
}

}  // namespace

void Horizon::At(absl::Time at) {
  if (at == absl::InfinitePast() || at == absl::InfiniteFuture()) return;
  At(absl::ToUnixNanos(at));
}

std::optional<int64_t> Horizon::SpanNs(absl::Duration d) {
  if (d == absl::InfiniteDuration() || d == -absl::InfiniteDuration()) return std::nullopt;
  return absl::ToInt64Nanoseconds(d);
}

void Horizon::After(int64_t from_ns, const std::optional<int64_t>& span_ns) {
  if (!span_ns.has_value()) return;
  const int64_t span = *span_ns;
  if (span > 0 && from_ns > INT64_MAX - span) return;
  if (span < 0 && from_ns < INT64_MIN - span) return;
  At(from_ns + span);
}

PolicyAt::PolicyAt(absl::Time now, const FamilyPolicy& policy)
    : policy_(policy),
      now_ns_(Nanos(now)),
      stale_before_ns_(Nanos(now - policy.ttl)),
      from_ns_(Nanos(now - policy.window)),
      bin_ns_(Nanos(policy.bin)),
      stale_span_(Horizon::SpanNs(policy.ttl + absl::Nanoseconds(1))),
      window_span_(Horizon::SpanNs(policy.bin + policy.window)) {}

void CellHorizon(const PriceCell& cell, const PolicyAt& at, Horizon* h) {
  if (cell.observed_at_ns != 0) StaleHorizon(cell.observed_at_ns, at, h);
}

void CellHorizon(const WaitCell& cell, const PolicyAt& at, Horizon* h) {
  StaleHorizon(cell.observed_at_ns, at, h);
  WindowHorizon(cell.bins, at, h);
}

void CellHorizon(const ComplianceCell& cell, const PolicyAt& at, Horizon* h) {
  StaleHorizon(cell.observed_at_ns, at, h);
  WindowHorizon(cell.bins, at, h);
}

void CellHorizon(const ScoreCell& cell, const PolicyAt& at, Horizon* h) {
  StaleHorizon(cell.observed_at_ns, at, h);
  WindowHorizon(cell.bins, at, h);
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
  return Window(PolicyAt(now, policy), sketch);
}

QuantileSketch WaitCell::Window(const PolicyAt& at, const WaitPolicy& sketch) const {
  QuantileSketch merged(sketch.relative_accuracy);
  for (const Bin& b : bins) {
    if (at.InWindow(b.start_ns)) (void)merged.Merge(b.sketch);
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
  return ComparePrice(cell, PolicyAt(now, policy));
}

std::optional<Comparable> CompareWait(const WaitCell& cell, absl::Time now,
                                      const FamilyPolicy& policy, const WaitPolicy& sketch,
                                      double within_seconds) {
  return CompareWait(cell, PolicyAt(now, policy), sketch, within_seconds);
}

std::optional<Comparable> CompareCompliance(const ComplianceCell& cell, absl::Time now,
                                            const FamilyPolicy& policy, JudgingMode mode) {
  return CompareCompliance(cell, PolicyAt(now, policy), mode);
}

std::optional<Comparable> CompareScore(const ScoreCell& cell, absl::Time now,
                                       const FamilyPolicy& policy) {
  return CompareScore(cell, PolicyAt(now, policy));
}

std::optional<Comparable> ComparePrice(const PriceCell& cell, const PolicyAt& at) {
  if (cell.observed_at_ns == 0 || at.Stale(cell.observed_at_ns)) return std::nullopt;
  Comparable c;
  c.value = static_cast<double>(cell.minor_units);
  c.samples = 1;
  c.evidence_ns = cell.observed_at_ns;
  return c;
}

std::optional<Comparable> CompareWait(const WaitCell& cell, const PolicyAt& at,
                                      const WaitPolicy& sketch, double within_seconds) {
  if (at.Stale(cell.observed_at_ns)) return std::nullopt;
  // At a steady cadence one bin is in the window: read where it is, as
  // the merged copy would read it (a merge into an empty sketch of the
  // same accuracy copies every count, min, max and sum), without building
  // one. Sketches of another accuracy never merge: the merged path says so.
  const WaitCell::Bin* only = nullptr;
  int in_window = 0;
  for (const WaitCell::Bin& b : cell.bins) {
    if (at.InWindow(b.start_ns)) {
      only = &b;
      ++in_window;
    }
  }
  std::optional<QuantileSketch> merged;
  if (in_window != 1 || only->sketch.relative_accuracy() != sketch.relative_accuracy) {
    merged.emplace(cell.Window(at, sketch));
  }
  const QuantileSketch& window = merged.has_value() ? *merged : only->sketch;
  if (window.count() == 0 || window.count() < at.policy().min_samples) return std::nullopt;
  Comparable c;
  c.value = window.Quantile(sketch.compared_quantile);
  c.samples = window.count();
  c.evidence_ns = cell.observed_at_ns;
  if (within_seconds > 0) c.share_within = window.ShareAtOrBelow(within_seconds);
  return c;
}

std::optional<Comparable> CompareCompliance(const ComplianceCell& cell, const PolicyAt& at,
                                            JudgingMode mode) {
  if (at.Stale(cell.observed_at_ns)) return std::nullopt;
  uint64_t passed = 0, total = 0;
  int64_t first_failed_ns = 0;
  bool critical = false;
  for (auto b = cell.bins.rbegin(); b != cell.bins.rend(); ++b) {
    if (!at.InWindow(b->start_ns)) continue;
    passed += b->passed;
    total += b->passed + b->failed;
    critical = critical || b->critical_failed > 0;
    if (b->failed > 0) first_failed_ns = b->start_ns;
    if (mode == JudgingMode::kLatest && total > 0) break;  // The newest results alone.
  }
  // A failed critical check is compared however few results the window
  // holds: it fails the location outright (below), evidence enough.
  if (total == 0 || (mode == JudgingMode::kRate && total < at.policy().min_samples && !critical)) {
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

std::optional<Comparable> CompareScore(const ScoreCell& cell, const PolicyAt& at) {
  if (at.Stale(cell.observed_at_ns)) return std::nullopt;
  double sum = 0;
  uint64_t count = 0;
  for (const SumBin& b : cell.bins) {
    if (!at.InWindow(b.start_ns)) continue;
    sum += b.sum;
    count += b.count;
  }
  if (count == 0 || count < at.policy().min_samples) return std::nullopt;
  Comparable c;
  c.value = sum / count;
  c.samples = count;
  c.evidence_ns = cell.observed_at_ns;
  return c;
}

}  // namespace constance::collector
