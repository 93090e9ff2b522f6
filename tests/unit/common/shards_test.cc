#include "collector/cli/shards.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "collector/cli/report.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace constance::cli {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The sums one shard reports for `values` about `reference`.
v1::MergeableSums Sums(const std::vector<double>& values, double reference) {
  v1::MergeableSums s;
  s.mutable_series()->set_family(v1::FAMILY_PRICE);
  s.mutable_series()->set_key("coffee");
  s.set_n(values.size());
  s.set_reference(reference);
  for (double v : values) {
    s.set_sum_deviations(s.sum_deviations() + (v - reference));
    s.set_sum_squared_deviations(s.sum_squared_deviations() + (v - reference) * (v - reference));
  }
  return s;
}

TEST(ShardsTest, ChainWideFiguresAreExactNotAnAverageOfAverages) {
  // Shard sizes differ, so the mean of the shards' means (479.5) is wrong.
  v1::ChainSummaryResponse a, b;
  a.set_locations(3);
  a.set_observations_applied(3);
  *a.add_mergeable() = Sums({449, 449, 510}, 449);
  b.set_locations(1);
  b.set_observations_applied(1);
  *b.add_mergeable() = Sums({449}, 449);
  std::vector<std::string> disagreements;
  v1::ChainSummaryResponse merged = MergeChainSummaries({a, b}, &disagreements);
  EXPECT_TRUE(disagreements.empty());
  EXPECT_EQ(merged.locations(), 4u);
  EXPECT_EQ(merged.observations_applied(), 4u);
  ASSERT_EQ(merged.mergeable_size(), 1);
  const ChainWide c = FromSums(merged.mergeable(0));
  const double mean = (449.0 * 3 + 510) / 4;
  const double var = (3 * (449 - mean) * (449 - mean) + (510 - mean) * (510 - mean)) / 4;
  EXPECT_EQ(c.n, 4u);
  EXPECT_DOUBLE_EQ(c.mean, mean);
  EXPECT_NEAR(c.stddev, std::sqrt(var), 1e-9);
  EXPECT_THAT(RenderChainWide(merged), HasSubstr("price coffee"));
}

TEST(ShardsTest, ShardsWithDifferentReferencesGiveNoChainFigure) {
  v1::ChainSummaryResponse a, b;
  *a.add_mergeable() = Sums({449}, 449);
  *b.add_mergeable() = Sums({449}, 400);
  std::vector<std::string> disagreements;
  v1::ChainSummaryResponse merged = MergeChainSummaries({a, b}, &disagreements);
  EXPECT_EQ(merged.mergeable_size(), 0);
  ASSERT_EQ(disagreements.size(), 1u);
  EXPECT_THAT(disagreements[0], HasSubstr("references differ"));
}

v1::SeriesId Price(const std::string& key) {
  v1::SeriesId id;
  id.set_family(v1::FAMILY_PRICE);
  id.set_key(key);
  id.set_currency("EUR");
  id.set_kind(v1::SHELF);
  return id;
}

v1::UncomparedSeries Thin(const std::string& key, uint64_t n) {
  v1::UncomparedSeries u;
  *u.mutable_series() = Price(key);
  u.set_n(n);
  return u;
}

v1::MergeableSums Held(const std::string& key, uint64_t n) {
  v1::MergeableSums m;
  *m.mutable_series() = Price(key);
  m.set_n(n);
  return m;
}

TEST(ShardsTest, ASeriesTooThinOnEveryShardIsComparedWhenTheChainHoldsEnough) {
  // min_group 5. tea: 2 + 2 locations, not compared even chain-wide, and
  // counted once; tonic: 3 + 3, compared chain-wide (one collector pools
  // the small groups); coffee: thin on a, compared on b.
  v1::ChainSummaryResponse a, b;
  for (v1::ChainSummaryResponse* s : {&a, &b}) s->set_min_group(5);
  for (const auto& [key, n] : std::vector<std::pair<std::string, uint64_t>>{
           {"coffee", 2}, {"tea", 2}, {"tonic", 3}}) {
    *a.add_uncompared() = Thin(key, n);
    *a.add_mergeable() = Held(key, n);
  }
  a.set_uncompared_series(3);
  *b.add_mergeable() = Held("coffee", 9);
  for (const auto& [key, n] :
       std::vector<std::pair<std::string, uint64_t>>{{"tea", 2}, {"tonic", 3}}) {
    *b.add_uncompared() = Thin(key, n);
    *b.add_mergeable() = Held(key, n);
  }
  b.set_uncompared_series(2);
  std::vector<std::string> notes;
  v1::ChainSummaryResponse merged = MergeChainSummaries({a, b}, &notes);
  EXPECT_EQ(merged.uncompared_series(), 1u);
  ASSERT_EQ(merged.uncompared_size(), 1);
  EXPECT_EQ(merged.uncompared(0).series().key(), "tea");
  EXPECT_EQ(merged.uncompared(0).n(), 4u);
  EXPECT_TRUE(notes.empty()) << notes[0];

  // A shard that counts without naming (an older collector) cannot be
  // merged by identity: added, and said.
  v1::ChainSummaryResponse old;
  old.set_uncompared_series(4);
  merged = MergeChainSummaries({a, b, old}, &notes);
  EXPECT_EQ(merged.uncompared_series(), 5u);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_THAT(notes[0], HasSubstr("4 series were not named by every shard (a shard of an older"));
}

TEST(ShardsTest, SumsAreAddedOnlyWhereEveryShardsListIsWhole) {
  // Shard a cut its list after "b": it may hold "c" unsent, so "c"'s sums
  // from shard b alone would be a partial figure.
  v1::ChainSummaryResponse a, b;
  for (const char* key : {"a", "b"}) {
    *a.add_mergeable() = Sums({449}, 449);
    a.mutable_mergeable(a.mergeable_size() - 1)->mutable_series()->set_key(key);
  }
  a.set_mergeable_omitted(1);
  for (const char* key : {"a", "c"}) {
    *b.add_mergeable() = Sums({449, 459}, 449);
    b.mutable_mergeable(b.mergeable_size() - 1)->mutable_series()->set_key(key);
  }
  v1::ChainSummaryResponse merged = MergeChainSummaries({a, b}, nullptr);
  ASSERT_EQ(merged.mergeable_size(), 2);
  EXPECT_EQ(merged.mergeable(0).series().key(), "a");
  EXPECT_EQ(merged.mergeable(0).n(), 3u);
  EXPECT_EQ(merged.mergeable(1).series().key(), "b");
  EXPECT_EQ(merged.mergeable_omitted(), 2u) << "a's one unsent, and c";
  EXPECT_THAT(RenderChainWide(merged), HasSubstr("... 2 more series"));
}

TEST(ShardsTest, ALocationOnTwoShardsIsSaid) {
  v1::ChainSummaryResponse a, b;
  a.add_trust()->set_location("store-1");
  b.add_trust()->set_location("store-1");
  b.add_trust()->set_location("store-2");
  std::vector<std::string> notes;
  MergeChainSummaries({a, b}, &notes);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_THAT(notes[0], HasSubstr("location store-1 reports to 2 shards"));
}

TEST(ShardsTest, KeyDetailJoinsEveryShardsGroups) {
  v1::KeyDetailResponse north, south, old;
  v1::GroupDetail* g = north.add_groups();
  g->mutable_stats()->set_group("region=north");
  g->add_values()->set_location("north-1");
  g = south.add_groups();
  g->mutable_stats()->set_group("region=south");
  g->add_values()->set_location("south-1");
  south.add_findings()->set_id("f-low");
  north.add_findings()->set_id("f-high");
  north.mutable_findings(0)->set_severity(v1::HIGH);
  old.mutable_stats()->set_group("region=west");  // One group, top-level.
  old.add_values()->set_location("west-1");
  std::vector<std::string> notes;
  v1::KeyDetailResponse merged = MergeKeyDetails({north, south, old}, &notes);
  ASSERT_EQ(merged.groups_size(), 3);
  EXPECT_EQ(merged.groups(0).values(0).location(), "north-1");
  EXPECT_EQ(merged.groups(1).values(0).location(), "south-1");
  EXPECT_EQ(merged.groups(2).values(0).location(), "west-1");
  ASSERT_EQ(merged.findings_size(), 2);
  EXPECT_EQ(merged.findings(0).id(), "f-high");
  EXPECT_TRUE(notes.empty());

  v1::KeyDetailResponse chain_a, chain_b;
  chain_a.add_groups()->mutable_stats()->set_group("chain");
  chain_b.add_groups()->mutable_stats()->set_group("chain");
  MergeKeyDetails({chain_a, chain_b}, &notes);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_THAT(notes[0], HasSubstr("group chain is on 2 shards"));
}

TEST(ShardsTest, FindingsMostSevereFirstAndHistoryNewestFirstWithinTheLimit) {
  v1::FindingsResponse a, b;
  a.add_findings()->set_id("low");
  a.mutable_findings(0)->set_severity(v1::LOW);
  b.add_findings()->set_id("critical");
  b.mutable_findings(0)->set_severity(v1::CRITICAL);
  b.set_omitted(2);
  v1::FindingsResponse f = MergeFindings({a, b});
  ASSERT_EQ(f.findings_size(), 2);
  EXPECT_EQ(f.findings(0).id(), "critical");
  EXPECT_EQ(f.omitted(), 2u);

  v1::HistoryResponse h1, h2;
  for (int t : {30, 10}) h1.add_episodes()->mutable_opened_at()->set_seconds(t);
  h2.add_episodes()->mutable_opened_at()->set_seconds(20);
  v1::HistoryResponse h = MergeHistory({h1, h2}, 2);
  ASSERT_EQ(h.episodes_size(), 2);
  EXPECT_EQ(h.episodes(0).opened_at().seconds(), 30);
  EXPECT_EQ(h.episodes(1).opened_at().seconds(), 20);
  EXPECT_EQ(h.more(), 1u);
}

TEST(ShardsTest, AddressesFromTheFlagOrAShardsFile) {
  EXPECT_THAT(*CollectorAddresses("a:1, b:2", ""), ElementsAre("a:1", "b:2"));
  EXPECT_THAT(std::string(CollectorAddresses("a:1,,b:2", "").status().message()),
              HasSubstr("--collector: 'a:1,,b:2' has an empty address"));
  char dir[] = "/tmp/shards_test.XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/shards.txt";
  std::ofstream(path) << "# north and south\nnorth:7070\n\nsouth:7070  # the big one\n";
  EXPECT_THAT(*CollectorAddresses("ignored:1", path), ElementsAre("north:7070", "south:7070"));
  std::ofstream(path) << "north:7070 south:7070\n";
  EXPECT_THAT(std::string(CollectorAddresses("", path).status().message()),
              HasSubstr(path + ":1: 'north:7070 south:7070' is not one host:port"));
  EXPECT_THAT(std::string(CollectorAddresses("", dir + std::string("/none")).status().message()),
              HasSubstr("--shards: cannot read"));
  std::remove(path.c_str());
  rmdir(dir);
}

}  // namespace
}  // namespace constance::cli
