// The spool contract, run against MemorySpool and SqliteSpool alike
// (numbering, reads, acknowledgement, bounds, idempotency), then what only
// the durable spool does: reopening, a wiped or corrupt file, and a real
// crash (a child process SIGKILLed while appending).
#include "agent/sqlite_spool.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/spool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sqlite3.h"

namespace constance::agent {
namespace {

using ::testing::HasSubstr;

std::vector<v1::Observation> Make(int n, const std::string& prefix = "k") {
  std::vector<v1::Observation> out(n);
  for (int i = 0; i < n; ++i) {
    out[i].set_key(prefix + std::to_string(i));
    out[i].set_score(i);
  }
  return out;
}

// Observations with the given ids ("" = none); the key says which one it is.
std::vector<v1::Observation> WithIds(const std::vector<std::string>& ids) {
  std::vector<v1::Observation> out(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    out[i].set_key("item" + std::to_string(i));
    out[i].set_score(1);
    out[i].set_id(ids[i]);
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

std::vector<std::string> Keys(const Spool& spool) {
  absl::StatusOr<std::vector<SpoolEntry>> entries = spool.Read(0, 1'000'000);
  EXPECT_TRUE(entries.ok()) << entries.status();
  std::vector<std::string> out;
  if (entries.ok()) {
    for (const SpoolEntry& e : *entries) out.push_back(e.observation.key());
  }
  return out;
}

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TEST_TMPDIR");
    std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/spool_test.XXXXXX";
    char* made = mkdtemp(tmpl.data());
    EXPECT_NE(made, nullptr) << std::strerror(errno);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct MemoryKind {
  static absl::StatusOr<std::unique_ptr<Spool>> Open(const std::string&, SpoolOptions options) {
    return std::unique_ptr<Spool>(new MemorySpool(std::move(options)));
  }
};

struct SqliteKind {
  static absl::StatusOr<std::unique_ptr<Spool>> Open(const std::string& path,
                                                     SpoolOptions options) {
    absl::StatusOr<std::unique_ptr<SqliteSpool>> spool = SqliteSpool::Open(path, options);
    if (!spool.ok()) return spool.status();
    return std::unique_ptr<Spool>(std::move(*spool));
  }
};

template <typename Kind>
class SpoolContractTest : public ::testing::Test {
 protected:
  std::unique_ptr<Spool> Open(SpoolOptions options = {}) {
    options.now = [this] { return now_; };
    absl::StatusOr<std::unique_ptr<Spool>> spool = Kind::Open(dir_.File("spool.db"), options);
    EXPECT_TRUE(spool.ok()) << spool.status();
    return spool.ok() ? *std::move(spool) : nullptr;
  }

  TempDir dir_;
  absl::Time now_ = absl::FromUnixSeconds(1'700'000'000);
};

using SpoolKinds = ::testing::Types<MemoryKind, SqliteKind>;
TYPED_TEST_SUITE(SpoolContractTest, SpoolKinds);

TYPED_TEST(SpoolContractTest, NumbersConsecutivelyFromOne) {
  std::unique_ptr<Spool> spool = this->Open();
  ASSERT_NE(spool, nullptr);
  EXPECT_NE(spool->incarnation(), 0u);
  EXPECT_EQ(spool->LastSequence(), 0u);
  EXPECT_EQ(*spool->Append(Make(3, "a")), 1u);
  EXPECT_EQ(*spool->Append(Make(2, "b")), 4u);
  EXPECT_EQ(*spool->Append({}), 6u);  // Nothing appended, next number.
  EXPECT_EQ(spool->LastSequence(), 5u);
  EXPECT_EQ(spool->Depth(), 5u);
  EXPECT_EQ(Keys(*spool), (std::vector<std::string>{"a0", "a1", "a2", "b0", "b1"}));
  uint64_t bytes = 0;
  for (const v1::Observation& o : Make(3, "a")) bytes += o.ByteSizeLong();
  for (const v1::Observation& o : Make(2, "b")) bytes += o.ByteSizeLong();
  EXPECT_EQ(spool->Bytes(), bytes);
}

TYPED_TEST(SpoolContractTest, ReadWindows) {
  std::unique_ptr<Spool> spool = this->Open();
  ASSERT_NE(spool, nullptr);
  ASSERT_TRUE(spool->Append(Make(10)).ok());
  ASSERT_TRUE(spool->Acknowledge(2).ok());
  static const struct {
    uint64_t from;
    size_t max;
    std::vector<uint64_t> want;
  } kCases[] = {
      {1, 3, {3, 4, 5}}, {3, 3, {3, 4, 5}}, {9, 5, {9, 10}}, {11, 5, {}},
      {0, 2, {3, 4}},    {4, 0, {}},        {10, 1, {10}},
  };
  for (const auto& c : kCases) {
    EXPECT_EQ(Sequences(*spool, c.from, c.max), c.want) << "from " << c.from << " max " << c.max;
  }
}

TYPED_TEST(SpoolContractTest, AcknowledgeDeletesOnlyUpToTheWatermark) {
  std::unique_ptr<Spool> spool = this->Open();
  ASSERT_NE(spool, nullptr);
  ASSERT_TRUE(spool->Append(Make(5)).ok());
  static const struct {
    uint64_t watermark;
    uint64_t depth;
    std::vector<uint64_t> left;
  } kSteps[] = {
      {0, 5, {1, 2, 3, 4, 5}}, {3, 2, {4, 5}}, {2, 2, {4, 5}},  // An older watermark: no-op.
      {3, 2, {4, 5}},          {5, 0, {}},     {100, 0, {}},
  };
  for (const auto& step : kSteps) {
    ASSERT_TRUE(spool->Acknowledge(step.watermark).ok());
    EXPECT_EQ(spool->Depth(), step.depth) << "after " << step.watermark;
    EXPECT_EQ(Sequences(*spool, 1, 10), step.left) << "after " << step.watermark;
  }
  EXPECT_EQ(spool->Bytes(), 0u);
  // Numbers are never reused, even once everything is acknowledged.
  EXPECT_EQ(*spool->Append(Make(1)), 6u);
  ASSERT_TRUE(spool->Acknowledge(100).ok());
  EXPECT_EQ(*spool->Append(Make(1)), 7u);
}

TYPED_TEST(SpoolContractTest, BoundsAreEnforcedAndARefusalStoresNothing) {
  const uint64_t one = Make(1)[0].ByteSizeLong();
  static const struct {
    const char* name;
    uint64_t max_observations;
    uint64_t max_bytes_in_observations;  // Multiples of one observation's size.
  } kCases[] = {{"observations", 3, 1000}, {"bytes", 1000, 3}};
  for (const auto& c : kCases) {
    SCOPED_TRACE(c.name);
    SpoolOptions options;
    options.max_observations = c.max_observations;
    options.max_bytes = c.max_bytes_in_observations * one;
    std::unique_ptr<Spool> spool = this->Open(options);
    ASSERT_NE(spool, nullptr);
    // Each case starts on a fresh numbering, in memory or on disk.
    const uint64_t base = spool->LastSequence();
    ASSERT_TRUE(spool->Append(Make(2)).ok());
    absl::StatusOr<uint64_t> full = spool->Append(Make(2));
    ASSERT_FALSE(full.ok());
    EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(std::string(full.status().message()), HasSubstr("spool full"));
    // All or nothing: the refused append left no trace, not even a number.
    EXPECT_EQ(spool->Depth(), 2u);
    EXPECT_EQ(*spool->Append(Make(1)), base + 3);
    EXPECT_FALSE(spool->Append(Make(1)).ok());
    ASSERT_TRUE(spool->Acknowledge(base + 1).ok());
    EXPECT_EQ(*spool->Append(Make(1)), base + 4);
    ASSERT_TRUE(spool->Acknowledge(base + 4).ok());
    spool.reset();
  }
}

// Observations of one serialized size each ("a0".."a9" with score 1), with
// ids unique to `tag`.
std::vector<v1::Observation> SameSize(int n, const std::string& prefix, char tag) {
  std::vector<v1::Observation> out(n);
  for (int i = 0; i < n; ++i) {
    out[i].set_key(prefix + std::to_string(i));
    out[i].set_score(1);
    out[i].set_id(prefix + tag + std::to_string(i));
  }
  return out;
}

TYPED_TEST(SpoolContractTest, DropOldestMakesRoomAndCountsWhatItDropped) {
  const uint64_t one = SameSize(1, "a", 'x')[0].ByteSizeLong();
  static const struct {
    const char* name;
    char tag;  // The durable spool remembers acknowledged ids across cases.
    uint64_t max_observations;
    uint64_t max_bytes_in_observations;  // Multiples of one observation's size.
  } kCases[] = {{"observations", 'o', 4, 1000}, {"bytes", 'b', 1000, 4}};
  for (const auto& c : kCases) {
    SCOPED_TRACE(c.name);
    SpoolOptions options;
    options.when_full = SpoolWhenFull::kDropOldest;
    options.max_observations = c.max_observations;
    options.max_bytes = c.max_bytes_in_observations * one;
    std::unique_ptr<Spool> spool = this->Open(options);
    ASSERT_NE(spool, nullptr);
    const uint64_t base = spool->LastSequence();
    ASSERT_TRUE(spool->Append(SameSize(3, "a", c.tag)).ok());
    // Two more fit once the oldest one is gone; numbering goes on.
    EXPECT_EQ(*spool->Append(SameSize(2, "b", c.tag)), base + 4);
    EXPECT_EQ(spool->DroppedOldest(), 1u);
    EXPECT_EQ(spool->Depth(), 4u);
    EXPECT_EQ(spool->Bytes(), 4 * one);
    EXPECT_EQ(Keys(*spool), (std::vector<std::string>{"a1", "a2", "b0", "b1"}));
    // A sender reading from an acknowledged-or-dropped number gets the
    // oldest one kept.
    EXPECT_EQ(Sequences(*spool, base + 1, 2), (std::vector<uint64_t>{base + 2, base + 3}));
    // The dropped observation's id is forgotten: sent again, it is new data.
    absl::StatusOr<AppendResult> again = spool->AppendBatch(SameSize(1, "a", c.tag), nullptr);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->stored, 1u);
    EXPECT_EQ(again->duplicates, 0u);
    EXPECT_EQ(spool->DroppedOldest(), 2u);
    EXPECT_EQ(Keys(*spool), (std::vector<std::string>{"a2", "b0", "b1", "a0"}));
    // More than the whole bound is refused, and nothing is dropped for it.
    absl::StatusOr<uint64_t> too_big = spool->Append(SameSize(5, "c", c.tag));
    ASSERT_FALSE(too_big.ok());
    EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(spool->Depth(), 4u);
    EXPECT_EQ(spool->DroppedOldest(), 2u);
    ASSERT_TRUE(spool->Acknowledge(spool->LastSequence()).ok());
    EXPECT_EQ(spool->Depth(), 0u);
    EXPECT_EQ(spool->Bytes(), 0u);
    spool.reset();
  }
}

TEST(SpoolWhenFullTest, RefuseIsTheDefaultAndTheConfigSpellingsParse) {
  EXPECT_EQ(SpoolOptions().when_full, SpoolWhenFull::kRefuse);
  static const struct {
    const char* text;
    bool ok;
    SpoolWhenFull want;
  } kCases[] = {{"refuse", true, SpoolWhenFull::kRefuse},
                {"drop_oldest", true, SpoolWhenFull::kDropOldest},
                {"drop-oldest", false, SpoolWhenFull::kRefuse},
                {"", false, SpoolWhenFull::kRefuse}};
  for (const auto& c : kCases) {
    absl::StatusOr<SpoolWhenFull> got = ParseSpoolWhenFull(c.text);
    EXPECT_EQ(got.ok(), c.ok) << c.text;
    if (got.ok()) {
      EXPECT_EQ(*got, c.want) << c.text;
    } else {
      EXPECT_THAT(std::string(got.status().message()), HasSubstr("refuse or drop_oldest"));
    }
  }
}

TYPED_TEST(SpoolContractTest, OldestUnacknowledgedAge) {
  std::unique_ptr<Spool> spool = this->Open();
  ASSERT_NE(spool, nullptr);
  EXPECT_EQ(spool->OldestUnacknowledgedAge(), absl::ZeroDuration());
  ASSERT_TRUE(spool->Append(Make(1)).ok());
  this->now_ += absl::Seconds(10);
  ASSERT_TRUE(spool->Append(Make(1)).ok());
  this->now_ += absl::Seconds(5);
  EXPECT_EQ(spool->OldestUnacknowledgedAge(), absl::Seconds(15));
  ASSERT_TRUE(spool->Acknowledge(1).ok());
  EXPECT_EQ(spool->OldestUnacknowledgedAge(), absl::Seconds(5));
  ASSERT_TRUE(spool->Acknowledge(2).ok());
  EXPECT_EQ(spool->OldestUnacknowledgedAge(), absl::ZeroDuration());
}

TYPED_TEST(SpoolContractTest, ConcurrentAppendsGetDistinctConsecutiveNumbers) {
  std::unique_ptr<Spool> spool = this->Open();
  ASSERT_NE(spool, nullptr);
  constexpr int kThreads = 4;
  constexpr int kAppends = 25;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&spool] {
      for (int i = 0; i < kAppends; ++i) ASSERT_TRUE(spool->Append(Make(2)).ok());
    });
  }
  for (std::thread& t : threads) t.join();
  constexpr size_t kTotal = kThreads * kAppends * 2;
  EXPECT_EQ(spool->LastSequence(), kTotal);
  std::vector<uint64_t> seqs = Sequences(*spool, 1, kTotal);
  ASSERT_EQ(seqs.size(), kTotal);
  for (size_t i = 0; i < seqs.size(); ++i) EXPECT_EQ(seqs[i], i + 1);
}

TYPED_TEST(SpoolContractTest, IdsAreStoredOnceAndAcknowledgedAgain) {
  SpoolOptions options;
  options.idempotency_window = absl::Hours(24);
  std::unique_ptr<Spool> spool = this->Open(options);
  ASSERT_NE(spool, nullptr);
  static const struct {
    const char* what;
    std::vector<std::string> ids;
    absl::Duration advance;  // Clock moved before the append.
    uint64_t acknowledge;    // Watermark acknowledged before the append (0: none).
    uint64_t first_sequence;
    uint64_t stored;
    uint64_t duplicates;
  } kSteps[] = {
      {"new ids, one without", {"a", "b", ""}, absl::ZeroDuration(), 0, 1, 3, 0},
      {"a retry", {"a", "b"}, absl::ZeroDuration(), 0, 4, 0, 2},
      {"same id twice in one call", {"c", "c", ""}, absl::ZeroDuration(), 0, 4, 2, 1},
      {"acknowledged and deleted, within the window", {"a", "c", "d"}, absl::Hours(1), 5, 6, 1, 2},
      {"past the window: new again", {"a", "d"}, absl::Hours(25), 6, 7, 1, 1},
  };
  for (const auto& step : kSteps) {
    SCOPED_TRACE(step.what);
    this->now_ += step.advance;
    if (step.acknowledge > 0) {
      ASSERT_TRUE(spool->Acknowledge(step.acknowledge).ok());
    }
    absl::StatusOr<AppendResult> r = spool->AppendBatch(WithIds(step.ids), nullptr);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->first_sequence, step.first_sequence);
    EXPECT_EQ(r->stored, step.stored);
    EXPECT_EQ(r->duplicates, step.duplicates);
    EXPECT_FALSE(r->earlier_answer.has_value());
  }
  // At the last step "d" had just been acknowledged (a duplicate) while "a"
  // had been forgotten (stored again).
  EXPECT_EQ(spool->LastSequence(), 7u);
}

TYPED_TEST(SpoolContractTest, DuplicatesDoNotCountAgainstTheBound) {
  SpoolOptions options;
  options.max_observations = 2;
  std::unique_ptr<Spool> spool = this->Open(options);
  ASSERT_NE(spool, nullptr);
  ASSERT_TRUE(spool->AppendBatch(WithIds({"a", "b"}), nullptr).ok());
  absl::StatusOr<AppendResult> r = spool->AppendBatch(WithIds({"a", "b"}), nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->duplicates, 2u);
  // A new one among them does not fit: nothing is stored.
  r = spool->AppendBatch(WithIds({"a", "e"}), nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(spool->Depth(), 2u);
}

TYPED_TEST(SpoolContractTest, RequestKeysAreAnsweredOnce) {
  SpoolOptions options;
  options.idempotency_window = absl::Hours(1);
  std::unique_ptr<Spool> spool = this->Open(options);
  ASSERT_NE(spool, nullptr);
  EXPECT_EQ(*spool->LookupRequest("r1"), std::nullopt);
  const RememberRequest first{"r1", RequestAnswer{200, R"({"accepted":2})", "/v1/observations 42"}};
  absl::StatusOr<AppendResult> r = spool->AppendBatch(Make(2), &first);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stored, 2u);
  EXPECT_FALSE(r->earlier_answer.has_value());

  absl::StatusOr<std::optional<RequestAnswer>> found = spool->LookupRequest("r1");
  ASSERT_TRUE(found.ok() && found->has_value());
  EXPECT_EQ((*found)->status, 200);
  EXPECT_EQ((*found)->body, R"({"accepted":2})");
  EXPECT_EQ((*found)->fingerprint, "/v1/observations 42");

  // A second append under the same key stores nothing and gets the first answer.
  const RememberRequest again{"r1", RequestAnswer{400, "other", ""}};
  r = spool->AppendBatch(Make(3), &again);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stored, 0u);
  ASSERT_TRUE(r->earlier_answer.has_value());
  EXPECT_EQ(r->earlier_answer->body, R"({"accepted":2})");
  EXPECT_EQ(spool->Depth(), 2u);

  // An empty request is remembered too (all items refused, say).
  const RememberRequest empty{"r2", RequestAnswer{400, "refused", ""}};
  ASSERT_TRUE(spool->AppendBatch({}, &empty).ok());
  EXPECT_EQ((*spool->LookupRequest("r2"))->body, "refused");

  // Past the window the key is forgotten (also once pruned by an ack).
  this->now_ += absl::Hours(2);
  EXPECT_EQ(*spool->LookupRequest("r1"), std::nullopt);
  ASSERT_TRUE(spool->Acknowledge(1).ok());
  r = spool->AppendBatch(Make(1), &again);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stored, 1u);
  EXPECT_FALSE(r->earlier_answer.has_value());
}

// What only the durable spool does.
class SqliteSpoolTest : public ::testing::Test {
 protected:
  absl::StatusOr<std::unique_ptr<SqliteSpool>> Open(SpoolOptions options = {}) {
    options.now = [this] { return now_; };
    return SqliteSpool::Open(path_, options);
  }

  TempDir dir_;
  const std::string path_ = dir_.File("spool.db");
  absl::Time now_ = absl::FromUnixSeconds(1'700'000'000);
};

TEST_F(SqliteSpoolTest, ReopenKeepsIncarnationNumberingAndUnacknowledgedRows) {
  uint64_t incarnation = 0;
  {
    auto spool = Open();
    ASSERT_TRUE(spool.ok()) << spool.status();
    incarnation = (*spool)->incarnation();
    ASSERT_TRUE((*spool)->Append(Make(5, "a")).ok());
    ASSERT_TRUE((*spool)->Acknowledge(2).ok());
    now_ += absl::Seconds(30);
  }
  {
    auto spool = Open();
    ASSERT_TRUE(spool.ok()) << spool.status();
    EXPECT_EQ((*spool)->incarnation(), incarnation);
    EXPECT_EQ((*spool)->LastSequence(), 5u);
    EXPECT_EQ((*spool)->Depth(), 3u);
    EXPECT_EQ(Sequences(**spool, 1, 10), (std::vector<uint64_t>{3, 4, 5}));
    EXPECT_EQ(Keys(**spool), (std::vector<std::string>{"a2", "a3", "a4"}));
    uint64_t bytes = 0;
    for (const v1::Observation& o : Make(5, "a")) bytes += o.ByteSizeLong();
    bytes -= Make(5, "a")[0].ByteSizeLong() + Make(5, "a")[1].ByteSizeLong();
    EXPECT_EQ((*spool)->Bytes(), bytes);
    EXPECT_EQ((*spool)->OldestUnacknowledgedAge(), absl::Seconds(30));
    // Everything acknowledged and deleted: numbering still continues.
    ASSERT_TRUE((*spool)->Acknowledge(5).ok());
  }
  auto spool = Open();
  ASSERT_TRUE(spool.ok()) << spool.status();
  EXPECT_EQ((*spool)->incarnation(), incarnation);
  EXPECT_EQ((*spool)->Depth(), 0u);
  EXPECT_EQ(*(*spool)->Append(Make(1)), 6u);
}

TEST_F(SqliteSpoolTest, ReopenRemembersIdsAndRequestKeys) {
  const RememberRequest request{"req", RequestAnswer{200, "ok", "/v1/checklists 7"}};
  {
    auto spool = Open();
    ASSERT_TRUE(spool.ok()) << spool.status();
    ASSERT_TRUE((*spool)->AppendBatch(WithIds({"a", "b"}), &request).ok());
    ASSERT_TRUE((*spool)->Acknowledge(1).ok());  // "a" delivered, "b" waiting.
  }
  auto spool = Open();
  ASSERT_TRUE(spool.ok()) << spool.status();
  absl::StatusOr<AppendResult> r = (*spool)->AppendBatch(WithIds({"a", "b", "c"}), nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stored, 1u);
  EXPECT_EQ(r->duplicates, 2u);
  EXPECT_EQ(r->first_sequence, 3u);
  r = (*spool)->AppendBatch(Make(1), &request);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->earlier_answer.has_value());
  EXPECT_EQ(r->earlier_answer->body, "ok");
  EXPECT_EQ(r->earlier_answer->fingerprint, "/v1/checklists 7");
}

// A spool written before requests had a fingerprint: the column is added
// on open, its remembered answers replay (no fingerprint to compare), and
// new ones keep theirs.
TEST_F(SqliteSpoolTest, ASpoolWithoutRequestFingerprintsGetsTheColumn) {
  { ASSERT_TRUE(Open().ok()); }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  const std::string old = absl::StrCat(
      "ALTER TABLE requests DROP COLUMN fingerprint;"
      "INSERT INTO requests(key, status, body, created_at) VALUES('old', 200, 'then', ",
      absl::ToUnixNanos(now_), ");");
  char* error = nullptr;
  EXPECT_EQ(sqlite3_exec(db, old.c_str(), nullptr, nullptr, &error), SQLITE_OK) << error;
  sqlite3_free(error);
  sqlite3_close(db);

  auto spool = Open();
  ASSERT_TRUE(spool.ok()) << spool.status();
  absl::StatusOr<std::optional<RequestAnswer>> found = (*spool)->LookupRequest("old");
  ASSERT_TRUE(found.ok() && found->has_value()) << found.status();
  EXPECT_EQ((*found)->body, "then");
  EXPECT_EQ((*found)->fingerprint, "");
  const RememberRequest request{"new", RequestAnswer{200, "now", "/v1/observations 9"}};
  ASSERT_TRUE((*spool)->AppendBatch(Make(1), &request).ok());
  found = (*spool)->LookupRequest("new");
  ASSERT_TRUE(found.ok() && found->has_value()) << found.status();
  EXPECT_EQ((*found)->fingerprint, "/v1/observations 9");
}

TEST_F(SqliteSpoolTest, AWipedFileIsANewIncarnation) {
  uint64_t first = 0;
  {
    auto spool = Open();
    ASSERT_TRUE(spool.ok()) << spool.status();
    first = (*spool)->incarnation();
    ASSERT_TRUE((*spool)->Append(Make(3)).ok());
  }
  std::filesystem::remove(path_);
  std::filesystem::remove(path_ + "-wal");
  auto spool = Open();
  ASSERT_TRUE(spool.ok()) << spool.status();
  EXPECT_NE((*spool)->incarnation(), 0u);
  EXPECT_NE((*spool)->incarnation(), first);
  EXPECT_EQ((*spool)->Depth(), 0u);
  EXPECT_EQ(*(*spool)->Append(Make(1)), 1u);
}

TEST_F(SqliteSpoolTest, OpenFailsClearlyOnABadFile) {
  static const struct {
    const char* what;
    std::string content;
    absl::StatusCode code;
    const char* message;
  } kCases[] = {
      {"garbage", std::string(8192, 'x'), absl::StatusCode::kDataLoss, "move it aside"},
      {"sqlite header, garbage after",
       std::string("SQLite format 3\0", 16) + std::string(4080, '\xff'),
       absl::StatusCode::kDataLoss, "move it aside"},
  };
  for (const auto& c : kCases) {
    SCOPED_TRACE(c.what);
    {
      std::ofstream out(path_, std::ios::binary | std::ios::trunc);
      out << c.content;
    }
    auto spool = Open();
    ASSERT_FALSE(spool.ok());
    EXPECT_EQ(spool.status().code(), c.code) << spool.status();
    EXPECT_THAT(std::string(spool.status().message()), HasSubstr(path_));
    EXPECT_THAT(std::string(spool.status().message()), HasSubstr(c.message));
  }
  // A directory that does not exist.
  auto spool = SqliteSpool::Open(dir_.File("no/such/dir/spool.db"), SpoolOptions{});
  ASSERT_FALSE(spool.ok());
  EXPECT_THAT(std::string(spool.status().message()), HasSubstr("no/such/dir/spool.db"));
}

TEST_F(SqliteSpoolTest, ASecondOpenOfTheSameFileIsRefused) {
  auto first = Open();
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = Open();
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("another constance-agent"));
  // The first one still works.
  EXPECT_EQ(*(*first)->Append(Make(1)), 1u);
}

// A write the file system refuses (here: over RLIMIT_FSIZE, which fails
// like a full disk does, mid-transaction) is a clear error naming the path;
// the spool is unchanged and works again once writes succeed.
TEST_F(SqliteSpoolTest, AFailedWriteIsAnErrorAndLeavesTheSpoolAsItWas) {
  auto spool = Open();
  ASSERT_TRUE(spool.ok()) << spool.status();
  ASSERT_TRUE((*spool)->Append(Make(3)).ok());
  const uint64_t bytes = (*spool)->Bytes();

  rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct sigaction ignore {
  }, old_action{};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGXFSZ, &ignore, &old_action), 0);
  rlimit small = old_limit;
  small.rlim_cur = 64 << 10;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  std::vector<v1::Observation> big = Make(200);
  for (v1::Observation& o : big) o.set_id(std::string(2000, 'x') + o.key());
  absl::StatusOr<uint64_t> refused = (*spool)->Append(std::move(big));
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
  ASSERT_EQ(sigaction(SIGXFSZ, &old_action, nullptr), 0);

  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::IsUnavailable(refused.status()) || absl::IsResourceExhausted(refused.status()))
      << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr(path_));
  EXPECT_EQ((*spool)->Depth(), 3u);
  EXPECT_EQ((*spool)->Bytes(), bytes);
  EXPECT_EQ((*spool)->LastSequence(), 3u);
  EXPECT_EQ(*(*spool)->Append(Make(1)), 4u);
  spool->reset();
  spool = Open();
  ASSERT_TRUE(spool.ok()) << spool.status();
  EXPECT_EQ(Sequences(**spool, 1, 10), (std::vector<uint64_t>{1, 2, 3, 4}));
}

// The child appends batches until killed and reports the running total
// after each append that returned OK; the parent SIGKILLs it at a random
// point while it keeps appending (so mid-transaction as well as between
// appends). Everything reported must be there after reopening, in order,
// numbered 1, 2, 3..., and nothing of a batch that was not committed.
TEST_F(SqliteSpoolTest, SurvivesSigkillAtARandomPoint) {
  auto batch_size = [](uint64_t i) { return 1 + static_cast<int>(i % 5); };
  std::mt19937 rng(std::random_device{}());
  const int kill_after = std::uniform_int_distribution<int>(1, 200)(rng);
  SCOPED_TRACE("killed after " + std::to_string(kill_after) + " reports");

  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    auto spool = SqliteSpool::Open(path_, SpoolOptions{});
    if (!spool.ok()) _exit(2);
    uint64_t total = 0;
    for (uint64_t i = 0;; ++i) {  // Until killed.
      std::vector<v1::Observation> batch(batch_size(i));
      for (size_t j = 0; j < batch.size(); ++j) {
        batch[j].set_key("o" + std::to_string(total + j));
        batch[j].set_score(1);
      }
      if (!(*spool)->Append(std::move(batch)).ok()) _exit(3);
      total += batch_size(i);
      if (write(fds[1], &total, sizeof(total)) != sizeof(total)) _exit(4);
    }
  }
  close(fds[1]);
  uint64_t reported = 0;
  int reports = 0;
  uint64_t value = 0;
  while (read(fds[0], &value, sizeof(value)) == sizeof(value)) {
    reported = value;
    if (++reports == kill_after) kill(pid, SIGKILL);
  }
  close(fds[0]);
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL)
      << "the child ended otherwise: status " << wstatus;
  ASSERT_GT(reported, 0u);

  auto spool = Open();
  ASSERT_TRUE(spool.ok()) << spool.status();
  const uint64_t last = (*spool)->LastSequence();
  // At least what was reported; perhaps a batch more (committed, not yet
  // reported), never part of a batch.
  EXPECT_GE(last, reported);
  EXPECT_EQ((*spool)->Depth(), last);
  std::set<uint64_t> batch_ends;
  for (uint64_t i = 0, end = 0; end <= last; ++i) batch_ends.insert(end += batch_size(i));
  EXPECT_EQ(batch_ends.count(last), 1u) << last << " is in the middle of a batch";
  absl::StatusOr<std::vector<SpoolEntry>> all = (*spool)->Read(1, 1'000'000);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), last);
  for (size_t i = 0; i < all->size(); ++i) {
    ASSERT_EQ((*all)[i].sequence, i + 1);
    ASSERT_EQ((*all)[i].observation.key(), "o" + std::to_string(i));
  }
  EXPECT_EQ(*(*spool)->Append(Make(1)), last + 1);
}

}  // namespace
}  // namespace constance::agent
