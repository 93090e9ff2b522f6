// The collector's durable log of received batches, with group commit.
//
// A batch is acknowledged to its agent only after it is in this log: an
// SQLite file in WAL mode with synchronous=FULL, written by one committer
// thread that takes every batch queued since its last commit into one
// transaction (group commit), so acknowledging stays fast under load while
// each acknowledgement is as durable as an fsync. On start the log is
// replayed in order through the engine's own deduplication, which rebuilds
// every cell and high-water mark exactly: a batch applies once, across
// restarts too.
//
//   absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path);
//   (*log)->Replay([&](const v1::Batch& b, absl::Time received) { ... });
//   (*log)->Start();
//   (*log)->Append(batch, received, [](absl::Status committed) { ... });
//
// Not yet: snapshots and compaction (the log grows with what it received)
// and the restoration of findings, drift state and trust balances, which
// restart from the replayed cells.
//
// Thread-safety: Append may be called from any thread; callbacks run on
// the committer thread and must not block. Replay before Start.
#ifndef CONSTANCE_COLLECTOR_BATCH_LOG_H_
#define CONSTANCE_COLLECTOR_BATCH_LOG_H_

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "constance/v1/ingest.pb.h"

struct sqlite3;

namespace constance::collector {

class BatchLog {
 public:
  using Committed = std::function<void(absl::Status)>;

  // Opens or creates the log at `path`. Errors name the path.
  static absl::StatusOr<std::unique_ptr<BatchLog>> Open(const std::string& path);
  ~BatchLog();  // Commits what is queued, then stops.
  BatchLog(const BatchLog&) = delete;
  BatchLog& operator=(const BatchLog&) = delete;

  // Calls `apply` for every logged batch, oldest first, with the time it
  // was received. Returns how many batches were replayed.
  absl::StatusOr<uint64_t> Replay(const std::function<void(const v1::Batch&, absl::Time)>& apply);

  // Starts the committer thread.
  void Start();

  // Queues `batch`; `done` runs once it is durable (OK) or could not be
  // written (the error; the batch must then not be acknowledged).
  void Append(const v1::Batch& batch, absl::Time received, Committed done);

  // Batches committed so far and the latency of the last group commit.
  uint64_t committed() const;
  absl::Duration last_commit_latency() const;

 private:
  explicit BatchLog(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  void CommitLoop();

  sqlite3* const db_;
  const std::string path_;
  struct Pending {
    std::string body;
    int64_t received_ns;
    Committed done;
  };
  mutable absl::Mutex mu_;
  std::deque<Pending> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t committed_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Duration last_latency_ ABSL_GUARDED_BY(mu_);
  std::thread committer_;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_BATCH_LOG_H_
