// The CLI's rendering: values in the family's unit and the outlier line an
// operator reads.
#include "collector/cli/report.h"

#include <string>

#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"

namespace constance::cli {
namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(FormatValueTest, Table) {
  static const struct {
    v1::Family family;
    double value;
    const char* want;
    const char* currency = "EUR";
  } kCases[] = {
      {v1::FAMILY_PRICE, 139, "1.39 EUR"},
      {v1::FAMILY_PRICE, 5, "0.05 EUR"},
      {v1::FAMILY_PRICE, 0, "0.00 EUR"},
      {v1::FAMILY_PRICE, 89900, "899.00 EUR"},
      {v1::FAMILY_PRICE, 450, "450 JPY", "JPY"},
      {v1::FAMILY_PRICE, 1250, "1.250 KWD", "KWD"},
      {v1::FAMILY_WAIT, 181.6, "182 s"},
      {v1::FAMILY_COMPLIANCE, 0.625, "62.5%"},
      {v1::FAMILY_SCORE, 96.5, "96.5"},
  };
  for (const auto& c : kCases) {
    v1::SeriesId id;
    id.set_family(c.family);
    id.set_currency(c.currency);
    EXPECT_EQ(FormatValue(id, c.value), c.want);
  }
}

TEST(RenderChainSummaryTest, NamesOutliersWithValueExpectedAndBand) {
  v1::ChainSummaryResponse s;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(
      R"pb(
        locations: 24
        cells: 100
        observations_applied: 500
        series {
          series { family: FAMILY_PRICE key: "coffee" currency: "EUR" kind: SHELF }
          group: "chain"
          n: 24
          median: 449
        }
        outliers {
          location: "store-07"
          group: "chain"
          group_size: 24
          series { family: FAMILY_PRICE key: "coffee" currency: "EUR" kind: SHELF }
          value: 516
          expected: 449
          band_low: 444
          band_high: 454
          magnitude: 0.149
          z: 19.2
          direction: ABOVE
        }
        outliers {
          location: "store-13"
          group: "chain"
          group_size: 24
          series { family: FAMILY_WAIT key: "checkout" }
          value: 415
          expected: 180
          band_low: 162
          band_high: 198
          magnitude: 1.3
          z: 40
          direction: ABOVE
        }
      )pb",
      &s));
  std::string out = RenderChainSummary(s, 0);
  EXPECT_THAT(out, HasSubstr("Outlier locations (2): store-07, store-13\n"));
  EXPECT_THAT(out, HasSubstr("price coffee EUR/shelf"));
  EXPECT_THAT(out, HasSubstr("5.16 EUR"));
  EXPECT_THAT(out, HasSubstr("[4.44 EUR .. 4.54 EUR]"));
  EXPECT_THAT(out, HasSubstr("+14.9% overcharge"));
  EXPECT_THAT(out, HasSubstr("+130.0% slow"));
  EXPECT_THAT(out, HasSubstr("chain (24)"));

  EXPECT_THAT(out, Not(HasSubstr("Not compared")));

  s.clear_outliers();
  s.set_uncompared_series(3);
  out = RenderChainSummary(s, 0);
  EXPECT_THAT(out, HasSubstr("Outlier locations: none\n"));
  EXPECT_THAT(out, HasSubstr("Not compared: 3 series held by too few locations"));
}

TEST(RenderChainSummaryTest, OneSeriesInSeveralPeerGroupsIsToldApartByGroup) {
  v1::ChainSummaryResponse s;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(
      R"pb(
        series {
          series { family: FAMILY_PRICE key: "apples" currency: "EUR" kind: SHELF }
          group: "zone=north"
          n: 6
          median: 279
        }
        series {
          series { family: FAMILY_PRICE key: "apples" currency: "EUR" kind: SHELF }
          group: "zone=south"
          n: 6
          median: 299
        }
      )pb",
      &s));
  std::string out = RenderChainSummary(s, 0);
  EXPECT_THAT(out, ContainsRegex("price apples EUR/shelf +zone=north +6 +2.79 EUR"));
  EXPECT_THAT(out, ContainsRegex("price apples EUR/shelf +zone=south +6 +2.99 EUR"));
}

}  // namespace
}  // namespace constance::cli

namespace constance::cli {
namespace {

TEST(RenderFindingsTest, EachFindingExplainsItself) {
  google::protobuf::RepeatedPtrField<v1::Finding> findings;
  v1::Finding* f = findings.Add();
  f->set_kind(v1::BROKEN_PROMISE);
  f->set_severity(v1::HIGH);
  f->set_location("fr-paris-0042");
  f->mutable_series()->set_family(v1::FAMILY_PRICE);
  f->mutable_series()->set_key("coffee-250g");
  f->mutable_series()->set_currency("EUR");
  f->mutable_started_at()->set_seconds(1767225600);
  f->add_reasons()->set_detail("price 5.16 EUR above the list price 4.49 EUR (+14.9%)");
  f->add_reasons()->set_detail("overcharge: 5.16 EUR against 4.49 EUR expected");
  v1::Finding* zone = findings.Add();
  zone->set_kind(v1::ZONE);
  zone->set_severity(v1::MEDIUM);
  zone->add_locations("a");
  zone->add_locations("b");
  zone->add_keys("price x EUR/shelf");
  std::string out = RenderFindings(findings);
  EXPECT_THAT(out, HasSubstr("broken_promise"));
  EXPECT_THAT(out, HasSubstr("fr-paris-0042"));
  EXPECT_THAT(out, HasSubstr("price coffee-250g EUR/shelf"));
  EXPECT_THAT(out, HasSubstr("2026-01-01T00:00:00Z"));
  EXPECT_THAT(out, HasSubstr("and:"));
  EXPECT_THAT(out, HasSubstr("2 locations"));
  EXPECT_THAT(out, HasSubstr("1 keys"));
  EXPECT_EQ(RenderFindings({}), "  none\n");
}

TEST(RenderScorecardTest, TrustPromisesAndValues) {
  v1::LocationScorecardResponse c;
  c.set_location("store-7");
  (*c.mutable_labels())["region"] = "north";
  c.mutable_trust()->set_score(62.5);
  c.mutable_trust()->set_balance(-12);
  c.set_promises_kept(3);
  c.set_promises_broken(1);
  c.set_expected_open(true);
  c.add_series()->set_family(v1::FAMILY_WAIT);
  c.mutable_series(0)->set_key("checkout");
  c.add_values()->set_value(412);
  std::string out = RenderScorecard(c);
  EXPECT_THAT(out, HasSubstr("location store-7 (region=north)"));
  EXPECT_THAT(out, HasSubstr("trust score 62.5/100, balance -12; "));
  EXPECT_THAT(out, HasSubstr("promises kept 3, broken 1"));
  EXPECT_THAT(out, HasSubstr("last report never, expected open now"));
  EXPECT_THAT(out, HasSubstr("wait checkout"));
  EXPECT_THAT(out, HasSubstr("412 s"));
}

TEST(RenderScorecardTest, TrustTrendAWeekARowWithGapsMarked) {
  v1::LocationScorecardResponse c;
  c.set_location("store-7");
  // 2026-11-23 (a Monday) .. 2026-12-01, no evaluation on the 25th.
  const int64_t first = 1795392000 / 86400;
  for (int64_t day : {first, first + 1, first + 3, first + 7, first + 8}) {
    v1::TrustDay* d = c.add_trust_trend();
    d->mutable_day()->set_seconds(day * 86400);
    d->set_balance(static_cast<double>(day - first) - 2);
  }
  const std::string out = RenderScorecard(c);
  EXPECT_THAT(out, HasSubstr("Trust balance at each day's end (UTC), oldest first: -2 on "
                             "2026-11-23, 6 on 2026-12-01 (+8)"));
  EXPECT_THAT(out, ::testing::ContainsRegex("2026-11-23 +-2 +-1 +- +1 +- +- +-\n"));
  EXPECT_THAT(out, ::testing::ContainsRegex("2026-11-30 +5 +6\n"));
  EXPECT_THAT(RenderScorecard(v1::LocationScorecardResponse()),
              ::testing::Not(HasSubstr("Trust balance at each day")));
}

}  // namespace
}  // namespace constance::cli

namespace constance::cli {
namespace {

// Scripts read 0 and [] rather than a missing field.
TEST(ToJsonTest, PrintsZerosAndEmptyLists) {
  v1::KeyDetailResponse detail;
  detail.mutable_stats()->set_median(4.49);
  const std::string json = ToJson(detail);
  EXPECT_THAT(json, HasSubstr("\"median\":4.49"));
  EXPECT_THAT(json, HasSubstr("\"mad\":0"));
  EXPECT_THAT(json, HasSubstr("\"findings\":[]"));
  EXPECT_THAT(json, HasSubstr("\"outliers\":[]"));
  EXPECT_THAT(ToJson(detail, /*pretty=*/true), HasSubstr("\n"));
}

}  // namespace
}  // namespace constance::cli

namespace constance::cli {
namespace {

TEST(RenderFindingsTest, ShowsWhenTheEvidenceHappened) {
  google::protobuf::RepeatedPtrField<v1::Finding> findings;
  v1::Finding* f = findings.Add();
  f->set_kind(v1::BROKEN_PROMISE);
  f->set_location("lic-017");
  f->mutable_evidence_at()->set_seconds(1'700'000'000);        // 2023-11-14T22:13:20Z
  f->mutable_started_at()->set_seconds(1'700'000'000 + 86400);  // A day later.
  const std::string out = RenderFindings(findings);
  EXPECT_THAT(out, HasSubstr("EVIDENCE"));
  EXPECT_THAT(out, HasSubstr("2023-11-14T22:13:20Z"));
  EXPECT_THAT(out, HasSubstr("2023-11-15T22:13:20Z"));
}

}  // namespace
}  // namespace constance::cli
