// The engine's ingest path: exactly-once application by high-water mark,
// partial success, event-time ordering, series identity, and the
// statistics published off the ingest path.
#include "collector/engine.h"

#include <cmath>
#include <limits>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "constance/state/v1/engine_state.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace constance::collector {
namespace {

using ::testing::HasSubstr;

const absl::Time kNow = absl::FromUnixSeconds(1'700'000'000);

// Every family compared from its first sample, so small cases stay small.
Engine::Options FixedClock() {
  Engine::Options o;
  Catalog catalog = DefaultCatalog();
  catalog.price.min_samples = catalog.wait.min_samples = catalog.compliance.min_samples =
      catalog.score.min_samples = 1;
  o.catalog = std::make_shared<const Catalog>(std::move(catalog));
  o.clock = [] { return kNow; };
  return o;
}

v1::Observation Price(const std::string& key, int64_t minor, const std::string& currency = "EUR",
                      v1::PriceKind kind = v1::SHELF, absl::Time at = kNow) {
  v1::Observation o;
  o.set_key(key);
  o.mutable_price()->set_minor_units(minor);
  o.mutable_price()->set_currency(currency);
  o.mutable_price()->set_kind(kind);
  o.mutable_observed_at()->set_seconds(absl::ToUnixSeconds(at));
  return o;
}

v1::Observation Wait(const std::string& key, double seconds) {
  v1::Observation o;
  o.set_key(key);
  o.set_wait_seconds(seconds);
  return o;
}

v1::Observation Check(const std::string& key, bool passed, bool critical = false) {
  v1::Observation o;
  o.set_key(key);
  o.mutable_check()->set_passed(passed);
  o.mutable_check()->set_critical(critical);
  return o;
}

v1::Batch MakeBatch(const std::string& location, uint64_t incarnation, uint64_t first,
                    std::vector<v1::Observation> observations) {
  v1::Batch b;
  b.set_location(location);
  b.set_incarnation(incarnation);
  b.set_first_sequence(first);
  for (auto& o : observations) *b.add_observations() = std::move(o);
  return b;
}

const SeriesStats* Find(const Snapshot& s, v1::Family family, const std::string& key,
                        const std::string& currency = "", v1::PriceKind kind = v1::SHELF) {
  for (const auto& stats : s.series) {
    if (stats->key.family == family && stats->key.key == key &&
        (family != v1::FAMILY_PRICE ||
         (stats->key.currency == currency && stats->key.kind == kind))) {
      return stats.get();
    }
  }
  return nullptr;
}

TEST(EngineTest, ABatchIsAppliedOnceAndItsRetryCountsAsDuplicates) {
  Engine engine(FixedClock());
  v1::Batch batch = MakeBatch("store-a", 42, 1, {Wait("checkout", 100), Wait("checkout", 200)});
  absl::StatusOr<v1::Ack> first = engine.ApplyBatch(batch);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->watermark(), 2u);
  EXPECT_EQ(first->duplicates(), 0u);
  EXPECT_EQ(first->outcome(), v1::Ack::APPLIED);

  absl::StatusOr<v1::Ack> retry = engine.ApplyBatch(batch);
  ASSERT_TRUE(retry.ok());
  EXPECT_EQ(retry->watermark(), 2u);
  EXPECT_EQ(retry->duplicates(), 2u);

  // A retry overlapping new data applies only the new part.
  absl::StatusOr<v1::Ack> overlap = engine.ApplyBatch(
      MakeBatch("store-a", 42, 2, {Wait("checkout", 200), Wait("checkout", 300)}));
  ASSERT_TRUE(overlap.ok());
  EXPECT_EQ(overlap->watermark(), 3u);
  EXPECT_EQ(overlap->duplicates(), 1u);

  engine.Recompute();
  auto snap = engine.snapshot();
  EXPECT_EQ(snap->observations_applied, 3u);
  EXPECT_EQ(snap->observations_duplicate, 3u);
  const SeriesStats* wait = Find(*snap, v1::FAMILY_WAIT, "checkout");
  ASSERT_NE(wait, nullptr);
  // The comparable wait is the median of {100, 200, 300}, each applied once,
  // from the sketch (1% relative accuracy).
  EXPECT_NEAR(wait->summary.median, 200, 2);
}

std::vector<v1::Observation> Waits(const std::string& key, int n, double from = 1) {
  std::vector<v1::Observation> out;
  for (int i = 0; i < n; ++i) out.push_back(Wait(key, from + i));
  return out;
}

TEST(EngineTest, ABatchLeavingAGapIsOutOfOrderAndNothingOfItApplies) {
  Engine engine(FixedClock());
  ASSERT_TRUE(engine.ApplyBatch(MakeBatch("store-a", 7, 1, Waits("checkout", 66))).ok());
  // 67..76 are missing: 77..86 would leave a gap.
  absl::StatusOr<v1::Ack> gap = engine.ApplyBatch(MakeBatch("store-a", 7, 77, Waits("q", 10)));
  ASSERT_TRUE(gap.ok()) << gap.status();
  EXPECT_EQ(gap->outcome(), v1::Ack::OUT_OF_ORDER);
  EXPECT_EQ(gap->expected_sequence(), 67u);
  EXPECT_EQ(gap->watermark(), 66u);
  EXPECT_EQ(gap->first_sequence(), 77u);
  EXPECT_EQ(gap->incarnation(), 7u);
  engine.Recompute();
  EXPECT_EQ(engine.snapshot()->observations_applied, 66u);
  EXPECT_EQ(engine.snapshot()->batches_out_of_order, 1u);
  EXPECT_EQ(Find(*engine.snapshot(), v1::FAMILY_WAIT, "q"), nullptr);
}

TEST(EngineTest, ResendingFromTheExpectedSequenceAppliesEachObservationOnce) {
  Engine engine(FixedClock());
  ASSERT_TRUE(engine.ApplyBatch(MakeBatch("store-a", 7, 1, Waits("a", 66))).ok());
  ASSERT_EQ(engine.ApplyBatch(MakeBatch("store-a", 7, 77, Waits("b", 10)))->outcome(),
            v1::Ack::OUT_OF_ORDER);
  absl::StatusOr<v1::Ack> resent = engine.ApplyBatch(MakeBatch("store-a", 7, 67, Waits("c", 10)));
  ASSERT_TRUE(resent.ok());
  EXPECT_EQ(resent->outcome(), v1::Ack::APPLIED);
  EXPECT_EQ(resent->watermark(), 76u);
  absl::StatusOr<v1::Ack> then = engine.ApplyBatch(MakeBatch("store-a", 7, 77, Waits("b", 10)));
  ASSERT_TRUE(then.ok());
  EXPECT_EQ(then->outcome(), v1::Ack::APPLIED);
  EXPECT_EQ(then->watermark(), 86u);
  EXPECT_EQ(then->duplicates(), 0u);
  engine.Recompute();
  auto snap = engine.snapshot();
  EXPECT_EQ(snap->observations_applied, 86u);
  EXPECT_EQ(snap->observations_duplicate, 0u);
  ASSERT_NE(Find(*snap, v1::FAMILY_WAIT, "b"), nullptr);
}

TEST(EngineTest, ABatchOverlappingTheWatermarkAppliesOnlyItsTail) {
  Engine engine(FixedClock());
  ASSERT_TRUE(engine.ApplyBatch(MakeBatch("store-a", 7, 1, Waits("a", 10))).ok());
  absl::StatusOr<v1::Ack> overlap =
      engine.ApplyBatch(MakeBatch("store-a", 7, 6, Waits("a", 10, 6)));
  ASSERT_TRUE(overlap.ok());
  EXPECT_EQ(overlap->outcome(), v1::Ack::APPLIED);
  EXPECT_EQ(overlap->duplicates(), 5u);
  EXPECT_EQ(overlap->watermark(), 15u);
  engine.Recompute();
  EXPECT_EQ(engine.snapshot()->observations_applied, 15u);
}

TEST(EngineTest, ADeclaredDroppedRangeIsSteppedOverAndCounted) {
  Engine engine(FixedClock());
  ASSERT_TRUE(engine.ApplyBatch(MakeBatch("store-a", 7, 1, Waits("a", 10))).ok());
  // The agent's full spool deleted 11..40 unsent and says so.
  v1::Batch batch = MakeBatch("store-a", 7, 41, Waits("a", 5));
  batch.set_skipped_from(11);
  absl::StatusOr<v1::Ack> ack = engine.ApplyBatch(batch);
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->outcome(), v1::Ack::APPLIED);
  EXPECT_EQ(ack->watermark(), 45u);
  // A declaration that starts past the watermark + 1 still leaves a gap.
  v1::Batch late = MakeBatch("store-a", 7, 60, Waits("a", 1));
  late.set_skipped_from(50);
  absl::StatusOr<v1::Ack> refused = engine.ApplyBatch(late);
  ASSERT_TRUE(refused.ok());
  EXPECT_EQ(refused->outcome(), v1::Ack::OUT_OF_ORDER);
  EXPECT_EQ(refused->expected_sequence(), 46u);
  // A declaration at or below the watermark counts nothing twice.
  v1::Batch again = MakeBatch("store-a", 7, 46, Waits("a", 1));
  again.set_skipped_from(3);
  ASSERT_EQ(engine.ApplyBatch(again)->outcome(), v1::Ack::APPLIED);
  engine.Recompute();
  EXPECT_EQ(engine.snapshot()->observations_dropped, 30u);
  EXPECT_EQ(engine.snapshot()->observations_applied, 16u);
}

TEST(EngineTest, ASkippedFromNotBelowTheFirstSequenceIsRefused) {
  Engine engine(FixedClock());
  v1::Batch batch = MakeBatch("store-a", 7, 5, Waits("a", 1));
  batch.set_skipped_from(5);
  absl::StatusOr<v1::Ack> ack = engine.ApplyBatch(batch);
  ASSERT_FALSE(ack.ok());
  EXPECT_THAT(ack.status().message(), HasSubstr("batch.skipped_from"));
}

TEST(EngineTest, AdmitCountsBatchesOnTheirWayButNotGaps) {
  Engine engine(FixedClock());
  const v1::Batch first = MakeBatch("store-a", 7, 1, Waits("a", 10));
  const v1::Batch second = MakeBatch("store-a", 7, 11, Waits("a", 10));
  const v1::Batch gap = MakeBatch("store-a", 7, 30, Waits("a", 1));
  // Both go to the log before either is applied.
  EXPECT_FALSE(engine.Admit(ViewOf(first)).has_value());
  EXPECT_FALSE(engine.Admit(ViewOf(second)).has_value());
  std::optional<v1::Ack> refused = engine.Admit(ViewOf(gap));
  ASSERT_TRUE(refused.has_value());
  EXPECT_EQ(refused->outcome(), v1::Ack::OUT_OF_ORDER);
  EXPECT_EQ(refused->expected_sequence(), 21u);
  EXPECT_EQ(refused->watermark(), 0u);
  // Applied in log order; had the first never applied, the second is
  // still refused when it comes to be applied.
  EXPECT_EQ(engine.ApplyBatch(second)->outcome(), v1::Ack::OUT_OF_ORDER);
  EXPECT_EQ(engine.ApplyBatch(first)->outcome(), v1::Ack::APPLIED);
  EXPECT_EQ(engine.ApplyBatch(second)->watermark(), 20u);
}

TEST(EngineTest, NothingOfASupersededStreamApplies) {
  Engine engine(FixedClock());
  const uint64_t older = engine.ClaimLocation("store-a");
  const v1::Batch first = MakeBatch("store-a", 7, 1, Waits("a", 10));
  ASSERT_TRUE(engine.ApplyBatch(ViewOf(first), kNow, older).ok());
  const uint64_t newer = engine.ClaimLocation("store-a");
  EXPECT_NE(newer, older);
  const v1::Batch second = MakeBatch("store-a", 7, 11, Waits("a", 10));
  absl::StatusOr<v1::Ack> late = engine.ApplyBatch(ViewOf(second), kNow, older);
  ASSERT_FALSE(late.ok());
  EXPECT_TRUE(absl::IsAborted(late.status()));
  EXPECT_THAT(late.status().message(), HasSubstr("superseded by a newer stream"));
  absl::StatusOr<v1::Ack> ack = engine.ApplyBatch(ViewOf(second), kNow, newer);
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->watermark(), 20u);
  EXPECT_EQ(ack->duplicates(), 0u);
  // Released by an older stream, the newer stream keeps the location.
  engine.ReleaseLocation("store-a", older);
  EXPECT_TRUE(engine.ApplyBatch(ViewOf(MakeBatch("store-a", 7, 21, Waits("a", 1))), kNow, newer)
                  .ok());
  engine.ReleaseLocation("store-a", newer);
  EXPECT_FALSE(engine.ApplyBatch(ViewOf(MakeBatch("store-a", 7, 22, Waits("a", 1))), kNow, newer)
                   .ok());
}

TEST(EngineTest, ANewIncarnationIsNotMistakenForDuplicates) {
  Engine engine(FixedClock());
  ASSERT_TRUE(engine.ApplyBatch(MakeBatch("store-a", 1, 1, {Wait("checkout", 100)})).ok());
  // The spool was wiped: numbering restarts at 1 under a new incarnation.
  absl::StatusOr<v1::Ack> ack =
      engine.ApplyBatch(MakeBatch("store-a", 2, 1, {Wait("checkout", 300)}));
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->duplicates(), 0u);
  engine.Recompute();
  EXPECT_EQ(engine.snapshot()->observations_applied, 2u);
}

TEST(EngineTest, TheWatermarkShownIsTheCurrentIncarnations) {
  Engine engine(FixedClock());
  ASSERT_TRUE(engine.ApplyBatch(MakeBatch("store-a", 1, 1, Waits("checkout", 50))).ok());
  auto watermark = [&engine] {
    engine.Recompute();
    return engine.snapshot()->location_states.at(0).watermark;
  };
  EXPECT_EQ(watermark(), 50u);
  // The agent's spool was wiped: its heartbeat announces incarnation 2,
  // which has acknowledged nothing yet.
  v1::Heartbeat hb;
  hb.set_location("store-a");
  hb.set_incarnation(2);
  ASSERT_TRUE(engine.RecordHeartbeat(hb).ok());
  EXPECT_EQ(watermark(), 0u);
  ASSERT_TRUE(engine.ApplyBatch(MakeBatch("store-a", 2, 1, Waits("checkout", 3))).ok());
  EXPECT_EQ(watermark(), 3u);
  // A heartbeat of the same incarnation changes nothing.
  ASSERT_TRUE(engine.RecordHeartbeat(hb).ok());
  EXPECT_EQ(watermark(), 3u);
}

TEST(EngineTest, EachAckCountsWhatItApplied) {
  Engine engine(FixedClock());
  absl::StatusOr<v1::Ack> ack = engine.ApplyBatch(
      MakeBatch("store-a", 1, 1, {Wait("checkout", 1), Wait("checkout", -1), Wait("x", 2)}));
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->applied(), 2u);
  EXPECT_EQ(ack->rejections_size(), 1);
  ack = engine.ApplyBatch(MakeBatch("store-a", 1, 2, Waits("checkout", 4)));
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->duplicates(), 2u);
  EXPECT_EQ(ack->applied(), 2u);
}

TEST(EngineTest, EachLocationHoldsAtMostItsCellsAndARestoreCountsThem) {
  Engine::Options options = FixedClock();
  options.limits.max_cells_per_location = 2;
  Engine engine(options);
  absl::StatusOr<v1::Ack> ack = engine.ApplyBatch(
      MakeBatch("store-a", 1, 1, {Wait("a", 1), Wait("b", 1), Wait("c", 1), Wait("a", 2)}));
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->applied(), 3u) << "a key the location holds takes new observations";
  ASSERT_EQ(ack->rejections_size(), 1);
  EXPECT_EQ(ack->rejections(0).sequence(), 3u);
  EXPECT_THAT(ack->rejections(0).reason(), HasSubstr("location_cells:"));
  // Another location has room of its own, in the same series or new ones.
  ack = engine.ApplyBatch(MakeBatch("store-b", 1, 1, {Wait("c", 1), Wait("a", 1)}));
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->applied(), 2u);
  // A cell the batch itself started, in a series held before or started
  // by the batch, counts once.
  ack = engine.ApplyBatch(MakeBatch("store-c", 1, 1,
                                    {Wait("b", 1), Wait("b", 2), Wait("d", 1), Wait("d", 2),
                                     Wait("a", 1), Wait("b", 3)}));
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->applied(), 5u);
  ASSERT_EQ(ack->rejections_size(), 1);
  EXPECT_EQ(ack->rejections(0).sequence(), 5u);

  Engine restored(options);
  ASSERT_TRUE(restored.LoadState(engine.SaveState()).ok());
  ack = restored.ApplyBatch(MakeBatch("store-a", 1, 5, {Wait("d", 1), Wait("b", 3)}));
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->applied(), 1u) << "store-a still holds its 2 keys after a restore";
  ASSERT_EQ(ack->rejections_size(), 1);
  EXPECT_EQ(ack->rejections(0).sequence(), 5u);
}

TEST(EngineTest, DroppedAndOutOfOrderCountsSurviveARestore) {
  Engine engine(FixedClock());
  ASSERT_TRUE(engine.ApplyBatch(MakeBatch("store-a", 1, 1, Waits("checkout", 2))).ok());
  // 3..9 declared dropped; then a batch leaving a gap.
  v1::Batch skipping = MakeBatch("store-a", 1, 10, Waits("checkout", 1));
  skipping.set_skipped_from(3);
  ASSERT_TRUE(engine.ApplyBatch(skipping).ok());
  absl::StatusOr<v1::Ack> gap = engine.ApplyBatch(MakeBatch("store-a", 1, 20, Waits("x", 1)));
  ASSERT_TRUE(gap.ok());
  ASSERT_EQ(gap->outcome(), v1::Ack::OUT_OF_ORDER);

  Engine restored(FixedClock());
  ASSERT_TRUE(restored.LoadState(engine.SaveState()).ok());
  restored.Recompute();
  EXPECT_EQ(restored.snapshot()->observations_dropped, 7u);
  EXPECT_EQ(restored.snapshot()->batches_out_of_order, 1u);
}

TEST(EngineTest, BadObservationsAreRejectedWithReasonsAndTheRestApplied) {
  Engine engine(FixedClock());
  v1::Observation future = Price("sku-1", 139);
  future.mutable_observed_at()->set_seconds(absl::ToUnixSeconds(kNow + absl::Hours(1)));
  v1::Observation score;
  score.set_key("inspection");
  score.set_score(std::numeric_limits<double>::infinity());
  absl::StatusOr<v1::Ack> ack = engine.ApplyBatch(MakeBatch(
      "store-a", 7, 1,
      {Wait("checkout", std::nan("")), Price("sku-1", 139), future, score, Wait("checkout", 90)}));
  ASSERT_TRUE(ack.ok());
  ASSERT_EQ(ack->rejections_size(), 3);
  EXPECT_EQ(ack->rejections(0).sequence(), 1u);
  EXPECT_THAT(ack->rejections(0).reason(), HasSubstr("wait_seconds"));
  EXPECT_EQ(ack->rejections(1).sequence(), 3u);
  EXPECT_THAT(ack->rejections(1).reason(), HasSubstr("future"));
  EXPECT_EQ(ack->rejections(2).sequence(), 4u);
  EXPECT_THAT(ack->rejections(2).reason(), HasSubstr("score"));
  // Rejected for good still settles the sequence: the watermark covers it.
  EXPECT_EQ(ack->watermark(), 5u);
  engine.Recompute();
  auto snap = engine.snapshot();
  EXPECT_EQ(snap->observations_applied, 2u);
  EXPECT_EQ(snap->observations_rejected, 3u);
  EXPECT_EQ(snap->rejected_by_reason.at("wait_seconds"), 1u);
  EXPECT_EQ(snap->rejected_by_reason.at("observed_at"), 1u);
  EXPECT_EQ(snap->rejected_by_reason.at("score"), 1u);
  // Reasons nothing was rejected for are there at 0, for rates.
  EXPECT_EQ(snap->rejected_by_reason.at("price.kind"), 0u);
}

// Observations of a series the engine already holds are rejected for the
// reasons they would be for a new series.
TEST(EngineTest, ObservationsOfAKnownSeriesAreRejectedForTheSameReasons) {
  auto with_id = [](v1::Observation o, const std::string& id) {
    o.set_id(id);
    return o;
  };
  v1::Observation unset;
  unset.set_key("checkout");
  v1::Observation late = Price("sku-1", 139);
  late.mutable_observed_at()->set_seconds(absl::ToUnixSeconds(kNow - absl::Hours(24 * 8)));
  const struct {
    const char* name;
    v1::Observation obs;
    const char* reason;
  } kCases[] = {
      {"wait NaN", Wait("checkout", std::nan("")), "wait_seconds"},
      {"wait id", with_id(Wait("checkout", 10), "a\x01"), "id:"},
      {"value unset", unset, "value:"},
      {"price negative", Price("sku-1", -1), "price.minor_units"},
      {"price too late", late, "observed_at"},
      {"price kind", Price("sku-1", 139, "EUR", static_cast<v1::PriceKind>(99)), "price.kind"},
      {"price currency", Price("sku-1", 139, "EUE"), "price.currency"},
      {"bad key", Price("sku 1", 139), "key:"},
      {"bad key and id", with_id(Wait("check out", 10), "a\x01"), "key:"},
  };
  for (const auto& c : kCases) {
    for (bool known : {false, true}) {
      Engine engine(FixedClock());
      if (known) {
        ASSERT_TRUE(
            engine
                .ApplyBatch(MakeBatch("store-a", 1, 1, {Wait("checkout", 10), Price("sku-1", 139)}))
                .ok());
      }
      absl::StatusOr<v1::Ack> ack =
          engine.ApplyBatch(MakeBatch("store-a", 1, known ? 3 : 1, {c.obs}));
      ASSERT_TRUE(ack.ok()) << c.name;
      ASSERT_EQ(ack->rejections_size(), 1) << c.name << (known ? " (known series)" : "");
      EXPECT_THAT(ack->rejections(0).reason(), HasSubstr(c.reason))
          << c.name << (known ? " (known series)" : "");
    }
  }
}

// A series restored from a snapshot does not vouch for its key: an
// observation naming an invalid key is refused even when a snapshot holds
// a series of that key.
TEST(EngineTest, ASnapshotsSeriesDoesNotVouchForAnInvalidKey) {
  Engine before(FixedClock());
  ASSERT_TRUE(before.ApplyBatch(MakeBatch("store-a", 1, 1, {Wait("checkout", 10)})).ok());
  state::v1::EngineState state;
  ASSERT_TRUE(state.ParseFromString(before.SaveState()));
  ASSERT_EQ(state.series_size(), 1);
  state.mutable_series(0)->mutable_id()->set_key("check out");
  Engine after(FixedClock());
  ASSERT_TRUE(after.LoadState(state.SerializeAsString()).ok());
  absl::StatusOr<v1::Ack> ack =
      after.ApplyBatch(MakeBatch("store-a", 1, 2, {Wait("check out", 10), Wait("checkout", 20)}));
  ASSERT_TRUE(ack.ok());
  ASSERT_EQ(ack->rejections_size(), 1);
  EXPECT_EQ(ack->rejections(0).sequence(), 2u);
  EXPECT_THAT(ack->rejections(0).reason(), HasSubstr("key:"));
}

// Ingest validates a batch on its own thread (CheckBatch), before the
// batch is logged and outside the engine's lock; the apply then rejects
// exactly what those checks found, for their reasons, as the apply that
// validates for itself (replay) does.
TEST(EngineTest, ChecksMadeBeforeTheApplyRejectWhatTheApplyWould) {
  const v1::Batch batch = MakeBatch(
      "store-a", 1, 1,
      {Price("sku-1", 139), Wait("check out", 10), Price("sku-2", -1), Wait("checkout", 10),
       Wait("checkout", std::nan(""))});
  Engine validating(FixedClock());
  absl::StatusOr<v1::Ack> own = validating.ApplyBatch(batch, kNow);
  ASSERT_TRUE(own.ok());

  Engine checked(FixedClock());
  const Engine::BatchChecks checks = checked.CheckBatch(ViewOf(batch), kNow);
  ASSERT_EQ(checks.failed.size(), 3u);
  EXPECT_EQ(checks.failed[0].first, 1u);
  EXPECT_THAT(checks.failed[0].second.message(), HasSubstr("key:"));
  EXPECT_EQ(checks.failed[1].first, 2u);
  EXPECT_THAT(checks.failed[1].second.message(), HasSubstr("price.minor_units"));
  EXPECT_EQ(checks.failed[2].first, 4u);
  EXPECT_THAT(checks.failed[2].second.message(), HasSubstr("wait_seconds"));
  absl::StatusOr<v1::Ack> ack = checked.ApplyBatch(ViewOf(batch), kNow, /*owner=*/0, checks);
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->DebugString(), own->DebugString());
  EXPECT_EQ(ack->applied(), 2u);
  ASSERT_EQ(ack->rejections_size(), 3);
  EXPECT_EQ(ack->rejections(0).sequence(), 2u);
  EXPECT_EQ(ack->rejections(1).sequence(), 3u);
  EXPECT_EQ(ack->rejections(2).sequence(), 5u);
  checked.Recompute();
  validating.Recompute();
  EXPECT_EQ(checked.snapshot()->rejected_by_reason, validating.snapshot()->rejected_by_reason);
  EXPECT_EQ(checked.snapshot()->cells, 2u);
}

TEST(EngineTest, BatchLevelErrorsLeaveNoTrace) {
  Engine engine(FixedClock());
  static const struct {
    const char* name;
    v1::Batch batch;
    const char* message;
  } kCases[] = {
      {"bad location", MakeBatch("Store A", 1, 1, {Wait("checkout", 1)}), "location"},
      {"sequence 0", MakeBatch("store-a", 1, 0, {Wait("checkout", 1)}), "first_sequence"},
      {"overflow", MakeBatch("store-a", 1, UINT64_MAX, {Wait("checkout", 1), Wait("checkout", 1)}),
       "overflows"},
  };
  for (const auto& c : kCases) {
    absl::StatusOr<v1::Ack> ack = engine.ApplyBatch(c.batch);
    EXPECT_EQ(ack.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(std::string(ack.status().message()), HasSubstr(c.message)) << c.name;
  }
  engine.Recompute();
  EXPECT_EQ(engine.snapshot()->observations_applied, 0u);
  EXPECT_EQ(engine.snapshot()->locations, 0u);
}

TEST(EngineTest, TheLatestEventTimeWinsNotTheLatestArrival) {
  Engine engine(FixedClock());
  ASSERT_TRUE(
      engine
          .ApplyBatch(MakeBatch("store-a", 1, 1,
                                {Price("sku-1", 149, "EUR", v1::SHELF, kNow - absl::Hours(1)),
                                 Price("sku-1", 139, "EUR", v1::SHELF, kNow - absl::Hours(3))}))
          .ok());
  v1::SeriesId id;
  id.set_family(v1::FAMILY_PRICE);
  id.set_key("sku-1");
  id.set_currency("EUR");
  absl::StatusOr<v1::KeyDetailResponse> detail = engine.KeyDetail(id);
  ASSERT_TRUE(detail.ok()) << detail.status();
  ASSERT_EQ(detail->values_size(), 1);
  EXPECT_DOUBLE_EQ(detail->values(0).value(), 149);
  EXPECT_EQ(detail->values(0).observed_at().seconds(), absl::ToUnixSeconds(kNow - absl::Hours(1)));
}

// The published statistics keep each price level's value and how many
// locations hold it (not its member list): the query and /metrics read them.
TEST(EngineTest, PublishedPriceLevelsCountTheirLocations) {
  Engine engine(FixedClock());
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(engine
                    .ApplyBatch(MakeBatch(absl::StrCat("store-", i), 1, 1,
                                          {Price("sku-1", i < 7 ? 100 : 130)}))
                    .ok());
  }
  engine.Recompute();
  const SeriesStats* s = Find(*engine.snapshot(), v1::FAMILY_PRICE, "sku-1", "EUR", v1::SHELF);
  ASSERT_NE(s, nullptr);
  EXPECT_DOUBLE_EQ(s->main_level.value, 100);
  EXPECT_EQ(s->main_level.locations, 7u);
  ASSERT_EQ(s->other_levels.size(), 1u);
  EXPECT_DOUBLE_EQ(s->other_levels[0].value, 130);
  EXPECT_EQ(s->other_levels[0].locations, 3u);
  v1::SeriesId id;
  id.set_family(v1::FAMILY_PRICE);
  id.set_key("sku-1");
  id.set_currency("EUR");
  absl::StatusOr<v1::KeyDetailResponse> detail = engine.KeyDetail(id);
  ASSERT_TRUE(detail.ok()) << detail.status();
  ASSERT_EQ(detail->stats().levels_size(), 2);
  EXPECT_DOUBLE_EQ(detail->stats().levels(0).value(), 100);
  EXPECT_EQ(detail->stats().levels(0).locations(), 7u);
  EXPECT_DOUBLE_EQ(detail->stats().levels(1).value(), 130);
  EXPECT_EQ(detail->stats().levels(1).locations(), 3u);
}

TEST(EngineTest, KindsAndCurrenciesAreSeparateSeries) {
  Engine engine(FixedClock());
  ASSERT_TRUE(engine
                  .ApplyBatch(MakeBatch("store-a", 1, 1,
                                        {Price("sku-1", 139), Price("sku-1", 129, "EUR", v1::POS),
                                         Price("sku-1", 150, "USD"),
                                         Price("sku-1", 139, "EUR", v1::PRICE_KIND_UNSPECIFIED)}))
                  .ok());
  engine.Recompute();
  auto snap = engine.snapshot();
  EXPECT_EQ(snap->series.size(), 3u);
  EXPECT_EQ(snap->cells, 3u);  // Unspecified kind is a shelf price.
  const SeriesStats* pos = Find(*snap, v1::FAMILY_PRICE, "sku-1", "EUR", v1::POS);
  ASSERT_NE(pos, nullptr);
  EXPECT_DOUBLE_EQ(pos->summary.median, 129);
}

TEST(EngineTest, AFailedCriticalCheckFailsTheLocationOutright) {
  Engine engine(FixedClock());
  ASSERT_TRUE(engine
                  .ApplyBatch(MakeBatch("store-a", 1, 1,
                                        {Check("fridge-temp", true), Check("fridge-temp", true),
                                         Check("fridge-temp", false, /*critical=*/true)}))
                  .ok());
  ASSERT_TRUE(engine
                  .ApplyBatch(MakeBatch("store-b", 1, 1,
                                        {Check("fridge-temp", true), Check("fridge-temp", false)}))
                  .ok());
  v1::SeriesId id;
  id.set_family(v1::FAMILY_COMPLIANCE);
  id.set_key("fridge-temp");
  absl::StatusOr<v1::KeyDetailResponse> detail = engine.KeyDetail(id);
  ASSERT_TRUE(detail.ok());
  ASSERT_EQ(detail->values_size(), 2);
  EXPECT_EQ(detail->values(0).location(), "store-a");
  EXPECT_DOUBLE_EQ(detail->values(0).value(), 0);
  EXPECT_DOUBLE_EQ(detail->values(1).value(), 0.5);
}

TEST(EngineTest, StatisticsArePublishedOnlyByRecompute) {
  Engine engine(FixedClock());
  const int prices[] = {139, 139, 139, 139, 139, 159};
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(
        engine
            .ApplyBatch(MakeBatch("store-" + std::to_string(i), 1, 1, {Price("sku-1", prices[i])}))
            .ok());
  }
  // Ingest alone publishes nothing: the statistics come from the tick.
  EXPECT_TRUE(engine.snapshot()->series.empty());
  engine.Recompute();
  auto snap = engine.snapshot();
  ASSERT_EQ(snap->series.size(), 1u);
  EXPECT_EQ(snap->locations, 6u);
  const SeriesStats& s = *snap->series[0];
  EXPECT_EQ(s.summary.n, 6u);
  EXPECT_DOUBLE_EQ(s.summary.median, 139);
  ASSERT_EQ(s.outlier_locations.size(), 1u);
  EXPECT_EQ(s.outlier_locations[0], "store-5");
  EXPECT_EQ(s.outliers[0].direction, v1::ABOVE);

  // A later price change moves the published figures only at the next recompute.
  ASSERT_TRUE(engine.ApplyBatch(MakeBatch("store-5", 1, 2, {Price("sku-1", 139)})).ok());
  EXPECT_EQ(engine.snapshot()->series[0]->outliers.size(), 1u);
  engine.Recompute();
  EXPECT_TRUE(engine.snapshot()->series[0]->outliers.empty());
}

TEST(EngineTest, KeyDetailNamesWhatIsMissing) {
  Engine engine(FixedClock());
  v1::SeriesId id;
  id.set_family(v1::FAMILY_WAIT);
  id.set_key("drive-thru");
  EXPECT_EQ(engine.KeyDetail(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(engine.KeyDetail(id).status().message()), HasSubstr("drive-thru"));
  id.set_family(v1::FAMILY_PRICE);
  EXPECT_EQ(engine.KeyDetail(id).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EngineTest, HeartbeatsAreKeptPerLocation) {
  Engine engine(FixedClock());
  v1::Heartbeat hb;
  hb.set_location("store-a");
  hb.set_spool_depth(17);
  hb.set_oldest_unacknowledged_seconds(2.5);
  hb.set_version("0.1.0");
  ASSERT_TRUE(engine.RecordHeartbeat(hb).ok());
  hb.set_location("BAD");
  EXPECT_FALSE(engine.RecordHeartbeat(hb).ok());
  engine.Recompute();
  auto snap = engine.snapshot();
  ASSERT_EQ(snap->location_states.size(), 1u);
  EXPECT_EQ(snap->location_states[0].health.spool_depth, 17u);
  EXPECT_EQ(snap->location_states[0].health.version, "0.1.0");
}

}  // namespace
}  // namespace constance::collector
