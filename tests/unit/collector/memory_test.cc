// SizeClass: the capacities buffers replaced hour after hour are rounded to.

#include "collector/memory.h"

#include <cstddef>
#include <set>

#include "gtest/gtest.h"

namespace constance::collector {
namespace {

TEST(SizeClassTest, HoldsNAndAtMostAQuarterMore) {
  size_t last = 0;
  for (size_t n = 0; n <= 100'000; ++n) {
    const size_t c = SizeClass(n);
    ASSERT_GE(c, n);
    if (n > 8) {
      ASSERT_LE(c * 4, n * 5) << n;
    }
    ASSERT_GE(c, last) << n;  // A longer list never gets less room.
    last = c;
  }
  EXPECT_EQ(SizeClass(0), 0u);
  EXPECT_EQ(SizeClass(8), 8u);
}

TEST(SizeClassTest, FourSizesPerDoubling) {
  std::set<size_t> classes;
  for (size_t n = 1025; n <= 2048; ++n) classes.insert(SizeClass(n));
  EXPECT_EQ(classes, (std::set<size_t>{1280, 1536, 1792, 2048}));
  // Lists a few drops apart share a size: the buffer one frees fits the next.
  EXPECT_EQ(SizeClass(1000), SizeClass(1020));
  EXPECT_EQ(SizeClass(1000), 1024u);
}

}  // namespace
}  // namespace constance::collector
