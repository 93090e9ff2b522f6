// The wait sketch against exact quantiles: every quantile within the
// relative accuracy, on distributions waits actually have.
#include "collector/sketch.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "collector/cells.h"
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

// A sketch read from a snapshot may hold empty buckets at either end
// (Decode takes them); merged, they add nothing: the result is that of
// merging the same sketch without them.
TEST(QuantileSketchTest, MergingEmptyEndBucketsAddsNothing) {
  QuantileSketch a(0.01), into_plain(0.01), into_padded(0.01);
  for (double v : {80.0, 95.0, 140.0}) {
    a.Add(v);
    into_plain.Add(v / 3);
    into_padded.Add(v / 3);
  }
  std::string bytes;
  a.EncodeTo(&bytes);
  // Header: accuracy (double), max_buckets, offset (int32), n (uint32).
  const size_t at_offset = sizeof(double) + sizeof(uint32_t);
  int32_t offset;
  uint32_t n;
  std::memcpy(&offset, bytes.data() + at_offset, sizeof(offset));
  std::memcpy(&n, bytes.data() + at_offset + sizeof(offset), sizeof(n));
  const size_t at_counts = at_offset + sizeof(offset) + sizeof(n);
  const uint32_t zero = 0;
  std::string padded = bytes.substr(0, at_offset);
  offset -= 2;
  n += 3;
  padded.append(reinterpret_cast<const char*>(&offset), sizeof(offset));
  padded.append(reinterpret_cast<const char*>(&n), sizeof(n));
  for (int i = 0; i < 2; ++i) padded.append(reinterpret_cast<const char*>(&zero), sizeof(zero));
  padded.append(bytes, at_counts, (n - 3) * sizeof(uint32_t));
  padded.append(reinterpret_cast<const char*>(&zero), sizeof(zero));
  padded.append(bytes, at_counts + (n - 3) * sizeof(uint32_t), std::string::npos);
  QuantileSketch b;
  ASSERT_TRUE(QuantileSketch::Decode(padded, &b).ok());
  ASSERT_TRUE(into_plain.Merge(a).ok());
  ASSERT_TRUE(into_padded.Merge(b).ok());
  std::string want, got;
  into_plain.EncodeTo(&want);
  into_padded.EncodeTo(&got);
  EXPECT_EQ(got, want);
  for (double q : {0.0, 0.3, 0.5, 0.8, 1.0})
    EXPECT_EQ(into_padded.Quantile(q), into_plain.Quantile(q));
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

// CompareWait reads a window of one bin where it lies; what it reads must
// be what the merged window says, for any cadence, window and sample
// count, and a cell whose sketches were built at another accuracy is not
// compared (they do not merge).
TEST(CompareWaitTest, OneBinReadInPlaceEqualsTheMergedWindow) {
  std::mt19937_64 rng(20261207);
  std::lognormal_distribution<double> wait(5.0, 0.8);
  FamilyPolicy policy;
  policy.ttl = absl::Hours(24);
  WaitPolicy sketch;
  int compared = 0, one_bin = 0;
  for (int round = 0; round < 400; ++round) {
    policy.bin = absl::Minutes(std::uniform_int_distribution<int>(1, 30)(rng));
    policy.window = policy.bin * std::uniform_int_distribution<int>(1, 6)(rng);
    policy.min_samples = std::uniform_int_distribution<int>(1, 3)(rng);
    sketch.compared_quantile = round % 2 == 0 ? 0.5 : 0.9;
    const absl::Time start = absl::FromUnixSeconds(1'800'000'000);
    WaitCell cell;
    const int samples = std::uniform_int_distribution<int>(1, 12)(rng);
    absl::Time t = start;
    for (int i = 0; i < samples; ++i) {
      t += absl::Seconds(std::uniform_int_distribution<int>(0, 3600)(rng));
      cell.Apply(wait(rng), absl::ToUnixNanos(t), policy, sketch);
    }
    const absl::Time now = t + absl::Seconds(std::uniform_int_distribution<int>(0, 3600)(rng));
    const PolicyAt at(now, policy);
    const double within = 120;
    const std::optional<Comparable> got = CompareWait(cell, at, sketch, within);
    const QuantileSketch merged = cell.Window(at, sketch);
    int in_window = 0;
    for (const WaitCell::Bin& b : cell.bins) in_window += at.InWindow(b.start_ns);
    one_bin += in_window == 1;
    if (merged.count() == 0 || merged.count() < policy.min_samples) {
      EXPECT_FALSE(got.has_value()) << "round " << round;
      continue;
    }
    ASSERT_TRUE(got.has_value()) << "round " << round;
    ++compared;
    EXPECT_EQ(got->value, merged.Quantile(sketch.compared_quantile)) << "round " << round;
    EXPECT_EQ(got->samples, merged.count()) << "round " << round;
    EXPECT_EQ(got->share_within, merged.ShareAtOrBelow(within)) << "round " << round;
    EXPECT_EQ(got->evidence_ns, cell.observed_at_ns) << "round " << round;
  }
  // Both paths were taken, many times.
  EXPECT_GT(compared, 150);
  EXPECT_GT(one_bin, 50);
  EXPECT_LT(one_bin, 350);

  // Built at 2%, read at 1%: never compared, one bin or several.
  WaitPolicy coarse;
  coarse.relative_accuracy = 0.02;
  policy.min_samples = 1;
  WaitCell cell;
  const absl::Time now = absl::FromUnixSeconds(1'800'000'000);
  cell.Apply(90, absl::ToUnixNanos(now), policy, coarse);
  EXPECT_EQ(cell.bins.size(), 1u);
  EXPECT_FALSE(CompareWait(cell, PolicyAt(now, policy), sketch, 0).has_value());
  EXPECT_TRUE(CompareWait(cell, PolicyAt(now, policy), coarse, 0).has_value());
}

}  // namespace
}  // namespace constance::collector
