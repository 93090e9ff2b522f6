// CellTable: a series' cells of one family split by location stripe, read
// and changed as one table.

#include "collector/cell_table.h"

#include <cstdint>
#include <map>
#include <set>

#include "gtest/gtest.h"

namespace constance::collector {
namespace {

// The table's cells as an ordered map, by walking it.
std::map<uint32_t, int> Walked(const CellTable<int>& t) {
  std::map<uint32_t, int> out;
  for (const auto& [loc, cell] : t) EXPECT_TRUE(out.emplace(loc, cell).second) << loc;
  return out;
}

TEST(CellTableTest, StripesAreSpreadAndEveryOneIsUsed) {
  std::set<size_t> used;
  for (uint32_t loc = 0; loc < 256; ++loc) {
    ASSERT_LT(LocationStripe(loc), kLocationStripes);
    used.insert(LocationStripe(loc));
  }
  EXPECT_EQ(used.size(), kLocationStripes);
  // Locations a day's hours apart (those reporting at the same hour) are
  // spread too: the location modulo the stripes would put these 16 on 2.
  std::set<size_t> same_hour;
  for (uint32_t loc = 5; loc < 5 + 24 * 16; loc += 24) same_hour.insert(LocationStripe(loc));
  EXPECT_GE(same_hour.size(), 6u);
}

TEST(CellTableTest, ReadsAndChangesAsOneTable) {
  CellTable<int> t;
  EXPECT_FALSE(t.started());
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(t.size(), 0u);
  EXPECT_EQ(t.begin(), t.end());
  EXPECT_EQ(t.find(3), t.end());
  EXPECT_EQ(t.erase(3), 0u);

  std::map<uint32_t, int> want;
  for (uint32_t loc : {7u, 0u, 1000u, 31u, 32u, 33u, 4'000'000'000u}) {
    auto [cell, fresh] = t.try_emplace(loc);
    EXPECT_TRUE(fresh);
    *cell = static_cast<int>(loc % 97);
    want[loc] = *cell;
  }
  EXPECT_TRUE(t.started());
  EXPECT_FALSE(t.empty());
  EXPECT_EQ(t.size(), want.size());
  EXPECT_EQ(Walked(t), want);
  auto [again, fresh] = t.try_emplace(31);
  EXPECT_FALSE(fresh);
  EXPECT_EQ(*again, 31);
  ASSERT_NE(t.find(1000), t.end());
  EXPECT_EQ(t.find(1000)->first, 1000u);
  EXPECT_EQ(t.find(1000)->second, want[1000]);
  EXPECT_TRUE(t.contains(4'000'000'000u));
  EXPECT_FALSE(t.contains(8));
  t[8] = 5;
  want[8] = 5;

  // A copy is a deep one.
  CellTable<int> copy = t;
  copy[8] = 6;
  EXPECT_EQ(t.find(8)->second, 5);
  EXPECT_EQ(Walked(copy).size(), want.size());

  EXPECT_EQ(t.erase(8), 1u);
  want.erase(8);
  EXPECT_EQ(t.EraseIf([](uint32_t loc, int cell) { return loc < 32 || cell == 0; }),
            3u);  // 0, 7 and 31.
  for (auto it = want.begin(); it != want.end();) {
    it = it->first < 32 || it->second == 0 ? want.erase(it) : std::next(it);
  }
  EXPECT_EQ(Walked(t), want);
  EXPECT_EQ(t.size(), want.size());
  // Emptied, a table stays started: cells may still be created under a
  // stripe alone.
  t.EraseIf([](uint32_t, int) { return true; });
  EXPECT_TRUE(t.empty());
  EXPECT_TRUE(t.started());
  EXPECT_EQ(t.begin(), t.end());
}

}  // namespace
}  // namespace constance::collector
