// One chain view across shards (README.md, "Several collectors"): two
// real collectors sharded by region, peer groups by region as
// deploy/SCALING.md recommends, read through `constance --collector=a,b`,
// answer as one collector holding every location does: the same
// locations and findings, and each series' chain-wide n, mean and
// standard deviation from the shards' mergeable sums, exactly.
#include <signal.h>

#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/harness.h"

namespace constance::testing {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

constexpr int kPerRegion = 8;

std::vector<std::string> Stores(const std::string& region) {
  std::vector<std::string> out;
  for (int i = 1; i <= kPerRegion; ++i) out.push_back(absl::StrCat(region, "-", i));
  return out;
}

// Every store charges 449 for coffee but north-3 (519) and south-5 (539).
int64_t PriceOf(const std::string& store) {
  return store == "north-3" ? 519 : store == "south-5" ? 539 : 449;
}

// Tea: three stores of each region, too few for a shard to compare
// (min_group 5), enough for one collector holding both (its small peer
// groups fall back to the chain: 6). Chai: north-1 and south-1, too few
// even chain-wide: the one series not compared, however many shards hold it.
bool SellsTea(const std::string& store) {
  return absl::EndsWith(store, "-1") || absl::EndsWith(store, "-2") || absl::EndsWith(store, "-4");
}
bool SellsChai(const std::string& store) { return absl::EndsWith(store, "-1"); }
constexpr int kObservations = 2 * kPerRegion + 6 + 2;

std::string Catalog(const std::vector<std::string>& regions) {
  std::string yaml = "locations:\n";
  for (const std::string& region : regions) {
    for (const std::string& s : Stores(region)) {
      absl::StrAppend(&yaml, "  - {id: ", s, ", labels: {region: ", region, "}}\n");
    }
  }
  return absl::StrCat(yaml, "peer_groups:\n  - {name: region, label: region, families: [price]}\n");
}

class ShardTest : public ::testing::Test {
 protected:
  // A collector holding `regions`' stores; its gRPC address.
  std::string Start(const std::string& name, const std::vector<std::string>& regions) {
    std::ofstream(dir_.File(name + ".yaml")) << Catalog(regions);
    processes_.push_back(std::make_unique<Subprocess>(
        CollectorArgs(dir_.File(name + ".yaml"), dir_.File(name + ".ready"),
                      {"--evaluation_interval=200ms"}),
        dir_.File(name + ".log")));
    auto ready =
        WaitForReadyFile(dir_.File(name + ".ready"), *processes_.back(), absl::Seconds(30));
    EXPECT_TRUE(ready.ok()) << ready.status();
    return ready.ok() ? (*ready)["grpc"] : "";
  }

  CommandResult Cli(const std::string& collectors, const std::string& args) {
    return RunCommand(absl::StrCat(BinDir(), "/constance --collector=", collectors, " ", args), "");
  }

  // `report --json` once the findings cover every store's observation.
  json Report(const std::string& collectors) {
    CommandResult r =
        Cli(collectors, absl::StrCat("report --json --wait_for_observations=", kObservations,
                                     " --wait_for_findings --timeout=60s"));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    json j = json::parse(r.output, nullptr, false);
    EXPECT_TRUE(j.is_object()) << r.output;
    return j;
  }

  TempDir dir_;
  std::vector<std::unique_ptr<Subprocess>> processes_;
};

// (kind, location) of every finding in a report or findings answer.
std::set<std::pair<std::string, std::string>> FindingSet(const json& answer) {
  std::set<std::pair<std::string, std::string>> out;
  for (const json& f : answer["findings"]) {
    out.emplace(f["kind"].get<std::string>(), f["location"].get<std::string>());
  }
  return out;
}

struct Figures {
  uint64_t n = 0;
  double mean = 0, stddev = 0;
};

// The price series' chain-wide figures from an answer's mergeable sums.
Figures Coffee(const json& report) {
  for (const json& m : report["mergeable"]) {
    if (m["series"]["key"] != "coffee-250g") continue;
    Figures f;
    f.n = std::stoull(m["n"].get<std::string>());
    const double n = static_cast<double>(f.n);
    const double d = m["sum_deviations"].get<double>() / n;
    f.mean = m["reference"].get<double>() + d;
    f.stddev = std::sqrt(m["sum_squared_deviations"].get<double>() / n - d * d);
    return f;
  }
  ADD_FAILURE() << "no coffee-250g in " << report["mergeable"].dump();
  return {};
}

// (group, location) of every value in a `key --json` answer.
std::set<std::pair<std::string, std::string>> GroupValues(const json& key) {
  std::set<std::pair<std::string, std::string>> out;
  for (const json& g : key["groups"]) {
    for (const json& v : g["values"]) {
      out.emplace(g["stats"]["group"].get<std::string>(), v["location"].get<std::string>());
    }
  }
  return out;
}

TEST_F(ShardTest, TwoShardsMergedAnswerAsOneCollectorHoldingEveryLocation) {
  const std::string north = Start("north", {"north"});
  const std::string south = Start("south", {"south"});
  const std::string all = Start("all", {"north", "south"});
  ASSERT_FALSE(north.empty() || south.empty() || all.empty());
  for (const std::string& region : {std::string("north"), std::string("south")}) {
    for (const std::string& store : Stores(region)) {
      for (const std::string& collector : {region == "north" ? north : south, all}) {
        absl::Status sent = SendShelfPrice(collector, store, "coffee-250g", PriceOf(store));
        ASSERT_TRUE(sent.ok()) << store << " to " << collector << ": " << sent;
        if (!SellsTea(store)) continue;
        sent = SendShelfPrice(collector, store, "tea-100g", 299, /*sequence=*/2);
        ASSERT_TRUE(sent.ok()) << store << " to " << collector << ": " << sent;
        if (!SellsChai(store)) continue;
        sent = SendShelfPrice(collector, store, "chai-50g", 349, /*sequence=*/3);
        ASSERT_TRUE(sent.ok()) << store << " to " << collector << ": " << sent;
      }
    }
  }
  const std::string shards = absl::StrCat(north, ",", south);
  const json merged = Report(shards);
  const json single = Report(all);
  EXPECT_EQ(merged["locations"], single["locations"]);
  EXPECT_EQ(merged["observations_applied"], single["observations_applied"]);
  // Each shard leaves tea and chai uncompared (4 added up); the chain
  // compares tea and has one series it cannot compare.
  EXPECT_EQ(single["uncompared_series"], "1");
  EXPECT_EQ(merged["uncompared_series"], single["uncompared_series"]);
  ASSERT_EQ(merged["uncompared"].size(), 1u) << merged["uncompared"].dump();
  EXPECT_EQ(merged["uncompared"][0]["series"]["key"], "chai-50g");
  EXPECT_EQ(merged["uncompared"][0]["n"], "2");
  EXPECT_EQ(merged["mergeable_omitted"], single["mergeable_omitted"]);
  EXPECT_EQ(FindingSet(merged), FindingSet(single));
  EXPECT_EQ(FindingSet(merged), (std::set<std::pair<std::string, std::string>>{
                                    {"OUTLIER", "north-3"}, {"OUTLIER", "south-5"}}));

  const Figures m = Coffee(merged), s = Coffee(single);
  EXPECT_EQ(m.n, 16u);
  EXPECT_EQ(m.n, s.n);
  EXPECT_NEAR(m.mean, s.mean, 1e-9 * s.mean);
  EXPECT_NEAR(m.stddev, s.stddev, 1e-9 * s.stddev);
  // The exact figures: 14 stores at 449, one at 519, one at 539.
  const double mean = (14 * 449.0 + 519 + 539) / 16;
  EXPECT_NEAR(m.mean, mean, 1e-9 * mean);
  const double var = (14 * (449 - mean) * (449 - mean) + (519 - mean) * (519 - mean) +
                      (539 - mean) * (539 - mean)) /
                     16;
  EXPECT_NEAR(m.stddev, std::sqrt(var), 1e-9 * std::sqrt(var));

  CommandResult text = Cli(shards, "report");
  EXPECT_THAT(text.output, HasSubstr("Chain-wide series (all shards, exact):"));
  EXPECT_THAT(text.output, ::testing::ContainsRegex("price coffee-250g EUR/shelf +16 +4\\.59 EUR"));

  // findings, location and history merge or route the same way.
  const json merged_findings = json::parse(Cli(shards, "findings --json").output, nullptr, false);
  ASSERT_TRUE(merged_findings.is_object());
  EXPECT_EQ(FindingSet(merged_findings), FindingSet(single));
  CommandResult card = Cli(shards, "location south-5");
  EXPECT_EQ(card.exit_code, 0) << card.output;
  EXPECT_THAT(card.output, HasSubstr("location south-5 (region=south)"));
  EXPECT_TRUE(WaitFor(
      [&] {
        const std::string h = Cli(shards, "history").output;
        return absl::StrContains(h, "north-3") && absl::StrContains(h, "south-5");
      },
      absl::Seconds(30)));
  // key: every shard's peer groups, each location in its own shard's.
  const json key = json::parse(
      Cli(shards, "key price coffee-250g --currency=EUR --json").output, nullptr, false);
  const json key_single =
      json::parse(Cli(all, "key price coffee-250g --currency=EUR --json").output, nullptr, false);
  ASSERT_TRUE(key.is_object() && key_single.is_object());
  EXPECT_EQ(GroupValues(key), GroupValues(key_single));
  EXPECT_EQ(key["groups"].size(), 2u) << "region=north and region=south";
  EXPECT_EQ(GroupValues(key).size(), 16u);
  EXPECT_EQ(FindingSet(key), FindingSet(key_single));
  CommandResult missing = Cli(shards, "key price no-such-key --currency=EUR");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.output, HasSubstr("from every shard (2) failed: no location reports"));
}

TEST_F(ShardTest, SilencesAreAddedListedAndExpiredOnEveryShard) {
  const std::string north = Start("north", {"north"});
  const std::string south = Start("south", {"south"});
  ASSERT_FALSE(north.empty() || south.empty());
  const std::string shards = absl::StrCat(north, ",", south);
  // South alone first, so the shards number the chain-wide rule apart.
  CommandResult alone = Cli(south, "silence add --location=south-5 --for=2h --owner=ben "
                                   "--comment='price test'");
  ASSERT_EQ(alone.exit_code, 0) << alone.output;

  CommandResult added = Cli(shards, "silence add --key=price:coffee-250g --for=72h --owner=anna "
                                    "--comment='supplier strike'");
  ASSERT_EQ(added.exit_code, 0) << added.output;
  EXPECT_THAT(added.output, HasSubstr(absl::StrCat(north, "  added silence 1")));
  EXPECT_THAT(added.output, HasSubstr(absl::StrCat(south, "  added silence 2")));
  EXPECT_THAT(added.output, HasSubstr("on all 2 shards"));

  const json list = json::parse(Cli(shards, "silence list --json").output, nullptr, false);
  ASSERT_TRUE(list.is_object()) << list;
  std::set<std::pair<std::string, std::string>> listed;  // (shard, id)
  for (const json& s : list["silences"]) {
    listed.emplace(s["shard"].get<std::string>(), s["id"].get<std::string>());
  }
  EXPECT_EQ(listed, (std::set<std::pair<std::string, std::string>>{
                        {north, "1"}, {south, "1"}, {south, "2"}}));
  EXPECT_THAT(Cli(shards, "silence list").output,
              ::testing::ContainsRegex(absl::StrCat(south, " +2 +key=price:coffee-250g")));

  // 1 is the strike on north but the price test on south: which one is meant?
  CommandResult ambiguous = Cli(shards, "silence expire 1");
  EXPECT_EQ(ambiguous.exit_code, 2) << ambiguous.output;
  EXPECT_THAT(ambiguous.output, HasSubstr("is a different rule on different shards"));
  // 2 is only south's copy of the strike: its copy on north ends with it.
  CommandResult expired = Cli(shards, "silence expire 2");
  ASSERT_EQ(expired.exit_code, 0) << expired.output;
  EXPECT_THAT(expired.output, HasSubstr(absl::StrCat(north, "  expired silence 1")));
  EXPECT_THAT(expired.output, HasSubstr(absl::StrCat(south, "  expired silence 2")));
  const std::string left = Cli(shards, "silence list").output;
  EXPECT_THAT(left, HasSubstr("location=south-5"));
  EXPECT_THAT(left, ::testing::Not(HasSubstr("coffee-250g"))) << left;

  // A shard that does not answer is named; the other keeps the rule.
  ASSERT_TRUE(processes_[1]->Stop(SIGTERM, absl::Seconds(30)).ok());
  CommandResult partial = Cli(shards, "silence add --region=north --for=1h --owner=anna "
                                      "--comment=refit --timeout=5s");
  EXPECT_EQ(partial.exit_code, 1) << partial.output;
  EXPECT_THAT(partial.output, HasSubstr(absl::StrCat(north, "  added silence 2")));
  EXPECT_THAT(partial.output, HasSubstr(absl::StrCat(south, "  FAILED: ")));
  EXPECT_THAT(partial.output, HasSubstr("1 of 2 shards failed"));
}

}  // namespace
}  // namespace constance::testing
