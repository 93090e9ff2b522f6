#include "collector/evaluators.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "collector/engine.h"
#include "constance/format.h"

namespace constance::collector {
namespace {

std::string Format(const SeriesKey& key, double value) {
  return FormatValue(key.family, key.currency, value);
}

std::string Percent(double ratio) { return absl::StrFormat("%+.1f%%", 100 * ratio); }


bool LabelsMatch(const std::map<std::string, std::string>& where, const LocationEntry* entry) {
  if (where.empty()) return true;
  if (entry == nullptr) return false;
  for (const auto& [label, value] : where) {
    auto it = entry->labels.find(label);
    if (it == entry->labels.end() || it->second != value) return false;
  }
  return true;
}

// The list price promised to a location now, of its series' (PricePromisesFor):
// the one with the latest effective date not after now (zone-specific
// promises are matched through `where`).
const PricePromise* PricePromiseFor(const std::vector<const PricePromise*>& promises,
                                    const LocationEntry* entry, absl::Time now) {
  const PricePromise* best = nullptr;
  for (const PricePromise* p : promises) {
    if (p->effective > now || !LabelsMatch(p->where, entry)) continue;
    if (best == nullptr || p->effective > best->effective ||
        (p->effective == best->effective && p->where.size() > best->where.size())) {
      best = p;
    }
  }
  return best;
}

std::string Meaning(v1::Family family, double deviation) {
  return DeviationMeaning(family, deviation > 0);
}

std::string Fingerprint(const std::vector<std::string>& names) {
  return absl::StrFormat("%016x", absl::HashOf(absl::StrJoin(names, ",")));
}

// A pass rate's evidence, for an outlier's detail: "; 1 of 4 checks
// passed, 99.9% interval 5.0% .. 69.9%". Empty for other families.
std::string RateEvidence(const SeriesKey& key, const Comparable& value) {
  if (key.family != v1::FAMILY_COMPLIANCE || value.samples == 0) return "";
  const auto passed =
      static_cast<uint64_t>(std::llround(value.value * static_cast<double>(value.samples)));
  const RateInterval in = WilsonInterval(passed, value.samples);
  return absl::StrFormat("; %d of %d checks passed, 99.9%% interval %.1f%% .. %.1f%%", passed,
                         value.samples, 100 * in.low, 100 * in.high);
}

}  // namespace

v1::Reason MakeReason(v1::FindingKind kind, std::string detail, double value, double expected,
                      double low, double high, double magnitude, double deviation) {
  v1::Reason r;
  r.set_kind(kind);
  if (!detail.empty()) r.set_detail(std::move(detail));  // Empty: no string allocated.
  r.set_value(value);
  r.set_expected(expected);
  r.set_band_low(low);
  r.set_band_high(high);
  r.set_magnitude(magnitude);
  r.set_direction(deviation > 0   ? v1::ABOVE
                  : deviation < 0 ? v1::BELOW
                                  : v1::DIRECTION_UNSPECIFIED);
  return r;
}

const std::string* MemberNames::Of(uint32_t loc, const std::string& current) {
  if (loc < by_location_.size() && !by_location_[loc].empty()) return &by_location_[loc];
  absl::MutexLock lock(&mu_);
  return &added_.emplace_back(current);
}

const GroupMember* FindMember(const GroupData& g, uint32_t location) {
  auto it = std::lower_bound(g.members.begin(), g.members.end(), location,
                             [](const GroupMember& m, uint32_t loc) { return m.location < loc; });
  return it != g.members.end() && it->location == location ? &*it : nullptr;
}

bool NearAny(const std::vector<double>& values, double v, double floor) {
  for (double r : values) {
    if (std::fabs(v - r) <= floor) return true;
  }
  return false;
}

Condition GroupCondition(const SeriesKey& key, const std::string& group_id, const GroupData& g,
                         absl::string_view prefix, v1::FindingKind kind, v1::Severity severity,
                         double strength) {
  Condition c;
  c.id = absl::StrCat(prefix, "|", group_id);
  c.strength = strength;
  v1::Finding& f = c.finding;
  f.set_kind(kind);
  f.set_severity(severity);
  SeriesToProto(key, f.mutable_series());
  f.set_group(g.group);
  f.set_group_size(g.members.size());
  f.set_audience("hq");
  return c;
}

// Drift of the group's dispersion (EWMA), and the frozen scale the cells'
// CUSUMs are measured in.
std::optional<Condition> GroupDriftCondition(const SeriesKey& key, const std::string& group_id,
                                             const GroupData& g, int64_t bin,
                                             const DriftPolicy& drift, double z_threshold,
                                             double weak, GroupDriftState* gd) {
  const double floor = g.stats->band.floor;
  const double scale = g.stats->band.scale;
  if (gd->last_bin != bin) {
    gd->last_bin = bin;
    if (!gd->baseline.frozen) {
      gd->baseline.Add(scale, drift.baseline_bins);
      if (gd->baseline.frozen) {
        // Floored so a calm group with no spread at all (MAD = 0)
        // does not turn every small step into many sigmas.
        gd->scale = std::max(gd->baseline.mean, floor / z_threshold);
      }
    } else if (gd->scale > 0) {
      const double d = scale / gd->scale;
      const double base_mean = gd->baseline.mean / gd->scale;
      const double base_sd = std::max(gd->baseline.stddev / gd->scale, 0.1);
      gd->ewma.Update(d, drift.ewma_lambda, base_mean);
      const double limit = base_mean + drift.ewma_limit * base_sd *
                                           std::sqrt(drift.ewma_lambda / (2 - drift.ewma_lambda));
      gd->level = (gd->ewma.z - base_mean) / (limit - base_mean);
    }
  }
  if (!gd->baseline.frozen || gd->level < weak) return std::nullopt;
  Condition c = GroupCondition(key, group_id, g, "drift", v1::DRIFT, v1::LOW, gd->level);
  *c.finding.add_reasons() = MakeReason(
      v1::DRIFT,
      absl::StrFormat("dispersion of %s across %s is trending up: EWMA %.2f x the calm "
                      "baseline",
                      SeriesName(key), g.group, gd->ewma.z),
      scale, gd->scale, 0, 0, gd->ewma.z - 1, 1);
  return c;
}

// Drift of this cell's deviation (CUSUM), in the group's frozen scale.
std::optional<WeightedReason> CellDriftReason(const SeriesKey& key, const GroupData& g, size_t i,
                                              double group_scale, int64_t bin,
                                              const DriftPolicy& drift, double weak,
                                              CellDriftState* state) {
  const GroupMember& m = g.members[i];
  const SeriesStats& stats = *g.stats;
  const GroupSummary& s = stats.summary;
  const double x = m.value.value;
  const double dev = x - s.median;
  CellDriftState& cd = *state;
  if (cd.last_bin != bin) {
    cd.last_bin = bin;
    const double z = dev / group_scale;
    if (!cd.baseline.frozen) {
      cd.baseline.Add(z, drift.baseline_bins);
    } else {
      cd.up.Update(z - cd.baseline.mean, drift.cusum_k);
      cd.down.Update(cd.baseline.mean - z, drift.cusum_k);
    }
  }
  double level = 0;
  if (key.family != v1::FAMILY_COMPLIANCE) level = std::max(level, cd.up.s / drift.cusum_h);
  if (key.family != v1::FAMILY_WAIT) level = std::max(level, cd.down.s / drift.cusum_h);
  if (level < weak) return std::nullopt;
  return WeightedReason(level,
                        MakeReason(v1::DRIFT,
                                   absl::StrFormat("%s at this location is drifting away from its "
                                                   "peers: CUSUM %.1f baseline sigmas",
                                                   SeriesName(key), level * drift.cusum_h),
                                   x, s.median, stats.band.low, stats.band.high,
                                   s.median != 0 ? std::fabs(dev) / std::fabs(s.median) : 0, dev));
}

SplitCandidate SplitCondition(const SeriesKey& key, const std::string& group_id,
                              const GroupData& g) {
  const GroupSummary& s = g.stats->summary;
  SplitCandidate split;
  split.condition = GroupCondition(key, group_id, g, "split", v1::SPLIT, v1::MEDIUM, 1);
  v1::Finding& f = split.condition.finding;
  // With an even split the median falls between the levels and no
  // location sits at it: then there is no main level to show.
  std::vector<std::string> parts;
  size_t level_count = g.levels.others.size();
  if (!g.levels.main.members.empty()) {
    v1::Level* main = f.add_levels();
    main->set_value(g.levels.main.value);
    main->set_locations(g.levels.main.members.size());
    parts.push_back(
        absl::StrCat(g.levels.main.members.size(), " at ", Format(key, g.levels.main.value)));
    ++level_count;
  }
  for (const Level& level : g.levels.others) {
    v1::Level* l = f.add_levels();
    l->set_value(level.value);
    l->set_locations(level.members.size());
    parts.push_back(absl::StrCat(level.members.size(), " at ", Format(key, level.value)));
    // By name; locations numbered in name order (as they first reported)
    // are in it already.
    std::vector<const std::string*> names;
    names.reserve(level.members.size());
    for (uint32_t loc : level.members) {
      if (const GroupMember* m = FindMember(g, loc); m != nullptr) names.push_back(m->name);
    }
    auto by_name = [](const std::string* a, const std::string* b) { return *a < *b; };
    if (!std::is_sorted(names.begin(), names.end(), by_name)) {
      std::sort(names.begin(), names.end(), by_name);
    }
    for (const std::string* name : names) f.add_locations(*name);
    split.signatures.push_back(
        absl::StrJoin(names, ",", [](std::string* out, const std::string* n) { out->append(*n); }));
  }
  const double first = g.levels.others.front().value;
  *f.add_reasons() = MakeReason(
      v1::SPLIT,
      absl::StrCat(SeriesName(key), " has ", level_count, " consistent levels in ", g.group, ": ",
                   absl::StrJoin(parts, ", "), " (declare a peer group if this is a price zone)"),
      first, g.levels.main.value, g.stats->band.low, g.stats->band.high,
      s.median != 0 ? std::fabs(first - s.median) / std::fabs(s.median) : 0, first - s.median);
  return split;
}

// Outlier: the rule's own verdict (ComputeGroups), held weakly too so that
// a finding closes only with the hysteresis margin.
bool OutlierReason(const SeriesKey& key, const GroupData& g, size_t i, double weak,
                   std::vector<WeightedReason>* reasons, bool detail) {
  const double strength = g.assessed[i].strength;
  if (!(strength > 0 && strength >= weak)) return false;
  const SeriesStats& stats = *g.stats;
  const GroupSummary& s = stats.summary;
  const double x = g.members[i].value.value;
  const double dev = x - s.median;
  const double magnitude = s.median != 0 ? std::fabs(dev) / std::fabs(s.median) : std::fabs(dev);
  reasons->emplace_back(strength,
                        MakeReason(v1::OUTLIER, detail ? OutlierDetail(key, g, i) : "", x, s.median,
                                   stats.band.low, stats.band.high, magnitude, dev));
  return g.assessed[i].outlier;
}

std::string OutlierDetail(const SeriesKey& key, const GroupData& g, size_t i) {
  const double strength = g.assessed[i].strength;
  const SeriesStats& stats = *g.stats;
  const GroupSummary& s = stats.summary;
  const double x = g.members[i].value.value;
  const double dev = x - s.median;
  return absl::StrCat(
      Meaning(key.family, dev), ": ", Format(key, x), " against ", Format(key, s.median),
      " expected (", Percent(s.median != 0 ? dev / std::fabs(s.median) : 0), "), ",
      strength >= 1 ? "outside" : "near the edge of", " the band ", Format(key, stats.band.low),
      " .. ", Format(key, stats.band.high), " of ", g.members.size(), " locations in ", g.group,
      RateEvidence(key, g.members[i].value));
}

IrregularClock::IrregularClock(absl::Time now, const Thresholds& th)
    : window_from_ns(absl::ToUnixNanos(now - th.irregular_window)),
      settled_by_ns(absl::ToUnixNanos(now - th.irregular_settle)) {}

bool MayBeIrregular(const GroupData& g, size_t i, const IrregularClock& clock) {
  const PriceChange& ch = g.members[i].latest_change;
  if (ch.at_ns == 0 || ch.at_ns < clock.window_from_ns) return false;
  const SeriesStats& stats = *g.stats;
  const double floor = stats.band.floor;
  const double to = static_cast<double>(ch.to);
  if (NearAny(g.rollout_values, to, floor)) return false;           // Where a rollout goes.
  if (std::fabs(to - stats.summary.median) <= floor) return false;  // At a level.
  for (const Level& l : g.levels.others) {
    if (std::fabs(to - l.value) <= floor) return false;
  }
  return true;
}

void IrregularHorizon(const GroupData& g, absl::Time now, const Thresholds& th, Horizon* h) {
  const IrregularClock clock(now, th);
  for (size_t i = 0; i < g.members.size(); ++i) {
    if (!MayBeIrregular(g, i, clock)) continue;
    for (const GroupMember& m : g.members) {
      if (m.latest_change.at_ns != 0) {
        h->After(m.latest_change.at_ns, th.irregular_window + absl::Nanoseconds(1));
      }
    }
    return;
  }
}

uint64_t ChangedInIrregularWindow(const GroupData& g, const IrregularClock& clock) {
  uint64_t changed = 0;
  for (const GroupMember& m : g.members) changed += m.latest_change.at_ns >= clock.window_from_ns;
  return changed;
}

// Irregular change: flipping back and forth, or a change few peers made
// that ends away from every level of the group. A change that ends where
// peers are (the main level, or another level at least min_level locations
// share) is convergence: a store joining its peers' price, whether they
// changed theirs (a rollout) or listed the item at it for the first time,
// or correcting an overcharge.
void IrregularChangeReason(const SeriesKey& key, const GroupData& g, size_t i, uint64_t changed,
                           const IrregularClock& clock, const Thresholds& th,
                           std::vector<WeightedReason>* reasons) {
  const GroupMember& m = g.members[i];
  const SeriesStats& stats = *g.stats;
  const uint64_t n = g.members.size();
  const PriceChange& ch = m.latest_change;
  std::string detail;
  if (m.changes_in_flip_window >= th.flip_changes) {
    detail = absl::StrCat("changed its price ", m.changes_in_flip_window, " times in ",
                          absl::FormatDuration(th.flip_window), ", last from ",
                          Format(key, static_cast<double>(ch.from)), " to ",
                          Format(key, static_cast<double>(ch.to)));
  } else if (ch.at_ns != 0 && ch.at_ns <= clock.settled_by_ns && MayBeIrregular(g, i, clock)) {
    // The peers who changed: every member who did but this one.
    const bool own = ch.at_ns >= clock.window_from_ns;
    const uint64_t peers_changed = changed - (own ? 1 : 0);
    if (!(static_cast<double>(peers_changed) < th.irregular_peer_share * (n - 1))) return;
    detail = absl::StrCat(
        "changed from ", Format(key, static_cast<double>(ch.from)), " to ",
        Format(key, static_cast<double>(ch.to)), " at ",
        absl::FormatTime("%Y-%m-%d %H:%M UTC", absl::FromUnixNanos(ch.at_ns), absl::UTCTimeZone()),
        " while ", peers_changed, " of ", n - 1, " peers changed theirs");
  } else {
    return;
  }
  reasons->emplace_back(
      1, MakeReason(v1::IRREGULAR_CHANGE, detail, m.value.value, static_cast<double>(ch.from),
                    stats.band.low, stats.band.high,
                    ch.from != 0 ? std::fabs(static_cast<double>(ch.to - ch.from)) / ch.from : 0,
                    static_cast<double>(ch.to - ch.from)));
}

// A declared location expected open whose agent stopped talking (no batch
// and no heartbeat within location_ttl) is silent; one whose agent is alive
// but whose newest data is older than its cadence (the catalog's, else the
// agent's own, else none) plus location_ttl is stale: the store's export
// stopped, not the store.
void DeliveryConditions(const std::vector<LocationState>& states, const Catalog& catalog,
                        absl::Time now, std::vector<Condition>* out) {
  const Thresholds& th = catalog.thresholds;
  absl::flat_hash_map<std::string, const LocationState*> by_name;
  for (const LocationState& s : states) by_name[s.location] = &s;
  for (const LocationEntry& entry : catalog.locations) {
    if (entry.closed || entry.from_agent || !catalog.ExpectedOpen(entry.id, now)) continue;
    auto it = by_name.find(entry.id);
    const LocationState* state = it == by_name.end() ? nullptr : it->second;
    const absl::Time last = state != nullptr ? state->last_report : absl::InfinitePast();
    const absl::Time heard = state != nullptr ? std::max(last, state->health.heartbeat_at) : last;
    const absl::Duration cadence =
        entry.cadence > absl::ZeroDuration()
            ? entry.cadence
            : (state != nullptr ? state->health.data_cadence : absl::ZeroDuration());
    const bool silent = heard == absl::InfinitePast() || now - heard > th.location_ttl;
    const absl::Duration allowed = cadence + th.location_ttl;
    if (!silent && last != absl::InfinitePast() && now - last <= allowed) continue;
    Condition c;
    c.id = absl::StrCat(silent ? "silent|" : "stale|", entry.id);
    c.strength = 1;
    v1::Finding& f = c.finding;
    f.set_kind(silent ? v1::SILENT : v1::STALE);
    f.set_severity(silent ? v1::HIGH : v1::MEDIUM);
    f.set_location(entry.id);
    f.set_audience("store");
    for (const auto& [k, v] : entry.labels) (*f.mutable_labels())[k] = v;
    const std::string age =
        last == absl::InfinitePast()
            ? std::string("has never sent data")
            : absl::StrCat("newest data ",
                           absl::FormatDuration(absl::Trunc(now - last, absl::Seconds(1))), " old");
    std::string detail;
    if (silent) {
      detail = heard == absl::InfinitePast()
                   ? std::string("expected open but has never reported")
                   : absl::StrCat("expected open but silent for ",
                                  absl::FormatDuration(absl::Trunc(now - heard, absl::Seconds(1))));
    } else {
      detail = absl::StrCat("agent alive but ", age, ", expected ",
                            cadence > absl::ZeroDuration()
                                ? absl::StrCat("every ", absl::FormatDuration(cadence))
                                : std::string("continuously"),
                            " (+", absl::FormatDuration(th.location_ttl), ")");
    }
    const double limit = absl::ToDoubleSeconds(silent ? th.location_ttl : allowed);
    const double since = absl::ToDoubleSeconds(now - (silent ? heard : last));
    *f.add_reasons() = MakeReason(silent ? v1::SILENT : v1::STALE, std::move(detail),
                                  std::isfinite(since) ? since : 0, limit, 0, limit, 0, 1);
    out->push_back(std::move(c));
  }
}




PromiseVerdict PricePromiseVerdict(const SeriesKey& key, const PricePromise& promise,
                                   double price, const OutlierPolicy& policy) {
  const double x = price;
  const double list = static_cast<double>(promise.list_minor_units);
  const double pf = FamilyFloor(key.family, list, policy);
  const double over = x - list;
  PromiseVerdict v;
  v.id = absl::StrCat("price:", promise.line);
  v.promise = absl::StrCat("list price ", Format(key, list));
  v.strength = over > pf ? over / pf : std::min(0.999, std::max(0.0, over / pf));
  v.reason =
      MakeReason(v1::BROKEN_PROMISE,
                 absl::StrCat("price ", Format(key, x), " above the list price ",
                              Format(key, list), " (", Percent(list != 0 ? over / list : 0), ")"),
                 x, list, list - pf, list + pf, list != 0 ? std::fabs(over) / list : 0, over);
  return v;
}

PromiseVerdict WaitPromiseVerdict(const WaitPromise& promise, const Comparable& value,
                                  double floor) {
  const double share = value.share_within;
  const double pf = std::max(floor, 1e-9);
  PromiseVerdict v;
  v.id = absl::StrCat("wait:", promise.line);
  v.promise = absl::StrFormat("%.0f%% served within %.0f s", 100 * promise.share,
                              promise.within_seconds);
  v.strength = share < promise.share ? 1 + (promise.share - share) / pf
                                     : std::min(0.999, 1 - (share - promise.share) / pf);
  v.reason = MakeReason(v1::BROKEN_PROMISE,
                        absl::StrFormat("%.1f%% served within %.0f s, promised %.1f%%",
                                        100 * share, promise.within_seconds, 100 * promise.share),
                        share, promise.share, promise.share, 1, promise.share - share,
                        share - promise.share);
  return v;
}

PromiseVerdict CheckPromiseVerdict(const SeriesKey& key, const CheckPromise& promise,
                                   const Comparable& value, double floor) {
  const double x = value.value;
  const double pf = std::max(floor, 1e-9);
  PromiseVerdict v;
  v.id = absl::StrCat("check:", promise.line);
  v.promise = promise.critical ? absl::StrCat(key.key, " never failed (critical)")
                               : absl::StrFormat("%s passed %.0f%% of the time", key.key,
                                                 100 * promise.min_pass_rate);
  const bool critical = promise.critical && value.critical_failure;
  v.critical = critical;
  // A failed critical check breaks its promise at once; a rate, only
  // when its interval says so (the rate rule, stats.h).
  v.strength = critical ? 2 : RateShortfall(x, value.samples, promise.min_pass_rate, pf);
  v.reason = MakeReason(v1::BROKEN_PROMISE,
                        critical ? absl::StrCat("critical check ", key.key, " failed")
                                 : absl::StrFormat("%s passed %.1f%% of checks, required %.1f%%",
                                                   key.key, 100 * x, 100 * promise.min_pass_rate),
                        x, promise.min_pass_rate, promise.min_pass_rate, 1,
                        promise.min_pass_rate - x, x - promise.min_pass_rate);
  return v;
}

std::vector<const PricePromise*> PricePromisesFor(const SeriesKey& key, const Catalog& catalog) {
  if (key.family != v1::FAMILY_PRICE) return {};
  return catalog.PricePromisesOf(key.key, key.currency, key.kind);
}

std::optional<PromiseVerdict> PromiseVerdictFor(
    const SeriesKey& key, const LocationEntry* entry, const Comparable& value,
    const std::vector<const PricePromise*>& price_promises, const WaitPromise* wait_promise,
    const CheckPromise* check_promise, absl::Time now, const Catalog& catalog) {
  if (key.family == v1::FAMILY_PRICE) {
    const PricePromise* promise = PricePromiseFor(price_promises, entry, now);
    if (promise == nullptr) return std::nullopt;
    return PricePromiseVerdict(key, *promise, value.value, PolicyFromCatalog(catalog));
  }
  if (wait_promise != nullptr) {
    return WaitPromiseVerdict(*wait_promise, value, catalog.compliance.floor_absolute);
  }
  if (check_promise != nullptr) {
    return CheckPromiseVerdict(key, *check_promise, value, catalog.compliance.floor_absolute);
  }
  return std::nullopt;
}

// Unkeepable promises: most locations break it, so the promise needs
// fixing, not the stores. One finding for HQ; no per-store pages. Returns
// the ids of the unkeepable promises, whose breaks then count against no
// location.
absl::flat_hash_set<std::string> UnkeepableConditions(const SeriesKey& key,
                                                      const std::string& series_name,
                                                      const PromiseTally& promise_tally,
                                                      const Thresholds& th,
                                                      std::vector<Condition>* out) {
  absl::flat_hash_set<std::string> unkeepable;
  for (const auto& [id, tally] : promise_tally) {
    const auto [applicable, broken] = tally;
    if (!(applicable >= th.min_group && applicable > 0 &&
          static_cast<double>(broken) >= th.unkeepable_share * applicable)) {
      continue;
    }
    unkeepable.insert(id);
    Condition c;
    c.id = absl::StrCat("unkeepable|", series_name, "|", id);
    c.strength = 1;
    v1::Finding& f = c.finding;
    f.set_kind(v1::UNKEEPABLE_PROMISE);
    f.set_severity(v1::MEDIUM);
    SeriesToProto(key, f.mutable_series());
    f.set_group_size(applicable);
    f.set_audience("hq");
    *f.add_reasons() = MakeReason(
        v1::UNKEEPABLE_PROMISE,
        absl::StrFormat("%d of %d locations break the promise on %s (%.0f%%): fix the promise",
                        broken, applicable, series_name, 100.0 * broken / applicable),
        static_cast<double>(broken) / applicable, th.unkeepable_share, 0, th.unkeepable_share,
        static_cast<double>(broken) / applicable, 1);
    out->push_back(std::move(c));
  }
  return unkeepable;
}

// The severity one reason of a location finding asks for: an outlier's by
// its distance from the expected value in floors (a pass rate's by its
// strength: the evidence), a broken promise high, an irregular change
// medium. Only a failed critical check is ever critical on a compliance
// key (`critical_failure`: the check failed in the window or, for a
// promise, its critical check did).
v1::Severity ReasonSeverity(v1::Family family, const v1::Reason& reason, double strength,
                            double floor, bool critical_failure) {
  switch (reason.kind()) {
    case v1::OUTLIER:
      if (family == v1::FAMILY_COMPLIANCE) {
        const v1::Severity s = SeverityFor(strength, 1);
        return critical_failure ? s : std::min(s, v1::HIGH);
      }
      return SeverityFor(reason.value() - reason.expected(), floor);
    case v1::BROKEN_PROMISE:
      return critical_failure ? v1::CRITICAL : v1::HIGH;
    case v1::IRREGULAR_CHANGE:
      return v1::MEDIUM;
    default:
      return v1::LOW;
  }
}

v1::Severity LocationSeverity(v1::Family family, const std::vector<WeightedReason>& reasons,
                              double floor, bool promise_critical, bool critical_failure,
                              bool* only_drift) {
  // Severity comes from the reasons past their threshold: a near miss
  // carried along (an outlier short of the floor beside a drift) does
  // not raise it. Only while hysteresis alone holds the finding open
  // (no reason at full strength) do the weaker reasons set it.
  const bool any_full = !reasons.empty() && reasons.front().first >= 1;
  v1::Severity severity = v1::LOW;
  *only_drift = true;
  for (const auto& [strength, reason] : reasons) {
    if (strength >= 1 || !any_full) {
      const bool critical =
          reason.kind() == v1::BROKEN_PROMISE ? promise_critical : critical_failure;
      severity = std::max(severity, ReasonSeverity(family, reason, strength, floor, critical));
      *only_drift = *only_drift && reason.kind() == v1::DRIFT;
    }
  }
  return severity;
}

// Zones: the same locations split from the rest on many keys. Said once,
// instead of one split per key: the splits a zone gathers are dropped, the
// others added after the zones.
void ZoneConditions(const std::vector<const SplitCandidate*>& splits, const Thresholds& th,
                    std::vector<Condition>* out) {
  std::map<std::string, std::vector<size_t>> by_signature;
  for (size_t i = 0; i < splits.size(); ++i) {
    for (const std::string& sig : splits[i]->signatures) by_signature[sig].push_back(i);
  }
  std::vector<bool> in_zone(splits.size(), false);
  for (const auto& [sig, indexes] : by_signature) {
    if (indexes.size() < th.zone_min_keys) continue;
    std::vector<std::string> names = absl::StrSplit(sig, ',');
    Condition c;
    c.id = absl::StrCat("zone|", Fingerprint(names));
    c.strength = 1;
    v1::Finding& f = c.finding;
    f.set_kind(v1::ZONE);
    f.set_severity(v1::MEDIUM);
    f.set_audience("hq");
    f.set_group_size(names.size());
    for (const std::string& name : names) f.add_locations(name);
    for (size_t i : indexes) {
      in_zone[i] = true;
      f.add_keys(SeriesName(SeriesFromProto(splits[i]->condition.finding.series())));
    }
    *f.add_reasons() = MakeReason(
        v1::ZONE,
        absl::StrCat(names.size(), " locations (", names.front(), names.size() > 1 ? ", ..." : "",
                     ") split from the rest on ", indexes.size(),
                     " keys: an undeclared zone; declare it as a peer group in the catalog"),
        static_cast<double>(indexes.size()), static_cast<double>(th.zone_min_keys), 0, 0, 0, 1);
    out->push_back(std::move(c));
  }
  for (size_t i = 0; i < splits.size(); ++i) {
    if (!in_zone[i]) out->push_back(splits[i]->condition);
  }
}

}  // namespace constance::collector
