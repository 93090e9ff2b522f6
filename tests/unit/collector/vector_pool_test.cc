// VectorPool: buffers kept between a recomputation's series.

#include "collector/vector_pool.h"

#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace constance::collector {
namespace {

TEST(VectorPoolTest, AnEmptyPoolGivesAnEmptyVector) {
  VectorPool<int> pool(2);
  std::vector<int> v = pool.Take();
  EXPECT_TRUE(v.empty());
  EXPECT_EQ(v.capacity(), 0u);
}

TEST(VectorPoolTest, ABufferGivenBackIsTakenAgainEmpty) {
  VectorPool<std::string> pool(2);
  std::vector<std::string> v(100, std::string(40, 'x'));
  const std::string* buffer = v.data();
  const size_t capacity = v.capacity();
  pool.Give(std::move(v));
  EXPECT_EQ(pool.kept(), 1u);
  std::vector<std::string> again = pool.Take();
  EXPECT_TRUE(again.empty());  // The elements destroyed, the buffer kept.
  EXPECT_EQ(again.data(), buffer);
  EXPECT_EQ(again.capacity(), capacity);
  EXPECT_EQ(pool.kept(), 0u);
}

TEST(VectorPoolTest, KeepsAtMostItsBoundAndNoEmptyBuffers) {
  VectorPool<int> pool(2);
  pool.Give({});  // No buffer: nothing to keep.
  EXPECT_EQ(pool.kept(), 0u);
  for (int i = 0; i < 5; ++i) pool.Give(std::vector<int>(10));
  EXPECT_EQ(pool.kept(), 2u);
  EXPECT_GE(pool.Take().capacity(), 10u);
  EXPECT_GE(pool.Take().capacity(), 10u);
  EXPECT_EQ(pool.Take().capacity(), 0u);
}

TEST(VectorPoolTest, APooledVectorGoesBackAtTheEndOfItsScope) {
  VectorPool<int> pool(4);
  const int* buffer = nullptr;
  {
    PooledVector<int> v(&pool);
    (*v).assign(50, 7);
    buffer = (*v).data();
    EXPECT_EQ(pool.kept(), 0u);
  }
  EXPECT_EQ(pool.kept(), 1u);
  PooledVector<int> again(&pool);
  EXPECT_TRUE((*again).empty());
  EXPECT_EQ((*again).data(), buffer);
}

// Threads recomputing series take and give at once (the ThreadSanitizer
// build runs this).
TEST(VectorPoolTest, ThreadsTakeAndGiveAtOnce) {
  VectorPool<int> pool(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&pool, t] {
      for (int i = 0; i < 2000; ++i) {
        std::vector<int> v = pool.Take();
        EXPECT_TRUE(v.empty());
        v.assign(static_cast<size_t>(1 + (i + t) % 64), t);
        for (int x : v) EXPECT_EQ(x, t);  // Nobody else writes it.
        pool.Give(std::move(v));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_GE(pool.kept(), 1u);
  EXPECT_LE(pool.kept(), 4u);
}

}  // namespace
}  // namespace constance::collector
