// Silences added by operators at run time (proto/constance/v1/silence.proto).
//
// SilenceStore holds them and decides, in one place, which silence covers a
// finding (Match): the Query API's answers and /metrics both ask it. With
// a path (the collector's --state_dir/silences.db, SQLite in WAL mode with
// synchronous FULL) every change is durable before it is answered and
// survives a crash; without one, silences last until the collector stops.
// Every change is also appended to the audit table (who, when, what) and
// logged.
//
// Ended silences are kept for 30 days (listed with include_expired), then
// removed; the audit table keeps its last 100,000 entries.
//
// SilenceService serves constance.v1.Silences: operator certificates only,
// the certificate's name recorded as author.
//
// SilenceMatches keeps, for one evaluation's active findings, which silence
// covers each: /metrics and the finding history read it, so a scrape or a
// history poll matches nothing unless the evaluation or the silences changed.
//
// Thread-safety: SilenceStore and SilenceMatches are thread-safe; Match
// takes a reader lock.
#ifndef CONSTANCE_COLLECTOR_SILENCES_H_
#define CONSTANCE_COLLECTOR_SILENCES_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "collector/auth.h"
#include "constance/v1/query.pb.h"
#include "constance/v1/silence.grpc.pb.h"

struct sqlite3;

namespace constance::collector {

class SilenceStore {
 public:
  // Memory only.
  SilenceStore() = default;
  // Durable in the SQLite file at `path` (created if missing); silences
  // already there are loaded.
  static absl::StatusOr<std::unique_ptr<SilenceStore>> Open(const std::string& path);
  ~SilenceStore();
  SilenceStore(const SilenceStore&) = delete;
  SilenceStore& operator=(const SilenceStore&) = delete;

  // InvalidArgument naming the field when the request is incomplete or
  // inconsistent (no matcher, no owner or comment, an end not after the
  // start or in the past, a key without its family, more than a year).
  absl::StatusOr<v1::Silence> Add(const v1::AddSilenceRequest& request, const std::string& author,
                                  absl::Time now);
  // NotFound for an unknown id, FailedPrecondition for one already ended.
  absl::StatusOr<v1::Silence> Expire(const std::string& id, const std::string& author,
                                     absl::Time now);
  // Active and future silences, plus ended ones with `include_expired`.
  std::vector<v1::Silence> List(bool include_expired, absl::Time now) const;
  // The id of the lowest-numbered silence covering `finding` at `now`, or "".
  std::string Match(const v1::Finding& finding, absl::Time now) const;
  // Which silence covers each of `findings` at `now` ("" for none), in
  // order, decided under one lock. `revision` is the store's at that moment;
  // the answer holds until the revision changes or `valid_until`, the first
  // moment after `now` at which a silence starts or ends.
  struct Matches {
    std::vector<std::string> silenced_by;
    uint64_t revision = 0;
    absl::Time valid_until = absl::InfiniteFuture();
  };
  Matches MatchAll(const std::vector<v1::Finding>& findings, absl::Time now) const;
  // Bumped by every add and expire.
  uint64_t revision() const;
  // Sets silenced_by on each finding a silence covers (an exception's
  // name, if set already, is kept).
  void Mark(google::protobuf::RepeatedPtrField<v1::Finding>* findings, absl::Time now) const;

  struct AuditEntry {
    absl::Time at;
    std::string author;
    std::string action;   // "add" or "expire".
    v1::Silence silence;  // As it stood after the change.
  };
  // The audit trail, oldest first.
  std::vector<AuditEntry> Audit() const;

 private:
  absl::Status Persist(const v1::Silence& silence, const AuditEntry& entry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Load();
  void Prune(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::string path_;
  sqlite3* db_ = nullptr;  // Null when memory only.
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t revision_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<int64_t, v1::Silence> silences_ ABSL_GUARDED_BY(mu_);
  std::vector<AuditEntry> audit_ ABSL_GUARDED_BY(mu_);  // Memory only.
};

class SilenceMatches {
 public:
  // `store` must outlive this object.
  explicit SilenceMatches(const SilenceStore* store) : store_(store) {}
  SilenceMatches(const SilenceMatches&) = delete;
  SilenceMatches& operator=(const SilenceMatches&) = delete;

  // silenced_by for each of `*findings` (one evaluation's active findings,
  // which must not change while shared), in order. Matches only when
  // `findings` is not the vector matched last, a silence was added or
  // expired since, or one started or ended by `now`; otherwise returns the
  // kept answer.
  std::shared_ptr<const std::vector<std::string>> For(
      std::shared_ptr<const std::vector<v1::Finding>> findings, absl::Time now);
  // How many times For has matched.
  uint64_t matched() const;

 private:
  const SilenceStore* const store_;
  mutable absl::Mutex mu_;
  // Held so that its address cannot be reused by a later evaluation.
  std::shared_ptr<const std::vector<v1::Finding>> findings_ ABSL_GUARDED_BY(mu_);
  uint64_t revision_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time valid_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::shared_ptr<const std::vector<std::string>> silenced_by_ ABSL_GUARDED_BY(mu_);
  uint64_t matched_ ABSL_GUARDED_BY(mu_) = 0;
};

class SilenceService final : public v1::Silences::CallbackService {
 public:
  // `require_operator`: every call needs an operator certificate
  // (PERMISSION_DENIED otherwise, counted in `refusals` when given).
  // Without it (--insecure) the author is recorded as "insecure".
  SilenceService(SilenceStore* store, bool require_operator, RefusalCounter* refusals)
      : store_(store), require_operator_(require_operator), refusals_(refusals) {}

  grpc::ServerUnaryReactor* Add(grpc::CallbackServerContext* context,
                                const v1::AddSilenceRequest* request,
                                v1::Silence* response) override;
  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* context,
                                 const v1::ListSilencesRequest* request,
                                 v1::ListSilencesResponse* response) override;
  grpc::ServerUnaryReactor* Expire(grpc::CallbackServerContext* context,
                                   const v1::ExpireSilenceRequest* request,
                                   v1::Silence* response) override;

 private:
  // The caller's operator name, or PermissionDenied naming what it holds.
  absl::StatusOr<std::string> Author(grpc::CallbackServerContext* context);
  SilenceStore* const store_;
  const bool require_operator_;
  RefusalCounter* const refusals_;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_SILENCES_H_
