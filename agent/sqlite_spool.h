// SqliteSpool: the agent's durable spool, one SQLite file.
//
// Same semantics as MemorySpool (see spool.h), plus durability: the file is
// in WAL mode with synchronous=FULL, and each AppendBatch is one
// transaction, so an append that returned OK survives kill -9 and power
// loss. The HTTP ingest appends a whole request at once: that is the group
// commit (one fsync per request, not per observation).
//
// The file holds:
//   meta(key, value)          'incarnation' (random, chosen when the file is
//                             created) and 'last_sequence' (so numbering
//                             continues after a restart even when everything
//                             was acknowledged and deleted);
//   observations(seq, received_at, bytes, idem)
//                             unacknowledged observations, `bytes` the
//                             serialized v1::Observation, `idem` its id (NULL
//                             when none; unique when set);
//   acknowledged_ids(id, acked_at), requests(key, status, body, created_at)
//                             what idempotent retries are checked against,
//                             pruned once older than the idempotency window.
// A deleted or new file is a new incarnation. The file is locked
// exclusively while open: a second agent on the same file fails to open it.
//
// Example:
//   absl::StatusOr<std::unique_ptr<SqliteSpool>> spool =
//       SqliteSpool::Open("/var/lib/constance-agent/spool.db", SpoolOptions{});
//   if (!spool.ok()) return spool.status();   // Names the path and why.
//   (*spool)->Append(std::move(observations));
//
// Errors name the path. Disk full is ResourceExhausted, I/O errors and a file
// locked by another process are Unavailable, a file that is not a spool is
// DataLoss; a failed append or acknowledgement leaves the spool as it was.
//
// Thread-safe: one connection behind one mutex.
#ifndef CONSTANCE_AGENT_SQLITE_SPOOL_H_
#define CONSTANCE_AGENT_SQLITE_SPOOL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/spool.h"

// SQLite stays private to the library: its handles are only named here.
struct sqlite3;
struct sqlite3_stmt;

namespace constance::agent {

class SqliteSpool : public Spool {
 public:
  // Opens the spool at `path`, creating it (and a new incarnation) if it does
  // not exist. The directory must exist. Errors name the path: a file that
  // is not SQLite or not a spool is DataLoss, a locked one Unavailable.
  static absl::StatusOr<std::unique_ptr<SqliteSpool>> Open(const std::string& path,
                                                           SpoolOptions options);
  ~SqliteSpool() override;
  SqliteSpool(const SqliteSpool&) = delete;
  SqliteSpool& operator=(const SqliteSpool&) = delete;

  const std::string& path() const { return path_; }

  uint64_t incarnation() const override { return incarnation_; }
  absl::StatusOr<AppendResult> AppendBatch(std::vector<v1::Observation> observations,
                                           const RememberRequest* remember) override;
  absl::StatusOr<std::optional<RequestAnswer>> LookupRequest(const std::string& key) const override;
  absl::StatusOr<std::vector<SpoolEntry>> Read(uint64_t from_sequence, size_t max) const override;
  absl::Status Acknowledge(uint64_t watermark) override;
  // These four read counters kept in memory: no disk access, no error.
  uint64_t Depth() const override;
  uint64_t Bytes() const override;
  absl::Duration OldestUnacknowledgedAge() const override;
  uint64_t LastSequence() const override;
  uint64_t DroppedOldest() const override;
  // Input state lives in table input_state(key, value) of the same file.
  absl::StatusOr<AppendResult> AppendWithState(std::vector<v1::Observation> observations,
                                               const std::vector<StateWrite>& writes) override;
  absl::StatusOr<std::map<std::string, std::string>> ReadState(
      const std::string& prefix) const override;

  // A prepared statement, kept for the spool's lifetime (defined in the .cc).
  struct Statements;

 private:
  SqliteSpool(std::string path, SpoolOptions options);

  // Opening steps, before the spool is shared.
  absl::Status Init();

  // Turns SQLite result `rc` of `what` into a Status naming the path (OK for
  // SQLITE_OK/ROW/DONE).
  absl::Status Check(int rc, const char* what) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs `sql` (no results) / one integer answer of a pragma or query.
  absl::Status ExecLocked(const std::string& sql, const char* what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<int64_t> QueryIntLocked(const char* sql, const char* what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Rolls back an open transaction after a failure (best effort).
  void RollbackLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reloads depth, bytes and the oldest row's time from the file.
  absl::Status LoadCountersLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<bool> IdKnownLocked(const std::string& id, int64_t cutoff_nanos)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<AppendResult> AppendLocked(std::vector<v1::Observation> observations,
                                            const RememberRequest* remember, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // AppendLocked's steps, in its open transaction. An observation to
  // store: its bytes, its id (null when it has none).
  struct Row {
    std::string bytes;
    const std::string* id;
  };
  // The rows of `observations` (ids pointing into them), leaving out and
  // counting in result->duplicates those whose id came earlier in the
  // batch or was acknowledged since `cutoff_nanos`; adds their size to
  // *bytes.
  absl::Status NewRowsLocked(const std::vector<v1::Observation>& observations, int64_t cutoff_nanos,
                             std::vector<Row>* rows, uint64_t* bytes, AppendResult* result)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // OK when `adding` rows (`adding_bytes`) fit, or fit once DropOldestLocked
  // made room (kDropOldest; adds what it deleted to *drop_count and
  // *drop_bytes); else the spool-full error.
  absl::Status MakeRoomLocked(uint64_t adding, uint64_t adding_bytes, uint64_t* drop_count,
                              uint64_t* drop_bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Inserts `rows`, numbered on from last_sequence_, and stores the new
  // last sequence.
  absl::Status InsertRowsLocked(const std::vector<Row>& rows, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stores the answer to `remember`'s request key.
  absl::Status RememberRequestLocked(const RememberRequest& remember, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Once committed: the counters follow what was added and dropped.
  void CountAppendedLocked(uint64_t added, uint64_t added_bytes, uint64_t drop_count,
                           uint64_t drop_bytes, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // kDropOldest: deletes (in the open transaction) the oldest observations
  // until `adding` more (`adding_bytes`) fit; adds what it deleted to
  // *count and *bytes.
  absl::Status DropOldestLocked(uint64_t adding, uint64_t adding_bytes, uint64_t* count,
                                uint64_t* bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status AcknowledgeLocked(uint64_t watermark, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::optional<RequestAnswer>> LookupRequestLocked(const std::string& key,
                                                                   int64_t cutoff_nanos) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  const SpoolOptions options_;
  uint64_t incarnation_ = 0;  // Set by Init, then constant.
  mutable absl::Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::unique_ptr<Statements> stmts_ ABSL_GUARDED_BY(mu_);
  uint64_t last_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t depth_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // received_at of the oldest unacknowledged observation (if depth_ > 0).
  absl::Time oldest_ ABSL_GUARDED_BY(mu_);
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;  // By kDropOldest, since Open.
};

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_SQLITE_SPOOL_H_
