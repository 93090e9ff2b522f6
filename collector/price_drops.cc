#include "collector/price_drops.h"

#include <sqlite3.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "constance/sqlite.h"
#include "google/protobuf/util/time_util.h"
#include "spdlog/spdlog.h"

namespace constance::collector {
namespace {

using google::protobuf::util::TimeUtil;

// A drop is one (location, series, event time): an evaluation publishes
// it again until it leaves rollout_grace, and only its rollout flag moves.
// Its uniqueness is indexed by event time first: new drops are recent and
// old ones leave by time, so inserts and the trim touch the ends of each
// index, not pages all over it (format 1).
constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS price_drops(
  row INTEGER PRIMARY KEY, at_ns INTEGER NOT NULL, location TEXT NOT NULL, key TEXT NOT NULL,
  currency TEXT NOT NULL, kind INTEGER NOT NULL, from_minor INTEGER NOT NULL,
  to_minor INTEGER NOT NULL, rollout INTEGER NOT NULL, recorded_ns INTEGER NOT NULL,
  UNIQUE(at_ns, location, key, currency, kind));
CREATE INDEX IF NOT EXISTS price_drops_at ON price_drops(at_ns, row);
)sql";

// Feed formats (SQLite's user_version):
//   0  the feed as first written (never set): unique by (location, key,
//      currency, kind, at_ns), each insert and each trim in pages across
//      the index.
//   1  unique by (at_ns, location, key, currency, kind) (kSchema).
// The migration rebuilds the table in format 1, keeping every row and its
// row number (readers' cursors).
constexpr int64_t kFeedFormat = 1;
constexpr char kMigrateTo1[] = R"sql(
CREATE TABLE price_drops_1(
  row INTEGER PRIMARY KEY, at_ns INTEGER NOT NULL, location TEXT NOT NULL, key TEXT NOT NULL,
  currency TEXT NOT NULL, kind INTEGER NOT NULL, from_minor INTEGER NOT NULL,
  to_minor INTEGER NOT NULL, rollout INTEGER NOT NULL, recorded_ns INTEGER NOT NULL,
  UNIQUE(at_ns, location, key, currency, kind));
INSERT INTO price_drops_1 SELECT row, at_ns, location, key, currency, kind, from_minor, to_minor,
  rollout, recorded_ns FROM price_drops ORDER BY at_ns, row;
DROP TABLE price_drops;
ALTER TABLE price_drops_1 RENAME TO price_drops;
CREATE INDEX price_drops_at ON price_drops(at_ns, row);
)sql";

constexpr char kUpsert[] = R"sql(
INSERT INTO price_drops(at_ns, location, key, currency, kind, from_minor, to_minor, rollout,
                        recorded_ns) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(at_ns, location, key, currency, kind) DO UPDATE SET rollout = excluded.rollout
WHERE rollout != excluded.rollout
)sql";

constexpr char kRead[] = R"sql(
SELECT row, at_ns, location, key, currency, kind, from_minor, to_minor, rollout, recorded_ns
FROM price_drops
WHERE at_ns >= ?1 AND (at_ns > ?2 OR (at_ns = ?2 AND row > ?3)) AND (?4 = '' OR location = ?4)
ORDER BY at_ns, row LIMIT ?5
)sql";

// Writes one drop (kUpsert). False when it failed.
bool Put(const sqlite::Stmt& put, const PriceDrop& d, absl::Time now) {
  sqlite::Using using_put(put);
  sqlite3_stmt* s = put.get();
  sqlite3_bind_int64(s, 1, absl::ToUnixNanos(d.at));
  sqlite3_bind_text(s, 2, d.location.c_str(), -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 3, d.series.key.c_str(), -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 4, d.series.currency.c_str(), -1, SQLITE_STATIC);
  sqlite3_bind_int(s, 5, d.series.kind);
  sqlite3_bind_int64(s, 6, d.from);
  sqlite3_bind_int64(s, 7, d.to);
  sqlite3_bind_int(s, 8, d.rollout ? 1 : 0);
  sqlite3_bind_int64(s, 9, absl::ToUnixNanos(now));
  return sqlite3_step(s) == SQLITE_DONE;
}

}  // namespace

absl::StatusOr<std::unique_ptr<PriceDropFeed>> PriceDropFeed::Open(const std::string& path,
                                                                   Options options) {
  std::unique_ptr<PriceDropFeed> feed(new PriceDropFeed(options));
  feed->path_ = path.empty() ? sqlite::kInMemory : path;
  absl::MutexLock lock(&feed->mu_);
  // A power loss may lose the last commits: evaluations publish a drop
  // again until it is rollout_grace old.
  sqlite::OpenOptions sqlite_options;
  sqlite_options.synchronous = "NORMAL";
  const char* failed = nullptr;
  if (sqlite::Open(feed->path_, sqlite_options, &feed->db_, &failed) != SQLITE_OK) {
    return feed->Error(absl::StrCat(failed, " (is --state_dir writable?)"));
  }
  if (absl::Status s = feed->SetUp(); !s.ok()) return s;
  return feed;
}

absl::Status PriceDropFeed::SetUp() {
  sqlite::Stmt version;
  int64_t format = 0;
  bool exists = false;
  if (version.Prepare(db_, "PRAGMA user_version") != SQLITE_OK ||
      sqlite3_step(version.get()) != SQLITE_ROW) {
    return Error("cannot read its format (is it a constance price-drop feed?)");
  }
  format = sqlite3_column_int64(version.get(), 0);
  version.Close();
  if (format > kFeedFormat) {
    return absl::FailedPreconditionError(
        absl::StrCat("price drops ", path_, ": written in format ", format,
                     " by a newer collector; this one reads formats up to ", kFeedFormat,
                     " (upgrade the collector, or move the file away to start the feed afresh)"));
  }
  sqlite::Stmt table;
  if (table.Prepare(db_,
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = "
                    "'price_drops'") != SQLITE_OK) {
    return Error("cannot read its tables");
  }
  exists = sqlite3_step(table.get()) == SQLITE_ROW;
  table.Close();
  std::string sql = "BEGIN;";
  if (exists && format < 1) absl::StrAppend(&sql, kMigrateTo1);
  absl::StrAppend(&sql, kSchema, "PRAGMA user_version=", kFeedFormat, ";COMMIT;");
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
    absl::Status s =
        Error(exists && format < 1 ? "cannot migrate it to format 1" : "cannot set up its tables");
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return s;
  }
  return absl::OkStatus();
}

PriceDropFeed::~PriceDropFeed() {
  absl::MutexLock lock(&mu_);
  if (db_ != nullptr) sqlite3_close(db_);
}

absl::Status PriceDropFeed::Error(absl::string_view what) const {
  return absl::UnavailableError(
      absl::StrCat("price drops ", path_, ": ", what, ": ",
                   db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory"));
}

absl::Status PriceDropFeed::Record(const PriceDropList& drops, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (sqlite3_exec(db_, "BEGIN", nullptr, nullptr, nullptr) != SQLITE_OK) {
    return Error("cannot write");
  }
  absl::Status status;
  sqlite::Stmt put;
  if (put.Prepare(db_, kUpsert) != SQLITE_OK) status = Error("cannot write");
  const int64_t cutoff = absl::ToUnixNanos(now - options_.retention);
  // Of the same source, what the last committed list held as it is now.
  const uint64_t written = drops.source() == source_ ? recorded_ : 0;
  bool put_failed = false;
  drops.ForEach([&](const PriceDrop& d) {
    if (!status.ok() || put_failed || d.revision <= written) return;
    if (absl::ToUnixNanos(d.at) < cutoff) return;  // The trim below deletes it.
    put_failed = !Put(put, d, now);
  });
  if (put_failed) status = Error("cannot write");
  put.Close();
  if (status.ok()) {
    sqlite::Stmt trim;
    if (trim.Prepare(db_, "DELETE FROM price_drops WHERE at_ns < ?") != SQLITE_OK) {
      status = Error("cannot remove old drops");
    } else {
      sqlite3_bind_int64(trim.get(), 1, cutoff);
      if (sqlite3_step(trim.get()) != SQLITE_DONE) status = Error("cannot remove old drops");
    }
  }
  if (status.ok() && sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) {
    status = Error("cannot commit");
  }
  if (!status.ok()) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return status;
  }
  if (drops.source() != source_) recorded_ = 0;
  source_ = drops.source();
  recorded_ = std::max(recorded_, drops.revision());
  return status;
}

std::vector<v1::PriceDrop> PriceDropFeed::Read(absl::Time since, const std::string& location,
                                               size_t limit, Cursor* cursor) const {
  std::vector<v1::PriceDrop> out;
  absl::MutexLock lock(&mu_);
  sqlite::Stmt read;
  if (read.Prepare(db_, kRead) != SQLITE_OK) {
    spdlog::error("{}", std::string(Error("cannot read").message()));
    return out;
  }
  sqlite3_stmt* s = read.get();
  sqlite3_bind_int64(s, 1, since == absl::InfinitePast() ? INT64_MIN : absl::ToUnixNanos(since));
  sqlite3_bind_int64(s, 2, cursor->at_ns);
  sqlite3_bind_int64(s, 3, cursor->row);
  sqlite3_bind_text(s, 4, location.c_str(), -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 5, static_cast<int64_t>(limit));
  while (sqlite3_step(s) == SQLITE_ROW) {
    cursor->row = sqlite3_column_int64(s, 0);
    cursor->at_ns = sqlite3_column_int64(s, 1);
    v1::PriceDrop& d = out.emplace_back();
    *d.mutable_at() = TimeUtil::NanosecondsToTimestamp(cursor->at_ns);
    d.set_location(sqlite::Text(s, 2));
    v1::SeriesId* series = d.mutable_series();
    series->set_family(v1::FAMILY_PRICE);
    series->set_key(sqlite::Text(s, 3));
    series->set_currency(sqlite::Text(s, 4));
    series->set_kind(static_cast<v1::PriceKind>(sqlite3_column_int(s, 5)));
    d.set_previous_minor_units(sqlite3_column_int64(s, 6));
    d.set_new_minor_units(sqlite3_column_int64(s, 7));
    d.set_rollout(sqlite3_column_int(s, 8) != 0);
    d.set_promo(series->kind() == v1::PROMO);
    *d.mutable_recorded_at() = TimeUtil::NanosecondsToTimestamp(sqlite3_column_int64(s, 9));
  }
  return out;
}

}  // namespace constance::collector
