// The price-drop feed's store: a drop recorded once however often an
// evaluation publishes it, its rollout flag kept current, read back oldest
// first page by page, deleted past the retention, kept in the file across
// a reopen, and a file of the format before migrated.
#include "collector/price_drops.h"

#include <sqlite3.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace constance::collector {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

PriceDrop Drop(const std::string& location, const std::string& key, int64_t from, int64_t to,
               absl::Time at, bool rollout = false, v1::PriceKind kind = v1::SHELF,
               uint64_t revision = 1) {
  PriceDrop d;
  d.location = location;
  d.series.family = v1::FAMILY_PRICE;
  d.series.key = key;
  d.series.currency = "EUR";
  d.series.kind = kind;
  d.from = from;
  d.to = to;
  d.at = at;
  d.rollout = rollout;
  d.revision = revision;
  return d;
}

// Drops as one engine's evaluations publish them: `source` numbers the
// engine, `revision` the evaluation.
PriceDropList List(std::vector<PriceDrop> drops, uint64_t revision, uint64_t source = 1) {
  return PriceDropList(std::move(drops), source, revision);
}

PriceDrop At(PriceDrop d, uint64_t revision, bool rollout) {
  d.revision = revision;
  d.rollout = rollout;
  return d;
}

std::vector<v1::PriceDrop> ReadAll(const PriceDropFeed& feed,
                                   absl::Time since = absl::InfinitePast(),
                                   const std::string& location = "") {
  std::vector<v1::PriceDrop> out;
  PriceDropFeed::Cursor cursor;
  for (;;) {
    std::vector<v1::PriceDrop> page = feed.Read(since, location, 1, &cursor);
    if (page.empty()) return out;
    out.insert(out.end(), page.begin(), page.end());
  }
}

class PriceDropFeedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/price_drops_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { (void)std::system(("rm -rf " + dir_).c_str()); }
  std::string dir_;
};

TEST_F(PriceDropFeedTest, RecordsEachDropOnceKeepsItsScopeCurrentAndReadsOldestFirst) {
  auto feed = PriceDropFeed::Open("", {});
  ASSERT_TRUE(feed.ok()) << feed.status();
  const std::vector<PriceDrop> first = {
      Drop("store-2", "coffee", 449, 399, kT0 + absl::Minutes(2)),
      Drop("store-1", "coffee", 449, 399, kT0 + absl::Minutes(1)),
      Drop("store-1", "tea", 300, 250, kT0 + absl::Minutes(3), false, v1::PROMO)};
  ASSERT_TRUE((*feed)->Record(List(first, 1), kT0 + absl::Minutes(4)).ok());
  // The next evaluation publishes the same drops, coffee now a rollout.
  std::vector<PriceDrop> again = first;
  again[0] = At(again[0], 2, true);
  again[1] = At(again[1], 2, true);
  ASSERT_TRUE((*feed)->Record(List(again, 2), kT0 + absl::Minutes(5)).ok());

  std::vector<v1::PriceDrop> all = ReadAll(**feed);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].location(), "store-1");
  EXPECT_EQ(all[0].series().key(), "coffee");
  EXPECT_EQ(all[0].previous_minor_units(), 449);
  EXPECT_EQ(all[0].new_minor_units(), 399);
  EXPECT_TRUE(all[0].rollout());
  EXPECT_FALSE(all[0].promo());
  // Recorded when first seen, not when updated.
  EXPECT_EQ(all[0].recorded_at().seconds(), absl::ToUnixSeconds(kT0 + absl::Minutes(4)));
  EXPECT_EQ(all[1].location(), "store-2");
  EXPECT_EQ(all[2].series().key(), "tea");
  EXPECT_TRUE(all[2].promo());
  EXPECT_FALSE(all[2].rollout());

  EXPECT_EQ(ReadAll(**feed, kT0 + absl::Minutes(2)).size(), 2u);
  std::vector<v1::PriceDrop> one = ReadAll(**feed, absl::InfinitePast(), "store-2");
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].location(), "store-2");
}

TEST_F(PriceDropFeedTest, KeepsDropsInItsFileAndDeletesThemPastTheRetention) {
  PriceDropFeed::Options options;
  options.retention = absl::Hours(24);
  {
    auto feed = PriceDropFeed::Open(dir_ + "/price_drops.db", options);
    ASSERT_TRUE(feed.ok()) << feed.status();
    ASSERT_TRUE((*feed)
                    ->Record(List({Drop("store-1", "coffee", 449, 399, kT0),
                                   Drop("store-1", "milk", 129, 119, kT0 + absl::Hours(12))},
                                  1),
                             kT0 + absl::Hours(12))
                    .ok());
  }
  auto feed = PriceDropFeed::Open(dir_ + "/price_drops.db", options);
  ASSERT_TRUE(feed.ok()) << feed.status();
  EXPECT_EQ(ReadAll(**feed).size(), 2u);
  ASSERT_TRUE((*feed)->Record(PriceDropList(), kT0 + absl::Hours(25)).ok());
  std::vector<v1::PriceDrop> left = ReadAll(**feed);
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].series().key(), "milk");
}

// Of a list from the source the last Record had, only the drops with a
// revision above that list's are written: the rest are as it held them.
// A list from another source (a restarted collector) is written whole.
TEST_F(PriceDropFeedTest, WritesOnlyWhatChangedSinceTheListItLastRecorded) {
  auto feed = PriceDropFeed::Open("", {});
  ASSERT_TRUE(feed.ok()) << feed.status();
  auto rollout_of = [&](const std::string& location) {
    for (const v1::PriceDrop& d : ReadAll(**feed)) {
      if (d.location() == location) return d.rollout() ? 1 : 0;
    }
    return -1;  // Not held.
  };
  const PriceDrop a = Drop("store-1", "coffee", 449, 399, kT0);
  const PriceDrop b = Drop("store-2", "coffee", 449, 399, kT0);
  ASSERT_TRUE((*feed)->Record(List({a, b}, 3), kT0 + absl::Hours(1)).ok());
  EXPECT_EQ(rollout_of("store-1"), 0);
  // Changed at revision 4: written.
  ASSERT_TRUE((*feed)->Record(List({At(a, 4, true), b}, 5), kT0 + absl::Hours(2)).ok());
  EXPECT_EQ(rollout_of("store-1"), 1);
  // A revision the last list covered is not read again (a list never
  // holds a drop so, which is what shows it here).
  ASSERT_TRUE((*feed)->Record(List({At(a, 5, false), b}, 6), kT0 + absl::Hours(3)).ok());
  EXPECT_EQ(rollout_of("store-1"), 1);
  ASSERT_TRUE((*feed)->Record(List({At(a, 7, false), b}, 7), kT0 + absl::Hours(4)).ok());
  EXPECT_EQ(rollout_of("store-1"), 0);
  // Another source: everything, whatever its revisions.
  ASSERT_TRUE(
      (*feed)->Record(List({At(a, 1, true), b}, 1, /*source=*/2), kT0 + absl::Hours(5)).ok());
  EXPECT_EQ(rollout_of("store-1"), 1);
  EXPECT_EQ(rollout_of("store-2"), 0);
  EXPECT_EQ(ReadAll(**feed).size(), 2u);
}

// A Record that fails is undone whole, and what it meant to write is
// written by the next one: the failure does not count as recorded.
TEST_F(PriceDropFeedTest, AFailedRecordIsWrittenWholeByTheNext) {
  const std::string path = dir_ + "/price_drops.db";
  auto feed = PriceDropFeed::Open(path, {});
  ASSERT_TRUE(feed.ok()) << feed.status();
  const PriceDrop a = Drop("store-1", "coffee", 449, 399, kT0);
  const PriceDrop a_rollout = At(a, 2, true);
  const PriceDrop b = Drop("store-2", "coffee", 449, 399, kT0);
  ASSERT_TRUE((*feed)->Record(List({a, b}, 1), kT0).ok());
  sqlite3* other = nullptr;  // Another writer holding the file.
  ASSERT_EQ(sqlite3_open(path.c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK);
  const absl::Status failed = (*feed)->Record(List({a_rollout, b}, 2), kT0);
  sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(other);
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(std::string(failed.message()).find(path), std::string::npos) << failed;
  std::vector<v1::PriceDrop> held = ReadAll(**feed);
  ASSERT_EQ(held.size(), 2u);
  EXPECT_FALSE(held[0].rollout());
  // The next evaluation holds the drop as revision 2 made it.
  ASSERT_TRUE((*feed)->Record(List({a_rollout, b}, 3), kT0).ok());
  held = ReadAll(**feed);
  ASSERT_EQ(held.size(), 2u);
  EXPECT_EQ(held[0].location(), "store-1");
  EXPECT_TRUE(held[0].rollout());
  EXPECT_FALSE(held[1].rollout());
}
// One line of expected_drops.txt (make_golden_drops.cc).
std::string Line(const v1::PriceDrop& d) {
  return absl::StrCat(d.location(), " ", d.series().key(), " ", d.series().currency(), " ",
                      d.series().kind(), " ", d.previous_minor_units(), " ", d.new_minor_units(),
                      " ", d.rollout() ? 1 : 0, " ",
                      d.at().seconds() * 1'000'000'000 + d.at().nanos(), " ",
                      d.recorded_at().seconds() * 1'000'000'000 + d.recorded_at().nanos());
}

int64_t UserVersion(const std::string& path) {
  sqlite3* db = nullptr;
  int64_t version = -1;
  sqlite3_stmt* s = nullptr;
  if (sqlite3_open(path.c_str(), &db) == SQLITE_OK &&
      sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, nullptr) == SQLITE_OK &&
      sqlite3_step(s) == SQLITE_ROW) {
    version = sqlite3_column_int64(s, 0);
  }
  sqlite3_finalize(s);
  sqlite3_close(db);
  return version;
}

// The first column of the table's unique index ("" when none).
std::string UniqueIndexFirstColumn(const std::string& path) {
  sqlite3* db = nullptr;
  std::string column;
  sqlite3_stmt* s = nullptr;
  if (sqlite3_open(path.c_str(), &db) == SQLITE_OK &&
      sqlite3_prepare_v2(db,
                         "SELECT ii.name FROM pragma_index_list('price_drops') AS il, "
                         "pragma_index_info(il.name) AS ii WHERE il.\"unique\" AND ii.seqno = 0",
                         -1, &s, nullptr) == SQLITE_OK &&
      sqlite3_step(s) == SQLITE_ROW) {
    column = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
  }
  sqlite3_finalize(s);
  sqlite3_close(db);
  return column;
}

// A feed written before the uniqueness was indexed by event time
// (tests/data/state/drops-format-0, written by the release before) is
// migrated on open: every drop read back as that release read it, in the
// same order, the format recorded, and a drop it holds not added again.
TEST_F(PriceDropFeedTest, ReadsAndExtendsAFeedOfFormat0) {
  const std::string golden = std::string(CONSTANCE_SOURCE_DIR) + "/tests/data/state/drops-format-0";
  const std::string path = dir_ + "/price_drops.db";
  ASSERT_EQ(std::system(("cp " + golden + "/price_drops.db " + path).c_str()), 0);
  ASSERT_EQ(UserVersion(path), 0);
  ASSERT_EQ(UniqueIndexFirstColumn(path), "location");
  std::vector<std::string> expected;
  std::ifstream in(golden + "/expected_drops.txt");
  for (std::string line; std::getline(in, line);) expected.push_back(line);
  ASSERT_EQ(expected.size(), 6u);

  auto feed = PriceDropFeed::Open(path, {.retention = absl::Hours(24 * 3650)});
  ASSERT_TRUE(feed.ok()) << feed.status();
  std::vector<std::string> read;
  for (const v1::PriceDrop& d : ReadAll(**feed)) read.push_back(Line(d));
  EXPECT_EQ(read, expected);
  EXPECT_EQ(UserVersion(path), 1);
  EXPECT_EQ(UniqueIndexFirstColumn(path), "at_ns");

  // store-1's coffee drop again (as the golden feed holds it) and a new one.
  const absl::Time t = absl::FromUnixSeconds(1'793'000'000);
  const absl::Time now = t + absl::Hours(3);
  PriceDrop again = Drop("store-1", "coffee", 449, 399, t + absl::Minutes(1), true);
  PriceDrop added = Drop("store-2", "milk", 129, 119, t + absl::Hours(2));
  ASSERT_TRUE((*feed)->Record(List({again, added}, 1, 9), now).ok());
  read.clear();
  for (const v1::PriceDrop& d : ReadAll(**feed)) read.push_back(Line(d));
  ASSERT_EQ(read.size(), 7u);
  EXPECT_EQ(std::vector<std::string>(read.begin(), read.begin() + 6), expected);
  EXPECT_EQ(read[6], absl::StrCat("store-2 milk EUR ", v1::SHELF, " 129 119 0 ",
                                  absl::ToUnixNanos(added.at), " ", absl::ToUnixNanos(now)));
}

// A feed written by a newer collector is refused, untouched.
TEST_F(PriceDropFeedTest, RefusesAFeedOfANewerFormat) {
  const std::string path = dir_ + "/price_drops.db";
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version=2", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  auto feed = PriceDropFeed::Open(path, {});
  ASSERT_FALSE(feed.ok());
  EXPECT_EQ(feed.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(feed.status().message()).find("format 2"), std::string::npos)
      << feed.status();
  EXPECT_EQ(UserVersion(path), 2);
}

TEST_F(PriceDropFeedTest, AnUnwritableDirectoryIsAnErrorNamingTheFile) {
  auto feed = PriceDropFeed::Open(dir_ + "/missing/price_drops.db", {});
  ASSERT_FALSE(feed.ok());
  EXPECT_NE(std::string(feed.status().message()).find("missing/price_drops.db"), std::string::npos)
      << feed.status();
}

}  // namespace
}  // namespace constance::collector
