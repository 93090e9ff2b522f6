// Restarts are invisible to alerting: a collector restarted on its state
// directory under a running Prometheus (the shipped alert rules) serves the
// findings its snapshot restored from its first scrape, so no alert
// resolves and nobody is paged twice for one overcharge.
//
// The collector evaluates every 200 ms until an outlier fires; the
// restarted one evaluates once an hour, so every finding it serves during
// the test comes from the snapshot, none from a new evaluation. Then, over
// the whole run, at every step (1 s) Prometheus must show:
//   - no successful scrape of the restarted collector without the outlier
//     finding (`up == 1 unless on() constance_finding{...}` is empty);
//   - the ConstanceOutlier alert firing from its first firing to the end.
//
// Every process is started on loopback with an OS-chosen port (the
// restarted collector takes its predecessor's /metrics port, as a service
// restarted in place does) and stopped by the test; waiting is polling a
// condition with a deadline.
#include <signal.h>
#include <sys/wait.h>

#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/harness.h"

namespace constance::testing {
namespace {

constexpr int kStores = 8;
constexpr char kOutlier[] = R"(constance_finding{finding="outlier",location="store-03"})";

// Starts a collector on `dir` and returns it once ready.
std::unique_ptr<Subprocess> StartCollector(const TempDir& dir, const std::string& name,
                                           const std::string& metrics_listen,
                                           const std::string& evaluation_interval,
                                           std::map<std::string, std::string>* ready) {
  const std::string ready_file = dir.File(name + ".ready");
  auto p = std::make_unique<Subprocess>(
      std::vector<std::string>{BinDir() + "/constance-collector", "--insecure",
                               "--listen=127.0.0.1:0", "--metrics_listen=" + metrics_listen,
                               "--state_dir=" + dir.path(), "--stats_interval=100ms",
                               "--evaluation_interval=" + evaluation_interval,
                               "--snapshot_interval=1h", "--ready_file=" + ready_file},
      dir.File(name + ".log"));
  auto r = WaitForReadyFile(ready_file, *p, absl::Seconds(30));
  EXPECT_TRUE(r.ok()) << r.status();
  if (r.ok()) *ready = *r;
  return p;
}

// One price batch per store: store-03 overcharges coffee by 15%.
void SendPrices(const std::string& address) {
  auto stub = v1::Ingest::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  const google::protobuf::Timestamp now = google::protobuf::util::TimeUtil::GetCurrentTime();
  for (int i = 0; i < kStores; ++i) {
    v1::AgentMessage m;
    v1::Batch* b = m.mutable_batch();
    b->set_location(absl::StrFormat("store-%02d", i));
    b->set_incarnation(7);
    b->set_first_sequence(1);
    v1::Observation* o = b->add_observations();
    o->set_key("coffee-250g");
    *o->mutable_observed_at() = now;
    o->mutable_price()->set_minor_units(i == 3 ? 519 : 449);
    o->mutable_price()->set_currency("EUR");
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    auto stream = stub->Stream(&ctx);
    ASSERT_TRUE(stream->Write(m));
    v1::CollectorMessage reply;
    ASSERT_TRUE(stream->Read(&reply));
    EXPECT_EQ(reply.ack().outcome(), v1::Ack::APPLIED);
    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok());
  }
}

// The answer of a Prometheus query API call (`path` with its query).
absl::StatusOr<nlohmann::json> Api(const std::string& prometheus, const std::string& path) {
  absl::StatusOr<HttpResponse> r = HttpGet(prometheus, path);
  if (!r.ok()) return r.status();
  nlohmann::json answer = nlohmann::json::parse(r->body, nullptr, /*allow_exceptions=*/false);
  if (answer.is_discarded() || answer.value("status", "") != "success") {
    return absl::InternalError(absl::StrCat(path, ": ", r->body));
  }
  return answer["data"]["result"];
}

// How many series `expr` returns now.
size_t Count(const std::string& prometheus, const std::string& expr) {
  absl::StatusOr<nlohmann::json> r = Api(prometheus, "/api/v1/query?query=" + UrlEncode(expr));
  return r.ok() ? r->size() : 0;
}

// The steps (Unix seconds) of [from, to] at which `expr` returned anything.
std::vector<double> StepsWith(const std::string& prometheus, const std::string& expr,
                              absl::Time from, absl::Time to) {
  absl::StatusOr<nlohmann::json> r =
      Api(prometheus, absl::StrCat("/api/v1/query_range?query=", UrlEncode(expr),
                                   "&start=", absl::ToUnixSeconds(from),
                                   "&end=", absl::ToUnixSeconds(to), "&step=1"));
  EXPECT_TRUE(r.ok()) << r.status();
  std::vector<double> steps;
  if (!r.ok()) return steps;
  for (const nlohmann::json& series : *r) {
    for (const nlohmann::json& v : series["values"]) steps.push_back(v[0].get<double>());
  }
  return steps;
}

// Polls `condition` every 100 ms until it holds or `timeout` passes.
template <typename F>
bool WaitFor(F condition, absl::Duration timeout) {
  for (absl::Time deadline = absl::Now() + timeout; absl::Now() < deadline;) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return condition();
}

TEST(RestartAlertsTest, ARestartedCollectorServesItsFindingsFromTheFirstScrape) {
  TempDir dir;
  std::map<std::string, std::string> ready;
  std::unique_ptr<Subprocess> first =
      StartCollector(dir, "first", "127.0.0.1:0", "200ms", &ready);
  const std::string metrics = ready["metrics"];
  ASSERT_FALSE(metrics.empty());
  SendPrices(ready["grpc"]);
  ASSERT_TRUE(WaitFor(
      [&] {
        absl::StatusOr<HttpResponse> r = HttpGet(metrics, "/metrics");
        if (!r.ok()) return false;
        for (absl::string_view line : absl::StrSplit(r->body, '\n')) {
          if (absl::StartsWith(line, "constance_finding{") &&
              absl::StrContains(line, "finding=\"outlier\"") &&
              absl::StrContains(line, "location=\"store-03\"")) {
            return true;
          }
        }
        return false;
      },
      absl::Seconds(20)))
      << first->Log();

  // Prometheus with the shipped rules, `for:` at 0s, keep_firing_for as shipped.
  const std::string rules = dir.File("alert_rules.yml");
  CommandResult rendered = RunCommand(
      absl::StrCat(SourceDir(), "/deploy/prometheus/render-rules.sh 0s ", rules), "");
  ASSERT_EQ(rendered.exit_code, 0) << rendered.output;
  std::ofstream(dir.File("prometheus.yml"))
      << "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
      << "rule_files: [\"" << SourceDir() << "/deploy/prometheus/recording_rules.yml\", \""
      << rules << "\"]\n"
      << "scrape_configs:\n  - job_name: constance\n    static_configs: [{targets: [\""
      << metrics << "\"]}]\n";
  Subprocess prometheus({CONSTANCE_PROMETHEUS, "--config.file=" + dir.File("prometheus.yml"),
                         "--storage.tsdb.path=" + dir.File("tsdb"),
                         "--web.listen-address=127.0.0.1:0"},
                        dir.File("prometheus.log"));
  absl::StatusOr<std::string> prom = ListeningAddress(prometheus, absl::Seconds(60));
  ASSERT_TRUE(prom.ok()) << prom.status();
  const std::string firing = R"(ALERTS{alertname="ConstanceOutlier",alertstate="firing"})";
  ASSERT_TRUE(WaitFor([&] { return Count(*prom, firing) > 0; }, absl::Seconds(60)))
      << prometheus.Log();
  const absl::Time fired = absl::Now();

  // The restart: a clean stop (the snapshot), then a collector that will
  // not evaluate during the test, on the same state and /metrics address.
  absl::StatusOr<int> stopped = first->Stop(SIGTERM, absl::Seconds(15));
  ASSERT_TRUE(stopped.ok() && WIFEXITED(*stopped) && WEXITSTATUS(*stopped) == 0) << first->Log();
  std::unique_ptr<Subprocess> second = StartCollector(dir, "second", metrics, "1h", &ready);
  ASSERT_EQ(ready["metrics"], metrics) << second->Log();
  const absl::Time restarted = absl::Now();
  // Five successful scrapes of the restarted collector.
  ASSERT_TRUE(WaitFor(
      [&] {
        absl::StatusOr<nlohmann::json> r = Api(
            *prom, "/api/v1/query?query=" + UrlEncode(absl::StrCat(
                                                "sum_over_time(up{job=\"constance\"}[",
                                                1 + absl::ToInt64Seconds(absl::Now() - restarted),
                                                "s])")));
        if (!r.ok() || r->empty()) return false;
        double n = 0;
        return absl::SimpleAtod((*r)[0]["value"][1].get<std::string>(), &n) && n >= 5;
      },
      absl::Seconds(30)))
      << second->Log() << prometheus.Log();

  const absl::Time end = absl::Now();
  std::vector<double> missing = StepsWith(
      *prom, absl::StrCat(R"(up{job="constance"} == 1 unless on() )", kOutlier), restarted, end);
  EXPECT_TRUE(missing.empty()) << missing.size()
                               << " steps with a successful scrape and no outlier finding, "
                                  "the first at "
                               << (missing.empty() ? 0 : missing.front());
  // From the first whole second after the alert was seen firing.
  std::vector<double> resolved = StepsWith(*prom, absl::StrCat("absent(", firing, ")"),
                                           fired + absl::Seconds(1), end);
  EXPECT_TRUE(resolved.empty()) << resolved.size() << " steps with the alert not firing, the first at "
                                << (resolved.empty() ? 0 : resolved.front()) << " (fired "
                                << absl::ToUnixSeconds(fired) << ", restarted "
                                << absl::ToUnixSeconds(restarted) << ")";

  ASSERT_TRUE(second->Stop(SIGTERM, absl::Seconds(15)).ok());
  ASSERT_TRUE(prometheus.Stop(SIGTERM, absl::Seconds(15)).ok());
}

}  // namespace
}  // namespace constance::testing
