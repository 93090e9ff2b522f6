// Engine::SaveState and Engine::LoadState: the engine's whole state to and
// from constance.state.v1.EngineState, for the collector's snapshots.
#include <algorithm>
#include <array>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/node_hash_map.h"
#include "absl/strings/str_cat.h"
#include "collector/engine.h"
#include "constance/state/v1/engine_state.pb.h"
#include "constance/version.h"

namespace constance::collector {
namespace {

namespace pb = ::constance::state::v1;

// Snapshot formats (constance.state.v1.EngineState.format):
//   1  constance 0.1.0, the first release (tests/data/state/v0.1.0).
//   2  every trust account carries its balance by day (Trust.days, the
//      scorecard's trust trend); from 1, the trend starts with the
//      account's balance on the day of its last update.
// A format change adds its number here, a migration from the previous
// format to kMigrations, and a golden state directory its release wrote.
// Migrations run in order on the parsed message: kMigrations[i] turns
// format kOldestStateFormat + i into the next. Fields only added (read
// as their default from older snapshots) need no new format.
using Migration = absl::Status (*)(pb::EngineState* state);
absl::Status StartTrustTrends(pb::EngineState* state) {
  for (pb::Trust& t : *state->mutable_trust()) {
    if (t.days_size() > 0 || t.updated_ns() == std::numeric_limits<int64_t>::min()) continue;
    TrustAccount account;
    account.Restore(t.deposits(), t.withdrawals(), absl::FromUnixNanos(t.updated_ns()));
    pb::TrustDay* day = t.add_days();
    day->set_day(TrustTrend::DayOf(account.updated()));
    day->set_balance(account.balance());
    day->set_score(account.score());
  }
  return absl::OkStatus();
}
#ifndef CONSTANCE_NEXT_STATE_FORMAT
constexpr uint32_t kWrittenFormat = 2;
constexpr std::array<Migration, 1> kMigrations{&StartTrustTrends};
#else
// A rehearsal build only (CMake -DCONSTANCE_NEXT_STATE_FORMAT=ON, made by
// tests/packaging): it writes the format after the current one, reached
// by a step that changes nothing else, so that the upgrade to a new
// format and the rollback from it (README, "Upgrading") are rehearsed
// with real packages before a real format change needs them.
constexpr uint32_t kWrittenFormat = 3;
absl::Status RehearsalStep(pb::EngineState*) { return absl::OkStatus(); }
constexpr std::array<Migration, 2> kMigrations{&StartTrustTrends, &RehearsalStep};
#endif
static_assert(kMigrations.size() == kWrittenFormat - Engine::kOldestStateFormat,
              "one migration per format after the oldest");

// Brings `state` to Engine::kStateFormat, or says why it cannot.
absl::Status Migrate(pb::EngineState* state) {
  const uint32_t format = state->format();
  if (format > Engine::kStateFormat) {
    return absl::FailedPreconditionError(
        absl::StrCat("engine snapshot: state format ", format,
                     " was written by a newer constance; this "
                     "collector (",
                     Version(), ") reads state formats ", Engine::kOldestStateFormat, " to ",
                     Engine::kStateFormat,
                     ": run the newer version again, or restore the copy of the state "
                     "directory made before the upgrade"));
  }
  if (format < Engine::kOldestStateFormat) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine snapshot: state format ", format, " is not one constance ever wrote"));
  }
  for (uint32_t f = format; f < Engine::kStateFormat; ++f) {
    if (absl::Status s = kMigrations[f - Engine::kOldestStateFormat](state); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("engine snapshot: migrating state format ", f,
                                                     " to ", f + 1, ": ", s.message()));
    }
    state->set_format(f + 1);
  }
  return absl::OkStatus();
}

int64_t ToNs(absl::Time t) {
  if (t == absl::InfinitePast()) return std::numeric_limits<int64_t>::min();
  if (t == absl::InfiniteFuture()) return std::numeric_limits<int64_t>::max();
  return absl::ToUnixNanos(t);
}

absl::Time FromNs(int64_t ns) {
  if (ns == std::numeric_limits<int64_t>::min()) return absl::InfinitePast();
  if (ns == std::numeric_limits<int64_t>::max()) return absl::InfiniteFuture();
  return absl::FromUnixNanos(ns);
}

void SaveBaseline(const DriftBaseline& b, pb::Baseline* out) {
  out->set_seen(b.seen);
  out->set_sum(b.sum);
  out->set_sum_squares(b.sum_squares);
  out->set_frozen(b.frozen);
  out->set_mean(b.mean);
  out->set_stddev(b.stddev);
}

DriftBaseline LoadBaseline(const pb::Baseline& in) {
  DriftBaseline b;
  b.seen = in.seen();
  b.sum = in.sum();
  b.sum_squares = in.sum_squares();
  b.frozen = in.frozen();
  b.mean = in.mean();
  b.stddev = in.stddev();
  return b;
}

absl::Status Bad(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("engine snapshot: ", what));
}

}  // namespace

const uint32_t Engine::kStateFormat = kWrittenFormat;

// A capture's state as it is being assembled, by series index as of
// BeginCapture. Series from `claimed` on are not copied yet: `before` keeps
// what changed in them since BeginCapture, cell by cell, as it was then
// (written under the engine's mu_). FinishCapture claims series in chunks
// (moving `claimed`, under mu_), copies them, puts back what `before`
// kept, and from then on owns their slots.
struct Engine::CaptureBefore {
  Series cells;  // The cells that existed, as they were.
  // Every cell kept, as (value case << 32 | location): one of them missing
  // from `cells` did not exist.
  absl::flat_hash_set<uint64_t> kept;
};

class Engine::StateCapture {
 public:
  pb::EngineState state;
  std::vector<std::unique_ptr<CaptureBefore>> before;
  std::vector<std::unique_ptr<Series>> copies;
  size_t claimed = 0;  // Guarded by the engine's mu_.
  bool begun = false;
  // Location names by index at PrepareCapture ("" for a freed slot): trust
  // and drift are saved then, by index, and renumbered at BeginCapture by
  // name, as retention may have freed or reused a slot in between.
  std::vector<std::string> prepared_names;
  // Location index at BeginCapture -> index in the snapshot, which numbers
  // the live locations from 0 (kFreed for a slot retention freed).
  std::vector<uint32_t> saved;
  std::vector<bool> live;  // By series index: live at BeginCapture.
};

namespace {

PriceCell CopyOfCell(const PriceCell& cell) {
  PriceCell p;
  p.observed_at_ns = cell.observed_at_ns;
  p.minor_units = cell.minor_units;
  if (cell.changes != nullptr) p.changes = std::make_unique<PriceChanges>(*cell.changes);
  return p;
}
template <typename Cell>
Cell CopyOfCell(const Cell& cell) {
  return cell;
}

// Puts the cell at `loc` of `before` into `*out`, or, if `before` has
// none, removes it from `*out`.
template <typename Cell>
void PutBackCell(const CellTable<Cell>& before, uint32_t loc,
                 CellTable<Cell>* out) {
  if (auto it = before.find(loc); it != before.end()) {
    (*out)[loc] = CopyOfCell(it->second);
  } else {
    out->erase(loc);
  }
}

void AddLateDrop(const SeriesKey& series, const std::string& location, const PriceChange& change,
                 pb::EngineState* state) {
  pb::LateDrop* out = state->add_late_drops();
  SeriesToProto(series, out->mutable_series());
  out->set_location(location);
  out->mutable_change()->set_at_ns(change.at_ns);
  out->mutable_change()->set_from(change.from);
  out->mutable_change()->set_to(change.to);
}

// The most cells FinishCapture copies under the engine's lock at a time:
// about a millisecond of copying.
constexpr uint64_t kCaptureChunkCells = 20'000;

// A location slot retention freed: not in the snapshot.
constexpr uint32_t kFreed = std::numeric_limits<uint32_t>::max();

// Renumbers each item's location from its index at PrepareCapture (`names`)
// to its index in the snapshot (`now`, by name), dropping the items of
// locations no longer held.
template <typename Message, typename Get, typename Set>
void Renumber(google::protobuf::RepeatedPtrField<Message>* items, Get get, Set set,
              const std::vector<std::string>& names,
              const absl::flat_hash_map<std::string, uint32_t>& now) {
  int kept = 0;
  for (int i = 0; i < items->size(); ++i) {
    const uint32_t old = get(items->Get(i));
    auto it = old < names.size() ? now.find(names[old]) : now.end();
    if (it == now.end()) continue;
    set(items->Mutable(i), it->second);
    if (kept != i) items->SwapElements(kept, i);
    ++kept;
  }
  items->DeleteSubrange(kept, items->size() - kept);
}

}  // namespace

std::string Engine::SaveState() {
  std::shared_ptr<StateCapture> capture = PrepareCapture();
  BeginCapture(capture);
  return FinishCapture(capture);
}

std::shared_ptr<Engine::StateCapture> Engine::PrepareCapture() {
  auto capture = std::make_shared<StateCapture>();
  pb::EngineState& state = capture->state;
  state.set_format(kStateFormat);
  absl::MutexLock eval(&eval_mu_);
  {
    absl::MutexLock lock(&mu_);
    capture->prepared_names.reserve(locations_.size());
    for (const Location& l : locations_) {
      capture->prepared_names.push_back(l.live ? l.state.location : std::string());
    }
    // Those an evaluation takes before BeginCapture are published after
    // the evaluation state saved here: the snapshot keeps them too.
    absl::MutexLock late_lock(&late_mu_);
    SaveLateDropsLocked(&state);
  }
  // Late drops published within their grace, which a recorder may not
  // have written yet: published again after a restore.
  for (const auto& [part, until] : late_published_) {
    for (const PriceDrop& d : *part) {
      AddLateDrop(d.series, d.location, {ToNs(d.at), d.from, d.to}, &state);
    }
  }
  for (FindingTracker::Saved& s : tracker_.Save()) {
    pb::TrackedFinding* t = state.add_tracked();
    t->set_id(std::move(s.id));
    *t->mutable_finding() = std::move(s.finding);
    t->set_met(s.met);
    t->set_cleared(s.cleared);
    t->set_open(s.open);
    t->set_first_met_ns(ToNs(s.first_met));
  }
  for (const v1::Finding& f : tracker_.Closed()) *state.add_closed() = f;
  for (const auto& [loc, account] : trust_) {
    pb::Trust* t = state.add_trust();
    t->set_location(loc);  // Renumbered at BeginCapture.
    t->set_deposits(account.deposits());
    t->set_withdrawals(account.withdrawals());
    t->set_updated_ns(ToNs(account.updated()));
    absl::MutexLock trend(&trend_mu_);
    if (auto it = trust_trend_.find(loc); it != trust_trend_.end()) {
      for (const TrustTrend::Day& d : it->second.kept()) {
        pb::TrustDay* day = t->add_days();
        day->set_day(d.day);
        day->set_balance(d.balance);
        day->set_score(d.score);
      }
    }
  }
  for (uint64_t n : evaluated_counts_) state.add_evaluated_counts(n);
  for (const auto& [id, d] : group_drift_) {
    pb::GroupDrift* g = state.add_group_drift();
    g->set_id(id);
    SaveBaseline(d.baseline, g->mutable_baseline());
    g->set_ewma_z(d.ewma.z);
    g->set_ewma_started(d.ewma.started);
    g->set_last_bin(d.last_bin);
    g->set_scale(d.scale);
    g->set_alarm(d.alarm);
    g->set_level(d.level);
  }
  // The cells' drift apart from their groups' (the state's format).
  for (const auto& [id, group] : group_drift_) {
    for (const auto& [loc, d] : group.cells) {
      pb::CellDrift* c = state.add_cell_drift();
      c->set_group(id);
      c->set_location(loc);  // Renumbered at BeginCapture.
      SaveBaseline(d.baseline, c->mutable_baseline());
      c->set_cusum_up(d.up.s);
      c->set_cusum_down(d.down.s);
      c->set_last_bin(d.last_bin);
    }
  }
  return capture;
}

void Engine::BeginCapture(const std::shared_ptr<StateCapture>& capture) {
  pb::EngineState& state = capture->state;
  absl::MutexLock lock(&mu_);
  capture->begun = true;
  state.set_saved_at_ns(ToNs(options_.clock()));
  // Slots retention freed are left out: the snapshot numbers the live
  // locations from 0 and every location index is translated (`saved`).
  capture->saved.assign(locations_.size(), kFreed);
  absl::flat_hash_map<std::string, uint32_t> by_name;
  for (size_t i = 0; i < locations_.size(); ++i) {
    const Location& l = locations_[i];
    if (!l.live) continue;
    capture->saved[i] = static_cast<uint32_t>(state.locations_size());
    by_name[l.state.location] = capture->saved[i];
    pb::Location* out = state.add_locations();
    const LocationState& s = l.state;
    out->set_name(s.location);
    out->set_last_report_ns(ToNs(s.last_report));
    out->set_watermark(s.watermark);
    out->set_version(s.health.version);
    out->set_spool_depth(s.health.spool_depth);
    out->set_spool_bytes(s.health.spool_bytes);
    out->set_spool_dropped(s.health.spool_dropped);
    out->set_oldest_unacknowledged_seconds(s.health.oldest_unacknowledged_seconds);
    out->set_certificate_not_after_ns(ToNs(s.health.certificate_not_after));
    out->set_heartbeat_at_ns(ToNs(s.health.heartbeat_at));
  }
  for (const auto& [id, stream] : streams_) {
    pb::Stream* out = state.add_streams();
    out->set_location(capture->saved[id.first]);
    out->set_incarnation(id.second);
    out->set_watermark(stream.watermark);
    out->set_last_applied_ns(ToNs(stream.last_applied));
  }
  for (const auto& [name, retired] : retired_) {
    pb::RetiredStream* out = state.add_retired_streams();
    out->set_location(name);
    out->set_incarnation(retired.incarnation);
    out->set_watermark(retired.stream.watermark);
    out->set_last_applied_ns(ToNs(retired.stream.last_applied));
  }
  Renumber(
      state.mutable_trust(), [](const pb::Trust& t) { return t.location(); },
      [](pb::Trust* t, uint32_t loc) { t->set_location(loc); }, capture->prepared_names, by_name);
  Renumber(
      state.mutable_cell_drift(), [](const pb::CellDrift& c) { return c.location(); },
      [](pb::CellDrift* c, uint32_t loc) { c->set_location(loc); }, capture->prepared_names,
      by_name);
  pb::Counters* counters = state.mutable_counters();
  counters->set_applied(applied_);
  counters->set_rejected(rejected_);
  counters->set_duplicates(duplicates_);
  counters->set_batches(batches_);
  counters->set_dropped(dropped_);
  counters->set_batches_out_of_order(out_of_order_);
  for (const auto& [reason, n] : rejected_by_reason_)
    (*counters->mutable_rejected_by_reason())[reason] = n;
  {
    absl::MutexLock late_lock(&late_mu_);
    SaveLateDropsLocked(&state);
  }
  capture->copies.resize(series_.size());
  capture->before.resize(series_.size());
  capture->live.reserve(series_.size());
  for (const Series& series : series_) capture->live.push_back(series.live);
  captures_.push_back(capture);
}

void Engine::SaveLateDropsLocked(pb::EngineState* state) const {
  for (const auto& [index, drops] : late_drops_) {
    if (index >= series_.size() || !series_[index].live) continue;
    for (const auto& [loc, change] : drops) {
      if (loc >= locations_.size() || !locations_[loc].live) continue;
      AddLateDrop(series_[index].key, locations_[loc].state.location, change, state);
    }
  }
}

std::string Engine::FinishCapture(const std::shared_ptr<StateCapture>& capture) {
  StateCapture& c = *capture;
  if (!c.begun) BeginCapture(capture);
  const size_t n = c.copies.size();
  size_t next = 0;
  bool done = false;
  while (!done) {
    const size_t first = next;
    {
      absl::MutexLock lock(&mu_);
      uint64_t cells = 0;
      for (; next < n && cells < kCaptureChunkCells; ++next) {
        // A slot freed at BeginCapture holds no series of the snapshot,
        // even if a new series took it since.
        if (!c.live[next]) continue;
        const Series& s = series_[next];
        c.copies[next] = std::make_unique<Series>(CopyOf(s));
        if (c.before[next] != nullptr) PutBack(*c.before[next], c.copies[next].get());
        cells += s.price.size() + s.wait.size() + s.compliance.size() + s.score.size() + 1;
      }
      c.claimed = next;
      done = next == n;
      if (done) {
        captures_.erase(std::remove_if(captures_.begin(), captures_.end(),
                                       [&](const std::weak_ptr<StateCapture>& w) {
                                         std::shared_ptr<StateCapture> p = w.lock();
                                         return p == nullptr || p == capture;
                                       }),
                        captures_.end());
      }
    }
    // Slots below `next` are all filled, and no longer written.
    for (size_t i = first; i < next; ++i) {
      if (c.copies[i] == nullptr) continue;
      SeriesToState(*c.copies[i], c.saved, c.state.add_series());
      c.copies[i].reset();
      c.before[i].reset();
    }
  }
  return c.state.SerializeAsString();
}

void Engine::PreserveSlowLocked(uint32_t index, v1::Observation::ValueCase value, uint32_t loc) {
  bool expired = false;
  for (const std::weak_ptr<StateCapture>& w : captures_) {
    std::shared_ptr<StateCapture> c = w.lock();
    if (c == nullptr) {
      expired = true;
      continue;
    }
    // Series created after the capture began are not in it; those claimed
    // are copied already.
    if (index < c->claimed || index >= c->before.size()) continue;
    std::unique_ptr<CaptureBefore>& b = c->before[index];
    if (b == nullptr) b = std::make_unique<CaptureBefore>();
    if (!b->kept.insert(uint64_t{static_cast<uint32_t>(value)} << 32 | loc).second) continue;
    const Series& s = series_[index];
    switch (value) {
      case v1::Observation::kPrice:
        if (auto it = s.price.find(loc); it != s.price.end()) {
          b->cells.price[loc] = CopyOfCell(it->second);
        }
        break;
      case v1::Observation::kWaitSeconds:
        if (auto it = s.wait.find(loc); it != s.wait.end()) b->cells.wait[loc] = it->second;
        break;
      case v1::Observation::kCheck:
        if (auto it = s.compliance.find(loc); it != s.compliance.end()) {
          b->cells.compliance[loc] = it->second;
        }
        break;
      case v1::Observation::kScore:
        if (auto it = s.score.find(loc); it != s.score.end()) b->cells.score[loc] = it->second;
        break;
      case v1::Observation::VALUE_NOT_SET:
        break;
    }
  }
  if (expired) {
    captures_.erase(
        std::remove_if(captures_.begin(), captures_.end(),
                       [](const std::weak_ptr<StateCapture>& w) { return w.expired(); }),
        captures_.end());
  }
}

bool Engine::CaptureRunningLocked() {
  captures_.erase(std::remove_if(captures_.begin(), captures_.end(),
                                 [](const std::weak_ptr<StateCapture>& w) { return w.expired(); }),
                  captures_.end());
  return !captures_.empty();
}

void Engine::PutBack(const CaptureBefore& before, Series* copy) {
  for (uint64_t kept : before.kept) {
    const auto value = static_cast<v1::Observation::ValueCase>(kept >> 32);
    const auto loc = static_cast<uint32_t>(kept);
    switch (value) {
      case v1::Observation::kPrice:
        PutBackCell(before.cells.price, loc, &copy->price);
        break;
      case v1::Observation::kWaitSeconds:
        PutBackCell(before.cells.wait, loc, &copy->wait);
        break;
      case v1::Observation::kCheck:
        PutBackCell(before.cells.compliance, loc, &copy->compliance);
        break;
      case v1::Observation::kScore:
        PutBackCell(before.cells.score, loc, &copy->score);
        break;
      case v1::Observation::VALUE_NOT_SET:
        break;
    }
  }
}

Engine::Series Engine::CopyOf(const Series& in) {
  Series out;
  out.key = in.key;
  out.price.reserve(in.price.size());
  for (const auto& [loc, cell] : in.price) out.price[loc] = CopyOfCell(cell);
  out.wait = in.wait;
  out.compliance = in.compliance;
  out.score = in.score;
  return out;
}

void Engine::SeriesToState(const Series& series, const std::vector<uint32_t>& saved,
                           pb::Series* out) {
  SeriesToProto(series.key, out->mutable_id());
  for (const auto& [loc, cell] : series.price) {
    if (loc >= saved.size() || saved[loc] == kFreed) continue;  // Not held at BeginCapture.
    pb::PriceCell* c = out->add_price();
    c->set_location(saved[loc]);
    c->set_observed_at_ns(cell.observed_at_ns);
    c->set_minor_units(cell.minor_units);
    if (cell.changes != nullptr) {
      c->set_has_changes(true);
      for (int i = 0; i < cell.changes->size; ++i) {
        const PriceChange& ch = cell.changes->ring[i];
        pb::PriceChange* pc = c->add_changes();
        pc->set_at_ns(ch.at_ns);
        pc->set_from(ch.from);
        pc->set_to(ch.to);
      }
    }
  }
  for (const auto& [loc, cell] : series.wait) {
    if (loc >= saved.size() || saved[loc] == kFreed) continue;  // Not held at BeginCapture.
    pb::WaitCell* c = out->add_wait();
    c->set_location(saved[loc]);
    c->set_observed_at_ns(cell.observed_at_ns);
    for (const WaitCell::Bin& bin : cell.bins) {
      pb::WaitBin* b = c->add_bins();
      b->set_start_ns(bin.start_ns);
      bin.sketch.EncodeTo(b->mutable_sketch());
    }
  }
  for (const auto& [loc, cell] : series.compliance) {
    if (loc >= saved.size() || saved[loc] == kFreed) continue;  // Not held at BeginCapture.
    pb::ComplianceCell* c = out->add_compliance();
    c->set_location(saved[loc]);
    c->set_observed_at_ns(cell.observed_at_ns);
    for (const CountBin& bin : cell.bins) {
      pb::CountBin* b = c->add_bins();
      b->set_start_ns(bin.start_ns);
      b->set_passed(bin.passed);
      b->set_failed(bin.failed);
      b->set_critical_failed(bin.critical_failed);
    }
  }
  for (const auto& [loc, cell] : series.score) {
    if (loc >= saved.size() || saved[loc] == kFreed) continue;  // Not held at BeginCapture.
    pb::ScoreCell* c = out->add_score();
    c->set_location(saved[loc]);
    c->set_observed_at_ns(cell.observed_at_ns);
    for (const SumBin& bin : cell.bins) {
      pb::SumBin* b = c->add_bins();
      b->set_start_ns(bin.start_ns);
      b->set_sum(bin.sum);
      b->set_count(bin.count);
    }
  }
}

absl::Status Engine::SeriesFromState(const state::v1::Series& in, uint32_t n_locations, Series* out,
                                     uint64_t* cells) {
  auto location_ok = [&](uint32_t loc) { return loc < n_locations; };
  Series& s = *out;
  s.key = SeriesFromProto(in.id());
  s.dirty = Series::kChanged;
  for (const pb::PriceCell& c : in.price()) {
    if (!location_ok(c.location())) return Bad("a price cell names an unknown location");
    PriceCell& cell = s.price[c.location()];
    cell.observed_at_ns = c.observed_at_ns();
    cell.minor_units = c.minor_units();
    if (c.has_changes()) {
      if (c.changes_size() > kPriceChanges) return Bad("a price cell has too many changes");
      cell.changes = std::make_unique<PriceChanges>();
      for (const pb::PriceChange& ch : c.changes()) {
        cell.changes->ring[cell.changes->size++] = {ch.at_ns(), ch.from(), ch.to()};
      }
    }
    ++*cells;
  }
  for (const pb::WaitCell& c : in.wait()) {
    if (!location_ok(c.location())) return Bad("a wait cell names an unknown location");
    WaitCell& cell = s.wait[c.location()];
    cell.observed_at_ns = c.observed_at_ns();
    for (const pb::WaitBin& b : c.bins()) {
      WaitCell::Bin bin{b.start_ns(), QuantileSketch()};
      if (absl::Status st = QuantileSketch::Decode(b.sketch(), &bin.sketch); !st.ok()) {
        return Bad(absl::StrCat("a wait sketch of '", SeriesName(s.key), "': ", st.message()));
      }
      cell.bins.push_back(std::move(bin));
    }
    ++*cells;
  }
  for (const pb::ComplianceCell& c : in.compliance()) {
    if (!location_ok(c.location())) return Bad("a compliance cell names an unknown location");
    ComplianceCell& cell = s.compliance[c.location()];
    cell.observed_at_ns = c.observed_at_ns();
    for (const pb::CountBin& b : c.bins()) {
      cell.bins.push_back({b.start_ns(), b.passed(), b.failed(), b.critical_failed()});
    }
    ++*cells;
  }
  for (const pb::ScoreCell& c : in.score()) {
    if (!location_ok(c.location())) return Bad("a score cell names an unknown location");
    ScoreCell& cell = s.score[c.location()];
    cell.observed_at_ns = c.observed_at_ns();
    for (const pb::SumBin& b : c.bins()) cell.bins.push_back({b.start_ns(), b.sum(), b.count()});
    ++*cells;
  }
  return absl::OkStatus();
}

// A snapshot decoded and checked, not yet in use. Each step decodes its
// part of `state` (Locations first: the others refer to locations by
// index); InvalidArgument naming what is wrong.
struct Engine::Restored {
  explicit Restored(const pb::EngineState& s)
      : state(s), n_locations(static_cast<uint32_t>(s.locations_size())) {}
  bool LocationOk(uint32_t loc) const { return loc < n_locations; }

  absl::Status Locations();
  absl::Status Streams();
  absl::Status AllSeries();
  void Findings();
  absl::Status Trust();
  absl::Status Drift();
  void PendingDrops();

  const pb::EngineState& state;
  const uint32_t n_locations;
  std::vector<Location> locations;
  absl::flat_hash_map<std::string, uint32_t> location_index;
  absl::flat_hash_map<std::pair<uint32_t, uint64_t>, Stream> streams;
  absl::flat_hash_map<std::string, RetiredStream> retired;
  std::vector<Series> series;
  SeriesIndex series_index;
  uint64_t cells = 0;
  std::vector<FindingTracker::Saved> tracked;
  std::deque<v1::Finding> closed;
  absl::flat_hash_map<uint32_t, TrustAccount> trust;
  absl::flat_hash_map<uint32_t, TrustTrend> trends;
  absl::node_hash_map<std::string, GroupDrift> group_drift;  // With their cells'.
  Engine::LateDrops late_drops;
};

absl::Status Engine::Restored::Locations() {
  for (const pb::Location& in : state.locations()) {
    if (!location_index.try_emplace(in.name(), locations.size()).second) {
      return Bad(absl::StrCat("location '", in.name(), "' appears twice"));
    }
    Location l;
    l.state.location = in.name();
    l.state.last_report = FromNs(in.last_report_ns());
    l.state.watermark = in.watermark();
    l.state.health.version = in.version();
    l.state.health.spool_depth = in.spool_depth();
    l.state.health.spool_bytes = in.spool_bytes();
    l.state.health.spool_dropped = in.spool_dropped();
    l.state.health.oldest_unacknowledged_seconds = in.oldest_unacknowledged_seconds();
    l.state.health.certificate_not_after = FromNs(in.certificate_not_after_ns());
    l.state.health.heartbeat_at = FromNs(in.heartbeat_at_ns());
    locations.push_back(std::move(l));
  }
  return absl::OkStatus();
}

absl::Status Engine::Restored::Streams() {
  // A snapshot from before retention has no receive times: its marks count
  // as used when it was saved, so none is pruned sooner than it could be.
  const absl::Time saved_at = FromNs(state.saved_at_ns());
  auto applied_at = [&](int64_t ns) { return ns == 0 ? saved_at : FromNs(ns); };
  for (const pb::Stream& in : state.streams()) {
    if (!LocationOk(in.location())) return Bad("a stream names an unknown location");
    Stream& stream = streams[{in.location(), in.incarnation()}];
    stream.watermark = in.watermark();
    stream.last_applied = applied_at(in.last_applied_ns());
  }
  for (const pb::RetiredStream& in : state.retired_streams()) {
    if (location_index.contains(in.location())) {
      return Bad(absl::StrCat("location '", in.location(), "' is both held and retired"));
    }
    retired[in.location()] = {in.incarnation(), {in.watermark(), applied_at(in.last_applied_ns())}};
  }
  return absl::OkStatus();
}

absl::Status Engine::Restored::AllSeries() {
  for (const pb::Series& in : state.series()) {
    Series s;
    if (absl::Status st = SeriesFromState(in, n_locations, &s, &cells); !st.ok()) return st;
    if (!series_index.try_emplace(s.key, series.size()).second) {
      return Bad(absl::StrCat("series '", SeriesName(s.key), "' appears twice"));
    }
    series.push_back(std::move(s));
  }
  return absl::OkStatus();
}

void Engine::Restored::Findings() {
  for (const pb::TrackedFinding& t : state.tracked()) {
    tracked.push_back(
        {t.id(), t.finding(), t.met(), t.cleared(), t.open(), FromNs(t.first_met_ns())});
  }
  closed.assign(state.closed().begin(), state.closed().end());
}

absl::Status Engine::Restored::Trust() {
  for (const pb::Trust& t : state.trust()) {
    if (!LocationOk(t.location())) return Bad("a trust account names an unknown location");
    trust[t.location()].Restore(t.deposits(), t.withdrawals(), FromNs(t.updated_ns()));
    std::deque<TrustTrend::Day> days;
    for (const pb::TrustDay& d : t.days()) {
      if (!days.empty() && d.day() <= days.back().day) return Bad("a trust trend is out of order");
      days.push_back({d.day(), d.balance(), d.score()});
    }
    if (days.size() > static_cast<size_t>(TrustTrend::kDays)) return Bad("a trust trend has too many days");
    trends[t.location()].Restore(std::move(days));
  }
  return absl::OkStatus();
}

absl::Status Engine::Restored::Drift() {
  for (const pb::GroupDrift& g : state.group_drift()) {
    GroupDrift& d = group_drift[g.id()];
    d.baseline = LoadBaseline(g.baseline());
    d.ewma.z = g.ewma_z();
    d.ewma.started = g.ewma_started();
    d.last_bin = g.last_bin();
    d.scale = g.scale();
    d.alarm = g.alarm();
    d.level = g.level();
  }
  for (const pb::CellDrift& c : state.cell_drift()) {
    if (!LocationOk(c.location())) return Bad("a cell's drift names an unknown location");
    CellDrift& d = group_drift[c.group()].cells[c.location()];
    d.baseline = LoadBaseline(c.baseline());
    d.up.s = c.cusum_up();
    d.down.s = c.cusum_down();
    d.last_bin = c.last_bin();
  }
  return absl::OkStatus();
}

void Engine::Restored::PendingDrops() {
  // A capture saves those pending at its first two steps (most twice) and
  // those published within their grace: each is restored once, pending.
  absl::flat_hash_set<std::tuple<uint32_t, uint32_t, int64_t, int64_t, int64_t>> seen;
  for (const pb::LateDrop& d : state.late_drops()) {
    // One of a series or location the snapshot no longer holds (retention
    // freed it between the two steps) is left out, as it would have been.
    auto s = series_index.find(SeriesFromProto(d.series()));
    auto l = location_index.find(d.location());
    if (s == series_index.end() || l == location_index.end()) continue;
    const PriceChange change{d.change().at_ns(), d.change().from(), d.change().to()};
    if (seen.insert({s->second, l->second, change.at_ns, change.from, change.to}).second) {
      late_drops[s->second].push_back({l->second, change});
    }
  }
}

absl::Status Engine::LoadState(const std::string& bytes) {
  pb::EngineState state;
  if (!state.ParseFromString(bytes)) return Bad("not a constance.state.v1.EngineState");
  if (absl::Status s = Migrate(&state); !s.ok()) return s;
  // Everything is built aside first, so a bad snapshot changes nothing.
  Restored restored(state);
  if (absl::Status s = restored.Locations(); !s.ok()) return s;
  if (absl::Status s = restored.Streams(); !s.ok()) return s;
  if (absl::Status s = restored.AllSeries(); !s.ok()) return s;
  restored.Findings();
  if (absl::Status s = restored.Trust(); !s.ok()) return s;
  if (absl::Status s = restored.Drift(); !s.ok()) return s;
  restored.PendingDrops();

  absl::MutexLock eval(&eval_mu_);
  outcomes_.clear();  // Of the state replaced.
  std::vector<std::string> names;
  int persistence = 1;
  {
    // Not beside a recomputation: its members name locations by slot as
    // it started (MemberNames), and these slots are the snapshot's.
    absl::MutexLock recompute_lock(&recompute_mu_);
    absl::MutexLock lock(&mu_);
    InstallIngestStateLocked(&restored);
    for (const Location& l : locations_) names.push_back(l.state.location);
    persistence = catalog_->thresholds.persistence;
  }
  InstallEvaluationStateLocked(&restored);
  // As of the snapshot: served from the first scrape, not the first tick.
  PublishFindings(FromNs(state.saved_at_ns()), persistence, names, {});
  return absl::OkStatus();
}

void Engine::InstallIngestStateLocked(Restored* restored) {
  const pb::EngineState& state = restored->state;
  for (Location& l : restored->locations) l.entry = catalog_->FindLocation(l.state.location);
  locations_ = std::move(restored->locations);
  location_index_ = std::move(restored->location_index);
  streams_ = std::move(restored->streams);
  retired_ = std::move(restored->retired);
  series_ = std::move(restored->series);
  free_locations_.clear();
  free_series_.clear();
  series_index_ = std::move(restored->series_index);
  cells_ = restored->cells;
  {
    absl::MutexLock late_lock(&late_mu_);
    late_drops_ = std::move(restored->late_drops);
  }
  // Each location's cells (for --max_cells_per_location) and series.
  for (uint32_t i = 0; i < series_.size(); ++i) {
    const Series& s = series_[i];
    for (const auto& [loc, cell] : s.price) NoteCellLocked(loc, i);
    for (const auto& [loc, cell] : s.wait) NoteCellLocked(loc, i);
    for (const auto& [loc, cell] : s.compliance) NoteCellLocked(loc, i);
    for (const auto& [loc, cell] : s.score) NoteCellLocked(loc, i);
  }
  applied_ = state.counters().applied();
  rejected_ = state.counters().rejected();
  duplicates_ = state.counters().duplicates();
  batches_ = state.counters().batches();
  dropped_ = state.counters().dropped();
  out_of_order_ = state.counters().batches_out_of_order();
  for (const auto& [reason, n] : state.counters().rejected_by_reason()) {
    rejected_by_reason_[reason] = n;
  }
}

void Engine::InstallEvaluationStateLocked(Restored* restored) {
  tracker_.Load(std::move(restored->tracked), std::move(restored->closed));
  trust_ = std::move(restored->trust);
  {
    absl::MutexLock trend(&trend_mu_);
    trust_trend_ = std::move(restored->trends);
  }
  // Trust accrued up to the last evaluation the accounts saw (each
  // evaluation decays every account to its time): the format needs no
  // field of its own.
  trust_accrued_at_ = absl::InfinitePast();
  for (const auto& [loc, account] : trust_) {
    trust_accrued_at_ = std::max(trust_accrued_at_, account.updated());
  }
  const pb::EngineState& state = restored->state;
  evaluated_counts_.assign(state.evaluated_counts().begin(), state.evaluated_counts().end());
  group_drift_ = std::move(restored->group_drift);
}

}  // namespace constance::collector
