#include "collector/batch_log.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "constance/sqlite.h"
#include "constance/version.h"
#include "spdlog/spdlog.h"

namespace constance::collector {
namespace {

namespace fs = std::filesystem;

// Snapshot files are named "<log's name>.snapshot.<through>.<ns>", in the
// log's directory (".tmp" added while written).
constexpr char kSnapshotInfix[] = ".snapshot.";

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

// Log formats (SQLite's user_version) and the migration to each from the
// one before, run in one transaction on Open:
//   0  constance 0.1.0 (never set): the tables Open creates.
//   1  the same tables, the format recorded.
//   2  the snapshot in a file beside the log: `snapshot` names it (file,
//      bytes, sha256) and keeps an empty `state`, which 0.1.0 refuses to
//      load (a snapshot of format 0) rather than start without it.
//      A row without `file` is a snapshot of format 1, read from `state`
//      until the next snapshot replaces it.
absl::Status Migrate(sqlite3* db, const std::string& path, int64_t from) {
  std::string sql = "BEGIN;";
  if (from < 2) {
    absl::StrAppend(&sql,
                    "ALTER TABLE snapshot ADD COLUMN file TEXT;"
                    "ALTER TABLE snapshot ADD COLUMN bytes INTEGER;"
                    "ALTER TABLE snapshot ADD COLUMN sha256 TEXT;");
  }
  absl::StrAppend(&sql, "PRAGMA user_version=", BatchLog::kLogFormat, ";COMMIT;");
  absl::Status s = Exec(db, path, sql.c_str());
  if (!s.ok()) (void)Exec(db, path, "ROLLBACK");
  return s;
}

absl::Status Errno(absl::string_view what, const std::string& file, int err) {
  return absl::UnavailableError(absl::StrCat(what, " ", file, ": ", std::strerror(err)));
}

std::string Sha256Hex(absl::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (EVP_Digest(data.data(), data.size(), digest, &size, EVP_sha256(), nullptr) != 1) return "";
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), size));
}

// Writes `data` to `dir`/`name` durably: into "`name`.tmp", fsynced, then
// renamed and the directory fsynced, so `name` is whole or absent after
// a crash. The data reaches the disk a few MB at a time while it is
// written (the previous piece awaited, the next one started): a commit's
// fsync of the log (ext4 commits its journal for every file) then never
// waits for the whole file's dirty pages, which would stall every ack.
absl::Status WriteDurably(const std::string& dir, const std::string& name,
                          absl::string_view data) {
  constexpr size_t kPiece = size_t{4} << 20;
  const std::string path = absl::StrCat(dir, "/", name);
  const std::string tmp = path + ".tmp";
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("cannot create", tmp, errno);
  absl::Status status;
  for (size_t done = 0; status.ok() && done < data.size();) {
    const ssize_t n = write(fd, data.data() + done, std::min(kPiece, data.size() - done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      status = Errno("cannot write", tmp, n < 0 ? errno : ENOSPC);
      break;
    }
    (void)sync_file_range(fd, static_cast<off_t>(done), n, SYNC_FILE_RANGE_WRITE);
    if (done >= kPiece) {
      (void)sync_file_range(fd, static_cast<off_t>(done - kPiece), kPiece,
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                SYNC_FILE_RANGE_WAIT_AFTER);
    }
    done += static_cast<size_t>(n);
  }
  if (status.ok() && fsync(fd) != 0) status = Errno("cannot fsync", tmp, errno);
  if (close(fd) != 0 && status.ok()) status = Errno("cannot close", tmp, errno);
  if (status.ok() && rename(tmp.c_str(), path.c_str()) != 0) {
    status = Errno("cannot rename to " + path, tmp, errno);
  }
  if (!status.ok()) {
    unlink(tmp.c_str());
    return status;
  }
  // The rename itself is durable once the directory is.
  const int dir_fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return Errno("cannot open the directory", dir, errno);
  if (fsync(dir_fd) != 0) status = Errno("cannot fsync the directory", dir, errno);
  close(dir_fd);
  return status;
}

// The whole file at `path`, or its errno.
absl::StatusOr<std::string> ReadWhole(const std::string& path, int* err) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    *err = errno;
    if (fd >= 0) close(fd);
    return Errno("cannot read", path, *err);
  }
  std::string data(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = read(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  *err = done == data.size() ? 0 : (errno != 0 ? errno : EIO);
  close(fd);
  if (*err != 0) return Errno("cannot read", path, *err);
  return data;
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
  // The tables above are format 1's; Migrate brings them to this one's.
  if (*format < kLogFormat) {
    if (absl::Status s = Migrate(db, path, *format); !s.ok()) return fail(s);
  }
  // The checkpointer's own connection (its checkpoints fsync as FULL does).
  if (sqlite3_open_v2(path.c_str(), &wal_db, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
    return fail(SqliteError(wal_db, path, "cannot open a second connection for checkpoints"));
  }
  if (absl::Status s = Exec(wal_db, path, "PRAGMA synchronous=FULL"); !s.ok()) return fail(s);
  // Debian's SQLite zeroes every page a delete frees (SECURE_DELETE): a
  // compaction would write each compacted batch again, as zeros, while
  // every commit waits. FAST zeroes only within pages written anyway;
  // what the batches held is in the snapshot file beside the log.
  if (absl::Status s = Exec(db, path, "PRAGMA secure_delete=FAST"); !s.ok()) return fail(s);
  // Readers and the checkpointer wait for each other briefly, never fail.
  sqlite3_busy_timeout(db, 10'000);
  sqlite3_busy_timeout(wal_db, 10'000);
  std::unique_ptr<BatchLog> log(new BatchLog(db, wal_db, lock_fd, path, std::move(options)));
  if (absl::Status s = log->RemoveUnrecordedFiles(); !s.ok()) return s;
  // Replaces SQLite's own checkpoint on commit (wal_autocheckpoint).
  sqlite3_wal_hook(db, &BatchLog::OnWalCommit, log.get());
  return log;
}

BatchLog::BatchLog(sqlite3* db, sqlite3* wal_db, int lock_fd, std::string path, Options options)
    : db_(db),
      wal_db_(wal_db),
      lock_fd_(lock_fd),
      path_(std::move(path)),
      dir_(fs::path(path_).has_parent_path() ? fs::path(path_).parent_path().string() : "."),
      base_(fs::path(path_).filename().string()),
      options_(std::move(options)) {}

absl::Status BatchLog::RemoveUnrecordedFiles() {
  sqlite::Stmt select;
  if (select.Prepare(db_, "SELECT file FROM snapshot WHERE id = 1") != SQLITE_OK) {
    return SqliteError(db_, path_, "cannot read the snapshot's record");
  }
  const int rc = sqlite3_step(select.get());
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    return SqliteError(db_, path_, "cannot read the snapshot's record");
  }
  if (rc == SQLITE_ROW) recorded_file_ = sqlite::Text(select.get(), 0);
  // A crash after a snapshot file was written (or while) and before the
  // log recorded it leaves it behind: the recorded one is in force.
  DIR* dir = opendir(dir_.c_str());
  if (dir == nullptr) return Errno("batch log: cannot list the directory", dir_, errno);
  std::vector<std::string> leftovers;
  const std::string prefix = base_ + kSnapshotInfix;
  while (const dirent* e = readdir(dir)) {
    const std::string name = e->d_name;
    if (absl::StartsWith(name, prefix) && name != recorded_file_) leftovers.push_back(name);
  }
  closedir(dir);
  for (const std::string& name : leftovers) {
    spdlog::warn("batch log {}: removing {}, a snapshot the log never recorded (a stop before it "
                 "was stored; the recorded snapshot and the log after it are in force)",
                 path_, name);
  }
  RemoveFiles(leftovers);
  return absl::OkStatus();
}

void BatchLog::RemoveFiles(const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    const std::string file = absl::StrCat(dir_, "/", name);
    if (unlink(file.c_str()) != 0 && errno != ENOENT) {
      spdlog::warn("batch log {}: cannot remove {} (no longer needed; remove it by hand): {}",
                   path_, file, std::strerror(errno));
    }
  }
}

BatchLog::~BatchLog() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (committer_.joinable()) committer_.join();
  if (applier_.joinable()) applier_.join();
  {
    absl::MutexLock lock(&lanes_mu_);
    helpers_stop_ = true;
  }
  for (std::thread& t : helpers_) t.join();
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
  if (select.Prepare(db_,
                     "SELECT through, saved_ns, state, file, bytes, sha256 FROM snapshot "
                     "WHERE id = 1") != SQLITE_OK) {
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
  if (sqlite3_column_type(stmt, 3) == SQLITE_NULL) {
    // Log format 1: the state is in the row.
    const void* state = sqlite3_column_blob(stmt, 2);
    snapshot.state.assign(static_cast<const char*>(state),
                          static_cast<size_t>(sqlite3_column_bytes(stmt, 2)));
    return snapshot;
  }
  snapshot.file = absl::StrCat(dir_, "/", sqlite::Text(stmt, 3));
  const int64_t bytes = sqlite3_column_int64(stmt, 4);
  const std::string sha256 = sqlite::Text(stmt, 5);
  // Without it the state is lost: the batches it covers were compacted.
  auto lost = [&](const std::string& what) {
    return absl::DataLossError(absl::StrCat(
        "batch log ", path_, ": its snapshot ", snapshot.file, " (log position ",
        snapshot.through, ", saved ", absl::FormatTime(snapshot.saved_at), ") ", what,
        "; the batches it covers were compacted away, so the collector cannot start without "
        "it: restore the state directory (", base_, " with that file) from a backup, or move "
        "the directory aside to start empty"));
  };
  int err = 0;
  absl::StatusOr<std::string> state = ReadWhole(snapshot.file, &err);
  if (!state.ok()) {
    return lost(err == ENOENT ? "is missing"
                              : absl::StrCat("cannot be read: ", std::strerror(err)));
  }
  if (static_cast<int64_t>(state->size()) != bytes) {
    return lost(absl::StrCat("is ", state->size(), " bytes, the log recorded ", bytes,
                             " (truncated or overwritten)"));
  }
  if (Sha256Hex(*state) != sha256) {
    return lost(absl::StrCat("does not match the SHA-256 the log recorded (", sha256,
                             "): the file is corrupt"));
  }
  snapshot.state = *std::move(state);
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

BatchLog::Finished BatchLog::WriteSnapshot(const std::string& state, int64_t through,
                                           absl::Time started) {
  Finished f;
  f.through = through;
  f.started = started;
  f.bytes = state.size();
  // Unique across snapshots, also of the same position: the file in force
  // is never overwritten.
  f.file = absl::StrCat(base_, kSnapshotInfix, through, ".", absl::ToUnixNanos(absl::Now()));
  const absl::Time start = absl::Now();
  f.sha256 = Sha256Hex(state);
  if (f.sha256.empty()) {
    f.written = absl::InternalError("cannot compute a SHA-256 (OpenSSL)");
  } else {
    f.written = WriteDurably(dir_, f.file, state);
  }
  f.write_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (f.written.ok() && options_.after_snapshot_file) {
    options_.after_snapshot_file(absl::StrCat(dir_, "/", f.file));
  }
  return f;
}

bool BatchLog::CompactStep(int64_t through) {
  // A step deletes about 3 MB of batches of 1,000 prices, a few
  // milliseconds, so a commit waits for at most that; deleted in one go,
  // 15 s of such batches held every commit for 0.3 s (RESULTS.md).
  constexpr int kBatchesPerStep = 128;
  const std::string sql = absl::StrCat(
      "DELETE FROM batches WHERE id IN (SELECT id FROM batches WHERE id <= ", through,
      " ORDER BY id LIMIT ", kBatchesPerStep, ")");
  const int64_t before = sqlite3_total_changes64(db_);
  if (absl::Status s = Exec(db_, path_, sql.c_str()); !s.ok()) {
    // The batches stay: the next snapshot's compaction deletes them.
    spdlog::warn("compacting the log failed (the batches stay until the next snapshot): {}",
                 std::string(s.message()));
    return true;
  }
  const int64_t removed = sqlite3_total_changes64(db_) - before;
  absl::MutexLock lock(&mu_);
  checkpoint_stats_.compacted_batches += static_cast<uint64_t>(removed);
  return removed < kBatchesPerStep;
}

absl::Status BatchLog::RecordSnapshot(const Finished& f) {
  if (!f.written.ok()) return f.written;
  const absl::Time start = absl::Now();
  absl::Status status = Exec(db_, path_, "BEGIN");
  sqlite::Stmt insert;
  // The state left in the row is empty: the file holds it.
  if (status.ok() &&
      insert.Prepare(db_,
                     "INSERT OR REPLACE INTO snapshot(id, through, saved_ns, state, file, bytes, "
                     "sha256) VALUES(1, ?, ?, x'', ?, ?, ?)") != SQLITE_OK) {
    status = SqliteError(db_, path_, "cannot record the snapshot");
  }
  if (status.ok()) {
    sqlite3_stmt* stmt = insert.get();
    sqlite3_bind_int64(stmt, 1, f.through);
    sqlite3_bind_int64(stmt, 2, absl::ToUnixNanos(f.started));
    sqlite3_bind_text(stmt, 3, f.file.data(), static_cast<int>(f.file.size()), SQLITE_STATIC);
    sqlite3_bind_int64(stmt, 4, static_cast<int64_t>(f.bytes));
    sqlite3_bind_text(stmt, 5, f.sha256.data(), static_cast<int>(f.sha256.size()), SQLITE_STATIC);
    if (sqlite3_step(stmt) != SQLITE_DONE)
      status = SqliteError(db_, path_, "cannot record the snapshot");
  }
  if (status.ok()) status = Exec(db_, path_, "COMMIT");
  if (!status.ok()) (void)Exec(db_, path_, "ROLLBACK");
  absl::MutexLock lock(&mu_);
  // Whichever file is not in force now goes (by the snapshot thread).
  const std::string& out_of_force = status.ok() ? recorded_file_ : f.file;
  if (!out_of_force.empty()) superseded_.push_back(out_of_force);
  if (status.ok()) recorded_file_ = f.file;
  if (status.ok()) {
    ++checkpoint_stats_.snapshots;
    checkpoint_stats_.last_bytes = f.bytes;
    checkpoint_stats_.last_seconds = absl::ToDoubleSeconds(absl::Now() - f.started);
    checkpoint_stats_.last_write_seconds = f.write_seconds;
    checkpoint_stats_.last_store_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  }
  return status;
}

void BatchLog::Start() {
  for (int i = 1; i < options_.apply_threads; ++i) helpers_.emplace_back([this] { HelpLoop(); });
  applier_ = std::thread([this] { ApplyLoop(); });
  committer_ = std::thread([this] { CommitLoop(); });
  snapshotter_ = std::thread([this] { SnapshotLoop(); });
  wal_checkpointer_ = std::thread([this] { WalLoop(); });
}

void BatchLog::Append(absl::string_view batch, absl::Time received, Committed done) {
  Pending p{batch, absl::ToUnixNanos(received), std::move(done), /*lane=*/0, /*beside=*/nullptr};
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(p));
}

void BatchLog::Append(absl::string_view batch, absl::Time received, uint64_t lane, Beside beside,
                      Committed done) {
  Pending p{batch, absl::ToUnixNanos(received), std::move(done), lane, std::move(beside)};
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
    ApplyGroup(*group);
    // Freed (with what the callbacks held) after the lock is released.
    std::deque<Pending> finished = std::move(group->batches);
    absl::MutexLock lock(&mu_);
    applied_through_ = group->through;
    applying_.pop_front();
  }
}

void BatchLog::ApplyGroup(CommittedGroup& group) {
  Lanes lanes;
  if (!helpers_.empty() && group.status.ok()) {
    absl::flat_hash_map<uint64_t, size_t> run_of;
    for (Pending& p : group.batches) {
      // A batch without a lane may be of any location: the batches after
      // it wait for the second step, in log order.
      if (!p.beside) break;
      auto [it, added] = run_of.try_emplace(p.lane, lanes.runs.size());
      if (added) lanes.runs.emplace_back();
      lanes.runs[it->second].push_back(&p);
    }
  }
  if (lanes.runs.size() > 1) {
    {
      absl::MutexLock lock(&lanes_mu_);
      lanes_ = &lanes;
      ++lanes_handed_;
    }
    RunLanes(lanes);
    // No helper takes them from here on; wait for those running them.
    absl::MutexLock lock(&lanes_mu_);
    lanes_ = nullptr;
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(lanes_mu_) { return helping_ == 0; };
    lanes_mu_.Await(absl::Condition(&idle));
  }
  for (Pending& p : group.batches) {
    if (!p.settled) p.done(group.status);
  }
}

void BatchLog::RunLanes(Lanes& lanes) {
  for (size_t i = lanes.next++; i < lanes.runs.size(); i = lanes.next++) {
    for (Pending* p : lanes.runs[i]) {
      if (!p->beside()) break;  // This lane's rest goes in log order, alone.
      p->settled = true;
    }
  }
}

void BatchLog::HelpLoop() {
  uint64_t seen = 0;
  for (;;) {
    Lanes* lanes = nullptr;
    {
      absl::MutexLock lock(&lanes_mu_);
      auto handed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(lanes_mu_) {
        return helpers_stop_ || (lanes_ != nullptr && lanes_handed_ != seen);
      };
      lanes_mu_.Await(absl::Condition(&handed));
      if (helpers_stop_) return;
      seen = lanes_handed_;
      lanes = lanes_;
      ++helping_;
    }
    RunLanes(*lanes);
    absl::MutexLock lock(&lanes_mu_);
    --helping_;
  }
}

void BatchLog::SnapshotLoop() {
  // Background work: on a busy machine the threads that acknowledge
  // batches get the CPU first (an ack waits for them, nothing waits for a
  // snapshot but the next one). Nice 5 still gets a quarter of a core
  // against busy threads of nice 0.
  (void)setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), 5);
  for (;;) {
    std::vector<std::string> superseded;
    {
      absl::MutexLock lock(&mu_);
      auto asked = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return snapshot_asked_ || commits_done_ || !superseded_.empty();
      };
      mu_.Await(absl::Condition(&asked));
      superseded.swap(superseded_);
      if (!snapshot_asked_ && superseded.empty()) return;  // Commits are done.
    }
    // Files no longer in force: the log recorded the next one (or never
    // recorded them).
    RemoveFiles(superseded);
    {
      absl::MutexLock lock(&mu_);
      if (!snapshot_asked_) continue;
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
    // Written to its file here, beside the commits: the committer only
    // records it, in a short transaction.
    Finished written = WriteSnapshot((*finish)(), through, started);
    absl::MutexLock lock(&mu_);
    finished_ = std::move(written);
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
  // Batches up to here are covered by the recorded snapshot and still to
  // be deleted (0: none).
  int64_t compact_through = 0;
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
    const bool stopping = AwaitWork(c.last_checkpoint, c.compact_through > 0, &group);
    if (!group.empty()) CommitGroup(c, std::move(group));
    StoreFinished(c);
    // The batches a recorded snapshot covers go a step at a time, between
    // group commits (a replay skips them meanwhile).
    if (c.compact_through > 0 && CompactStep(c.compact_through)) c.compact_through = 0;
    if (absl::Now() - c.last_checkpoint >= checkpoint_every_) AskSnapshot(c);
    if (stopping) {
      absl::MutexLock lock(&mu_);
      if (queue_.empty()) break;
    }
  }
  SnapshotAtStop(c);
  c.insert.Close();  // Before the connection may close.
  absl::MutexLock lock(&mu_);
  commits_done_ = true;
}

bool BatchLog::AwaitWork(absl::Time last_checkpoint, bool compacting,
                         std::deque<Pending>* group) {
  absl::MutexLock lock(&mu_);
  auto ready = [this, compacting]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return compacting || stopping_ || !queue_.empty() || finished_.has_value();
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

bool BatchLog::Store(const Finished& f) {
  absl::Status s = RecordSnapshot(f);
  if (s.ok()) return true;
  spdlog::error("snapshot failed (the log keeps every batch, nothing is lost): {}",
                std::string(s.message()));
  absl::MutexLock lock(&mu_);
  ++checkpoint_stats_.failures;
  return false;
}

void BatchLog::StoreFinished(Committer& c) {
  std::optional<Finished> f;
  {
    absl::MutexLock lock(&mu_);
    f.swap(finished_);
  }
  if (!f.has_value()) return;
  if (Store(*f)) c.compact_through = f->through;
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

void BatchLog::SnapshotAtStop(Committer& c) {
  // A clean shutdown restarts from the snapshot alone: one taken after the
  // last commit replaces any in flight (which needs the applier to finish).
  {
    absl::MutexLock lock(&mu_);
    auto settled = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !in_flight_ || finished_.has_value();
    };
    mu_.Await(absl::Condition(&settled));
    if (finished_.has_value() && finished_->written.ok()) superseded_.push_back(finished_->file);
    finished_.reset();
    in_flight_ = false;
    // The engine's state is that of the log up to c.last_position once the
    // applier has run the callbacks of every committed group.
    auto applied = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return applying_.empty(); };
    mu_.Await(absl::Condition(&applied));
  }
  if (prepare_) {
    const absl::Time started = absl::Now();
    if (Store(WriteSnapshot(prepare_()()(), c.last_position, started))) {
      c.compact_through = c.last_position;
    }
  }
  // Nothing waits for commits now: the whole compaction.
  while (c.compact_through > 0 && !CompactStep(c.compact_through)) {
  }
}

}  // namespace constance::collector
