// Each evaluator on its own (collector/evaluators.h): a hand-built peer
// group, the evaluator, its verdict. The engine's assembly of them is
// covered by engine_test and findings_test.
#include "collector/evaluators.h"

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "collector/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace constance::collector {
namespace {

using ::testing::HasSubstr;

const absl::Time kNow = absl::FromUnixSeconds(1'767'225'600);

SeriesKey Key(v1::Family family, const std::string& key) {
  SeriesKey k;
  k.family = family;
  k.key = key;
  if (family == v1::FAMILY_PRICE) {
    k.currency = "EUR";
    k.kind = v1::SHELF;
  }
  return k;
}

// The members' names: "s0", "s1", ... (a deque: adding one moves none).
const std::string* Name(size_t i) {
  static std::deque<std::string>* const names = new std::deque<std::string>();
  while (names->size() <= i) names->push_back(absl::StrCat("s", names->size()));
  return &(*names)[i];
}

// A computed group as Engine::ComputeGroups leaves it (without rollouts):
// member i is location i, named "s<i>", with `samples` each.
GroupData Group(const SeriesKey& key, const std::vector<double>& values, uint64_t samples = 1,
                const Catalog& catalog = DefaultCatalog()) {
  GroupData g;
  g.group = "chain";
  std::vector<LocatedValue> located;
  for (size_t i = 0; i < values.size(); ++i) {
    GroupMember m;
    m.location = static_cast<uint32_t>(i);
    m.value.value = values[i];
    m.value.samples = samples;
    m.name = Name(i);
    g.members.push_back(m);
    located.push_back({m.location, values[i], samples});
  }
  const OutlierPolicy policy = PolicyFromCatalog(catalog);
  auto stats = std::make_shared<SeriesStats>();
  stats->key = key;
  stats->group = g.group;
  stats->summary = SummarizeGroup(located);
  stats->band = ExpectedBand(key.family, stats->summary, policy);
  if (key.family == v1::FAMILY_PRICE) {
    g.levels = FindLevels(located, stats->summary.median, stats->band.floor,
                          catalog.thresholds.min_level);
  }
  for (const GroupMember& m : g.members) {
    g.assessed.push_back(AssessValue(key.family, m.value.value, stats->summary, stats->band,
                                     policy, m.value.samples));
  }
  g.stats = std::move(stats);
  return g;
}

TEST(EvaluatorsTest, FindMemberFindsEachLocationAndNothingElse) {
  const GroupData g = Group(Key(v1::FAMILY_PRICE, "milk"), {100, 100, 100});
  ASSERT_NE(FindMember(g, 2), nullptr);
  EXPECT_EQ(*FindMember(g, 2)->name, "s2");
  EXPECT_EQ(FindMember(g, 3), nullptr);
}

TEST(EvaluatorsTest, GroupConditionDescribesTheGroup) {
  const SeriesKey key = Key(v1::FAMILY_WAIT, "checkout");
  const GroupData g = Group(key, {60, 61, 62, 63, 64});
  const Condition c = GroupCondition(key, "wait checkout|chain", g, "drift", v1::DRIFT, v1::LOW, 1.5);
  EXPECT_EQ(c.id, "drift|wait checkout|chain");
  EXPECT_EQ(c.strength, 1.5);
  EXPECT_EQ(c.finding.kind(), v1::DRIFT);
  EXPECT_EQ(c.finding.severity(), v1::LOW);
  EXPECT_EQ(c.finding.group(), "chain");
  EXPECT_EQ(c.finding.group_size(), 5u);
  EXPECT_EQ(c.finding.audience(), "hq");
  EXPECT_EQ(c.finding.series().key(), "checkout");
}

// Outlier: the rule's verdict, carried down to `weak`.
TEST(EvaluatorsTest, OutlierReasonFollowsTheRulesVerdict) {
  const SeriesKey key = Key(v1::FAMILY_PRICE, "milk");
  const GroupData g = Group(key, {100, 100, 100, 100, 100, 100, 130});
  std::vector<WeightedReason> reasons;
  EXPECT_FALSE(OutlierReason(key, g, 0, 0.8, &reasons));
  EXPECT_TRUE(reasons.empty());
  EXPECT_TRUE(OutlierReason(key, g, 6, 0.8, &reasons));
  ASSERT_EQ(reasons.size(), 1u);
  EXPECT_GE(reasons[0].first, 1);
  EXPECT_EQ(reasons[0].second.kind(), v1::OUTLIER);
  EXPECT_EQ(reasons[0].second.direction(), v1::ABOVE);
  EXPECT_THAT(reasons[0].second.detail(), HasSubstr("outside the band"));
}

TEST(EvaluatorsTest, AComplianceOutlierShowsItsEvidence) {
  const SeriesKey key = Key(v1::FAMILY_COMPLIANCE, "hygiene");
  const GroupData g = Group(key, {1, 1, 1, 1, 1, 1, 0}, /*samples=*/20);
  std::vector<WeightedReason> reasons;
  EXPECT_TRUE(OutlierReason(key, g, 6, 0.8, &reasons));
  ASSERT_EQ(reasons.size(), 1u);
  EXPECT_THAT(reasons[0].second.detail(), HasSubstr("0 of 20 checks passed, 99.9% interval"));
}

// Split: the deviating levels, their locations by name and one signature
// per level.
TEST(EvaluatorsTest, SplitConditionNamesEachLevelsLocations) {
  const SeriesKey key = Key(v1::FAMILY_PRICE, "milk");
  const GroupData g = Group(key, {100, 100, 100, 100, 100, 100, 120, 120, 120});
  ASSERT_EQ(g.levels.others.size(), 1u);
  const SplitCandidate split = SplitCondition(key, "price milk EUR/shelf|chain", g);
  EXPECT_EQ(split.condition.id, "split|price milk EUR/shelf|chain");
  EXPECT_EQ(split.condition.finding.kind(), v1::SPLIT);
  EXPECT_EQ(split.condition.finding.severity(), v1::MEDIUM);
  EXPECT_THAT(split.condition.finding.locations(), ::testing::ElementsAre("s6", "s7", "s8"));
  ASSERT_EQ(split.condition.finding.levels_size(), 2);
  EXPECT_EQ(split.condition.finding.levels(0).locations(), 6u);
  EXPECT_EQ(split.signatures, std::vector<std::string>{"s6,s7,s8"});
  EXPECT_THAT(split.condition.finding.reasons(0).detail(), HasSubstr("2 consistent levels"));
}

// Zone: the same locations split on zone_min_keys keys become one zone.
TEST(EvaluatorsTest, ZoneConditionsGatherTheSameLocationsSplitOnManyKeys) {
  Thresholds th;
  th.zone_min_keys = 2;
  std::vector<SplitCandidate> splits;
  for (const std::string item : {"milk", "bread", "eggs"}) {
    const SeriesKey key = Key(v1::FAMILY_PRICE, item);
    const GroupData g = Group(key, {100, 100, 100, 100, 100, 100, 120, 120, 120});
    splits.push_back(SplitCondition(key, item, g));
  }
  const SeriesKey other = Key(v1::FAMILY_PRICE, "tea");
  splits.push_back(SplitCondition(other, "tea", Group(other, {100, 100, 100, 100, 120, 120, 120, 100, 100})));
  std::vector<const SplitCandidate*> candidates;
  for (const SplitCandidate& s : splits) candidates.push_back(&s);
  std::vector<Condition> out;
  ZoneConditions(candidates, th, &out);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].finding.kind(), v1::ZONE);
  EXPECT_EQ(out[0].finding.keys_size(), 3);
  EXPECT_EQ(out[1].finding.kind(), v1::SPLIT);
  EXPECT_EQ(out[1].finding.series().key(), "tea");
}

// Irregular change: a change few peers made, settled, ending away from
// every level; flips; and convergence onto the main level is not one.
TEST(EvaluatorsTest, IrregularChangeReasonJudgesWhereAChangeEnds) {
  const SeriesKey key = Key(v1::FAMILY_PRICE, "milk");
  const Thresholds th;
  const int64_t two_hours_ago = absl::ToUnixNanos(kNow - absl::Hours(2));
  const int64_t window_start = absl::ToUnixNanos(kNow - th.irregular_window);
  const struct {
    const char* name;
    double now_at;
    PriceChange change;
    int flips;
    bool irregular;
    std::vector<double> rollout_values = {};
    int64_t peer_changed_at = 0;  // Member 0 changed 90 -> 100 then (0: never).
  } cases[] = {
      {"lone change away from the levels", 115, {two_hours_ago, 100, 115}, 1, true},
      {"back to the main level", 100, {two_hours_ago, 115, 100}, 1, false},
      {"not settled yet", 115, {absl::ToUnixNanos(kNow - absl::Minutes(10)), 100, 115}, 1, false},
      {"flipping", 100, {two_hours_ago, 115, 100}, 3, true},
      {"first onto a rollout's level", 115, {two_hours_ago, 100, 115}, 1, false, {100, 115}},
      {"near a rollout's level but past its floor",
       120,
       {two_hours_ago, 100, 120},
       1,
       true,
       {100, 115}},
      // irregular_peer_share 0.10 of the 9 peers: 0.9.
      {"a peer changed too", 115, {two_hours_ago, 100, 115}, 1, false, {}, two_hours_ago},
      {"a peer changed as the window starts",
       115,
       {two_hours_ago, 100, 115},
       1,
       false,
       {},
       window_start},
      {"a peer changed before the window",
       115,
       {two_hours_ago, 100, 115},
       1,
       true,
       {},
       window_start - 1},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.name);
    GroupData g = Group(key, {100, 100, 100, 100, 100, 100, 100, 100, 100, tc.now_at});
    g.rollout_values = tc.rollout_values;
    g.members[9].latest_change = tc.change;
    g.members[9].changes_in_flip_window = tc.flips;
    if (tc.peer_changed_at != 0) g.members[0].latest_change = {tc.peer_changed_at, 90, 100};
    std::vector<WeightedReason> reasons;
    const IrregularClock clock(kNow, th);
    IrregularChangeReason(key, g, 9, ChangedInIrregularWindow(g, clock), clock, th, &reasons);
    ASSERT_EQ(reasons.size(), tc.irregular ? 1u : 0u);
    if (tc.irregular) {
      EXPECT_EQ(reasons[0].second.kind(), v1::IRREGULAR_CHANGE);
    }
  }
}

// The rollout rule's test, shared by ComputeGroups, irregular change and
// the price-drop feed: within the band floor of a rollout's level.
TEST(EvaluatorsTest, NearAnyIsWithinTheFloorOfARolloutLevel) {
  const std::vector<double> rollout = {299, 279};
  EXPECT_TRUE(NearAny(rollout, 279, 0));
  EXPECT_TRUE(NearAny(rollout, 281, 2));
  EXPECT_FALSE(NearAny(rollout, 282, 2));
  EXPECT_FALSE(NearAny({}, 279, 100));
}

// Group drift: a baseline of calm bins freezes the scale; a dispersion
// well above it, bin after bin, raises the EWMA past its limit.
TEST(EvaluatorsTest, GroupDriftConditionRisesWithTheDispersion) {
  const SeriesKey key = Key(v1::FAMILY_WAIT, "checkout");
  DriftPolicy drift;
  GroupDriftState state;
  const GroupData calm = Group(key, {60, 62, 64, 66, 68, 70, 72});
  int64_t bin = 0;
  for (int i = 0; i < drift.baseline_bins; ++i) {
    EXPECT_FALSE(GroupDriftCondition(key, "g", calm, ++bin, drift, 3.5, 0.8, &state).has_value());
  }
  ASSERT_TRUE(state.baseline.frozen);
  // The same bin twice updates once.
  const GroupData wide = Group(key, {20, 40, 60, 80, 100, 120, 140});
  std::optional<Condition> c;
  for (int i = 0; i < 20 && !c.has_value(); ++i) {
    c = GroupDriftCondition(key, "g", wide, ++bin, drift, 3.5, 0.8, &state);
  }
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->id, "drift|g");
  EXPECT_EQ(c->finding.kind(), v1::DRIFT);
  EXPECT_GE(c->strength, 0.8);
  const double level = state.level;
  GroupDriftCondition(key, "g", wide, bin, drift, 3.5, 0.8, &state);
  EXPECT_EQ(state.level, level);
}

// Cell drift: a cell moving away from its own calm deviation, in the
// group's scale; waits drift up only.
TEST(EvaluatorsTest, CellDriftReasonFollowsTheCellsOwnBaseline) {
  const SeriesKey key = Key(v1::FAMILY_WAIT, "checkout");
  DriftPolicy drift;
  CellDriftState state;
  const GroupData calm = Group(key, {60, 62, 64, 66, 68, 70, 72});
  int64_t bin = 0;
  for (int i = 0; i < drift.baseline_bins; ++i) {
    EXPECT_FALSE(CellDriftReason(key, calm, 6, 2, ++bin, drift, 0.8, &state).has_value());
  }
  ASSERT_TRUE(state.baseline.frozen);
  const GroupData lower = Group(key, {60, 62, 64, 66, 68, 70, 40});
  CellDriftState down = state;
  for (int i = 0; i < 10; ++i) {
    EXPECT_FALSE(CellDriftReason(key, lower, 6, 2, bin + 1 + i, drift, 0.8, &down).has_value());
  }
  const GroupData slower = Group(key, {60, 62, 64, 66, 68, 70, 90});
  std::optional<WeightedReason> r;
  for (int i = 0; i < 10 && !r.has_value(); ++i) {
    r = CellDriftReason(key, slower, 6, 2, ++bin, drift, 0.8, &state);
  }
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->second.kind(), v1::DRIFT);
  EXPECT_THAT(r->second.detail(), HasSubstr("drifting away from its peers"));
}

TEST(EvaluatorsTest, PricePromiseVerdictBreaksAboveTheListPriceByMoreThanTheFloor) {
  const SeriesKey key = Key(v1::FAMILY_PRICE, "milk");
  PricePromise promise{"milk", "EUR", v1::SHELF, 100, {}, absl::InfinitePast(), 7};
  const OutlierPolicy policy = PolicyFromCatalog(DefaultCatalog());
  static const struct {
    double price;
    bool broken;
  } cases[] = {{100, false}, {101, false}, {99, false}, {102.5, true}, {120, true}};
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.price);
    const PromiseVerdict v = PricePromiseVerdict(key, promise, tc.price, policy);
    EXPECT_EQ(v.id, "price:7");
    EXPECT_EQ(v.promise, "list price 1.00 EUR");
    EXPECT_EQ(v.strength >= 1, tc.broken);
    EXPECT_EQ(v.reason.kind(), v1::BROKEN_PROMISE);
  }
}

// A series is held to the list prices of its own key, currency and kind
// only (found once for the series), and a member to the latest of those
// effective at its location: a zone's where it is in the zone.
TEST(EvaluatorsTest, PricePromisesForTheSeriesAndTheMembersZone) {
  Catalog catalog = DefaultCatalog();
  const absl::Time now = absl::FromUnixSeconds(1'800'000'000);
  auto promise = [&](const char* key, const char* currency, v1::PriceKind kind, int64_t price) {
    PricePromise& p = catalog.price_promises.emplace_back();
    p.key = key;
    p.currency = currency;
    p.kind = kind;
    p.list_minor_units = price;
    return catalog.price_promises.size() - 1;
  };
  promise("milk", "USD", v1::SHELF, 90);
  promise("milk", "EUR", v1::POS, 80);
  promise("bread", "EUR", v1::SHELF, 250);
  const size_t chain = promise("milk", "EUR", v1::SHELF, 100);
  const size_t north = promise("milk", "EUR", v1::SHELF, 110);
  catalog.price_promises[north].where = {{"zone", "north"}};
  const size_t later = promise("milk", "EUR", v1::SHELF, 105);
  catalog.price_promises[later].effective = now + absl::Hours(1);

  SeriesKey key{v1::FAMILY_PRICE, "milk", "EUR", v1::SHELF};
  const std::vector<const PricePromise*> found = PricePromisesFor(key, catalog);
  ASSERT_EQ(found.size(), 3u);
  EXPECT_EQ(found[0], &catalog.price_promises[chain]);
  EXPECT_EQ(found[1], &catalog.price_promises[north]);
  EXPECT_EQ(found[2], &catalog.price_promises[later]);
  EXPECT_TRUE(
      PricePromisesFor({v1::FAMILY_WAIT, "milk", "", v1::PRICE_KIND_UNSPECIFIED}, catalog).empty());

  LocationEntry south, in_north;
  south.labels = {{"zone", "south"}};
  in_north.labels = {{"zone", "north"}};
  Comparable value;
  value.value = 110;
  auto verdict = [&](const LocationEntry* entry) {
    return PromiseVerdictFor(key, entry, value, found, nullptr, nullptr, now, catalog);
  };
  // 110 against the chain's 100: broken; against the north's 110: kept.
  // The later list price is not effective yet.
  ASSERT_TRUE(verdict(&south).has_value());
  EXPECT_GE(verdict(&south)->strength, 1);
  ASSERT_TRUE(verdict(&in_north).has_value());
  EXPECT_LT(verdict(&in_north)->strength, 1);
  EXPECT_NE(verdict(&in_north)->promise, verdict(&south)->promise);
  EXPECT_FALSE(
      PromiseVerdictFor(key, &south, value, {}, nullptr, nullptr, now, catalog).has_value());
}

TEST(EvaluatorsTest, WaitPromiseVerdictBreaksBelowThePromisedShare) {
  WaitPromise promise{"checkout", 300, 0.9, 4};
  static const struct {
    double share;
    bool broken;
  } cases[] = {{0.95, false}, {0.9, false}, {0.89, true}, {0.5, true}};
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.share);
    Comparable value;
    value.share_within = tc.share;
    const PromiseVerdict v = WaitPromiseVerdict(promise, value, 0.05);
    EXPECT_EQ(v.id, "wait:4");
    EXPECT_EQ(v.promise, "90% served within 300 s");
    EXPECT_EQ(v.strength >= 1, tc.broken);
    EXPECT_THAT(v.reason.detail(), HasSubstr("served within 300 s"));
  }
}

TEST(EvaluatorsTest, CheckPromiseVerdictWeighsTheEvidenceAndACriticalFailure) {
  const SeriesKey key = Key(v1::FAMILY_COMPLIANCE, "gas-valve");
  static const struct {
    const char* name;
    bool promise_critical;
    double rate;
    uint64_t samples;
    bool critical_failure;
    bool broken;
    bool critical;
  } cases[] = {
      {"one failed check", false, 0, 1, false, false, false},
      {"never passes", false, 0, 40, false, true, false},
      {"one failed critical check", true, 0, 1, true, true, true},
      {"critical failure, promise not critical", false, 0, 1, true, false, false},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.name);
    CheckPromise promise{"gas-valve", tc.promise_critical, 0.9, 3};
    Comparable value;
    value.value = tc.rate;
    value.samples = tc.samples;
    value.critical_failure = tc.critical_failure;
    const PromiseVerdict v = CheckPromiseVerdict(key, promise, value, 0.05);
    EXPECT_EQ(v.id, "check:3");
    EXPECT_EQ(v.promise, tc.promise_critical ? "gas-valve never failed (critical)"
                                             : "gas-valve passed 90% of the time");
    EXPECT_EQ(v.strength >= 1, tc.broken);
    EXPECT_EQ(v.critical, tc.critical);
  }
}

TEST(EvaluatorsTest, UnkeepableConditionsNeedEnoughLocationsBreakingIt) {
  Thresholds th;
  PromiseTally tally;
  tally["check:1"] = {10, 6};  // Over half of ten: unkeepable.
  tally["check:2"] = {10, 4};
  tally["check:3"] = {3, 3};   // Fewer than min_group apply.
  std::vector<Condition> out;
  const auto unkeepable =
      UnkeepableConditions(Key(v1::FAMILY_COMPLIANCE, "hygiene"), "compliance hygiene", tally,
                           th, &out);
  EXPECT_EQ(unkeepable.size(), 1u);
  EXPECT_TRUE(unkeepable.contains("check:1"));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].finding.kind(), v1::UNKEEPABLE_PROMISE);
  EXPECT_THAT(out[0].finding.reasons(0).detail(), HasSubstr("6 of 10 locations"));
}

TEST(EvaluatorsTest, ReasonSeverityByKind) {
  v1::Reason outlier = MakeReason(v1::OUTLIER, "", 200, 100, 95, 105, 1, 100);
  v1::Reason promise = MakeReason(v1::BROKEN_PROMISE, "", 0, 1, 1, 1, 1, -1);
  v1::Reason change = MakeReason(v1::IRREGULAR_CHANGE, "", 0, 0, 0, 0, 0, 1);
  EXPECT_EQ(ReasonSeverity(v1::FAMILY_PRICE, outlier, 1, 1, false), SeverityFor(100, 1));
  EXPECT_EQ(ReasonSeverity(v1::FAMILY_COMPLIANCE, promise, 2, 0.05, false), v1::HIGH);
  EXPECT_EQ(ReasonSeverity(v1::FAMILY_COMPLIANCE, promise, 2, 0.05, true), v1::CRITICAL);
  EXPECT_EQ(ReasonSeverity(v1::FAMILY_PRICE, change, 1, 1, false), v1::MEDIUM);
  // A compliance outlier is never critical without a critical failure.
  EXPECT_LE(ReasonSeverity(v1::FAMILY_COMPLIANCE, outlier, 100, 0.05, false), v1::HIGH);
}

TEST(EvaluatorsTest, LocationSeverityIsSetByTheReasonsAtFullStrength) {
  std::vector<WeightedReason> reasons = {
      {1.2, MakeReason(v1::DRIFT, "", 0, 0, 0, 0, 0, 1)},
      {0.9, MakeReason(v1::BROKEN_PROMISE, "", 0, 1, 1, 1, 1, -1)},
  };
  bool only_drift = false;
  // The near-miss promise does not raise it: drift alone decides.
  EXPECT_EQ(LocationSeverity(v1::FAMILY_WAIT, reasons, 1, true, false, &only_drift), v1::LOW);
  EXPECT_TRUE(only_drift);
  // Held open by hysteresis alone: the weaker reasons decide.
  reasons.erase(reasons.begin());
  EXPECT_EQ(LocationSeverity(v1::FAMILY_WAIT, reasons, 1, true, false, &only_drift),
            v1::CRITICAL);
  EXPECT_FALSE(only_drift);
}

TEST(EvaluatorsTest, DeliveryConditionsFindSilentAndStaleLocations) {
  Catalog catalog = DefaultCatalog();
  for (const std::string id : {"quiet", "stale", "fine"}) {
    LocationEntry e;
    e.id = id;
    catalog.locations.push_back(e);
  }
  catalog.Index();
  std::vector<LocationState> states(3);
  states[0].location = "quiet";
  states[0].last_report = kNow - absl::Hours(3);
  states[1].location = "stale";
  states[1].last_report = kNow - absl::Hours(3);
  states[1].health.heartbeat_at = kNow - absl::Minutes(1);
  states[2].location = "fine";
  states[2].last_report = kNow - absl::Minutes(1);
  std::vector<Condition> out;
  DeliveryConditions(states, catalog, kNow, &out);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].finding.kind(), v1::SILENT);
  EXPECT_EQ(out[0].finding.location(), "quiet");
  EXPECT_EQ(out[1].finding.kind(), v1::STALE);
  EXPECT_EQ(out[1].finding.location(), "stale");
}

}  // namespace
}  // namespace constance::collector
