// The agent's inputs end to end with real processes on loopback: fixture
// exports dropped into a real agent's drop directory reach a real
// collector; an agent killed with SIGKILL in the middle of a large file
// neither loses nor doubles a line after its restart; SIGHUP reloads the
// drop directory; `constance-agent import` reports bad lines by number.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/sqlite_spool.h"
#include "constance/v1/query.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/harness.h"

namespace constance::testing {
namespace {

using ::testing::HasSubstr;

std::string Fixture(const std::string& name) {
  return ReadFile(std::string(CONSTANCE_SOURCE_DIR) + "/tests/data/agent/" + name);
}

// The fixtures were exported on 2026-11-20 and 21; moved to the two days
// before today so that they stay within the collector's lateness bound.
std::string Recent(const std::string& text) {
  const absl::Time now = absl::Now();
  auto day = [&](int back) {
    return absl::FormatTime("%Y-%m-%d", now - absl::Hours(24 * back), absl::UTCTimeZone());
  };
  return absl::StrReplaceAll(text, {{"2026-11-20", day(2)}, {"2026-11-21", day(1)}});
}

// The queue log's events moved so that its first is 20 minutes ago: waits
// are compared within the last hour only.
std::string RecentQueue(const std::string& text) {
  absl::Time first;
  std::string err;
  EXPECT_TRUE(absl::ParseTime(absl::RFC3339_full, "2026-11-20T09:00:00Z", &first, &err));
  const absl::Duration shift = absl::Now() - absl::Minutes(20) - first;
  std::string out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    absl::Time at;
    EXPECT_TRUE(absl::ParseTime(absl::RFC3339_full, j["at"].get<std::string>(), &at, &err));
    j["at"] = absl::FormatTime(absl::RFC3339_full, at + shift, absl::UTCTimeZone());
    absl::StrAppend(&out, j.dump(), "\n");
  }
  return out;
}

// Writes `text` under a temporary name and renames it into `dir`, as a
// careful exporter would (the agent copes with either way).
void Drop(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string tmp = dir + "/." + name + ".tmp";
  std::ofstream(tmp, std::ios::binary) << text;
  std::filesystem::rename(tmp, dir + "/" + name);
}

int64_t SpoolDepth(const std::string& http) {
  absl::StatusOr<HttpResponse> r = HttpGet(http, "/healthz");
  if (!r.ok() || r->status != 200) return -1;
  nlohmann::json j = nlohmann::json::parse(r->body, nullptr, false);
  if (!j.is_object() || !j.contains("spool_depth")) return -1;
  return j["spool_depth"].get<int64_t>();
}

constexpr char kMappings[] = R"(
  files:
    - pattern: "prices-*.csv"
      records: price_check
      encoding: windows-1250
      delimiter: ";"
      decimal: ","
      thousands: space
      key_column: Kód zboží
      shelf_column: Cena regál
      pos_column: Cena pokladna
      list_column: Ceník
      currency_column: Měna
      observed_at_column: Datum
    - pattern: "queue-*.jsonl"
      format: jsonl
      records: ticket
    - pattern: "checklist-*.jsonl"
      format: jsonl
      records: checklist
    - pattern: "*.csv"
      records: score
      key_column: key
      value_column: value
)";

class InputsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    drop_ = dir_.File("drop");
    ASSERT_EQ(mkdir(drop_.c_str(), 0750), 0);
  }

  // Writes the agent's config with a drop directory (or none).
  void WriteConfig(bool with_drop, const std::string& extra = "") {
    std::string yaml = absl::StrCat("location: store-a\ninsecure: true\n", extra);
    if (with_drop) {
      absl::StrAppend(&yaml, "drop_directory:\n  path: ", drop_,
                      "\n  poll_interval: 50ms\n  settle_time: 1s\n"
                      "  max_records_per_commit: 100\n",
                      kMappings);
    }
    std::ofstream(dir_.File("agent.yaml")) << yaml;
  }

  void StartAgent(const std::string& collector) {
    std::filesystem::remove(dir_.File("agent.ready"));
    agent_ = std::make_unique<Subprocess>(
        AgentArgs(dir_.File("agent.yaml"), collector, dir_.File("spool.db"),
                  dir_.File("agent.ready")),
        dir_.File(absl::StrCat("agent", ++agent_runs_, ".log")));
    auto ready = WaitForReadyFile(dir_.File("agent.ready"), *agent_, absl::Seconds(30));
    ASSERT_TRUE(ready.ok()) << ready.status();
    agent_ready_ = *ready;
  }

  void StartCollector() {
    std::ofstream(dir_.File("catalog.yaml")) << "families:\n"
                                                "  wait: {min_samples: 1}\n"
                                                "  compliance: {min_samples: 1}\n";
    collector_ = std::make_unique<Subprocess>(
        CollectorArgs(dir_.File("catalog.yaml"), dir_.File("collector.ready")),
        dir_.File("collector.log"));
    auto ready = WaitForReadyFile(dir_.File("collector.ready"), *collector_, absl::Seconds(30));
    ASSERT_TRUE(ready.ok()) << ready.status();
    collector_grpc_ = (*ready)["grpc"];
    query_ = v1::Query::NewStub(
        grpc::CreateChannel(collector_grpc_, grpc::InsecureChannelCredentials()));
  }

  uint64_t Applied() { return ObservationsApplied(collector_grpc_); }

  TempDir dir_;
  std::string drop_;
  std::unique_ptr<Subprocess> collector_;
  std::string collector_grpc_;
  std::unique_ptr<v1::Query::Stub> query_;
  std::unique_ptr<Subprocess> agent_;
  std::map<std::string, std::string> agent_ready_;
  int agent_runs_ = 0;
};

TEST_F(InputsTest, RealExportsReachTheCollector) {
  StartCollector();
  WriteConfig(true);
  StartAgent(collector_grpc_);
  Drop(drop_, "prices-cp1250.csv", Recent(Fixture("prices-cp1250.csv")));
  Drop(drop_, "queue-log.jsonl", RecentQueue(Fixture("queue-log.jsonl")));
  Drop(drop_, "checklist-batch.jsonl", Recent(Fixture("checklist-batch.jsonl")));
  // Prices: 4 rows x (shelf, POS, list, match) + beer (shelf, list); the ham
  // row is bad. Queue: 2 waits of checkout, 1 of pharmacy, 4 served checks.
  // Checklists: 2 + 3 + 2 items (n.a. skipped, the "maybe" line refused).
  const uint64_t expected = 18 + 7 + 7;
  // Every file read and everything read acknowledged: nothing more comes,
  // so the count is the whole count, not the count so far.
  EXPECT_TRUE(WaitFor(
      [&] {
        for (const char* f : {"prices-cp1250.csv", "queue-log.jsonl", "checklist-batch.jsonl"}) {
          if (!std::filesystem::exists(drop_ + "/processed/" + f)) return false;
        }
        return SpoolDepth(agent_ready_["http"]) == 0;
      },
      absl::Seconds(30)))
      << "agent log:\n"
      << agent_->Log();
  EXPECT_TRUE(WaitFor([&] { return Applied() >= expected; }, absl::Seconds(30)))
      << Applied() << " applied\nagent log:\n"
      << agent_->Log();
  EXPECT_EQ(Applied(), expected);

  auto detail = [&](v1::Family family, const std::string& key, v1::PriceKind kind,
                    const std::string& currency) {
    v1::KeyDetailRequest request;
    request.mutable_series()->set_family(family);
    request.mutable_series()->set_key(key);
    request.mutable_series()->set_kind(kind);
    request.mutable_series()->set_currency(currency);
    v1::KeyDetailResponse response;
    grpc::ClientContext ctx;
    grpc::Status s = query_->KeyDetail(&ctx, request, &response);
    EXPECT_TRUE(s.ok()) << key << ": " << s.error_message();
    return response;
  };
  // The chocolate's till price, read in Windows-1250 with a decimal comma.
  v1::KeyDetailResponse pos = detail(v1::FAMILY_PRICE, "EAN-8594001234568", v1::POS, "CZK");
  ASSERT_EQ(pos.values_size(), 1);
  EXPECT_DOUBLE_EQ(pos.values(0).value(), 4290);
  v1::KeyDetailResponse tv = detail(v1::FAMILY_PRICE, "EAN-8594001234570", v1::LIST, "CZK");
  ASSERT_EQ(tv.values_size(), 1);
  EXPECT_DOUBLE_EQ(tv.values(0).value(), 1349900);
  // Its mismatch, an overcharge: a failed check the collector counts.
  v1::KeyDetailResponse match = detail(v1::FAMILY_COMPLIANCE, "EAN-8594001234568.price_match",
                                       v1::PRICE_KIND_UNSPECIFIED, "");
  ASSERT_EQ(match.values_size(), 1);
  EXPECT_DOUBLE_EQ(match.values(0).value(), 0);
  v1::KeyDetailResponse wait = detail(v1::FAMILY_WAIT, "checkout", v1::PRICE_KIND_UNSPECIFIED, "");
  ASSERT_EQ(wait.values_size(), 1);
  EXPECT_EQ(wait.values(0).samples(), 2u);

  // Bad lines are counted on the agent's /metrics; the files move aside.
  auto metrics = HttpGet(agent_ready_["metrics"], "/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_THAT(metrics->body, HasSubstr("constance_agent_input_records_rejected_total 3"));
  EXPECT_THAT(metrics->body, HasSubstr("constance_agent_open_tickets 2"));
  CommandResult check = RunCommand("promtool check metrics", metrics->body);
  EXPECT_EQ(check.exit_code, 0) << check.output;
  EXPECT_TRUE(
      WaitFor([&] { return std::filesystem::exists(drop_ + "/processed/checklist-batch.jsonl"); },
              absl::Seconds(10)));
  EXPECT_THAT(agent_->Log(), HasSubstr("prices-cp1250.csv:6: column 'Cena regál'"));
  EXPECT_THAT(agent_->Log(), HasSubstr("queue-log.jsonl:11: event 'teleported'"));
}

TEST_F(InputsTest, KilledInTheMiddleOfALargeFileNoLineLostOrDoubled) {
  constexpr int kLines = 60'000;
  // Nothing listens there: everything stays in the spool to be counted.
  const std::string nowhere = "127.0.0.1:1";
  WriteConfig(true);
  StartAgent(nowhere);
  std::string big = "key,value\n";
  for (int i = 1; i <= kLines; ++i) absl::StrAppend(&big, "k", i, ",", i, "\n");
  Drop(drop_, "big.csv", big);
  std::mt19937 rng(std::random_device{}());
  const int kill_at = std::uniform_int_distribution<int>(1000, kLines / 2)(rng);
  ASSERT_TRUE(
      WaitFor([&] { return SpoolDepth(agent_ready_["http"]) >= kill_at; }, absl::Seconds(60)))
      << agent_->Log();
  ASSERT_TRUE(agent_->Stop(SIGKILL, absl::Seconds(10)).ok());
  agent_.reset();
  StartAgent(nowhere);
  const int64_t after_restart = SpoolDepth(agent_ready_["http"]);
  SCOPED_TRACE(absl::StrCat("killed at depth >= ", kill_at, ", restarted at ", after_restart));
  EXPECT_LT(after_restart, kLines) << "the kill came after the whole file was read";
  EXPECT_TRUE(
      WaitFor([&] { return SpoolDepth(agent_ready_["http"]) >= kLines; }, absl::Seconds(120)));
  // Let a few more scans pass: nothing more may come.
  EXPECT_TRUE(WaitFor([&] { return std::filesystem::exists(drop_ + "/processed/big.csv"); },
                      absl::Seconds(30)));
  ASSERT_TRUE(agent_->Stop(SIGTERM, absl::Seconds(10)).ok());
  agent_.reset();

  absl::StatusOr<std::unique_ptr<agent::SqliteSpool>> spool =
      agent::SqliteSpool::Open(dir_.File("spool.db"), agent::SpoolOptions{});
  ASSERT_TRUE(spool.ok()) << spool.status();
  auto all = (*spool)->Read(1, kLines * 2);
  ASSERT_TRUE(all.ok());
  std::vector<int> seen(kLines + 1, 0);
  for (const agent::SpoolEntry& e : *all) {
    int i = 0;
    ASSERT_TRUE(absl::SimpleAtoi(e.observation.key().substr(1), &i)) << e.observation.key();
    ASSERT_TRUE(i >= 1 && i <= kLines);
    ++seen[i];
  }
  int lost = 0, doubled = 0;
  for (int i = 1; i <= kLines; ++i) {
    lost += seen[i] == 0;
    doubled += seen[i] > 1;
  }
  EXPECT_EQ(lost, 0);
  EXPECT_EQ(doubled, 0);
  EXPECT_EQ(all->size(), static_cast<size_t>(kLines));
}

TEST_F(InputsTest, SighupReloadsTheDropDirectoryAndKeepsAGoodConfigOnError) {
  WriteConfig(false);
  StartAgent("127.0.0.1:1");
  Drop(drop_, "scores.csv", "key,value\na,1\nb,2\n");
  // Enable the drop directory and change a field that needs a restart.
  WriteConfig(true, "max_batch: 7\n");
  ASSERT_EQ(kill(agent_->pid(), SIGHUP), 0);
  EXPECT_TRUE(WaitFor([&] { return SpoolDepth(agent_ready_["http"]) == 2; }, absl::Seconds(10)))
      << agent_->Log();
  EXPECT_TRUE(WaitFor(
      [&] {
        return absl::StrContains(agent_->Log(),
                                 "'max_batch' changed but takes effect only after a restart");
      },
      absl::Seconds(10)));
  // A bad file: refused with its error, the drop directory goes on.
  std::ofstream(dir_.File("agent.yaml")) << "location: store-a\ndrop_directory:\n  files: 3\n";
  ASSERT_EQ(kill(agent_->pid(), SIGHUP), 0);
  EXPECT_TRUE(WaitFor(
      [&] { return absl::StrContains(agent_->Log(), "config not reloaded, the old one stays"); },
      absl::Seconds(10)));
  EXPECT_THAT(agent_->Log(), HasSubstr("agent.yaml:3"));
  // A valid file whose folder does not exist: refused too.
  std::ofstream(dir_.File("agent.yaml"))
      << "location: store-a\ninsecure: true\ndrop_directory:\n  path: " << dir_.File("nowhere")
      << "\n"
      << kMappings;
  ASSERT_EQ(kill(agent_->pid(), SIGHUP), 0);
  EXPECT_TRUE(
      WaitFor([&] { return absl::StrContains(agent_->Log(), "is not an existing directory"); },
              absl::Seconds(10)));
  Drop(drop_, "more.csv", "key,value\nc,3\n");
  EXPECT_TRUE(WaitFor([&] { return SpoolDepth(agent_ready_["http"]) == 3; }, absl::Seconds(10)))
      << agent_->Log();
  // Still serving on its first address.
  EXPECT_GE(SpoolDepth(agent_ready_["http"]), 0);
}

TEST_F(InputsTest, ImportReportsBadLinesAndIsIdempotent) {
  WriteConfig(true);
  StartAgent("127.0.0.1:1");
  const std::string prices = dir_.File("prices-export.csv");
  std::ofstream(prices, std::ios::binary) << Recent(Fixture("prices-cp1250.csv"));
  const std::string import =
      absl::StrCat(BinDir(), "/constance-agent import ", prices,
                   " --config=", dir_.File("agent.yaml"), " --agent=http://", agent_ready_["http"]);
  CommandResult r = RunCommand(import, "");
  EXPECT_EQ(r.exit_code, 1) << r.output;  // One bad line.
  EXPECT_THAT(r.output, HasSubstr("prices-export.csv:6: column 'Cena regál'"));
  EXPECT_THAT(r.output, HasSubstr("18 observations"));
  EXPECT_EQ(SpoolDepth(agent_ready_["http"]), 18);
  // Run again: acknowledged again, stored once.
  r = RunCommand(import, "");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(SpoolDepth(agent_ready_["http"]), 18);

  const std::string clean = dir_.File("waits.csv");
  std::ofstream(clean) << "service;seconds\ncheckout;95,5\ndrive-thru;240\n";
  r = RunCommand(absl::StrCat(BinDir(), "/constance-agent import ", clean,
                              " --records=wait --delimiter=';' --decimal=, --key_column=service"
                              " --value_column=seconds --agent=http://",
                              agent_ready_["http"]),
                 "");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(SpoolDepth(agent_ready_["http"]), 20);
  // A queue log: events go to /v1/tickets and become waits on the agent.
  const std::string queue = dir_.File("queue-export.jsonl");
  std::ofstream(queue) << RecentQueue(Fixture("queue-log.jsonl"));
  r = RunCommand(
      absl::StrCat(BinDir(), "/constance-agent import ", queue,
                   " --format=jsonl --records=ticket --agent=http://", agent_ready_["http"]),
      "");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("queue-export.jsonl:11: event 'teleported'"));
  EXPECT_THAT(r.output, HasSubstr("11 queue events stored"));
  EXPECT_EQ(SpoolDepth(agent_ready_["http"]), 27);
  // A usage error names what is missing.
  r = RunCommand(absl::StrCat(BinDir(), "/constance-agent import ", clean, " --records=wait"), "");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("key_column"));
  // --observed_at is applied (import_test) or refused, never ignored.
  r = RunCommand(absl::StrCat(BinDir(), "/constance-agent import ", clean,
                              " --records=wait --delimiter=';' --decimal=, --key_column=service"
                              " --value_column=seconds --observed_at=yesterday --agent=http://",
                              agent_ready_["http"]),
                 "");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("import: --observed_at: 'yesterday' is not a time in format "
                                  "RFC 3339"));
  EXPECT_EQ(SpoolDepth(agent_ready_["http"]), 27);
  // An inspection export with columns of its own names, read through the
  // same column flags as a drop_directory mapping, with its max_lateness.
  const std::string inspections = dir_.File("inspections.csv");
  const auto stamp = [](absl::Duration ago) {
    return absl::FormatTime("%Y-%m-%d %H:%M", absl::Now() - ago, absl::UTCTimeZone());
  };
  std::ofstream(inspections) << "Visited,Check,Outcome,Critical?\n"
                             << stamp(absl::Hours(1)) << ",fridge-temp,fail,yes\n"
                             << stamp(absl::Hours(3)) << ",floor-clean,pass,no\n";
  const std::string inspect = absl::StrCat(
      BinDir(), "/constance-agent import ", inspections,
      " --records=compliance --key_column=Check --value_column=Outcome",
      " --observed_at_column=Visited '--time_format=%Y-%m-%d %H:%M' '--critical_column=Critical?'",
      " --agent=http://", agent_ready_["http"]);
  r = RunCommand(absl::StrCat(inspect, " --max_lateness=2h"), "");
  EXPECT_EQ(r.exit_code, 1) << r.output;  // The 3-hour-old row is past 2h.
  EXPECT_THAT(r.output, HasSubstr("inspections.csv:3: "));
  EXPECT_THAT(r.output, HasSubstr("older than the lateness bound of 2h"));
  EXPECT_EQ(SpoolDepth(agent_ready_["http"]), 28);
  r = RunCommand(inspect, "");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  // Another lateness is another import (its own idempotency keys): both rows.
  EXPECT_EQ(SpoolDepth(agent_ready_["http"]), 30);
  // A flag is checked by its file key's rule.
  r = RunCommand(absl::StrCat(inspect, " --max_lateness=soon"), "");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--max_lateness: 'soon' is not a duration"));
}

}  // namespace
}  // namespace constance::testing
