#include "collector/cli/shards.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "collector/cli/report.h"
#include "google/protobuf/util/time_util.h"

namespace constance::cli {
namespace {

using google::protobuf::util::TimeUtil;

// A series' identity as a sortable value.
std::tuple<int, std::string, std::string, int> SeriesOrder(const v1::SeriesId& s) {
  return {s.family(), s.key(), s.currency(), s.kind()};
}

// The earlier of two timestamps, an unset one counting as unknown.
void KeepEarlier(const google::protobuf::Timestamp& t, google::protobuf::Timestamp* out) {
  if (t.seconds() == 0 && t.nanos() == 0) return;
  if ((out->seconds() == 0 && out->nanos() == 0) || t < *out) *out = t;
}

void SortFindings(google::protobuf::RepeatedPtrField<v1::Finding>* findings) {
  std::stable_sort(findings->begin(), findings->end(),
                   [](const v1::Finding& a, const v1::Finding& b) {
                     if (a.severity() != b.severity()) return a.severity() > b.severity();
                     return a.id() < b.id();
                   });
}

}  // namespace

absl::StatusOr<std::vector<std::string>> CollectorAddresses(const std::string& collectors,
                                                            const std::string& shards_file) {
  std::vector<std::string> out;
  if (shards_file.empty()) {
    for (absl::string_view a : absl::StrSplit(collectors, ',')) {
      a = absl::StripAsciiWhitespace(a);
      if (a.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--collector: '", collectors, "' has an empty address (write host:port,host:port)"));
      }
      out.emplace_back(a);
    }
    return out;
  }
  std::ifstream in(shards_file);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shards: cannot read ", shards_file, " (one host:port a line)"));
  }
  int line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    const std::string content = line.substr(0, line.find('#'));
    absl::string_view a = absl::StripAsciiWhitespace(content);
    if (a.empty()) continue;
    if (absl::StrContains(a, ' ') || absl::StrContains(a, ',')) {
      return absl::InvalidArgumentError(absl::StrCat(shards_file, ":", line_number, ": '", a,
                                                     "' is not one host:port (one a line)"));
    }
    out.emplace_back(a);
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shards: ", shards_file, " names no collector (one host:port a line)"));
  }
  return out;
}

v1::ChainSummaryResponse MergeChainSummaries(const std::vector<v1::ChainSummaryResponse>& shards,
                                             std::vector<std::string>* disagreements) {
  v1::ChainSummaryResponse out;
  std::map<std::tuple<int, std::string, std::string, int>, v1::MergeableSums> sums;
  std::map<std::tuple<int, std::string, std::string, int>, bool> disagree;
  for (const v1::ChainSummaryResponse& s : shards) {
    KeepEarlier(s.computed_at(), out.mutable_computed_at());
    KeepEarlier(s.evaluated_at(), out.mutable_evaluated_at());
    out.set_locations(out.locations() + s.locations());
    out.set_cells(out.cells() + s.cells());
    out.set_observations_applied(out.observations_applied() + s.observations_applied());
    out.set_observations_rejected(out.observations_rejected() + s.observations_rejected());
    out.set_observations_settled(out.observations_settled() + s.observations_settled());
    out.set_uncompared_series(out.uncompared_series() + s.uncompared_series());
    out.set_series_omitted(out.series_omitted() + s.series_omitted());
    out.set_outliers_omitted(out.outliers_omitted() + s.outliers_omitted());
    out.set_findings_omitted(out.findings_omitted() + s.findings_omitted());
    out.set_trust_omitted(out.trust_omitted() + s.trust_omitted());
    out.set_mergeable_omitted(out.mergeable_omitted() + s.mergeable_omitted());
    out.mutable_series()->MergeFrom(s.series());
    out.mutable_outliers()->MergeFrom(s.outliers());
    out.mutable_findings()->MergeFrom(s.findings());
    out.mutable_trust()->MergeFrom(s.trust());
    for (const v1::MergeableSums& m : s.mergeable()) {
      auto [it, added] = sums.try_emplace(SeriesOrder(m.series()), m);
      if (added) continue;
      v1::MergeableSums& total = it->second;
      if (total.reference() != m.reference()) disagree[it->first] = true;
      total.set_n(total.n() + m.n());
      total.set_sum_deviations(total.sum_deviations() + m.sum_deviations());
      total.set_sum_squared_deviations(total.sum_squared_deviations() + m.sum_squared_deviations());
    }
  }
  for (const auto& [key, m] : sums) {
    if (disagree.count(key) > 0) {
      if (disagreements != nullptr) {
        disagreements->push_back(absl::StrCat(
            FormatSeries(m.series()),
            ": the shards' references differ (their catalogs disagree); no chain-wide figure"));
      }
      continue;
    }
    *out.add_mergeable() = m;
  }
  // The orders one collector answers in (services.cc, FillChainSummary).
  std::stable_sort(out.mutable_series()->begin(), out.mutable_series()->end(),
                   [](const v1::GroupStats& a, const v1::GroupStats& b) {
                     if (a.cv() != b.cv()) return a.cv() > b.cv();
                     return SeriesOrder(a.series()) < SeriesOrder(b.series());
                   });
  std::stable_sort(out.mutable_outliers()->begin(), out.mutable_outliers()->end(),
                   [](const v1::Outlier& a, const v1::Outlier& b) {
                     if (a.location() != b.location()) return a.location() < b.location();
                     return SeriesOrder(a.series()) < SeriesOrder(b.series());
                   });
  SortFindings(out.mutable_findings());
  std::stable_sort(out.mutable_trust()->begin(), out.mutable_trust()->end(),
                   [](const v1::TrustScore& a, const v1::TrustScore& b) {
                     if (a.score() != b.score()) return a.score() < b.score();
                     return a.location() < b.location();
                   });
  return out;
}

ChainWide FromSums(const v1::MergeableSums& s) {
  ChainWide out;
  out.n = s.n();
  if (s.n() == 0) return out;
  const double n = static_cast<double>(s.n());
  const double d = s.sum_deviations() / n;
  out.mean = s.reference() + d;
  out.stddev = std::sqrt(std::max(0.0, s.sum_squared_deviations() / n - d * d));
  return out;
}

v1::FindingsResponse MergeFindings(const std::vector<v1::FindingsResponse>& shards) {
  v1::FindingsResponse out;
  for (const v1::FindingsResponse& s : shards) {
    out.mutable_findings()->MergeFrom(s.findings());
    out.set_omitted(out.omitted() + s.omitted());
  }
  SortFindings(out.mutable_findings());
  return out;
}

v1::HistoryResponse MergeHistory(const std::vector<v1::HistoryResponse>& shards, uint32_t limit) {
  if (limit == 0) limit = 1000;
  std::vector<v1::Episode> all;
  uint64_t more = 0;
  for (const v1::HistoryResponse& s : shards) {
    all.insert(all.end(), s.episodes().begin(), s.episodes().end());
    more += s.more();
  }
  std::stable_sort(all.begin(), all.end(), [](const v1::Episode& a, const v1::Episode& b) {
    return b.opened_at() < a.opened_at();
  });
  v1::HistoryResponse out;
  for (size_t i = 0; i < all.size(); ++i) {
    if (i < limit) {
      *out.add_episodes() = std::move(all[i]);
    } else {
      ++more;
    }
  }
  out.set_more(more);
  return out;
}

}  // namespace constance::cli
