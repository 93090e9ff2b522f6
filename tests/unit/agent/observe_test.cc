// `constance-agent observe`: arguments to an observation (prices read by
// constance/money.h, tested in money_test.cc), the --agent URL, and the
// refusal message.
#include "agent/observe.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace constance::agent {
namespace {

using ::testing::HasSubstr;

ObserveRequest Request(const char* family, const char* value) {
  ObserveRequest r;
  r.family = family;
  r.key = "k";
  r.value = value;
  return r;
}

TEST(BuildObservationTest, Table) {
  static const struct {
    ObserveRequest request;
    const char* error;  // nullptr when ok.
  } kCases[] = {
      {[] {
         ObserveRequest r = Request("price", "4.49");
         r.currency = "EUR";
         return r;
       }(),
       nullptr},
      {[] {
         ObserveRequest r = Request("price", "4.49");
         r.currency = "EUR";
         r.kind = "promo";
         return r;
       }(),
       nullptr},
      {Request("price", "4.49"), "needs --currency"},
      {[] {
         ObserveRequest r = Request("price", "4.499");
         r.currency = "EUR";
         return r;
       }(),
       "price '4.499' has 3 decimals, but EUR has 2 decimals"},
      {[] {
         ObserveRequest r = Request("price", "450.5");
         r.currency = "JPY";
         return r;
       }(),
       "price '450.5' has 1 decimal, but JPY has no decimals"},
      {[] {
         ObserveRequest r = Request("price", "4.49");
         r.currency = "eur";
         return r;
       }(),
       "--currency 'eur' is not an ISO 4217 code: write it in capitals, EUR"},
      {[] {
         ObserveRequest r = Request("price", "4.49");
         r.currency = "EUR";
         r.kind = "shelves";
         return r;
       }(),
       "--kind 'shelves'"},
      {Request("wait", "182.5"), nullptr},
      {Request("wait", "slow"), "not a finite number"},
      {Request("compliance", "pass"), nullptr},
      {Request("compliance", "fail"), nullptr},
      {Request("compliance", "ok"), "not pass or fail"},
      {Request("score", "96.5"), nullptr},
      {Request("score", "nan"), "not a finite number"},
      {Request("prices", "1"), "FAMILY 'prices'"},
      {[] {
         ObserveRequest r = Request("wait", "10");
         r.currency = "EUR";
         return r;
       }(),
       "price observations only"},
      {[] {
         ObserveRequest r = Request("score", "1");
         r.critical = true;
         return r;
       }(),
       "compliance observations only"},
      {[] {
         ObserveRequest r = Request("score", "1");
         r.observed_at = "2024-05-01T10:00:00Z";
         return r;
       }(),
       nullptr},
      {[] {
         ObserveRequest r = Request("score", "1");
         r.observed_at = "yesterday";
         return r;
       }(),
       "--observed_at 'yesterday'"},
  };
  for (const auto& c : kCases) {
    absl::StatusOr<v1::Observation> obs = BuildObservation(c.request);
    const std::string what = c.request.family + " " + c.request.value;
    if (c.error == nullptr) {
      EXPECT_TRUE(obs.ok()) << what << ": " << obs.status();
    } else {
      ASSERT_FALSE(obs.ok()) << what;
      EXPECT_EQ(obs.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(std::string(obs.status().message()), HasSubstr(c.error)) << what;
    }
  }
}

TEST(BuildObservationTest, Values) {
  ObserveRequest price = Request("price", "4.49");
  price.currency = "EUR";
  absl::StatusOr<v1::Observation> obs = BuildObservation(price);
  ASSERT_TRUE(obs.ok());
  EXPECT_EQ(obs->price().minor_units(), 449);
  EXPECT_EQ(obs->price().currency(), "EUR");
  EXPECT_EQ(obs->price().kind(), v1::SHELF);
  EXPECT_FALSE(obs->has_observed_at());

  ObserveRequest check = Request("compliance", "fail");
  check.critical = true;
  obs = BuildObservation(check);
  ASSERT_TRUE(obs.ok());
  EXPECT_FALSE(obs->check().passed());
  EXPECT_TRUE(obs->check().critical());

  ObserveRequest at = Request("wait", "12");
  at.observed_at = "2024-05-01T10:00:00+02:00";
  obs = BuildObservation(at);
  ASSERT_TRUE(obs.ok());
  EXPECT_EQ(obs->wait_seconds(), 12);
  EXPECT_EQ(obs->observed_at().seconds(),
            absl::ToUnixSeconds(
                absl::FromCivil(absl::CivilSecond(2024, 5, 1, 8, 0, 0), absl::UTCTimeZone())));
}

TEST(ParseAgentUrlTest, Table) {
  static const struct {
    const char* url;
    const char* host;  // nullptr when invalid.
    int port;
  } kCases[] = {
      {"http://127.0.0.1:8080", "127.0.0.1", 8080},
      {"http://127.0.0.1:8080/", "127.0.0.1", 8080},
      {"localhost:9000", "localhost", 9000},
      {"http://[::1]:8080", "::1", 8080},
      {"https://127.0.0.1:8080", nullptr, 0},
      {"http://127.0.0.1", nullptr, 0},
      {"http://127.0.0.1:0", nullptr, 0},
      {"http://127.0.0.1:8080/v1", nullptr, 0},
      {"", nullptr, 0},
  };
  for (const auto& c : kCases) {
    absl::StatusOr<HostPort> hp = ParseAgentUrl(c.url);
    if (c.host == nullptr) {
      EXPECT_FALSE(hp.ok()) << c.url;
    } else {
      ASSERT_TRUE(hp.ok()) << c.url << ": " << hp.status();
      EXPECT_EQ(hp->host, c.host);
      EXPECT_EQ(hp->port, c.port);
    }
  }
}

TEST(DescribeRefusalTest, Table) {
  static const struct {
    HttpResponse response;
    const char* text;
  } kCases[] = {
      {{400, R"({"accepted":0,"rejected":[{"index":0,"reason":"price.currency: must be three"}]})"},
       "price.currency: must be three"},
      {{507, R"({"error":"spool full: 10 observations wait"})"},
       "spool full: 10 observations wait"},
      {{502, "Bad Gateway"}, "HTTP 502: Bad Gateway"},
  };
  for (const auto& c : kCases) EXPECT_EQ(DescribeRefusal(c.response), c.text);
}

}  // namespace
}  // namespace constance::agent
