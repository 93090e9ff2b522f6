#include "collector/history.h"

#include <sqlite3.h>

#include <algorithm>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "collector/services.h"
#include "constance/sqlite.h"
#include "google/protobuf/util/time_util.h"
#include "spdlog/spdlog.h"

namespace constance::collector {
namespace {

using google::protobuf::util::TimeUtil;

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS episodes(
  row INTEGER PRIMARY KEY, opened_ns INTEGER NOT NULL, closed_ns INTEGER NULL,
  location TEXT NOT NULL, kind INTEGER NOT NULL, family INTEGER NOT NULL, key TEXT NOT NULL,
  episode BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS episodes_closed ON episodes(closed_ns);
CREATE INDEX IF NOT EXISTS episodes_location ON episodes(location, opened_ns);
)sql";

int64_t Nanos(const google::protobuf::Timestamp& ts) {
  return TimeUtil::TimestampToNanoseconds(ts);
}

google::protobuf::Timestamp ToProto(absl::Time t) {
  return TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

std::string Lower(const std::string& name) { return absl::AsciiStrToLower(name); }

void AddEvent(v1::Episode* e, absl::Time at, std::string what) {
  v1::EpisodeEvent* event = e->add_events();
  *event->mutable_at() = ToProto(at);
  event->set_what(std::move(what));
}

v1::Episode Opened(const v1::Finding& f) {
  v1::Episode e;
  e.set_finding_id(f.id());
  e.set_kind(f.kind());
  e.set_location(f.location());
  if (f.has_series()) *e.mutable_series() = f.series();
  e.set_group(f.group());
  *e.mutable_opened_at() = f.started_at();
  e.set_severity_at_open(f.severity());
  e.set_severity_max(f.severity());
  if (f.reasons_size() > 0) {
    e.set_value_at_open(f.reasons(0).value());
    e.set_expected_at_open(f.reasons(0).expected());
    e.set_reason_at_open(f.reasons(0).detail());
  }
  return e;
}

// Severity and silence changes of `f` against its open episode, as
// events; `severity` is the episode's current severity. True when the
// episode changed.
bool Update(const v1::Finding& f, const std::string& silenced_by, const std::string& was_silenced,
            absl::Time now, v1::Severity* severity, v1::Episode* e) {
  bool changed = false;
  if (f.severity() != *severity) {
    changed = true;
    AddEvent(e, now,
             absl::StrCat("severity ", Lower(v1::Severity_Name(*severity)), " -> ",
                          Lower(v1::Severity_Name(f.severity()))));
    *severity = f.severity();
    e->set_severity_max(std::max(e->severity_max(), f.severity()));
  }
  if (silenced_by != was_silenced) {
    changed = true;
    AddEvent(e, now,
             silenced_by.empty() ? absl::StrCat("silence ", was_silenced, " ended")
                                 : absl::StrCat("silenced by ", silenced_by));
  }
  if (f.reasons_size() > 0 && (e->value_at_close() != f.reasons(0).value() ||
                               e->expected_at_close() != f.reasons(0).expected())) {
    changed = true;
    e->set_value_at_close(f.reasons(0).value());
    e->set_expected_at_close(f.reasons(0).expected());
  }
  return changed;
}

// The silence an episode is under now: the last "silenced by" event not
// followed by its end.
std::string CurrentSilence(const v1::Episode& e) {
  for (int i = e.events_size() - 1; i >= 0; --i) {
    const std::string& what = e.events(i).what();
    if (absl::StartsWith(what, "silenced by ")) return what.substr(12);
    if (absl::StartsWith(what, "silence ")) return "";
  }
  return "";
}

absl::Status SqliteStatus(sqlite3* db, const std::string& path, absl::string_view what) {
  return absl::UnavailableError(absl::StrCat("history ", path, ": ", what, ": ",
                                             db != nullptr ? sqlite3_errmsg(db) : "out of memory"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<FindingHistory>> FindingHistory::Open(const std::string& path,
                                                                     Options options) {
  auto history = std::make_unique<FindingHistory>(options);
  history->path_ = path;
  // A crash may lose the last second of history; it is rebuilt from the
  // findings still active.
  sqlite::OpenOptions sqlite_options;
  sqlite_options.synchronous = "NORMAL";
  const char* failed = nullptr;
  if (sqlite::Open(path, sqlite_options, &history->db_, &failed) != SQLITE_OK) {
    return SqliteStatus(history->db_, path, absl::StrCat(failed, " (is --state_dir writable?)"));
  }
  if (sqlite3_exec(history->db_, kSchema, nullptr, nullptr, nullptr) != SQLITE_OK) {
    return SqliteStatus(history->db_, path, "cannot set up its tables");
  }
  if (absl::Status s = history->Load(); !s.ok()) return s;
  return history;
}

FindingHistory::~FindingHistory() {
  if (db_ != nullptr) sqlite3_close(db_);
}

absl::Status FindingHistory::Load() {
  absl::MutexLock lock(&mu_);
  sqlite::Stmt next;
  if (next.Prepare(db_, "SELECT COALESCE(MAX(row), 0) FROM episodes") != SQLITE_OK ||
      sqlite3_step(next.get()) != SQLITE_ROW) {
    return SqliteStatus(db_, path_, "cannot read");
  }
  next_row_ = sqlite3_column_int64(next.get(), 0) + 1;
  sqlite::Stmt open;
  if (open.Prepare(db_, "SELECT row, episode FROM episodes WHERE closed_ns IS NULL") != SQLITE_OK) {
    return SqliteStatus(db_, path_, "cannot read");
  }
  while (sqlite3_step(open.get()) == SQLITE_ROW) {
    Open_ o;
    o.row = sqlite3_column_int64(open.get(), 0);
    if (!o.episode.ParseFromArray(sqlite3_column_blob(open.get(), 1),
                                  sqlite3_column_bytes(open.get(), 1))) {
      return absl::DataLossError(absl::StrCat("history ", path_, ": episode ", o.row,
                                              " is unreadable (move the file aside)"));
    }
    o.severity = o.episode.severity_max();
    open_[o.episode.finding_id()] = std::move(o);
  }
  return absl::OkStatus();
}

uint64_t FindingHistory::writes() const {
  absl::MutexLock lock(&mu_);
  return writes_;
}

absl::Status FindingHistory::Save(int64_t row, const v1::Episode& e) {
  ++writes_;
  if (db_ == nullptr) {
    memory_[row] = e;
    return absl::OkStatus();
  }
  sqlite::Stmt put;
  if (put.Prepare(db_,
                  "INSERT OR REPLACE INTO episodes(row, opened_ns, closed_ns, location, kind, "
                  "family, key, episode) VALUES(?, ?, ?, ?, ?, ?, ?, ?)") != SQLITE_OK) {
    return SqliteStatus(db_, path_, "cannot write");
  }
  const std::string body = e.SerializeAsString();
  sqlite3_stmt* s = put.get();
  sqlite3_bind_int64(s, 1, row);
  sqlite3_bind_int64(s, 2, Nanos(e.opened_at()));
  if (e.has_closed_at()) sqlite3_bind_int64(s, 3, Nanos(e.closed_at()));
  sqlite3_bind_text(s, 4, e.location().c_str(), -1, SQLITE_STATIC);
  sqlite3_bind_int(s, 5, e.kind());
  sqlite3_bind_int(s, 6, e.series().family());
  sqlite3_bind_text(s, 7, e.series().key().c_str(), -1, SQLITE_STATIC);
  sqlite3_bind_blob(s, 8, body.data(), static_cast<int>(body.size()), SQLITE_STATIC);
  if (sqlite3_step(s) != SQLITE_DONE) return SqliteStatus(db_, path_, "cannot write");
  return absl::OkStatus();
}

absl::Status FindingHistory::Record(const std::vector<v1::Finding>& active,
                                    const std::vector<v1::Finding>& closed,
                                    const SilenceStore* silences, absl::Time now) {
  return Record(active, closed,
                silences != nullptr ? silences->MatchAll(active, now).silenced_by
                                    : std::vector<std::string>(),
                now);
}

absl::Status FindingHistory::Record(const std::vector<v1::Finding>& active,
                                    const std::vector<v1::Finding>& closed,
                                    const std::vector<std::string>& silenced_by, absl::Time now) {
  static const std::string kNone;
  absl::MutexLock lock(&mu_);
  absl::Status status;
  if (db_ != nullptr) sqlite3_exec(db_, "BEGIN", nullptr, nullptr, nullptr);
  std::set<std::string> seen;
  for (size_t i = 0; i < active.size(); ++i) {
    const v1::Finding& f = active[i];
    seen.insert(f.id());
    const std::string& silenced = i < silenced_by.size() ? silenced_by[i] : kNone;
    auto it = open_.find(f.id());
    if (it == open_.end()) {
      Open_ o;
      o.row = next_row_++;
      o.severity = f.severity();
      o.episode = Opened(f);
      Update(f, silenced, "", now, &o.severity, &o.episode);
      status.Update(Save(o.row, o.episode));
      open_.emplace(f.id(), std::move(o));
      continue;
    }
    if (Update(f, silenced, CurrentSilence(it->second.episode), now, &it->second.severity,
               &it->second.episode)) {
      status.Update(Save(it->second.row, it->second.episode));
    }
  }
  for (auto it = open_.begin(); it != open_.end();) {
    if (seen.count(it->first) > 0) {
      ++it;
      continue;
    }
    v1::Episode& e = it->second.episode;
    *e.mutable_closed_at() = ToProto(now);
    for (auto c = closed.rbegin(); c != closed.rend(); ++c) {
      if (c->id() == it->first && c->has_ended_at()) {
        *e.mutable_closed_at() = c->ended_at();
        break;
      }
    }
    status.Update(Save(it->second.row, e));
    it = open_.erase(it);
  }
  Trim(now);
  if (db_ != nullptr) sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr);
  return status;
}

void FindingHistory::Trim(absl::Time now) {
  const int64_t horizon = absl::ToUnixNanos(now - options_.retention);
  if (db_ == nullptr) {
    for (auto it = memory_.begin(); it != memory_.end();) {
      const bool old = it->second.has_closed_at() && Nanos(it->second.closed_at()) < horizon;
      const bool over = static_cast<int64_t>(memory_.size()) > options_.max_episodes &&
                        it->second.has_closed_at();
      it = old || over ? memory_.erase(it) : std::next(it);
    }
    return;
  }
  const std::string sql = absl::StrCat(
      "DELETE FROM episodes WHERE closed_ns < ", horizon,
      "; DELETE FROM episodes WHERE closed_ns IS NOT NULL AND row <= (SELECT MAX(row) FROM "
      "episodes) - ",
      options_.max_episodes);
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
    spdlog::warn("history {}: cannot remove old episodes: {}", path_, sqlite3_errmsg(db_));
  }
}

v1::HistoryResponse FindingHistory::Query(const v1::HistoryRequest& r) const {
  const uint32_t limit = r.limit() == 0 ? 1000 : r.limit();
  const int64_t since = r.has_since() ? Nanos(r.since()) : 0;
  auto wanted = [&](const v1::Episode& e) {
    return (r.location().empty() || e.location() == r.location()) &&
           (r.kind() == v1::FINDING_KIND_UNSPECIFIED || e.kind() == r.kind()) &&
           (r.family() == v1::FAMILY_UNSPECIFIED || e.series().family() == r.family()) &&
           (r.key().empty() || e.series().key() == r.key()) &&
           (!e.has_closed_at() || Nanos(e.closed_at()) >= since);
  };
  v1::HistoryResponse out;
  absl::MutexLock lock(&mu_);
  std::vector<v1::Episode> found;
  if (db_ == nullptr) {
    for (const auto& [row, e] : memory_) {
      if (wanted(e)) found.push_back(e);
    }
  } else {
    // The indexed columns narrow the scan; `wanted` decides.
    sqlite::Stmt select;
    if (select.Prepare(db_,
                       "SELECT episode FROM episodes WHERE (?1 = '' OR location = ?1) AND "
                       "(closed_ns IS NULL OR closed_ns >= ?2) ORDER BY row") != SQLITE_OK) {
      return out;
    }
    sqlite3_bind_text(select.get(), 1, r.location().c_str(), -1, SQLITE_STATIC);
    sqlite3_bind_int64(select.get(), 2, since);
    while (sqlite3_step(select.get()) == SQLITE_ROW) {
      v1::Episode e;
      if (e.ParseFromArray(sqlite3_column_blob(select.get(), 0),
                           sqlite3_column_bytes(select.get(), 0)) &&
          wanted(e)) {
        found.push_back(std::move(e));
      }
    }
  }
  std::stable_sort(found.begin(), found.end(), [](const v1::Episode& a, const v1::Episode& b) {
    return Nanos(a.opened_at()) > Nanos(b.opened_at());
  });
  for (size_t i = 0; i < found.size(); ++i) {
    if (i < limit) {
      *out.add_episodes() = std::move(found[i]);
    }
  }
  out.set_more(found.size() > limit ? found.size() - limit : 0);
  return out;
}

v1::FindingRecord SummarizeEpisodes(const std::vector<v1::Episode>& episodes, absl::Time now,
                                    int days) {
  const absl::Time since = now - absl::Hours(24) * days;
  v1::FindingRecord out;
  out.set_days(days);
  *out.mutable_since() = ToProto(since);
  struct Kind {
    std::vector<std::pair<absl::Time, absl::Time>> open;  // Clipped to the window.
    uint64_t opened = 0, closed = 0;
    absl::Duration to_close;
  };
  std::map<v1::FindingKind, Kind> kinds;
  absl::Duration to_close, longest;
  for (const v1::Episode& e : episodes) {
    const absl::Time opened = absl::FromUnixNanos(Nanos(e.opened_at()));
    const absl::Time closed = e.has_closed_at() ? absl::FromUnixNanos(Nanos(e.closed_at())) : now;
    if (closed < since || opened > now) continue;
    Kind& k = kinds[e.kind()];
    k.open.emplace_back(std::max(opened, since), std::min(closed, now));
    if (opened >= since) ++k.opened;
    if (e.has_closed_at()) {
      ++k.closed;
      k.to_close += closed - opened;
      to_close += closed - opened;
      longest = std::max(longest, closed - opened);
    }
  }
  for (auto& [kind, k] : kinds) {
    std::sort(k.open.begin(), k.open.end());
    absl::Duration open;
    std::set<int64_t> days_open;  // Days since the epoch, UTC.
    auto add = [&](absl::Time from, absl::Time to) {
      open += to - from;
      const int64_t last = absl::ToUnixSeconds(to > from ? to - absl::Nanoseconds(1) : to) / 86400;
      for (int64_t d = absl::ToUnixSeconds(from) / 86400; d <= last; ++d) days_open.insert(d);
    };
    absl::Time from = k.open[0].first, to = k.open[0].second;
    for (const auto& [a, b] : k.open) {
      if (a > to) {
        add(from, to);
        from = a;
      }
      to = std::max(to, b);
    }
    add(from, to);
    v1::FindingKindRecord* r = out.add_kinds();
    r->set_kind(kind);
    r->set_days_with_open(static_cast<uint32_t>(days_open.size()));
    r->set_seconds_open(absl::ToDoubleSeconds(open));
    r->set_opened(k.opened);
    r->set_closed(k.closed);
    if (k.closed > 0) r->set_mean_seconds_to_close(absl::ToDoubleSeconds(k.to_close) / k.closed);
    out.set_opened(out.opened() + k.opened);
    out.set_closed(out.closed() + k.closed);
  }
  if (out.closed() > 0) {
    out.set_mean_seconds_to_close(absl::ToDoubleSeconds(to_close) / out.closed());
    out.set_max_seconds_to_close(absl::ToDoubleSeconds(longest));
  }
  return out;
}

v1::FindingRecord FindingHistory::LocationRecord(const std::string& location, absl::Time now,
                                                 int days) const {
  v1::HistoryRequest request;
  request.set_location(location);
  *request.mutable_since() = ToProto(now - absl::Hours(24) * days);
  request.set_limit(std::numeric_limits<uint32_t>::max());
  v1::HistoryResponse found = Query(request);
  return SummarizeEpisodes({found.episodes().begin(), found.episodes().end()}, now, days);
}

HistoryRecorder::HistoryRecorder(const Engine* engine, SilenceMatches* silences,
                                 FindingHistory* history, absl::Duration poll)
    : engine_(engine), silences_(silences), history_(history), poll_(poll) {
  thread_ = std::thread([this] { Run(); });
}

HistoryRecorder::~HistoryRecorder() { Stop(); }

void HistoryRecorder::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

void HistoryRecorder::Run() {
  // Every poll, not only when new findings are published: a silence can
  // start or end between evaluations. Unchanged episodes are not written.
  do {
    std::shared_ptr<const Snapshot> snap = engine_->snapshot();
    if (snap == nullptr || snap->findings == nullptr) continue;
    const FindingsView& view = *snap->findings;
    if (view.evaluated_at == absl::InfinitePast()) continue;  // Nothing evaluated yet.
    const absl::Time now = absl::Now();
    std::shared_ptr<const std::vector<std::string>> silenced_by =
        silences_ != nullptr ? silences_->For({snap->findings, &view.active}, now)
                             : std::make_shared<const std::vector<std::string>>();
    if (absl::Status s = history_->Record(view.active, view.closed, *silenced_by, now); !s.ok()) {
      spdlog::error("finding history: {}", std::string(s.message()));
    }
  } while (!stop_.WaitForNotificationWithTimeout(poll_));
}

grpc::ServerUnaryReactor* HistoryService::Episodes(grpc::CallbackServerContext* context,
                                                   const v1::HistoryRequest* request,
                                                   v1::HistoryResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> who =
      OperatorName(*context, require_operator_, refusals_, "read finding history");
  if (who.ok()) *response = history_->Query(*request);
  reactor->Finish(ToGrpcStatus(who.status()));
  return reactor;
}

}  // namespace constance::collector
