#include "collector/batch_log.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "constance/sqlite.h"
#include "constance/version.h"
#include "spdlog/spdlog.h"

namespace constance::collector {
namespace {

absl::Status SqliteError(sqlite3* db, const std::string& path, absl::string_view what) {
  return absl::UnavailableError(absl::StrCat("batch log ", path, ": ", what, ": ",
                                             db != nullptr ? sqlite3_errmsg(db) : "out of memory"));
}

absl::Status Exec(sqlite3* db, const std::string& path, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    absl::Status s = absl::UnavailableError(
        absl::StrCat("batch log ", path, ": ", sql, ": ", err != nullptr ? err : "error"));
    sqlite3_free(err);
    return s;
  }
  return absl::OkStatus();
}

// The log format recorded in the database (0 for a new or a 0.1.0 log).
absl::StatusOr<int64_t> ReadLogFormat(sqlite3* db, const std::string& path) {
  sqlite::Stmt stmt;
  if (stmt.Prepare(db, "PRAGMA user_version") != SQLITE_OK) {
    return SqliteError(db, path, "cannot read its format (is it a constance batch log?)");
  }
  int64_t format = 0;
  const int rc = sqlite3_step(stmt.get());
  if (rc == SQLITE_ROW) format = sqlite3_column_int64(stmt.get(), 0);
  if (rc != SQLITE_ROW) return SqliteError(db, path, "cannot read its format");
  return format;
}

}  // namespace

absl::StatusOr<std::unique_ptr<BatchLog>> BatchLog::Open(const std::string& path, Options options) {
  // One collector per log: a second one would interleave high-water marks.
  // The lock is the kernel's, so a killed collector releases it.
  const std::string lock_path = path + ".lock";
  const int lock_fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0) {
    return absl::UnavailableError(absl::StrCat("batch log ", path, ": cannot open its lock file ",
                                               lock_path, ": ", std::strerror(errno)));
  }
  if (flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    close(lock_fd);
    if (err == EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat("batch log ", path, " is in use by another collector (it holds ", lock_path,
                       "); stop that one, or give this one its own --state_dir"));
    }
    return absl::UnavailableError(
        absl::StrCat("batch log ", path, ": cannot lock ", lock_path, ": ", std::strerror(err)));
  }
  sqlite3* db = nullptr;
  sqlite3* wal_db = nullptr;
  auto fail = [&](absl::Status s) {
    sqlite3_close(wal_db);
    sqlite3_close(db);
    close(lock_fd);
    return s;
  };
  // Switching a log to WAL writes nothing when it is one already, as every
  // constance log is.
  const char* failed = nullptr;
  if (sqlite::Open(path, sqlite::OpenOptions(), &db, &failed) != SQLITE_OK) {
    return fail(SqliteError(db, path,
                            absl::StrCat(failed, " (is it a constance batch log, and writable?)")));
  }
  // The format is checked before any table is written: a log from a newer
  // collector is left exactly as it is.
  absl::StatusOr<int64_t> format = ReadLogFormat(db, path);
  if (!format.ok()) return fail(format.status());
  if (*format > kLogFormat) {
    return fail(absl::FailedPreconditionError(absl::StrCat(
        "batch log ", path, ": log format ", *format,
        " was written by a newer constance; this "
        "collector (",
        Version(), ") reads log formats 1 to ", kLogFormat,
        ": run the newer "
        "version again, or restore the copy of the state directory made before the upgrade")));
  }
  for (const char* sql :
       {"CREATE TABLE IF NOT EXISTS batches(id INTEGER PRIMARY KEY, "
        "received_ns INTEGER NOT NULL, body BLOB NOT NULL)",
        "CREATE TABLE IF NOT EXISTS snapshot(id INTEGER PRIMARY KEY CHECK (id = 1), "
        "through INTEGER NOT NULL, saved_ns INTEGER NOT NULL, state BLOB NOT NULL)"}) {
    if (absl::Status s = Exec(db, path, sql); !s.ok()) {
      return fail(absl::Status(
          s.code(), absl::StrCat(s.message(), " (is it a constance batch log, and writable?)")));
    }
  }
  // Log formats (SQLite's user_version): 0, never set, is what constance
  // 0.1.0 wrote, the schema above: format 1. A format change adds its
  // migration here, from the previous format, in one transaction.
  if (*format < kLogFormat) {
    const std::string set = absl::StrCat("PRAGMA user_version=", kLogFormat);
    if (absl::Status s = Exec(db, path, set.c_str()); !s.ok()) return fail(s);
  }
  // The checkpointer's own connection (its checkpoints fsync as FULL does).
  if (sqlite3_open_v2(path.c_str(), &wal_db, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
    return fail(SqliteError(wal_db, path, "cannot open a second connection for checkpoints"));
  }
  if (absl::Status s = Exec(wal_db, path, "PRAGMA synchronous=FULL"); !s.ok()) return fail(s);
  // Readers and the checkpointer wait for each other briefly, never fail.
  sqlite3_busy_timeout(db, 10'000);
  sqlite3_busy_timeout(wal_db, 10'000);
  std::unique_ptr<BatchLog> log(new BatchLog(db, wal_db, lock_fd, path, options));
  // Replaces SQLite's own checkpoint on commit (wal_autocheckpoint).
  sqlite3_wal_hook(db, &BatchLog::OnWalCommit, log.get());
  return log;
}

BatchLog::~BatchLog() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (committer_.joinable()) committer_.join();
  if (applier_.joinable()) applier_.join();
  if (snapshotter_.joinable()) snapshotter_.join();
  if (wal_checkpointer_.joinable()) wal_checkpointer_.join();
  sqlite3_close(wal_db_);
  sqlite3_close(db_);  // The last connection: copies the WAL in and removes it.
  close(lock_fd_);
}

int BatchLog::OnWalCommit(void* self, sqlite3*, const char*, int pages) {
  auto* log = static_cast<BatchLog*>(self);
  absl::MutexLock lock(&log->mu_);
  log->wal_pages_ = pages;
  return SQLITE_OK;
}

void BatchLog::WalLoop() {
  for (;;) {
    bool restart = false;
    {
      absl::MutexLock lock(&mu_);
      auto due = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        // After a restart of the WAL every page in it is new.
        const int64_t fresh =
            wal_pages_ >= wal_backfilled_ ? wal_pages_ - wal_backfilled_ : wal_pages_;
        return stopping_ || fresh >= options_.wal_checkpoint_pages ||
               wal_pages_ >= options_.wal_restart_pages;
      };
      mu_.Await(absl::Condition(&due));
      if (stopping_) return;
      restart = wal_pages_ >= options_.wal_restart_pages;
    }
    // PASSIVE copies what is in the WAL while commits go on. Under load
    // that never pauses SQLite finds no moment to restart the WAL, which
    // then only grows: RESTART holds commits back (they wait, none fails)
    // while it copies the rest, so that the next commit writes the WAL
    // from its start again.
    const absl::Time start = absl::Now();
    int pages = 0;
    int backfilled = 0;
    const int rc = sqlite3_wal_checkpoint_v2(
        wal_db_, nullptr, restart ? SQLITE_CHECKPOINT_RESTART : SQLITE_CHECKPOINT_PASSIVE, &pages,
        &backfilled);
    const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
    absl::MutexLock lock(&mu_);
    if (rc == SQLITE_OK) {
      ++stats_.wal_checkpoints;
      stats_.wal_checkpoint_seconds += seconds;
      if (restart) {
        ++stats_.wal_restarts;
        wal_pages_ = 0;
        wal_backfilled_ = 0;
      } else {
        wal_backfilled_ = backfilled;
      }
    } else {
      // Nothing is lost: the pages stay in the WAL, and are copied on the
      // next try, after as many new pages again.
      spdlog::warn("batch log {}: WAL checkpoint failed (the WAL keeps every batch): {}", path_,
                   sqlite3_errmsg(wal_db_));
      wal_backfilled_ = wal_pages_;
      if (restart) wal_pages_ = 0;  // Tried again at the next commit's count.
    }
  }
}

absl::StatusOr<uint64_t> BatchLog::Replay(
    const std::function<void(const v1::Batch&, absl::Time)>& apply, int64_t after) {
  sqlite::Stmt select;
  if (select.Prepare(db_, "SELECT received_ns, body FROM batches WHERE id > ? ORDER BY id") !=
      SQLITE_OK) {
    return SqliteError(db_, path_, "cannot read");
  }
  sqlite3_stmt* stmt = select.get();
  sqlite3_bind_int64(stmt, 1, after);
  uint64_t n = 0;
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    v1::Batch batch;
    const void* body = sqlite3_column_blob(stmt, 1);
    const int size = sqlite3_column_bytes(stmt, 1);
    if (!batch.ParseFromArray(body, size)) {
      return absl::DataLossError(
          absl::StrCat("batch log ", path_, ": record ", n + 1, " is not a batch"));
    }
    apply(batch, absl::FromUnixNanos(sqlite3_column_int64(stmt, 0)));
    ++n;
  }
  if (rc != SQLITE_DONE) return SqliteError(db_, path_, "cannot read");
  return n;
}

absl::StatusOr<BatchLog::Snapshot> BatchLog::LoadSnapshot() {
  sqlite::Stmt select;
  if (select.Prepare(db_, "SELECT through, saved_ns, state FROM snapshot WHERE id = 1") !=
      SQLITE_OK) {
    return SqliteError(db_, path_, "cannot read the snapshot");
  }
  sqlite3_stmt* stmt = select.get();
  const int rc = sqlite3_step(stmt);
  if (rc != SQLITE_ROW) {
    if (rc == SQLITE_DONE)
      return absl::NotFoundError(absl::StrCat("batch log ", path_, ": no snapshot"));
    return SqliteError(db_, path_, "cannot read the snapshot");
  }
  Snapshot snapshot;
  snapshot.through = sqlite3_column_int64(stmt, 0);
  snapshot.saved_at = absl::FromUnixNanos(sqlite3_column_int64(stmt, 1));
  const void* state = sqlite3_column_blob(stmt, 2);
  snapshot.state.assign(static_cast<const char*>(state),
                        static_cast<size_t>(sqlite3_column_bytes(stmt, 2)));
  return snapshot;
}

void BatchLog::SetCheckpoint(absl::Duration every, Prepare prepare) {
  checkpoint_every_ = every;
  prepare_ = std::move(prepare);
}

BatchLog::CheckpointStats BatchLog::checkpoint_stats() const {
  absl::MutexLock lock(&mu_);
  return checkpoint_stats_;
}

absl::Status BatchLog::Checkpoint(const std::string& state, int64_t through, absl::Time started) {
  const absl::Time start = absl::Now();
  absl::Status status = Exec(db_, path_, "BEGIN");
  sqlite::Stmt insert;
  if (status.ok() && insert.Prepare(db_,
                                    "INSERT OR REPLACE INTO snapshot(id, through, saved_ns, state) "
                                    "VALUES(1, ?, ?, ?)") != SQLITE_OK) {
    status = SqliteError(db_, path_, "cannot write the snapshot");
  }
  if (status.ok()) {
    sqlite3_stmt* stmt = insert.get();
    sqlite3_bind_int64(stmt, 1, through);
    sqlite3_bind_int64(stmt, 2, absl::ToUnixNanos(started));
    sqlite3_bind_blob(stmt, 3, state.data(), static_cast<int>(state.size()), SQLITE_STATIC);
    if (sqlite3_step(stmt) != SQLITE_DONE)
      status = SqliteError(db_, path_, "cannot write the snapshot");
  }
  const int64_t before = sqlite3_total_changes64(db_);
  int64_t removed = 0;
  if (status.ok()) {
    const std::string sql = absl::StrCat("DELETE FROM batches WHERE id <= ", through);
    status = Exec(db_, path_, sql.c_str());
    removed = sqlite3_total_changes64(db_) - before;
  }
  if (status.ok()) status = Exec(db_, path_, "COMMIT");
  if (!status.ok()) (void)Exec(db_, path_, "ROLLBACK");
  absl::MutexLock lock(&mu_);
  if (status.ok()) {
    ++checkpoint_stats_.snapshots;
    checkpoint_stats_.last_bytes = state.size();
    checkpoint_stats_.last_seconds = absl::ToDoubleSeconds(absl::Now() - started);
    checkpoint_stats_.last_store_seconds = absl::ToDoubleSeconds(absl::Now() - start);
    checkpoint_stats_.compacted_batches += static_cast<uint64_t>(removed);
  } else {
    ++checkpoint_stats_.failures;
  }
  return status;
}

void BatchLog::Start() {
  applier_ = std::thread([this] { ApplyLoop(); });
  committer_ = std::thread([this] { CommitLoop(); });
  snapshotter_ = std::thread([this] { SnapshotLoop(); });
  wal_checkpointer_ = std::thread([this] { WalLoop(); });
}

void BatchLog::Append(absl::string_view batch, absl::Time received, Committed done) {
  Pending p{batch, absl::ToUnixNanos(received), std::move(done)};
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(p));
}

void BatchLog::ApplyLoop() {
  for (;;) {
    CommittedGroup* group = nullptr;
    std::optional<Begin> begin;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return commits_done_ || !applying_.empty() || begin_.has_value();
      };
      mu_.Await(absl::Condition(&ready));
      if (begin_.has_value()) {
        begin.swap(begin_);
      } else if (applying_.empty()) {
        return;  // The committer finished, and all is applied.
      } else {
        // Stays valid while the committer appends behind it (std::deque).
        group = &applying_.front();
      }
    }
    if (begin.has_value()) {
      // Between two groups: the state is that of the log up to
      // applied_through_, which only this thread moves.
      Finish finish = (*begin)();
      absl::MutexLock lock(&mu_);
      finish_ = std::move(finish);
      finish_through_ = applied_through_;
      continue;
    }
    for (Pending& p : group->batches) p.done(group->status);
    // Freed (with what the callbacks held) after the lock is released.
    std::deque<Pending> finished = std::move(group->batches);
    absl::MutexLock lock(&mu_);
    applied_through_ = group->through;
    applying_.pop_front();
  }
}

void BatchLog::SnapshotLoop() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto asked = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return snapshot_asked_ || commits_done_;
      };
      mu_.Await(absl::Condition(&asked));
      if (!snapshot_asked_) return;
      snapshot_asked_ = false;
    }
    const absl::Time started = absl::Now();
    Begin begin = prepare_();
    std::optional<Finish> finish;
    int64_t through = 0;
    {
      absl::MutexLock lock(&mu_);
      begin_ = std::move(begin);
      auto begun = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return finish_.has_value(); };
      mu_.Await(absl::Condition(&begun));
      finish.swap(finish_);
      through = finish_through_;
    }
    std::string state = (*finish)();
    absl::MutexLock lock(&mu_);
    finished_ = Finished{std::move(state), through, started};
  }
}

uint64_t BatchLog::committed() const {
  absl::MutexLock lock(&mu_);
  return committed_;
}

const std::vector<double>& BatchLog::CommitLatencyBounds() {
  // An fsync on an SSD takes about a millisecond, on a busy disk tens.
  static const std::vector<double> kBounds = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                              0.05,   0.1,   0.25,   0.5,   1,    2.5};
  return kBounds;
}

BatchLog::CommitStats BatchLog::commit_stats() const {
  absl::MutexLock lock(&mu_);
  CommitStats s = stats_;
  s.wal_pages = static_cast<uint64_t>(wal_pages_);
  s.latency_buckets.resize(CommitLatencyBounds().size() + 1);
  return s;
}

absl::Duration BatchLog::last_commit_latency() const {
  absl::MutexLock lock(&mu_);
  return last_latency_;
}

std::optional<int64_t> BatchLog::ReadLastPosition() {
  sqlite::Stmt stmt;
  if (stmt.Prepare(db_,
                   "SELECT MAX(COALESCE((SELECT MAX(id) FROM batches), 0), "
                   "COALESCE((SELECT through FROM snapshot WHERE id = 1), 0))") == SQLITE_OK &&
      sqlite3_step(stmt.get()) == SQLITE_ROW) {
    return sqlite3_column_int64(stmt.get(), 0);
  }
  return std::nullopt;
}

void BatchLog::CountCommitLocked(absl::Duration latency, bool ok, size_t batches) {
  last_latency_ = latency;
  const double seconds = absl::ToDoubleSeconds(latency);
  const std::vector<double>& bounds = CommitLatencyBounds();
  stats_.latency_buckets.resize(bounds.size() + 1);
  ++stats_.latency_buckets[std::lower_bound(bounds.begin(), bounds.end(), seconds) -
                           bounds.begin()];
  stats_.latency_sum_seconds += seconds;
  ++stats_.commits;
  if (ok) {
    stats_.batches += batches;
  } else {
    ++stats_.failures;
  }
}

// What the committer thread keeps between group commits.
struct BatchLog::Committer {
  // Positions are given here, never by SQLite: once compaction empties the
  // table SQLite would start again at 1, below the snapshot's position.
  int64_t last_position = 0;
  // Without its position the log refuses every batch (none acknowledged)
  // rather than risk writing below a snapshot.
  bool prepared = false;
  sqlite::Stmt insert;
  absl::Time last_checkpoint;
};

void BatchLog::CommitLoop() {
  Committer c;
  const std::optional<int64_t> read_position = ReadLastPosition();
  c.last_position = read_position.value_or(0);
  c.prepared = read_position.has_value() &&
               c.insert.Prepare(db_, "INSERT INTO batches(id, received_ns, body) VALUES(?, ?, ?)",
                                SQLITE_PREPARE_PERSISTENT) == SQLITE_OK;
  {
    absl::MutexLock lock(&mu_);
    applied_through_ = c.last_position;
  }
  c.last_checkpoint = absl::Now();
  for (;;) {
    std::deque<Pending> group;
    const bool stopping = AwaitWork(c.last_checkpoint, &group);
    if (!group.empty()) CommitGroup(c, std::move(group));
    StoreFinished();
    if (absl::Now() - c.last_checkpoint >= checkpoint_every_) AskSnapshot(c);
    if (stopping) {
      absl::MutexLock lock(&mu_);
      if (queue_.empty()) break;
    }
  }
  SnapshotAtStop(c.last_position);
  c.insert.Close();  // Before the connection may close.
  absl::MutexLock lock(&mu_);
  commits_done_ = true;
}

bool BatchLog::AwaitWork(absl::Time last_checkpoint, std::deque<Pending>* group) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || !queue_.empty() || finished_.has_value();
  };
  if (prepare_) {
    mu_.AwaitWithDeadline(absl::Condition(&ready), last_checkpoint + checkpoint_every_);
  } else {
    mu_.Await(absl::Condition(&ready));
  }
  // A WAL at its bound is restarted before it grows any further. The
  // restart needs no writer, so the commit waits for it here rather than
  // have the checkpointer back off and retry behind commits.
  auto bounded = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || wal_pages_ < options_.wal_restart_pages;
  };
  mu_.Await(absl::Condition(&bounded));
  group->swap(queue_);
  return stopping_;
}

void BatchLog::CommitGroup(Committer& c, std::deque<Pending> group) {
  const absl::Time start = absl::Now();
  sqlite3_stmt* insert = c.insert.get();
  absl::Status status = c.prepared ? Exec(db_, path_, "BEGIN") : SqliteError(db_, path_, "prepare");
  int64_t position = c.last_position;
  for (const Pending& p : group) {
    if (!status.ok()) break;
    sqlite3_bind_int64(insert, 1, ++position);
    sqlite3_bind_int64(insert, 2, p.received_ns);
    sqlite3_bind_blob(insert, 3, p.body.data(), static_cast<int>(p.body.size()), SQLITE_STATIC);
    if (sqlite3_step(insert) != SQLITE_DONE) status = SqliteError(db_, path_, "cannot write");
    sqlite3_reset(insert);
  }
  // One fsync for the whole group: that is the group commit.
  if (status.ok()) status = Exec(db_, path_, "COMMIT");
  if (!status.ok()) (void)Exec(db_, path_, "ROLLBACK");
  if (status.ok()) c.last_position = position;
  absl::MutexLock lock(&mu_);
  if (status.ok()) committed_ += group.size();
  CountCommitLocked(absl::Now() - start, status.ok(), group.size());
  // Applied (and acknowledged) by the applier thread, in log order, while
  // the next group commits.
  applying_.push_back(CommittedGroup{std::move(group), status, c.last_position});
}

void BatchLog::Store(const Finished& f) {
  if (absl::Status s = Checkpoint(f.state, f.through, f.started); !s.ok()) {
    spdlog::error("snapshot failed (the log keeps every batch, nothing is lost): {}",
                  std::string(s.message()));
  }
}

void BatchLog::StoreFinished() {
  std::optional<Finished> f;
  {
    absl::MutexLock lock(&mu_);
    f.swap(finished_);
  }
  if (!f.has_value()) return;
  Store(*f);
  absl::MutexLock lock(&mu_);
  in_flight_ = false;
}

void BatchLog::AskSnapshot(Committer& c) {
  // Findings, drift and trust move with time, not only with batches: a
  // snapshot is asked for every interval even when no batch came (unless
  // the last one is still being taken).
  if (!prepare_) return;
  c.last_checkpoint = absl::Now();
  absl::MutexLock lock(&mu_);
  if (in_flight_) return;
  in_flight_ = snapshot_asked_ = true;
}

void BatchLog::SnapshotAtStop(int64_t through) {
  // A clean shutdown restarts from the snapshot alone: one taken after the
  // last commit replaces any in flight (which needs the applier to finish).
  {
    absl::MutexLock lock(&mu_);
    auto settled = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !in_flight_ || finished_.has_value();
    };
    mu_.Await(absl::Condition(&settled));
    finished_.reset();
    in_flight_ = false;
    // The engine's state is that of the log up to `through` once the
    // applier has run the callbacks of every committed group.
    auto applied = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return applying_.empty(); };
    mu_.Await(absl::Condition(&applied));
  }
  if (!prepare_) return;
  const absl::Time started = absl::Now();
  std::string state = prepare_()()();
  Store(Finished{std::move(state), through, started});
}

}  // namespace constance::collector
