#include "collector/cli/shards.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <optional>
#include <set>
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

using SeriesTuple = std::tuple<int, std::string, std::string, int>;

// Where every shard's list of series (sorted by series, cut at the
// request's limit) is whole: a shard that cut its list holds nothing it
// did not send up to its last entry; past the first such entry over the
// shards, some shard may have left a series out.
class WholeThrough {
 public:
  template <typename List>
  void Add(const List& list, uint64_t omitted) {
    if (omitted == 0) return;
    if (list.empty()) {
      nothing_ = true;
      return;
    }
    const SeriesTuple last = SeriesOrder(Id(list.Get(list.size() - 1)));
    if (!through_.has_value() || last < *through_) through_ = last;
  }
  bool Covers(const SeriesTuple& s) const {
    return !nothing_ && (!through_.has_value() || s <= *through_);
  }
  bool cut() const { return nothing_ || through_.has_value(); }

 private:
  static const v1::SeriesId& Id(const v1::MergeableSums& m) { return m.series(); }
  static const v1::SeriesId& Id(const v1::UncomparedSeries& u) { return u.series(); }
  bool nothing_ = false;
  std::optional<SeriesTuple> through_;
};

// Each series' sums added over the shards holding it; series some shard
// may have left out of its list are left out here too (counted in
// mergeable_omitted), so every figure shown is exact.
void MergeSums(const std::vector<v1::ChainSummaryResponse>& shards, v1::ChainSummaryResponse* out,
               std::vector<std::string>* notes) {
  WholeThrough whole;
  uint64_t omitted = 0;
  for (const v1::ChainSummaryResponse& s : shards) {
    whole.Add(s.mergeable(), s.mergeable_omitted());
    omitted = std::max(omitted, s.mergeable_omitted());
  }
  std::map<SeriesTuple, v1::MergeableSums> sums;
  std::set<SeriesTuple> disagree, dropped;
  for (const v1::ChainSummaryResponse& s : shards) {
    for (const v1::MergeableSums& m : s.mergeable()) {
      const SeriesTuple key = SeriesOrder(m.series());
      if (!whole.Covers(key)) {
        dropped.insert(key);
        continue;
      }
      auto [it, added] = sums.try_emplace(key, m);
      if (added) continue;
      v1::MergeableSums& total = it->second;
      if (total.reference() != m.reference()) disagree.insert(key);
      total.set_n(total.n() + m.n());
      total.set_sum_deviations(total.sum_deviations() + m.sum_deviations());
      total.set_sum_squared_deviations(total.sum_squared_deviations() + m.sum_squared_deviations());
    }
  }
  for (const auto& [key, m] : sums) {
    if (disagree.count(key) > 0) {
      notes->push_back(absl::StrCat(
          FormatSeries(m.series()),
          ": the shards' references differ (their catalogs disagree); no chain-wide figure"));
      continue;
    }
    *out->add_mergeable() = m;
  }
  // At least: what one shard left out may be what another left out too.
  out->set_mergeable_omitted(omitted + dropped.size());
}

// Whether a series held by several shards is compared, as one collector
// holding every location decides: once at least min_group locations hold
// it (a peer group too small falls back to the chain, engine.cc), so a
// series each shard holds too thinly to compare may be compared chain-wide,
// and one some shard compares is compared.
void MergeUncompared(const std::vector<v1::ChainSummaryResponse>& shards,
                     v1::ChainSummaryResponse* out, std::vector<std::string>* notes) {
  WholeThrough whole;
  uint64_t min_group = 0;
  for (const v1::ChainSummaryResponse& s : shards) {
    whole.Add(s.uncompared(), s.uncompared_omitted());
    whole.Add(s.mergeable(), s.mergeable_omitted());
    if (min_group != 0 && s.min_group() != 0 && s.min_group() != min_group) {
      notes->push_back("not compared: the shards' catalogs set different min_group");
    }
    min_group = std::max(min_group, s.min_group());
  }
  struct Held {
    v1::UncomparedSeries total;
    bool compared_on_a_shard = false;
  };
  std::map<SeriesTuple, Held> held;
  uint64_t unlisted = 0;
  bool old_shard = false;
  for (const v1::ChainSummaryResponse& s : shards) {
    for (const v1::UncomparedSeries& u : s.uncompared()) {
      Held& h = held[SeriesOrder(u.series())];
      *h.total.mutable_series() = u.series();
      h.total.set_n(h.total.n() + u.n());
    }
    // Collectors before the list came sent the count alone.
    const uint64_t listed = s.uncompared_size() + s.uncompared_omitted();
    if (s.uncompared_series() > listed) old_shard = true;
    unlisted += s.uncompared_series() - std::min(s.uncompared_series(), listed) +
                s.uncompared_omitted();
  }
  for (const v1::ChainSummaryResponse& s : shards) {
    std::set<SeriesTuple> own;
    for (const v1::UncomparedSeries& u : s.uncompared()) own.insert(SeriesOrder(u.series()));
    for (const v1::MergeableSums& m : s.mergeable()) {
      const SeriesTuple key = SeriesOrder(m.series());
      auto it = held.find(key);
      if (it != held.end() && own.count(key) == 0) it->second.compared_on_a_shard = true;
    }
  }
  uint64_t unsure = 0;
  for (const auto& [key, h] : held) {
    const bool sure = whole.Covers(key);
    unsure += !sure;
    if (sure && (h.compared_on_a_shard || (min_group > 0 && h.total.n() >= min_group))) continue;
    *out->add_uncompared() = h.total;
  }
  out->set_uncompared_series(out->uncompared_size() + unlisted);
  out->set_uncompared_omitted(unlisted);
  out->set_min_group(min_group);
  if (unlisted > 0 || unsure > 0) {
    notes->push_back(absl::StrCat(
        "not compared: ", unlisted + unsure, " series were not named by every shard (",
        old_shard ? "a shard of an older version" : "--limit",
        "); the count may include a series twice or one compared chain-wide"));
  }
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
  std::vector<std::string> notes;
  for (const v1::ChainSummaryResponse& s : shards) {
    KeepEarlier(s.computed_at(), out.mutable_computed_at());
    KeepEarlier(s.evaluated_at(), out.mutable_evaluated_at());
    out.set_locations(out.locations() + s.locations());
    out.set_cells(out.cells() + s.cells());
    out.set_observations_applied(out.observations_applied() + s.observations_applied());
    out.set_observations_rejected(out.observations_rejected() + s.observations_rejected());
    out.set_observations_settled(out.observations_settled() + s.observations_settled());
    out.set_series_omitted(out.series_omitted() + s.series_omitted());
    out.set_outliers_omitted(out.outliers_omitted() + s.outliers_omitted());
    out.set_findings_omitted(out.findings_omitted() + s.findings_omitted());
    out.set_trust_omitted(out.trust_omitted() + s.trust_omitted());
    out.mutable_series()->MergeFrom(s.series());
    out.mutable_outliers()->MergeFrom(s.outliers());
    out.mutable_findings()->MergeFrom(s.findings());
    out.mutable_trust()->MergeFrom(s.trust());
  }
  MergeSums(shards, &out, &notes);
  MergeUncompared(shards, &out, &notes);
  // A location is on one shard (deploy/SCALING.md); one on two is counted twice.
  std::map<std::string, int> shards_of;
  for (const v1::TrustScore& t : out.trust()) ++shards_of[t.location()];
  for (const auto& [location, n] : shards_of) {
    if (n > 1) {
      notes.push_back(absl::StrCat("location ", location, " reports to ", n,
                                   " shards: the counts include it ", n,
                                   " times (send each location to one shard)"));
    }
  }
  if (disagreements != nullptr) {
    disagreements->insert(disagreements->end(), notes.begin(), notes.end());
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

v1::KeyDetailResponse MergeKeyDetails(const std::vector<v1::KeyDetailResponse>& shards,
                                      std::vector<std::string>* notes) {
  v1::KeyDetailResponse out;
  std::map<std::string, int> shards_of;
  for (const v1::KeyDetailResponse& s : shards) {
    if (s.groups().empty() && s.has_stats()) {
      v1::GroupDetail* g = out.add_groups();
      *g->mutable_stats() = s.stats();
      *g->mutable_values() = s.values();
      *g->mutable_outliers() = s.outliers();
    }
    out.mutable_groups()->MergeFrom(s.groups());
    out.mutable_findings()->MergeFrom(s.findings());
    std::set<std::string> groups;
    for (const v1::GroupDetail& g : s.groups()) groups.insert(g.stats().group());
    if (s.groups().empty()) groups.insert(s.stats().group());
    for (const std::string& g : groups) ++shards_of[g];
  }
  for (const auto& [group, n] : shards_of) {
    if (n > 1 && notes != nullptr) {
      notes->push_back(absl::StrCat("group ", group, " is on ", n,
                                    " shards: each shows its own locations' figures (chain-wide: "
                                    "constance report)"));
    }
  }
  SortFindings(out.mutable_findings());
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
