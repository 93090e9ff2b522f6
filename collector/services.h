// The collector's Query service (operators) and what the gRPC services
// share. The Ingest service (agents) is in ingest_service.h.
//
// QueryService answers from the Engine's latest snapshot (ChainSummary) or
// its current cells (KeyDetail). It keeps a raw pointer to the Engine,
// which must outlive the server. Thread-safety: gRPC calls it from its own
// threads; it is safe for it.
#ifndef CONSTANCE_COLLECTOR_SERVICES_H_
#define CONSTANCE_COLLECTOR_SERVICES_H_

#include <cstdint>
#include <string>

#include "collector/auth.h"
#include "collector/engine.h"
#include "constance/v1/query.grpc.pb.h"

namespace constance::collector {

// absl::Status -> grpc::Status, in one place at the RPC boundary.
grpc::Status ToGrpcStatus(const absl::Status& status);

class SilenceStore;
class FindingHistory;

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
