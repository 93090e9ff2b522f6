// Snapshots: an engine restored from another's state carries on exactly as
// the original would have (findings with their start times, trust, drift,
// high-water marks), and the batch log compacts what a snapshot covers
// without ever reusing a position.
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "collector/batch_log.h"
#include "collector/engine.h"
#include "constance/state/v1/engine_state.pb.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace constance::collector {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1'767'225'600);  // 2026-01-01T00:00:00Z

std::string Store(int i) { return absl::StrFormat("store-%02d", i); }

// An engine on an injected clock, fed the way agents feed it.
class Chain {
 public:
  explicit Chain(std::shared_ptr<absl::Time> now) : now_(std::move(now)) {
    Engine::Options options;
    options.limits.max_lateness = absl::Hours(24 * 365);
    auto clock = now_;
    options.clock = [clock] { return *clock; };
    engine_ = std::make_unique<Engine>(std::move(options));
  }
  v1::Ack Send(const std::string& location, uint64_t first, std::vector<v1::Observation> obs) {
    v1::Batch batch;
    batch.set_location(location);
    batch.set_incarnation(7);
    batch.set_first_sequence(first);
    for (auto& o : obs) *batch.add_observations() = std::move(o);
    absl::StatusOr<v1::Ack> ack = engine_->ApplyBatch(batch);
    EXPECT_TRUE(ack.ok()) << ack.status();
    return ack.ok() ? *ack : v1::Ack();
  }
  v1::Observation Price(const std::string& key, int64_t minor) const {
    v1::Observation o;
    o.set_key(key);
    o.mutable_price()->set_minor_units(minor);
    o.mutable_price()->set_currency("EUR");
    o.mutable_observed_at()->set_seconds(absl::ToUnixSeconds(*now_));
    return o;
  }
  v1::Observation Wait(const std::string& key, double seconds) const {
    v1::Observation o;
    o.set_key(key);
    o.set_wait_seconds(seconds);
    o.mutable_observed_at()->set_seconds(absl::ToUnixSeconds(*now_));
    return o;
  }
  Engine& engine() { return *engine_; }

 private:
  std::shared_ptr<absl::Time> now_;
  std::unique_ptr<Engine> engine_;
};

// Round `round` of a chain of 12 stores: store 03 overcharges coffee,
// everybody reports waits, store 05's creep up round after round.
void Feed(Chain& chain, int round) {
  for (int i = 0; i < 12; ++i) {
    std::vector<v1::Observation> obs;
    obs.push_back(chain.Price("coffee", i == 3 ? 499 : 449));
    for (int t = 0; t < 40; ++t) {
      obs.push_back(chain.Wait("checkout", 170 + i + (t % 5) + (i == 5 ? round * 0.8 : 0)));
    }
    chain.Send(Store(i), 1 + static_cast<uint64_t>(round) * 41, std::move(obs));
  }
}

struct Seen {
  std::map<std::string, std::pair<int64_t, std::string>> findings;  // id -> (start, kind+reasons)
  std::map<std::string, double> trust;
};

Seen Look(Engine& engine) {
  Seen seen;
  auto findings = engine.snapshot()->findings;
  for (const v1::Finding& f : findings->active) {
    std::string reasons;
    for (const v1::Reason& r : f.reasons()) reasons += r.detail() + ";";
    seen.findings[f.id()] = {f.started_at().seconds(), absl::StrFormat("%d %s", f.kind(), reasons)};
  }
  for (const auto& t : findings->trust) seen.trust[t.location] = t.balance;
  return seen;
}

TEST(EngineStateTest, ARestoredEngineCarriesOnExactlyAsTheOriginal) {
  auto now = std::make_shared<absl::Time>(kStart);
  Chain original(now);
  std::unique_ptr<Chain> restored;
  for (int round = 0; round < 40; ++round) {
    *now += absl::Minutes(5);
    Feed(original, round);
    if (restored != nullptr) Feed(*restored, round);
    original.engine().Evaluate();
    if (restored != nullptr) restored->engine().Evaluate();
    if (round == 20) {
      // Mid-way: findings are open, baselines frozen, trust moving.
      ASSERT_FALSE(Look(original.engine()).findings.empty());
      restored = std::make_unique<Chain>(now);
      ASSERT_TRUE(restored->engine().LoadState(original.engine().SaveState()).ok());
    }
    if (restored != nullptr && round > 20) {
      Seen a = Look(original.engine());
      Seen b = Look(restored->engine());
      ASSERT_EQ(a.findings, b.findings) << "round " << round;
      ASSERT_EQ(a.trust, b.trust) << "round " << round;
    }
  }
  Seen last = Look(restored->engine());
  // The overcharge opened before the restore and kept its start time; the
  // creeping store's drift was found after it, from restored baselines.
  bool overcharge = false, drift = false;
  for (const auto& [id, f] : last.findings) {
    if (id.find("store-03") != std::string::npos) {
      overcharge = true;
      EXPECT_LT(f.first, absl::ToUnixSeconds(kStart + absl::Minutes(5 * 21)));
    }
    if (id.find("store-05") != std::string::npos) drift = true;
  }
  EXPECT_TRUE(overcharge);
  EXPECT_TRUE(drift);
  EXPECT_LT(last.trust["store-03"], 0);

  // High-water marks came along: a resent batch is a duplicate.
  v1::Ack ack = restored->Send(Store(0), 1, {restored->Price("coffee", 449)});
  EXPECT_EQ(ack.duplicates(), 1u);
}

TEST(EngineStateTest, ACaptureIsTheStateAtItsBeginWhateverIsAppliedMeanwhile) {
  auto now = std::make_shared<absl::Time>(kStart);
  Chain chain(now);
  for (int round = 0; round < 6; ++round) {
    *now += absl::Minutes(5);
    Feed(chain, round);
    chain.engine().Evaluate();
  }
  // A series nothing changes during the capture: copied by FinishCapture.
  chain.Send(Store(0), 6 * 41 + 1, {chain.Price("milk", 129)});
  const std::string reference = chain.engine().SaveState();
  std::shared_ptr<Engine::StateCapture> capture = chain.engine().PrepareCapture();
  chain.engine().BeginCapture(capture);
  // Changes to cells of every other series (each kept as it was before it
  // changes), a new cell in one, a new series and a new location (neither
  // in the capture), new counters and high-water marks.
  Feed(chain, 6);
  chain.Send(Store(1), 7 * 41 + 1, {chain.Price("tea", 199), chain.Price("coffee", 459)});
  chain.Send(Store(20), 1, {chain.Price("coffee", 449)});
  const std::string captured = chain.engine().FinishCapture(capture);
  EXPECT_NE(chain.engine().SaveState().size(), captured.size());

  state::v1::EngineState want, got;
  ASSERT_TRUE(want.ParseFromString(reference));
  ASSERT_TRUE(got.ParseFromString(captured));
  google::protobuf::util::MessageDifferencer diff;
  diff.set_repeated_field_comparison(google::protobuf::util::MessageDifferencer::AS_SET);
  std::string report;
  diff.ReportDifferencesToString(&report);
  EXPECT_TRUE(diff.Compare(want, got)) << report;
  EXPECT_EQ(got.series_size(), 3);  // coffee, checkout, milk; not tea.
}

TEST(EngineStateTest, AnUnreadableSnapshotIsRefusedAndChangesNothing) {
  auto now = std::make_shared<absl::Time>(kStart);
  Chain chain(now);
  Feed(chain, 0);
  chain.engine().Recompute();
  const uint64_t before = chain.engine().snapshot()->cells;
  absl::Status s = chain.engine().LoadState("not a snapshot at all");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("engine snapshot"), std::string::npos) << s;
  // A snapshot of a newer format (golden_state_test.cc has the message)
  // and of a format no release wrote.
  Chain other(now);
  std::string state = other.engine().SaveState();
  state[1] = 99;  // Field 1 (format) is the first varint.
  EXPECT_EQ(chain.engine().LoadState(state).code(), absl::StatusCode::kFailedPrecondition);
  state[1] = 0;
  EXPECT_EQ(chain.engine().LoadState(state).code(), absl::StatusCode::kInvalidArgument);
  chain.engine().Recompute();
  EXPECT_EQ(chain.engine().snapshot()->cells, before);
  v1::Ack ack = chain.Send(Store(0), 1, {chain.Price("coffee", 449)});
  EXPECT_EQ(ack.duplicates(), 1u);
}

// A temporary directory removed at the end.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/constance-state-test.XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::system(("rm -rf " + path_).c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Appends `n` batches (first sequences from `first`, `observations` prices
// each) and waits until each has been committed and "applied".
void AppendAndWait(BatchLog& log, uint64_t first, int n, std::vector<uint64_t>* applied,
                   absl::Mutex* mu, int observations = 0) {
  for (int i = 0; i < n; ++i) {
    v1::Batch b;
    b.set_location("store-01");
    b.set_incarnation(1);
    b.set_first_sequence(first + i);
    for (int k = 0; k < observations; ++k) {
      v1::Observation* o = b.add_observations();
      o->set_key(absl::StrFormat("sku-%06d", k));
      o->mutable_price()->set_minor_units(1000 + k);
      o->mutable_price()->set_currency("EUR");
    }
    // The log borrows the bytes until the callback has run: it holds them.
    auto bytes = std::make_shared<const std::string>(b.SerializeAsString());
    log.Append(*bytes, kStart, [applied, mu, seq = first + i, bytes](absl::Status s) {
      ASSERT_TRUE(s.ok()) << s;
      absl::MutexLock lock(mu);
      applied->push_back(seq);
    });
  }
  absl::MutexLock lock(mu);
  auto done = [applied, first, n] {
    return !applied->empty() && applied->back() == first + n - 1;
  };
  ASSERT_TRUE(mu->AwaitWithTimeout(absl::Condition(&done), absl::Seconds(30)));
}

// A snapshot whose state names the batches applied when its Begin ran;
// `finish`, if set, runs in its Finish step first.
BatchLog::Prepare CountingCapture(std::vector<uint64_t>* applied, absl::Mutex* mu, int* captures,
                                  std::function<void(size_t)> finish = nullptr) {
  return [=]() -> BatchLog::Begin {
    return [=]() -> BatchLog::Finish {
      size_t at = 0;
      {
        absl::MutexLock lock(mu);
        ++*captures;
        at = applied->size();
      }
      return [=] {
        if (finish) finish(at);
        return absl::StrFormat("state after %d batches", at);
      };
    };
  };
}

TEST(BatchLogTest, ASnapshotCompactsTheLogAndPositionsAreNeverReused) {
  TempDir dir;
  const std::string path = dir.path() + "/batches.db";
  absl::Mutex mu;
  std::vector<uint64_t> applied;
  int captures = 0;
  {
    absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path);
    ASSERT_TRUE(log.ok()) << log.status();
    EXPECT_TRUE(absl::IsNotFound((*log)->LoadSnapshot().status()));
    (*log)->SetCheckpoint(absl::InfiniteDuration(), CountingCapture(&applied, &mu, &captures));
    (*log)->Start();
    AppendAndWait(**log, 1, 5, &applied, &mu);
  }  // A clean shutdown snapshots.
  EXPECT_EQ(captures, 1);
  {
    absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path);
    ASSERT_TRUE(log.ok()) << log.status();
    absl::StatusOr<BatchLog::Snapshot> snap = (*log)->LoadSnapshot();
    ASSERT_TRUE(snap.ok()) << snap.status();
    EXPECT_EQ(snap->state, "state after 5 batches");
    EXPECT_EQ(snap->through, 5);
    int replayed = 0;
    ASSERT_TRUE((*log)->Replay([&](const v1::Batch&, absl::Time) { ++replayed; }, 0).ok());
    EXPECT_EQ(replayed, 0);  // Compacted away.
    // No checkpoint now: these stay in the log, after the snapshot.
    (*log)->Start();
    AppendAndWait(**log, 6, 3, &applied, &mu);
  }  // Killed or not, the snapshot still covers the first 5 only.
  {
    absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path);
    ASSERT_TRUE(log.ok()) << log.status();
    absl::StatusOr<BatchLog::Snapshot> snap = (*log)->LoadSnapshot();
    ASSERT_TRUE(snap.ok());
    std::vector<uint64_t> replayed;
    ASSERT_TRUE((*log)
                    ->Replay([&](const v1::Batch& b, absl::Time) { replayed.push_back(b.first_sequence()); },
                             snap->through)
                    .ok());
    EXPECT_EQ(replayed, (std::vector<uint64_t>{6, 7, 8}));
  }
}

TEST(BatchLogTest, AcksKeepFlowingWhileASnapshotIsBeingTaken) {
  TempDir dir;
  const std::string path = dir.path() + "/batches.db";
  absl::Mutex mu;
  std::vector<uint64_t> applied;
  int captures = 0;
  absl::Notification finishing, release;
  std::atomic<bool> held{false};
  size_t held_at = 0;
  {
    absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path);
    ASSERT_TRUE(log.ok()) << log.status();
    // A snapshot every millisecond; the first begun after 5 batches is held
    // in its Finish step (serializing, as a large one takes seconds).
    (*log)->SetCheckpoint(absl::Milliseconds(1),
                          CountingCapture(&applied, &mu, &captures, [&](size_t at) {
                            if (at < 5 || held.exchange(true)) return;
                            held_at = at;
                            finishing.Notify();
                            release.WaitForNotification();
                          }));
    (*log)->Start();
    AppendAndWait(**log, 1, 5, &applied, &mu);
    finishing.WaitForNotification();
    const uint64_t stored = (*log)->checkpoint_stats().snapshots;
    // Committed, applied and acknowledged while the snapshot is held.
    AppendAndWait(**log, 6, 20, &applied, &mu);
    EXPECT_EQ((*log)->committed(), 25u);
    EXPECT_EQ((*log)->checkpoint_stats().snapshots, stored);  // Not stored yet.
    release.Notify();
    // Stored once finished, between two commits (a poll with a deadline).
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while ((*log)->checkpoint_stats().snapshots == stored && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    EXPECT_GT((*log)->checkpoint_stats().snapshots, stored);
  }  // A clean shutdown snapshots after the last batch.

  // Begun after batch 5: the 20 after it were acknowledged while it was held.
  EXPECT_EQ(held_at, 5u);
  absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path);
  ASSERT_TRUE(log.ok()) << log.status();
  absl::StatusOr<BatchLog::Snapshot> snap = (*log)->LoadSnapshot();
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_EQ(snap->state, absl::StrFormat("state after %d batches", applied.size()));
  EXPECT_EQ(snap->through, static_cast<int64_t>(applied.size()));
}

TEST(BatchLogTest, ASecondCollectorOnTheSameLogIsRefusedSayingWhy) {
  TempDir dir;
  const std::string path = dir.path() + "/batches.db";
  {
    absl::StatusOr<std::unique_ptr<BatchLog>> first = BatchLog::Open(path);
    ASSERT_TRUE(first.ok()) << first.status();
    absl::StatusOr<std::unique_ptr<BatchLog>> second = BatchLog::Open(path);
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_TRUE(absl::StrContains(second.status().message(), path)) << second.status();
    EXPECT_TRUE(absl::StrContains(second.status().message(), "another collector"))
        << second.status();
  }
  // The lock goes with its holder (the kernel's, so also when killed).
  EXPECT_TRUE(BatchLog::Open(path).ok());
}

// The WAL is copied into the database file beside the commits, never
// grows far past its bound, and nothing in it is lost on the way.
TEST(BatchLogTest, TheWalIsCopiedInBesideTheCommitsAndStaysBounded) {
  TempDir dir;
  const std::string path = dir.path() + "/batches.db";
  BatchLog::Options options;
  options.wal_checkpoint_pages = 8;
  options.wal_restart_pages = 40;
  constexpr int kBatches = 60;
  constexpr int kObservations = 300;  // About 9 KB, 3 pages, a batch.
  absl::Mutex mu;
  std::vector<uint64_t> applied;
  off_t largest_wal = 0;
  {
    absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path, options);
    ASSERT_TRUE(log.ok()) << log.status();
    (*log)->Start();
    for (int i = 0; i < kBatches; ++i) {
      // One batch per commit: the WAL grows by a few pages at a time.
      AppendAndWait(**log, i + 1, 1, &applied, &mu, kObservations);
      struct stat st {};
      if (stat((path + "-wal").c_str(), &st) == 0) largest_wal = std::max(largest_wal, st.st_size);
    }
    const BatchLog::CommitStats stats = (*log)->commit_stats();
    // Every page written would make a WAL of about 200 pages. Either the
    // checkpointer let SQLite restart it, or restarted it at its bound.
    EXPECT_GE(stats.wal_checkpoints + stats.wal_restarts, 1u);
    EXPECT_LE(stats.wal_pages, 40u + 16u);
  }
  // Page and frame header (4096 + 24 bytes) each, behind a 32-byte header.
  EXPECT_LE(largest_wal, (40 + 16) * (4096 + 24) + 32);
  absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path);
  ASSERT_TRUE(log.ok()) << log.status();
  std::vector<uint64_t> replayed;
  ASSERT_TRUE((*log)
                  ->Replay([&](const v1::Batch& b, absl::Time) {
                    EXPECT_EQ(b.observations_size(), kObservations);
                    replayed.push_back(b.first_sequence());
                  })
                  .ok());
  ASSERT_EQ(replayed.size(), static_cast<size_t>(kBatches));
  for (int i = 0; i < kBatches; ++i) EXPECT_EQ(replayed[i], static_cast<uint64_t>(i + 1));
}

// The snapshot files in `dir` (those of a log named batches.db), sorted.
std::vector<std::string> SnapshotFiles(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (absl::StartsWith(name, "batches.db.snapshot.")) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// One integer SQLite answers `sql` with on the database at `path`.
int64_t QueryInt(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK) << sql;
  int64_t v = -1;
  if (sqlite3_step(stmt) == SQLITE_ROW) v = sqlite3_column_int64(stmt, 0);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return v;
}

// Takes a snapshot at the log's clean stop after `n` more batches.
void SnapshotAfter(const std::string& path, uint64_t first, int n, std::vector<uint64_t>* applied,
                   absl::Mutex* mu, int* captures, BatchLog::Options options = {}) {
  absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path, std::move(options));
  ASSERT_TRUE(log.ok()) << log.status();
  (*log)->SetCheckpoint(absl::InfiniteDuration(), CountingCapture(applied, mu, captures));
  (*log)->Start();
  AppendAndWait(**log, first, n, applied, mu);
}

// The state is in a file beside the log, the log records it in a row of
// its own (no state in SQLite), and the file it replaces goes once the
// new one is recorded.
TEST(BatchLogTest, ASnapshotIsAFileBesideTheLogAndReplacesThePreviousOne) {
  TempDir dir;
  const std::string path = dir.path() + "/batches.db";
  absl::Mutex mu;
  std::vector<uint64_t> applied;
  int captures = 0;
  SnapshotAfter(path, 1, 3, &applied, &mu, &captures);
  const std::vector<std::string> first = SnapshotFiles(dir.path());
  ASSERT_EQ(first.size(), 1u);
  SnapshotAfter(path, 4, 2, &applied, &mu, &captures);
  const std::vector<std::string> second = SnapshotFiles(dir.path());
  ASSERT_EQ(second.size(), 1u) << "the first file is removed";
  EXPECT_NE(second, first);
  EXPECT_EQ(QueryInt(path, "SELECT length(state) FROM snapshot"), 0);
  EXPECT_EQ(QueryInt(path, "SELECT bytes FROM snapshot"),
            static_cast<int64_t>(std::string("state after 5 batches").size()));
  EXPECT_EQ(QueryInt(path, "PRAGMA user_version"), BatchLog::kLogFormat);
  absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path);
  ASSERT_TRUE(log.ok()) << log.status();
  absl::StatusOr<BatchLog::Snapshot> snap = (*log)->LoadSnapshot();
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_EQ(snap->state, "state after 5 batches");
  EXPECT_EQ(snap->through, 5);
  EXPECT_EQ(snap->file, dir.path() + "/" + second[0]);
}

// The batches a snapshot covers are deleted a step at a time between
// group commits, until none is left: more than one step's worth here.
TEST(BatchLogTest, ASnapshotsBatchesAreCompactedInStepsBetweenCommits) {
  TempDir dir;
  const std::string path = dir.path() + "/batches.db";
  absl::Mutex mu;
  std::vector<uint64_t> applied;
  int captures = 0;
  absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path);
  ASSERT_TRUE(log.ok()) << log.status();
  (*log)->SetCheckpoint(absl::Milliseconds(1), CountingCapture(&applied, &mu, &captures));
  (*log)->Start();
  AppendAndWait(**log, 1, 300, &applied, &mu);
  // Snapshots go on every millisecond: one soon covers all 300.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while ((*log)->checkpoint_stats().compacted_batches < 300 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));  // Polling a condition, with a deadline.
  }
  EXPECT_EQ((*log)->checkpoint_stats().compacted_batches, 300u);
  EXPECT_EQ(QueryInt(path, "SELECT count(*) FROM batches"), 0);
}

// A collector killed after a snapshot's file is written and before the
// log records it restarts from the previous snapshot and the batches
// after it; the unrecorded file (and a half-written one) are removed.
TEST(BatchLogTest, ACrashBeforeASnapshotIsRecordedLeavesThePreviousOneInForce) {
  GTEST_FLAG_SET(death_test_style, "fast");
  TempDir dir;
  const std::string path = dir.path() + "/batches.db";
  absl::Mutex mu;
  std::vector<uint64_t> applied;
  int captures = 0;
  SnapshotAfter(path, 1, 3, &applied, &mu, &captures);
  const std::vector<std::string> recorded = SnapshotFiles(dir.path());
  ASSERT_EQ(recorded.size(), 1u);
  BatchLog::Options crash;
  crash.after_snapshot_file = [](const std::string&) { _exit(42); };
  EXPECT_EXIT(SnapshotAfter(path, 4, 2, &applied, &mu, &captures, crash),
              testing::ExitedWithCode(42), "");
  ASSERT_EQ(SnapshotFiles(dir.path()).size(), 2u) << "the crash left the new file unrecorded";
  std::ofstream(dir.path() + "/batches.db.snapshot.9.9.tmp") << "half a snapshot";

  absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ(SnapshotFiles(dir.path()), recorded) << "leftovers removed at open";
  absl::StatusOr<BatchLog::Snapshot> snap = (*log)->LoadSnapshot();
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_EQ(snap->state, "state after 3 batches");
  EXPECT_EQ(snap->through, 3);
  std::vector<uint64_t> replayed;
  ASSERT_TRUE((*log)
                  ->Replay([&](const v1::Batch& b, absl::Time) { replayed.push_back(b.first_sequence()); },
                           snap->through)
                  .ok());
  EXPECT_EQ(replayed, (std::vector<uint64_t>{4, 5})) << "the batches after it, acknowledged";
}

// A snapshot file that is missing, cut short or altered is never taken
// for an empty state: loading fails naming the file and what to do.
TEST(BatchLogTest, AMissingOrCorruptSnapshotFileIsAClearError) {
  static const struct {
    const char* name;
    std::function<void(const std::string& file)> damage;
    const char* says;
  } kCases[] = {
      {"missing", [](const std::string& f) { std::filesystem::remove(f); }, "is missing"},
      {"truncated", [](const std::string& f) { std::filesystem::resize_file(f, 5); },
       "is 5 bytes, the log recorded 21"},
      {"altered",
       [](const std::string& f) { std::ofstream(f, std::ios::in | std::ios::out) << "X"; },
       "does not match the SHA-256"},
  };
  for (const auto& c : kCases) {
    SCOPED_TRACE(c.name);
    TempDir dir;
    const std::string path = dir.path() + "/batches.db";
    absl::Mutex mu;
    std::vector<uint64_t> applied;
    int captures = 0;
    SnapshotAfter(path, 1, 5, &applied, &mu, &captures);
    const std::vector<std::string> files = SnapshotFiles(dir.path());
    ASSERT_EQ(files.size(), 1u);
    const std::string file = dir.path() + "/" + files[0];
    c.damage(file);
    absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path);
    ASSERT_TRUE(log.ok()) << log.status();
    absl::StatusOr<BatchLog::Snapshot> snap = (*log)->LoadSnapshot();
    ASSERT_FALSE(snap.ok());
    EXPECT_TRUE(absl::IsDataLoss(snap.status())) << snap.status();
    EXPECT_TRUE(absl::StrContains(snap.status().message(), file)) << snap.status();
    EXPECT_TRUE(absl::StrContains(snap.status().message(), c.says)) << snap.status();
    EXPECT_TRUE(absl::StrContains(snap.status().message(), "restore the state directory"))
        << snap.status();
  }
}

}  // namespace
}  // namespace constance::collector
