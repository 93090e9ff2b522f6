// The in-memory spool: numbering, acknowledgement, the bound, incarnation.
#include "agent/spool.h"

#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace constance::agent {
namespace {

std::vector<v1::Observation> Make(int n, const std::string& prefix = "k") {
  std::vector<v1::Observation> out(n);
  for (int i = 0; i < n; ++i) {
    out[i].set_key(prefix + std::to_string(i));
    out[i].set_score(i);
  }
  return out;
}

std::vector<uint64_t> Sequences(const Spool& spool, uint64_t from, size_t max) {
  absl::StatusOr<std::vector<SpoolEntry>> entries = spool.Read(from, max);
  EXPECT_TRUE(entries.ok()) << entries.status();
  std::vector<uint64_t> out;
  if (entries.ok()) {
    for (const SpoolEntry& e : *entries) out.push_back(e.sequence);
  }
  return out;
}

TEST(MemorySpoolTest, NumbersConsecutivelyFromOne) {
  MemorySpool spool(SpoolOptions{});
  EXPECT_EQ(spool.LastSequence(), 0u);
  EXPECT_EQ(*spool.Append(Make(3, "a")), 1u);
  EXPECT_EQ(*spool.Append(Make(2, "b")), 4u);
  EXPECT_EQ(*spool.Append({}), 6u);  // Nothing appended, next number.
  EXPECT_EQ(spool.LastSequence(), 5u);
  EXPECT_EQ(spool.Depth(), 5u);

  absl::StatusOr<std::vector<SpoolEntry>> all = spool.Read(1, 100);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 5u);
  EXPECT_EQ((*all)[0].observation.key(), "a0");
  EXPECT_EQ((*all)[3].sequence, 4u);
  EXPECT_EQ((*all)[3].observation.key(), "b0");
}

TEST(MemorySpoolTest, ReadWindows) {
  MemorySpool spool(SpoolOptions{});
  ASSERT_TRUE(spool.Append(Make(10)).ok());
  static const struct {
    uint64_t from;
    size_t max;
    std::vector<uint64_t> want;
  } kCases[] = {
      {1, 3, {1, 2, 3}}, {9, 5, {9, 10}}, {11, 5, {}}, {0, 2, {1, 2}}, {4, 0, {}},
  };
  for (const auto& c : kCases) {
    EXPECT_EQ(Sequences(spool, c.from, c.max), c.want) << "from " << c.from << " max " << c.max;
  }
}

TEST(MemorySpoolTest, AcknowledgeDeletesOnlyUpToTheWatermark) {
  MemorySpool spool(SpoolOptions{});
  ASSERT_TRUE(spool.Append(Make(5)).ok());
  ASSERT_TRUE(spool.Acknowledge(3).ok());
  EXPECT_EQ(spool.Depth(), 2u);
  // A read from an acknowledged number starts at the oldest left.
  EXPECT_EQ(Sequences(spool, 1, 10), (std::vector<uint64_t>{4, 5}));
  // An older watermark changes nothing.
  ASSERT_TRUE(spool.Acknowledge(2).ok());
  EXPECT_EQ(spool.Depth(), 2u);
  ASSERT_TRUE(spool.Acknowledge(5).ok());
  EXPECT_EQ(spool.Depth(), 0u);
  EXPECT_EQ(spool.Bytes(), 0u);
  // Numbers are never reused, even once everything is acknowledged.
  EXPECT_EQ(*spool.Append(Make(1)), 6u);
  ASSERT_TRUE(spool.Acknowledge(100).ok());
  EXPECT_EQ(*spool.Append(Make(1)), 7u);
}

TEST(MemorySpoolTest, BoundIsEnforced) {
  SpoolOptions options;
  options.max_observations = 3;
  MemorySpool spool(options);
  ASSERT_TRUE(spool.Append(Make(2)).ok());
  absl::StatusOr<uint64_t> full = spool.Append(Make(2));
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.status().message().find("spool full"), absl::string_view::npos);
  // All or nothing: the refused append left no trace, not even a number.
  EXPECT_EQ(spool.Depth(), 2u);
  EXPECT_EQ(*spool.Append(Make(1)), 3u);
  EXPECT_FALSE(spool.Append(Make(1)).ok());
  ASSERT_TRUE(spool.Acknowledge(1).ok());
  EXPECT_EQ(*spool.Append(Make(1)), 4u);
}

TEST(MemorySpoolTest, IncarnationIsRandomAndNonzero) {
  MemorySpool a(SpoolOptions{});
  MemorySpool b(SpoolOptions{});
  EXPECT_NE(a.incarnation(), 0u);
  EXPECT_NE(b.incarnation(), 0u);
  EXPECT_NE(a.incarnation(), b.incarnation());  // 2^-64 odds of a false failure.
}

TEST(MemorySpoolTest, OldestUnacknowledgedAge) {
  absl::Time now = absl::FromUnixSeconds(1000);
  SpoolOptions options;
  options.now = [&now] { return now; };
  MemorySpool spool(options);
  EXPECT_EQ(spool.OldestUnacknowledgedAge(), absl::ZeroDuration());
  ASSERT_TRUE(spool.Append(Make(1)).ok());
  now += absl::Seconds(10);
  ASSERT_TRUE(spool.Append(Make(1)).ok());
  now += absl::Seconds(5);
  EXPECT_EQ(spool.OldestUnacknowledgedAge(), absl::Seconds(15));
  ASSERT_TRUE(spool.Acknowledge(1).ok());
  EXPECT_EQ(spool.OldestUnacknowledgedAge(), absl::Seconds(5));
}

TEST(MemorySpoolTest, ConcurrentAppendsGetDistinctConsecutiveNumbers) {
  MemorySpool spool(SpoolOptions{});
  constexpr int kThreads = 4;
  constexpr int kAppends = 250;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&spool] {
      for (int i = 0; i < kAppends; ++i) ASSERT_TRUE(spool.Append(Make(2)).ok());
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(spool.LastSequence(), uint64_t{kThreads * kAppends * 2});
  std::vector<uint64_t> seqs = Sequences(spool, 1, kThreads * kAppends * 2);
  ASSERT_EQ(seqs.size(), size_t{kThreads * kAppends * 2});
  for (size_t i = 0; i < seqs.size(); ++i) EXPECT_EQ(seqs[i], i + 1);
}

}  // namespace
}  // namespace constance::agent
