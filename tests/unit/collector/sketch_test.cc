// The wait sketch against exact quantiles: every quantile within the
// relative accuracy, on distributions waits actually have.
#include "collector/sketch.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace constance::collector {
namespace {

double ExactQuantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(std::floor(q * (v.size() - 1)))];
}

TEST(QuantileSketchTest, WithinRelativeAccuracyOfExactQuantiles) {
  std::mt19937_64 rng(20261123);
  static const struct {
    const char* name;
    std::function<double(std::mt19937_64&)> draw;
    size_t n;
  } kCases[] = {
      {"lognormal checkout waits",
       [](std::mt19937_64& r) { return std::lognormal_distribution<double>(5.2, 0.5)(r); }, 20000},
      {"exponential queue",
       [](std::mt19937_64& r) { return std::exponential_distribution<double>(1.0 / 180)(r); },
       5000},
      {"uniform seconds",
       [](std::mt19937_64& r) { return std::uniform_real_distribution<double>(1, 900)(r); }, 1000},
      {"integer minutes",
       [](std::mt19937_64& r) {
         return std::floor(std::uniform_real_distribution<double>(0, 60)(r)) * 60;
       },
       3000},
      {"tiny sample",
       [](std::mt19937_64& r) { return std::uniform_real_distribution<double>(100, 200)(r); }, 7},
  };
  for (const auto& c : kCases) {
    SCOPED_TRACE(c.name);
    QuantileSketch sketch(0.01);
    std::vector<double> values;
    for (size_t i = 0; i < c.n; ++i) {
      values.push_back(c.draw(rng));
      sketch.Add(values.back());
    }
    EXPECT_EQ(sketch.count(), c.n);
    for (double q : {0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0}) {
      double exact = ExactQuantile(values, q);
      double got = sketch.Quantile(q);
      if (exact == 0) {
        EXPECT_EQ(got, 0) << "q=" << q;
      } else {
        EXPECT_LE(std::fabs(got - exact) / exact, 0.01 + 1e-12) << "q=" << q << " exact " << exact;
      }
    }
  }
}

TEST(QuantileSketchTest, MergeEqualsOneSketchOfEverything) {
  QuantileSketch a(0.01), b(0.01), all(0.01);
  for (int i = 1; i <= 500; ++i) {
    (i % 3 == 0 ? a : b).Add(i * 1.7);
    all.Add(i * 1.7);
  }
  ASSERT_TRUE(a.Merge(b).ok());
  EXPECT_EQ(a.count(), all.count());
  for (double q : {0.1, 0.5, 0.9, 0.99}) EXPECT_EQ(a.Quantile(q), all.Quantile(q)) << q;
  QuantileSketch other(0.02);
  EXPECT_FALSE(a.Merge(other).ok());
}

// Merging bounded sketches whose ranges overlap, lie below and above one
// another, leaves exactly the state of one sketch fed every value (the
// lowest buckets collapsed the same way), whatever the merge order.
TEST(QuantileSketchTest, MergingBoundedSketchesEqualsOneSketchOfEverything) {
  std::mt19937 rng(7);
  for (int round = 0; round < 50; ++round) {
    QuantileSketch all(0.01, 16), merged(0.01, 16);
    std::vector<QuantileSketch> parts(1 + rng() % 5, QuantileSketch(0.01, 16));
    for (QuantileSketch& part : parts) {
      // Each part its own range: some narrow, some wider than 16 buckets.
      // Whole numbers: sums are exact in any order.
      const double base = 100 * std::pow(1.02, static_cast<double>(rng() % 60));
      const int spread = 1 + static_cast<int>(rng() % 40);
      for (int n = static_cast<int>(rng() % 30); n > 0; --n) {
        const double v = rng() % 10 == 0 ? 0 : std::floor(base * std::pow(1.02, rng() % spread));
        part.Add(v);
        all.Add(v);
      }
    }
    for (const QuantileSketch& part : parts) ASSERT_TRUE(merged.Merge(part).ok());
    std::string want, got;
    all.EncodeTo(&want);
    merged.EncodeTo(&got);
    EXPECT_EQ(got, want) << "round " << round;
  }
}

TEST(QuantileSketchTest, EdgesAndShares) {
  QuantileSketch s(0.01);
  EXPECT_EQ(s.Quantile(0.5), 0);
  EXPECT_EQ(s.ShareAtOrBelow(100), 0);
  s.Add(0);  // Served at once.
  s.Add(120, 3);
  s.Add(600);
  EXPECT_EQ(s.count(), 5u);
  EXPECT_EQ(s.Quantile(0), 0);
  EXPECT_NEAR(s.Quantile(0.5), 120, 1.2);
  EXPECT_EQ(s.Quantile(1), 600);  // Clamped to the exact max.
  EXPECT_DOUBLE_EQ(s.ShareAtOrBelow(300), 0.8);
  EXPECT_DOUBLE_EQ(s.ShareAtOrBelow(1000), 1.0);
  EXPECT_DOUBLE_EQ(s.sum(), 960);
}

TEST(QuantileSketchTest, BoundedBucketsKeepHighQuantiles) {
  QuantileSketch s(0.01, 64);
  for (int i = 0; i < 10000; ++i) s.Add(std::pow(1.01, i % 2000));
  double p99 = s.Quantile(0.99);
  std::vector<double> v;
  for (int i = 0; i < 10000; ++i) v.push_back(std::pow(1.01, i % 2000));
  double exact = ExactQuantile(v, 0.99);
  EXPECT_LE(std::fabs(p99 - exact) / exact, 0.01 + 1e-12);
  EXPECT_LT(s.MemoryBytes(), 1024u);
}

TEST(QuantileSketchTest, EncodeDecodeRoundTripsAndRejectsGarbage) {
  QuantileSketch s(0.01);
  for (int i = 1; i < 100; ++i) s.Add(i * 3.3);
  std::string bytes;
  s.EncodeTo(&bytes);
  QuantileSketch back;
  ASSERT_TRUE(QuantileSketch::Decode(bytes, &back).ok());
  EXPECT_EQ(back.count(), s.count());
  EXPECT_EQ(back.Quantile(0.9), s.Quantile(0.9));
  static const char* kGarbage[] = {"", "short", "0123456789abcdef0123456789abcdef"};
  for (const char* g : kGarbage) EXPECT_FALSE(QuantileSketch::Decode(g, &back).ok()) << g;
  EXPECT_FALSE(QuantileSketch::Decode(bytes.substr(0, bytes.size() - 1), &back).ok());
}

}  // namespace
}  // namespace constance::collector
