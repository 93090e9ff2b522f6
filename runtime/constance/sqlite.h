// The one way both binaries open SQLite files and hold statements: the
// agent's spool and the collector's batch log, silences, finding history,
// price-drop feed and promise record. Each keeps its own error wording
// (what a full disk means differs between them); what they share is how a
// file is opened and set up, and statement ownership.
//
//   sqlite3* db = nullptr;
//   const char* failed = nullptr;
//   if (sqlite::Open(path, sqlite::OpenOptions(), &db, &failed) != SQLITE_OK)
//     return error naming `failed` and sqlite3_errmsg(db); the caller closes db.
//
//   sqlite::Stmt stmt;
//   if (stmt.Prepare(db, "SELECT ...") != SQLITE_OK) return error;
//   while (sqlite3_step(stmt.get()) == SQLITE_ROW) ...
//
// A Stmt is finalized when it goes out of scope, on every return path. A
// statement kept prepared for a component's lifetime is used through
// `Using`, which resets it when the scope ends so that it holds no lock.
// Not thread-safe: a statement belongs to its connection's user.
#ifndef CONSTANCE_SQLITE_H_
#define CONSTANCE_SQLITE_H_

#include <sqlite3.h>

#include <cstring>
#include <string>

namespace constance::sqlite {

inline constexpr char kNoWal[] = "WAL mode is not available on this file system";
// The path of a database held in memory, for a store that is durable only
// with a state directory: Open sets it up the same way but for WAL and
// synchronous, which a database in memory has no use for.
inline constexpr char kInMemory[] = ":memory:";

struct OpenOptions {
  // PRAGMA synchronous: "FULL" when a commit must survive power loss,
  // "NORMAL" when losing the last commits to a crash is acceptable.
  const char* synchronous = "FULL";
  // One process per file (PRAGMA locking_mode=EXCLUSIVE, set before WAL so
  // that WAL needs no shared memory).
  bool exclusive = false;
};

// Opens `path` read-write, creating it, in WAL mode with `options`
// (kInMemory: in memory, without WAL).
// SQLITE_OK, or SQLite's code with *failed saying which step failed
// ("cannot open", "cannot lock", "cannot switch to WAL mode", kNoWal with
// SQLITE_CANTOPEN when the file system has no WAL, "cannot set
// synchronous"). *db is set
// whenever SQLite made a connection, also on failure (for sqlite3_errmsg):
// the caller closes it.
inline int Open(const std::string& path, const OpenOptions& options, sqlite3** db,
                const char** failed) {
  *failed = "cannot open";
  int rc = sqlite3_open_v2(path.c_str(), db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
  if (rc != SQLITE_OK) return rc;
  sqlite3_extended_result_codes(*db, 1);
  if (options.exclusive) {
    *failed = "cannot lock";
    rc = sqlite3_exec(*db, "PRAGMA locking_mode=EXCLUSIVE", nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) return rc;
  }
  if (path == kInMemory) return SQLITE_OK;
  *failed = "cannot switch to WAL mode";
  sqlite3_stmt* wal = nullptr;
  rc = sqlite3_prepare_v2(*db, "PRAGMA journal_mode=WAL", -1, &wal, nullptr);
  if (rc == SQLITE_OK) rc = sqlite3_step(wal);
  const unsigned char* mode = rc == SQLITE_ROW ? sqlite3_column_text(wal, 0) : nullptr;
  const bool is_wal =
      mode != nullptr && std::strcmp(reinterpret_cast<const char*>(mode), "wal") == 0;
  sqlite3_finalize(wal);
  if (rc != SQLITE_ROW) return rc;
  if (!is_wal) {
    *failed = kNoWal;
    return SQLITE_CANTOPEN;
  }
  *failed = "cannot set synchronous";
  const std::string sync = std::string("PRAGMA synchronous=") + options.synchronous;
  return sqlite3_exec(*db, sync.c_str(), nullptr, nullptr, nullptr);
}

// Open, then `schema` (CREATE ... IF NOT EXISTS statements) run on the new
// connection; *failed is "cannot set up its tables" when the schema fails.
inline int OpenWithSchema(const std::string& path, const OpenOptions& options,
                          const char* schema, sqlite3** db, const char** failed) {
  int rc = Open(path, options, db, failed);
  if (rc != SQLITE_OK) return rc;
  *failed = "cannot set up its tables";
  return sqlite3_exec(*db, schema, nullptr, nullptr, nullptr);
}

// Column `column` of the current row as text ("" for NULL).
inline std::string Text(sqlite3_stmt* stmt, int column) {
  const unsigned char* text = sqlite3_column_text(stmt, column);
  return text != nullptr ? reinterpret_cast<const char*>(text) : "";
}

class Stmt {
 public:
  Stmt() = default;
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  // Prepares `sql` on `db`, replacing any statement held; SQLite's code.
  int Prepare(sqlite3* db, const char* sql, unsigned flags = 0) {
    Close();
    return sqlite3_prepare_v3(db, sql, -1, flags, &stmt_, nullptr);
  }
  // Finalizes now, for a statement that must be gone before its
  // connection closes while the Stmt itself lives on.
  void Close() {
    sqlite3_finalize(stmt_);
    stmt_ = nullptr;
  }
  sqlite3_stmt* get() const { return stmt_; }
  sqlite3_stmt** out() { return &stmt_; }

 private:
  sqlite3_stmt* stmt_ = nullptr;
};

class Using {
 public:
  explicit Using(const Stmt& s) : stmt_(s.get()) {}
  ~Using() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  Using(const Using&) = delete;
  Using& operator=(const Using&) = delete;

 private:
  sqlite3_stmt* stmt_;
};

}  // namespace constance::sqlite

#endif  // CONSTANCE_SQLITE_H_
