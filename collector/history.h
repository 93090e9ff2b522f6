// Finding history (proto/constance/v1/history.proto): every finding's
// episodes, from open to close, with severity changes and silences.
//
// FindingHistory::Record compares the findings the engine published with
// the episodes it holds open: a new finding id opens an episode (at the
// finding's started_at), a change of severity or silence is an event, a
// finding no longer active closes its episode (at its ended_at). With a
// path (--state_dir/history.db, SQLite WAL) episodes are durable; open ones
// are loaded again at start, so an episode spans a collector restart.
// Episodes closed longer ago than the retention are deleted, and at most
// `max_episodes` are kept (the oldest go first), so the file stays bounded.
//
// HistoryRecorder runs Record on its own thread every `poll` (1 s in the
// collector), so an event's time is within a poll of when it happened. Only
// episodes that changed are written.
//
// Thread-safety: FindingHistory is thread-safe.
#ifndef CONSTANCE_COLLECTOR_HISTORY_H_
#define CONSTANCE_COLLECTOR_HISTORY_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "collector/auth.h"
#include "collector/engine.h"
#include "collector/silences.h"
#include "constance/v1/history.grpc.pb.h"

struct sqlite3;

namespace constance::collector {

class FindingHistory {
 public:
  struct Options {
    absl::Duration retention = absl::Hours(24 * 90);
    int64_t max_episodes = 1'000'000;
  };
  // Memory only (bounded the same way).
  explicit FindingHistory(Options options) : options_(options) {}
  static absl::StatusOr<std::unique_ptr<FindingHistory>> Open(const std::string& path,
                                                              Options options);
  ~FindingHistory();
  FindingHistory(const FindingHistory&) = delete;
  FindingHistory& operator=(const FindingHistory&) = delete;

  // Brings the episodes up to `active` (the engine's published findings)
  // and `closed` (recently closed, with ended_at) at `now`. `silenced_by`
  // holds the silence covering each of `active` ("" for none), in order;
  // empty when nothing is silenced.
  absl::Status Record(const std::vector<v1::Finding>& active,
                      const std::vector<v1::Finding>& closed,
                      const std::vector<std::string>& silenced_by, absl::Time now);
  // The same, matching `silences` (may be null) at `now`.
  absl::Status Record(const std::vector<v1::Finding>& active,
                      const std::vector<v1::Finding>& closed, const SilenceStore* silences,
                      absl::Time now);

  // Episodes matching `request`, newest first.
  v1::HistoryResponse Query(const v1::HistoryRequest& request) const;
  // `location`'s record over the `days` days before `now`
  // (SummarizeEpisodes of its episodes).
  v1::FindingRecord LocationRecord(const std::string& location, absl::Time now, int days) const;
  // How many times an episode has been written (opened, changed, closed).
  uint64_t writes() const;

 private:
  absl::Status Save(int64_t row, const v1::Episode& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Load();
  void Trim(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  std::string path_;
  sqlite3* db_ = nullptr;
  mutable absl::Mutex mu_;
  struct Open_ {
    int64_t row = 0;
    v1::Severity severity = v1::SEVERITY_UNSPECIFIED;  // Current.
    v1::Episode episode;
  };
  std::map<std::string, Open_> open_ ABSL_GUARDED_BY(mu_);  // By finding id.
  int64_t next_row_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t writes_ ABSL_GUARDED_BY(mu_) = 0;
  // Memory only: every episode by row.
  std::map<int64_t, v1::Episode> memory_ ABSL_GUARDED_BY(mu_);
};

// What `episodes` (one location's, any order) add up to over the `days`
// days before `now`: episodes opened and closed in that window, the time to
// close of those closed, and per kind the time with at least one open
// (overlapping episodes count once) and the UTC calendar days it touched.
v1::FindingRecord SummarizeEpisodes(const std::vector<v1::Episode>& episodes, absl::Time now,
                                    int days);

// Feeds `history` from `engine`'s published findings on a thread of its
// own, every `poll`; Stop (or the destructor) ends it.
class HistoryRecorder {
 public:
  // `silences` may be null; the pointers must outlive this object.
  HistoryRecorder(const Engine* engine, SilenceMatches* silences, FindingHistory* history,
                  absl::Duration poll);
  ~HistoryRecorder();
  void Stop();

 private:
  void Run();
  const Engine* const engine_;
  SilenceMatches* const silences_;
  FindingHistory* const history_;
  const absl::Duration poll_;
  absl::Notification stop_;
  std::thread thread_;
};

class HistoryService final : public v1::History::CallbackService {
 public:
  HistoryService(const FindingHistory* history, bool require_operator, RefusalCounter* refusals)
      : history_(history), require_operator_(require_operator), refusals_(refusals) {}
  grpc::ServerUnaryReactor* Episodes(grpc::CallbackServerContext* context,
                                     const v1::HistoryRequest* request,
                                     v1::HistoryResponse* response) override;

 private:
  const FindingHistory* const history_;
  const bool require_operator_;
  RefusalCounter* const refusals_;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_HISTORY_H_
