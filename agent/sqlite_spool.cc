#include "agent/sqlite_spool.h"

#include <sqlite3.h>

#include <algorithm>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "constance/sqlite.h"
#include "spdlog/spdlog.h"

namespace constance::agent {
namespace {

// Bumped when the layout changes; a newer file is refused, not misread.
constexpr int kSchemaVersion = 1;

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS observations(
  seq INTEGER PRIMARY KEY,
  received_at INTEGER NOT NULL,
  bytes BLOB NOT NULL,
  idem TEXT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS observations_idem ON observations(idem) WHERE idem IS NOT NULL;
CREATE TABLE IF NOT EXISTS acknowledged_ids(id TEXT PRIMARY KEY, acked_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS acknowledged_ids_at ON acknowledged_ids(acked_at);
CREATE TABLE IF NOT EXISTS requests(
  key TEXT PRIMARY KEY, status INTEGER NOT NULL, body TEXT NOT NULL, created_at INTEGER NOT NULL,
  fingerprint TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS requests_at ON requests(created_at);
CREATE TABLE IF NOT EXISTS input_state(key TEXT PRIMARY KEY, value BLOB NOT NULL);
)sql";

using sqlite::Stmt;
using sqlite::Using;

int64_t Nanos(absl::Time t) { return absl::ToUnixNanos(t); }

int64_t ClampToInt64(uint64_t v) {
  return static_cast<int64_t>(std::min<uint64_t>(v, std::numeric_limits<int64_t>::max()));
}

int BindText(sqlite3_stmt* s, int index, const std::string& text) {
  return sqlite3_bind_text(s, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
}

}  // namespace

struct SqliteSpool::Statements {
  Stmt begin, commit, rollback;
  Stmt insert_observation, set_last_sequence, id_known;
  Stmt read, oldest, counters;
  Stmt ack_stats, ack_copy_ids, ack_delete, prune_ids, prune_requests;
  Stmt lookup_request, insert_request;
};

SqliteSpool::SqliteSpool(std::string path, SpoolOptions options)
    : path_(std::move(path)), options_(std::move(options)) {}

SqliteSpool::~SqliteSpool() {
  absl::MutexLock lock(&mu_);
  stmts_.reset();  // Statements are finalized before the connection closes.
  if (db_ != nullptr) sqlite3_close(db_);
}

absl::StatusOr<std::unique_ptr<SqliteSpool>> SqliteSpool::Open(const std::string& path,
                                                               SpoolOptions options) {
  std::unique_ptr<SqliteSpool> spool(new SqliteSpool(path, std::move(options)));
  if (absl::Status s = spool->Init(); !s.ok()) return s;
  return spool;
}

absl::Status SqliteSpool::Check(int rc, const char* what) const {
  if (rc == SQLITE_OK || rc == SQLITE_ROW || rc == SQLITE_DONE) return absl::OkStatus();
  const std::string detail = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
  std::string msg = absl::StrCat("spool ", path_, ": ", what, ": ", detail);
  if (detail != sqlite3_errstr(rc)) absl::StrAppend(&msg, " (", sqlite3_errstr(rc), ")");
  switch (rc & 0xff) {
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(
          absl::StrCat(msg, "; the disk holding the spool is full, nothing was stored"));
    case SQLITE_IOERR:
      return absl::UnavailableError(absl::StrCat(msg, "; I/O error, nothing was stored"));
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(
          absl::StrCat(msg, "; is another constance-agent using this spool file?"));
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::DataLossError(absl::StrCat(
          msg, "; the file is not a usable spool: move it aside to start a new incarnation"));
    case SQLITE_CANTOPEN:
      return absl::FailedPreconditionError(
          absl::StrCat(msg, "; does the directory exist and is it writable?"));
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_AUTH:
      return absl::FailedPreconditionError(msg);
    default:
      return absl::InternalError(msg);
  }
}

void SqliteSpool::RollbackLocked() {
  if (sqlite3_get_autocommit(db_) != 0) return;  // No transaction open.
  Using use(stmts_->rollback);
  sqlite3_step(stmts_->rollback.get());
}

absl::Status SqliteSpool::ExecLocked(const std::string& sql, const char* what) {
  return Check(sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr), what);
}

absl::StatusOr<int64_t> SqliteSpool::QueryIntLocked(const char* sql, const char* what) {
  Stmt stmt;
  if (absl::Status s = Check(stmt.Prepare(db_, sql), what); !s.ok()) {
    return s;
  }
  int rc = sqlite3_step(stmt.get());
  if (absl::Status s = Check(rc, what); !s.ok()) return s;
  if (rc != SQLITE_ROW) return int64_t{0};
  return sqlite3_column_int64(stmt.get(), 0);
}

absl::Status SqliteSpool::Init() {
  absl::MutexLock lock(&mu_);
  // Exclusive: one agent per spool file (and WAL needs no shared memory).
  sqlite::OpenOptions options;
  options.exclusive = true;
  const char* failed = nullptr;
  int rc = sqlite::Open(path_, options, &db_, &failed);
  if (failed == sqlite::kNoWal) {
    return absl::FailedPreconditionError(absl::StrCat("spool ", path_, ": ", sqlite::kNoWal));
  }
  if (absl::Status s = Check(rc, failed); !s.ok()) return s;
  absl::StatusOr<int64_t> version = QueryIntLocked("PRAGMA user_version", "cannot read the schema");
  if (!version.ok()) return version.status();
  if (*version > kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat("spool ", path_, ": schema version ",
                                                      *version, " is newer than this agent's (",
                                                      kSchemaVersion, "); use a newer agent"));
  }
  // The incarnation is only inserted if the file has none: a new file.
  const std::string create =
      absl::StrCat("BEGIN IMMEDIATE;", kSchema, "INSERT OR IGNORE INTO meta VALUES('incarnation', ",
                   static_cast<int64_t>(NewSpoolIncarnation()),
                   ");INSERT OR IGNORE INTO meta VALUES('last_sequence', 0);PRAGMA user_version=",
                   kSchemaVersion, ";COMMIT;");
  if (absl::Status s = ExecLocked(create, "cannot create the schema"); !s.ok()) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return s;
  }
  // Spools made before requests had a fingerprint get the column; older
  // agents still read and write such a file (the column has a default).
  absl::StatusOr<int64_t> has_fingerprint = QueryIntLocked(
      "SELECT COUNT(*) FROM pragma_table_info('requests') WHERE name='fingerprint'",
      "cannot read the requests table");
  if (!has_fingerprint.ok()) return has_fingerprint.status();
  if (*has_fingerprint == 0) {
    if (absl::Status s = ExecLocked(
            "ALTER TABLE requests ADD COLUMN fingerprint TEXT NOT NULL DEFAULT ''",
            "cannot add the request fingerprint column");
        !s.ok()) {
      return s;
    }
  }
  absl::StatusOr<int64_t> incarnation = QueryIntLocked(
      "SELECT value FROM meta WHERE key='incarnation'", "cannot read the incarnation");
  if (!incarnation.ok()) return incarnation.status();
  absl::StatusOr<int64_t> last = QueryIntLocked(
      "SELECT MAX((SELECT value FROM meta WHERE key='last_sequence'),"
      " COALESCE((SELECT MAX(seq) FROM observations), 0))",
      "cannot read the last sequence");
  if (!last.ok()) return last.status();
  if (*incarnation == 0 || *last < 0) {
    return absl::DataLossError(absl::StrCat("spool ", path_,
                                            ": bad incarnation or sequence in table meta; move the "
                                            "file aside to start a new incarnation"));
  }
  incarnation_ = static_cast<uint64_t>(*incarnation);
  last_sequence_ = static_cast<uint64_t>(*last);

  stmts_ = std::make_unique<Statements>();
  const struct {
    Stmt* stmt;
    const char* sql;
  } kStatements[] = {
      {&stmts_->begin, "BEGIN IMMEDIATE"},
      {&stmts_->commit, "COMMIT"},
      {&stmts_->rollback, "ROLLBACK"},
      {&stmts_->insert_observation,
       "INSERT INTO observations(seq, received_at, bytes, idem) VALUES(?, ?, ?, ?)"},
      {&stmts_->set_last_sequence, "UPDATE meta SET value = ? WHERE key = 'last_sequence'"},
      {&stmts_->id_known,
       "SELECT EXISTS(SELECT 1 FROM observations WHERE idem = ?1) OR "
       "EXISTS(SELECT 1 FROM acknowledged_ids WHERE id = ?1 AND acked_at >= ?2)"},
      {&stmts_->read, "SELECT seq, bytes FROM observations WHERE seq >= ? ORDER BY seq LIMIT ?"},
      {&stmts_->oldest, "SELECT received_at FROM observations ORDER BY seq LIMIT 1"},
      {&stmts_->counters, "SELECT COUNT(*), COALESCE(SUM(LENGTH(bytes)), 0) FROM observations"},
      {&stmts_->ack_stats,
       "SELECT COUNT(*), COALESCE(SUM(LENGTH(bytes)), 0) FROM observations WHERE seq <= ?"},
      {&stmts_->ack_copy_ids,
       "INSERT OR REPLACE INTO acknowledged_ids(id, acked_at) "
       "SELECT idem, ?2 FROM observations WHERE seq <= ?1 AND idem IS NOT NULL"},
      {&stmts_->ack_delete, "DELETE FROM observations WHERE seq <= ?"},
      {&stmts_->prune_ids, "DELETE FROM acknowledged_ids WHERE acked_at < ?"},
      {&stmts_->prune_requests, "DELETE FROM requests WHERE created_at < ?"},
      {&stmts_->lookup_request,
       "SELECT status, body, fingerprint FROM requests WHERE key = ? AND created_at >= ?"},
      {&stmts_->insert_request,
       "INSERT OR REPLACE INTO requests(key, status, body, created_at, fingerprint) "
       "VALUES(?, ?, ?, ?, ?)"},
  };
  for (const auto& s : kStatements) {
    rc = s.stmt->Prepare(db_, s.sql, SQLITE_PREPARE_PERSISTENT);
    if (rc != SQLITE_OK) {
      // The tables exist (created above) unless the file is some other
      // database with tables of the same names.
      return absl::DataLossError(absl::StrCat("spool ", path_, ": not a constance spool (",
                                              sqlite3_errmsg(db_), "); move it aside"));
    }
  }
  return LoadCountersLocked();
}

absl::Status SqliteSpool::LoadCountersLocked() {
  {
    Using use(stmts_->counters);
    int rc = sqlite3_step(stmts_->counters.get());
    if (absl::Status s = Check(rc, "cannot count the spool"); !s.ok()) return s;
    depth_ = static_cast<uint64_t>(sqlite3_column_int64(stmts_->counters.get(), 0));
    bytes_ = static_cast<uint64_t>(sqlite3_column_int64(stmts_->counters.get(), 1));
  }
  Using use(stmts_->oldest);
  int rc = sqlite3_step(stmts_->oldest.get());
  if (absl::Status s = Check(rc, "cannot read the oldest observation"); !s.ok()) return s;
  oldest_ = rc == SQLITE_ROW ? absl::FromUnixNanos(sqlite3_column_int64(stmts_->oldest.get(), 0))
                             : absl::InfinitePast();
  return absl::OkStatus();
}

absl::StatusOr<bool> SqliteSpool::IdKnownLocked(const std::string& id, int64_t cutoff_nanos) {
  sqlite3_stmt* s = stmts_->id_known.get();
  Using use(stmts_->id_known);
  int rc = BindText(s, 1, id);
  if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 2, cutoff_nanos);
  if (rc == SQLITE_OK) rc = sqlite3_step(s);
  if (absl::Status st = Check(rc, "cannot look up an observation id"); !st.ok()) return st;
  return rc == SQLITE_ROW && sqlite3_column_int64(s, 0) != 0;
}

absl::StatusOr<std::optional<RequestAnswer>> SqliteSpool::LookupRequestLocked(
    const std::string& key, int64_t cutoff_nanos) const {
  sqlite3_stmt* s = stmts_->lookup_request.get();
  Using use(stmts_->lookup_request);
  int rc = BindText(s, 1, key);
  if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 2, cutoff_nanos);
  if (rc == SQLITE_OK) rc = sqlite3_step(s);
  if (absl::Status st = Check(rc, "cannot look up a request key"); !st.ok()) return st;
  if (rc != SQLITE_ROW) return std::nullopt;
  RequestAnswer answer;
  answer.status = sqlite3_column_int(s, 0);
  const char* body = reinterpret_cast<const char*>(sqlite3_column_text(s, 1));
  answer.body.assign(body != nullptr ? body : "", sqlite3_column_bytes(s, 1));
  const char* fingerprint = reinterpret_cast<const char*>(sqlite3_column_text(s, 2));
  answer.fingerprint.assign(fingerprint != nullptr ? fingerprint : "",
                            sqlite3_column_bytes(s, 2));
  return answer;
}

absl::StatusOr<std::optional<RequestAnswer>> SqliteSpool::LookupRequest(
    const std::string& key) const {
  const int64_t cutoff = Nanos(options_.now() - options_.idempotency_window);
  absl::MutexLock lock(&mu_);
  return LookupRequestLocked(key, cutoff);
}

absl::StatusOr<AppendResult> SqliteSpool::AppendBatch(std::vector<v1::Observation> observations,
                                                      const RememberRequest* remember) {
  const absl::Time now = options_.now();
  absl::MutexLock lock(&mu_);
  if (observations.empty() && remember == nullptr) {
    AppendResult result;
    result.first_sequence = last_sequence_ + 1;
    return result;
  }
  if (absl::Status s = Check(sqlite3_step(stmts_->begin.get()), "cannot begin an append");
      !s.ok()) {
    sqlite3_reset(stmts_->begin.get());
    return s;
  }
  sqlite3_reset(stmts_->begin.get());
  absl::StatusOr<AppendResult> result = AppendLocked(std::move(observations), remember, now);
  if (!result.ok()) RollbackLocked();
  return result;
}

absl::StatusOr<AppendResult> SqliteSpool::AppendLocked(std::vector<v1::Observation> observations,
                                                       const RememberRequest* remember,
                                                       absl::Time now) {
  const int64_t cutoff = Nanos(now - options_.idempotency_window);
  AppendResult result;
  result.first_sequence = last_sequence_ + 1;
  if (remember != nullptr) {
    absl::StatusOr<std::optional<RequestAnswer>> earlier =
        LookupRequestLocked(remember->key, cutoff);
    if (!earlier.ok()) return earlier.status();
    if (earlier->has_value()) {
      result.earlier_answer = **earlier;
      RollbackLocked();  // Nothing was written.
      return result;
    }
  }
  std::vector<Row> rows;
  uint64_t total_bytes = 0;
  if (absl::Status s = NewRowsLocked(observations, cutoff, &rows, &total_bytes, &result); !s.ok()) {
    return s;
  }
  uint64_t drop_count = 0;
  uint64_t drop_bytes = 0;
  if (absl::Status s = MakeRoomLocked(rows.size(), total_bytes, &drop_count, &drop_bytes);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = InsertRowsLocked(rows, now); !s.ok()) return s;
  if (remember != nullptr) {
    if (absl::Status s = RememberRequestLocked(*remember, now); !s.ok()) return s;
  }
  {
    Using use(stmts_->commit);
    if (absl::Status s = Check(sqlite3_step(stmts_->commit.get()), "cannot commit an append");
        !s.ok()) {
      return s;
    }
  }
  CountAppendedLocked(rows.size(), total_bytes, drop_count, drop_bytes, now);
  result.stored = rows.size();
  return result;
}

absl::Status SqliteSpool::NewRowsLocked(const std::vector<v1::Observation>& observations,
                                        int64_t cutoff_nanos, std::vector<Row>* rows,
                                        uint64_t* bytes, AppendResult* result) {
  rows->reserve(observations.size());
  std::set<std::string> batch_ids;
  for (const v1::Observation& obs : observations) {
    if (!obs.id().empty()) {
      bool duplicate = !batch_ids.insert(obs.id()).second;
      if (!duplicate) {
        absl::StatusOr<bool> known = IdKnownLocked(obs.id(), cutoff_nanos);
        if (!known.ok()) return known.status();
        duplicate = *known;
      }
      if (duplicate) {
        ++result->duplicates;
        continue;
      }
    }
    Row row{std::string(), obs.id().empty() ? nullptr : &obs.id()};
    if (!obs.SerializeToString(&row.bytes)) {
      return absl::InternalError(
          absl::StrCat("spool ", path_, ": cannot serialize an observation"));
    }
    *bytes += row.bytes.size();
    rows->push_back(std::move(row));
  }
  return absl::OkStatus();
}

absl::Status SqliteSpool::MakeRoomLocked(uint64_t adding, uint64_t adding_bytes,
                                         uint64_t* drop_count, uint64_t* drop_bytes) {
  absl::StatusOr<bool> drop = MustDropOldest(depth_, bytes_, adding, adding_bytes, options_);
  if (!drop.ok()) return drop.status();
  if (!*drop) return absl::OkStatus();
  return DropOldestLocked(adding, adding_bytes, drop_count, drop_bytes);
}

absl::Status SqliteSpool::InsertRowsLocked(const std::vector<Row>& rows, absl::Time now) {
  sqlite3_stmt* insert = stmts_->insert_observation.get();
  for (size_t i = 0; i < rows.size(); ++i) {
    Using use(stmts_->insert_observation);
    int rc = sqlite3_bind_int64(insert, 1, ClampToInt64(last_sequence_ + 1 + i));
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(insert, 2, Nanos(now));
    if (rc == SQLITE_OK) {
      rc = sqlite3_bind_blob(insert, 3, rows[i].bytes.data(),
                             static_cast<int>(rows[i].bytes.size()), SQLITE_STATIC);
    }
    if (rc == SQLITE_OK) {
      rc = rows[i].id != nullptr ? BindText(insert, 4, *rows[i].id) : sqlite3_bind_null(insert, 4);
    }
    if (rc == SQLITE_OK) rc = sqlite3_step(insert);
    if (absl::Status s = Check(rc, "cannot store an observation"); !s.ok()) return s;
  }
  if (rows.empty()) return absl::OkStatus();
  Using use(stmts_->set_last_sequence);
  sqlite3_stmt* s = stmts_->set_last_sequence.get();
  int rc = sqlite3_bind_int64(s, 1, ClampToInt64(last_sequence_ + rows.size()));
  if (rc == SQLITE_OK) rc = sqlite3_step(s);
  return Check(rc, "cannot advance the sequence");
}

absl::Status SqliteSpool::RememberRequestLocked(const RememberRequest& remember, absl::Time now) {
  Using use(stmts_->insert_request);
  sqlite3_stmt* s = stmts_->insert_request.get();
  int rc = BindText(s, 1, remember.key);
  if (rc == SQLITE_OK) rc = sqlite3_bind_int(s, 2, remember.answer.status);
  if (rc == SQLITE_OK) rc = BindText(s, 3, remember.answer.body);
  if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 4, Nanos(now));
  if (rc == SQLITE_OK) rc = BindText(s, 5, remember.answer.fingerprint);
  if (rc == SQLITE_OK) rc = sqlite3_step(s);
  return Check(rc, "cannot remember the request key");
}

void SqliteSpool::CountAppendedLocked(uint64_t added, uint64_t added_bytes, uint64_t drop_count,
                                      uint64_t drop_bytes, absl::Time now) {
  depth_ -= std::min(depth_, drop_count);
  bytes_ -= std::min(bytes_, drop_bytes);
  dropped_ += drop_count;
  if (depth_ == 0 && added > 0) oldest_ = now;
  depth_ += added;
  bytes_ += added_bytes;
  last_sequence_ += added;
  if (drop_count == 0) return;
  Using use(stmts_->oldest);
  // Committed already: a failure here only leaves the age stale.
  if (sqlite3_step(stmts_->oldest.get()) == SQLITE_ROW) {
    oldest_ = absl::FromUnixNanos(sqlite3_column_int64(stmts_->oldest.get(), 0));
  }
  spdlog::warn(
      "spool {} full: dropped the {} oldest unacknowledged observations ({} bytes) to store "
      "{} new ones (spool_when_full: drop_oldest)",
      path_, drop_count, drop_bytes, added);
}

absl::Status SqliteSpool::DropOldestLocked(uint64_t adding, uint64_t adding_bytes, uint64_t* count,
                                           uint64_t* bytes) {
  Stmt scan;
  int rc = scan.Prepare(db_, "SELECT seq, LENGTH(bytes) FROM observations ORDER BY seq");
  if (absl::Status s = Check(rc, "cannot find the oldest observations"); !s.ok()) return s;
  uint64_t depth = depth_;
  uint64_t size = bytes_;
  int64_t cut = 0;
  while (!SpoolFits(depth, size, adding, adding_bytes, options_)) {
    rc = sqlite3_step(scan.get());
    if (rc != SQLITE_ROW) break;
    const uint64_t row_bytes = static_cast<uint64_t>(sqlite3_column_int64(scan.get(), 1));
    cut = sqlite3_column_int64(scan.get(), 0);
    depth -= std::min<uint64_t>(depth, 1);
    size -= std::min(size, row_bytes);
    ++*count;
    *bytes += row_bytes;
  }
  if (absl::Status s = Check(rc, "cannot find the oldest observations"); !s.ok()) return s;
  Stmt drop;
  rc = drop.Prepare(db_, "DELETE FROM observations WHERE seq <= ?");
  if (rc == SQLITE_OK) rc = sqlite3_bind_int64(drop.get(), 1, cut);
  if (rc == SQLITE_OK) rc = sqlite3_step(drop.get());
  return Check(rc, "cannot drop the oldest observations");
}

absl::StatusOr<AppendResult> SqliteSpool::AppendWithState(std::vector<v1::Observation> observations,
                                                          const std::vector<StateWrite>& writes) {
  const absl::Time now = options_.now();
  absl::MutexLock lock(&mu_);
  if (absl::Status s = Check(sqlite3_step(stmts_->begin.get()), "cannot begin an append");
      !s.ok()) {
    sqlite3_reset(stmts_->begin.get());
    return s;
  }
  sqlite3_reset(stmts_->begin.get());
  // The state goes first; AppendLocked commits both or fails and the whole
  // transaction is rolled back.
  for (const StateWrite& w : writes) {
    Stmt stmt;
    const char* sql = w.value ? "INSERT OR REPLACE INTO input_state(key, value) VALUES(?, ?)"
                              : "DELETE FROM input_state WHERE key = ?";
    int rc = stmt.Prepare(db_, sql);
    if (rc == SQLITE_OK) rc = BindText(stmt.get(), 1, w.key);
    if (rc == SQLITE_OK && w.value) {
      rc = sqlite3_bind_blob(stmt.get(), 2, w.value->data(), static_cast<int>(w.value->size()),
                             SQLITE_STATIC);
    }
    if (rc == SQLITE_OK) rc = sqlite3_step(stmt.get());
    if (absl::Status s = Check(rc, "cannot store input state"); !s.ok()) {
      RollbackLocked();
      return s;
    }
  }
  absl::StatusOr<AppendResult> result = AppendLocked(std::move(observations), nullptr, now);
  if (!result.ok()) RollbackLocked();
  return result;
}

absl::StatusOr<std::map<std::string, std::string>> SqliteSpool::ReadState(
    const std::string& prefix) const {
  absl::MutexLock lock(&mu_);
  Stmt stmt;
  int rc = stmt.Prepare(
      db_, "SELECT key, value FROM input_state WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key");
  if (rc == SQLITE_OK) rc = BindText(stmt.get(), 1, prefix);
  if (absl::Status s = Check(rc, "cannot read input state"); !s.ok()) return s;
  std::map<std::string, std::string> out;
  while ((rc = sqlite3_step(stmt.get())) == SQLITE_ROW) {
    const char* key = reinterpret_cast<const char*>(sqlite3_column_text(stmt.get(), 0));
    const int key_size = sqlite3_column_bytes(stmt.get(), 0);
    const char* value = static_cast<const char*>(sqlite3_column_blob(stmt.get(), 1));
    const int value_size = sqlite3_column_bytes(stmt.get(), 1);
    out.emplace(std::string(key != nullptr ? key : "", key_size),
                std::string(value != nullptr ? value : "", value_size));
  }
  if (absl::Status s = Check(rc, "cannot read input state"); !s.ok()) return s;
  return out;
}

absl::StatusOr<std::vector<SpoolEntry>> SqliteSpool::Read(uint64_t from_sequence,
                                                          size_t max) const {
  std::vector<SpoolEntry> out;
  if (max == 0) return out;
  absl::MutexLock lock(&mu_);
  sqlite3_stmt* s = stmts_->read.get();
  Using use(stmts_->read);
  int rc = sqlite3_bind_int64(s, 1, ClampToInt64(from_sequence));
  if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 2, ClampToInt64(max));
  if (absl::Status st = Check(rc, "cannot read observations"); !st.ok()) return st;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    SpoolEntry entry;
    entry.sequence = static_cast<uint64_t>(sqlite3_column_int64(s, 0));
    const void* data = sqlite3_column_blob(s, 1);
    const int size = sqlite3_column_bytes(s, 1);
    if (!entry.observation.ParseFromArray(data, size)) {
      return absl::DataLossError(absl::StrCat("spool ", path_, ": observation ", entry.sequence,
                                              " is not a valid Observation"));
    }
    out.push_back(std::move(entry));
  }
  if (absl::Status st = Check(rc, "cannot read observations"); !st.ok()) return st;
  return out;
}

absl::Status SqliteSpool::Acknowledge(uint64_t watermark) {
  const absl::Time now = options_.now();
  absl::MutexLock lock(&mu_);
  if (absl::Status s = Check(sqlite3_step(stmts_->begin.get()), "cannot begin an acknowledgement");
      !s.ok()) {
    sqlite3_reset(stmts_->begin.get());
    return s;
  }
  sqlite3_reset(stmts_->begin.get());
  absl::Status s = AcknowledgeLocked(watermark, now);
  if (!s.ok()) {
    RollbackLocked();
    return s;
  }
  return absl::OkStatus();
}

absl::Status SqliteSpool::AcknowledgeLocked(uint64_t watermark, absl::Time now) {
  const int64_t mark = ClampToInt64(watermark);
  uint64_t count = 0;
  uint64_t bytes = 0;
  {
    Using use(stmts_->ack_stats);
    sqlite3_stmt* s = stmts_->ack_stats.get();
    int rc = sqlite3_bind_int64(s, 1, mark);
    if (rc == SQLITE_OK) rc = sqlite3_step(s);
    if (absl::Status st = Check(rc, "cannot count acknowledged observations"); !st.ok()) return st;
    count = static_cast<uint64_t>(sqlite3_column_int64(s, 0));
    bytes = static_cast<uint64_t>(sqlite3_column_int64(s, 1));
  }
  // Each step: the statement, its bindings (index, value), what it does.
  const int64_t cutoff = Nanos(now - options_.idempotency_window);
  const struct {
    const Stmt& stmt;
    int64_t first;
    int64_t second;
    int bindings;
    const char* what;
  } kSteps[] = {
      {stmts_->ack_copy_ids, mark, Nanos(now), 2, "cannot remember acknowledged ids"},
      {stmts_->ack_delete, mark, 0, 1, "cannot delete acknowledged observations"},
      {stmts_->prune_ids, cutoff, 0, 1, "cannot forget old acknowledged ids"},
      {stmts_->prune_requests, cutoff, 0, 1, "cannot forget old request keys"},
      {stmts_->commit, 0, 0, 0, "cannot commit an acknowledgement"},
  };
  for (const auto& step : kSteps) {
    Using use(step.stmt);
    sqlite3_stmt* s = step.stmt.get();
    int rc = SQLITE_OK;
    if (step.bindings >= 1) rc = sqlite3_bind_int64(s, 1, step.first);
    if (rc == SQLITE_OK && step.bindings >= 2) rc = sqlite3_bind_int64(s, 2, step.second);
    if (rc == SQLITE_OK) rc = sqlite3_step(s);
    if (absl::Status st = Check(rc, step.what); !st.ok()) return st;
  }
  depth_ -= std::min(depth_, count);
  bytes_ -= std::min(bytes_, bytes);
  if (count > 0) {
    Using use(stmts_->oldest);
    int rc = sqlite3_step(stmts_->oldest.get());
    // Committed already: a failure here only leaves the age stale.
    oldest_ = rc == SQLITE_ROW ? absl::FromUnixNanos(sqlite3_column_int64(stmts_->oldest.get(), 0))
                               : absl::InfinitePast();
  }
  return absl::OkStatus();
}

uint64_t SqliteSpool::Depth() const {
  absl::MutexLock lock(&mu_);
  return depth_;
}

uint64_t SqliteSpool::Bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

absl::Duration SqliteSpool::OldestUnacknowledgedAge() const {
  absl::Time oldest;
  {
    absl::MutexLock lock(&mu_);
    if (depth_ == 0) return absl::ZeroDuration();
    oldest = oldest_;
  }
  return std::max(options_.now() - oldest, absl::ZeroDuration());
}

uint64_t SqliteSpool::LastSequence() const {
  absl::MutexLock lock(&mu_);
  return last_sequence_;
}

uint64_t SqliteSpool::DroppedOldest() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

}  // namespace constance::agent
