#include "collector/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "collector/findings.h"
#include "constance/validate.h"

namespace constance::collector {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily Family(std::string name, std::string help, MetricType type) {
  MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

void Add(MetricFamily* f, std::vector<ClientMetric::Label> labels, double value) {
  ClientMetric m;
  m.label = std::move(labels);
  switch (f->type) {
    case MetricType::Counter:
      m.counter.value = value;
      break;
    default:
      m.gauge.value = value;
      break;
  }
  f->metric.push_back(std::move(m));
}

std::vector<ClientMetric::Label> SeriesLabels(const SeriesStats& s) {
  std::string kind =
      s.key.family == v1::FAMILY_PRICE ? absl::AsciiStrToLower(v1::PriceKind_Name(s.key.kind)) : "";
  return {{"family", std::string(FamilyName(s.key.family))},
          {"key", s.key.key},
          {"currency", s.key.currency},
          {"price_kind", kind},
          {"group", s.group}};
}

double Seconds(absl::Time t) { return absl::ToDoubleSeconds(t - absl::UnixEpoch()); }

std::string Lower(const std::string& s) { return absl::AsciiStrToLower(s); }

std::string Label(const v1::Finding& f, const std::string& name) {
  auto it = f.labels().find(name);
  return it == f.labels().end() ? "" : it->second;
}

// Findings, trust: the series alerts and dashboards are built on. Finding
// series exist only while a finding is active, capped so a bad day cannot
// explode Prometheus; what the cap hides is itself exported.
void CollectFindings(const Snapshot& snap, std::vector<MetricFamily>* out) {
  const FindingsView& view = *snap.findings;
  const uint64_t cap = snap.catalog != nullptr ? snap.catalog->thresholds.finding_cap : 10'000;

  MetricFamily by_kind = Family("constance_findings_active",
                                "Active findings by kind and severity.", MetricType::Gauge);
  std::map<std::pair<std::string, std::string>, uint64_t> counts;
  for (const v1::Finding& f : view.active) {
    ++counts[{KindName(f.kind()), Lower(v1::Severity_Name(f.severity()))}];
  }
  for (const auto& [k, n] : counts) {
    Add(&by_kind, {{"finding", k.first}, {"severity", k.second}}, static_cast<double>(n));
  }
  out->push_back(std::move(by_kind));

  MetricFamily finding =
      Family("constance_finding",
             "1 per active finding (most severe first, up to the catalog's finding_cap).",
             MetricType::Gauge);
  MetricFamily value =
      Family("constance_finding_value", "The finding's value in the family's unit (first reason).",
             MetricType::Gauge);
  MetricFamily expected =
      Family("constance_finding_expected",
             "What the value was expected to be (median, list price, ...).", MetricType::Gauge);
  MetricFamily started = Family("constance_finding_started_timestamp_seconds",
                                "When the finding's condition was first met.", MetricType::Gauge);
  uint64_t exported = 0;
  for (const v1::Finding& f : view.active) {
    if (exported >= cap) break;
    ++exported;
    std::string price_kind;
    if (f.series().family() == v1::FAMILY_PRICE) {
      price_kind = Lower(v1::PriceKind_Name(f.series().kind()));
    }
    std::vector<ClientMetric::Label> labels = {
        {"finding", KindName(f.kind())},
        {"severity", Lower(v1::Severity_Name(f.severity()))},
        {"audience", f.audience()},
        {"location", f.location()},
        {"region", Label(f, "region")},
        {"family", f.has_series() ? std::string(FamilyName(f.series().family())) : ""},
        {"key", f.series().key()},
        {"currency", f.series().currency()},
        {"price_kind", price_kind},
        {"group", f.group()},
        {"id", f.id()},
    };
    Add(&finding, labels, 1);
    if (f.reasons_size() > 0) {
      Add(&value, labels, f.reasons(0).value());
      Add(&expected, labels, f.reasons(0).expected());
    }
    Add(&started, labels,
        static_cast<double>(f.started_at().seconds()) + f.started_at().nanos() / 1e9);
  }
  out->push_back(std::move(finding));
  out->push_back(std::move(value));
  out->push_back(std::move(expected));
  out->push_back(std::move(started));

  MetricFamily suppressed =
      Family("constance_findings_suppressed",
             "Active findings not exported because of the finding cap (alert when above 0).",
             MetricType::Gauge);
  Add(&suppressed, {}, static_cast<double>(view.active.size() - exported));
  out->push_back(std::move(suppressed));

  MetricFamily evaluated = Family("constance_findings_evaluated_timestamp_seconds",
                                  "When findings were last evaluated.", MetricType::Gauge);
  if (view.evaluated_at != absl::InfinitePast()) Add(&evaluated, {}, Seconds(view.evaluated_at));
  out->push_back(std::move(evaluated));

  MetricFamily balance = Family("constance_trust_balance",
                                "Trust balance: decayed deposits for promises kept minus "
                                "withdrawals for breaches and outliers.",
                                MetricType::Gauge);
  MetricFamily score =
      Family("constance_trust_score", "Trust score 0..100: the share of decayed deposits.",
             MetricType::Gauge);
  for (const auto& t : view.trust) {
    Add(&balance, {{"location", t.location}}, t.balance);
    Add(&score, {{"location", t.location}}, t.score);
  }
  out->push_back(std::move(balance));
  out->push_back(std::move(score));
}

// Labels of a series without its group: the mergeable statistics are per
// series, summed over its peer groups.
std::vector<ClientMetric::Label> MergeLabels(const SeriesKey& key) {
  std::string kind =
      key.family == v1::FAMILY_PRICE ? absl::AsciiStrToLower(v1::PriceKind_Name(key.kind)) : "";
  return {{"family", std::string(FamilyName(key.family))},
          {"key", key.key},
          {"currency", key.currency},
          {"price_kind", kind}};
}

}  // namespace

double MergeReference(const SeriesKey& key, const Catalog* catalog) {
  if (catalog == nullptr) return key.family == v1::FAMILY_COMPLIANCE ? 1 : 0;
  switch (key.family) {
    case v1::FAMILY_PRICE: {
      const v1::PriceKind kind = key.kind == v1::PRICE_KIND_UNSPECIFIED ? v1::SHELF : key.kind;
      const PricePromise* zone = nullptr;
      for (const PricePromise& p : catalog->price_promises) {
        if (p.key != key.key || p.currency != key.currency || p.kind != kind) continue;
        if (p.where.empty()) return static_cast<double>(p.list_minor_units);
        if (zone == nullptr) zone = &p;
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

std::vector<MetricFamily> CollectorMetrics::Collect() const {
  std::shared_ptr<const Snapshot> snap = engine_->snapshot();
  std::vector<MetricFamily> out;

  MetricFamily applied = Family("constance_observations_applied_total",
                                "Observations applied to cells.", MetricType::Counter);
  Add(&applied, {}, snap->observations_applied);
  out.push_back(std::move(applied));

  MetricFamily rejected = Family(
      "constance_observations_rejected_total",
      "Observations rejected for good, by the field that failed validation.", MetricType::Counter);
  for (const auto& [reason, n] : snap->rejected_by_reason) Add(&rejected, {{"reason", reason}}, n);
  out.push_back(std::move(rejected));

  MetricFamily duplicates = Family(
      "constance_observations_duplicate_total",
      "Observations dropped because an earlier batch delivered them already.", MetricType::Counter);
  Add(&duplicates, {}, snap->observations_duplicate);
  out.push_back(std::move(duplicates));

  MetricFamily batches =
      Family("constance_batches_total", "Batches received from agents.", MetricType::Counter);
  Add(&batches, {}, snap->batches);
  out.push_back(std::move(batches));

  MetricFamily streams =
      Family("constance_agent_streams", "Agent streams open now.", MetricType::Gauge);
  Add(&streams, {}, static_cast<double>(ingest_->streams_open()));
  out.push_back(std::move(streams));

  MetricFamily refused =
      Family("constance_agent_streams_refused_total",
             "Agent streams ended for a protocol violation.", MetricType::Counter);
  Add(&refused, {}, static_cast<double>(ingest_->streams_refused()));
  out.push_back(std::move(refused));

  if (const RefusalCounter* counter = ingest_->refusals(); counter != nullptr) {
    MetricFamily refusals =
        Family("constance_refusals_total",
               "Agent streams and queries refused, by reason (location_mismatch, not_a_location, "
               "not_an_operator, max_streams, max_locations, unknown_location, invalid_message).",
               MetricType::Counter);
    for (const auto& [reason, n] : counter->Counts()) {
      Add(&refusals, {{"reason", reason}}, static_cast<double>(n));
    }
    out.push_back(std::move(refusals));
  }

  if (const BatchLog* log = ingest_->log(); log != nullptr) {
    // The durable log's group commits: agents are acknowledged after them.
    const BatchLog::CommitStats c = log->commit_stats();
    MetricFamily latency = Family("constance_batch_log_commit_seconds",
                                  "Latency of the durable batch log's group commits (one fsync "
                                  "each); a batch is acknowledged only after its commit.",
                                  MetricType::Histogram);
    ClientMetric m;
    m.histogram.sample_count = c.commits;
    m.histogram.sample_sum = c.latency_sum_seconds;
    const std::vector<double>& bounds = BatchLog::CommitLatencyBounds();
    uint64_t cumulative = 0;
    for (size_t i = 0; i < c.latency_buckets.size(); ++i) {
      cumulative += c.latency_buckets[i];
      m.histogram.bucket.push_back(
          {cumulative, i < bounds.size() ? bounds[i] : std::numeric_limits<double>::infinity()});
    }
    latency.metric.push_back(std::move(m));
    out.push_back(std::move(latency));
    MetricFamily committed = Family("constance_batch_log_batches_committed_total",
                                    "Batches made durable in the batch log.", MetricType::Counter);
    Add(&committed, {}, static_cast<double>(c.batches));
    out.push_back(std::move(committed));
    MetricFamily failed = Family("constance_batch_log_commit_failures_total",
                                 "Group commits that failed: their batches were not acknowledged "
                                 "and the agents resend them.",
                                 MetricType::Counter);
    Add(&failed, {}, static_cast<double>(c.failures));
    out.push_back(std::move(failed));

    // Snapshots of the engine's state, which compact the log.
    const BatchLog::CheckpointStats k = log->checkpoint_stats();
    MetricFamily snapshots = Family("constance_snapshots_total",
                                    "Snapshots of the engine's state taken (each compacts the "
                                    "batch log), by result.",
                                    MetricType::Counter);
    Add(&snapshots, {{"result", "ok"}}, static_cast<double>(k.snapshots));
    Add(&snapshots, {{"result", "failed"}}, static_cast<double>(k.failures));
    out.push_back(std::move(snapshots));
    MetricFamily snapshot_bytes =
        Family("constance_snapshot_bytes", "Size of the latest snapshot.", MetricType::Gauge);
    Add(&snapshot_bytes, {}, static_cast<double>(k.last_bytes));
    out.push_back(std::move(snapshot_bytes));
    MetricFamily snapshot_seconds =
        Family("constance_snapshot_seconds",
               "How long the latest snapshot took (ingest waits while the state is captured).",
               MetricType::Gauge);
    Add(&snapshot_seconds, {}, k.last_seconds);
    out.push_back(std::move(snapshot_seconds));
    MetricFamily compacted =
        Family("constance_batch_log_compacted_batches_total",
               "Batches removed from the log because a snapshot covers them.", MetricType::Counter);
    Add(&compacted, {}, static_cast<double>(k.compacted_batches));
    out.push_back(std::move(compacted));
  }

  MetricFamily throttled =
      Family("constance_batches_throttled_total",
             "Batches answered THROTTLED (not applied; the agent retries).", MetricType::Counter);
  Add(&throttled, {}, static_cast<double>(ingest_->batches_throttled()));
  out.push_back(std::move(throttled));

  MetricFamily locations =
      Family("constance_locations", "Locations that have reported.", MetricType::Gauge);
  Add(&locations, {}, snap->locations);
  out.push_back(std::move(locations));

  MetricFamily cells =
      Family("constance_cells", "(location, series) cells held.", MetricType::Gauge);
  Add(&cells, {}, snap->cells);
  out.push_back(std::move(cells));

  MetricFamily computed = Family("constance_statistics_computed_timestamp_seconds",
                                 "When the published statistics were computed.", MetricType::Gauge);
  Add(&computed, {}, Seconds(snap->computed_at));
  out.push_back(std::move(computed));

  // Per location: delivery and the agent's own health from its heartbeats.
  MetricFamily last_report = Family("constance_location_last_report_timestamp_seconds",
                                    "When the location's last batch arrived.", MetricType::Gauge);
  MetricFamily watermark =
      Family("constance_location_watermark",
             "Highest sequence acknowledged to the location's agent.", MetricType::Gauge);
  MetricFamily spool = Family("constance_agent_spool_depth",
                              "Observations not yet acknowledged, as the agent's last heartbeat "
                              "reported.",
                              MetricType::Gauge);
  MetricFamily oldest = Family("constance_agent_oldest_unacknowledged_seconds",
                               "Age of the agent's oldest unacknowledged observation, as its last "
                               "heartbeat reported.",
                               MetricType::Gauge);
  MetricFamily cert = Family("constance_agent_certificate_expiry_timestamp_seconds",
                             "When the agent's client certificate expires, as its last heartbeat "
                             "reported (absent without TLS).",
                             MetricType::Gauge);
  MetricFamily heartbeat = Family("constance_agent_last_heartbeat_timestamp_seconds",
                                  "When the agent's last heartbeat arrived.", MetricType::Gauge);
  MetricFamily spool_bytes = Family("constance_agent_spool_bytes",
                                    "Serialized bytes of the agent's unacknowledged observations, "
                                    "as its last heartbeat reported.",
                                    MetricType::Gauge);
  MetricFamily dropped = Family("constance_agent_spool_dropped_total",
                                "Observations the agent's full spool deleted unacknowledged since "
                                "the agent started (spool_when_full: drop_oldest), as its last "
                                "heartbeat reported: data lost at the store.",
                                MetricType::Counter);
  MetricFamily info =
      Family("constance_agent_info",
             "The agent's version, as its last heartbeat reported; always 1.", MetricType::Gauge);
  for (const LocationState& s : snap->location_states) {
    if (s.health.certificate_not_after != absl::InfinitePast()) {
      Add(&cert, {{"location", s.location}}, Seconds(s.health.certificate_not_after));
    }
    if (s.health.heartbeat_at != absl::InfinitePast()) {
      Add(&heartbeat, {{"location", s.location}}, Seconds(s.health.heartbeat_at));
    }
    if (s.last_report != absl::InfinitePast()) {
      Add(&last_report, {{"location", s.location}}, Seconds(s.last_report));
      Add(&watermark, {{"location", s.location}}, static_cast<double>(s.watermark));
    }
    if (s.health.heartbeat_at != absl::InfinitePast()) {
      Add(&spool, {{"location", s.location}}, static_cast<double>(s.health.spool_depth));
      Add(&oldest, {{"location", s.location}}, s.health.oldest_unacknowledged_seconds);
      Add(&spool_bytes, {{"location", s.location}}, static_cast<double>(s.health.spool_bytes));
      Add(&dropped, {{"location", s.location}}, static_cast<double>(s.health.spool_dropped));
      Add(&info, {{"location", s.location}, {"version", s.health.version}}, 1);
    }
  }
  out.push_back(std::move(cert));
  out.push_back(std::move(heartbeat));
  out.push_back(std::move(last_report));
  out.push_back(std::move(watermark));
  out.push_back(std::move(spool));
  out.push_back(std::move(oldest));
  out.push_back(std::move(spool_bytes));
  out.push_back(std::move(dropped));
  out.push_back(std::move(info));

  // Per series and group: the statistics operators chart and alert on.
  struct Stat {
    const char* name;
    const char* help;
    double (*get)(const SeriesStats&);
  };
  static const Stat kStats[] = {
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
      {"constance_series_levels",
       "Consistent price levels in the group (1 = one price everywhere).",
       [](const SeriesStats& s) {
         if (s.key.family != v1::FAMILY_PRICE) return 0.0;
         return (s.main_level.members.empty() ? 0.0 : 1.0) + s.other_levels.size();
       }},
  };
  std::vector<MetricFamily> stats;
  for (const Stat& stat : kStats) stats.push_back(Family(stat.name, stat.help, MetricType::Gauge));
  MetricFamily outliers = Family("constance_outlier",
                                 "1 for each location outside its group's band now, with the "
                                 "direction of its deviation.",
                                 MetricType::Gauge);
  MetricFamily outlier_value =
      Family("constance_outlier_value", "The outlier location's value, in the family's unit.",
             MetricType::Gauge);
  for (const auto& s : snap->series) {
    std::vector<ClientMetric::Label> labels = SeriesLabels(*s);
    for (size_t i = 0; i < std::size(kStats); ++i) Add(&stats[i], labels, kStats[i].get(*s));
    for (size_t i = 0; i < s->outliers.size(); ++i) {
      std::vector<ClientMetric::Label> l = labels;
      l.push_back({"location", s->outlier_locations[i]});
      l.push_back({"direction", s->outliers[i].direction == v1::ABOVE ? "above" : "below"});
      Add(&outliers, l, 1);
      Add(&outlier_value, l, s->outliers[i].value);
    }
  }
  for (MetricFamily& f : stats) out.push_back(std::move(f));
  out.push_back(std::move(outliers));
  out.push_back(std::move(outlier_value));
  CollectFindings(*snap, &out);
  CollectMergeable(*snap, &out);
  return out;
}

void CollectorMetrics::CollectMergeable(const Snapshot& snap,
                                        std::vector<MetricFamily>* out) const {
  const Catalog* catalog = snap.catalog.get();
  // Per series, summed over its groups (which partition its locations):
  // n_g locations with mean m_g and population stddev s_g contribute
  // n_g * (m_g - r) and n_g * (s_g^2 + (m_g - r)^2).
  struct Sums {
    SeriesKey key;
    double reference = 0;
    uint64_t n = 0;
    double s1 = 0;
    double s2 = 0;
    std::vector<const SeriesStats*> groups;  // Owned by the snapshot.
  };
  std::vector<Sums> series;
  absl::flat_hash_map<SeriesKey, size_t> index;
  for (const auto& s : snap.series) {
    if (s->summary.n == 0) continue;
    auto [it, added] = index.try_emplace(s->key, series.size());
    if (added) {
      Sums fresh;
      fresh.key = s->key;
      fresh.reference = MergeReference(s->key, catalog);
      series.push_back(std::move(fresh));
    }
    Sums& sums = series[it->second];
    sums.groups.push_back(s.get());
    const double n = static_cast<double>(s->summary.n);
    const double d = s->summary.mean - sums.reference;
    sums.n += s->summary.n;
    sums.s1 += n * d;
    sums.s2 += n * (s->summary.stddev * s->summary.stddev + d * d);
  }

  MetricFamily locations = Family(
      "constance_series_mergeable_locations",
      "Locations with a comparable value in the series on this collector (all its groups): the "
      "n that shards add up (deploy/prometheus/sharding_rules.yml).",
      MetricType::Gauge);
  MetricFamily reference = Family(
      "constance_series_mergeable_reference",
      "The series' reference value r, the same on every shard (from the catalog's promise, else "
      "0): the sums of deviations are taken from it so they do not cancel.",
      MetricType::Gauge);
  MetricFamily s1 =
      Family("constance_series_mergeable_sum_deviations",
             "Sum over this collector's locations of (value - reference).", MetricType::Gauge);
  MetricFamily s2 =
      Family("constance_series_mergeable_sum_squared_deviations",
             "Sum over this collector's locations of (value - reference)^2.", MetricType::Gauge);
  MetricFamily waits = Family(
      "constance_series_mergeable_wait_seconds",
      "The locations' comparable waits (one per location) in cumulative buckets whose bounds are "
      "the same on every shard (10^(i/k), k per decade from the catalog's wait accuracy), for "
      "chain-wide quantiles by histogram_quantile.",
      MetricType::Histogram);
  const WaitBuckets buckets(catalog != nullptr ? catalog->wait_sketch.relative_accuracy : 0.01);
  for (const Sums& sums : series) {
    std::vector<ClientMetric::Label> labels = MergeLabels(sums.key);
    Add(&locations, labels, static_cast<double>(sums.n));
    Add(&reference, labels, sums.reference);
    Add(&s1, labels, sums.s1);
    Add(&s2, labels, sums.s2);
    if (sums.key.family != v1::FAMILY_WAIT) continue;
    std::map<int, uint64_t> counts;  // By bucket index.
    ClientMetric m;
    m.label = labels;
    for (const SeriesStats* group : sums.groups) {
      for (double v : group->wait_values) {
        ++counts[buckets.Index(v)];
        ++m.histogram.sample_count;
        m.histogram.sample_sum += v;
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
      m.histogram.bucket.push_back({cumulative, buckets.Bound(i)});
    }
    m.histogram.bucket.push_back(
        {m.histogram.sample_count, std::numeric_limits<double>::infinity()});
    waits.metric.push_back(std::move(m));
  }
  out->push_back(std::move(locations));
  out->push_back(std::move(reference));
  out->push_back(std::move(s1));
  out->push_back(std::move(s2));
  out->push_back(std::move(waits));
}

}  // namespace constance::collector
