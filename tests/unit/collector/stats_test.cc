// Table-driven tests of the cross-location statistics and the outlier rule.
#include "collector/stats.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace constance::collector {
namespace {

std::vector<LocatedValue> Located(const std::vector<double>& values) {
  std::vector<LocatedValue> out;
  for (size_t i = 0; i < values.size(); ++i) out.push_back({static_cast<uint32_t>(i), values[i]});
  return out;
}

// `n` copies of `value`, then `rest`.
std::vector<double> Many(size_t n, double value, std::vector<double> rest = {}) {
  std::vector<double> v(n, value);
  v.insert(v.end(), rest.begin(), rest.end());
  return v;
}

// Random groups in location order (as ComputeGroups builds them) or
// shuffled, taking `distinct` values (some negative, zero signed both ways).
std::vector<LocatedValue> RandomGroup(std::mt19937* rng, size_t n, int distinct, bool in_order) {
  std::vector<LocatedValue> out;
  uint32_t loc = 0;
  for (size_t i = 0; i < n; ++i) {
    loc += 1 + (*rng)() % 3;
    const int pick = static_cast<int>((*rng)() % distinct);
    const double value = pick == 0 ? -0.0 : pick == 1 ? 0.0 : (pick - distinct / 2) * 0.25;
    out.push_back({loc, value});
  }
  if (!in_order) std::shuffle(out.begin(), out.end(), *rng);
  return out;
}

// The order statistics read without sorting twice equal their definitions:
// sorted by (value, location) as std::sort does, the MAD as the median of
// sorted absolute deviations, for both parities, few and many values.
TEST(SummarizeGroupTest, SortingOnceGivesTheDefinitionsExactly) {
  std::mt19937 rng(20);
  for (int round = 0; round < 400; ++round) {
    const size_t n = 1 + rng() % 60;
    const int distinct = 1 + static_cast<int>(rng() % 24);
    std::vector<LocatedValue> values = RandomGroup(&rng, n, distinct, round % 3 != 0);
    std::vector<LocatedValue> expected = values;
    std::sort(expected.begin(), expected.end(), [](const LocatedValue& a, const LocatedValue& b) {
      return a.value != b.value ? a.value < b.value : a.location < b.location;
    });
    std::vector<LocatedValue> sorted = values;
    SortByValueThenLocation(&sorted);
    ASSERT_EQ(sorted.size(), expected.size());
    for (size_t i = 0; i < sorted.size(); ++i) {
      ASSERT_EQ(sorted[i].location, expected[i].location) << "round " << round << " at " << i;
      ASSERT_EQ(std::signbit(sorted[i].value), std::signbit(expected[i].value));
    }
    const GroupSummary s = SummarizeGroup(values);
    std::vector<double> deviations;
    for (const LocatedValue& v : values) deviations.push_back(std::fabs(v.value - s.median));
    std::sort(deviations.begin(), deviations.end());
    const double mad =
        n % 2 == 1 ? deviations[n / 2] : (deviations[n / 2 - 1] + deviations[n / 2]) / 2;
    EXPECT_EQ(s.mad, mad) << "round " << round;
    EXPECT_EQ(SummarizeGroup(sorted).mad, mad) << "round " << round;
  }
}

TEST(SummarizeGroupTest, ExactStatistics) {
  static const struct {
    const char* name;
    std::vector<double> values;
    double mean, stddev, median, mad, min, max, p10, p90;
  } kCases[] = {
      {"empty", {}, 0, 0, 0, 0, 0, 0, 0, 0},
      {"single", {7}, 7, 0, 7, 0, 7, 7, 7, 7},
      {"all equal", {139, 139, 139, 139}, 139, 0, 139, 0, 139, 139, 139, 139},
      // Deviations from median 150: 0, 30, 150 -> MAD 30.
      {"odd",
       {150, 120, 300},
       190,
       std::sqrt((40.0 * 40 + 70 * 70 + 110 * 110) / 3),
       150,
       30,
       120,
       300,
       126,
       270},
      // Median of an even count is the mean of the two middle values.
      {"even", {1, 2, 3, 4}, 2.5, std::sqrt(1.25), 2.5, 1, 1, 4, 1.3, 3.7},
      // Most share one price: MAD 0 even though one location deviates.
      {"mad zero", {139, 139, 139, 139, 159}, 143, 8, 139, 0, 139, 159, 139, 151},
  };
  for (const auto& c : kCases) {
    SCOPED_TRACE(c.name);
    GroupSummary s = SummarizeGroup(Located(c.values));
    EXPECT_EQ(s.n, c.values.size());
    EXPECT_DOUBLE_EQ(s.mean, c.mean);
    EXPECT_NEAR(s.stddev, c.stddev, 1e-12);
    EXPECT_DOUBLE_EQ(s.median, c.median);
    EXPECT_DOUBLE_EQ(s.mad, c.mad);
    EXPECT_DOUBLE_EQ(s.min, c.min);
    EXPECT_DOUBLE_EQ(s.max, c.max);
    EXPECT_NEAR(s.p10, c.p10, 1e-12);
    EXPECT_NEAR(s.p90, c.p90, 1e-12);
    EXPECT_NEAR(s.cv, c.mean != 0 ? c.stddev / c.mean : 0, 1e-12);
  }
}

TEST(SummarizeGroupTest, OrderDoesNotMatter) {
  GroupSummary a = SummarizeGroup(Located({5, 1, 4, 2, 3}));
  GroupSummary b = SummarizeGroup(Located({1, 2, 3, 4, 5}));
  EXPECT_EQ(a.median, b.median);
  EXPECT_EQ(a.mad, b.mad);
  EXPECT_EQ(a.mean, b.mean);
}

TEST(SummarizeGroupTest, LargeOffsetsDoNotCancel) {
  // A naive sum of squares loses everything here; two passes do not.
  std::vector<double> v;
  for (int i = 0; i < 1000; ++i) v.push_back(1e9 + (i % 2));
  GroupSummary s = SummarizeGroup(Located(v));
  EXPECT_NEAR(s.stddev, 0.5, 1e-6);
}

TEST(FindOutliersTest, Cases) {
  static const struct {
    const char* name;
    v1::Family family;
    std::vector<double> values;
    // Indexes of the expected outliers, in output order, and their directions.
    std::vector<uint32_t> outliers;
    std::vector<v1::Direction> directions;
  } kCases[] = {
      {"100 stores at 1.39, one at 1.59 overcharges",
       v1::FAMILY_PRICE,
       Many(100, 139, {159}),
       {100},
       {v1::ABOVE}},
      {"one at 1.38 is below the price floor", v1::FAMILY_PRICE, Many(100, 139, {138}), {}, {}},
      {"undercharge is an outlier too", v1::FAMILY_PRICE, Many(20, 449, {399}), {20}, {v1::BELOW}},
      {"two cents on 1.39 is above 1% and 1 minor unit",
       v1::FAMILY_PRICE,
       Many(30, 139, {141}),
       {30},
       {v1::ABOVE}},
      {"all equal: nothing", v1::FAMILY_PRICE, Many(50, 139), {}, {}},
      {"fewer than min_group: nothing", v1::FAMILY_PRICE, {139, 139, 139, 199}, {}, {}},
      {"n = 1: nothing", v1::FAMILY_WAIT, {400}, {}, {}},
      {"slow store is an outlier",
       v1::FAMILY_WAIT,
       {180, 178, 182, 181, 179, 180, 183, 177, 414},
       {8},
       {v1::ABOVE}},
      {"fast store is not (waits count above only)",
       v1::FAMILY_WAIT,
       {180, 178, 182, 181, 179, 180, 183, 177, 60},
       {},
       {}},
      {"six seconds slower is below the 10% floor",
       v1::FAMILY_WAIT,
       {180, 180.2, 179.8, 180.1, 179.9, 180, 186},
       {},
       {}},
      {"failing checks are an outlier",
       v1::FAMILY_COMPLIANCE,
       Many(23, 1.0, {0.25}),
       {23},
       {v1::BELOW}},
      {"above peers on compliance is not", v1::FAMILY_COMPLIANCE, Many(23, 0.5, {1.0}), {}, {}},
      {"compliance within 5 points is not", v1::FAMILY_COMPLIANCE, Many(23, 1.0, {0.96}), {}, {}},
      {"score both ways",
       v1::FAMILY_SCORE,
       {96, 95.5, 96.5, 97, 95, 96, 96, 80, 99.9},
       {7},
       {v1::BELOW}},
  };
  for (const auto& c : kCases) {
    SCOPED_TRACE(c.name);
    std::vector<LocatedValue> values = Located(c.values);
    GroupSummary s = SummarizeGroup(values);
    std::vector<OutlierResult> out = FindOutliers(c.family, values, s, OutlierPolicy());
    ASSERT_EQ(out.size(), c.outliers.size());
    for (size_t i = 0; i < out.size(); ++i) {
      EXPECT_EQ(out[i].location, c.outliers[i]);
      EXPECT_EQ(out[i].direction, c.directions[i]);
      if (s.mad > 0) {
        EXPECT_GT(std::fabs(out[i].z), 3.5);
      }
      // Every outlier lies outside the band the report prints.
      Band band = ExpectedBand(c.family, s, OutlierPolicy());
      EXPECT_TRUE(out[i].value < band.low || out[i].value > band.high);
    }
  }
}

TEST(FindOutliersTest, EvidenceExplainsTheFinding) {
  std::vector<LocatedValue> values = Located(Many(23, 449, {516}));
  GroupSummary s = SummarizeGroup(values);
  std::vector<OutlierResult> out = FindOutliers(v1::FAMILY_PRICE, values, s, OutlierPolicy());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_DOUBLE_EQ(out[0].value, 516);
  EXPECT_NEAR(out[0].magnitude, 67.0 / 449, 1e-12);
  // MAD = 0: z = (x - median) / (1.253314 * MeanAD), MeanAD = 67 / 24.
  EXPECT_NEAR(out[0].z, 67.0 / (1.253314 * 67.0 / 24), 1e-9);
  Band band = ExpectedBand(v1::FAMILY_PRICE, s, OutlierPolicy());
  EXPECT_DOUBLE_EQ(band.floor, 4.49);
  // MAD = 0: the floor decides, and the band is the floor around the median.
  EXPECT_DOUBLE_EQ(band.high, 449 + 4.49);
  EXPECT_NEAR(band.scale, 1.253314 * 67.0 / 24, 1e-9);
}

TEST(FamilyFloorTest, Cases) {
  static const struct {
    v1::Family family;
    double median;
    double floor;
  } kCases[] = {
      {v1::FAMILY_PRICE, 139, 1.39},  // 1% of the median ...
      {v1::FAMILY_PRICE, 49, 1},      // ... but never under 1 minor unit.
      {v1::FAMILY_WAIT, 180, 18},    {v1::FAMILY_COMPLIANCE, 0.9, 0.05},
      {v1::FAMILY_SCORE, -200, 10},
  };
  for (const auto& c : kCases) {
    EXPECT_DOUBLE_EQ(FamilyFloor(c.family, c.median, OutlierPolicy()), c.floor)
        << v1::Family_Name(c.family) << " at " << c.median;
  }
}

}  // namespace
}  // namespace constance::collector

namespace constance::collector {
namespace {

// The outlier rule at its boundaries, family by family: a deviation equal
// to the floor is no outlier, the next representable step past it is.
TEST(AssessValueTest, ADeviationMustExceedTheFloorStrictly) {
  static const struct {
    const char* name;
    v1::Family family;
    size_t peers;  // How many share the median.
    double median;
    double value;
    bool outlier;
  } kCases[] = {
      {"price 0.18 against 0.19: one cent, the floor", v1::FAMILY_PRICE, 20, 19, 18, false},
      {"price 0.36 against 0.37", v1::FAMILY_PRICE, 20, 37, 36, false},
      {"price 1.01 against 1.00", v1::FAMILY_PRICE, 20, 100, 101, false},
      {"price 1.02 against 1.00", v1::FAMILY_PRICE, 20, 100, 102, true},
      {"price 9.89 against 9.99: 10 cents past a 9.99-cent floor", v1::FAMILY_PRICE, 20, 999, 989,
       true},
      {"price 99.00 against 100.00: exactly 1%", v1::FAMILY_PRICE, 20, 10000, 9900, false},
      {"price 98.99 against 100.00", v1::FAMILY_PRICE, 20, 10000, 9899, true},
      {"wait 110 s against 100 s: exactly 10%", v1::FAMILY_WAIT, 20, 100, 110, false},
      {"wait 110.5 s against 100 s", v1::FAMILY_WAIT, 20, 100, 110.5, true},
      {"wait 80 s against 100 s: faster is never an outlier", v1::FAMILY_WAIT, 20, 100, 80, false},
      // A pass rate known exactly (no count): its interval is the point,
      // which must lie a floor below the band's edge (1 - 0.05).
      {"pass rate 0.90 against 1: exactly a floor below the band", v1::FAMILY_COMPLIANCE, 20, 1.0,
       0.90, false},
      {"pass rate 0.89 against 1", v1::FAMILY_COMPLIANCE, 20, 1.0, 0.89, true},
      {"score 84 against 80: exactly 5%", v1::FAMILY_SCORE, 20, 80, 84, false},
      {"score 84.5 against 80", v1::FAMILY_SCORE, 20, 80, 84.5, true},
  };
  const OutlierPolicy policy;
  for (const auto& c : kCases) {
    SCOPED_TRACE(c.name);
    const std::vector<LocatedValue> values = Located(Many(c.peers, c.median, {c.value}));
    const GroupSummary s = SummarizeGroup(values);
    const Band band = ExpectedBand(c.family, s, policy);
    const Assessment a = AssessValue(c.family, c.value, s, band, policy);
    EXPECT_EQ(a.outlier, c.outlier);
    EXPECT_EQ(a.strength >= 1, c.outlier) << "strength " << a.strength;
    // FindOutliers is the same rule.
    EXPECT_EQ(FindOutliers(c.family, values, s, policy).size(), c.outlier ? 1u : 0u);
  }
}

TEST(AssessValueTest, AZScoreAtTheThresholdIsNoOutlier) {
  // MAD > 0: 0.6745 * 10 / MAD == 3.5 exactly when MAD = 0.6745 * 10 / 3.5.
  const OutlierPolicy policy;
  GroupSummary s;
  s.n = 50;
  s.median = 1000;
  s.mad = 0.6745 * 100 / 3.5;
  Band band;
  band.floor = 10;
  band.scale = s.mad / 0.6745;
  const Assessment at = AssessValue(v1::FAMILY_PRICE, 1100, s, band, policy);
  EXPECT_NEAR(at.z, 3.5, 1e-9);
  const Assessment past = AssessValue(v1::FAMILY_PRICE, 1101, s, band, policy);
  EXPECT_TRUE(past.outlier);
  EXPECT_GE(past.strength, 1);
  EXPECT_EQ(at.outlier, std::fabs(at.z) > 3.5);
  EXPECT_EQ(at.strength >= 1, at.outlier);
}

}  // namespace
}  // namespace constance::collector

namespace constance::collector {
namespace {

TEST(WilsonIntervalTest, KnownValues) {
  // 1 of 4 at z = 1.96: the textbook interval 0.046 .. 0.699.
  const RateInterval a = WilsonInterval(1, 4, 1.96);
  EXPECT_NEAR(a.low, 0.0456, 1e-3);
  EXPECT_NEAR(a.high, 0.6994, 1e-3);
  // 0 of n: the upper end is z^2 / (n + z^2).
  EXPECT_NEAR(WilsonInterval(0, 1).high, kRateZ * kRateZ / (1 + kRateZ * kRateZ), 1e-12);
  EXPECT_DOUBLE_EQ(WilsonInterval(0, 1).low, 0);
  EXPECT_DOUBLE_EQ(WilsonInterval(5, 5).high, 1);
  // No evidence: everything is possible.
  EXPECT_DOUBLE_EQ(WilsonInterval(0, 0).low, 0);
  EXPECT_DOUBLE_EQ(WilsonInterval(0, 0).high, 1);
}

// The rate rule against a group at 100% (band edge 0.95, floor 0.05): one
// failed check is no evidence, a re-inspection that passed neither; three
// fails of four are, and more evidence makes a stronger case.
TEST(RateShortfallTest, SmallSamplesNeedEvidence) {
  static const struct {
    const char* name;
    uint64_t passed, total;
    bool short_of_band;
  } kCases[] = {
      {"0 of 1", 0, 1, false},      {"1 of 2 (failed, passed the re-inspection)", 1, 2, false},
      {"1 of 3", 1, 3, false},      {"2 of 4", 2, 4, false},
      {"0 of 2", 0, 2, true},       {"1 of 4 (3 fails of 4)", 1, 4, true},
      {"8 of 20", 8, 20, true},     {"19 of 20", 19, 20, false},
      {"75 of 100", 75, 100, true}, {"85 of 100: a floor short at most", 85, 100, false},
  };
  for (const auto& c : kCases) {
    SCOPED_TRACE(c.name);
    const double rate = static_cast<double>(c.passed) / c.total;
    const double strength = RateShortfall(rate, c.total, 0.95, 0.05);
    EXPECT_EQ(strength > 1, c.short_of_band) << strength;
    EXPECT_GE(strength, 0);
  }
  // Severity grows with the evidence: all failed, more checks, stronger.
  EXPECT_LT(RateShortfall(0, 2, 0.95, 0.05), RateShortfall(0, 4, 0.95, 0.05));
  EXPECT_LT(RateShortfall(0, 4, 0.95, 0.05), RateShortfall(0, 40, 0.95, 0.05));
}

TEST(AssessValueTest, APassRateIsJudgedWithItsCount) {
  const OutlierPolicy policy;
  const std::vector<LocatedValue> values = Located(Many(30, 1.0, {0.0}));
  const GroupSummary s = SummarizeGroup(values);
  const Band band = ExpectedBand(v1::FAMILY_COMPLIANCE, s, policy);
  // The same 0% is no outlier on one check and one on four.
  EXPECT_FALSE(AssessValue(v1::FAMILY_COMPLIANCE, 0.0, s, band, policy, 1).outlier);
  const Assessment four = AssessValue(v1::FAMILY_COMPLIANCE, 0.0, s, band, policy, 4);
  EXPECT_TRUE(four.outlier);
  EXPECT_EQ(four.direction, v1::BELOW);
  std::vector<LocatedValue> counted = values;
  for (LocatedValue& v : counted) v.samples = 1;
  EXPECT_TRUE(FindOutliers(v1::FAMILY_COMPLIANCE, counted, s, policy).empty());
}

}  // namespace
}  // namespace constance::collector
