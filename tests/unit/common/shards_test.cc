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
