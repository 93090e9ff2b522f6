// Retention: what the engine forgets, so that a collector running for
// years under churn holds what is live, not everything it ever saw
// (docs/design.md, "Retention"). Evaluate runs ForgetLocked before it
// recomputes, with every engine lock held: ingest waits for one pass over
// the cells (tens of milliseconds at millions of cells).
#include <algorithm>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"
#include "collector/engine.h"

namespace constance::collector {
namespace {

// Erases the cells of `cells` last observed before `before_ns`, counting
// each in `*freed` and against its location; true when any went. Lowers
// *oldest_ns to the oldest observation kept.
template <typename Cells, typename Locations>
bool EraseOlder(Cells* cells, int64_t before_ns, Locations* locations, uint64_t* freed,
                int64_t* oldest_ns) {
  const size_t erased = cells->EraseIf([&](uint32_t loc, const auto& cell) {
    if (cell.observed_at_ns < before_ns) {
      --(*locations)[loc].cells;
      return true;
    }
    *oldest_ns = std::min(*oldest_ns, cell.observed_at_ns);
    return false;
  });
  *freed += erased;
  return erased > 0;
}

// The first instant a cell observed at `oldest_ns` is past `keep`
// (ttl + retention): EraseOlder's test read forwards.
int64_t ExpiresAt(int64_t oldest_ns, absl::Duration keep) {
  if (oldest_ns == INT64_MAX) return INT64_MAX;
  const int64_t at = absl::ToUnixNanos(absl::FromUnixNanos(oldest_ns) + keep);
  return at == INT64_MAX ? at : at + 1;
}

// A drift id's series name: group ids are "SERIES NAME|GROUP", and no key
// or currency holds a '|'.
absl::string_view SeriesOfDriftId(absl::string_view id) { return id.substr(0, id.find('|')); }

}  // namespace

absl::Duration Engine::MarkIdleBound() const {
  return options_.limits.max_lateness + options_.limits.max_future_skew;
}

void Engine::ForgetLocked(absl::Time now, const Catalog& catalog) {
  Forgotten forgotten;
  for (uint32_t loc = 0; loc < locations_.size(); ++loc) {
    if (locations_[loc].live && ExpiredLocationLocked(locations_[loc], now, catalog)) {
      DropLocationLocked(loc, &forgotten);
    }
  }
  // A series is read again once a change marked it (kRetain) or its
  // oldest cell comes of age (expire_at_ns): not every cell every time.
  const int64_t now_ns = absl::ToUnixNanos(now);
  for (uint32_t i = 0; i < series_.size(); ++i) {
    Series& series = series_[i];
    if (!series.live || ((series.dirty & Series::kRetain) == 0 && now_ns < series.expire_at_ns)) {
      continue;
    }
    series.dirty &= static_cast<uint8_t>(~Series::kRetain);
    if (ExpireCellsLocked(&series, now, catalog)) RemoveSeriesLocked(i, &forgotten);
  }
  PruneStreamsLocked(now);
  if (forgotten.series_names.empty() && forgotten.locations.empty()) return;
  // Their drift state and trust: a series that comes back, or a location
  // that reports again, starts afresh. Finding history keeps what they
  // opened; their open findings close as their conditions are gone.
  for (auto it = group_drift_.begin(); it != group_drift_.end();) {
    if (forgotten.series_names.contains(SeriesOfDriftId(it->first))) {
      group_drift_.erase(it++);
      continue;
    }
    for (uint32_t loc : forgotten.locations) it->second.cells.erase(loc);
    ++it;
  }
  for (uint32_t loc : forgotten.locations) trust_.erase(loc);
  {
    absl::MutexLock trend(&trend_mu_);
    for (uint32_t loc : forgotten.locations) trust_trend_.erase(loc);
  }
}

bool Engine::ExpireCellsLocked(Series* series, absl::Time now, const Catalog& catalog) {
  const absl::Duration retention = catalog.thresholds.retention;
  uint64_t freed = 0;
  bool any = false;
  int64_t expire_at = INT64_MAX;
  auto expire = [&](auto* cells, absl::Duration ttl) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (cells->empty()) return;
    int64_t oldest = INT64_MAX;
    any |= EraseOlder(cells, absl::ToUnixNanos(now - ttl - retention), &locations_, &freed,
                      &oldest);
    expire_at = std::min(expire_at, ExpiresAt(oldest, ttl + retention));
  };
  expire(&series->price, catalog.price.ttl);
  expire(&series->wait, catalog.wait.ttl);
  if (!series->compliance.empty()) {
    // A key judged with a cadence keeps its cells while their location is
    // held: an overdue one is a stale finding (OverdueKeyConditions) that
    // lasts until the location reports the key again.
    const KeyJudging* judging = catalog.JudgingFor(series->key.key);
    if (judging == nullptr || judging->expected_every <= absl::ZeroDuration()) {
      expire(&series->compliance, catalog.compliance.ttl);
    }
  }
  expire(&series->score, catalog.score.ttl);
  series->expire_at_ns = expire_at;
  cells_ -= freed;
  if (any) series->dirty |= Series::kStats | Series::kFindings;
  return series->price.empty() && series->wait.empty() && series->compliance.empty() &&
         series->score.empty();
}

void Engine::RemoveSeriesLocked(uint32_t index, Forgotten* forgotten) {
  Series& series = series_[index];
  forgotten->series_names.insert(SeriesName(series.key));
  series_index_.erase(series.key);
  series = Series();
  series.live = false;
  // Its statistics leave the next published snapshot (and /metrics).
  if (index < published_.size()) published_[index].clear();
  if (index < outcomes_.size()) outcomes_[index] = SeriesOutcome();
  free_series_.push_back(index);
}

bool Engine::ExpiredLocationLocked(const Location& l, absl::Time now,
                                   const Catalog& catalog) const {
  if (!catalog.auto_register && !DeclaredLocked(l.state.location)) return true;
  const absl::Time heard = std::max(l.state.last_report, l.state.health.heartbeat_at);
  if (heard == absl::InfinitePast()) return false;
  // Retention counts from when the location would be silent: after
  // location_ttl past its cadence (the catalog's, else its agent's), as
  // DeliveryConditions judges it. A store sending monthly files, or a
  // replay whose location_ttl follows yearly inspections, keeps its state.
  const absl::Duration cadence = l.entry != nullptr && l.entry->cadence > absl::ZeroDuration()
                                     ? l.entry->cadence
                                     : l.state.health.data_cadence;
  const absl::Duration silent_after = cadence + catalog.thresholds.location_ttl;
  return now - heard >
         std::max(silent_after + catalog.thresholds.location_retention, MarkIdleBound());
}

void Engine::DropLocationLocked(uint32_t loc, Forgotten* forgotten) {
  Location& l = locations_[loc];
  const std::string name = l.state.location;
  for (Series& series : series_) {
    if (!series.live) continue;
    const size_t erased = series.price.erase(loc) + series.wait.erase(loc) +
                          series.compliance.erase(loc) + series.score.erase(loc);
    if (erased == 0) continue;
    cells_ -= erased;
    series.dirty |= Series::kChanged;
  }
  // Its marks: the newest is kept by name (PruneStreamsLocked says why).
  std::optional<RetiredStream> newest;
  for (auto it = streams_.begin(); it != streams_.end();) {
    if (it->first.first != loc) {
      ++it;
      continue;
    }
    if (it->second.watermark > 0 &&
        (!newest.has_value() || it->second.last_applied > newest->stream.last_applied)) {
      newest = RetiredStream{it->first.second, it->second};
    }
    admitted_.erase({name, it->first.second});
    streams_.erase(it++);
  }
  if (newest.has_value()) retired_[name] = *newest;
  if (agent_labels_.erase(name) > 0) labels_dirty_ = true;
  location_index_.erase(name);
  l = Location();
  l.live = false;
  free_locations_.push_back(loc);
  forgotten->locations.insert(loc);
}

// Which high-water marks duplicate detection needs. A mark (location,
// incarnation) answers one question: is an observation of that spool
// incarnation at or below it, i.e. applied already? It may go once no
// observation it covers can be applied again without it:
//
//   Rule: a mark goes when it is 0 (it covers nothing), or when another
//   incarnation of the same location applied a batch after it did and its
//   own last batch is older than --max_lateness + --max_future_skew.
//
//   Proof. (1) A later batch of another incarnation means the location's
//   spool was recreated: a spool file is one incarnation for its life
//   (agent/spool.h) and an agent sends from one spool, so the superseded
//   incarnation sends no new sequence; only a resend of what it sent can
//   still arrive (a batch in flight, a copy of the old file). (2) Every
//   observation at or below the mark was applied no later than the mark's
//   last batch, received at `last_applied`, and carried an observed_at at
//   most --max_future_skew after that (ValidateObservation; the agent
//   stamps every observation before spooling it). (3) A resend received
//   after last_applied + skew + lateness is then older than
//   --max_lateness and fails ValidateObservation: it is rejected, never
//   applied a second time. The agent deletes it either way. Receive times
//   are the batch log's on replay, so a restart decides alike.
//
// The current incarnation's mark is never pruned: its agent carries on
// from it, and a stream without a mark answers a batch past sequence 1
// OUT_OF_ORDER, which an agent that deleted what was acknowledged cannot
// satisfy. That is also why a location dropped for silence keeps its
// newest mark by name (retired_, one small entry per dropped location)
// and gets it back when it reports again.
void Engine::PruneStreamsLocked(absl::Time now) {
  absl::flat_hash_map<uint32_t, absl::Time> newest;
  for (const auto& [id, stream] : streams_) {
    auto [it, fresh] = newest.try_emplace(id.first, stream.last_applied);
    if (!fresh) it->second = std::max(it->second, stream.last_applied);
  }
  const absl::Duration idle = MarkIdleBound();
  for (auto it = streams_.begin(); it != streams_.end();) {
    const Stream& stream = it->second;
    const bool superseded = stream.last_applied < newest[it->first.first];
    if (stream.watermark == 0) {  // Covers nothing; batches may be admitted to it.
      streams_.erase(it++);
    } else if (superseded && now - stream.last_applied > idle) {
      admitted_.erase({locations_[it->first.first].state.location, it->first.second});
      streams_.erase(it++);
    } else {
      ++it;
    }
  }
}

}  // namespace constance::collector
