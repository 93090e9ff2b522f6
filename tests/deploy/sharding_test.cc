// Scale-out end to end (deploy/SCALING.md): two collectors each holding
// half of a chain's locations, a third holding all of them, the same
// observations sent to both sides over gRPC, and a real Prometheus
// scraping all three with deploy/prometheus/sharding_rules.yml. The
// chain-wide figures the rules compute from the two shards must match what
// the single collector computes itself: the mean within 1e-9 (relative),
// the population stddev within 1e-6, and the wait quantiles within the
// catalog's sketch accuracy (1%).
//
// 41 locations, so that the p10, median and p90 the collector computes
// (linear interpolation between order statistics at h = 0.1 * 40, 0.5 * 40,
// 0.9 * 40, all integers) are exact order statistics, and the ones
// histogram_quantile targets (ranks 4.1, 20.5 and 36.9 of 41) are the same
// ones: the comparison then measures only the bucket error, which the
// buckets' bounds keep within 1%.
//
// Every process is started on loopback with an OS-chosen port and stopped
// by the test; waiting is polling a condition with a deadline.
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

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

constexpr int kLocations = 41;
constexpr double kSketchAccuracy = 0.01;  // The catalog's wait accuracy (the default).

// One compared series and the labels Prometheus shows for it (empty
// labels are absent there).
struct Series {
  const char* family;
  const char* key;
  const char* currency;
  const char* price_kind;
};
const Series kSeries[] = {
    {"price", "coffee-250g", "EUR", "shelf"},  // Reference: the list price, 449.
    {"price", "tea-100g", "EUR", "shelf"},     // No promise: reference 0.
    {"wait", "checkout", "", ""},              // Reference: the promised 300 s.
    {"wait", "pharmacy", "", ""},              // No promise: reference 0.
    {"score", "inspection", "", ""},
    {"compliance", "fridge-temp", "", ""},  // Reference 1 (no promise).
};

std::string Location(int i) { return absl::StrFormat("store-%02d", i); }

// Every observation of location `i`: deterministic values spread enough
// for a non-trivial dispersion.
v1::Batch BatchOf(int i) {
  v1::Batch b;
  b.set_location(Location(i));
  b.set_incarnation(7);
  b.set_first_sequence(1);
  const google::protobuf::Timestamp now = google::protobuf::util::TimeUtil::GetCurrentTime();
  auto add = [&](const std::string& key) {
    v1::Observation* o = b.add_observations();
    o->set_key(key);
    *o->mutable_observed_at() = now;
    return o;
  };
  auto price = [&](const std::string& key, int64_t minor_units) {
    v1::Price* p = add(key)->mutable_price();
    p->set_minor_units(minor_units);
    p->set_currency("EUR");
    p->set_kind(v1::SHELF);
  };
  price("coffee-250g", 449 + (i * 37) % 23 - 11);
  price("tea-100g", 12990 + ((i * 53) % 41) * 10);
  // Three tickets: the location's comparable wait is their sketched p50.
  for (double extra : {0.0, 17.5, 41.25}) {
    add("checkout")->set_wait_seconds(60 + (i * 29) % 240 + extra);
  }
  add("pharmacy")->set_wait_seconds(200 + ((i * 17) % 50) * 13.3);
  add("inspection")->set_score(80 + (i % 9) * 2.25);
  for (int c = 0; c < 4; ++c) add("fridge-temp")->mutable_check()->set_passed(c != 0 || i % 5 != 0);
  return b;
}

// Sends each batch on its own stream and expects every observation applied.
void Send(const std::string& address, const std::vector<v1::Batch>& batches) {
  auto stub = v1::Ingest::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  for (const v1::Batch& batch : batches) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    auto stream = stub->Stream(&ctx);
    v1::AgentMessage m;
    *m.mutable_batch() = batch;
    ASSERT_TRUE(stream->Write(m)) << batch.location();
    v1::CollectorMessage reply;
    bool acked = false;
    while (!acked && stream->Read(&reply)) {
      if (!reply.has_ack()) continue;
      acked = true;
      EXPECT_EQ(reply.ack().outcome(), v1::Ack::APPLIED) << batch.location();
      EXPECT_EQ(reply.ack().watermark(), static_cast<uint64_t>(batch.observations_size()));
      EXPECT_EQ(reply.ack().rejections_size(), 0) << reply.ack().DebugString();
    }
    ASSERT_TRUE(acked) << "no ack for " << batch.location();
    stream->WritesDone();
    ctx.TryCancel();
    (void)stream->Finish();
  }
}

struct Running {
  std::unique_ptr<Subprocess> process;
  std::map<std::string, std::string> ready;
};

// Stops a process the test started and expects a clean exit.
void StopCleanly(Subprocess& p, const std::string& name) {
  absl::StatusOr<int> status = p.Stop(SIGTERM, absl::Seconds(15));
  ASSERT_TRUE(status.ok()) << name << ": " << status.status();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
      << name << " exit status " << *status << "\n"
      << p.Log();
}

// An instant query's answer, by "job family key currency price_kind".
using Samples = std::map<std::string, double>;

std::string SampleKey(const std::string& job, const Series& s) {
  return absl::StrCat(job, " ", s.family, " ", s.key, " ", s.currency, " ", s.price_kind);
}

// An instant query evaluated at `at` (Unix seconds), so that several
// queries read the same rule evaluation and the same scrapes.
absl::StatusOr<Samples> Query(const std::string& prometheus, const std::string& expr,
                              const std::string& at) {
  absl::StatusOr<HttpResponse> r =
      HttpGet(prometheus, "/api/v1/query?query=" + UrlEncode(expr) + "&time=" + at);
  if (!r.ok()) return r.status();
  nlohmann::json answer = nlohmann::json::parse(r->body, nullptr, /*allow_exceptions=*/false);
  if (answer.is_discarded() || answer.value("status", "") != "success") {
    return absl::InternalError(absl::StrCat(expr, ": ", r->body));
  }
  Samples out;
  for (const nlohmann::json& sample : answer["data"]["result"]) {
    const nlohmann::json& m = sample["metric"];
    auto label = [&](const char* name) { return m.value(name, std::string()); };
    double value = 0;
    if (!absl::SimpleAtod(sample["value"][1].get<std::string>(), &value)) {
      return absl::InternalError(absl::StrCat(expr, ": bad value in ", r->body));
    }
    out[absl::StrCat(label("job"), " ", label("family"), " ", label("key"), " ", label("currency"),
                     " ", label("price_kind"))] = value;
  }
  return out;
}

double RelativeError(double got, double want) {
  return std::fabs(got - want) / std::max(std::fabs(want), 1e-300);
}

TEST(ShardingTest, TwoShardsMergeToWhatOneCollectorHoldingEveryLocationComputes) {
  const std::string prometheus_bin = CONSTANCE_PROMETHEUS;
  TempDir dir;
  std::ofstream(dir.File("catalog.yaml"))
      << "families:\n"
         "  wait: {min_samples: 1}\n"
         "  compliance: {min_samples: 1}\n"
         "promises:\n"
         "  prices:\n"
         "    - {key: coffee-250g, currency: EUR, kind: shelf, list: \"4.49\"}\n"
         "  waits:\n"
         "    - {key: checkout, within_seconds: 300, share: 0.9}\n";

  std::map<std::string, Running> collectors;
  for (const char* name : {"shard-a", "shard-b", "single"}) {
    Running& c = collectors[name];
    const std::string ready = dir.File(absl::StrCat(name, ".ready"));
    c.process = std::make_unique<Subprocess>(
        std::vector<std::string>{BinDir() + "/constance-collector", "--insecure",
                                 "--catalog=" + dir.File("catalog.yaml"), "--listen=127.0.0.1:0",
                                 "--metrics_listen=127.0.0.1:0", "--stats_interval=100ms",
                                 "--ready_file=" + ready},
        dir.File(absl::StrCat(name, ".log")));
    absl::StatusOr<std::map<std::string, std::string>> values =
        WaitForReadyFile(ready, *c.process, absl::Seconds(30));
    ASSERT_TRUE(values.ok()) << name << ": " << values.status();
    c.ready = *values;
  }

  // Even locations report to shard a (21 of them), odd ones to shard b (20);
  // the single collector gets every batch.
  std::vector<v1::Batch> a, b, all;
  for (int i = 0; i < kLocations; ++i) {
    all.push_back(BatchOf(i));
    (i % 2 == 0 ? a : b).push_back(all.back());
  }
  Send(collectors["shard-a"].ready["grpc"], a);
  Send(collectors["shard-b"].ready["grpc"], b);
  Send(collectors["single"].ready["grpc"], all);
  ASSERT_FALSE(::testing::Test::HasFailure());

  // A shard's exposition, with the mergeable statistics, is promtool-clean.
  absl::StatusOr<HttpResponse> exposition =
      HttpGet(collectors["shard-a"].ready["metrics"], "/metrics");
  ASSERT_TRUE(exposition.ok()) << exposition.status();
  CommandResult check = RunCommand(CONSTANCE_PROMTOOL " check metrics", exposition->body);
  EXPECT_EQ(check.exit_code, 0) << check.output;
  EXPECT_EQ(check.output, "") << "promtool on a shard's /metrics";

  // Prometheus: job "shards" scrapes the two shards (told apart by a
  // `shard` target label), job "single" the third; the rules keep jobs apart.
  std::ofstream(dir.File("prometheus.yml"))
      << "global: {scrape_interval: 2s, scrape_timeout: 2s, evaluation_interval: 1s}\n"
      << "rule_files: [\"" << SourceDir() << "/deploy/prometheus/sharding_rules.yml\"]\n"
      << "scrape_configs:\n"
      << "  - job_name: shards\n"
      << "    static_configs:\n"
      << "      - {targets: [\"" << collectors["shard-a"].ready["metrics"]
      << "\"], labels: {shard: a}}\n"
      << "      - {targets: [\"" << collectors["shard-b"].ready["metrics"]
      << "\"], labels: {shard: b}}\n"
      << "  - job_name: single\n"
      << "    static_configs: [{targets: [\"" << collectors["single"].ready["metrics"] << "\"]}]\n";
  Subprocess prometheus(
      {prometheus_bin, "--config.file=" + dir.File("prometheus.yml"),
       "--storage.tsdb.path=" + dir.File("tsdb"), "--web.listen-address=127.0.0.1:0"},
      dir.File("prometheus.log"));
  absl::StatusOr<std::string> prom = ListeningAddress(prometheus, absl::Seconds(60));
  ASSERT_TRUE(prom.ok()) << prom.status();

  const std::string kLevel = "family_key_currency_price_kind:";
  // Ready when both jobs' merged figures cover every location of every
  // series, and the single collector's own statistics too.
  Samples n, single_n;
  const absl::Time deadline = absl::Now() + absl::Seconds(90);
  bool ready = false;
  // Every figure is read at one instant, at which the readiness held: a
  // scrape that times out on a loaded machine makes that shard's series
  // stale for a moment, and a later instant could mix in a rule
  // evaluation over one shard only.
  std::string at;
  while (!ready && absl::Now() < deadline) {
    // Far enough back that every scrape and rule evaluation stamped at or
    // before it has finished (scrapes time out after 2 s).
    at = absl::StrFormat("%.3f",
                         absl::ToDoubleSeconds(absl::Now() - absl::Seconds(3) - absl::UnixEpoch()));
    absl::StatusOr<Samples> merged_n =
        Query(*prom, kLevel + "constance_series_mergeable_locations:sum", at);
    absl::StatusOr<Samples> own_n =
        Query(*prom, "constance_series_locations{job=\"single\",group=\"chain\"}", at);
    absl::StatusOr<Samples> median = Query(*prom, kLevel + "constance_series_median:merged", at);
    ready = merged_n.ok() && own_n.ok() && median.ok();
    for (const Series& s : kSeries) {
      if (!ready) break;
      for (const char* job : {"shards", "single"}) {
        ready = ready && merged_n->count(SampleKey(job, s)) &&
                merged_n->at(SampleKey(job, s)) == kLocations;
        if (std::string(s.family) == "wait") ready = ready && median->count(SampleKey(job, s));
      }
      ready = ready && own_n->count(SampleKey("single", s)) &&
              own_n->at(SampleKey("single", s)) == kLocations;
    }
    if (!ready) absl::SleepFor(absl::Milliseconds(250));  // Polling, with a deadline.
  }
  ASSERT_TRUE(ready) << "the chain-wide figures did not cover " << kLocations
                     << " locations within 90 s\nprometheus log:\n"
                     << prometheus.Log();

  // Each shard holds its half only.
  for (auto [shard, locations] : {std::pair{"a", 21.0}, std::pair{"b", 20.0}}) {
    absl::StatusOr<Samples> held =
        Query(*prom,
              absl::StrCat("constance_series_mergeable_locations{job=\"shards\",shard=\"", shard,
                           "\",key=\"checkout\"}"),
              at);
    ASSERT_TRUE(held.ok()) << held.status();
    ASSERT_EQ(held->size(), 1u) << shard;
    EXPECT_EQ(held->begin()->second, locations) << shard;
  }

  // Mean and stddev: the shards' merged figures against the single
  // collector's own (two-pass, exact) statistics of the chain group.
  struct Compared {
    std::string merged;  // Recording rule over the shards.
    std::string own;     // The single collector's own metric.
    double tolerance;    // Relative.
    bool waits_only;
  };
  const Compared kCompared[] = {
      {"constance_series_mean:merged", "constance_series_mean", 1e-9, false},
      {"constance_series_stddev:merged", "constance_series_stddev", 1e-6, false},
      // histogram_quantile over buckets (l, u], u <= 1.01 l, holding the
      // exact value: within the sketch's accuracy.
      {"constance_series_p10:merged", "constance_series_p10", kSketchAccuracy, true},
      {"constance_series_median:merged", "constance_series_median", kSketchAccuracy, true},
      {"constance_series_p90:merged", "constance_series_p90", kSketchAccuracy, true},
  };
  for (const Compared& c : kCompared) {
    absl::StatusOr<Samples> merged = Query(*prom, kLevel + c.merged, at);
    absl::StatusOr<Samples> own = Query(*prom, c.own + "{job=\"single\",group=\"chain\"}", at);
    ASSERT_TRUE(merged.ok()) << merged.status();
    ASSERT_TRUE(own.ok()) << own.status();
    for (const Series& s : kSeries) {
      if (c.waits_only && std::string(s.family) != "wait") continue;
      SCOPED_TRACE(absl::StrCat(c.merged, " ", s.family, " ", s.key));
      ASSERT_TRUE(merged->count(SampleKey("shards", s)));
      ASSERT_TRUE(own->count(SampleKey("single", s)));
      const double got = merged->at(SampleKey("shards", s));
      const double want = own->at(SampleKey("single", s));
      EXPECT_LE(RelativeError(got, want), c.tolerance) << "merged " << got << ", single " << want;
      std::printf("%-32s %-11s %-12s merged %-22.17g single %-22.17g relative error %.2e\n",
                  c.merged.c_str(), s.family, s.key, got, want, RelativeError(got, want));
      EXPECT_GT(want, 0);  // Every figure compared here is non-trivial.
      if (c.waits_only) {
        // Merging loses nothing: the shards' summed buckets are the single
        // collector's buckets, so the quantiles are the same number.
        ASSERT_TRUE(merged->count(SampleKey("single", s)));
        EXPECT_LE(RelativeError(got, merged->at(SampleKey("single", s))), 1e-12);
        if (::testing::Test::HasFailure()) {
          for (const std::string& expr :
               {absl::StrCat("family_key_currency_price_kind_le:constance_series_mergeable_wait_"
                             "seconds_bucket:sum{key=\"",
                             s.key, "\"}"),
                absl::StrCat("constance_series_mergeable_wait_seconds_bucket{key=\"", s.key,
                             "\"}")}) {
            absl::StatusOr<HttpResponse> r =
                HttpGet(*prom, "/api/v1/query?query=" + UrlEncode(expr) + "&time=" + at);
            if (r.ok()) std::printf("%s:\n%s\n", expr.c_str(), r->body.c_str());
          }
        }
      }
    }
  }

  StopCleanly(prometheus, "prometheus");
  for (auto& [name, c] : collectors) StopCleanly(*c.process, name);
}

}  // namespace
}  // namespace constance::testing
