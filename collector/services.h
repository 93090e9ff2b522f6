// The collector's gRPC services: Ingest (agents) and Query (operators).
//
// IngestService serves one long-lived bidirectional stream per agent with
// gRPC's callback API: each batch read is applied to the Engine and its
// acknowledgement queued for writing; a stream holds one outstanding read
// and one outstanding write at a time, acks queue behind the write in
// flight. The method is served raw (grpc::ByteBuffer): messages are parsed
// here, so the batch log can keep a batch's received bytes instead of
// serializing the parsed batch again. A stream belongs to the location of
// its first message; a later message claiming another location ends the
// stream (PERMISSION_DENIED).
//
// QueryService answers from the Engine's latest snapshot (ChainSummary) or
// its current cells (KeyDetail).
//
// Both keep a raw pointer to the Engine, which must outlive the server.
// Thread-safety: gRPC calls them from its own threads; they are safe for it.
#ifndef CONSTANCE_COLLECTOR_SERVICES_H_
#define CONSTANCE_COLLECTOR_SERVICES_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "collector/auth.h"
#include "collector/batch_log.h"
#include "collector/engine.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "constance/v1/query.grpc.pb.h"

namespace constance::collector {

// absl::Status -> grpc::Status, in one place at the RPC boundary.
grpc::Status ToGrpcStatus(const absl::Status& status);

class IngestReactor;
class SilenceStore;
class FindingHistory;

class IngestService final : public v1::Ingest::WithRawCallbackMethod_Stream<v1::Ingest::Service> {
 public:
  // With a `log`, a batch is applied and acknowledged only once it is
  // durable in it (both must outlive the server); without, at once.
  //
  // `rate_per_location` (observations per second, 0 = unlimited) with
  // `burst` bounds what one location may send: over it a batch is
  // answered THROTTLED (nothing applied, retry after the time its tokens
  // need), so one noisy agent cannot starve the others and nothing
  // acknowledged is ever dropped.
  explicit IngestService(Engine* engine, BatchLog* log = nullptr, double rate_per_location = 0,
                         double burst = 0)
      : engine_(engine), log_(log), rate_(rate_per_location), burst_(burst) {}
  IngestService(const IngestService&) = delete;
  IngestService& operator=(const IngestService&) = delete;

  // Reads serialized constance.v1.AgentMessages, writes serialized
  // constance.v1.CollectorMessages: the wire protocol is the generated
  // service's.
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Stream(
      grpc::CallbackServerContext* context) override;

  // Call before serving. `require_location`: a stream needs a client
  // certificate naming a location and may only carry that location
  // (PERMISSION_DENIED otherwise). `max_streams` (0 = unlimited): streams
  // past it are refused RESOURCE_EXHAUSTED (the agent retries later).
  // `refusals` (outliving the server) counts what is refused, by reason.
  void Secure(bool require_location, int64_t max_streams, RefusalCounter* refusals) {
    require_location_ = require_location;
    max_streams_ = max_streams;
    refusals_ = refusals;
  }
  const RefusalCounter* refusals() const { return refusals_; }

  // Streams open right now.
  int64_t streams_open() const { return streams_open_.load(std::memory_order_relaxed); }
  // Streams ended for a protocol violation, e.g. a second location.
  uint64_t streams_refused() const { return streams_refused_.load(std::memory_order_relaxed); }
  // Batches answered THROTTLED.
  uint64_t batches_throttled() const { return throttled_.load(std::memory_order_relaxed); }
  // The durable batch log, or null without one (for its commit metrics).
  const BatchLog* log() const { return log_; }

  // Takes `count` tokens of `location`'s bucket at `now`; when there are
  // not enough, takes none and returns how long until there will be.
  absl::Duration TakeTokens(const std::string& location, size_t count, absl::Time now);

 private:
  friend class IngestReactor;
  // Takes one of the max_streams_ slots for a new stream (counted in
  // streams_open_ until its OnDone); false, taking nothing, when all are
  // taken.
  bool ClaimStreamSlot();
  // Makes `claimant` the one live stream of `location` and ends the one it
  // supersedes (ABORTED); returns the engine's owner token for it.
  uint64_t Claim(const std::string& location, IngestReactor* claimant);
  // Forgets `stream` as `location`'s live stream (it ended).
  void Release(const std::string& location, IngestReactor* stream, uint64_t owner);
  Engine* const engine_;
  BatchLog* const log_;
  const double rate_;
  const double burst_;
  struct Bucket {
    double tokens = 0;
    absl::Time updated = absl::InfinitePast();
  };
  absl::Mutex buckets_mu_;
  absl::flat_hash_map<std::string, Bucket> buckets_ ABSL_GUARDED_BY(buckets_mu_);
  absl::Mutex live_mu_;
  absl::flat_hash_map<std::string, IngestReactor*> live_ ABSL_GUARDED_BY(live_mu_);
  std::atomic<uint64_t> throttled_{0};
  std::atomic<int64_t> streams_open_{0};
  std::atomic<uint64_t> streams_refused_{0};
  bool require_location_ = false;
  int64_t max_streams_ = 0;
  RefusalCounter* refusals_ = nullptr;
  void Refused(const std::string& reason) {
    if (refusals_ != nullptr) refusals_->Add(reason);
  }
};

// Rows a Query answer sends per list when the request sets no limit: an
// answer about a location with 100k keys stays well below gRPC's 4 MiB.
inline constexpr uint32_t kDefaultQueryLimit = 1'000;

// The Query API's chain report of `snapshot`: headline counts, series by
// dispersion, outliers by location, active findings and trust. What
// ChainSummary answers and `constance replay` prints at its end. With a
// `limit` (0 = all) each list keeps its first `limit` rows and counts the
// rest in its *_omitted field.
void FillChainSummary(const Snapshot& snapshot, v1::ChainSummaryResponse* out,
                      uint32_t limit = 0);

class QueryService final : public v1::Query::CallbackService {
 public:
  explicit QueryService(const Engine* engine) : engine_(engine) {}

  // Call before serving: every call then needs an operator certificate
  // (PERMISSION_DENIED otherwise), counted in `refusals` when given.
  void RequireOperator(RefusalCounter* refusals) {
    require_operator_ = true;
    refusals_ = refusals;
  }
  // Call before serving: findings in every answer carry silenced_by from
  // `silences` (outliving the server).
  void UseSilences(const SilenceStore* silences) { silences_ = silences; }
  // Call before serving: LocationScorecard answers carry the location's
  // last kRecordDays of `history` (outliving the server).
  static constexpr int kRecordDays = 30;
  void UseHistory(const FindingHistory* history) { history_ = history; }
  QueryService(const QueryService&) = delete;
  QueryService& operator=(const QueryService&) = delete;

  grpc::ServerUnaryReactor* ChainSummary(grpc::CallbackServerContext* context,
                                         const v1::ChainSummaryRequest* request,
                                         v1::ChainSummaryResponse* response) override;
  grpc::ServerUnaryReactor* KeyDetail(grpc::CallbackServerContext* context,
                                      const v1::KeyDetailRequest* request,
                                      v1::KeyDetailResponse* response) override;
  grpc::ServerUnaryReactor* Findings(grpc::CallbackServerContext* context,
                                     const v1::FindingsRequest* request,
                                     v1::FindingsResponse* response) override;
  grpc::ServerUnaryReactor* LocationScorecard(grpc::CallbackServerContext* context,
                                              const v1::LocationScorecardRequest* request,
                                              v1::LocationScorecardResponse* response) override;

 private:
  // A finished reactor when the caller may not query, else nullptr.
  grpc::ServerUnaryReactor* RefuseUnlessOperator(grpc::CallbackServerContext* context);

  const Engine* const engine_;
  const SilenceStore* silences_ = nullptr;
  const FindingHistory* history_ = nullptr;
  bool require_operator_ = false;
  RefusalCounter* refusals_ = nullptr;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_SERVICES_H_
