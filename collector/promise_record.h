// The promise record (proto/constance/v1/board.proto): per location and
// promise of the catalog, how many of the collector's evaluations found it
// kept, per UTC day, so the share kept over the last 7, 30 and 90 days is
// a sum over at most 90 rows.
//
// Record adds one evaluation's standings (Engine: FindingsView::promises)
// to each (location, promise series)'s row of the evaluation's day; the
// promise's wording is the latest seen. Days older than the retention (91
// days) are deleted at each Record. Storage is SQLite:
// --state_dir/promise_record.db (WAL, one transaction per evaluation) when
// durable, an in-memory database otherwise, with the same code.
//
// Thread-safety: PromiseRecordStore is thread-safe.
#ifndef CONSTANCE_COLLECTOR_PROMISE_RECORD_H_
#define CONSTANCE_COLLECTOR_PROMISE_RECORD_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "collector/engine.h"
#include "constance/v1/board.pb.h"

struct sqlite3;

namespace constance::collector {

class PromiseRecordStore {
 public:
  struct Options {
    absl::Duration retention = absl::Hours(24 * 91);
  };
  // `path` empty: an in-memory database. Unavailable, naming the file, when
  // it cannot be opened or set up.
  static absl::StatusOr<std::unique_ptr<PromiseRecordStore>> Open(const std::string& path,
                                                                  Options options);
  ~PromiseRecordStore();
  PromiseRecordStore(const PromiseRecordStore&) = delete;
  PromiseRecordStore& operator=(const PromiseRecordStore&) = delete;

  // Counts one evaluation at `evaluated_at`: each standing kept or not.
  absl::Status Record(const std::vector<PromiseStanding>& standings, absl::Time evaluated_at);

  // `location`'s promises evaluated in the last 90 days before `now`, by
  // series, with their shares kept over 7, 30 and 90 days.
  std::vector<v1::PromiseRecord> Read(const std::string& location, absl::Time now) const;

 private:
  explicit PromiseRecordStore(Options options) : options_(options) {}
  absl::Status Error(absl::string_view what) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  std::string path_;
  mutable absl::Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_PROMISE_RECORD_H_
