#include "collector/promise_record.h"

#include <sqlite3.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "constance/sqlite.h"
#include "spdlog/spdlog.h"

namespace constance::collector {
namespace {

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS promise_days(
  location TEXT NOT NULL, family INTEGER NOT NULL, key TEXT NOT NULL, currency TEXT NOT NULL,
  kind INTEGER NOT NULL, day INTEGER NOT NULL, promise TEXT NOT NULL, kept INTEGER NOT NULL,
  evaluations INTEGER NOT NULL,
  PRIMARY KEY(location, family, key, currency, kind, day)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS promise_days_day ON promise_days(day);
)sql";

constexpr char kAdd[] = R"sql(
INSERT INTO promise_days(location, family, key, currency, kind, day, promise, kept, evaluations)
VALUES(?, ?, ?, ?, ?, ?, ?, ?, 1)
ON CONFLICT(location, family, key, currency, kind, day) DO UPDATE SET
  kept = kept + excluded.kept, evaluations = evaluations + 1, promise = excluded.promise
)sql";

// SQLite's bare column beside MAX(day) comes from the row with that day:
// the promise's latest wording.
constexpr char kRead[] = R"sql(
SELECT family, key, currency, kind, promise, MAX(day),
  SUM(CASE WHEN day >= ?2 THEN kept ELSE 0 END), SUM(CASE WHEN day >= ?2 THEN evaluations ELSE 0 END),
  SUM(CASE WHEN day >= ?3 THEN kept ELSE 0 END), SUM(CASE WHEN day >= ?3 THEN evaluations ELSE 0 END),
  SUM(kept), SUM(evaluations)
FROM promise_days WHERE location = ?1 AND day >= ?4
GROUP BY family, key, currency, kind ORDER BY family, key, currency, kind
)sql";

int64_t Day(absl::Time t) { return absl::ToUnixSeconds(t) / 86400; }

}  // namespace

absl::StatusOr<std::unique_ptr<PromiseRecordStore>> PromiseRecordStore::Open(
    const std::string& path, Options options) {
  std::unique_ptr<PromiseRecordStore> store(new PromiseRecordStore(options));
  store->path_ = path.empty() ? sqlite::kInMemory : path;
  absl::MutexLock lock(&store->mu_);
  // A power loss may lose the last commits: a few evaluations' counts
  // among a day's thousands.
  sqlite::OpenOptions sqlite_options;
  sqlite_options.synchronous = "NORMAL";
  const char* failed = nullptr;
  if (sqlite::OpenWithSchema(store->path_, sqlite_options, kSchema, &store->db_, &failed) !=
      SQLITE_OK) {
    return store->Error(absl::StrCat(failed, " (is --state_dir writable?)"));
  }
  return store;
}

PromiseRecordStore::~PromiseRecordStore() {
  absl::MutexLock lock(&mu_);
  if (db_ != nullptr) sqlite3_close(db_);
}

absl::Status PromiseRecordStore::Error(absl::string_view what) const {
  return absl::UnavailableError(
      absl::StrCat("promise record ", path_, ": ", what, ": ",
                   db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory"));
}

absl::Status PromiseRecordStore::Record(const std::vector<PromiseStanding>& standings,
                                        absl::Time evaluated_at) {
  absl::MutexLock lock(&mu_);
  if (sqlite3_exec(db_, "BEGIN", nullptr, nullptr, nullptr) != SQLITE_OK) {
    return Error("cannot write");
  }
  absl::Status status;
  sqlite::Stmt add;
  if (add.Prepare(db_, kAdd) != SQLITE_OK) status = Error("cannot write");
  const int64_t day = Day(evaluated_at);
  for (size_t i = 0; status.ok() && i < standings.size(); ++i) {
    const PromiseStanding& p = standings[i];
    sqlite::Using using_add(add);
    sqlite3_stmt* s = add.get();
    sqlite3_bind_text(s, 1, p.location.c_str(), -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 2, p.series.family);
    sqlite3_bind_text(s, 3, p.series.key.c_str(), -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, p.series.currency.c_str(), -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 5, p.series.kind);
    sqlite3_bind_int64(s, 6, day);
    sqlite3_bind_text(s, 7, p.promise.c_str(), -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 8, p.kept ? 1 : 0);
    if (sqlite3_step(s) != SQLITE_DONE) status = Error("cannot write");
  }
  add.Close();
  if (status.ok()) {
    sqlite::Stmt trim;
    if (trim.Prepare(db_, "DELETE FROM promise_days WHERE day < ?") != SQLITE_OK) {
      status = Error("cannot remove old days");
    } else {
      sqlite3_bind_int64(trim.get(), 1, Day(evaluated_at - options_.retention));
      if (sqlite3_step(trim.get()) != SQLITE_DONE) status = Error("cannot remove old days");
    }
  }
  if (status.ok() && sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) {
    status = Error("cannot commit");
  }
  if (!status.ok()) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  return status;
}

std::vector<v1::PromiseRecord> PromiseRecordStore::Read(const std::string& location,
                                                        absl::Time now) const {
  std::vector<v1::PromiseRecord> out;
  absl::MutexLock lock(&mu_);
  sqlite::Stmt read;
  if (read.Prepare(db_, kRead) != SQLITE_OK) {
    spdlog::error("{}", std::string(Error("cannot read").message()));
    return out;
  }
  sqlite3_stmt* s = read.get();
  const int64_t today = Day(now);
  sqlite3_bind_text(s, 1, location.c_str(), -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, today - 6);
  sqlite3_bind_int64(s, 3, today - 29);
  sqlite3_bind_int64(s, 4, today - 89);
  auto share = [](int64_t kept, int64_t n) {
    return n > 0 ? static_cast<double>(kept) / static_cast<double>(n) : 0.0;
  };
  while (sqlite3_step(s) == SQLITE_ROW) {
    v1::PromiseRecord& r = out.emplace_back();
    v1::SeriesId* series = r.mutable_series();
    series->set_family(static_cast<v1::Family>(sqlite3_column_int(s, 0)));
    series->set_key(sqlite::Text(s, 1));
    series->set_currency(sqlite::Text(s, 2));
    if (series->family() == v1::FAMILY_PRICE) {
      series->set_kind(static_cast<v1::PriceKind>(sqlite3_column_int(s, 3)));
    }
    r.set_promise(sqlite::Text(s, 4));
    const int64_t k7 = sqlite3_column_int64(s, 6), n7 = sqlite3_column_int64(s, 7);
    const int64_t k30 = sqlite3_column_int64(s, 8), n30 = sqlite3_column_int64(s, 9);
    const int64_t k90 = sqlite3_column_int64(s, 10), n90 = sqlite3_column_int64(s, 11);
    r.set_kept_7d(share(k7, n7));
    r.set_kept_30d(share(k30, n30));
    r.set_kept_90d(share(k90, n90));
    r.set_evaluations_7d(static_cast<uint64_t>(n7));
    r.set_evaluations_30d(static_cast<uint64_t>(n30));
    r.set_evaluations_90d(static_cast<uint64_t>(n90));
  }
  return out;
}

}  // namespace constance::collector
