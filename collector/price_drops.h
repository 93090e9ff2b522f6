// The price-drop feed (proto/constance/v1/board.proto): every decrease of a
// price at a location, kept for price_drop_retention, so a price-protection
// process can find each purchase window a lower price affects.
//
// The engine finds and classifies the drops (Engine::PriceDropsOf: local,
// or the chain-wide rollout its rollout rule recognises); it publishes
// those within rollout_grace with each evaluation, and a drop that arrived
// older than that for rollout_grace from the first evaluation after it
// arrived, each drop
// with the revision that last changed it (PriceDropList).
// PriceDropFeed::Record adds the new ones and updates the classification of
// known ones (a rollout shows as more locations follow), writing only what
// changed since the list it last recorded. A drop is identified by its
// location, series and event time, so recording the same evaluation twice,
// or the evaluations of a restarted collector, adds nothing twice.
//
// Storage is SQLite: --state_dir/price_drops.db (WAL, committed per
// evaluation) when durable, an in-memory database otherwise; the code path
// is the same. Drops whose event time is older than the retention are
// deleted at each Record. A collector killed between an evaluation and its
// recording loses nothing: the restored engine still holds the price
// changes and the next evaluation publishes them again.
//
// BoardRecorder (board.h) runs Record on its own thread each time the
// engine publishes a new evaluation.
//
// Thread-safety: PriceDropFeed is thread-safe.
#ifndef CONSTANCE_COLLECTOR_PRICE_DROPS_H_
#define CONSTANCE_COLLECTOR_PRICE_DROPS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "collector/engine.h"
#include "constance/v1/board.pb.h"

struct sqlite3;

namespace constance::collector {

class PriceDropFeed {
 public:
  struct Options {
    absl::Duration retention = absl::Hours(24 * 30);
  };
  // `path` empty: an in-memory database (nothing survives the process).
  // A file of an older format is migrated. Unavailable, naming the file,
  // when it cannot be opened, set up or migrated; FailedPrecondition when
  // a newer collector wrote it.
  static absl::StatusOr<std::unique_ptr<PriceDropFeed>> Open(const std::string& path,
                                                             Options options);
  ~PriceDropFeed();
  PriceDropFeed(const PriceDropFeed&) = delete;
  PriceDropFeed& operator=(const PriceDropFeed&) = delete;

  // Adds the drops not recorded yet (recorded_at = `now`), updates the
  // known ones (their rollout flag), and deletes drops older than the
  // retention, in one transaction. Each evaluation republishes the drops
  // within rollout_grace: of a list from the source the last committed
  // Record had, only the drops with a revision above that list's are
  // written (a failed Record commits nothing and moves nothing).
  absl::Status Record(const PriceDropList& drops, absl::Time now);

  // Where a reader stands: after the drop at (at_ns, row).
  struct Cursor {
    int64_t at_ns = INT64_MIN;
    int64_t row = 0;
  };
  // At most `limit` drops after `*cursor` with event time >= `since`, at
  // `location` (empty: all), oldest first; advances *cursor past them.
  std::vector<v1::PriceDrop> Read(absl::Time since, const std::string& location, size_t limit,
                                  Cursor* cursor) const;

 private:
  explicit PriceDropFeed(Options options) : options_(options) {}
  absl::Status Error(absl::string_view what) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Creates the tables, or brings a file of an older format to this one
  // (price_drops.cc, "Feed formats"); refuses a newer one.
  absl::Status SetUp() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  std::string path_;
  mutable absl::Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_) = nullptr;
  // What the last committed Record wrote up to: a list's source and revision.
  uint64_t source_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t recorded_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_PRICE_DROPS_H_
