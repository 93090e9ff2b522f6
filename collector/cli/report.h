// Rendering of the collector's Query answers for people and scripts.
//
// The `constance` CLI prints human tables by default and the protobuf JSON
// mapping of the same answer with --json. Rendering is separate from the
// RPCs so it can be tested on hand-built answers.
//
// All functions are pure and thread-safe.
#ifndef CONSTANCE_COLLECTOR_CLI_REPORT_H_
#define CONSTANCE_COLLECTOR_CLI_REPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "constance/v1/board.pb.h"
#include "constance/v1/history.pb.h"
#include "constance/v1/query.pb.h"
#include "google/protobuf/message.h"

namespace constance::cli {

// The protobuf JSON mapping of `message` as every --json prints it: proto
// field names, and zeros, false and empty lists printed (a script reads 0,
// not a missing field). `pretty`: indented over several lines.
std::string ToJson(const google::protobuf::Message& message, bool pretty = false);

// A value in the family's unit for people: prices as decimal currency
// ("1.39 EUR"), waits in seconds ("412 s"), compliance as a pass rate
// ("62.5%"), scores as plain numbers.
std::string FormatValue(const v1::SeriesId& series, double value);

// "... N more WHAT not sent by the collector (...)" and a newline, for a
// list the collector cut at the request's limit; empty when `omitted` is 0.
std::string MoreLine(uint64_t omitted, absl::string_view what);

// "price sku-1001 EUR/shelf", "wait checkout".
std::string FormatSeries(const v1::SeriesId& series);

// The chain report: headline counts, series by dispersion, outliers with
// value against expected and band. `max_series` bounds the series table
// (0 = all); the outlier table is never cut.
std::string RenderChainSummary(const v1::ChainSummaryResponse& summary, int max_series);

// The chain-wide table of a report merged from several collectors
// (shards.h): per series, the locations, mean and standard deviation from
// the mergeable sums.
std::string RenderChainWide(const v1::ChainSummaryResponse& merged);

// One series across locations: its statistics, every location's value and
// who sits outside the band, per peer group.
std::string RenderKeyDetail(const v1::KeyDetailResponse& detail);

// Who a finding is about: its location, "N locations" (a split or zone),
// or its peer group ("chain" when none).
std::string FindingSubject(const v1::Finding& finding);

// Findings as a table: kind, severity, subject, since when, and the first
// reason's sentence; further reasons on their own lines.
std::string RenderFindings(const google::protobuf::RepeatedPtrField<v1::Finding>& findings);

// A location's scorecard: trust, promises, values, findings, the trust
// balance at each of the last 30 days' end (a week a row), and the last
// 30 days' finding record.
std::string RenderScorecard(const v1::LocationScorecardResponse& card);

// `constance history`: one row per episode (newest first) with its events
// below it, and "... N more" when the answer was limited. The CSV form
// (for spreadsheets) has one quoted row per episode, events joined by "; ".
std::string RenderHistory(const v1::HistoryResponse& history, absl::Time now);
std::string RenderHistoryCsv(const v1::HistoryResponse& history, absl::Time now);

// `constance price-drops`: one row per drop, oldest first: when, where,
// the series, previous and new price, the change, and its scope ("local",
// "rollout", with " (promo)" for a promotional price). The CSV form has
// minor units and the formatted prices, scope and promo in columns.
std::string RenderPriceDrops(const std::vector<v1::PriceDrop>& drops);
std::string RenderPriceDropsCsv(const std::vector<v1::PriceDrop>& drops);

// `constance record LOCATION`: whether it is open, each promise with the
// share kept over 7, 30 and 90 days (and how many evaluations that is),
// and each service's wait median and p90 now.
std::string RenderRecord(const v1::LocationRecord& record);

}  // namespace constance::cli

#endif  // CONSTANCE_COLLECTOR_CLI_REPORT_H_
