#include "collector/services.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <tuple>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "collector/history.h"
#include "collector/metrics.h"
#include "collector/silences.h"
#include "constance/validate.h"
#include "constance/version.h"
#include "spdlog/spdlog.h"

namespace constance::collector {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

namespace {

// Keeps the first `limit` elements of `list` (0 = all); returns how many
// it removed.
template <typename T>
uint64_t KeepFirst(uint32_t limit, google::protobuf::RepeatedPtrField<T>* list) {
  if (limit == 0 || static_cast<uint32_t>(list->size()) <= limit) return 0;
  const int omitted = list->size() - static_cast<int>(limit);
  list->DeleteSubrange(static_cast<int>(limit), omitted);
  return static_cast<uint64_t>(omitted);
}

// The rows per list a request asks for: its own limit, else the default.
uint32_t QueryLimit(uint32_t requested) {
  return requested == 0 ? kDefaultQueryLimit : requested;
}

// The order of series in mergeable and uncompared: family, key, currency,
// kind (as the CLI's merge orders them, collector/cli/shards.cc).
bool SeriesBefore(const SeriesKey& a, const SeriesKey& b) {
  return std::tie(a.family, a.key, a.currency, a.kind) <
         std::tie(b.family, b.key, b.currency, b.kind);
}

}  // namespace

void FillChainSummary(const Snapshot& snapshot, v1::ChainSummaryResponse* out, uint32_t limit) {
  const absl::Time t = snapshot.computed_at;
  out->mutable_computed_at()->set_seconds(absl::ToUnixSeconds(t));
  out->mutable_computed_at()->set_nanos(static_cast<int32_t>(
      (t - absl::FromUnixSeconds(absl::ToUnixSeconds(t))) / absl::Nanoseconds(1)));
  out->set_locations(snapshot.locations);
  out->set_cells(snapshot.cells);
  out->set_uncompared_series(snapshot.uncompared_series);
  out->set_observations_applied(snapshot.observations_applied);
  out->set_observations_rejected(snapshot.observations_rejected);
  std::vector<const SeriesStats*> series;
  for (const auto& s : snapshot.series) series.push_back(s.get());
  // Most dispersed first; ties in a stable, readable order.
  std::sort(series.begin(), series.end(), [](const SeriesStats* a, const SeriesStats* b) {
    if (a->summary.cv != b->summary.cv) return a->summary.cv > b->summary.cv;
    if (a->key.family != b->key.family) return a->key.family < b->key.family;
    return a->key.key < b->key.key;
  });
  for (size_t i = 0; i < series.size(); ++i) {
    if (limit == 0 || i < limit) FillSeriesStats(*series[i], out->add_series());
    FillSeriesOutliers(*series[i], out->mutable_outliers());
  }
  if (limit != 0 && series.size() > limit) out->set_series_omitted(series.size() - limit);
  // Outliers grouped by location, then series, so a store's problems read together.
  std::sort(out->mutable_outliers()->begin(), out->mutable_outliers()->end(),
            [](const v1::Outlier& a, const v1::Outlier& b) {
              if (a.location() != b.location()) return a.location() < b.location();
              if (a.series().family() != b.series().family()) {
                return a.series().family() < b.series().family();
              }
              return a.series().key() < b.series().key();
            });
  out->set_outliers_omitted(KeepFirst(limit, out->mutable_outliers()));
  for (const v1::Finding& f : snapshot.findings->active) {
    if (limit != 0 && static_cast<uint32_t>(out->findings_size()) >= limit) {
      out->set_findings_omitted(out->findings_omitted() + 1);
      continue;
    }
    *out->add_findings() = f;
  }
  out->set_observations_settled(snapshot.findings->observations_settled);
  if (snapshot.findings->evaluated_at != absl::InfinitePast()) {
    out->mutable_evaluated_at()->set_seconds(absl::ToUnixSeconds(snapshot.findings->evaluated_at));
  }
  std::vector<const FindingsView::Trust*> trust;
  for (const auto& t : snapshot.findings->trust) trust.push_back(&t);
  std::sort(trust.begin(), trust.end(), [](const auto* a, const auto* b) {
    if (a->score != b->score) return a->score < b->score;
    return a->location < b->location;
  });
  for (const auto* t : trust) {
    v1::TrustScore* score = out->add_trust();
    score->set_location(t->location);
    score->set_balance(t->balance);
    score->set_score(t->score);
  }
  out->set_trust_omitted(KeepFirst(limit, out->mutable_trust()));
  // By series identity, so each shard's limit keeps a prefix of one order
  // and a merge knows up to where every shard's list is whole.
  std::vector<MergeableSeries> mergeable = Mergeable(snapshot);
  std::sort(mergeable.begin(), mergeable.end(),
            [](const MergeableSeries& a, const MergeableSeries& b) {
              return SeriesBefore(*a.key, *b.key);
            });
  for (const MergeableSeries& m : mergeable) {
    v1::MergeableSums* sums = out->add_mergeable();
    SeriesToProto(*m.key, sums->mutable_series());
    sums->set_n(m.n);
    sums->set_reference(m.reference);
    sums->set_sum_deviations(m.s1);
    sums->set_sum_squared_deviations(m.s2);
  }
  out->set_mergeable_omitted(KeepFirst(limit, out->mutable_mergeable()));
  std::vector<Snapshot::Uncompared> uncompared = snapshot.uncompared;
  std::sort(uncompared.begin(), uncompared.end(), [&](const auto& a, const auto& b) {
    return SeriesBefore(snapshot.series[a.row]->key, snapshot.series[b.row]->key);
  });
  for (const Snapshot::Uncompared& u : uncompared) {
    v1::UncomparedSeries* out_u = out->add_uncompared();
    SeriesToProto(snapshot.series[u.row]->key, out_u->mutable_series());
    out_u->set_n(u.n);
  }
  out->set_uncompared_omitted(KeepFirst(limit, out->mutable_uncompared()));
  if (snapshot.catalog != nullptr) out->set_min_group(snapshot.catalog->thresholds.min_group);
}

grpc::ServerUnaryReactor* QueryService::RefuseUnlessOperator(grpc::CallbackServerContext* context) {
  absl::StatusOr<std::string> name = OperatorName(*context, require_operator_, refusals_, "query");
  if (name.ok()) return nullptr;
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(
      grpc::Status(grpc::StatusCode::PERMISSION_DENIED, std::string(name.status().message())));
  return reactor;
}

grpc::ServerUnaryReactor* QueryService::ChainSummary(grpc::CallbackServerContext* context,
                                                     const v1::ChainSummaryRequest* request,
                                                     v1::ChainSummaryResponse* response) {
  if (grpc::ServerUnaryReactor* refused = RefuseUnlessOperator(context)) return refused;
  FillChainSummary(*engine_->snapshot(), response, QueryLimit(request->limit()));
  if (silences_ != nullptr) silences_->Mark(response->mutable_findings(), absl::Now());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* QueryService::Findings(grpc::CallbackServerContext* context,
                                                 const v1::FindingsRequest* request,
                                                 v1::FindingsResponse* response) {
  if (grpc::ServerUnaryReactor* refused = RefuseUnlessOperator(context)) return refused;
  std::shared_ptr<const Snapshot> snapshot = engine_->snapshot();
  auto wanted = [request](const v1::Finding& f) {
    if (request->kind() != v1::FINDING_KIND_UNSPECIFIED && f.kind() != request->kind())
      return false;
    if (request->location().empty()) return true;
    return f.location() == request->location() ||
           std::find(f.locations().begin(), f.locations().end(), request->location()) !=
               f.locations().end();
  };
  for (const v1::Finding& f : snapshot->findings->active) {
    if (wanted(f)) *response->add_findings() = f;
  }
  if (request->include_closed()) {
    for (auto it = snapshot->findings->closed.rbegin(); it != snapshot->findings->closed.rend();
         ++it) {
      if (wanted(*it)) *response->add_findings() = *it;
    }
  }
  response->set_omitted(KeepFirst(QueryLimit(request->limit()), response->mutable_findings()));
  if (silences_ != nullptr) silences_->Mark(response->mutable_findings(), absl::Now());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* QueryService::LocationScorecard(
    grpc::CallbackServerContext* context, const v1::LocationScorecardRequest* request,
    v1::LocationScorecardResponse* response) {
  if (grpc::ServerUnaryReactor* refused = RefuseUnlessOperator(context)) return refused;
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<v1::LocationScorecardResponse> card =
      engine_->LocationScorecard(request->location());
  if (card.ok()) {
    *response = std::move(*card);
    const uint32_t limit = QueryLimit(request->limit());
    response->set_values_omitted(KeepFirst(limit, response->mutable_values()));
    KeepFirst(limit, response->mutable_series());  // Parallel to values.
    response->set_findings_omitted(KeepFirst(limit, response->mutable_findings()));
  }
  if (card.ok() && history_ != nullptr) {
    *response->mutable_record() =
        history_->LocationRecord(request->location(), absl::Now(), kRecordDays);
  }
  if (silences_ != nullptr) silences_->Mark(response->mutable_findings(), absl::Now());
  reactor->Finish(ToGrpcStatus(card.status()));
  return reactor;
}

grpc::ServerUnaryReactor* QueryService::KeyDetail(grpc::CallbackServerContext* context,
                                                  const v1::KeyDetailRequest* request,
                                                  v1::KeyDetailResponse* response) {
  if (grpc::ServerUnaryReactor* refused = RefuseUnlessOperator(context)) return refused;
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<v1::KeyDetailResponse> detail =
      engine_->KeyDetail(request->series(), request->group());
  if (detail.ok()) *response = std::move(*detail);
  reactor->Finish(ToGrpcStatus(detail.status()));
  return reactor;
}

}  // namespace constance::collector
