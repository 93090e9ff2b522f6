#include "collector/history.h"

#include <unistd.h>

#include <cstdlib>
#include <string>

#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"

namespace constance::collector {
namespace {

using google::protobuf::util::TimeUtil;

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

google::protobuf::Timestamp At(absl::Time t) {
  return TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

v1::Finding Outlier(const std::string& location, v1::Severity severity, double value) {
  v1::Finding f;
  f.set_id("loc|" + location + "|coffee");
  f.set_kind(v1::OUTLIER);
  f.set_severity(severity);
  f.set_location(location);
  f.mutable_series()->set_family(v1::FAMILY_PRICE);
  f.mutable_series()->set_key("coffee");
  *f.mutable_started_at() = At(kT0);
  v1::Reason* r = f.add_reasons();
  r->set_value(value);
  r->set_expected(449);
  r->set_detail("above its peers");
  return f;
}

class Stores {
 public:
  Stores() {
    char tmpl[] = "/tmp/history-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  ~Stores() { (void)std::system(("rm -rf " + dir_).c_str()); }
  std::string dir_;
};

class FindingHistoryModes : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (GetParam()) {
      auto h = FindingHistory::Open(stores_.dir_ + "/history.db", FindingHistory::Options{});
      ASSERT_TRUE(h.ok()) << h.status();
      owned_ = *std::move(h);
    } else {
      owned_ = std::make_unique<FindingHistory>(FindingHistory::Options{});
    }
  }
  Stores stores_;
  std::unique_ptr<FindingHistory> owned_;
};

INSTANTIATE_TEST_SUITE_P(MemoryAndDurable, FindingHistoryModes, ::testing::Bool());

TEST_P(FindingHistoryModes, AnEpisodeRecordsOpenChangesAndClose) {
  FindingHistory& history = *owned_;
  SilenceStore silences;
  ASSERT_TRUE(history.Record({Outlier("s1", v1::HIGH, 519)}, {}, &silences, kT0).ok());
  ASSERT_TRUE(
      history.Record({Outlier("s1", v1::CRITICAL, 599)}, {}, &silences, kT0 + absl::Minutes(1))
          .ok());
  v1::AddSilenceRequest r;
  r.mutable_match()->set_location("s1");
  *r.mutable_ends_at() = At(kT0 + absl::Hours(1));
  r.set_owner("anna");
  r.set_comment("test");
  ASSERT_TRUE(silences.Add(r, "ops", kT0 + absl::Minutes(2)).ok());
  ASSERT_TRUE(
      history.Record({Outlier("s1", v1::CRITICAL, 599)}, {}, &silences, kT0 + absl::Minutes(2))
          .ok());
  ASSERT_TRUE(history.Record({}, {}, &silences, kT0 + absl::Minutes(5)).ok());

  v1::HistoryResponse all = history.Query(v1::HistoryRequest());
  ASSERT_EQ(all.episodes_size(), 1);
  const v1::Episode& e = all.episodes(0);
  EXPECT_EQ(e.location(), "s1");
  EXPECT_EQ(e.severity_at_open(), v1::HIGH);
  EXPECT_EQ(e.severity_max(), v1::CRITICAL);
  EXPECT_EQ(e.value_at_open(), 519);
  EXPECT_EQ(e.value_at_close(), 599);
  EXPECT_EQ(TimeUtil::TimestampToSeconds(e.closed_at()),
            absl::ToUnixSeconds(kT0 + absl::Minutes(5)));
  ASSERT_EQ(e.events_size(), 2);
  EXPECT_EQ(e.events(0).what(), "severity high -> critical");
  EXPECT_EQ(e.events(1).what(), "silenced by 1");
}

TEST_P(FindingHistoryModes, WritesOnlyEpisodesThatChanged) {
  FindingHistory& history = *owned_;
  ASSERT_TRUE(
      history.Record({Outlier("s1", v1::HIGH, 519), Outlier("s2", v1::HIGH, 519)}, {}, nullptr, kT0)
          .ok());
  EXPECT_EQ(history.writes(), 2u);  // Both opened.
  for (int i = 1; i <= 5; ++i) {
    ASSERT_TRUE(history
                    .Record({Outlier("s1", v1::HIGH, 519), Outlier("s2", v1::HIGH, 519)}, {},
                            nullptr, kT0 + absl::Seconds(i))
                    .ok());
  }
  EXPECT_EQ(history.writes(), 2u);  // Nothing changed: nothing written.
  ASSERT_TRUE(history
                  .Record({Outlier("s1", v1::HIGH, 519), Outlier("s2", v1::CRITICAL, 599)}, {},
                          {"", "4"}, kT0 + absl::Seconds(6))
                  .ok());
  EXPECT_EQ(history.writes(), 3u);  // Only s2 changed.
  ASSERT_TRUE(
      history.Record({Outlier("s2", v1::CRITICAL, 599)}, {}, {"4"}, kT0 + absl::Seconds(7)).ok());
  EXPECT_EQ(history.writes(), 4u);  // s1 closed.
  v1::HistoryRequest r;
  r.set_location("s2");
  v1::HistoryResponse s2 = history.Query(r);
  ASSERT_EQ(s2.episodes_size(), 1);
  ASSERT_EQ(s2.episodes(0).events_size(), 2);
  EXPECT_EQ(s2.episodes(0).events(1).what(), "silenced by 4");
}

TEST(FindingHistoryTest, QueriesFilterAndLimit) {
  FindingHistory history(FindingHistory::Options{});
  ASSERT_TRUE(history
                  .Record({Outlier("s1", v1::HIGH, 519), Outlier("s2", v1::HIGH, 519),
                           Outlier("s3", v1::HIGH, 519)},
                          {}, nullptr, kT0)
                  .ok());
  v1::HistoryRequest by_location;
  by_location.set_location("s2");
  EXPECT_EQ(history.Query(by_location).episodes_size(), 1);
  v1::HistoryRequest other_kind;
  other_kind.set_kind(v1::SILENT);
  EXPECT_EQ(history.Query(other_kind).episodes_size(), 0);
  v1::HistoryRequest limited;
  limited.set_limit(2);
  v1::HistoryResponse two = history.Query(limited);
  EXPECT_EQ(two.episodes_size(), 2);
  EXPECT_EQ(two.more(), 1u);
}

TEST(FindingHistoryTest, ClosedEpisodesPastTheRetentionAreDropped) {
  FindingHistory::Options options;
  options.retention = absl::Hours(24);
  FindingHistory history(options);
  ASSERT_TRUE(history.Record({Outlier("s1", v1::HIGH, 519)}, {}, nullptr, kT0).ok());
  ASSERT_TRUE(history.Record({}, {}, nullptr, kT0 + absl::Hours(1)).ok());
  EXPECT_EQ(history.Query(v1::HistoryRequest()).episodes_size(), 1);
  ASSERT_TRUE(history.Record({}, {}, nullptr, kT0 + absl::Hours(26)).ok());
  EXPECT_EQ(history.Query(v1::HistoryRequest()).episodes_size(), 0);
}

TEST(FindingHistoryTest, AnOpenEpisodeContinuesAcrossReopening) {
  char tmpl[] = "/tmp/history-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string path = std::string(tmpl) + "/history.db";
  {
    auto history = FindingHistory::Open(path, FindingHistory::Options{});
    ASSERT_TRUE(history.ok()) << history.status();
    ASSERT_TRUE((*history)->Record({Outlier("s1", v1::HIGH, 519)}, {}, nullptr, kT0).ok());
  }
  auto history = FindingHistory::Open(path, FindingHistory::Options{});
  ASSERT_TRUE(history.ok()) << history.status();
  ASSERT_TRUE((*history)->Record({}, {}, nullptr, kT0 + absl::Minutes(3)).ok());
  v1::HistoryResponse all = (*history)->Query(v1::HistoryRequest());
  ASSERT_EQ(all.episodes_size(), 1);  // The same episode, now closed; not a second one.
  EXPECT_TRUE(all.episodes(0).has_closed_at());
  (void)std::system((std::string("rm -rf ") + tmpl).c_str());
}

v1::Episode EpisodeOf(v1::FindingKind kind, absl::Time opened, absl::Time closed) {
  v1::Episode e;
  e.set_kind(kind);
  e.set_location("s1");
  *e.mutable_opened_at() = At(opened);
  if (closed != absl::InfiniteFuture()) *e.mutable_closed_at() = At(closed);
  return e;
}

TEST(SummarizeEpisodesTest, CountsTheWindowOverlapsOnceAndDaysByUtcDate) {
  const absl::Time day = absl::FromCivil(absl::CivilDay(2026, 11, 1), absl::UTCTimeZone());
  const absl::Time now = day + absl::Hours(49);  // Day 3, 01:00.
  const std::vector<v1::Episode> episodes = {
      // Two overlapping outliers: 3 hours open, not 4.
      EpisodeOf(v1::OUTLIER, day + absl::Hours(10), day + absl::Hours(12)),
      EpisodeOf(v1::OUTLIER, day + absl::Hours(11), day + absl::Hours(13)),
      // Open since day 2, 23:00: two calendar days.
      EpisodeOf(v1::SILENT, day + absl::Hours(47), absl::InfiniteFuture()),
      // Closed before the window.
      EpisodeOf(v1::SPLIT, day - absl::Hours(24 * 40), day - absl::Hours(24 * 39)),
  };
  v1::FindingRecord r = SummarizeEpisodes(episodes, now, 30);
  EXPECT_EQ(r.days(), 30u);
  EXPECT_EQ(r.opened(), 3u);
  EXPECT_EQ(r.closed(), 2u);
  EXPECT_DOUBLE_EQ(r.mean_seconds_to_close(), 7200);
  EXPECT_DOUBLE_EQ(r.max_seconds_to_close(), 7200);
  ASSERT_EQ(r.kinds_size(), 2);  // The split is outside the window.
  EXPECT_EQ(r.kinds(0).kind(), v1::OUTLIER);
  EXPECT_DOUBLE_EQ(r.kinds(0).seconds_open(), 3 * 3600);
  EXPECT_EQ(r.kinds(0).days_with_open(), 1u);
  EXPECT_EQ(r.kinds(0).opened(), 2u);
  EXPECT_EQ(r.kinds(0).closed(), 2u);
  EXPECT_EQ(r.kinds(1).kind(), v1::SILENT);
  EXPECT_DOUBLE_EQ(r.kinds(1).seconds_open(), 2 * 3600);
  EXPECT_EQ(r.kinds(1).days_with_open(), 2u);
  EXPECT_EQ(r.kinds(1).closed(), 0u);
  // An episode opened before the window counts only its part inside it.
  v1::FindingRecord last_hour = SummarizeEpisodes(episodes, now, 1);
  ASSERT_EQ(last_hour.kinds_size(), 1);
  EXPECT_EQ(last_hour.opened(), 1u);
  EXPECT_DOUBLE_EQ(last_hour.kinds(0).seconds_open(), 2 * 3600);
}

}  // namespace
}  // namespace constance::collector
