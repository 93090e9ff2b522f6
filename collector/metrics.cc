#include "collector/metrics.h"

#include <string>
#include <utility>

#include "absl/strings/ascii.h"
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
          {"kind", kind},
          {"group", s.group}};
}

double Seconds(absl::Time t) { return absl::ToDoubleSeconds(t - absl::UnixEpoch()); }

}  // namespace

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
  for (const LocationState& s : snap->location_states) {
    if (s.last_report != absl::InfinitePast()) {
      Add(&last_report, {{"location", s.location}}, Seconds(s.last_report));
      Add(&watermark, {{"location", s.location}}, static_cast<double>(s.watermark));
    }
    if (s.health.heartbeat_at != absl::InfinitePast()) {
      Add(&spool, {{"location", s.location}}, static_cast<double>(s.health.spool_depth));
      Add(&oldest, {{"location", s.location}}, s.health.oldest_unacknowledged_seconds);
    }
  }
  out.push_back(std::move(last_report));
  out.push_back(std::move(watermark));
  out.push_back(std::move(spool));
  out.push_back(std::move(oldest));

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
      {"constance_series_outliers", "Outlier locations in the series now.",
       [](const SeriesStats& s) { return static_cast<double>(s.outliers.size()); }},
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
  return out;
}

}  // namespace constance::collector
