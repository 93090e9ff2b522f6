#include "collector/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "collector/exposition.h"
#include "collector/findings.h"
#include "collector/silences.h"
#include "constance/validate.h"

namespace constance::collector {
namespace {

constexpr absl::string_view kCounter = "counter";
constexpr absl::string_view kGauge = "gauge";

// A family of one unlabelled sample.
void Single(TextExposition* out, absl::string_view name, absl::string_view help,
            absl::string_view type, double value) {
  out->Family(name, help, type);
  out->Sample(name, value);
}

// The lower-case name of a value of a proto enum (e.g. "shelf" for
// SHELF), computed once per enum rather than once per sample.
template <const google::protobuf::EnumDescriptor* (*Descriptor)()>
absl::string_view LowerName(int number) {
  static const std::map<int, std::string>* const names = [] {
    auto* out = new std::map<int, std::string>;
    const google::protobuf::EnumDescriptor* d = Descriptor();
    for (int i = 0; i < d->value_count(); ++i) {
      (*out)[d->value(i)->number()] = absl::AsciiStrToLower(d->value(i)->name());
    }
    return out;
  }();
  auto it = names->find(number);
  return it == names->end() ? absl::string_view() : it->second;
}

// Labels of a series without its group: the mergeable statistics are per
// series, summed over its peer groups.
void AddMergeLabels(const SeriesKey& key, LabelTable* labels) {
  labels->Add("family", FamilyName(key.family))
      .Add("key", key.key)
      .Add("currency", key.currency)
      .Add("price_kind",
           key.family == v1::FAMILY_PRICE ? LowerName<v1::PriceKind_descriptor>(key.kind) : "");
}

// A SeriesKey owned by the snapshot, hashed and compared by value.
struct KeyRef {
  const SeriesKey* key;
  template <typename H>
  friend H AbslHashValue(H h, const KeyRef& k) {
    return H::combine(std::move(h), *k.key);
  }
  friend bool operator==(const KeyRef& a, const KeyRef& b) { return *a.key == *b.key; }
};

double Seconds(absl::Time t) { return absl::ToDoubleSeconds(t - absl::UnixEpoch()); }

absl::string_view Label(const v1::Finding& f, const std::string& name) {
  auto it = f.labels().find(name);
  return it == f.labels().end() ? absl::string_view() : absl::string_view(it->second);
}

// Findings, trust: the series alerts and dashboards are built on. Finding
// series exist only while a finding is active, capped so a bad day cannot
// explode Prometheus; what the cap hides is itself exported.
// A finding a silence covers carries its id in `silenced_by` (the shipped
// alert rules page only for silenced_by="").
void RenderFindings(const Snapshot& snap, SilenceMatches* silences, TextExposition* out) {
  const FindingsView& view = *snap.findings;
  std::shared_ptr<const std::vector<std::string>> silenced_by =
      silences != nullptr ? silences->For({snap.findings, &snap.findings->active}, absl::Now())
                          : std::make_shared<const std::vector<std::string>>(view.active.size());
  const uint64_t cap = snap.catalog != nullptr ? snap.catalog->thresholds.finding_cap : 10'000;

  out->Family("constance_findings_active", "Active findings by kind and severity.", kGauge);
  // Views of LowerName's names, which live as long as the process.
  std::map<std::pair<absl::string_view, absl::string_view>, uint64_t> counts;
  for (const v1::Finding& f : view.active) {
    ++counts[{LowerName<v1::FindingKind_descriptor>(f.kind()),
              LowerName<v1::Severity_descriptor>(f.severity())}];
  }
  for (const auto& [k, n] : counts) {
    LabelSet labels;
    labels.Add("finding", k.first).Add("severity", k.second);
    out->Sample("constance_findings_active", labels, static_cast<double>(n));
  }

  static const std::string kRegion = "region";
  // Most severe first (the view's order), up to the cap.
  const size_t exported = static_cast<size_t>(std::min<uint64_t>(cap, view.active.size()));
  LabelTable labels(exported, 256);
  for (size_t i = 0; i < exported; ++i) {
    const v1::Finding& f = view.active[i];
    labels.StartRow();
    labels.Add("finding", LowerName<v1::FindingKind_descriptor>(f.kind()))
        .Add("severity", LowerName<v1::Severity_descriptor>(f.severity()))
        .Add("audience", f.audience())
        .Add("location", f.location())
        .Add("region", Label(f, kRegion))
        .Add("family", f.has_series() ? FamilyName(f.series().family()) : "")
        .Add("key", f.series().key())
        .Add("currency", f.series().currency())
        .Add("price_kind", f.series().family() == v1::FAMILY_PRICE
                               ? LowerName<v1::PriceKind_descriptor>(f.series().kind())
                               : "")
        .Add("group", f.group())
        .Add("id", f.id())
        .Add("silenced_by", (*silenced_by)[i]);
  }
  out->Family("constance_finding",
              "1 per active finding (most severe first, up to the catalog's finding_cap).", kGauge);
  for (size_t i = 0; i < exported; ++i) out->Sample("constance_finding", labels.Row(i), 1);
  out->Family("constance_finding_value", "The finding's value in the family's unit (first reason).",
              kGauge);
  for (size_t i = 0; i < exported; ++i) {
    const v1::Finding& f = view.active[i];
    if (f.reasons_size() > 0)
      out->Sample("constance_finding_value", labels.Row(i), f.reasons(0).value());
  }
  out->Family("constance_finding_expected",
              "What the value was expected to be (median, list price, ...).", kGauge);
  for (size_t i = 0; i < exported; ++i) {
    const v1::Finding& f = view.active[i];
    if (f.reasons_size() > 0) {
      out->Sample("constance_finding_expected", labels.Row(i), f.reasons(0).expected());
    }
  }
  out->Family("constance_finding_started_timestamp_seconds",
              "When the finding's condition was first met.", kGauge);
  for (size_t i = 0; i < exported; ++i) {
    const v1::Finding& f = view.active[i];
    out->Sample("constance_finding_started_timestamp_seconds", labels.Row(i),
                static_cast<double>(f.started_at().seconds()) + f.started_at().nanos() / 1e9);
  }

  Single(out, "constance_findings_suppressed",
         "Active findings not exported because of the finding cap (alert when above 0).", kGauge,
         static_cast<double>(view.active.size() - exported));

  out->Family("constance_findings_evaluated_timestamp_seconds",
              "When findings were last evaluated.", kGauge);
  if (view.evaluated_at != absl::InfinitePast()) {
    out->Sample("constance_findings_evaluated_timestamp_seconds", Seconds(view.evaluated_at));
  }

  LabelTable trust(view.trust.size(), 32);
  for (const auto& t : view.trust) {
    trust.StartRow();
    trust.Add("location", t.location);
  }
  out->Family("constance_trust_balance",
              "Trust balance: decayed deposits for promises kept minus withdrawals for breaches "
              "and outliers.",
              kGauge);
  for (size_t i = 0; i < view.trust.size(); ++i) {
    out->Sample("constance_trust_balance", trust.Row(i), view.trust[i].balance);
  }
  out->Family("constance_trust_score", "Trust score 0..100: the share of decayed deposits.",
              kGauge);
  for (size_t i = 0; i < view.trust.size(); ++i) {
    out->Sample("constance_trust_score", trust.Row(i), view.trust[i].score);
  }
}

// Per series and group: the statistics operators chart and alert on.
struct Stat {
  const char* name;
  const char* help;
  double (*get)(const SeriesStats&);
};
const Stat kStats[] = {
    {"constance_series_locations", "Locations reporting the series.",
     [](const SeriesStats& s) { return static_cast<double>(s.summary.n); }},
    {"constance_series_mean", "Mean across locations, in the family's unit.",
     [](const SeriesStats& s) { return s.summary.mean; }},
    {"constance_series_stddev", "Population standard deviation across locations.",
     [](const SeriesStats& s) { return s.summary.stddev; }},
    {"constance_series_cv", "Coefficient of variation across locations (stddev / |mean|).",
     [](const SeriesStats& s) { return s.summary.cv; }},
    {"constance_series_min", "Lowest location value.",
     [](const SeriesStats& s) { return s.summary.min; }},
    {"constance_series_max", "Highest location value.",
     [](const SeriesStats& s) { return s.summary.max; }},
    {"constance_series_median", "Median across locations: the expected value.",
     [](const SeriesStats& s) { return s.summary.median; }},
    {"constance_series_mad", "Median absolute deviation from the median.",
     [](const SeriesStats& s) { return s.summary.mad; }},
    {"constance_series_band_low", "Lower edge of the expected band.",
     [](const SeriesStats& s) { return s.band.low; }},
    {"constance_series_band_high", "Upper edge of the expected band.",
     [](const SeriesStats& s) { return s.band.high; }},
    {"constance_series_p10", "10th percentile across locations.",
     [](const SeriesStats& s) { return s.summary.p10; }},
    {"constance_series_p90", "90th percentile across locations.",
     [](const SeriesStats& s) { return s.summary.p90; }},
    {"constance_series_outliers", "Outlier locations in the series now.",
     [](const SeriesStats& s) { return static_cast<double>(s.outliers.size()); }},
    {"constance_series_levels", "Consistent price levels in the group (1 = one price everywhere).",
     [](const SeriesStats& s) {
       if (s.key.family != v1::FAMILY_PRICE) return 0.0;
       return (s.main_level.locations == 0 ? 0.0 : 1.0) + s.other_levels.size();
     }},
};

// Each series' labels are escaped once and shared by all its samples.
void RenderSeries(const Snapshot& snap, TextExposition* out) {
  // One pass over the series reads every statistic into a flat table, so
  // that writing a family at a time (as the format requires) does not
  // visit each series' scattered memory once per statistic.
  constexpr size_t kStatCount = std::size(kStats);
  const size_t n_series = snap.series.size();
  LabelTable series_labels(n_series, 96);
  std::vector<double> values(n_series * kStatCount);
  for (size_t i = 0; i < n_series; ++i) {
    const SeriesStats& s = *snap.series[i];
    series_labels.StartRow();
    AddMergeLabels(s.key, &series_labels);
    series_labels.Add("group", s.group);
    for (size_t k = 0; k < kStatCount; ++k) values[k * n_series + i] = kStats[k].get(s);
  }
  for (size_t k = 0; k < kStatCount; ++k) {
    out->Family(kStats[k].name, kStats[k].help, kGauge);
    const absl::string_view name = kStats[k].name;
    for (size_t i = 0; i < n_series; ++i) {
      out->Sample(name, series_labels.Row(i), values[k * n_series + i]);
    }
  }
  // Outliers: the series' labels, the location and its direction.
  // Rows added to the series' table, after its n_series rows.
  LabelTable& outlier_labels = series_labels;
  std::vector<double> outlier_values;
  for (size_t i = 0; i < n_series; ++i) {
    const SeriesStats& s = *snap.series[i];
    for (size_t j = 0; j < s.outliers.size(); ++j) {
      outlier_labels.StartRow(i);
      outlier_labels.Add("location", s.outlier_locations[j])
          .Add("direction", s.outliers[j].direction == v1::ABOVE ? "above" : "below");
      outlier_values.push_back(s.outliers[j].value);
    }
  }
  out->Family("constance_outlier",
              "1 for each location outside its group's band now, with the direction of its "
              "deviation.",
              kGauge);
  for (size_t i = 0; i < outlier_values.size(); ++i) {
    out->Sample("constance_outlier", outlier_labels.Row(n_series + i), 1);
  }
  out->Family("constance_outlier_value", "The outlier location's value, in the family's unit.",
              kGauge);
  for (size_t i = 0; i < outlier_values.size(); ++i) {
    out->Sample("constance_outlier_value", outlier_labels.Row(n_series + i), outlier_values[i]);
  }
}

// Batch log and snapshots: the durable path behind every acknowledgement.
void RenderBatchLog(const BatchLog& log, TextExposition* out) {
  // The durable log's group commits: agents are acknowledged after them.
  const BatchLog::CommitStats c = log.commit_stats();
  out->Family("constance_batch_log_commit_seconds",
              "Latency of the durable batch log's group commits (one fsync each); a batch is "
              "acknowledged only after its commit.",
              "histogram");
  const std::vector<double>& bounds = BatchLog::CommitLatencyBounds();
  const LabelSet none;
  uint64_t cumulative = 0;
  std::string le;
  for (size_t i = 0; i < c.latency_buckets.size(); ++i) {
    cumulative += c.latency_buckets[i];
    le.clear();
    TextExposition::AppendValue(
        &le, i < bounds.size() ? bounds[i] : std::numeric_limits<double>::infinity());
    out->Sample("constance_batch_log_commit_seconds_bucket", none, "le", le,
                static_cast<double>(cumulative));
  }
  out->Sample("constance_batch_log_commit_seconds_sum", c.latency_sum_seconds);
  out->Sample("constance_batch_log_commit_seconds_count", static_cast<double>(c.commits));
  Single(out, "constance_batch_log_batches_committed_total",
         "Batches made durable in the batch log.", kCounter, static_cast<double>(c.batches));
  Single(out, "constance_batch_log_wal_checkpoints_total",
         "Copies of the batch log's WAL into its database file, made beside the commits.", kCounter,
         static_cast<double>(c.wal_checkpoints));
  Single(out, "constance_batch_log_wal_checkpoint_seconds_total",
         "Time spent copying the batch log's WAL into its database file.", kCounter,
         c.wal_checkpoint_seconds);
  Single(out, "constance_batch_log_wal_pages",
         "Pages (4 KiB) in the batch log's WAL after the last commit.", kGauge,
         static_cast<double>(c.wal_pages));
  Single(out, "constance_batch_log_wal_restarts_total",
         "Times the batch log's WAL was restarted after growing past its bound under load "
         "that never paused (each holds commits back briefly).",
         kCounter, static_cast<double>(c.wal_restarts));
  Single(out, "constance_batch_log_commit_failures_total",
         "Group commits that failed: their batches were not acknowledged and the agents resend "
         "them.",
         kCounter, static_cast<double>(c.failures));

  // Snapshots of the engine's state, which compact the log.
  const BatchLog::CheckpointStats k = log.checkpoint_stats();
  out->Family("constance_snapshots_total",
              "Snapshots of the engine's state taken (each compacts the batch log), by result.",
              kCounter);
  out->Sample("constance_snapshots_total", LabelSet().Add("result", "ok"),
              static_cast<double>(k.snapshots));
  out->Sample("constance_snapshots_total", LabelSet().Add("result", "failed"),
              static_cast<double>(k.failures));
  Single(out, "constance_snapshot_bytes", "Size of the latest snapshot.", kGauge,
         static_cast<double>(k.last_bytes));
  Single(out, "constance_snapshot_seconds",
         "How long the latest snapshot took, from its start to stored (ingest goes on "
         "meanwhile).",
         kGauge, k.last_seconds);
  Single(out, "constance_snapshot_write_seconds",
         "How long writing and fsyncing the latest snapshot's file took (beside the commits).",
         kGauge, k.last_write_seconds);
  Single(out, "constance_snapshot_store_seconds",
         "How long recording the latest snapshot in the batch log held commits (and so "
         "acknowledgements) back.",
         kGauge, k.last_store_seconds);
  Single(out, "constance_batch_log_compacted_batches_total",
         "Batches removed from the log because a snapshot covers them.", kCounter,
         static_cast<double>(k.compacted_batches));
}

void RenderTotals(const Snapshot& snap, TextExposition* out) {
  Single(out, "constance_locations", "Locations that have reported.", kGauge, snap.locations);
  Single(out, "constance_cells", "(location, series) cells held.", kGauge, snap.cells);
  Single(out, "constance_series", "Series held, against --max_series (retention frees them).",
         kGauge, snap.series_held);
  Single(out, "constance_delivery_marks",
         "High-water marks held (per location and spool incarnation, and per location dropped "
         "for silence).",
         kGauge, snap.streams_held);
  Single(out, "constance_series_uncompared",
         "Series that no peer group can compare: fewer than the catalog's min_group locations "
         "hold the key, even chain-wide.",
         kGauge, snap.uncompared_series);
  Single(out, "constance_statistics_computed_timestamp_seconds",
         "When the published statistics were computed.", kGauge, Seconds(snap.computed_at));
}

void RenderLocations(const Snapshot& snap, TextExposition* out) {
  // Per location: delivery and the agent's own health from its heartbeats.
  const std::vector<LocationState>& states = snap.location_states;
  LabelTable where(states.size(), 32);
  for (const LocationState& s : states) {
    where.StartRow();
    where.Add("location", s.location);
  }
  const auto per_location = [&](absl::string_view name, absl::string_view help,
                                absl::string_view type, auto&& value) {
    out->Family(name, help, type);
    for (size_t i = 0; i < states.size(); ++i) {
      if (std::optional<double> v = value(states[i]); v.has_value()) {
        out->Sample(name, where.Row(i), *v);
      }
    }
  };
  const auto heard = [](const LocationState& s) {
    return s.health.heartbeat_at != absl::InfinitePast();
  };
  using Value = std::optional<double>;
  per_location("constance_agent_certificate_expiry_timestamp_seconds",
               "When the agent's client certificate expires, as its last heartbeat reported "
               "(absent without TLS).",
               kGauge, [](const LocationState& s) -> Value {
                 if (s.health.certificate_not_after == absl::InfinitePast()) return std::nullopt;
                 return Seconds(s.health.certificate_not_after);
               });
  per_location("constance_agent_last_heartbeat_timestamp_seconds",
               "When the agent's last heartbeat arrived.", kGauge,
               [&](const LocationState& s) -> Value {
                 if (!heard(s)) return std::nullopt;
                 return Seconds(s.health.heartbeat_at);
               });
  per_location("constance_location_last_report_timestamp_seconds",
               "When the location's last batch arrived.", kGauge,
               [](const LocationState& s) -> Value {
                 if (s.last_report == absl::InfinitePast()) return std::nullopt;
                 return Seconds(s.last_report);
               });
  per_location("constance_location_watermark",
               "The current incarnation's watermark: every sequence at or below it is settled.", kGauge,
               [](const LocationState& s) -> Value {
                 if (s.last_report == absl::InfinitePast()) return std::nullopt;
                 return static_cast<double>(s.watermark);
               });
  per_location("constance_agent_spool_depth",
               "Observations not yet acknowledged, as the agent's last heartbeat reported.", kGauge,
               [&](const LocationState& s) -> Value {
                 if (!heard(s)) return std::nullopt;
                 return static_cast<double>(s.health.spool_depth);
               });
  per_location("constance_agent_oldest_unacknowledged_seconds",
               "Age of the agent's oldest unacknowledged observation, as its last heartbeat "
               "reported.",
               kGauge, [&](const LocationState& s) -> Value {
                 if (!heard(s)) return std::nullopt;
                 return s.health.oldest_unacknowledged_seconds;
               });
  per_location("constance_agent_spool_bytes",
               "Serialized bytes of the agent's unacknowledged observations, as its last "
               "heartbeat reported.",
               kGauge, [&](const LocationState& s) -> Value {
                 if (!heard(s)) return std::nullopt;
                 return static_cast<double>(s.health.spool_bytes);
               });
  per_location("constance_agent_spool_dropped_total",
               "Observations the agent's full spool deleted unacknowledged since the agent "
               "started (spool_when_full: drop_oldest), as its last heartbeat reported: data lost "
               "at the store.",
               kCounter, [&](const LocationState& s) -> Value {
                 if (!heard(s)) return std::nullopt;
                 return static_cast<double>(s.health.spool_dropped);
               });
  out->Family("constance_agent_info",
              "The agent's version, as its last heartbeat reported; always 1.", kGauge);
  for (size_t i = 0; i < states.size(); ++i) {
    if (heard(states[i])) {
      out->Sample("constance_agent_info", where.Row(i), "version", states[i].health.version, 1);
    }
  }
}

}  // namespace

double MergeReference(const SeriesKey& key, const Catalog* catalog) {
  if (catalog == nullptr) return key.family == v1::FAMILY_COMPLIANCE ? 1 : 0;
  switch (key.family) {
    case v1::FAMILY_PRICE: {
      const v1::PriceKind kind = key.kind == v1::PRICE_KIND_UNSPECIFIED ? v1::SHELF : key.kind;
      const PricePromise* zone = nullptr;
      for (const PricePromise* p : catalog->PricePromisesOf(key.key, key.currency, kind)) {
        if (p->where.empty()) return static_cast<double>(p->list_minor_units);
        if (zone == nullptr) zone = p;
      }
      return zone != nullptr ? static_cast<double>(zone->list_minor_units) : 0;
    }
    case v1::FAMILY_WAIT:
      for (const WaitPromise& p : catalog->wait_promises) {
        if (p.key == key.key) return p.within_seconds;
      }
      return 0;
    case v1::FAMILY_COMPLIANCE:
      for (const CheckPromise& p : catalog->check_promises) {
        if (p.key == key.key) return p.min_pass_rate;
      }
      return 1;
    default:
      return 0;
  }
}

WaitBuckets::WaitBuckets(double relative_accuracy) {
  // The fewest buckets per decade whose ratio stays within 1 + accuracy
  // once the bounds are rounded to 9 significant digits.
  const double a = relative_accuracy > 0 ? relative_accuracy : 0.01;
  per_decade_ = static_cast<int>(std::ceil(std::log(10.0) / std::log1p(a)));
  while (std::pow(10.0, 1.0 / per_decade_) * (1 + 2e-9) > 1 + a) ++per_decade_;
  lowest_ = static_cast<int>(std::floor(per_decade_ * std::log10(kLowestSeconds)));
  highest_ = static_cast<int>(std::ceil(per_decade_ * std::log10(kHighestSeconds)));
  bounds_.reserve(highest_ - lowest_ + 1);
  for (int i = lowest_; i <= highest_; ++i) {
    // Rounded through decimal so that the `le` label reads the same on
    // every shard even if two libm builds differ in the last bit of pow.
    const std::string decimal =
        absl::StrFormat("%.9g", std::pow(10.0, static_cast<double>(i) / per_decade_));
    bounds_.push_back(std::strtod(decimal.c_str(), nullptr));
  }
}

int WaitBuckets::Index(double seconds) const {
  if (!(seconds > bounds_.front())) return lowest_;
  if (seconds > bounds_.back()) return highest_ + 1;
  int i = static_cast<int>(std::ceil(per_decade_ * std::log10(seconds)));
  i = std::clamp(i, lowest_, highest_);
  while (i > lowest_ && seconds <= Bound(i - 1)) --i;
  while (i < highest_ && seconds > Bound(i)) ++i;
  return i;
}

std::string CollectorMetrics::Render() const {
  std::string text;
  TextExposition out(&text);
  RenderTo(&out);
  out.Finish();
  return text;
}

void CollectorMetrics::Render(const TextExposition::Sink& sink, size_t chunk_bytes) const {
  TextExposition out(sink, chunk_bytes);
  RenderTo(&out);
  out.Finish();
}

void CollectorMetrics::RenderTo(TextExposition* out) const {
  std::shared_ptr<const Snapshot> snap = engine_->snapshot();
  RenderIngest(*snap, out);
  if (const BatchLog* log = ingest_->log(); log != nullptr) RenderBatchLog(*log, out);
  Single(out, "constance_batches_throttled_total",
         "Batches answered THROTTLED (not applied; the agent retries).", kCounter,
         static_cast<double>(ingest_->batches_throttled()));
  RenderTotals(*snap, out);
  RenderLocations(*snap, out);
  RenderSeries(*snap, out);
  RenderFindings(*snap, silences_, out);
  RenderMergeable(*snap, out);
}

void CollectorMetrics::RenderIngest(const Snapshot& snap, TextExposition* out) const {
  Single(out, "constance_observations_applied_total", "Observations applied to cells.", kCounter,
         snap.observations_applied);
  out->Family("constance_observations_rejected_total",
              "Observations rejected for good, by the field that failed validation.", kCounter);
  for (const auto& [reason, n] : snap.rejected_by_reason) {
    out->Sample("constance_observations_rejected_total", LabelSet().Add("reason", reason), n);
  }
  Single(out, "constance_observations_duplicate_total",
         "Observations dropped because an earlier batch delivered them already.", kCounter,
         snap.observations_duplicate);
  Single(out, "constance_observations_dropped_total",
         "Observations agents declared deleted unsent (a full spool with "
         "spool_when_full: drop_oldest), stepped over; since the collector started.",
         kCounter, snap.observations_dropped);
  Single(out, "constance_batches_out_of_order_total",
         "Batches refused because they started past the next expected sequence (a gap); "
         "nothing of them applied; since the collector started.",
         kCounter, snap.batches_out_of_order);
  Single(out, "constance_batches_total", "Batches received from agents.", kCounter, snap.batches);
  Single(out, "constance_agent_streams", "Agent streams open now.", kGauge,
         static_cast<double>(ingest_->streams_open()));
  Single(out, "constance_agent_streams_refused_total",
         "Agent streams ended for a protocol violation.", kCounter,
         static_cast<double>(ingest_->streams_refused()));

  if (const RefusalCounter* counter = ingest_->refusals(); counter != nullptr) {
    out->Family("constance_refusals_total",
                "Agent streams and queries refused, by reason (location_mismatch, not_a_location, "
                "not_an_operator, max_streams, max_locations, unknown_location, invalid_message).",
                kCounter);
    for (const auto& [reason, n] : counter->Counts()) {
      out->Sample("constance_refusals_total", LabelSet().Add("reason", reason),
                  static_cast<double>(n));
    }
  }
}

std::vector<MergeableSeries> Mergeable(const Snapshot& snap) {
  const Catalog* catalog = snap.catalog.get();
  std::vector<MergeableSeries> series;
  absl::flat_hash_map<KeyRef, size_t> index;
  for (const auto& s : snap.series) {
    if (s->own.n == 0) continue;
    auto [it, added] = index.try_emplace(KeyRef{&s->key}, series.size());
    if (added) {
      MergeableSeries fresh;
      fresh.key = &s->key;
      fresh.reference = MergeReference(s->key, catalog);
      series.push_back(std::move(fresh));
    }
    MergeableSeries& sums = series[it->second];
    sums.groups.push_back(s.get());
    const double n = static_cast<double>(s->own.n);
    const double d = s->own.mean - sums.reference;
    sums.n += s->own.n;
    sums.s1 += n * d;
    sums.s2 += n * (s->own.stddev * s->own.stddev + d * d);
  }
  return series;
}

void CollectorMetrics::RenderMergeable(const Snapshot& snap, TextExposition* out) const {
  const Catalog* catalog = snap.catalog.get();
  using Sums = MergeableSeries;
  const std::vector<Sums> series = Mergeable(snap);
  LabelTable labels;  // Row i: series[i]'s.
  for (const Sums& s : series) {
    labels.StartRow();
    AddMergeLabels(*s.key, &labels);
  }

  const auto each = [&](absl::string_view name, absl::string_view help, auto&& value) {
    out->Family(name, help, kGauge);
    for (size_t i = 0; i < series.size(); ++i) out->Sample(name, labels.Row(i), value(series[i]));
  };
  each("constance_series_mergeable_locations",
       "Locations with a comparable value in the series on this collector (all its groups): the "
       "n that shards add up (deploy/prometheus/sharding_rules.yml).",
       [](const Sums& s) { return static_cast<double>(s.n); });
  each("constance_series_mergeable_reference",
       "The series' reference value r, the same on every shard (from the catalog's promise, else "
       "0): the sums of deviations are taken from it so they do not cancel.",
       [](const Sums& s) { return s.reference; });
  each("constance_series_mergeable_sum_deviations",
       "Sum over this collector's locations of (value - reference).",
       [](const Sums& s) { return s.s1; });
  each("constance_series_mergeable_sum_squared_deviations",
       "Sum over this collector's locations of (value - reference)^2.",
       [](const Sums& s) { return s.s2; });

  constexpr absl::string_view kWaits = "constance_series_mergeable_wait_seconds";
  out->Family(kWaits,
              "The locations' comparable waits (one per location) in cumulative buckets whose "
              "bounds are the same on every shard (10^(i/k), k per decade from the catalog's wait "
              "accuracy), for chain-wide quantiles by histogram_quantile.",
              "histogram");
  const WaitBuckets buckets(catalog != nullptr ? catalog->wait_sketch.relative_accuracy : 0.01);
  // The `le` values, formatted once per render.
  std::vector<std::string> le(buckets.highest() - buckets.lowest() + 1);
  for (int i = buckets.lowest(); i <= buckets.highest(); ++i) {
    TextExposition::AppendValue(&le[i - buckets.lowest()], buckets.Bound(i));
  }
  const std::string bucket = absl::StrCat(kWaits, "_bucket");
  const std::string sum_name = absl::StrCat(kWaits, "_sum");
  const std::string count_name = absl::StrCat(kWaits, "_count");
  for (size_t s = 0; s < series.size(); ++s) {
    const Sums& sums = series[s];
    if (sums.key->family != v1::FAMILY_WAIT) continue;
    std::map<int, uint64_t> counts;  // By bucket index.
    uint64_t count = 0;
    double sum = 0;
    for (const SeriesStats* group : sums.groups) {
      for (double v : group->wait_values) {
        ++counts[buckets.Index(v)];
        ++count;
        sum += v;
      }
    }
    if (counts.empty()) continue;
    // From one bucket below the lowest occupied one (so histogram_quantile
    // never interpolates from 0) up to the highest bound: a shard's
    // missing low buckets count 0 for it, as they should, but missing high
    // ones would undercount the sum, so every shard emits them.
    uint64_t cumulative = 0;
    auto next = counts.begin();
    for (int i = std::max(buckets.lowest(), counts.begin()->first - 1); i <= buckets.highest();
         ++i) {
      if (next != counts.end() && next->first == i) cumulative += (next++)->second;
      out->Sample(bucket, labels.Row(s), "le", le[i - buckets.lowest()],
                  static_cast<double>(cumulative));
    }
    out->Sample(bucket, labels.Row(s), "le", "+Inf", static_cast<double>(count));
    out->Sample(sum_name, labels.Row(s), sum);
    out->Sample(count_name, labels.Row(s), static_cast<double>(count));
  }
}

}  // namespace constance::collector
