// Retention: expired cells freed, empty series removed (their slots
// reused, --max_series counting live series), locations removed from the
// catalog or silent dropped with their drift and trust, superseded
// high-water marks pruned; all of it across a snapshot and restart.
#include <algorithm>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "collector/engine.h"
#include "constance/state/v1/engine_state.pb.h"
#include "gtest/gtest.h"

namespace constance::collector {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1'700'000'000);

struct Clock {
  absl::Time now = kStart;
};

Catalog SmallCatalog() {
  Catalog c = DefaultCatalog();
  c.price.min_samples = c.wait.min_samples = c.compliance.min_samples = c.score.min_samples = 1;
  c.thresholds.restart_grace = absl::ZeroDuration();
  return c;
}

Engine::Options Options(Clock* clock, Catalog catalog = SmallCatalog()) {
  Engine::Options o;
  o.catalog = std::make_shared<const Catalog>(std::move(catalog));
  o.clock = [clock] { return clock->now; };
  return o;
}

v1::Batch Prices(const std::string& location, uint64_t incarnation, uint64_t first,
                 const std::vector<std::string>& keys, int64_t minor, absl::Time at) {
  v1::Batch b;
  b.set_location(location);
  b.set_incarnation(incarnation);
  b.set_first_sequence(first);
  for (const std::string& key : keys) {
    v1::Observation* o = b.add_observations();
    o->set_key(key);
    o->mutable_price()->set_minor_units(minor);
    o->mutable_price()->set_currency("EUR");
    o->mutable_observed_at()->set_seconds(absl::ToUnixSeconds(at));
  }
  return b;
}

bool HasSeries(const Snapshot& s, const std::string& key) {
  for (const auto& stats : s.series) {
    if (stats->key.key == key) return true;
  }
  return false;
}

// Past a price cell's ttl (30 days) plus the default retention (7 days).
const absl::Duration kPastPriceRetention = absl::Hours(24 * 37 + 1);

TEST(RetentionTest, ASeriesChurnedAwayIsRemovedAndComesBackFresh) {
  Clock clock;
  Catalog catalog = SmallCatalog();
  catalog.thresholds.location_retention = absl::Hours(24 * 365);
  Engine engine(Options(&clock, catalog));
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(engine
                    .ApplyBatch(Prices("s" + std::to_string(i), 1, 1, {"gone", "kept"}, 100,
                                       clock.now))
                    .ok());
  }
  engine.Evaluate();
  EXPECT_EQ(engine.snapshot()->series_held, 2u);
  EXPECT_TRUE(HasSeries(*engine.snapshot(), "gone"));

  // "kept" is observed again just before "gone" expires.
  clock.now += kPastPriceRetention - absl::Hours(2);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(
        engine.ApplyBatch(Prices("s" + std::to_string(i), 1, 3, {"kept"}, 100, clock.now)).ok());
  }
  clock.now += absl::Hours(2);
  engine.Evaluate();
  std::shared_ptr<const Snapshot> s = engine.snapshot();
  EXPECT_EQ(s->series_held, 1u);
  EXPECT_EQ(s->cells, 5u);
  EXPECT_FALSE(HasSeries(*s, "gone")) << "its statistics (and /metrics series) are gone";
  EXPECT_TRUE(HasSeries(*s, "kept"));
  v1::SeriesId id;
  id.set_family(v1::FAMILY_PRICE);
  id.set_key("gone");
  id.set_currency("EUR");
  EXPECT_EQ(engine.KeyDetail(id).status().code(), absl::StatusCode::kNotFound);

  // Listed again: a new series in the freed slot, from its new cells only.
  ASSERT_TRUE(engine.ApplyBatch(Prices("s0", 1, 4, {"gone"}, 250, clock.now)).ok());
  engine.Evaluate();
  s = engine.snapshot();
  EXPECT_EQ(s->series_held, 2u);
  EXPECT_EQ(s->cells, 6u);
  for (const auto& stats : s->series) {
    if (stats->key.key == "gone") {
      EXPECT_EQ(stats->summary.n, 1u);
    }
  }
}

// Retention reads a series again only once its oldest cell comes of age,
// or when a cell is new: a location joining with an older observation
// than any the series held is freed on time, not at the old horizon.
TEST(RetentionTest, ANewCellOlderThanTheSeriesOldestIsFreedOnTime) {
  Clock clock;
  Catalog catalog = SmallCatalog();
  catalog.price.ttl = absl::Hours(2);
  catalog.thresholds.retention = absl::Hours(1);
  catalog.thresholds.location_retention = absl::Hours(24 * 365);
  Engine engine(Options(&clock, catalog));
  ASSERT_TRUE(engine.ApplyBatch(Prices("s0", 1, 1, {"k"}, 100, clock.now)).ok());
  engine.Evaluate();  // The series' oldest cell expires at start + 3 h.
  EXPECT_EQ(engine.snapshot()->cells, 1u);

  clock.now += absl::Hours(1) + absl::Seconds(1);
  // Observed two hours before the first: freed past start + 1 h.
  absl::StatusOr<v1::Ack> ack =
      engine.ApplyBatch(Prices("s1", 1, 1, {"k"}, 100, kStart - absl::Hours(2)));
  ASSERT_TRUE(ack.ok() && ack->rejections().empty()) << ack.status();
  engine.Evaluate();
  EXPECT_EQ(engine.snapshot()->cells, 1u) << "s1's cell came of age the moment it arrived";

  // Seen again: a newer observation leaves the bound early, and s0's cell
  // is kept until its own time.
  const absl::Time seen_again = clock.now;
  ack = engine.ApplyBatch(Prices("s0", 1, 2, {"k"}, 100, seen_again));
  ASSERT_TRUE(ack.ok() && ack->rejections().empty()) << ack.status();
  clock.now = kStart + absl::Hours(3) + absl::Seconds(1);
  engine.Evaluate();
  EXPECT_EQ(engine.snapshot()->cells, 1u);
  clock.now = seen_again + absl::Hours(3) + absl::Seconds(1);
  engine.Evaluate();
  EXPECT_EQ(engine.snapshot()->cells, 0u);
  EXPECT_EQ(engine.snapshot()->series_held, 0u);
}

// Members point at the names a recomputation starts with (MemberNames): a
// location that reports while it runs, into a slot retention freed or past
// the last, is named by its own name.
TEST(RetentionTest, LocationsJoiningDuringARecomputationAreNamedByTheirNames) {
  Clock clock;
  Catalog catalog = SmallCatalog();
  catalog.thresholds.location_retention = absl::Hours(1);
  Engine::Options options = Options(&clock, catalog);
  Engine* engine_ptr = nullptr;
  bool join = false;  // At the next series recomputed.
  int series_started = 0;
  options.before_series = [&] {
    ++series_started;
    if (!std::exchange(join, false)) return;
    // Into the freed slot, then past the names the recomputation took.
    EXPECT_TRUE(engine_ptr->ApplyBatch(Prices("newcomer", 1, 1, {"a", "b"}, 500, clock.now)).ok());
    EXPECT_TRUE(engine_ptr->ApplyBatch(Prices("late", 1, 1, {"a", "b"}, 900, clock.now)).ok());
  };
  Engine engine(std::move(options));
  engine_ptr = &engine;
  ASSERT_TRUE(engine.ApplyBatch(Prices("gone", 1, 1, {"a"}, 100, clock.now)).ok());
  clock.now += absl::Hours(24 * 30);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(
        engine.ApplyBatch(Prices(absl::StrCat("s", i), 1, 1, {"a", "b"}, 100, clock.now)).ok());
  }
  engine.Evaluate();  // Drops "gone" (silent), freeing its slot.
  ASSERT_EQ(engine.snapshot()->location_states.size(), 5u);

  series_started = 0;
  join = true;
  ASSERT_TRUE(engine.ApplyBatch(Prices("s0", 1, 3, {"a", "b"}, 101, clock.now)).ok());
  engine.Evaluate();
  EXPECT_EQ(series_started, 2);
  EXPECT_EQ(engine.snapshot()->location_states.size(), 5u) << "the names were taken before";
  std::shared_ptr<const Snapshot> s = engine.snapshot();
  ASSERT_EQ(s->series.size(), 2u);
  for (const auto& stats : s->series) {
    std::vector<std::string> names = stats->outlier_locations;
    std::sort(names.begin(), names.end());
    EXPECT_EQ(names, (std::vector<std::string>{"late", "newcomer"})) << stats->key.key;
  }
}

std::vector<std::string> ScorecardKeys(const Engine& engine, const std::string& location) {
  std::vector<std::string> keys;
  absl::StatusOr<v1::LocationScorecardResponse> card = engine.LocationScorecard(location);
  EXPECT_TRUE(card.ok()) << card.status();
  if (!card.ok()) return keys;
  for (const v1::SeriesId& id : card->series()) keys.push_back(id.key());
  return keys;
}

// A location's scorecard reads the series it holds cells in (not every
// series): through weeks of items delisted and listed, their slots taken
// by other locations' new items, and a restore, it lists exactly the
// location's live items, each once.
TEST(RetentionTest, AScorecardListsTheLocationsLiveItemsThroughChurn) {
  Clock clock;
  Catalog catalog = SmallCatalog();
  catalog.thresholds.location_retention = absl::Hours(24 * 365 * 3);
  Engine engine(Options(&clock, catalog));
  uint64_t seq_a = 1, seq_b = 1;
  std::vector<std::string> held;  // s-a's items now.
  // Long enough for s-a's list of series to be compacted (NoteCellLocked).
  constexpr int kWeeks = 100;
  for (int week = 0; week < kWeeks; ++week) {
    // s-a keeps "milk" and lists a new item every week for a week.
    held = {"milk", "weekly-" + std::to_string(week)};
    ASSERT_TRUE(engine.ApplyBatch(Prices("s-a", 1, seq_a, held, 100, clock.now)).ok());
    seq_a += held.size();
    // s-b lists three new items a week, taking freed slots.
    std::vector<std::string> b_items;
    for (int i = 0; i < 3; ++i) b_items.push_back(absl::StrCat("b-", week, "-", i));
    b_items.push_back("milk");
    ASSERT_TRUE(engine.ApplyBatch(Prices("s-b", 1, seq_b, b_items, 100, clock.now)).ok());
    seq_b += b_items.size();
    clock.now += absl::Hours(24 * 7);
    // Past 5 weeks an item's cell expires (ttl plus retention).
    engine.Evaluate();
  }
  // Cells seen in the last 37 days are held; those seen in the last 30
  // (the price ttl) have a value: the last 4 weeks' items.
  std::vector<std::string> expected = {"milk"};
  for (int week = kWeeks - 4; week < kWeeks; ++week)
    expected.push_back("weekly-" + std::to_string(week));
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(ScorecardKeys(engine, "s-a"), expected);

  Engine restored(Options(&clock, catalog));
  ASSERT_TRUE(restored.LoadState(engine.SaveState()).ok());
  EXPECT_EQ(ScorecardKeys(restored, "s-a"), expected);
}

TEST(RetentionTest, MaxSeriesCountsLiveSeriesOnly) {
  Clock clock;
  Engine::Options options = Options(&clock);
  options.limits.max_series = 2;
  Engine engine(std::move(options));
  absl::StatusOr<v1::Ack> ack = engine.ApplyBatch(Prices("s0", 1, 1, {"a", "b", "c"}, 100, clock.now));
  ASSERT_TRUE(ack.ok());
  ASSERT_EQ(ack->rejections_size(), 1);
  EXPECT_EQ(ack->rejections(0).sequence(), 3u);
  EXPECT_EQ(engine.snapshot()->rejected_by_reason.count("series"), 1u);

  clock.now += kPastPriceRetention;
  ASSERT_TRUE(engine.RecordHeartbeat([] {
                v1::Heartbeat h;
                h.set_location("s0");
                return h;
              }())
                  .ok());
  engine.Evaluate();
  EXPECT_EQ(engine.snapshot()->series_held, 0u);
  ack = engine.ApplyBatch(Prices("s0", 1, 4, {"c", "d"}, 100, clock.now));
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->rejections_size(), 0) << ack->rejections(0).reason();
  EXPECT_EQ(ack->applied(), 2u);
}

TEST(RetentionTest, ALocationRemovedFromTheCatalogIsDroppedAndItsFindingCloses) {
  Clock clock;
  Catalog catalog = SmallCatalog();
  catalog.auto_register = false;
  for (int i = 0; i < 6; ++i) {
    LocationEntry entry;
    entry.id = "s" + std::to_string(i);
    catalog.locations.push_back(entry);
  }
  catalog.Index();
  Engine engine(Options(&clock, catalog));
  auto report = [&](uint64_t seq) {
    for (int i = 0; i < 6; ++i) {
      const std::string name = "s" + std::to_string(i);
      ASSERT_TRUE(engine.ApplyBatch(Prices(name, 1, seq, {"coffee"}, i == 5 ? 300 : 100,
                                           clock.now))
                      .ok());
    }
  };
  report(1);
  for (int round = 0; round < 2; ++round) {
    clock.now += absl::Minutes(1);
    engine.Evaluate();
  }
  auto finding_of = [](const std::vector<v1::Finding>& list, const std::string& location) {
    for (const v1::Finding& f : list) {
      if (f.location() == location && f.kind() == v1::OUTLIER) return true;
    }
    return false;
  };
  ASSERT_TRUE(finding_of(engine.snapshot()->findings->active, "s5"));
  auto has_trust = [](const std::shared_ptr<const Snapshot>& s, const std::string& location) {
    for (const FindingsView::Trust& t : s->findings->trust) {
      if (t.location == location) return true;
    }
    return false;
  };
  ASSERT_TRUE(has_trust(engine.snapshot(), "s5")) << "a balance to drop";

  catalog.locations.pop_back();  // s5 removed.
  catalog.Index();
  engine.SetCatalog(std::make_shared<const Catalog>(catalog));
  for (int round = 0; round < 3; ++round) {
    clock.now += absl::Minutes(1);
    engine.Evaluate();
  }
  std::shared_ptr<const Snapshot> s = engine.snapshot();
  EXPECT_FALSE(finding_of(s->findings->active, "s5"));
  EXPECT_TRUE(finding_of(s->findings->closed, "s5")) << "its episode stays in the history";
  for (const LocationState& l : s->location_states) EXPECT_NE(l.location, "s5");
  EXPECT_FALSE(has_trust(s, "s5"));
  EXPECT_TRUE(has_trust(s, "s0")) << "the others' balances stay";
  EXPECT_EQ(s->cells, 5u);
  // It may not report any more.
  EXPECT_EQ(engine.ApplyBatch(Prices("s5", 1, 2, {"coffee"}, 300, clock.now)).status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(RetentionTest, ASilentLocationIsDroppedAndKeepsItsMarkWhenItReturns) {
  Clock clock;
  Engine engine(Options(&clock));
  ASSERT_TRUE(engine.ApplyBatch(Prices("quiet", 7, 1, {"a", "b", "c"}, 100, clock.now)).ok());
  ASSERT_TRUE(engine.ApplyBatch(Prices("busy", 1, 1, {"a"}, 100, clock.now)).ok());
  clock.now += absl::Hours(24 * 30) + absl::Hours(1) + absl::Minutes(1);  // Past location_ttl + 30d.
  ASSERT_TRUE(engine.ApplyBatch(Prices("busy", 1, 2, {"a"}, 100, clock.now)).ok());
  engine.Evaluate();
  std::shared_ptr<const Snapshot> s = engine.snapshot();
  ASSERT_EQ(s->location_states.size(), 1u);
  EXPECT_EQ(s->location_states[0].location, "busy");
  EXPECT_EQ(s->cells, 1u);
  EXPECT_EQ(s->series_held, 1u) << "b and c had no other location";
  EXPECT_EQ(s->streams_held, 2u) << "busy's mark, and quiet's kept by name";

  // Its agent carries on from its acknowledged mark: a resend is a
  // duplicate, the next sequence applies.
  const v1::Batch resumed = Prices("quiet", 7, 3, {"c", "d"}, 100, clock.now);
  EXPECT_FALSE(engine.Admit(ViewOf(resumed)).has_value()) << "admitted to the log: no gap";
  absl::StatusOr<v1::Ack> ack = engine.ApplyBatch(resumed);
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->outcome(), v1::Ack::APPLIED);
  EXPECT_EQ(ack->duplicates(), 1u);
  EXPECT_EQ(ack->applied(), 1u);
}

TEST(RetentionTest, ALocationWithALongCadenceIsKeptPastLocationRetention) {
  Clock clock;
  Catalog catalog = SmallCatalog();
  LocationEntry quarterly;
  quarterly.id = "quarterly";
  quarterly.cadence = absl::Hours(24 * 90);
  catalog.locations.push_back(quarterly);
  catalog.Index();
  Engine engine(Options(&clock, catalog));
  ASSERT_TRUE(engine.ApplyBatch(Prices("quarterly", 1, 1, {"a"}, 100, clock.now)).ok());
  ASSERT_TRUE(engine.ApplyBatch(Prices("daily", 1, 1, {"a"}, 100, clock.now)).ok());
  clock.now += absl::Hours(24 * 31 + 2);
  engine.Evaluate();
  std::shared_ptr<const Snapshot> s = engine.snapshot();
  ASSERT_EQ(s->location_states.size(), 1u) << "daily is silent past 30 days; quarterly is not";
  EXPECT_EQ(s->location_states[0].location, "quarterly");
}

TEST(RetentionTest, ASupersededMarkIsPrunedOnceIdlePastTheLatenessBound) {
  Clock clock;
  Engine engine(Options(&clock));
  ASSERT_TRUE(engine.ApplyBatch(Prices("s0", 1, 1, {"a"}, 100, clock.now)).ok());
  clock.now += absl::Hours(1);
  ASSERT_TRUE(engine.ApplyBatch(Prices("s0", 2, 1, {"a"}, 100, clock.now)).ok());
  engine.Evaluate();
  EXPECT_EQ(engine.snapshot()->streams_held, 2u) << "idle less than --max_lateness";

  // Eight days on (lateness 7d + skew 5m), the new incarnation still
  // reporting: incarnation 1 goes, and a resend of it is refused by the
  // lateness bound instead of being applied again.
  clock.now += absl::Hours(24 * 8);
  ASSERT_TRUE(engine.ApplyBatch(Prices("s0", 2, 2, {"a"}, 100, clock.now)).ok());
  engine.Evaluate();
  EXPECT_EQ(engine.snapshot()->streams_held, 1u);
  absl::StatusOr<v1::Ack> ack =
      engine.ApplyBatch(Prices("s0", 1, 1, {"a"}, 100, clock.now - absl::Hours(24 * 8 + 1)));
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->applied(), 0u);
  ASSERT_EQ(ack->rejections_size(), 1);
  EXPECT_NE(ack->rejections(0).reason().find("observed_at"), std::string::npos);
  // The current incarnation's mark stays.
  ack = engine.ApplyBatch(Prices("s0", 2, 2, {"a"}, 100, clock.now));
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->duplicates(), 1u);
}

// Retention frees room at an evaluation, which the batch log does not
// hold: a replay after a crash must not decide --max_series again and
// reject what was acknowledged as applied; the limit holds after it.
TEST(RetentionTest, AReplayAppliesWhatRetentionMadeRoomFor) {
  Clock clock;
  Engine::Options options = Options(&clock);
  options.limits.max_series = 1;
  Engine live(options);
  const absl::Time first_at = clock.now;
  const v1::Batch first = Prices("s0", 1, 1, {"a"}, 100, first_at);
  ASSERT_TRUE(live.ApplyBatch(first).ok());
  clock.now += kPastPriceRetention;
  v1::Heartbeat heartbeat;
  heartbeat.set_location("s0");
  ASSERT_TRUE(live.RecordHeartbeat(heartbeat).ok());
  live.Evaluate();
  ASSERT_EQ(live.snapshot()->series_held, 0u);
  const v1::Batch second = Prices("s0", 1, 2, {"b"}, 100, clock.now);
  absl::StatusOr<v1::Ack> ack = live.ApplyBatch(second);
  ASSERT_TRUE(ack.ok());
  ASSERT_EQ(ack->applied(), 1u) << "acknowledged as applied";

  Engine replayed(options);
  ASSERT_TRUE(replayed.ReplayBatch(first, first_at).ok());
  ack = replayed.ReplayBatch(second, clock.now);
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->rejections_size(), 0) << ack->rejections(0).reason();
  EXPECT_EQ(ack->applied(), 1u);
  ack = replayed.ApplyBatch(Prices("s0", 1, 3, {"c"}, 100, clock.now));
  ASSERT_TRUE(ack.ok());
  ASSERT_EQ(ack->rejections_size(), 1) << "--max_series holds again after the replay";
  EXPECT_NE(ack->rejections(0).reason().find("--max_series"), std::string::npos);
}

TEST(RetentionTest, ARestartFromASnapshotKeepsTheRemovals) {
  Clock clock;
  Engine engine(Options(&clock));
  ASSERT_TRUE(engine.ApplyBatch(Prices("quiet", 7, 1, {"old"}, 100, clock.now)).ok());
  clock.now += absl::Hours(24 * 31);
  ASSERT_TRUE(engine.ApplyBatch(Prices("busy", 1, 1, {"new"}, 100, clock.now)).ok());
  engine.Evaluate();
  const std::string saved = engine.SaveState();
  state::v1::EngineState state;
  ASSERT_TRUE(state.ParseFromString(saved));
  ASSERT_EQ(state.locations_size(), 1) << "the freed slot is not saved";
  EXPECT_EQ(state.locations(0).name(), "busy");
  ASSERT_EQ(state.series_size(), 1);
  EXPECT_EQ(state.series(0).price(0).location(), 0u) << "indices renumbered";
  ASSERT_EQ(state.retired_streams_size(), 1);

  Engine restored(Options(&clock));
  ASSERT_TRUE(restored.LoadState(saved).ok());
  restored.Evaluate();
  std::shared_ptr<const Snapshot> s = restored.snapshot();
  EXPECT_EQ(s->series_held, 1u);
  EXPECT_EQ(s->cells, 1u);
  ASSERT_EQ(s->location_states.size(), 1u);
  EXPECT_EQ(s->streams_held, 2u);
  absl::StatusOr<v1::Ack> ack = restored.ApplyBatch(Prices("quiet", 7, 1, {"old"}, 100, clock.now));
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->duplicates(), 1u) << "the retired mark survived the restart";
}

// A snapshot taken while retention runs: retention that comes between
// PrepareCapture and BeginCapture is in the snapshot (renumbered by name),
// and retention while a capture is being copied waits for its end.
TEST(RetentionTest, ASnapshotCapturedAcrossRetentionIsOneMomentsState) {
  Clock clock;
  Engine engine(Options(&clock));
  ASSERT_TRUE(engine.ApplyBatch(Prices("quiet", 7, 1, {"old"}, 100, clock.now)).ok());
  clock.now += absl::Hours(24 * 31);
  // Two that stay, so each has a trust balance and drift state to renumber.
  ASSERT_TRUE(engine.ApplyBatch(Prices("busy", 1, 1, {"new"}, 100, clock.now)).ok());
  ASSERT_TRUE(engine.ApplyBatch(Prices("busy2", 1, 1, {"new"}, 100, clock.now)).ok());

  // Begun before retention: the capture holds both, retention waits.
  std::shared_ptr<Engine::StateCapture> early = engine.PrepareCapture();
  engine.BeginCapture(early);
  engine.Evaluate();
  EXPECT_EQ(engine.snapshot()->location_states.size(), 3u) << "retention waited for the capture";
  state::v1::EngineState before;
  ASSERT_TRUE(before.ParseFromString(engine.FinishCapture(early)));
  EXPECT_EQ(before.locations_size(), 3);
  EXPECT_EQ(before.series_size(), 2);

  // Prepared before retention, begun after it: the freed slot is left out
  // and every index names the location it named when prepared.
  std::shared_ptr<Engine::StateCapture> late = engine.PrepareCapture();
  engine.Evaluate();
  std::shared_ptr<const Snapshot> s = engine.snapshot();
  ASSERT_EQ(s->series_held, 1u) << "retention ran once the capture was done";
  engine.BeginCapture(late);
  state::v1::EngineState after;
  ASSERT_TRUE(after.ParseFromString(engine.FinishCapture(late)));
  ASSERT_EQ(after.locations_size(), 2);
  EXPECT_EQ(after.locations(0).name(), "busy");
  EXPECT_EQ(after.locations(1).name(), "busy2");
  ASSERT_EQ(after.series_size(), 1);
  EXPECT_EQ(after.series(0).id().key(), "new");
  std::set<uint32_t> priced, trusted;
  for (const auto& p : after.series(0).price()) priced.insert(p.location());
  for (const auto& t : after.trust()) trusted.insert(t.location());
  const std::set<uint32_t> both = {0, 1};
  EXPECT_EQ(priced, both);
  EXPECT_EQ(trusted, both);
  // Drift state needs a frozen baseline, which these few evaluations do
  // not build; it is renumbered by the same function as trust.
  for (const auto& d : after.cell_drift()) EXPECT_LT(d.location(), 2u);
  Engine restored(Options(&clock));
  EXPECT_TRUE(restored.LoadState(after.SerializeAsString()).ok());
}

}  // namespace
}  // namespace constance::collector
