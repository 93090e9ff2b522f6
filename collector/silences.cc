#include "collector/silences.h"

#include <sqlite3.h>

#include <algorithm>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "collector/services.h"
#include "constance/sqlite.h"
#include "google/protobuf/util/time_util.h"
#include "spdlog/spdlog.h"

namespace constance::collector {
namespace {

using google::protobuf::util::TimeUtil;

constexpr absl::Duration kKeepEnded = absl::Hours(24 * 30);
constexpr absl::Duration kLongest = absl::Hours(24 * 366);
constexpr int64_t kAuditEntries = 100'000;

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS silences(id INTEGER PRIMARY KEY, silence BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS audit(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, at_ns INTEGER NOT NULL, author TEXT NOT NULL,
  action TEXT NOT NULL, silence BLOB NOT NULL);
)sql";

absl::Time FromProto(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixNanos(TimeUtil::TimestampToNanoseconds(ts));
}

google::protobuf::Timestamp ToProto(absl::Time t) {
  return TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

bool Ended(const v1::Silence& s, absl::Time now) { return FromProto(s.ends_at()) <= now; }

bool Live(const v1::Silence& s, absl::Time now) {
  return FromProto(s.starts_at()) <= now && !Ended(s, now);
}

bool Covers(const v1::SilenceMatchers& m, const v1::Finding& f) {
  if (!m.location().empty() && m.location() != f.location()) return false;
  if (!m.region().empty()) {
    auto it = f.labels().find("region");
    if (it == f.labels().end() || it->second != m.region()) return false;
  }
  if (m.family() != v1::FAMILY_UNSPECIFIED &&
      (!f.has_series() || f.series().family() != m.family())) {
    return false;
  }
  if (!m.key().empty() && (!f.has_series() || f.series().key() != m.key())) return false;
  return m.kind() == v1::FINDING_KIND_UNSPECIFIED || m.kind() == f.kind();
}

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("silence: ", what));
}

// The request's problems, first one named; Ok when it can be stored.
absl::Status Check(const v1::AddSilenceRequest& r, absl::Time now) {
  const v1::SilenceMatchers& m = r.match();
  if (m.location().empty() && m.region().empty() && m.family() == v1::FAMILY_UNSPECIFIED &&
      m.key().empty() && m.kind() == v1::FINDING_KIND_UNSPECIFIED) {
    return Invalid("needs at least one matcher (location, region, key or kind)");
  }
  if (!m.key().empty() && m.family() == v1::FAMILY_UNSPECIFIED) {
    return Invalid("a key needs its family (FAMILY:KEY, e.g. price:coffee-250g)");
  }
  if (!v1::Family_IsValid(m.family()) || !v1::FindingKind_IsValid(m.kind())) {
    return Invalid("unknown family or finding kind");
  }
  if (r.owner().empty()) return Invalid("needs an owner (who answers for it)");
  if (r.comment().empty()) return Invalid("needs a comment (why it is silenced)");
  if (!r.has_ends_at()) return Invalid("needs an end (--for or --until)");
  const absl::Time start = r.has_starts_at() ? FromProto(r.starts_at()) : now;
  const absl::Time end = FromProto(r.ends_at());
  if (end <= now) return Invalid("its end is in the past");
  if (end <= start) return Invalid("its end is not after its start");
  if (end - start > kLongest) {
    return Invalid("lasts more than a year: put standing policy in the catalog's exceptions");
  }
  return absl::OkStatus();
}

absl::Status SqliteStatus(sqlite3* db, const std::string& path, absl::string_view what) {
  return absl::UnavailableError(absl::StrCat("silences ", path, ": ", what, ": ",
                                             db != nullptr ? sqlite3_errmsg(db) : "out of memory"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<SilenceStore>> SilenceStore::Open(const std::string& path) {
  auto store = std::make_unique<SilenceStore>();
  store->path_ = path;
  const char* failed = nullptr;
  if (sqlite::Open(path, sqlite::OpenOptions(), &store->db_, &failed) != SQLITE_OK) {
    return SqliteStatus(store->db_, path, absl::StrCat(failed, " (is --state_dir writable?)"));
  }
  if (sqlite3_exec(store->db_, kSchema, nullptr, nullptr, nullptr) != SQLITE_OK) {
    return SqliteStatus(store->db_, path, "cannot set up its tables");
  }
  if (absl::Status s = store->Load(); !s.ok()) return s;
  return store;
}

SilenceStore::~SilenceStore() {
  if (db_ != nullptr) sqlite3_close(db_);
}

absl::Status SilenceStore::Load() {
  absl::MutexLock lock(&mu_);
  sqlite::Stmt select;
  if (select.Prepare(db_, "SELECT id, silence FROM silences ORDER BY id") != SQLITE_OK) {
    return SqliteStatus(db_, path_, "cannot read");
  }
  int rc;
  while ((rc = sqlite3_step(select.get())) == SQLITE_ROW) {
    v1::Silence s;
    const int64_t id = sqlite3_column_int64(select.get(), 0);
    if (!s.ParseFromArray(sqlite3_column_blob(select.get(), 1),
                          sqlite3_column_bytes(select.get(), 1))) {
      return absl::DataLossError(
          absl::StrCat("silences ", path_, ": silence ", id, " is unreadable"));
    }
    silences_[id] = std::move(s);
    next_id_ = id + 1;
  }
  if (rc != SQLITE_DONE) return SqliteStatus(db_, path_, "cannot read");
  // Ids are never reused, even those of silences pruned since.
  sqlite::Stmt next;
  if (next.Prepare(db_, "SELECT value FROM meta WHERE key = 'next_id'") != SQLITE_OK) {
    return SqliteStatus(db_, path_, "cannot read");
  }
  if (sqlite3_step(next.get()) == SQLITE_ROW) {
    next_id_ = std::max<int64_t>(next_id_, sqlite3_column_int64(next.get(), 0));
  }
  return absl::OkStatus();
}

absl::Status SilenceStore::Persist(const v1::Silence& silence, const AuditEntry& entry) {
  if (db_ == nullptr) {
    audit_.push_back(entry);
    if (audit_.size() > static_cast<size_t>(kAuditEntries)) audit_.erase(audit_.begin());
    return absl::OkStatus();
  }
  int64_t id = 0;
  (void)absl::SimpleAtoi(silence.id(), &id);
  const std::string body = silence.SerializeAsString();
  sqlite::Stmt put, audit, next;
  bool ok =
      sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK &&
      put.Prepare(db_, "INSERT OR REPLACE INTO silences(id, silence) VALUES(?, ?)") == SQLITE_OK &&
      audit.Prepare(db_, "INSERT INTO audit(at_ns, author, action, silence) VALUES(?, ?, ?, ?)") ==
          SQLITE_OK &&
      next.Prepare(db_, "INSERT OR REPLACE INTO meta(key, value) VALUES('next_id', ?)") ==
          SQLITE_OK;
  if (ok) {
    sqlite3_bind_int64(put.get(), 1, id);
    sqlite3_bind_blob(put.get(), 2, body.data(), static_cast<int>(body.size()), SQLITE_STATIC);
    sqlite3_bind_int64(audit.get(), 1, absl::ToUnixNanos(entry.at));
    sqlite3_bind_text(audit.get(), 2, entry.author.c_str(), -1, SQLITE_STATIC);
    sqlite3_bind_text(audit.get(), 3, entry.action.c_str(), -1, SQLITE_STATIC);
    sqlite3_bind_blob(audit.get(), 4, body.data(), static_cast<int>(body.size()), SQLITE_STATIC);
    sqlite3_bind_int64(next.get(), 1, next_id_);
    ok = sqlite3_step(put.get()) == SQLITE_DONE && sqlite3_step(audit.get()) == SQLITE_DONE &&
         sqlite3_step(next.get()) == SQLITE_DONE;
  }
  const std::string trim =
      absl::StrCat("DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ", kAuditEntries);
  ok = ok && sqlite3_exec(db_, trim.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK &&
       sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK;
  if (!ok) {
    absl::Status status = SqliteStatus(db_, path_, "cannot store the change; nothing changed");
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return status;
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Silence> SilenceStore::Add(const v1::AddSilenceRequest& request,
                                              const std::string& author, absl::Time now) {
  if (absl::Status s = Check(request, now); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  Prune(now);
  v1::Silence silence;
  const int64_t id = next_id_;
  silence.set_id(absl::StrCat(id));
  *silence.mutable_match() = request.match();
  *silence.mutable_starts_at() = request.has_starts_at() ? request.starts_at() : ToProto(now);
  *silence.mutable_ends_at() = request.ends_at();
  silence.set_owner(request.owner());
  silence.set_comment(request.comment());
  silence.set_author(author);
  *silence.mutable_created_at() = ToProto(now);
  ++next_id_;
  if (absl::Status s = Persist(silence, {now, author, "add", silence}); !s.ok()) {
    --next_id_;
    return s;
  }
  silences_[id] = silence;
  ++revision_;
  spdlog::info("silence {} added by {} until {} (owner {}): {}", silence.id(), author,
               TimeUtil::ToString(silence.ends_at()), silence.owner(), silence.comment());
  return silence;
}

absl::StatusOr<v1::Silence> SilenceStore::Expire(const std::string& id, const std::string& author,
                                                 absl::Time now) {
  int64_t n = 0;
  absl::MutexLock lock(&mu_);
  auto it = absl::SimpleAtoi(id, &n) ? silences_.find(n) : silences_.end();
  if (it == silences_.end()) {
    return absl::NotFoundError(
        absl::StrCat("no silence '", id, "' (constance silence list --all shows them)"));
  }
  if (Ended(it->second, now)) {
    return absl::FailedPreconditionError(absl::StrCat("silence ", id, " ended already at ",
                                                      TimeUtil::ToString(it->second.ends_at())));
  }
  v1::Silence silence = it->second;
  *silence.mutable_ends_at() = ToProto(now);
  silence.set_expired_by(author);
  if (absl::Status s = Persist(silence, {now, author, "expire", silence}); !s.ok()) return s;
  it->second = silence;
  ++revision_;
  spdlog::info("silence {} expired by {}", id, author);
  return silence;
}

void SilenceStore::Prune(absl::Time now) {
  for (auto it = silences_.begin(); it != silences_.end();) {
    if (FromProto(it->second.ends_at()) + kKeepEnded < now) {
      if (db_ != nullptr) {
        const std::string sql = absl::StrCat("DELETE FROM silences WHERE id = ", it->first);
        if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) break;
      }
      it = silences_.erase(it);
    } else {
      ++it;
    }
  }
}

std::vector<v1::Silence> SilenceStore::List(bool include_expired, absl::Time now) const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<v1::Silence> out;
  for (const auto& [id, s] : silences_) {
    if (include_expired || !Ended(s, now)) out.push_back(s);
  }
  return out;
}

std::string SilenceStore::Match(const v1::Finding& finding, absl::Time now) const {
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& [id, s] : silences_) {
    if (Live(s, now) && Covers(s.match(), finding)) {
      return s.id();
    }
  }
  return "";
}

SilenceStore::Matches SilenceStore::MatchAll(const std::vector<v1::Finding>& findings,
                                             absl::Time now) const {
  absl::ReaderMutexLock lock(&mu_);
  Matches out;
  out.revision = revision_;
  std::vector<const v1::Silence*> live;
  for (const auto& [id, s] : silences_) {
    for (absl::Time change : {FromProto(s.starts_at()), FromProto(s.ends_at())}) {
      if (change > now) out.valid_until = std::min(out.valid_until, change);
    }
    if (Live(s, now)) live.push_back(&s);
  }
  out.silenced_by.reserve(findings.size());
  for (const v1::Finding& f : findings) {
    auto it = std::find_if(live.begin(), live.end(),
                           [&f](const v1::Silence* s) { return Covers(s->match(), f); });
    out.silenced_by.push_back(it != live.end() ? (*it)->id() : std::string());
  }
  return out;
}

uint64_t SilenceStore::revision() const {
  absl::ReaderMutexLock lock(&mu_);
  return revision_;
}

std::shared_ptr<const std::vector<std::string>> SilenceMatches::For(
    std::shared_ptr<const std::vector<v1::Finding>> findings, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (silenced_by_ != nullptr && findings == findings_ && now < valid_until_ &&
      store_->revision() == revision_) {
    return silenced_by_;
  }
  SilenceStore::Matches m = store_->MatchAll(*findings, now);
  findings_ = std::move(findings);
  revision_ = m.revision;
  valid_until_ = m.valid_until;
  silenced_by_ = std::make_shared<const std::vector<std::string>>(std::move(m.silenced_by));
  ++matched_;
  return silenced_by_;
}

uint64_t SilenceMatches::matched() const {
  absl::MutexLock lock(&mu_);
  return matched_;
}

void SilenceStore::Mark(google::protobuf::RepeatedPtrField<v1::Finding>* findings,
                        absl::Time now) const {
  for (v1::Finding& f : *findings) {
    if (!f.silenced_by().empty()) continue;
    if (std::string id = Match(f, now); !id.empty()) f.set_silenced_by(std::move(id));
  }
}

std::vector<SilenceStore::AuditEntry> SilenceStore::Audit() const {
  absl::ReaderMutexLock lock(&mu_);
  if (db_ == nullptr) return audit_;
  std::vector<AuditEntry> out;
  sqlite::Stmt select;
  if (select.Prepare(db_, "SELECT at_ns, author, action, silence FROM audit ORDER BY seq") !=
      SQLITE_OK) {
    return out;
  }
  while (sqlite3_step(select.get()) == SQLITE_ROW) {
    AuditEntry e;
    e.at = absl::FromUnixNanos(sqlite3_column_int64(select.get(), 0));
    e.author = reinterpret_cast<const char*>(sqlite3_column_text(select.get(), 1));
    e.action = reinterpret_cast<const char*>(sqlite3_column_text(select.get(), 2));
    e.silence.ParseFromArray(sqlite3_column_blob(select.get(), 3),
                             sqlite3_column_bytes(select.get(), 3));
    out.push_back(std::move(e));
  }
  return out;
}

absl::StatusOr<std::string> SilenceService::Author(grpc::CallbackServerContext* context) {
  return OperatorName(*context, require_operator_, refusals_, "change silences");
}

grpc::ServerUnaryReactor* SilenceService::Add(grpc::CallbackServerContext* context,
                                              const v1::AddSilenceRequest* request,
                                              v1::Silence* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> author = Author(context);
  absl::StatusOr<v1::Silence> added =
      author.ok() ? store_->Add(*request, *author, absl::Now()) : author.status();
  if (added.ok()) *response = *std::move(added);
  reactor->Finish(ToGrpcStatus(added.status()));
  return reactor;
}

grpc::ServerUnaryReactor* SilenceService::List(grpc::CallbackServerContext* context,
                                               const v1::ListSilencesRequest* request,
                                               v1::ListSilencesResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> author = Author(context);
  if (author.ok()) {
    for (v1::Silence& s : store_->List(request->include_expired(), absl::Now())) {
      *response->add_silences() = std::move(s);
    }
  }
  reactor->Finish(ToGrpcStatus(author.status()));
  return reactor;
}

grpc::ServerUnaryReactor* SilenceService::Expire(grpc::CallbackServerContext* context,
                                                 const v1::ExpireSilenceRequest* request,
                                                 v1::Silence* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> author = Author(context);
  absl::StatusOr<v1::Silence> expired =
      author.ok() ? store_->Expire(request->id(), *author, absl::Now()) : author.status();
  if (expired.ok()) *response = *std::move(expired);
  reactor->Finish(ToGrpcStatus(expired.status()));
  return reactor;
}

}  // namespace constance::collector
