// Engine::SaveState and Engine::LoadState: the engine's whole state to and
// from constance.state.v1.EngineState, for the collector's snapshots.
#include <array>
#include <cstdint>
#include <deque>
#include <limits>
#include <string>
#include <utility>
#include <vector>

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

std::string Engine::SaveState() {
  absl::MutexLock eval(&eval_mu_);
  absl::MutexLock lock(&mu_);
  pb::EngineState state;
  state.set_format(kStateFormat);
  state.set_saved_at_ns(ToNs(options_.clock()));
  for (const Location& l : locations_) {
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
    out->set_location(id.first);
    out->set_incarnation(id.second);
    out->set_watermark(stream.watermark);
  }
  for (const Series& series : series_) {
    pb::Series* out = state.add_series();
    SeriesToProto(series.key, out->mutable_id());
    for (const auto& [loc, cell] : series.price) {
      pb::PriceCell* c = out->add_price();
      c->set_location(loc);
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
      pb::WaitCell* c = out->add_wait();
      c->set_location(loc);
      c->set_observed_at_ns(cell.observed_at_ns);
      for (const WaitCell::Bin& bin : cell.bins) {
        pb::WaitBin* b = c->add_bins();
        b->set_start_ns(bin.start_ns);
        bin.sketch.EncodeTo(b->mutable_sketch());
      }
    }
    for (const auto& [loc, cell] : series.compliance) {
      pb::ComplianceCell* c = out->add_compliance();
      c->set_location(loc);
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
      pb::ScoreCell* c = out->add_score();
      c->set_location(loc);
      c->set_observed_at_ns(cell.observed_at_ns);
      for (const SumBin& bin : cell.bins) {
        pb::SumBin* b = c->add_bins();
        b->set_start_ns(bin.start_ns);
        b->set_sum(bin.sum);
        b->set_count(bin.count);
      }
    }
  }
  pb::Counters* counters = state.mutable_counters();
  counters->set_applied(applied_);
  counters->set_rejected(rejected_);
  counters->set_duplicates(duplicates_);
  counters->set_batches(batches_);
  counters->set_dropped(dropped_);
  counters->set_batches_out_of_order(out_of_order_);
  for (const auto& [reason, n] : rejected_by_reason_)
    (*counters->mutable_rejected_by_reason())[reason] = n;

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
    t->set_location(loc);
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
  for (const auto& [id, d] : cell_drift_) {
    pb::CellDrift* c = state.add_cell_drift();
    c->set_group(id.first);
    c->set_location(id.second);
    SaveBaseline(d.baseline, c->mutable_baseline());
    c->set_cusum_up(d.up.s);
    c->set_cusum_down(d.down.s);
    c->set_last_bin(d.last_bin);
  }
  return state.SerializeAsString();
}

absl::Status Engine::SeriesFromState(const state::v1::Series& in, uint32_t n_locations, Series* out,
                                     uint64_t* cells) {
  auto location_ok = [&](uint32_t loc) { return loc < n_locations; };
  Series& s = *out;
  s.key = SeriesFromProto(in.id());
  s.dirty = true;
  // A snapshot's keys are not taken on trust (e.g. one from a version
  // with other rules): the series vouches for them only if they pass.
  s.validated = s.key.family != v1::FAMILY_UNSPECIFIED && ValidateKey(s.key.key).ok() &&
                (s.key.family != v1::FAMILY_PRICE || ValidateCurrency(s.key.currency).ok());
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

absl::Status Engine::LoadState(const std::string& bytes) {
  pb::EngineState state;
  if (!state.ParseFromString(bytes)) return Bad("not a constance.state.v1.EngineState");
  if (absl::Status s = Migrate(&state); !s.ok()) return s;
  const uint32_t n_locations = static_cast<uint32_t>(state.locations_size());
  auto location_ok = [&](uint32_t loc) { return loc < n_locations; };

  // Everything is built aside first, so a bad snapshot changes nothing.
  std::vector<Location> locations;
  absl::flat_hash_map<std::string, uint32_t> location_index;
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
  absl::flat_hash_map<std::pair<uint32_t, uint64_t>, Stream> streams;
  for (const pb::Stream& in : state.streams()) {
    if (!location_ok(in.location())) return Bad("a stream names an unknown location");
    streams[{in.location(), in.incarnation()}].watermark = in.watermark();
  }
  std::vector<Series> series;
  SeriesIndex series_index;
  uint64_t cells = 0;
  for (const pb::Series& in : state.series()) {
    Series s;
    if (absl::Status st = SeriesFromState(in, n_locations, &s, &cells); !st.ok()) return st;
    if (!series_index.try_emplace(s.key, series.size()).second) {
      return Bad(absl::StrCat("series '", SeriesName(s.key), "' appears twice"));
    }
    series.push_back(std::move(s));
  }
  std::vector<FindingTracker::Saved> tracked;
  for (const pb::TrackedFinding& t : state.tracked()) {
    tracked.push_back(
        {t.id(), t.finding(), t.met(), t.cleared(), t.open(), FromNs(t.first_met_ns())});
  }
  std::deque<v1::Finding> closed(state.closed().begin(), state.closed().end());
  absl::flat_hash_map<uint32_t, TrustAccount> trust;
  absl::flat_hash_map<uint32_t, TrustTrend> trends;
  for (const pb::Trust& t : state.trust()) {
    if (!location_ok(t.location())) return Bad("a trust account names an unknown location");
    trust[t.location()].Restore(t.deposits(), t.withdrawals(), FromNs(t.updated_ns()));
    std::deque<TrustTrend::Day> days;
    for (const pb::TrustDay& d : t.days()) {
      if (!days.empty() && d.day() <= days.back().day) return Bad("a trust trend is out of order");
      days.push_back({d.day(), d.balance(), d.score()});
    }
    if (days.size() > static_cast<size_t>(TrustTrend::kDays)) return Bad("a trust trend has too many days");
    trends[t.location()].Restore(std::move(days));
  }
  absl::flat_hash_map<std::string, GroupDrift> group_drift;
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
  absl::flat_hash_map<std::pair<std::string, uint32_t>, CellDrift> cell_drift;
  for (const pb::CellDrift& c : state.cell_drift()) {
    if (!location_ok(c.location())) return Bad("a cell's drift names an unknown location");
    CellDrift& d = cell_drift[{c.group(), c.location()}];
    d.baseline = LoadBaseline(c.baseline());
    d.up.s = c.cusum_up();
    d.down.s = c.cusum_down();
    d.last_bin = c.last_bin();
  }

  absl::MutexLock eval(&eval_mu_);
  std::vector<std::string> names;
  int persistence = 1;
  {
    absl::MutexLock lock(&mu_);
    for (Location& l : locations) l.entry = catalog_->FindLocation(l.state.location);
    locations_ = std::move(locations);
    location_index_ = std::move(location_index);
    streams_ = std::move(streams);
    series_ = std::move(series);
    series_index_ = std::move(series_index);
    cells_ = cells;
    // Each location's cells, for --max_cells_per_location.
    for (const Series& s : series_) {
      for (const auto& [loc, cell] : s.price) ++locations_[loc].cells;
      for (const auto& [loc, cell] : s.wait) ++locations_[loc].cells;
      for (const auto& [loc, cell] : s.compliance) ++locations_[loc].cells;
      for (const auto& [loc, cell] : s.score) ++locations_[loc].cells;
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
    for (const Location& l : locations_) names.push_back(l.state.location);
    persistence = catalog_->thresholds.persistence;
  }
  tracker_.Load(std::move(tracked), std::move(closed));
  trust_ = std::move(trust);
  {
    absl::MutexLock trend(&trend_mu_);
    trust_trend_ = std::move(trends);
  }
  // Trust accrued up to the last evaluation the accounts saw (each
  // evaluation decays every account to its time): the format needs no
  // field of its own.
  trust_accrued_at_ = absl::InfinitePast();
  for (const auto& [loc, account] : trust_) {
    trust_accrued_at_ = std::max(trust_accrued_at_, account.updated());
  }
  evaluated_counts_.assign(state.evaluated_counts().begin(), state.evaluated_counts().end());
  group_drift_ = std::move(group_drift);
  cell_drift_ = std::move(cell_drift);
  // As of the snapshot: served from the first scrape, not the first tick.
  PublishFindings(FromNs(state.saved_at_ns()), persistence, names, {});
  return absl::OkStatus();
}

}  // namespace constance::collector
