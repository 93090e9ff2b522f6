// End to end on loopback: a real collector and three real agent processes,
// observations posted to the agents over HTTP, answers read back through the
// collector's Query API and /metrics, both expositions checked by promtool.
#include <signal.h>
#include <sys/wait.h>

#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "constance/v1/query.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"

namespace constance::testing {
namespace {

using ::testing::HasSubstr;

struct Agent {
  std::string location;
  std::unique_ptr<Subprocess> process;
  std::map<std::string, std::string> ready;
};

class ChainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A catalog that compares every family from its first sample, so three
    // stores with a handful of observations each are enough.
    std::ofstream(dir_.File("catalog.yaml")) << "families:\n"
                                                "  wait: {min_samples: 1}\n"
                                                "  compliance: {min_samples: 1}\n";
    // Its ticks on two threads: the statistics read back are recomputed
    // as a collector with cores to spare is run.
    collector_ = std::make_unique<Subprocess>(
        CollectorArgs(dir_.File("catalog.yaml"), dir_.File("collector.ready"),
                      {"--evaluation_threads=2"}),
        dir_.File("collector.log"));
    auto ready = WaitForReadyFile(dir_.File("collector.ready"), *collector_, absl::Seconds(30));
    ASSERT_TRUE(ready.ok()) << ready.status();
    collector_ready_ = *ready;
    ASSERT_TRUE(collector_ready_.count("grpc") && collector_ready_.count("metrics"));

    for (const char* location : {"store-a", "store-b", "store-c"}) {
      Agent agent;
      agent.location = location;
      std::string ready_file = dir_.File(absl::StrCat(location, ".ready"));
      agent.process = std::make_unique<Subprocess>(
          std::vector<std::string>{
              BinDir() + "/constance-agent", "run", absl::StrCat("--location=", location),
              "--collector=" + collector_ready_["grpc"], "--insecure", "--listen=127.0.0.1:0",
              "--metrics_listen=127.0.0.1:0", "--ready_file=" + ready_file},
          dir_.File(absl::StrCat(location, ".log")));
      auto agent_ready = WaitForReadyFile(ready_file, *agent.process, absl::Seconds(30));
      ASSERT_TRUE(agent_ready.ok()) << agent_ready.status();
      agent.ready = *agent_ready;
      agents_.push_back(std::move(agent));
    }
    auto channel =
        grpc::CreateChannel(collector_ready_["grpc"], grpc::InsecureChannelCredentials());
    query_ = v1::Query::NewStub(channel);
  }

  void TearDown() override {
    // Every process this test started is stopped here, agents first so
    // they can drain; a clean shutdown exits 0.
    for (Agent& agent : agents_) {
      auto status = agent.process->Stop(SIGTERM, absl::Seconds(15));
      EXPECT_TRUE(status.ok()) << agent.location << ": " << status.status();
      if (status.ok()) {
        EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
            << agent.location << " exit status " << *status << "\n"
            << agent.process->Log();
      }
    }
    if (collector_) {
      auto status = collector_->Stop(SIGTERM, absl::Seconds(15));
      EXPECT_TRUE(status.ok()) << status.status();
      if (status.ok()) {
        EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
            << "collector exit status " << *status << "\n"
            << collector_->Log();
      }
    }
  }

  // Posts `body` to the agent's local ingest and returns the response.
  HttpResponse Post(int agent, const std::string& body) {
    auto r = HttpPost(agents_[agent].ready["http"], "/v1/observations", body);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : HttpResponse{};
  }

  // Waits until the collector's statistics cover `applied` observations.
  v1::ChainSummaryResponse WaitForApplied(uint64_t applied) {
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    v1::ChainSummaryResponse summary;
    while (absl::Now() < deadline) {
      grpc::ClientContext ctx;
      summary.Clear();
      grpc::Status s = query_->ChainSummary(&ctx, v1::ChainSummaryRequest(), &summary);
      EXPECT_TRUE(s.ok()) << s.error_message();
      if (summary.observations_applied() >= applied) return summary;
      absl::SleepFor(absl::Milliseconds(20));
    }
    ADD_FAILURE() << "statistics cover " << summary.observations_applied() << " of " << applied
                  << " observations after 30s\ncollector log:\n"
                  << collector_->Log();
    return summary;
  }

  TempDir dir_;
  std::unique_ptr<Subprocess> collector_;
  std::map<std::string, std::string> collector_ready_;
  std::vector<Agent> agents_;
  std::unique_ptr<v1::Query::Stub> query_;
};

const v1::GroupStats* FindSeries(const v1::ChainSummaryResponse& s, v1::Family family,
                                 const std::string& key) {
  for (const auto& g : s.series()) {
    if (g.series().family() == family && g.series().key() == key) return &g;
  }
  return nullptr;
}

TEST_F(ChainTest, ObservationsPostedToAgentsReachTheCollectorsStatistics) {
  // Prices in minor units: 1.39, 1.39, 1.59 EUR.
  const int prices[] = {139, 139, 159};
  // Waits per store: a = {100, 200, 300} (p50 200), b = {120}, c = {300, 300}.
  const std::vector<std::vector<int>> waits = {{100, 200, 300}, {120}, {300, 300}};
  uint64_t sent = 0;
  for (int i = 0; i < 3; ++i) {
    std::string body = absl::StrCat(R"([{"key":"sku-1","price":{"minor_units":)", prices[i],
                                    R"(,"currency":"EUR"}})");
    for (int w : waits[i]) absl::StrAppend(&body, R"(,{"key":"checkout","wait_seconds":)", w, "}");
    absl::StrAppend(&body, "]");
    HttpResponse r = Post(i, body);
    EXPECT_EQ(r.status, 200) << r.body;
    sent += 1 + waits[i].size();
  }
  // One object alone, and a mixed array whose bad item is refused while
  // the good one is kept.
  EXPECT_EQ(Post(0, R"({"key":"fridge-temp","check":{"passed":true}})").status, 200);
  ++sent;
  HttpResponse mixed = Post(
      1,
      R"([{"key":"fridge-temp","check":{"passed":false}},{"key":"checkout","wait_seconds":-5}])");
  EXPECT_EQ(mixed.status, 400);
  EXPECT_THAT(mixed.body, HasSubstr("wait_seconds"));
  EXPECT_THAT(mixed.body, HasSubstr(R"("accepted":1)"));
  ++sent;

  v1::ChainSummaryResponse summary = WaitForApplied(sent);
  EXPECT_EQ(summary.observations_applied(), sent);
  EXPECT_EQ(summary.locations(), 3u);

  const v1::GroupStats* price = FindSeries(summary, v1::FAMILY_PRICE, "sku-1");
  ASSERT_NE(price, nullptr);
  EXPECT_EQ(price->series().currency(), "EUR");
  EXPECT_EQ(price->n(), 3u);
  EXPECT_DOUBLE_EQ(price->median(), 139);
  EXPECT_DOUBLE_EQ(price->mean(), (139.0 + 139 + 159) / 3);
  EXPECT_DOUBLE_EQ(price->min(), 139);
  EXPECT_DOUBLE_EQ(price->max(), 159);
  EXPECT_DOUBLE_EQ(price->mad(), 0);

  const v1::GroupStats* wait = FindSeries(summary, v1::FAMILY_WAIT, "checkout");
  ASSERT_NE(wait, nullptr);
  EXPECT_EQ(wait->n(), 3u);
  // Per-store comparable waits are the p50s 200, 120, 300 (from the sketch,
  // within 1%): median 200, MAD median{0, 80, 100} = 80.
  EXPECT_NEAR(wait->median(), 200, 2);
  EXPECT_NEAR(wait->mad(), 80, 4);
  // Three locations are fewer than the minimum group: nobody is an outlier.
  EXPECT_EQ(summary.outliers_size(), 0);

  v1::KeyDetailRequest request;
  request.mutable_series()->set_family(v1::FAMILY_PRICE);
  request.mutable_series()->set_key("sku-1");
  request.mutable_series()->set_currency("EUR");
  request.mutable_series()->set_kind(v1::SHELF);
  v1::KeyDetailResponse detail;
  grpc::ClientContext ctx;
  ASSERT_TRUE(query_->KeyDetail(&ctx, request, &detail).ok());
  ASSERT_EQ(detail.values_size(), 3);
  EXPECT_EQ(detail.values(2).location(), "store-c");
  EXPECT_DOUBLE_EQ(detail.values(2).value(), 159);

  // The collector's and an agent's expositions are promtool-clean.
  auto metrics = HttpGet(collector_ready_["metrics"], "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_THAT(metrics->body,
              HasSubstr(absl::StrCat("constance_observations_applied_total ", sent)));
  CommandResult check = RunCommand("promtool check metrics", metrics->body);
  EXPECT_EQ(check.exit_code, 0) << check.output;
  EXPECT_EQ(check.output, "") << "promtool on the collector's /metrics";
  // The collector's metrics server serves that one path, and says so.
  auto elsewhere = HttpGet(collector_ready_["metrics"], "/metric");
  ASSERT_TRUE(elsewhere.ok()) << elsewhere.status();
  EXPECT_EQ(elsewhere->status, 404);
  EXPECT_THAT(elsewhere->body, HasSubstr("GET /metrics"));
  auto posted = HttpPost(collector_ready_["metrics"], "/metrics", "{}");
  ASSERT_TRUE(posted.ok()) << posted.status();
  EXPECT_EQ(posted->status, 405);

  auto agent_metrics = HttpGet(agents_[0].ready["metrics"], "/metrics");
  ASSERT_TRUE(agent_metrics.ok()) << agent_metrics.status();
  EXPECT_THAT(agent_metrics->body, HasSubstr("constance_agent_observations_accepted_total"));
  check = RunCommand("promtool check metrics", agent_metrics->body);
  EXPECT_EQ(check.exit_code, 0) << check.output;
  EXPECT_EQ(check.output, "") << "promtool on an agent's /metrics";
}

TEST_F(ChainTest, UnknownSeriesIsNotFound) {
  v1::KeyDetailRequest request;
  request.mutable_series()->set_family(v1::FAMILY_WAIT);
  request.mutable_series()->set_key("no-such-service");
  v1::KeyDetailResponse detail;
  grpc::ClientContext ctx;
  grpc::Status s = query_->KeyDetail(&ctx, request, &detail);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("no-such-service"));
}

}  // namespace
}  // namespace constance::testing
