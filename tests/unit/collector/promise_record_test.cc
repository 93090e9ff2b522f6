// The promise record's store: evaluations counted per UTC day, shares over
// 7, 30 and 90 days, the latest wording of a promise, days past the
// retention deleted, and the counts kept in the file across a reopen.
#include "collector/promise_record.h"

#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace constance::collector {
namespace {

const absl::Time kDay0 = absl::FromUnixSeconds(1'800'000'000 / 86400 * 86400);

PromiseStanding Wait(const std::string& location, bool kept,
                     const std::string& promise = "90% served within 150 s") {
  PromiseStanding p;
  p.location = location;
  p.series.family = v1::FAMILY_WAIT;
  p.series.key = "checkout";
  p.promise = promise;
  p.kept = kept;
  return p;
}

class PromiseRecordTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/promise_record_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { (void)std::system(("rm -rf " + dir_).c_str()); }
  std::string dir_;
};

TEST_F(PromiseRecordTest, SharesKeptOverSevenThirtyAndNinetyDays) {
  auto store = PromiseRecordStore::Open(dir_ + "/promise_record.db", {});
  ASSERT_TRUE(store.ok()) << store.status();
  // 60 days ago: 4 evaluations, all broken; 20 days ago: 2 kept of 4;
  // today: 3 kept of 3, under a new wording. store-2 only broke it.
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE((*store)->Record({Wait("store-1", false)}, kDay0 - absl::Hours(24 * 60)).ok());
    ASSERT_TRUE((*store)->Record({Wait("store-1", i % 2 == 0), Wait("store-2", false)},
                                 kDay0 - absl::Hours(24 * 20))
                    .ok());
  }
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(
        (*store)->Record({Wait("store-1", true, "80% served within 120 s")}, kDay0).ok());
  }
  store->reset();
  store = PromiseRecordStore::Open(dir_ + "/promise_record.db", {});
  ASSERT_TRUE(store.ok()) << store.status();

  const absl::Time now = kDay0 + absl::Hours(12);
  std::vector<v1::PromiseRecord> one = (*store)->Read("store-1", now);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].series().family(), v1::FAMILY_WAIT);
  EXPECT_EQ(one[0].series().key(), "checkout");
  EXPECT_EQ(one[0].promise(), "80% served within 120 s");
  EXPECT_EQ(one[0].evaluations_7d(), 3u);
  EXPECT_DOUBLE_EQ(one[0].kept_7d(), 1.0);
  EXPECT_EQ(one[0].evaluations_30d(), 7u);
  EXPECT_DOUBLE_EQ(one[0].kept_30d(), 5.0 / 7);
  EXPECT_EQ(one[0].evaluations_90d(), 11u);
  EXPECT_DOUBLE_EQ(one[0].kept_90d(), 5.0 / 11);

  std::vector<v1::PromiseRecord> two = (*store)->Read("store-2", now);
  ASSERT_EQ(two.size(), 1u);
  EXPECT_EQ(two[0].evaluations_7d(), 0u);
  EXPECT_DOUBLE_EQ(two[0].kept_30d(), 0);
  EXPECT_EQ(two[0].evaluations_30d(), 4u);
  EXPECT_TRUE((*store)->Read("store-3", now).empty());

  // A Record 35 days on deletes the day more than 91 days before it (the
  // read keeps today's window, so only the deletion can drop it).
  ASSERT_TRUE((*store)->Record({}, kDay0 + absl::Hours(24 * 35)).ok());
  one = (*store)->Read("store-1", now);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].evaluations_90d(), 7u);
}

}  // namespace
}  // namespace constance::collector
