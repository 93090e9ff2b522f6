// The drop directory: a folder where store systems export files (CSV,
// JSONL) that become observations, read with the mappings of
// DropDirectoryConfig (config.h) by FileParser (file_input.h).
//
// The folder is scanned every poll_interval rather than watched with
// inotify: exports often land on network shares and bind mounts where
// inotify sees nothing, a scan is cheap at the sizes a store produces, and
// one code path then covers files that appear, grow, are rotated or are
// truncated.
//
// Checkpoints. For each file (identified by device and inode, so a renamed
// or rotated file keeps its place) the byte offset and line number after
// the last record taken are kept in the spool's input state, written in the
// same transaction as the observations of those records
// (Spool::AppendWithState): after kill -9, a restart neither re-reads nor
// misses a record. A checkpoint also keeps a hash of the file's first bytes,
// so a new file that reuses an inode, or a file rewritten in place, is read
// from the start; a file shorter than its checkpoint was truncated and is
// read from the start too.
//
// Files still being written: only lines ending with a newline are read. A
// file unchanged for settle_time is complete: its last line is read even
// without a newline, and the file is moved to processed_dir (or kept, and
// then remembered so it is never read twice; lines appended later are read).
// A file whose name the mapping's name_regex cannot read (file_name.h) is
// logged once and left alone, as a file matching no pattern is. A bad
// record is logged with file and line, counted on /metrics
// (constance_agent_input_records_rejected_total) and skipped; the rest of
// the file goes on. When the spool is full the file waits at its
// checkpoint and is retried on the next scan.
//
// Hostile or broken files. A line longer than max_line_bytes is reported as
// FILE:LINE, skipped to its newline (the checkpoint moves past it) and the
// lines after it are read. Before parsing a file the agent notes, in the
// spool's input state, which file and offset it is reading, and clears the
// note afterwards. A note found at start means the agent stopped (crash,
// kill) in that file; the file is read again once, and if the agent stops
// there again at the same offset the file is moved to quarantine_dir
// (default <path>/quarantine), logged, and never read again unless someone
// moves it back. An agent killed once in the middle of a good file thus
// loses nothing, and a file that crashes it cannot make a restart loop.
//
// Test hook: when the environment variable CONSTANCE_AGENT_TEST_ABORT_ON
// is set and not empty, the agent aborts as it is about to parse data
// containing its value (tests/integration/hostile_test.cc simulates a
// crashing line with it). Never set in production.
//
// Example:
//   auto dd = DropDirectory::Create(config.drop_directory, deps);
//   (*dd)->Start();          // Scans on its own thread.
//   (*dd)->Reconfigure(new_config.drop_directory);   // SIGHUP
//
// Thread-safe. The objects in `deps` must outlive the DropDirectory.
#ifndef CONSTANCE_AGENT_DROP_DIR_H_
#define CONSTANCE_AGENT_DROP_DIR_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/config.h"
#include "agent/file_input.h"
#include "agent/metrics.h"
#include "agent/spool.h"
#include "agent/tickets.h"
#include "constance/validate.h"

namespace constance::agent {

struct DropDirectoryDeps {
  Spool* spool = nullptr;
  // Where ticket records go; null: ticket files are refused line by line.
  TicketTracker* tickets = nullptr;
  // May be null.
  AgentMetrics* metrics = nullptr;
  // Called with the last sequence after each append (wakes the sender).
  std::function<void(uint64_t)> on_appended;
  // Rows of a mapping with location_column, and files whose name gives a
  // location (name_regex), are kept when they name this; others are
  // skipped, counted and logged.
  std::string location;
  Limits limits;
  std::function<absl::Time()> now = [] { return absl::Now(); };
};

// What one scan did (for tests and logs).
struct ScanStats {
  uint64_t files_seen = 0;
  uint64_t records = 0;
  uint64_t observations = 0;
  uint64_t rejected = 0;
  uint64_t files_done = 0;
  // Records skipped because their location column, or their file's name,
  // named another store.
  uint64_t other_location = 0;
};

class DropDirectory {
 public:
  // Checks `config` (the folder must exist when set; processed_dir is
  // created) and loads the checkpoints from the spool.
  static absl::StatusOr<std::unique_ptr<DropDirectory>> Create(DropDirectoryConfig config,
                                                               DropDirectoryDeps deps);
  ~DropDirectory();
  DropDirectory(const DropDirectory&) = delete;
  DropDirectory& operator=(const DropDirectory&) = delete;

  // Scans every poll_interval on a thread of its own until Stop().
  void Start();
  // Stops the thread after the scan in progress, if any. Idempotent.
  void Stop();

  // Replaces the configuration from the next scan on. InvalidArgument (and
  // the old configuration stays) when the new folder does not exist.
  absl::Status Reconfigure(DropDirectoryConfig config);

  // One scan, now, on the caller's thread.
  absl::StatusOr<ScanStats> ScanOnce();

 private:
  struct Checkpoint {
    uint64_t offset = 0;
    int64_t line = 1;
    uint64_t head_len = 0;
    uint64_t head_hash = 0;
    std::string name;
  };
  // The note of the file being read, as last written.
  struct Reading {
    std::string key;
    uint64_t offset = 0;
    int stops = 0;  // Times the agent stopped reading it at `offset`.
    std::string name;
  };
  static std::string SerializeReading(const Reading& note);
  static std::optional<Reading> ParseReading(const std::string& text);
  DropDirectory(DropDirectoryConfig config, DropDirectoryDeps deps);

  // `name` is opened relative to `dir_fd` (the drop directory), never
  // through a symlink.
  absl::Status ProcessFile(const DropDirectoryConfig& config, int dir_fd, const std::string& name,
                           const InputMapping& mapping, ScanStats* stats)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(scan_mu_);
  // Skips the line at `cp` (over max_line_bytes, its newline beyond the
  // data read): commits a checkpoint after its newline, or after the end of
  // a settled file. OK with *cp unchanged while the newline is still to
  // come.
  absl::Status SkipLongLine(int fd, uint64_t size, bool settled, const std::string& key,
                            const std::string& path, size_t max_line_bytes, Checkpoint* cp,
                            ScanStats* stats) ABSL_EXCLUSIVE_LOCKS_REQUIRED(scan_mu_);
  // Reads and commits the records of `fd` from `*cp` on.
  absl::Status ReadNew(const DropDirectoryConfig& config, int fd, uint64_t size, bool settled,
                       const std::string& key, const std::string& path, FileParser& parser,
                       Checkpoint* cp, ScanStats* stats) ABSL_EXCLUSIVE_LOCKS_REQUIRED(scan_mu_);
  // The note of the file being read (see the file comment): written before
  // parsing `key` from `offset`, cleared after.
  absl::Status NoteReading(const std::string& key, uint64_t offset, const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(scan_mu_);
  void ClearReading() ABSL_EXCLUSIVE_LOCKS_REQUIRED(scan_mu_);
  // At start: acts on a note left by an agent that stopped while reading.
  absl::Status RecoverReading(const DropDirectoryConfig& config)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(scan_mu_);
  absl::Status Commit(const std::string& key, const Checkpoint& next, const std::string& file,
                      std::vector<InputRecord>& records, ScanStats* stats)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(scan_mu_);
  void Loop();

  const DropDirectoryDeps deps_;
  // Serialises scans (the thread, ScanOnce).
  absl::Mutex scan_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::map<std::string, Checkpoint> checkpoints_ ABSL_GUARDED_BY(scan_mu_);
  // Parsers by checkpoint key (they remember a file's header).
  std::map<std::string, std::unique_ptr<FileParser>> parsers_ ABSL_GUARDED_BY(scan_mu_);
  std::set<std::string> warned_ ABSL_GUARDED_BY(scan_mu_);
  std::optional<Reading> reading_ ABSL_GUARDED_BY(scan_mu_);
  // CONSTANCE_AGENT_TEST_ABORT_ON (see the file comment); empty: unset.
  const std::string abort_on_;
  absl::Mutex mu_;
  DropDirectoryConfig config_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_DROP_DIR_H_
