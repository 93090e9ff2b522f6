#include "agent/drop_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/file_name.h"
#include "agent/input_values.h"
#include "spdlog/spdlog.h"

namespace constance::agent {
namespace {

constexpr char kStatePrefix[] = "drop/";
// Bytes read per step of a file.
constexpr size_t kReadChunk = 4 << 20;
// Bytes of a file's start whose hash identifies it.
constexpr uint64_t kHeadBytes = 1024;

std::string Serialize(uint64_t offset, int64_t line, uint64_t head_len, uint64_t head_hash,
                      const std::string& name) {
  return absl::StrCat(offset, " ", line, " ", head_len, " ", head_hash, " ", name);
}

// The input-state key of the note of the file being read (see drop_dir.h);
// outside kStatePrefix, so not taken for a checkpoint.
constexpr char kReadingKey[] = "reading/drop";
// Stops in one file at one offset after which it is quarantined.
constexpr int kStopsBeforeQuarantine = 2;

std::string QuarantineDir(const DropDirectoryConfig& c) {
  return c.quarantine_dir.empty() ? c.path + "/quarantine" : c.quarantine_dir;
}

// `dir`/`name`, or `dir`/`name`.N for the first N free.
std::string FreeName(const std::string& dir, const std::string& name) {
  std::string target = dir + "/" + name;
  for (int n = 1; access(target.c_str(), F_OK) == 0; ++n) {
    target = absl::StrCat(dir, "/", name, ".", n);
  }
  return target;
}

std::string ProcessedDir(const DropDirectoryConfig& c) {
  return c.processed_dir.empty() ? c.path + "/processed" : c.processed_dir;
}

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::FailedPreconditionError(
      absl::StrCat("drop directory: ", what, " ", path, ": ", std::strerror(errno)));
}

// Reads up to `n` bytes at `offset`.
absl::StatusOr<std::string> ReadAt(int fd, uint64_t offset, size_t n, const std::string& path) {
  std::string buf(n, '\0');
  size_t got = 0;
  while (got < n) {
    ssize_t r = pread(fd, buf.data() + got, n - got, static_cast<off_t>(offset + got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Errno("cannot read", path);
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  buf.resize(got);
  return buf;
}

absl::Status CheckFolder(const DropDirectoryConfig& c) {
  if (c.path.empty()) return absl::OkStatus();
  struct stat st;
  if (stat(c.path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("drop_directory.path ", c.path, " is not an existing directory"));
  }
  if (!c.keep_processed) {
    const std::string done = ProcessedDir(c);
    if (mkdir(done.c_str(), 0750) != 0 && errno != EEXIST) {
      return Errno("cannot create the processed folder", done);
    }
  }
  return absl::OkStatus();
}

}  // namespace

DropDirectory::DropDirectory(DropDirectoryConfig config, DropDirectoryDeps deps)
    : deps_(std::move(deps)),
      abort_on_([] {
        const char* v = std::getenv("CONSTANCE_AGENT_TEST_ABORT_ON");
        return std::string(v == nullptr ? "" : v);
      }()),
      config_(std::move(config)) {}

std::string DropDirectory::SerializeReading(const Reading& note) {
  return absl::StrCat(note.offset, " ", note.stops, " ", note.key, " ", note.name);
}

std::optional<DropDirectory::Reading> DropDirectory::ParseReading(const std::string& text) {
  std::vector<std::string> parts = absl::StrSplit(text, absl::MaxSplits(' ', 3));
  Reading note;
  if (parts.size() != 4 || !absl::SimpleAtoi(parts[0], &note.offset) ||
      !absl::SimpleAtoi(parts[1], &note.stops) || parts[2].empty() || parts[3].empty()) {
    return std::nullopt;
  }
  note.key = parts[2];
  note.name = parts[3];
  return note;
}

absl::StatusOr<std::unique_ptr<DropDirectory>> DropDirectory::Create(DropDirectoryConfig config,
                                                                     DropDirectoryDeps deps) {
  if (absl::Status s = CheckFolder(config); !s.ok()) return s;
  std::unique_ptr<DropDirectory> dd(new DropDirectory(std::move(config), std::move(deps)));
  absl::StatusOr<std::map<std::string, std::string>> state =
      dd->deps_.spool->ReadState(kStatePrefix);
  if (!state.ok()) return state.status();
  absl::MutexLock lock(&dd->scan_mu_);
  for (const auto& [key, value] : *state) {
    std::vector<std::string> parts = absl::StrSplit(value, absl::MaxSplits(' ', 4));
    Checkpoint cp;
    if (parts.size() != 5 || !absl::SimpleAtoi(parts[0], &cp.offset) ||
        !absl::SimpleAtoi(parts[1], &cp.line) || !absl::SimpleAtoi(parts[2], &cp.head_len) ||
        !absl::SimpleAtoi(parts[3], &cp.head_hash)) {
      spdlog::warn("drop directory: unreadable checkpoint {} ignored", key);
      continue;
    }
    cp.name = parts[4];
    dd->checkpoints_[key] = cp;
  }
  absl::MutexLock config_lock(&dd->mu_);
  if (absl::Status s = dd->RecoverReading(dd->config_); !s.ok()) return s;
  return dd;
}

DropDirectory::~DropDirectory() { Stop(); }

void DropDirectory::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void DropDirectory::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

absl::Status DropDirectory::Reconfigure(DropDirectoryConfig config) {
  if (absl::Status s = CheckFolder(config); !s.ok()) return s;
  absl::MutexLock scan_lock(&scan_mu_);
  parsers_.clear();  // Mappings may have changed; headers are read again.
  warned_.clear();
  absl::MutexLock lock(&mu_);
  config_ = std::move(config);
  return absl::OkStatus();
}

void DropDirectory::Loop() {
  for (;;) {
    absl::StatusOr<ScanStats> scan = ScanOnce();
    if (!scan.ok()) spdlog::warn("{}", std::string(scan.status().message()));
    absl::MutexLock lock(&mu_);
    if (mu_.AwaitWithTimeout(absl::Condition(&stop_), config_.poll_interval)) return;
  }
}

absl::StatusOr<ScanStats> DropDirectory::ScanOnce() {
  absl::MutexLock scan_lock(&scan_mu_);
  DropDirectoryConfig config;
  {
    absl::MutexLock lock(&mu_);
    config = config_;
  }
  ScanStats stats;
  if (config.path.empty()) return stats;
  // Files are looked up and opened relative to the directory, never
  // through a symlink: a link to a file outside it (/etc/shadow) is not
  // read, nor a FIFO or device that would block or never end.
  const int dir_fd = open(config.path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return Errno("cannot open", config.path);
  struct DirCloser {
    int fd;
    ~DirCloser() { close(fd); }
  } dir_closer{dir_fd};
  DIR* dir = fdopendir(dup(dir_fd));
  if (dir == nullptr) return Errno("cannot list", config.path);
  std::vector<std::string> names;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') names.emplace_back(e->d_name);
  }
  closedir(dir);
  std::sort(names.begin(), names.end());
  std::set<std::string> present;
  for (const std::string& name : names) {
    const std::string path = config.path + "/" + name;
    struct stat st;
    if (fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (!S_ISREG(st.st_mode)) {
      if (!S_ISDIR(st.st_mode) && warned_.insert(name).second) {
        spdlog::warn(
            "drop directory: {} is not a regular file (a symlink, FIFO or device); left "
            "alone",
            path);
      }
      continue;
    }
    present.insert(absl::StrCat(kStatePrefix, st.st_dev, ":", st.st_ino));
    const InputMapping* mapping = nullptr;
    for (const InputMapping& m : config.files) {
      if (fnmatch(m.pattern.c_str(), name.c_str(), 0) == 0) {
        mapping = &m;
        break;
      }
    }
    if (mapping == nullptr) {
      if (warned_.insert(name).second) {
        spdlog::warn("drop directory: {} matches no files[].pattern; left alone", path);
      }
      continue;
    }
    ++stats.files_seen;
    if (absl::Status s = ProcessFile(config, dir_fd, name, *mapping, &stats); !s.ok()) {
      if (warned_.insert(absl::StrCat(name, "\n", s.message())).second) {
        spdlog::warn("{}", std::string(s.message()));
      }
    }
  }
  // Checkpoints of files gone from the folder (deleted, moved away) are
  // forgotten, so a later file reusing the inode starts clean.
  std::vector<StateWrite> forget;
  for (const auto& [key, cp] : checkpoints_) {
    if (present.count(key) == 0) forget.push_back({key, std::nullopt});
  }
  if (!forget.empty()) {
    absl::StatusOr<AppendResult> r = deps_.spool->AppendWithState({}, forget);
    if (r.ok()) {
      for (const StateWrite& w : forget) {
        checkpoints_.erase(w.key);
        parsers_.erase(w.key);
      }
    }
  }
  return stats;
}

absl::Status DropDirectory::ProcessFile(const DropDirectoryConfig& config, int dir_fd,
                                        const std::string& name, const InputMapping& mapping,
                                        ScanStats* stats) {
  const std::string path = config.path + "/" + name;
  // A name the mapping cannot read is not guessed at: the file waits,
  // reported once, until it is renamed or the mapping fixed.
  absl::StatusOr<FileNameFacts> facts = ReadFileName(mapping, name);
  if (!facts.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("drop directory ", config.path, ": ",
                                                      facts.status().message(), "; left alone"));
  }
  // O_NOFOLLOW and O_NONBLOCK: the name may have become a symlink or a
  // FIFO since it was listed.
  const int fd =
      openat(dir_fd, name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return Errno("cannot open", path);
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  struct stat st;
  if (fstat(fd, &st) != 0) return Errno("cannot stat", path);
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("drop directory: ", path, " is not a regular file; left alone"));
  }
  const std::string key = absl::StrCat(kStatePrefix, st.st_dev, ":", st.st_ino);
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  const absl::Time now = deps_.now();

  Checkpoint cp;
  if (auto it = checkpoints_.find(key); it != checkpoints_.end()) cp = it->second;
  bool restart = false;
  if (cp.offset > size) {
    spdlog::warn(
        "drop directory: {} is shorter than what was read ({} < {} bytes): truncated; "
        "reading it from the start",
        path, size, cp.offset);
    restart = true;
  } else if (cp.head_len > 0) {
    absl::StatusOr<std::string> head = ReadAt(fd, 0, cp.head_len, path);
    if (!head.ok()) return head.status();
    if (head->size() != cp.head_len || StableHash(*head) != cp.head_hash) {
      spdlog::info("drop directory: {} is a new file in place of {}; reading it from the start",
                   path, cp.name);
      restart = true;
    }
  }
  if (restart) {
    cp = Checkpoint{};
    parsers_.erase(key);
  }
  cp.name = name;
  std::unique_ptr<FileParser>& parser = parsers_[key];
  if (parser == nullptr) {
    Limits limits = deps_.limits;
    parser = std::make_unique<FileParser>(mapping, limits, *facts, config.max_line_bytes);
  }
  if (!facts->location.empty() && facts->location != deps_.location &&
      warned_.insert(absl::StrCat("other location\n", key)).second) {
    spdlog::info(
        "drop directory: {} is for location {} (from its name), not this agent's {}; its "
        "records are skipped",
        path, facts->location, deps_.location);
  }
  const bool settled = now - absl::TimeFromTimespec(st.st_mtim) >= config.settle_time;
  if (cp.offset < size) {
    if (absl::Status s = NoteReading(key, cp.offset, name); !s.ok()) return s;
    absl::Status read = ReadNew(config, fd, size, settled, key, path, *parser, &cp, stats);
    ClearReading();
    if (!read.ok()) return read;
  }
  if (cp.offset < size || !settled) return absl::OkStatus();

  // Complete: read to its end and unchanged for settle_time.
  if (config.keep_processed) {
    if (warned_.insert(absl::StrCat("done\n", key)).second) {
      spdlog::info("drop directory: {} read to its end ({} lines); kept", path, cp.line - 1);
      ++stats->files_done;
      if (deps_.metrics != nullptr) deps_.metrics->AddInputFileProcessed();
    }
    return absl::OkStatus();
  }
  const std::string target = FreeName(ProcessedDir(config), name);
  if (rename(path.c_str(), target.c_str()) != 0) return Errno("cannot move aside", path);
  spdlog::info("drop directory: {} read to its end ({} lines); moved to {}", path, cp.line - 1,
               target);
  ++stats->files_done;
  if (deps_.metrics != nullptr) deps_.metrics->AddInputFileProcessed();
  // Moved: its checkpoint is no longer needed. Should this fail or the agent
  // stop first, the next scan forgets it (the file is gone from the folder).
  absl::StatusOr<AppendResult> r = deps_.spool->AppendWithState({}, {{key, std::nullopt}});
  if (r.ok()) {
    checkpoints_.erase(key);
    parsers_.erase(key);
  }
  return absl::OkStatus();
}

absl::Status DropDirectory::ReadNew(const DropDirectoryConfig& config, int fd, uint64_t size,
                                    bool settled, const std::string& key, const std::string& path,
                                    FileParser& parser, Checkpoint* cp, ScanStats* stats) {
  const absl::Time now = deps_.now();
  if (cp->offset > 0 && !parser.has_header()) {
    // Resuming after the header: read it again to know the columns.
    absl::StatusOr<std::string> start =
        ReadAt(fd, 0, std::min<uint64_t>(cp->offset, kMaxRecordBytes), path);
    if (!start.ok()) return start.status();
    std::vector<InputRecord> ignored;
    parser.Parse(*start, 1, false, now, 1, &ignored);
  }
  // A chunk holds at least one whole line of the longest allowed.
  const size_t chunk = std::max<size_t>(kReadChunk, config.max_line_bytes + 1);
  while (cp->offset < size) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(size - cp->offset, chunk));
    absl::StatusOr<std::string> data = ReadAt(fd, cp->offset, want, path);
    if (!data.ok()) return data.status();
    if (!abort_on_.empty() && data->find(abort_on_) != std::string::npos) std::abort();
    const bool at_end = settled && cp->offset + data->size() >= size;
    if (!at_end && parser.LineTooLong(*data)) {
      const uint64_t before = cp->offset;
      if (absl::Status s = SkipLongLine(fd, size, settled, key, path, parser.max_line_bytes(), cp,
                                        stats);
          !s.ok() || cp->offset == before) {
        return s;
      }
      continue;
    }
    std::vector<InputRecord> records;
    const size_t used =
        parser.Parse(*data, cp->line, at_end, now, config.max_records_per_commit, &records);
    if (used == 0) break;  // Only an incomplete line: it waits.
    Checkpoint next = *cp;
    next.offset = cp->offset + used;
    if (!records.empty()) next.line = records.back().next_line;
    if (next.head_len < std::min<uint64_t>(next.offset, kHeadBytes)) {
      absl::StatusOr<std::string> head =
          ReadAt(fd, 0, static_cast<size_t>(std::min<uint64_t>(next.offset, kHeadBytes)), path);
      if (!head.ok()) return head.status();
      next.head_len = head->size();
      next.head_hash = StableHash(*head);
    }
    if (absl::Status s = Commit(key, next, path, records, stats); !s.ok()) return s;
    *cp = next;
    if (used < data->size() && records.empty()) break;
  }
  return absl::OkStatus();
}

absl::Status DropDirectory::SkipLongLine(int fd, uint64_t size, bool settled,
                                         const std::string& key, const std::string& path,
                                         size_t max_line_bytes, Checkpoint* cp,
                                         ScanStats* stats) {
  // The newline is looked for a chunk at a time: the line is never held
  // whole.
  uint64_t end = 0;
  for (uint64_t at = cp->offset + max_line_bytes; at < size && end == 0;) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(size - at, kReadChunk));
    absl::StatusOr<std::string> data = ReadAt(fd, at, want, path);
    if (!data.ok()) return data.status();
    if (data->empty()) break;
    if (size_t nl = data->find('\n'); nl != std::string::npos) end = at + nl + 1;
    at += data->size();
  }
  if (end == 0 && settled) end = size;  // Complete: the line ends with the file.
  if (end == 0) return absl::OkStatus();  // Still being written: waits.
  InputRecord skipped;
  skipped.line = cp->line;
  skipped.next_line = cp->line + 1;
  skipped.error = LineTooLongReason(max_line_bytes);
  std::vector<InputRecord> records;
  records.push_back(std::move(skipped));
  Checkpoint next = *cp;
  next.offset = end;
  next.line = cp->line + 1;
  if (next.head_len < std::min<uint64_t>(next.offset, kHeadBytes)) {
    absl::StatusOr<std::string> head =
        ReadAt(fd, 0, static_cast<size_t>(std::min<uint64_t>(next.offset, kHeadBytes)), path);
    if (!head.ok()) return head.status();
    next.head_len = head->size();
    next.head_hash = StableHash(*head);
  }
  if (absl::Status s = Commit(key, next, path, records, stats); !s.ok()) return s;
  *cp = next;
  return absl::OkStatus();
}

absl::Status DropDirectory::NoteReading(const std::string& key, uint64_t offset,
                                        const std::string& name) {
  Reading note{key, offset, 0, name};
  if (reading_ && reading_->key == key && reading_->offset == offset) {
    note.stops = reading_->stops;
  }
  absl::StatusOr<AppendResult> r =
      deps_.spool->AppendWithState({}, {{kReadingKey, SerializeReading(note)}});
  if (!r.ok()) return r.status();
  reading_ = std::move(note);
  return absl::OkStatus();
}

void DropDirectory::ClearReading() {
  // Should this fail, the note names a file read without trouble: at the
  // next start it is read once more, never quarantined for one stop.
  absl::StatusOr<AppendResult> r = deps_.spool->AppendWithState({}, {{kReadingKey, std::nullopt}});
  if (!r.ok()) spdlog::warn("drop directory: {}", std::string(r.status().message()));
}

absl::Status DropDirectory::RecoverReading(const DropDirectoryConfig& config) {
  absl::StatusOr<std::map<std::string, std::string>> state = deps_.spool->ReadState(kReadingKey);
  if (!state.ok()) return state.status();
  auto it = state->find(kReadingKey);
  if (it == state->end()) return absl::OkStatus();
  std::optional<Reading> note = ParseReading(it->second);
  if (!note) {
    spdlog::warn("drop directory: unreadable note of the file being read ignored");
    return deps_.spool->AppendWithState({}, {{kReadingKey, std::nullopt}}).status();
  }
  ++note->stops;
  const std::string path = config.path + "/" + note->name;
  if (note->stops < kStopsBeforeQuarantine) {
    spdlog::warn(
        "drop directory: the agent stopped while reading {} (at byte {}); reading it again, "
        "and quarantining it if the agent stops there once more",
        path, note->offset);
    reading_ = note;
    return deps_.spool->AppendWithState({}, {{kReadingKey, SerializeReading(*note)}}).status();
  }
  struct stat st;
  if (config.path.empty() || lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) ||
      absl::StrCat(kStatePrefix, st.st_dev, ":", st.st_ino) != note->key) {
    spdlog::warn("drop directory: the agent stopped twice while reading {}, now gone", path);
  } else {
    const std::string dir = QuarantineDir(config);
    if (mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST) {
      return Errno("cannot create the quarantine folder", dir);
    }
    const std::string target = FreeName(dir, note->name);
    if (rename(path.c_str(), target.c_str()) != 0) return Errno("cannot quarantine", path);
    spdlog::error(
        "drop directory: the agent stopped twice while reading {} at byte {}; moved to {} and "
        "not read again. Look at the file, fix it, and move it back into {} to read it",
        path, note->offset, target, config.path);
  }
  return deps_.spool->AppendWithState({}, {{kReadingKey, std::nullopt}}).status();
}

absl::Status DropDirectory::Commit(const std::string& key, const Checkpoint& next,
                                   const std::string& file, std::vector<InputRecord>& records,
                                   ScanStats* stats) {
  std::vector<v1::Observation> observations;
  std::vector<TicketEvent> events;
  uint64_t rejected = 0;
  for (InputRecord& r : records) {
    if (r.header) continue;
    ++stats->records;
    if (!r.location.empty() && r.location != deps_.location) {
      ++stats->other_location;
      r.error.clear();  // Another store's record: not reported as bad here.
      continue;
    }
    if (!r.error.empty()) {
      ++rejected;
      continue;
    }
    if (!r.tickets.empty() && deps_.tickets == nullptr) {
      r.error = "queue events cannot be taken here (no ticket tracker)";
      ++rejected;
      continue;
    }
    for (v1::Observation& o : r.observations) observations.push_back(std::move(o));
    for (TicketEvent& e : r.tickets) events.push_back(std::move(e));
  }
  std::vector<StateWrite> writes = {
      {key, Serialize(next.offset, next.line, next.head_len, next.head_hash, next.name)}};
  const size_t produced = observations.size();
  absl::StatusOr<AppendResult> appended;
  uint64_t ignored = 0;
  uint64_t evicted = 0;
  if (!events.empty()) {
    absl::StatusOr<TicketOutcome> outcome =
        deps_.tickets->Apply(events, deps_.now(), std::move(observations), std::move(writes));
    if (outcome.ok()) {
      appended = outcome->append;
      ignored = outcome->ignored;
      evicted = outcome->evicted;
      for (const std::string& p : outcome->problems)
        spdlog::warn("drop directory: {}: {}", file, p);
    } else {
      appended = outcome.status();
    }
  } else {
    appended = deps_.spool->AppendWithState(std::move(observations), writes);
  }
  if (!appended.ok()) {
    if (absl::IsResourceExhausted(appended.status()) && deps_.metrics != nullptr) {
      deps_.metrics->AddRejectedSpoolFull(produced);
    }
    return absl::Status(appended.status().code(),
                        absl::StrCat("drop directory: ", file, " waits at line ",
                                     records.empty() ? next.line : records.front().line, ": ",
                                     appended.status().message()));
  }
  checkpoints_[key] = next;
  // Reported once committed, so a restart does not report them twice; a
  // file of bad lines logs the first few of each commit and a count.
  constexpr uint64_t kLoggedPerCommit = 20;
  uint64_t logged = 0;
  for (const InputRecord& r : records) {
    if (r.error.empty()) continue;
    if (++logged <= kLoggedPerCommit) {
      spdlog::warn("drop directory: {}:{}: {}", file, r.line, r.error);
    }
  }
  if (logged > kLoggedPerCommit) {
    spdlog::warn("drop directory: {}: {} more bad lines up to line {} not shown", file,
                 logged - kLoggedPerCommit, next.line - 1);
  }
  stats->observations += appended->stored;
  stats->rejected += rejected;
  if (deps_.metrics != nullptr) {
    deps_.metrics->AddAccepted(appended->stored);
    deps_.metrics->AddInputRejected(rejected);
    deps_.metrics->AddTicketEventsIgnored(ignored);
    deps_.metrics->AddTicketsEvicted(evicted);
  }
  if (appended->stored > 0 && deps_.on_appended) {
    deps_.on_appended(appended->first_sequence + appended->stored - 1);
  }
  return absl::OkStatus();
}

}  // namespace constance::agent
