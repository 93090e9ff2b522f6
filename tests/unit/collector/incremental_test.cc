// Incremental evaluation (Engine::Options::incremental), alone and with
// series evaluated on several threads (Options::evaluation_threads),
// against the full recomputation it replaces: engines fed the same random
// chain on one simulated clock must publish the same statistics after
// every stats tick and the same findings, trust, price drops and promises
// after every evaluation. The chain is built to cross every horizon an evaluation
// reads: TTLs and windows running out, a store opening, a list price and
// an exception taking and leaving effect, rollouts, flips and irregular
// changes ageing, waits compared by local hour, drift bins, retention.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "collector/catalog.h"
#include "collector/engine.h"
#include "collector/price_drops.h"
#include "gtest/gtest.h"

namespace constance::collector {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1'767'225'600);  // 2026-01-01 00:00 UTC.

constexpr char kCatalog[] = R"(thresholds:
  min_group: 4
  min_level: 3
  persistence: 2
  rollout_grace: 6h
  irregular_window: 12h
  irregular_settle: 1h
  flip_changes: 3
  flip_window: 20h
  restart_grace: 0s
  retention: 3h
  location_retention: 30h
families:
  price:      {ttl: 30h}
  wait:       {ttl: 3h, window: 2h, bin: 1h, min_samples: 2, hour_of_week: true}
  compliance: {ttl: 30h, window: 24h, bin: 6h, min_samples: 2}
  score:      {ttl: 12h, window: 6h, bin: 1h, min_samples: 1}
drift: {bin: 3h, baseline_bins: 3}
locations:
  - {id: s00, labels: {region: north}, timezone: UTC}
  - {id: s01, labels: {region: south}, timezone: Asia/Kolkata}
  - {id: s02, labels: {region: north}, timezone: America/New_York}
  - {id: s03, labels: {region: south}, timezone: Asia/Kolkata}
  - {id: s04, labels: {region: north}}
  - {id: s05, labels: {region: south}, timezone: Asia/Kolkata}
  - {id: s06, labels: {region: north}, timezone: Europe/Paris}
  - {id: s07, labels: {region: south}, timezone: Asia/Kolkata}
  - {id: s08, labels: {region: north}}
  - {id: s09, labels: {region: south}, timezone: Asia/Kolkata}
  - {id: s10, labels: {region: north}, opened: 2026-01-01T13:00:00Z}
  - {id: s11, labels: {region: south}, closed: true}
peer_groups:
  - {name: zone, label: region, families: [price], keys: ["*"]}
promises:
  prices: [{key: item-1, currency: EUR, list: "1.00", effective: 2026-01-01T10:00:00Z}]
  waits:  [{key: checkout, within_seconds: 300, share: 0.8}]
  checks: [{key: fridge, critical: true, min_pass_rate: 0.9}]
judging:
  - {key: "inspection*", mode: latest, expected_every: 24h}
exceptions:
  - {location: s03, family: price, key: item-2, owner: ops, reason: supplier, expires: 2026-01-01T15:00:00Z}
)";

constexpr int kStores = 13;  // s00..s11 declared, s12 registers itself.
constexpr int kItems = 6;

// Engines on one clock: incremental, full, and incremental with its
// series evaluated on four threads at once.
struct Pair {
  explicit Pair(std::shared_ptr<const Catalog> catalog) {
    for (auto [incremental, threads] : {std::pair{true, 1}, {false, 1}, {true, 4}}) {
      Engine::Options o;
      o.catalog = catalog;
      o.clock = [this] { return now; };
      o.incremental = incremental;
      o.evaluation_threads = threads;
      engines.push_back(std::make_unique<Engine>(o));
    }
  }
  absl::Time now = kStart;
  std::vector<std::unique_ptr<Engine>> engines;
};

// A chain with habits: most prices stay put, a few stores move, a
// chain-wide change rolls out now and then, one store flips. Quiet
// stretches (hours 8 to 30 of every 48) change no price and report
// little, so time alone moves what evaluations read: TTLs and windows
// run out, changes age, an exception ends, a list price and a store open.
class Chain {
 public:
  explicit Chain(uint32_t seed) : rng_(seed) {
    for (int s = 0; s < kStores; ++s) {
      for (int i = 0; i < kItems; ++i) price_[s][i] = 100 + 10 * i + (s % 2 == 0 ? 0 : 1);
    }
    price_[3][2] += 40;  // Overcharging, under an exception until 15:00.
  }

  std::vector<v1::Batch> Tick(absl::Time now) {
    const int64_t hour = absl::ToInt64Hours(now - kStart) % 48;
    quiet_ = hour >= 8 && hour < 30;
    if (!quiet_) Drift();
    // Just before the quiet: a change none of its peers made, by a store
    // then silent, so its settling and ageing are time's doing alone.
    if (hour == 7) price_[8][4] = 100 + 10 * 4 + 40 + static_cast<int>(absl::ToInt64Hours(now - kStart) / 48);
    std::vector<v1::Batch> batches;
    for (int s = 0; s < kStores; ++s) {
      // The flipper and the changer say nothing while it is quiet.
      if (quiet_ && (s == 5 || s == 8)) continue;
      if (Chance(quiet_ ? 0.7 : 0.35)) continue;  // Not every store reports every tick.
      if (s == 9 && now > kStart + absl::Hours(30)) continue;  // Falls silent for good.
      batches.push_back(Batch(s, now));
    }
    return batches;
  }

 private:
  bool Chance(double p) { return std::uniform_real_distribution<>(0, 1)(rng_) < p; }
  int Pick(int n) { return std::uniform_int_distribution<>(0, n - 1)(rng_); }

  void Drift() {
    if (Chance(0.08)) price_[Pick(kStores)][Pick(kItems)] += (Chance(0.5) ? 1 : -1) * 40;
    if (Chance(0.05)) {  // A rollout: most stores move one item to one new price.
      const int item = Pick(kItems);
      const int64_t to = price_[0][item] + (Chance(0.5) ? 15 : -15);
      for (int s = 0; s < kStores; ++s) {
        if (Chance(0.8)) price_[s][item] = to;
      }
    }
    if (Chance(0.3)) price_[5][3] = price_[5][3] == 130 ? 90 : 130;  // A flipper.
  }

  template <typename Add>
  void Services(int s, Add& add) {
    for (const char* key : {"checkout", "drive"}) {
      for (int n = Pick(4); n > 0; --n) {
        add(key)->set_wait_seconds(120 + Pick(200) + (s == 2 ? 250 : 0));
      }
    }
    if (Chance(0.5)) add("fridge")->mutable_check()->set_passed(!(s == 4 && Chance(0.3)));
    if (Chance(0.4)) add("hygiene")->mutable_check()->set_passed(Chance(0.9 - 0.05 * (s % 4)));
    if (Chance(0.1)) add("inspection-a")->mutable_check()->set_passed(Chance(0.8));
    if (Chance(0.6)) add("mystery")->set_score(60 + Pick(20) + (s == 7 ? 25 : 0));
  }

  v1::Batch Batch(int s, absl::Time now) {
    v1::Batch b;
    b.set_location(absl::StrFormat("s%02d", s));
    b.set_incarnation(1);
    b.set_first_sequence(next_[s]);
    auto add = [&](const std::string& key) {
      v1::Observation* o = b.add_observations();
      o->set_key(key);
      const absl::Duration back = absl::Seconds(Pick(600));
      o->mutable_observed_at()->set_seconds(absl::ToUnixSeconds(now - back));
      return o;
    };
    for (int i = 0; i < kItems; ++i) {
      if (Chance(0.3)) continue;
      v1::Observation* o = add(absl::StrCat("item-", i));
      o->mutable_price()->set_minor_units(price_[s][i]);
      o->mutable_price()->set_currency("EUR");
    }
    if (!quiet_ || Chance(0.2)) Services(s, add);
    if (b.observations_size() == 0) {
      v1::Observation* o = add("item-0");
      o->mutable_price()->set_minor_units(price_[s][0]);
      o->mutable_price()->set_currency("EUR");
    }
    next_[s] += b.observations_size();
    return b;
  }

  std::mt19937 rng_;
  bool quiet_ = false;
  int64_t price_[kStores][kItems];
  uint64_t next_[kStores] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
};

std::string Num(double v) { return absl::StrFormat("%.17g", v); }

std::string Statistics(const Snapshot& s) {
  std::vector<std::string> out;
  for (const auto& st : s.series) {
    const GroupSummary& g = st->summary;
    std::string line = absl::StrCat(SeriesName(st->key), " ", st->group, " n=", g.n,
                                    " own=", st->own.n, " mean=", Num(g.mean), " median=",
                                    Num(g.median), " mad=", Num(g.mad), " band=",
                                    Num(st->band.low), "..", Num(st->band.high),
                                    " rollout=", st->rollout, " levels=", st->other_levels.size());
    for (const OutlierResult& o : st->outliers) {
      absl::StrAppend(&line, " outlier ", o.location, "=", Num(o.value), " z=", Num(o.z));
    }
    for (double w : st->wait_values) absl::StrAppend(&line, " w", Num(w));
    out.push_back(std::move(line));
  }
  absl::StrAppend(&out.emplace_back(), "uncompared=", s.uncompared_series);
  return absl::StrJoin(out, "\n");
}

std::string Findings(const FindingsView& f) {
  std::vector<std::string> out;
  for (const v1::Finding& a : f.active) out.push_back("active " + a.ShortDebugString());
  for (const v1::Finding& c : f.closed) out.push_back("closed " + c.ShortDebugString());
  for (const auto& t : f.trust) {
    out.push_back(absl::StrCat("trust ", t.location, " ", Num(t.balance), " ", Num(t.score), " ",
                               t.kept, "/", t.broken));
  }
  for (const PriceDrop& d : f.price_drops.Sorted()) {
    out.push_back(absl::StrCat("drop ", d.location, " ", SeriesName(d.series), " ", d.from, ">",
                               d.to, " ", absl::FormatTime(d.at), " ", d.rollout, " r",
                               d.revision));
  }
  for (const PromiseStanding& p : f.promises) {
    out.push_back(absl::StrCat("promise ", p.location, " ", SeriesName(p.series), " ", p.promise,
                               " ", p.kept));
  }
  return absl::StrJoin(out, "\n");
}

// Every drop a feed holds, oldest first.
std::string FeedContents(const PriceDropFeed& feed) {
  std::vector<std::string> out;
  PriceDropFeed::Cursor cursor;
  for (const v1::PriceDrop& d : feed.Read(absl::InfinitePast(), "", 1'000'000, &cursor)) {
    out.push_back(d.ShortDebugString());
  }
  return absl::StrJoin(out, "\n");
}

// The price-drop feed writes, of each evaluation's drops, only those
// whose revision is newer than the list it last recorded: recording the
// incremental engine's evaluations so (skipping some, as BoardRecorder
// does when evaluations come faster than it records) must hold what
// writing every drop of the same evaluations holds.
TEST(IncrementalEvaluationTest, TheDropFeedWritingChangesHoldsWhatWritingAllDoes) {
  absl::StatusOr<Catalog> catalog = ParseCatalog(kCatalog, "incremental.yaml");
  ASSERT_TRUE(catalog.ok()) << catalog.status();
  auto shared = std::make_shared<const Catalog>(*catalog);
  uint64_t recorded = 0, held = 0;
  for (uint32_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE(absl::StrCat("seed ", seed));
    Pair pair(shared);
    Engine& engine = *pair.engines[0];
    Chain chain(seed);
    auto changes = PriceDropFeed::Open("", {});
    auto all = PriceDropFeed::Open("", {});
    ASSERT_TRUE(changes.ok() && all.ok());
    std::mt19937 clock_rng(seed * 7919);
    for (int tick = 0; tick < 160; ++tick) {
      pair.now += absl::Minutes(std::uniform_int_distribution<>(3, 40)(clock_rng));
      for (const v1::Batch& b : chain.Tick(pair.now)) {
        ASSERT_TRUE(engine.ApplyBatch(b, pair.now).ok());
      }
      engine.Evaluate();
      if (tick % 4 == 3) continue;  // Not recorded.
      SCOPED_TRACE(absl::StrCat("tick ", tick, " at ", absl::FormatTime(pair.now)));
      const PriceDropList& drops = engine.snapshot()->findings->price_drops;
      ASSERT_TRUE((*changes)->Record(drops, pair.now).ok());
      const PriceDropList whole(drops.Sorted(), PriceDropList::NewSource(), 1);
      ASSERT_TRUE((*all)->Record(whole, pair.now).ok());
      const std::string held_now = FeedContents(**all);
      ASSERT_EQ(FeedContents(**changes), held_now);
      recorded += drops.size();
      held += std::count(held_now.begin(), held_now.end(), '\n');
    }
  }
  EXPECT_GT(recorded, 10u);
  EXPECT_GT(held, 10u);
}

TEST(IncrementalEvaluationTest, MatchesAFullRecomputationAfterEveryTick) {
  absl::StatusOr<Catalog> catalog = ParseCatalog(kCatalog, "incremental.yaml");
  ASSERT_TRUE(catalog.ok()) << catalog.status();
  auto shared = std::make_shared<const Catalog>(*catalog);
  uint64_t findings_seen = 0, drops_seen = 0;
  for (uint32_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE(absl::StrCat("seed ", seed));
    Pair pair(shared);
    Chain chain(seed);
    std::mt19937 clock_rng(seed * 7919);
    for (int tick = 0; tick < 160; ++tick) {
      // 3 to 40 minutes: ticks land on and between every window's edges.
      pair.now += absl::Minutes(std::uniform_int_distribution<>(3, 40)(clock_rng));
      for (const v1::Batch& b : chain.Tick(pair.now)) {
        for (auto& e : pair.engines) ASSERT_TRUE(e->ApplyBatch(b, pair.now).ok());
      }
      SCOPED_TRACE(absl::StrCat("tick ", tick, " at ", absl::FormatTime(pair.now)));
      if (tick % 3 == 1) {  // A stats tick alone.
        for (auto& e : pair.engines) e->Recompute();
        ASSERT_EQ(Statistics(*pair.engines[0]->snapshot()),
                  Statistics(*pair.engines[1]->snapshot()));
        ASSERT_EQ(Statistics(*pair.engines[2]->snapshot()),
                  Statistics(*pair.engines[1]->snapshot()));
        continue;
      }
      for (auto& e : pair.engines) e->Evaluate();
      const auto incremental = pair.engines[0]->snapshot();
      const auto full = pair.engines[1]->snapshot();
      ASSERT_EQ(Statistics(*incremental), Statistics(*full));
      ASSERT_EQ(Findings(*incremental->findings), Findings(*full->findings));
      const auto threaded = pair.engines[2]->snapshot();
      ASSERT_EQ(Statistics(*threaded), Statistics(*full));
      ASSERT_EQ(Findings(*threaded->findings), Findings(*full->findings));
      findings_seen += full->findings->active.size();
      drops_seen += full->findings->price_drops.size();
    }
  }
  // The chain exercised what it was built for.
  EXPECT_GT(findings_seen, 50u);
  EXPECT_GT(drops_seen, 10u);
}

// A tick whose helper threads cannot start (a unit's TasksMax, the
// process's thread limit) recomputes on the threads it has: the same
// statistics and findings as one thread alone, tick after tick.
TEST(IncrementalEvaluationTest, HelpersThatCannotStartLeaveTheTickToTheThreadsItHas) {
  absl::StatusOr<Catalog> catalog = ParseCatalog(kCatalog, "incremental.yaml");
  ASSERT_TRUE(catalog.ok()) << catalog.status();
  auto shared = std::make_shared<const Catalog>(*catalog);
  absl::Time now = kStart;
  // This tick's helper starts so far, and the first one refused.
  int asked = 0, refuse_from = 0, started = 0, refused = 0;
  std::vector<std::unique_ptr<Engine>> engines;
  for (int threads : {1, 4}) {
    Engine::Options o;
    o.catalog = shared;
    o.clock = [&now] { return now; };
    o.evaluation_threads = threads;
    o.before_helper_start = [&] {
      if (asked++ >= refuse_from) {
        ++refused;
        throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again),
                                "thread");
      }
      ++started;
    };
    engines.push_back(std::make_unique<Engine>(o));
  }
  Chain chain(5);
  for (int tick = 0; tick < 60; ++tick) {
    now += absl::Minutes(17);
    for (const v1::Batch& b : chain.Tick(now)) {
      for (auto& e : engines) ASSERT_TRUE(e->ApplyBatch(b, now).ok());
    }
    SCOPED_TRACE(absl::StrCat("tick ", tick));
    // Every helper starts, the second cannot, none can.
    asked = 0;
    refuse_from = std::vector<int>{99, 1, 0}[tick % 3];
    for (auto& e : engines) e->Evaluate();
    ASSERT_EQ(Statistics(*engines[1]->snapshot()), Statistics(*engines[0]->snapshot()));
    ASSERT_EQ(Findings(*engines[1]->snapshot()->findings),
              Findings(*engines[0]->snapshot()->findings));
  }
  // One refusal in most of 40 ticks (a tick with fewer series to
  // recompute than threads asks for fewer).
  EXPECT_GE(refused, 30);
  EXPECT_GE(started, 30);
}

}  // namespace
}  // namespace constance::collector
