#include "collector/batch_log.h"

#include <sqlite3.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

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

}  // namespace

absl::StatusOr<std::unique_ptr<BatchLog>> BatchLog::Open(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
      SQLITE_OK) {
    absl::Status s = SqliteError(db, path, "cannot open");
    sqlite3_close(db);
    return s;
  }
  // One collector per log: a second one would interleave high-water marks.
  for (const char* sql :
       {"PRAGMA locking_mode=EXCLUSIVE", "PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL",
        "CREATE TABLE IF NOT EXISTS batches(id INTEGER PRIMARY KEY, "
        "received_ns INTEGER NOT NULL, body BLOB NOT NULL)"}) {
    if (absl::Status s = Exec(db, path, sql); !s.ok()) {
      sqlite3_close(db);
      return absl::Status(s.code(), absl::StrCat(s.message(),
                                                 " (is another collector using it, or is it "
                                                 "not a constance batch log?)"));
    }
  }
  return std::unique_ptr<BatchLog>(new BatchLog(db, path));
}

BatchLog::~BatchLog() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (committer_.joinable()) committer_.join();
  sqlite3_close(db_);
}

absl::StatusOr<uint64_t> BatchLog::Replay(
    const std::function<void(const v1::Batch&, absl::Time)>& apply) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db_, "SELECT received_ns, body FROM batches ORDER BY id", -1, &stmt,
                         nullptr) != SQLITE_OK) {
    return SqliteError(db_, path_, "cannot read");
  }
  uint64_t n = 0;
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    v1::Batch batch;
    const void* body = sqlite3_column_blob(stmt, 1);
    const int size = sqlite3_column_bytes(stmt, 1);
    if (!batch.ParseFromArray(body, size)) {
      sqlite3_finalize(stmt);
      return absl::DataLossError(
          absl::StrCat("batch log ", path_, ": record ", n + 1, " is not a batch"));
    }
    apply(batch, absl::FromUnixNanos(sqlite3_column_int64(stmt, 0)));
    ++n;
  }
  sqlite3_finalize(stmt);
  if (rc != SQLITE_DONE) return SqliteError(db_, path_, "cannot read");
  return n;
}

void BatchLog::Start() {
  committer_ = std::thread([this] { CommitLoop(); });
}

void BatchLog::Append(const v1::Batch& batch, absl::Time received, Committed done) {
  Pending p{batch.SerializeAsString(), absl::ToUnixNanos(received), std::move(done)};
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(p));
}

uint64_t BatchLog::committed() const {
  absl::MutexLock lock(&mu_);
  return committed_;
}

absl::Duration BatchLog::last_commit_latency() const {
  absl::MutexLock lock(&mu_);
  return last_latency_;
}

void BatchLog::CommitLoop() {
  sqlite3_stmt* insert = nullptr;
  const bool prepared =
      sqlite3_prepare_v2(db_, "INSERT INTO batches(received_ns, body) VALUES(?, ?)", -1, &insert,
                         nullptr) == SQLITE_OK;
  for (;;) {
    std::deque<Pending> group;
    bool stopping;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this] { return stopping_ || !queue_.empty(); };
      mu_.Await(absl::Condition(&ready));
      group.swap(queue_);
      stopping = stopping_;
    }
    if (!group.empty()) {
      const absl::Time start = absl::Now();
      absl::Status status =
          prepared ? Exec(db_, path_, "BEGIN") : SqliteError(db_, path_, "prepare");
      for (const Pending& p : group) {
        if (!status.ok()) break;
        sqlite3_bind_int64(insert, 1, p.received_ns);
        sqlite3_bind_blob(insert, 2, p.body.data(), static_cast<int>(p.body.size()), SQLITE_STATIC);
        if (sqlite3_step(insert) != SQLITE_DONE) status = SqliteError(db_, path_, "cannot write");
        sqlite3_reset(insert);
      }
      // One fsync for the whole group: that is the group commit.
      if (status.ok()) status = Exec(db_, path_, "COMMIT");
      if (!status.ok()) (void)Exec(db_, path_, "ROLLBACK");
      {
        absl::MutexLock lock(&mu_);
        if (status.ok()) committed_ += group.size();
        last_latency_ = absl::Now() - start;
      }
      for (Pending& p : group) p.done(status);
    }
    if (stopping) {
      absl::MutexLock lock(&mu_);
      if (queue_.empty()) break;
    }
  }
  sqlite3_finalize(insert);
}

}  // namespace constance::collector
