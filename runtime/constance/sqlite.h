// The one way both binaries hold SQLite statements: the agent's spool and
// the collector's batch log. Each keeps its own error wording (what a full
// disk means differs between them); what they share is ownership.
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

namespace constance::sqlite {

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
