// The collector's durable log of received batches, with group commit.
//
// A batch is acknowledged to its agent only after it is in this log: an
// SQLite file in WAL mode with synchronous=FULL, written by one committer
// thread that takes every batch queued since its last commit into one
// transaction (group commit), so acknowledging stays fast under load while
// each acknowledgement is as durable as an fsync. Committed groups go, in
// log order, to a second thread that runs their callbacks (which apply and
// acknowledge the batches), so applying one group overlaps committing the
// next. On start the log is replayed in order through the engine's own
// deduplication, which rebuilds every cell and high-water mark exactly: a
// batch applies once, across restarts too.
//
//   absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path);
//   (*log)->Replay([&](const v1::Batch& b, absl::Time received) { ... });
//   (*log)->Start();
//   (*log)->Append(bytes, received, [](absl::Status committed) { ... });
//
// Snapshots keep the log short and make restarts exact, without holding
// up acknowledgements: every checkpoint interval a fourth thread, the
// snapshot thread, prepares a capture of the engine's state; the applier,
// between the callbacks of two groups, begins it (a brief step: the state
// is then exactly that of the log up to the last applied position, the
// snapshot's watermark); the snapshot thread finishes and serializes it
// while batches keep committing and applying, and writes it to a file
// beside the log ("<log>.snapshot.<watermark>.<ns>", fsynced, renamed into
// place); the committer, between two group commits, records that file
// (name, size, SHA-256) in one short transaction, then deletes the
// batches up to its watermark a step at a time between later commits.
// The state's bytes never pass through SQLite's write lock. The file it
// replaces is removed after the record commits. A crash before it leaves the previous
// snapshot and every batch after it (Open removes the unrecorded file). A
// clean shutdown takes one more, after the last commit. On start the
// latest snapshot is loaded, its file checked, and only the batches after
// it replayed: findings keep their start times, drift its baselines,
// trust its balances.
//
// SQLite's WAL is copied into the database file (a WAL checkpoint, with
// its own fsync) by a third thread on a connection of its own, while
// commits go on: run inline, as SQLite does by default, every 4 MB of
// batches would hold up every acknowledgement for that copy. Only when
// the WAL grows past Options::wal_restart_pages without SQLite getting a
// chance to restart it (load never pauses) does that thread hold commits
// back briefly to restart it.
// One collector per log: Open takes an exclusive lock on "<path>.lock".
//
//   (*log)->LoadSnapshot() -> {state, through}; engine.LoadState(state)
//   (*log)->Replay(apply, through)
//   (*log)->SetCheckpoint(absl::Minutes(5), [&]() -> BatchLog::Begin {
//     auto c = engine.PrepareCapture();
//     return [&, c]() -> BatchLog::Finish {
//       engine.BeginCapture(c);
//       return [&, c] { return engine.FinishCapture(c); };
//     };
//   });
//
// Thread-safety: Append may be called from any thread; callbacks run on
// the log's applier thread, one at a time in log order, and must not
// block. Replay before Start.
//
// Applying on more than one core (Options::apply_threads > 1): a batch
// appended with a lane (its location) and a `beside` callback may have
// that callback run beside other lanes' on the applier's helpers. A
// committed group is applied in two steps. First each lane's batches, in
// log order, are offered to their `beside` callbacks, lanes at once; a
// callback that cannot do its batch's whole work without an order across
// lanes (in the engine: one that would create a series, a cell or a
// location, count a rejection or a gap, i.e. anything a limit or another
// location's batch could decide) declines, doing nothing, and ends its
// lane's first step. Then, on the applier thread, every batch not done
// yet gets its `done` callback, in log order. What the first step did
// commutes with everything else in the group (other lanes' cells, and
// nothing a later decision reads), so the state after the group is the
// state of applying it one batch after another, which is what Replay
// does: a restart reproduces what was acknowledged.
#ifndef CONSTANCE_COLLECTOR_BATCH_LOG_H_
#define CONSTANCE_COLLECTOR_BATCH_LOG_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "constance/v1/ingest.pb.h"

struct sqlite3;

namespace constance::collector {

class BatchLog {
 public:
  using Committed = std::function<void(absl::Status)>;

  struct Options {
    // The WAL is copied into the database file once this many of its
    // pages (4 KiB) are new, and restarted (written from its start
    // again) at this size, so it never grows much past it.
    int64_t wal_checkpoint_pages = 1000;
    int64_t wal_restart_pages = 16384;
    // For tests: called with a snapshot's file once it is written whole,
    // before the log records it (where a crash leaves it unrecorded).
    std::function<void(const std::string& file)> after_snapshot_file;
    // Threads that apply committed batches (the applier and helpers):
    // more apply different lanes' batches at once (see above).
    int apply_threads = 1;
  };

  // The log format this collector writes (SQLite's user_version); it
  // reads every format since the first release's and migrates it on
  // Open. batch_log.cc lists them.
  static constexpr int64_t kLogFormat = 2;

  // Opens or creates the log at `path`. Errors name the path. A log of a
  // newer format is refused (FailedPrecondition, naming both formats)
  // before anything in it is written. Snapshot files beside it that the
  // log does not record (left by a crash while one was being stored) are
  // removed.
  static absl::StatusOr<std::unique_ptr<BatchLog>> Open(const std::string& path,
                                                        Options options);
  static absl::StatusOr<std::unique_ptr<BatchLog>> Open(const std::string& path) {
    return Open(path, Options());
  }
  ~BatchLog();  // Commits what is queued, then stops.
  BatchLog(const BatchLog&) = delete;
  BatchLog& operator=(const BatchLog&) = delete;

  // Calls `apply` for every logged batch after log position `after` (0:
  // all), oldest first, with the time it was received. Returns how many
  // batches were replayed.
  absl::StatusOr<uint64_t> Replay(const std::function<void(const v1::Batch&, absl::Time)>& apply,
                                  int64_t after = 0);

  // The latest snapshot: the captured state and the log position it
  // covers, read from its file and checked against the size and SHA-256
  // the log recorded. NotFound when none was taken yet; DataLoss, naming
  // the file and what to do, when the file is missing or does not match
  // (the batches it covers are gone: never start without it).
  struct Snapshot {
    std::string state;
    int64_t through = 0;
    absl::Time saved_at;
    std::string file;  // Its path; empty for a log format 1 snapshot (in the log).
  };
  absl::StatusOr<Snapshot> LoadSnapshot();

  // A snapshot's three steps. Prepare runs on the snapshot thread and may
  // wait (e.g. for an evaluation in progress); the Begin it returns runs
  // on the applier thread between two groups' callbacks, when the state is
  // that of exactly the batches applied so far, and must be brief (every
  // acknowledgement waits for it); the Finish it returns runs on the
  // snapshot thread while batches go on, and returns the state as of
  // Begin. At shutdown all three run on the committer thread, after the
  // last commit was applied.
  using Finish = std::function<std::string()>;
  using Begin = std::function<Finish()>;
  using Prepare = std::function<Begin()>;
  // Takes a snapshot every `every` (and at shutdown) through `prepare`,
  // and compacts the log up to the position Begin ran at. Before Start.
  void SetCheckpoint(absl::Duration every, Prepare prepare);

  // Snapshots taken and the latest one's size, duration (from Prepare to
  // stored), the part of it spent writing its file, the part commits
  // waited (recording it) and the batches it removed from the log, for
  // /metrics.
  struct CheckpointStats {
    uint64_t snapshots = 0;
    uint64_t failures = 0;
    uint64_t last_bytes = 0;
    double last_seconds = 0;
    double last_write_seconds = 0;  // Writing and fsyncing its file, beside commits.
    double last_store_seconds = 0;
    uint64_t compacted_batches = 0;
  };
  CheckpointStats checkpoint_stats() const;

  // Starts the committer, applier, snapshot and WAL checkpointer threads.
  void Start();

  // Queues a serialized constance.v1.Batch, e.g. as received, without a
  // copy: `batch` must remain valid until `done` has run (`done` may own
  // it). `done` runs once the batch is durable (OK) or could not be
  // written (the error; the batch must then not be acknowledged), after
  // the callbacks of every batch logged before it.
  void Append(absl::string_view batch, absl::Time received, Committed done);

  // Append for a batch of `lane` (e.g. a hash of its location: batches of
  // one lane apply in log order) whose work `beside` may do beside other
  // lanes' batches, once committed (see the top of this file): true when
  // it did all of it, `done` included (then `done` is not called); false
  // when it did nothing (then `done` is called, in log order, alone).
  using Beside = std::function<bool()>;
  void Append(absl::string_view batch, absl::Time received, uint64_t lane, Beside beside,
              Committed done);

  // Batches committed so far and the latency of the last group commit.
  uint64_t committed() const;
  absl::Duration last_commit_latency() const;

  // Upper bounds (seconds) of the commit latency histogram's buckets; the
  // last bucket (+Inf) is implicit.
  static const std::vector<double>& CommitLatencyBounds();

  // Every group commit so far, for /metrics.
  struct CommitStats {
    uint64_t commits = 0;   // Group commits (transactions).
    uint64_t batches = 0;   // Batches they committed.
    uint64_t failures = 0;  // Group commits that failed (nothing acknowledged).
    uint64_t wal_checkpoints = 0;       // WAL checkpoints (copies into the database file).
    double wal_checkpoint_seconds = 0;  // Their total duration.
    uint64_t wal_restarts = 0;          // Of those, the ones that restarted the WAL.
    uint64_t wal_pages = 0;             // Pages in the WAL after the last commit.
    double latency_sum_seconds = 0;
    // Commits per bucket of CommitLatencyBounds() (not cumulative), plus
    // one for +Inf.
    std::vector<uint64_t> latency_buckets;
  };
  CommitStats commit_stats() const;

 private:
  BatchLog(sqlite3* db, sqlite3* wal_db, int lock_fd, std::string path, Options options);
  struct Pending {
    absl::string_view body;  // Kept alive by `done`.
    int64_t received_ns = 0;
    Committed done;
    uint64_t lane = 0;
    Beside beside;         // Null: only `done`, in log order.
    bool settled = false;  // `beside` did the work.
  };
  // A group commit's batches and outcome, waiting for their callbacks.
  struct CommittedGroup {
    std::deque<Pending> batches;
    absl::Status status;
    int64_t through = 0;  // The log position once it is applied.
  };
  // A finished snapshot, written to its file, for the committer to record.
  struct Finished {
    absl::Status written;  // Not OK: no file, nothing to record.
    std::string file;      // Its name in dir_.
    uint64_t bytes = 0;
    std::string sha256;  // Hex.
    int64_t through = 0;
    absl::Time started;
    double write_seconds = 0;
  };

  // The committer thread: group commits, and snapshots stored between
  // them. Its steps, each on that thread:
  void CommitLoop();
  struct Committer;
  // Waits until there is something to do (batches queued, a snapshot
  // finished or due, a stop) and takes the queued batches into `group`;
  // whether the log is stopping.
  // A compaction in progress waits for nothing.
  bool AwaitWork(absl::Time last_checkpoint, bool compacting, std::deque<Pending>* group);
  // Writes `group` in one transaction and hands it to the applier.
  void CommitGroup(Committer& c, std::deque<Pending> group);
  // Records the snapshot the snapshot thread finished, if any, and has
  // the batches it covers compacted.
  void StoreFinished(Committer& c);
  // Deletes a step's worth of the batches up to `through`; whether none
  // are left (or deleting failed: the next snapshot's compaction retries).
  bool CompactStep(int64_t through);
  // Asks the snapshot thread for a snapshot unless one is in flight.
  void AskSnapshot(Committer& c);
  // After the last commit: a snapshot covering the whole log, and its
  // compaction.
  void SnapshotAtStop(Committer& c);
  // The highest position in the log or its snapshot; none when SQLite
  // cannot say (then the log refuses every batch).
  std::optional<int64_t> ReadLastPosition();
  // Counts a group commit of `batches` that took `latency` in stats_.
  void CountCommitLocked(absl::Duration latency, bool ok, size_t batches)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Checkpoints the WAL on wal_db_ whenever enough of it is new.
  void WalLoop();
  // SQLite's WAL hook: `pages` are in the WAL after a commit.
  static int OnWalCommit(void* self, sqlite3* db, const char* name, int pages);
  // Runs the callbacks of committed groups, in order.
  void ApplyLoop();
  // Runs one committed group's callbacks: lanes beside each other first,
  // when there are helpers, then the rest in log order.
  void ApplyGroup(CommittedGroup& group);
  // The first step's lanes, each a run of one lane's batches in log order.
  struct Lanes {
    std::vector<std::vector<Pending*>> runs;
    std::atomic<size_t> next{0};
  };
  // Offers the lanes' batches to their `beside` callbacks until none is
  // left; on the applier and on every helper at once.
  static void RunLanes(Lanes& lanes);
  // A helper thread: runs the lanes the applier hands out.
  void HelpLoop();
  // Prepares, begins and finishes snapshots as the committer asks.
  void SnapshotLoop();
  // Writes `state`, covering the log up to `through`, whose capture
  // started at `started`, to a new file beside the log. Snapshot thread
  // (committer at stop).
  Finished WriteSnapshot(const std::string& state, int64_t through, absl::Time started);
  // Records a written snapshot in the log, one short transaction; queues
  // the file it supersedes (or, failing, its own) for removal. Committer
  // thread only.
  absl::Status RecordSnapshot(const Finished& f);
  // RecordSnapshot, with a failure logged (the log keeps every batch);
  // whether it was recorded.
  bool Store(const Finished& f);
  // On Open: reads which snapshot file the log records and removes the
  // others (a crash's leftovers).
  absl::Status RemoveUnrecordedFiles();
  // Removes these files of dir_ (a failure is logged: they are not needed).
  void RemoveFiles(const std::vector<std::string>& names);

  sqlite3* const db_;
  sqlite3* const wal_db_;  // The WAL checkpointer's connection.
  const int lock_fd_;      // Holds the exclusive lock on "<path>.lock".
  const std::string path_;
  const std::string dir_;   // Its directory, where snapshot files go.
  const std::string base_;  // Its file name, which theirs start with.
  const Options options_;
  mutable absl::Mutex mu_;
  std::deque<Pending> queue_ ABSL_GUARDED_BY(mu_);
  // Committed groups, oldest first; the front one's callbacks may be
  // running (it is popped after them), so empty means all applied.
  std::deque<CommittedGroup> applying_ ABSL_GUARDED_BY(mu_);
  bool commits_done_ ABSL_GUARDED_BY(mu_) = false;  // The committer has finished.
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t committed_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Duration last_latency_ ABSL_GUARDED_BY(mu_);
  CommitStats stats_ ABSL_GUARDED_BY(mu_);
  CheckpointStats checkpoint_stats_ ABSL_GUARDED_BY(mu_);
  int64_t wal_pages_ ABSL_GUARDED_BY(mu_) = 0;  // Pages in the WAL (the hook's count).
  // Pages of the WAL already in the database file, as of the last
  // checkpoint; above wal_pages_ once SQLite restarted the WAL.
  int64_t wal_backfilled_ ABSL_GUARDED_BY(mu_) = 0;
  // The log position the engine's state is at: that of the last group
  // whose callbacks ran.
  int64_t applied_through_ ABSL_GUARDED_BY(mu_) = 0;
  // A snapshot's way through the threads: asked for by the committer
  // (snapshot_asked_), prepared by the snapshot thread (begin_), begun by
  // the applier at applied_through_ (finish_, finish_through_), finished by
  // the snapshot thread (finished_), stored by the committer; in_flight_
  // from the asking to the storing.
  bool snapshot_asked_ ABSL_GUARDED_BY(mu_) = false;
  bool in_flight_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<Begin> begin_ ABSL_GUARDED_BY(mu_);
  std::optional<Finish> finish_ ABSL_GUARDED_BY(mu_);
  int64_t finish_through_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<Finished> finished_ ABSL_GUARDED_BY(mu_);
  // The snapshot file the log records ("" when none, or in the log). Set
  // by Open, then by the committer (under mu_).
  std::string recorded_file_;
  // Snapshot files out of force, for the snapshot thread to remove.
  std::vector<std::string> superseded_ ABSL_GUARDED_BY(mu_);
  // Set before Start, then only read.
  absl::Duration checkpoint_every_ = absl::InfiniteDuration();
  Prepare prepare_;
  std::thread committer_;
  std::thread applier_;
  std::vector<std::thread> helpers_;
  // The lanes the applier hands its helpers, while it runs them too.
  absl::Mutex lanes_mu_;
  Lanes* lanes_ ABSL_GUARDED_BY(lanes_mu_) = nullptr;
  uint64_t lanes_handed_ ABSL_GUARDED_BY(lanes_mu_) = 0;  // Handed out so far.
  int helping_ ABSL_GUARDED_BY(lanes_mu_) = 0;            // Helpers running lanes.
  bool helpers_stop_ ABSL_GUARDED_BY(lanes_mu_) = false;
  std::thread snapshotter_;
  std::thread wal_checkpointer_;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_BATCH_LOG_H_
