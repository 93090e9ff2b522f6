// Writes a golden price-drop feed: what a collector of the release this is
// compiled against leaves in --state_dir/price_drops.db, for the upgrade
// test of later releases (tests/unit/collector/price_drops_test.cc,
// PriceDropFeedTest.ReadsAndExtendsAFeedOfFormat0).
//
//   make_golden_drops OUT_DIR
//
// Three evaluations' lists on an injected clock: six drops at three
// stores, coffee and tea, shelf and promo prices; the second evaluation
// publishes the first's drops again (nothing new) and marks store-1's and
// store-2's coffee drops a rollout; the third adds one drop. The feed is
// closed cleanly (its WAL checkpointed into the file).
//
// OUT_DIR receives price_drops.db and expected_drops.txt: every drop the
// feed reads back, oldest first, one per line as
//   location key currency kind from to rollout at_unix_ns recorded_unix_ns
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "collector/price_drops.h"

namespace constance::collector {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'793'000'000);  // 2026-10-26.

PriceDrop Drop(const std::string& location, const std::string& key, v1::PriceKind kind,
               int64_t from, int64_t to, absl::Duration after, bool rollout, uint64_t revision) {
  PriceDrop d;
  d.location = location;
  d.series.family = v1::FAMILY_PRICE;
  d.series.key = key;
  d.series.currency = "EUR";
  d.series.kind = kind;
  d.from = from;
  d.to = to;
  d.at = kT0 + after;
  d.rollout = rollout;
  d.revision = revision;
  return d;
}

int Write(const std::string& dir) {
  auto feed = PriceDropFeed::Open(dir + "/price_drops.db", {});
  if (!feed.ok()) {
    std::cerr << feed.status() << "\n";
    return 1;
  }
  std::vector<PriceDrop> first = {
      Drop("store-1", "coffee", v1::SHELF, 449, 399, absl::Minutes(1), false, 1),
      Drop("store-2", "coffee", v1::SHELF, 449, 399, absl::Minutes(2), false, 1),
      Drop("store-3", "coffee", v1::SHELF, 449, 429, absl::Minutes(2), false, 1),
      Drop("store-1", "tea", v1::SHELF, 300, 250, absl::Minutes(3), false, 1),
      Drop("store-2", "tea", v1::PROMO, 300, 199, absl::Minutes(3), false, 1)};
  std::vector<PriceDrop> second = first;
  second[0].rollout = second[1].rollout = true;
  second[0].revision = second[1].revision = 2;
  std::vector<PriceDrop> third = second;
  third.push_back(Drop("store-3", "tea", v1::SHELF, 310, 260, absl::Minutes(61), false, 3));
  const std::vector<std::pair<std::vector<PriceDrop>, absl::Duration>> evaluations = {
      {first, absl::Minutes(5)}, {second, absl::Minutes(65)}, {third, absl::Minutes(125)}};
  uint64_t revision = 0;
  for (const auto& [drops, at] : evaluations) {
    if (absl::Status s = (*feed)->Record(PriceDropList(drops, 1, ++revision), kT0 + at); !s.ok()) {
      std::cerr << s << "\n";
      return 1;
    }
  }
  std::ofstream out(dir + "/expected_drops.txt");
  PriceDropFeed::Cursor cursor;
  for (const v1::PriceDrop& d : (*feed)->Read(absl::InfinitePast(), "", 100, &cursor)) {
    out << d.location() << " " << d.series().key() << " " << d.series().currency() << " "
        << d.series().kind() << " " << d.previous_minor_units() << " " << d.new_minor_units()
        << " " << d.rollout() << " "
        << d.at().seconds() * 1'000'000'000 + d.at().nanos() << " "
        << d.recorded_at().seconds() * 1'000'000'000 + d.recorded_at().nanos() << "\n";
  }
  feed->reset();  // Closed: the WAL goes into the file.
  return out.good() ? 0 : 1;
}

}  // namespace
}  // namespace constance::collector

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_golden_drops OUT_DIR\n");
    return 2;
  }
  return constance::collector::Write(argv[1]);
}
