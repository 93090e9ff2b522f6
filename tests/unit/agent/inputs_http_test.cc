// The agent's input endpoints over real HTTP on a loopback port:
// /v1/checklists, /v1/price_checks and /v1/tickets (http_ingest.h), and
// the parsing behind them (checklists.h, price_check.h, tickets.h).
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/civil_time.h"
#include "agent/checklists.h"
#include "agent/http_ingest.h"
#include "agent/import.h"
#include "agent/input_config.h"
#include "agent/observe.h"
#include "agent/price_check.h"
#include "agent/tickets.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace constance::agent {
namespace {

using ::testing::HasSubstr;

class InputsHttpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto tracker = TicketTracker::Open(&spool_, TicketOptions{});
    ASSERT_TRUE(tracker.ok());
    tracker_ = *std::move(tracker);
    HttpIngestOptions options;
    options.listen = "127.0.0.1:0";
    options.tickets = tracker_.get();
    options.max_requested_lateness = max_requested_lateness_;
    auto http = HttpIngest::Start(options, &spool_, &metrics_, nullptr);
    ASSERT_TRUE(http.ok()) << http.status();
    http_ = *std::move(http);
  }
  HttpResponse Post(const std::string& path, const std::string& body) {
    absl::StatusOr<HttpResponse> r =
        PostJson({"127.0.0.1", http_->port()}, path, body, absl::Seconds(10));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : HttpResponse{};
  }
  std::vector<v1::Observation> Spooled() {
    std::vector<v1::Observation> out;
    auto all = spool_.Read(1, 1000);
    EXPECT_TRUE(all.ok());
    for (SpoolEntry& e : *all) out.push_back(std::move(e.observation));
    return out;
  }

  // What the agent's own drop_directory mappings allow (agent.cc).
  absl::Duration max_requested_lateness_ = absl::ZeroDuration();
  MemorySpool spool_{SpoolOptions{}};
  AgentMetrics metrics_{"store-1", "test"};
  std::unique_ptr<TicketTracker> tracker_;
  std::unique_ptr<HttpIngest> http_;
};

TEST_F(InputsHttpTest, ChecklistItemsBecomeComplianceObservations) {
  HttpResponse r = Post("/v1/checklists",
                        R"([{"template":"opening","id":"s1","items":[
                              {"item":"fridge","result":"fail","critical":true},
                              {"item":"floor","result":"pass"},
                              {"item":"allergens","result":"na"}]},
                            {"template":"opening","items":[]}])");
  EXPECT_EQ(r.status, 400);  // The second submission has no items.
  EXPECT_THAT(r.body, HasSubstr("\"accepted\":1"));
  EXPECT_THAT(r.body, HasSubstr("items: missing or empty"));
  std::vector<v1::Observation> obs = Spooled();
  ASSERT_EQ(obs.size(), 2u);
  EXPECT_EQ(obs[0].key(), "opening.fridge");
  EXPECT_FALSE(obs[0].check().passed());
  EXPECT_TRUE(obs[0].check().critical());
  EXPECT_EQ(obs[1].key(), "opening.floor");
  EXPECT_TRUE(obs[1].check().passed());
  // The same submission again (same id): acknowledged, stored once.
  r = Post("/v1/checklists",
           R"({"template":"opening","id":"s1","items":[{"item":"fridge","result":"fail",
               "critical":true},{"item":"floor","result":"pass"}]})");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(Spooled().size(), 2u);
}

TEST_F(InputsHttpTest, PriceChecksTellOverchargeFromUndercharge) {
  HttpResponse r =
      Post("/v1/price_checks",
           R"([{"item":"sku-1","currency":"EUR","shelf":"4.49","pos":"4.59","list":"4.49"},
                            {"item":"sku-2","currency":"EUR","shelf":"2.00","pos":1.5},
                            {"item":"sku-3","currency":"EUR","shelf":"1.00","pos":"1.00"},
                            {"item":"sku-4","currency":"EUR"},
                            {"item":"sku-5","currency":"EUR","shelf":"1,00"}])");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("\"accepted\":3"));
  EXPECT_THAT(r.body, HasSubstr("no price"));
  EXPECT_THAT(r.body, HasSubstr("shelf"));
  std::vector<v1::Observation> obs = Spooled();
  ASSERT_EQ(obs.size(), 4u + 3u + 3u);
  EXPECT_EQ(obs[0].price().kind(), v1::SHELF);
  EXPECT_EQ(obs[1].price().kind(), v1::POS);
  EXPECT_EQ(obs[1].price().minor_units(), 459);
  EXPECT_EQ(obs[2].price().kind(), v1::LIST);
  EXPECT_EQ(obs[3].key(), "sku-1.price_match");
  EXPECT_FALSE(obs[3].check().passed());
  EXPECT_TRUE(obs[3].check().critical());  // Overcharge.
  EXPECT_EQ(obs[6].key(), "sku-2.price_match");
  EXPECT_FALSE(obs[6].check().passed());
  EXPECT_FALSE(obs[6].check().critical());  // Undercharge.
  EXPECT_TRUE(obs[9].check().passed());
}

TEST_F(InputsHttpTest, TicketsBecomeWaitsAndAbandonments) {
  const absl::Time t0 = absl::Now() - absl::Minutes(10);
  auto at = [t0](int seconds) {
    return absl::FormatTime(absl::RFC3339_full, t0 + absl::Seconds(seconds), absl::UTCTimeZone());
  };
  const std::string called_again = absl::StrCat(
      R"({"ticket":"7","service":"checkout","event":"called","at":")", at(90), R"("})");
  HttpResponse r = Post(
      "/v1/tickets",
      absl::StrCat("[", R"({"ticket":"7","service":"checkout","event":"created","at":")", at(0),
                   R"("},)", R"({"ticket":8,"service":"checkout","event":"created","at":")", at(60),
                   R"("},)", called_again, ",",
                   R"({"ticket":"8","service":"checkout","event":"abandoned","at":")", at(180),
                   R"("},)", R"({"ticket":"9","service":"check out","event":"created"}])"));
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("\"index\":4"));
  EXPECT_THAT(r.body, HasSubstr("\"accepted\":4"));
  std::vector<v1::Observation> obs = Spooled();
  ASSERT_EQ(obs.size(), 3u);
  EXPECT_EQ(obs[0].key(), "checkout");
  EXPECT_EQ(obs[0].wait_seconds(), 90);
  EXPECT_EQ(obs[1].key(), "checkout.served");
  EXPECT_TRUE(obs[1].check().passed());
  EXPECT_EQ(obs[2].key(), "checkout.served");
  EXPECT_FALSE(obs[2].check().passed());
  // A retry of the call changes nothing.
  r = Post("/v1/tickets", called_again);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(Spooled().size(), 3u);
  EXPECT_EQ(tracker_->open_tickets(), 1u);  // 7 called, not yet served.
  EXPECT_EQ(metrics_.Read().ticket_events_ignored, 1u);
}

// Past max_open_tickets the oldest open tickets are forgotten and counted
// on /metrics.
TEST_F(InputsHttpTest, EvictedTicketsAreCounted) {
  MemorySpool spool{SpoolOptions{}};
  TicketOptions ticket_options;
  ticket_options.max_open = 2;
  auto tracker = TicketTracker::Open(&spool, ticket_options);
  ASSERT_TRUE(tracker.ok()) << tracker.status();
  HttpIngestOptions options;
  options.listen = "127.0.0.1:0";
  options.tickets = tracker->get();
  AgentMetrics metrics{"store-1", "test"};
  auto http = HttpIngest::Start(options, &spool, &metrics, nullptr);
  ASSERT_TRUE(http.ok()) << http.status();
  std::string events = "[";
  const std::string at =
      absl::FormatTime(absl::RFC3339_full, absl::Now() - absl::Minutes(1), absl::UTCTimeZone());
  for (int t = 1; t <= 5; ++t) {
    absl::StrAppend(&events, t > 1 ? "," : "", R"({"ticket":")", t,
                    R"(","service":"checkout","event":"created","at":")", at, R"("})");
  }
  events += "]";
  absl::StatusOr<HttpResponse> r =
      PostJson({"127.0.0.1", (*http)->port()}, "/v1/tickets", events, absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ((*tracker)->open_tickets(), 2u);
  EXPECT_EQ(metrics.Read().tickets_evicted, 3u);
}

TEST_F(InputsHttpTest, RecentTicketsUseTheAgentsClock) {
  const absl::Time t0 = absl::Now() - absl::Minutes(5);
  auto at = [](absl::Time t) {
    return absl::FormatTime(absl::RFC3339_full, t, absl::UTCTimeZone());
  };
  HttpResponse r =
      Post("/v1/tickets",
           absl::StrCat(R"([{"ticket":"A","service":"drive-thru","event":"created","at":")", at(t0),
                        R"("},{"ticket":"A","service":"drive-thru","event":"served","at":")",
                        at(t0 + absl::Seconds(42)), R"("}])"));
  EXPECT_EQ(r.status, 200) << r.body;
  std::vector<v1::Observation> obs = Spooled();
  ASSERT_EQ(obs.size(), 2u);
  EXPECT_DOUBLE_EQ(obs[0].wait_seconds(), 42);
  EXPECT_EQ(tracker_->open_tickets(), 0u);
}

TEST(ChecklistParseTest, Errors) {
  static const struct {
    const char* json;
    const char* error;
  } cases[] = {
      {R"({"items":[{"item":"a","result":"pass"}]})", "template"},
      {R"({"template":"t","items":[{"result":"pass"}]})", "items[0]: item"},
      {R"({"template":"t","items":[{"item":"a","result":"pass"},{"item":"a","result":"fail"}]})",
       "twice"},
      {R"({"template":"t","items":[{"item":"a","result":"pass","critical":"yes"}]})", "critical"},
      {R"({"template":"t","items":[{"item":"a","result":"pass"}],"extra":1})", "unknown field"},
  };
  for (const auto& c : cases) {
    absl::StatusOr<ChecklistSubmission> s = ParseChecklistJson(c.json);
    ASSERT_FALSE(s.ok()) << c.json;
    EXPECT_THAT(std::string(s.status().message()), HasSubstr(c.error)) << c.json;
  }
}

// `constance-agent import` (import.h) posting to the ingest: the time of
// rows without their own comes from --observed_at, else the file's name;
// a file named for another location is skipped.
class ImportTest : public InputsHttpTest {
 protected:
  void SetUp() override {
    InputsHttpTest::SetUp();
    const char* base = getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/import_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // A price list named like the published ones, `at` in its name.
  ImportOptions Named(int store, absl::Time at) {
    ImportOptions o;
    o.file = absl::StrCat(dir_, "/Supermarket ", store, "_Main St_",
                          absl::FormatTime("%d.%m.%Y_%H.%M", at, absl::UTCTimeZone()), "h.csv");
    std::ofstream(o.file) << "item,price\nmilk,1.99\nbread,2.50\n";
    o.mapping.records = InputMapping::Records::kPrice;
    o.mapping.key_column = "item";
    o.mapping.value_column = "price";
    o.mapping.currency = "EUR";
    o.mapping.name_regex =
        R"(Supermarket (?P<location>\d+)_.*_(?P<observed_at>\d\d\.\d\d\.\d{4}_\d\d?\.\d\d)h\.csv)";
    o.mapping.name_time_format = "%d.%m.%Y_%H.%M";
    o.mapping.location_prefix = "store-";
    o.location = "store-1";
    o.agent = {"127.0.0.1", http_->port()};
    return o;
  }

  std::string dir_;
};

absl::Time Minute(absl::Time t) { return absl::FromUnixSeconds(absl::ToUnixSeconds(t) / 60 * 60); }

TEST_F(ImportTest, RowsTakeTheTimeOfTheFileNameOrOfObservedAt) {
  const absl::Time named = Minute(absl::Now() - absl::Hours(3));
  absl::StatusOr<ImportReport> report = ImportFile(Named(1, named));
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->observations, 2u);
  EXPECT_EQ(report->file_location, "store-1");
  std::vector<v1::Observation> obs = Spooled();
  ASSERT_EQ(obs.size(), 2u);
  EXPECT_EQ(absl::FromUnixSeconds(obs[0].observed_at().seconds()), named);

  // --observed_at: given, it is the time of every row without its own.
  ImportOptions o = Named(1, named);
  o.observed_at = Minute(absl::Now() - absl::Hours(1));
  report = ImportFile(o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->observations, 2u);
  obs = Spooled();
  ASSERT_EQ(obs.size(), 4u);  // Another time: other observations, not a replay.
  EXPECT_EQ(absl::FromUnixSeconds(obs[2].observed_at().seconds()), o.observed_at);
  EXPECT_EQ(absl::FromUnixSeconds(obs[3].observed_at().seconds()), o.observed_at);
}

TEST_F(ImportTest, FileNamedForAnotherLocationIsSkipped) {
  ImportOptions o = Named(2, Minute(absl::Now()));
  std::ofstream(o.file, std::ios::app) << "cheese,lots\n";  // Bad, but not ours.
  absl::StatusOr<ImportReport> report = ImportFile(o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->file_location, "store-2");
  EXPECT_EQ(report->other_location, 3u);
  EXPECT_TRUE(report->errors.empty());
  EXPECT_EQ(report->observations, 0u);
  EXPECT_TRUE(Spooled().empty());
}

TEST_F(ImportTest, NameThatDoesNotMatchIsAnErrorNamingTheFile) {
  ImportOptions o = Named(1, absl::Now());
  const std::string renamed = dir_ + "/prices.csv";
  std::filesystem::rename(o.file, renamed);
  o.file = renamed;
  absl::StatusOr<ImportReport> report = ImportFile(o);
  ASSERT_FALSE(report.ok());
  EXPECT_THAT(std::string(report.status().message()),
              HasSubstr("file 'prices.csv': the name does not match name_regex"));
  EXPECT_TRUE(Spooled().empty());
}

// An inspection export whose columns are named its own way, 40 days old:
// the mapping (or import's flags, SetMappingFlag) names the time and
// critical columns, and its max_lateness is what the agent judges by.
class ImportLatenessTest : public ImportTest {
 protected:
  ImportLatenessTest() { max_requested_lateness_ = absl::Hours(24 * 400); }

  ImportOptions Inspections(absl::Time at) {
    ImportOptions o;
    o.file = absl::StrCat(dir_, "/inspections.csv");
    const std::string when = absl::FormatTime("%Y-%m-%d", at, absl::UTCTimeZone());
    std::ofstream(o.file) << "Inspected On,Check,Outcome,Is Critical\n"
                          << when << ",fridge-temp,fail,yes\n"
                          << when << ",floor-clean,pass,no\n";
    o.location = "store-1";
    o.agent = {"127.0.0.1", http_->port()};
    // As `import --records=compliance --key_column=Check ...` sets them.
    const std::pair<const char*, const char*> flags[] = {
        {"records", "compliance"},         {"key_column", "Check"},
        {"value_column", "Outcome"},       {"observed_at_column", "Inspected On"},
        {"time_format", "%Y-%m-%d"},       {"critical_column", "Is Critical"},
    };
    for (const auto& [name, value] : flags) {
      EXPECT_TRUE(SetMappingFlag(name, value, &o.mapping).ok()) << name;
    }
    EXPECT_TRUE(ValidateInputMapping(o.mapping).ok());
    return o;
  }
};

TEST_F(ImportLatenessTest, ColumnsNamedOtherwiseAndTheMappingsLatenessAreHonoured) {
  const absl::Time day = absl::FromCivil(
      absl::CivilDay(absl::ToCivilDay(absl::Now() - absl::Hours(24 * 40), absl::UTCTimeZone())),
      absl::UTCTimeZone());
  // Without max_lateness, 40 days is past the default week: refused.
  ImportOptions o = Inspections(day);
  absl::StatusOr<ImportReport> report = ImportFile(o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->observations, 0u);
  ASSERT_EQ(report->errors.size(), 2u);
  EXPECT_THAT(report->errors[0], HasSubstr("inspections.csv:2"));
  EXPECT_TRUE(Spooled().empty());

  // --max_lateness=60d: parsed and sent at the mapping's lateness, and the
  // agent, which allows files 400 days, stores both with their own times.
  ASSERT_TRUE(SetMappingFlag("max_lateness", "60d", &o.mapping).ok());
  report = ImportFile(o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->errors.empty()) << report->errors[0];
  EXPECT_EQ(report->observations, 2u);
  std::vector<v1::Observation> obs = Spooled();
  ASSERT_EQ(obs.size(), 2u);
  EXPECT_EQ(obs[0].key(), "fridge-temp");
  EXPECT_EQ(absl::FromUnixSeconds(obs[0].observed_at().seconds()), day);
  EXPECT_TRUE(obs[0].check().critical());
  EXPECT_FALSE(obs[0].check().passed());
  EXPECT_FALSE(obs[1].check().critical());
}

TEST_F(ImportLatenessTest, LatenessBeyondWhatTheAgentAllowsIsRefusedSayingWhatToRaise) {
  ImportOptions o = Inspections(absl::Now() - absl::Hours(24 * 40));
  ASSERT_TRUE(SetMappingFlag("max_lateness", "500d", &o.mapping).ok());
  absl::StatusOr<ImportReport> report = ImportFile(o);
  ASSERT_FALSE(report.ok());
  EXPECT_THAT(std::string(report.status().message()),
              HasSubstr("Max-Lateness: 12000h is above what this agent accepts (9600h); raise "
                        "max_lateness of a drop_directory.files mapping"));
  EXPECT_TRUE(Spooled().empty());
}

TEST(SetMappingFlagTest, FlagsFollowTheFilesRules) {
  InputMapping m;
  EXPECT_TRUE(SetMappingFlag("critical_column", "Is Critical", &m).ok());
  EXPECT_EQ(m.critical_column, "Is Critical");
  EXPECT_TRUE(SetMappingFlag("delimiter", "tab", &m).ok());
  EXPECT_EQ(m.delimiter, '\t');
  EXPECT_EQ(SetMappingFlag("decimal", "x", &m).message(), "--decimal: 'x' must be '.' or ','");
  EXPECT_EQ(SetMappingFlag("max_lateness", "soon", &m).message(),
            "--max_lateness: 'soon' is not a duration (e.g. 90s, 1h30m, 168h, 365d)");
  EXPECT_THAT(std::string(SetMappingFlag("records", "prices", &m).message()),
              HasSubstr("--records: 'prices' is not one of: observation, price"));
  EXPECT_THAT(std::string(SetMappingFlag("colour", "red", &m).message()),
              HasSubstr("--colour: not a field of drop_directory.files"));
}

}  // namespace
}  // namespace constance::agent
