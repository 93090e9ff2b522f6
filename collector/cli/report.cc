#include "collector/cli/report.h"

#include <csv.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "collector/cli/shards.h"
#include "constance/format.h"
#include "constance/validate.h"
#include "google/protobuf/util/json_util.h"

namespace constance::cli {
namespace {

// A plain-text table: columns sized to their widest cell, numbers and text
// both left-aligned so the report reads in a terminal and in a log.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string Render() const {
    std::vector<size_t> width;
    for (const auto& row : rows_) {
      if (width.size() < row.size()) width.resize(row.size(), 0);
      for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
    }
    std::string out;
    for (const auto& row : rows_) {
      std::string line;
      for (size_t i = 0; i < row.size(); ++i) {
        absl::StrAppend(&line, row[i]);
        if (i + 1 < row.size()) line.append(width[i] - row[i].size() + 2, ' ');
      }
      absl::StrAppend(&out, "  ", line, "\n");
    }
    return out;
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

std::string KindName(v1::PriceKind kind) {
  if (kind == v1::PRICE_KIND_UNSPECIFIED) return "shelf";
  return absl::AsciiStrToLower(v1::PriceKind_Name(kind));
}

std::string Timestamp(const google::protobuf::Timestamp& ts) {
  absl::Time t = absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

// A trust balance (days of promises kept or broken): three significant
// digits, so a few minutes' worth is not printed as 0.0.
std::string Balance(double balance) {
  if (std::fabs(balance) < 0.0005) return "0";
  return std::fabs(balance) >= 100 ? absl::StrFormat("%.0f", balance)
                                   : absl::StrFormat("%.3g", balance);
}

std::string Meaning(const v1::Outlier& o) {
  return DeviationMeaning(o.series().family(), o.direction() == v1::ABOVE);
}

std::string SignedPercent(const v1::Outlier& o) {
  double pct = 100.0 * o.magnitude();
  return absl::StrFormat("%s%.1f%%", o.direction() == v1::BELOW ? "-" : "+", pct);
}

std::string Band(const v1::SeriesId& s, double low, double high) {
  return absl::StrCat("[", FormatValue(s, low), " .. ", FormatValue(s, high), "]");
}

// The findings and the least trusted locations, after the statistics.
void AppendFindingsAndTrust(const v1::ChainSummaryResponse& s, std::string* out) {
  absl::StrAppend(out, "\nFindings (", s.findings_size() + s.findings_omitted(), "):\n",
                  RenderFindings(s.findings()), MoreLine(s.findings_omitted(), "findings"));
  if (s.trust_size() == 0) return;
  const int shown = std::min(s.trust_size(), 5);
  absl::StrAppend(out, "\nLeast trusted locations (", shown, " of ",
                  s.trust_size() + s.trust_omitted(), "):\n");
  Table trust({"LOCATION", "SCORE", "BALANCE"});
  for (int i = 0; i < shown; ++i) {
    trust.Add({s.trust(i).location(), absl::StrFormat("%.1f", s.trust(i).score()),
               Balance(s.trust(i).balance())});
  }
  absl::StrAppend(out, trust.Render());
}

}  // namespace

std::string MoreLine(uint64_t omitted, absl::string_view what) {
  if (omitted == 0) return "";
  return absl::StrCat("... ", omitted, " more ", what,
                      " not sent by the collector (--limit, --json for scripts)\n");
}

std::string ToJson(const google::protobuf::Message& message, bool pretty) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = pretty;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

std::string FormatValue(const v1::SeriesId& series, double value) {
  return constance::FormatValue(series.family(), series.currency(), value);
}

std::string FormatSeries(const v1::SeriesId& series) {
  std::string out = absl::StrCat(FamilyName(series.family()), " ", series.key());
  if (series.family() == v1::FAMILY_PRICE) {
    absl::StrAppend(&out, " ", series.currency(), "/", KindName(series.kind()));
  }
  return out;
}

std::string RenderChainSummary(const v1::ChainSummaryResponse& s, int max_series) {
  std::string out = absl::StrCat("constance chain report, computed ", Timestamp(s.computed_at()),
                                 "\n  locations ", s.locations(), ", cells ", s.cells(),
                                 ", observations applied ", s.observations_applied(), ", rejected ",
                                 s.observations_rejected(), "\n\n");

  int shown = s.series_size();
  if (max_series > 0) shown = std::min(shown, max_series);
  absl::StrAppend(&out, "Series by dispersion (", shown, " of ",
                  s.series_size() + s.series_omitted(), "):\n");
  // One row per (series, peer group): a key in four price zones has four
  // rows, told apart by the group.
  Table series({"SERIES", "GROUP", "N", "MEDIAN", "MAD", "MEAN", "STDDEV", "CV", "MIN", "MAX"});
  for (int i = 0; i < shown; ++i) {
    const v1::GroupStats& g = s.series(i);
    const v1::SeriesId& id = g.series();
    series.Add({FormatSeries(id), g.group().empty() ? "chain" : g.group(), absl::StrCat(g.n()),
                FormatValue(id, g.median()), FormatValue(id, g.mad()), FormatValue(id, g.mean()),
                FormatValue(id, g.stddev()), absl::StrFormat("%.3f", g.cv()),
                FormatValue(id, g.min()), FormatValue(id, g.max())});
  }
  absl::StrAppend(&out, series.Render(), "\n");
  if (shown == s.series_size()) {
    absl::StrAppend(&out, MoreLine(s.series_omitted(), "series"));
  }
  if (s.uncompared_series() > 0) {
    absl::StrAppend(&out, "Not compared: ", s.uncompared_series(),
                    " series held by too few locations for any peer group (catalog min_group)\n\n");
  }

  std::vector<std::string> locations;
  for (const auto& o : s.outliers()) locations.push_back(o.location());
  std::sort(locations.begin(), locations.end());
  locations.erase(std::unique(locations.begin(), locations.end()), locations.end());
  if (s.outliers_size() == 0) {
    absl::StrAppend(&out, "Outlier locations: none\n");
    AppendFindingsAndTrust(s, &out);
    return out;
  }
  absl::StrAppend(&out, "Outlier locations (", locations.size(),
                  "): ", absl::StrJoin(locations, ", "), "\n");
  Table outliers({"LOCATION", "SERIES", "VALUE", "EXPECTED", "BAND", "DEVIATION", "Z", "GROUP"});
  for (const auto& o : s.outliers()) {
    outliers.Add({o.location(), FormatSeries(o.series()), FormatValue(o.series(), o.value()),
                  FormatValue(o.series(), o.expected()),
                  Band(o.series(), o.band_low(), o.band_high()),
                  absl::StrCat(SignedPercent(o), " ", Meaning(o)), absl::StrFormat("%.1f", o.z()),
                  absl::StrCat(o.group(), " (", o.group_size(), ")")});
  }
  absl::StrAppend(&out, outliers.Render(), MoreLine(s.outliers_omitted(), "outliers"));
  AppendFindingsAndTrust(s, &out);
  return out;
}

std::string RenderChainWide(const v1::ChainSummaryResponse& merged) {
  std::string out = "\nChain-wide series (all shards, exact):\n";
  if (merged.mergeable().empty()) {
    return absl::StrCat(out, "  none\n", MoreLine(merged.mergeable_omitted(), "series"));
  }
  Table table({"SERIES", "LOCATIONS", "MEAN", "STDDEV"});
  for (const v1::MergeableSums& m : merged.mergeable()) {
    const ChainWide c = FromSums(m);
    table.Add({FormatSeries(m.series()), absl::StrCat(c.n), FormatValue(m.series(), c.mean),
               FormatValue(m.series(), c.stddev)});
  }
  return absl::StrCat(out, table.Render(), MoreLine(merged.mergeable_omitted(), "series"));
}

std::string RenderKeyDetail(const v1::KeyDetailResponse& d) {
  std::string out;
  // Older collectors answer with one group in the top-level fields.
  google::protobuf::RepeatedPtrField<v1::GroupDetail> groups = d.groups();
  if (groups.empty()) {
    v1::GroupDetail* g = groups.Add();
    *g->mutable_stats() = d.stats();
    *g->mutable_values() = d.values();
    *g->mutable_outliers() = d.outliers();
  }
  for (const v1::GroupDetail& group : groups) {
    const v1::GroupStats& g = group.stats();
    const v1::SeriesId& id = g.series();
    absl::StrAppend(&out, FormatSeries(id), " across ", g.n(), " locations (group ", g.group(),
                    ")\n  median ", FormatValue(id, g.median()), ", MAD ", FormatValue(id, g.mad()),
                    ", band ", Band(id, g.band_low(), g.band_high()));
    if (g.levels_size() > 1) {
      std::vector<std::string> levels;
      for (const v1::Level& l : g.levels()) {
        levels.push_back(absl::StrCat(l.locations(), " at ", FormatValue(id, l.value())));
      }
      absl::StrAppend(&out, ", levels: ", absl::StrJoin(levels, ", "));
    }
    absl::StrAppend(&out, "\n\n");
    Table values({"LOCATION", "VALUE", "SAMPLES", "OBSERVED", "OUTSIDE"});
    for (const auto& v : group.values()) {
      std::string outside;
      for (const auto& o : group.outliers()) {
        if (o.location() == v.location()) outside = absl::StrCat(SignedPercent(o), " ", Meaning(o));
      }
      values.Add({v.location(), FormatValue(id, v.value()), absl::StrCat(v.samples()),
                  Timestamp(v.observed_at()), outside});
    }
    absl::StrAppend(&out, values.Render(), "\n");
  }
  if (d.findings_size() > 0) {
    absl::StrAppend(&out, "Findings on this series (", d.findings_size(), "):\n",
                    RenderFindings(d.findings()));
  }
  return out;
}

std::string FindingSubject(const v1::Finding& f) {
  if (!f.location().empty()) return f.location();
  if (f.locations_size() > 0) return absl::StrCat(f.locations_size(), " locations");
  return f.group().empty() ? "chain" : f.group();
}

std::string RenderFindings(const google::protobuf::RepeatedPtrField<v1::Finding>& findings) {
  if (findings.empty()) return "  none\n";
  Table table({"KIND", "SEVERITY", "SUBJECT", "SERIES", "EVIDENCE", "SINCE", "WHY"});
  for (const v1::Finding& f : findings) {
    const std::string subject = FindingSubject(f);
    std::string since = Timestamp(f.started_at());
    if (f.has_ended_at()) absl::StrAppend(&since, " .. ", Timestamp(f.ended_at()));
    table.Add({absl::AsciiStrToLower(v1::FindingKind_Name(f.kind())),
               absl::AsciiStrToLower(v1::Severity_Name(f.severity())), subject,
               f.has_series() ? FormatSeries(f.series()) : absl::StrCat(f.keys_size(), " keys"),
               f.has_evidence_at() ? Timestamp(f.evidence_at()) : "", since,
               f.reasons_size() > 0 ? f.reasons(0).detail() : ""});
    for (int i = 1; i < f.reasons_size(); ++i) {
      table.Add({"", "", "", "", "", "and:", f.reasons(i).detail()});
    }
    if (!f.silenced_by().empty()) {
      table.Add({"", "", "", "", "silenced:",
                 absl::StrCat("by silence ", f.silenced_by(), " (constance silence list)")});
    }
  }
  return table.Render();
}

namespace {

std::string Seconds(double seconds) {
  return absl::FormatDuration(absl::Trunc(absl::Seconds(seconds), absl::Seconds(1)));
}

// "Last 30 days": what the location's finding history adds up to.
std::string RenderRecord(const v1::FindingRecord& r) {
  std::string out = absl::StrCat("\nLast ", r.days(), " days: ", r.opened(), " findings opened, ",
                                 r.closed(), " closed");
  if (r.closed() > 0) {
    absl::StrAppend(&out, " (time to close: mean ", Seconds(r.mean_seconds_to_close()),
                    ", longest ", Seconds(r.max_seconds_to_close()), ")");
  }
  absl::StrAppend(&out, "\n");
  if (r.kinds().empty()) return absl::StrCat(out, "  no finding was open\n");
  Table table({"FINDING", "DAYS OPEN", "TIME OPEN", "OPENED", "CLOSED", "MEAN TO CLOSE"});
  for (const v1::FindingKindRecord& k : r.kinds()) {
    table.Add({absl::AsciiStrToLower(v1::FindingKind_Name(k.kind())),
               absl::StrCat(k.days_with_open()), Seconds(k.seconds_open()),
               absl::StrCat(k.opened()), absl::StrCat(k.closed()),
               k.closed() > 0 ? Seconds(k.mean_seconds_to_close()) : "-"});
  }
  return absl::StrCat(out, table.Render());
}

// The trust balance at each day's end, a week a row ("-": no evaluation
// that day), after the change over the period.
std::string RenderTrustTrend(const google::protobuf::RepeatedPtrField<v1::TrustDay>& days) {
  if (days.empty()) return "";
  const v1::TrustDay& first = days[0];
  const v1::TrustDay& last = days[days.size() - 1];
  const double change = last.balance() - first.balance();
  std::string out = absl::StrCat(
      "\nTrust balance at each day's end (UTC), oldest first: ", Balance(first.balance()), " on ",
      Timestamp(first.day()).substr(0, 10), ", ", Balance(last.balance()), " on ",
      Timestamp(last.day()).substr(0, 10), " (", change >= 0 ? "+" : "", Balance(change), ")\n");
  Table table({"WEEK FROM", "DAY 1", "DAY 2", "DAY 3", "DAY 4", "DAY 5", "DAY 6", "DAY 7"});
  const int64_t start = first.day().seconds() / 86400;
  const int64_t end = last.day().seconds() / 86400;
  int i = 0;
  for (int64_t week = start; week <= end; week += 7) {
    std::vector<std::string> row = {
        absl::FormatTime("%Y-%m-%d", absl::FromUnixSeconds(week * 86400), absl::UTCTimeZone())};
    for (int64_t d = week; d < week + 7 && d <= end; ++d) {
      if (i < days.size() && days[i].day().seconds() / 86400 == d) {
        row.push_back(Balance(days[i++].balance()));
      } else {
        row.push_back("-");
      }
    }
    table.Add(std::move(row));
  }
  return absl::StrCat(out, table.Render());
}

}  // namespace

std::string RenderScorecard(const v1::LocationScorecardResponse& c) {
  std::vector<std::string> labels;
  for (const auto& [k, v] : c.labels()) labels.push_back(absl::StrCat(k, "=", v));
  std::sort(labels.begin(), labels.end());
  std::string out = absl::StrCat(
      "location ", c.location(), labels.empty() ? "" : " (" + absl::StrJoin(labels, ", ") + ")",
      "\n  trust score ", absl::StrFormat("%.1f", c.trust().score()), "/100, balance ",
      Balance(c.trust().balance()), "; promises kept ", c.promises_kept(), ", broken ",
      c.promises_broken(), "\n  last report ",
      c.has_last_report() ? Timestamp(c.last_report()) : std::string("never"),
      c.expected_open() ? ", expected open now" : ", not expected open now", "\n\n");
  Table values({"SERIES", "VALUE", "SAMPLES"});
  for (int i = 0; i < c.values_size() && i < c.series_size(); ++i) {
    values.Add({FormatSeries(c.series(i)), FormatValue(c.series(i), c.values(i).value()),
                absl::StrCat(c.values(i).samples())});
  }
  absl::StrAppend(&out, values.Render(), MoreLine(c.values_omitted(), "values"), "\nFindings (",
                  c.findings_size() + c.findings_omitted(), "):\n", RenderFindings(c.findings()),
                  MoreLine(c.findings_omitted(), "findings"));
  absl::StrAppend(&out, RenderTrustTrend(c.trust_trend()));
  if (c.has_record()) absl::StrAppend(&out, RenderRecord(c.record()));
  return out;
}

namespace {

std::string EpisodeSubject(const v1::Episode& e) {
  return e.location().empty() ? absl::StrCat("group ", e.group()) : e.location();
}

std::string EpisodeDuration(const v1::Episode& e, absl::Time now) {
  const absl::Time opened = absl::FromUnixSeconds(e.opened_at().seconds());
  const absl::Time closed =
      e.has_closed_at() ? absl::FromUnixSeconds(e.closed_at().seconds()) : now;
  return absl::FormatDuration(absl::Trunc(closed - opened, absl::Seconds(1)));
}

}  // namespace

std::string RenderHistory(const v1::HistoryResponse& history, absl::Time now) {
  if (history.episodes().empty()) return "  none\n";
  Table table({"OPENED", "CLOSED", "FOR", "KIND", "SEVERITY", "SUBJECT", "SERIES", "AT OPEN"});
  for (const v1::Episode& e : history.episodes()) {
    const bool series = e.has_series() && e.series().family() != v1::FAMILY_UNSPECIFIED;
    table.Add({Timestamp(e.opened_at()), e.has_closed_at() ? Timestamp(e.closed_at()) : "open",
               EpisodeDuration(e, now), absl::AsciiStrToLower(v1::FindingKind_Name(e.kind())),
               absl::AsciiStrToLower(v1::Severity_Name(e.severity_max())), EpisodeSubject(e),
               series ? FormatSeries(e.series()) : "",
               series ? absl::StrCat(FormatValue(e.series(), e.value_at_open()), ", expected ",
                                     FormatValue(e.series(), e.expected_at_open()))
                      : e.reason_at_open()});
    for (const v1::EpisodeEvent& ev : e.events()) {
      table.Add({"", "", "", "", "", "", Timestamp(ev.at()), ev.what()});
    }
  }
  std::string out = table.Render();
  if (history.more() > 0) absl::StrAppend(&out, "  ... ", history.more(), " more (--since)\n");
  return out;
}

namespace {

// One CSV line, each field quoted by libcsv.
std::string CsvLine(const std::vector<std::string>& row) {
  std::string line;
  for (size_t i = 0; i < row.size(); ++i) {
    std::string field(row[i].size() * 2 + 2, '\0');
    field.resize(csv_write(field.data(), field.size(), row[i].data(), row[i].size()));
    absl::StrAppend(&line, i > 0 ? "," : "", field);
  }
  return line + "\n";
}

std::string DropScope(const v1::PriceDrop& d) {
  return absl::StrCat(d.rollout() ? "rollout" : "local", d.promo() ? " (promo)" : "");
}

std::string DropChange(const v1::PriceDrop& d) {
  const double before = static_cast<double>(d.previous_minor_units());
  const double after = static_cast<double>(d.new_minor_units());
  return before != 0 ? absl::StrFormat("%.1f%%", 100 * (after - before) / before) : "";
}

}  // namespace

std::string RenderPriceDrops(const std::vector<v1::PriceDrop>& drops) {
  if (drops.empty()) return "  none\n";
  Table table({"AT", "LOCATION", "SERIES", "PREVIOUS", "NEW", "CHANGE", "SCOPE"});
  for (const v1::PriceDrop& d : drops) {
    table.Add({Timestamp(d.at()), d.location(), FormatSeries(d.series()),
               FormatValue(d.series(), static_cast<double>(d.previous_minor_units())),
               FormatValue(d.series(), static_cast<double>(d.new_minor_units())), DropChange(d),
               DropScope(d)});
  }
  return table.Render();
}

std::string RenderPriceDropsCsv(const std::vector<v1::PriceDrop>& drops) {
  std::string out =
      "at,location,key,currency,kind,previous_minor_units,new_minor_units,previous,new,scope,"
      "promo,recorded_at\n";
  for (const v1::PriceDrop& d : drops) {
    out += CsvLine({Timestamp(d.at()), d.location(), d.series().key(), d.series().currency(),
                    KindName(d.series().kind()), absl::StrCat(d.previous_minor_units()),
                    absl::StrCat(d.new_minor_units()),
                    FormatValue(d.series(), static_cast<double>(d.previous_minor_units())),
                    FormatValue(d.series(), static_cast<double>(d.new_minor_units())),
                    d.rollout() ? "rollout" : "local", d.promo() ? "true" : "false",
                    Timestamp(d.recorded_at())});
  }
  return out;
}

namespace {

std::string Kept(double share, uint64_t evaluations) {
  if (evaluations == 0) return "-";
  return absl::StrFormat("%.1f%% (%d)", 100 * share, evaluations);
}

std::string RecordState(const v1::LocationRecord& r) {
  if (r.closed_for_good()) return "closed for good";
  if (r.silent()) return "silent: no report while open";
  return r.open_now() ? "open" : "closed now";
}

}  // namespace

std::string RenderRecord(const v1::LocationRecord& r) {
  std::string out = absl::StrCat(r.location(), " (", r.timezone(), "): ", RecordState(r));
  if (r.has_last_report()) absl::StrAppend(&out, ", last report ", Timestamp(r.last_report()));
  absl::StrAppend(&out, "\nPromises kept (share of evaluations, and how many):\n");
  if (r.promises().empty()) {
    out += "  none\n";
  } else {
    Table promises({"SERIES", "PROMISE", "7 DAYS", "30 DAYS", "90 DAYS"});
    for (const v1::PromiseRecord& p : r.promises()) {
      promises.Add({FormatSeries(p.series()), p.promise(), Kept(p.kept_7d(), p.evaluations_7d()),
                    Kept(p.kept_30d(), p.evaluations_30d()),
                    Kept(p.kept_90d(), p.evaluations_90d())});
    }
    out += promises.Render();
  }
  absl::StrAppend(&out, "Waits now:\n");
  if (r.waits().empty()) return out + "  none\n";
  Table waits({"SERVICE", "MEDIAN", "P90", "TICKETS", "UPDATED"});
  for (const v1::ServiceWait& w : r.waits()) {
    waits.Add({w.service(), absl::StrFormat("%.0f s", w.median_seconds()),
               absl::StrFormat("%.0f s", w.p90_seconds()), absl::StrCat(w.tickets()),
               Timestamp(w.updated_at())});
  }
  return out + waits.Render();
}

std::string RenderHistoryCsv(const v1::HistoryResponse& history, absl::Time now) {
  std::string out =
      "opened,closed,duration_seconds,kind,severity,location,group,family,key,currency,"
      "value_at_open,expected_at_open,value_at_close,expected_at_close,events\n";
  for (const v1::Episode& e : history.episodes()) {
    const absl::Time opened = absl::FromUnixSeconds(e.opened_at().seconds());
    const absl::Time closed =
        e.has_closed_at() ? absl::FromUnixSeconds(e.closed_at().seconds()) : now;
    std::vector<std::string> events;
    for (const v1::EpisodeEvent& ev : e.events()) {
      events.push_back(absl::StrCat(Timestamp(ev.at()), " ", ev.what()));
    }
    std::vector<std::string> row = {Timestamp(e.opened_at()),
                                    e.has_closed_at() ? Timestamp(e.closed_at()) : "",
                                    absl::StrCat(absl::ToInt64Seconds(closed - opened)),
                                    absl::AsciiStrToLower(v1::FindingKind_Name(e.kind())),
                                    absl::AsciiStrToLower(v1::Severity_Name(e.severity_max())),
                                    e.location(),
                                    e.group(),
                                    e.series().family() != v1::FAMILY_UNSPECIFIED
                                        ? std::string(FamilyName(e.series().family()))
                                        : "",
                                    e.series().key(),
                                    e.series().currency(),
                                    absl::StrCat(e.value_at_open()),
                                    absl::StrCat(e.expected_at_open()),
                                    absl::StrCat(e.value_at_close()),
                                    absl::StrCat(e.expected_at_close()),
                                    absl::StrJoin(events, "; ")};
    out += CsvLine(row);
  }
  return out;
}

}  // namespace constance::cli
