// Resource limits on a real collector: per-location rate (one flooding
// agent does not starve the others, and loses nothing), max streams, max
// locations, max series, batch size and message size, each refused with an
// error naming its flag and counted.
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <map>
#include <memory>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/barrier.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "constance/version.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"
#include "tests/integration/raw_stream.h"

namespace constance::testing {
namespace {

using ::testing::HasSubstr;

class LimitsTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (auto& [name, agent] : agents_) StopCleanly(name, *agent);
    if (collector_) StopCleanly("collector", *collector_);
  }

  static void StopCleanly(const std::string& name, Subprocess& p) {
    auto status = p.Stop(SIGTERM, absl::Seconds(15));
    EXPECT_TRUE(status.ok()) << name << ": " << status.status();
    if (status.ok()) {
      EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
          << name << " exit status " << *status << "\n"
          << p.Log();
    }
  }

  void StartCollector(std::vector<std::string> extra) {
    std::vector<std::string> argv = {BinDir() + "/constance-collector", "--insecure",
                                     "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
                                     "--ready_file=" + dir_.File("collector.ready")};
    argv.insert(argv.end(), extra.begin(), extra.end());
    collector_ = std::make_unique<Subprocess>(argv, dir_.File("collector.log"));
    auto ready = WaitForReadyFile(dir_.File("collector.ready"), *collector_, absl::Seconds(30));
    ASSERT_TRUE(ready.ok()) << ready.status();
    grpc_ = (*ready)["grpc"];
    metrics_ = (*ready)["metrics"];
    channel_ = grpc::CreateChannel(grpc_, grpc::InsecureChannelCredentials());
  }

  std::map<std::string, std::string> StartAgent(const std::string& location) {
    const std::string ready_file = dir_.File(location + ".ready");
    auto agent = std::make_unique<Subprocess>(
        std::vector<std::string>{BinDir() + "/constance-agent", "run", "--location=" + location,
                                 "--collector=" + grpc_, "--insecure", "--listen=127.0.0.1:0",
                                 "--metrics_listen=127.0.0.1:0", "--flush_interval=20ms",
                                 "--ready_file=" + ready_file},
        dir_.File(location + ".log"));
    auto ready = WaitForReadyFile(ready_file, *agent, absl::Seconds(30));
    EXPECT_TRUE(ready.ok()) << ready.status();
    agents_[location] = std::move(agent);
    return ready.ok() ? *ready : std::map<std::string, std::string>{};
  }

  double Metric(const std::string& address, const std::string& series) {
    auto r = HttpGet(address, "/metrics");
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return -1;
    auto v = MetricValue(r->body, series);
    EXPECT_TRUE(v.ok()) << v.status() << "\n" << r->body;
    return v.ok() ? *v : -1;
  }

  // Waits until `series` at `address` is `want` (or the deadline passes).
  bool WaitForMetric(const std::string& address, const std::string& series, double want,
                     absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (Metric(address, series) == want) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return Metric(address, series) == want;
  }

  TempDir dir_;
  std::unique_ptr<Subprocess> collector_;
  std::map<std::string, std::unique_ptr<Subprocess>> agents_;
  std::string grpc_;
  std::string metrics_;
  std::shared_ptr<grpc::Channel> channel_;
};

// `n` score observations as a JSON array, keys prefix-0..prefix-(n-1).
std::string Observations(const std::string& prefix, int n) {
  std::string body = "[";
  for (int i = 0; i < n; ++i) {
    absl::StrAppend(&body, i > 0 ? "," : "", R"({"key": ")", prefix, "-", i % 50,
                    R"(", "score": )", i, "}");
  }
  return body + "]";
}

TEST_F(LimitsTest, FloodFromOneAgentDoesNotStarveTheOthers) {
  // 1,000 observations/s per location: the flood below needs about 20 s.
  StartCollector({"--max_rate_per_location=1000", "--rate_burst=1000"});
  auto flood = StartAgent("flood");
  const std::vector<std::string> quiet = {"quiet-1", "quiet-2", "quiet-3"};
  std::map<std::string, std::map<std::string, std::string>> quiet_agents;
  for (const std::string& q : quiet) quiet_agents[q] = StartAgent(q);

  constexpr int kFloodPosts = 20, kPerPost = 1000, kQuiet = 30;
  for (int i = 0; i < kFloodPosts; ++i) {
    auto r = HttpPost(flood.at("http"), "/v1/observations", Observations("f", kPerPost));
    ASSERT_TRUE(r.ok() && r->status == 200) << (r.ok() ? r->body : r.status().ToString());
  }
  for (const std::string& q : quiet) {
    auto r = HttpPost(quiet_agents[q].at("http"), "/v1/observations", Observations(q, kQuiet));
    ASSERT_TRUE(r.ok() && r->status == 200) << (r.ok() ? r->body : r.status().ToString());
  }
  // Every quiet agent's observations are delivered while the flood is
  // still being throttled.
  for (const std::string& q : quiet) {
    EXPECT_TRUE(WaitForMetric(quiet_agents[q].at("metrics"),
                              "constance_agent_observations_delivered_total", kQuiet,
                              absl::Seconds(15)))
        << q << " was starved\n"
        << collector_->Log();
  }
  EXPECT_GT(Metric(flood.at("metrics"), "constance_agent_spool_depth"), 0)
      << "the flood was over before the quiet agents were checked";
  EXPECT_GT(Metric(metrics_, "constance_batches_throttled_total"), 0);
  // Throttling only delays: the flood is delivered in full, nothing dropped.
  EXPECT_TRUE(WaitForMetric(flood.at("metrics"), "constance_agent_observations_delivered_total",
                            kFloodPosts * kPerPost, absl::Seconds(90)));
  EXPECT_EQ(Metric(flood.at("metrics"), "constance_agent_spool_depth"), 0);
}

// One stream of the Ingest API, driven by hand.
class Stream {
 public:
  explicit Stream(const std::shared_ptr<grpc::Channel>& channel)
      : stub_(v1::Ingest::NewStub(channel)) {
    ctx_.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    stream_ = stub_->Stream(&ctx_);
  }
  // Sends `batch` and reads its ack; false if the stream ended instead.
  bool Send(const v1::Batch& batch, v1::Ack* ack) {
    v1::AgentMessage msg;
    *msg.mutable_batch() = batch;
    if (!stream_->Write(msg)) return false;
    v1::CollectorMessage reply;
    if (!stream_->Read(&reply)) return false;
    *ack = reply.ack();
    return true;
  }
  // Sends a heartbeat of `location` reporting `spool_depth`; false if the
  // stream is broken. Nothing answers it.
  bool Heartbeat(const std::string& location, uint64_t spool_depth) {
    v1::AgentMessage msg;
    msg.mutable_heartbeat()->set_location(location);
    msg.mutable_heartbeat()->set_incarnation(1);
    msg.mutable_heartbeat()->set_spool_depth(spool_depth);
    return stream_->Write(msg);
  }
  grpc::Status Close() {
    stream_->WritesDone();
    v1::CollectorMessage reply;
    while (stream_->Read(&reply)) {
    }
    return stream_->Finish();
  }

 private:
  std::unique_ptr<v1::Ingest::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::AgentMessage, v1::CollectorMessage>> stream_;
};

v1::Batch Batch(const std::string& location, uint64_t first, int n, const std::string& key) {
  v1::Batch batch;
  batch.set_location(location);
  batch.set_incarnation(1);
  batch.set_first_sequence(first);
  for (int i = 0; i < n; ++i) {
    v1::Observation* obs = batch.add_observations();
    obs->set_key(n == 1 ? key : absl::StrCat(key, "-", i));
    obs->set_score(i);
  }
  return batch;
}

// Opens `n` streams at once (released together by a barrier), each
// announcing itself for location "store-<i>"; returns how many were served
// (answered with a Hello) while all of them were open. The refused ones
// must end RESOURCE_EXHAUSTED naming --max_streams.
int OpenAtOnce(const std::shared_ptr<grpc::Channel>& channel, int n) {
  absl::Barrier* start = new absl::Barrier(n);  // Deletes itself (Block).
  absl::BlockingCounter resolved(n);
  std::atomic<int> served{0};
  absl::Notification all_resolved;
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      auto stub = v1::Ingest::NewStub(channel);
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
      if (start->Block()) delete start;
      auto stream = stub->Stream(&ctx);
      v1::AgentMessage m;
      m.mutable_heartbeat()->set_location(absl::StrCat("store-", i));
      m.mutable_heartbeat()->set_incarnation(1);
      m.mutable_heartbeat()->set_protocol_version(kProtocolVersion);
      v1::CollectorMessage reply;
      const bool greeted = stream->Write(m) && stream->Read(&reply) && reply.has_hello();
      if (greeted) served.fetch_add(1);
      resolved.DecrementCount();
      // A served stream stays open until every stream has its answer.
      all_resolved.WaitForNotification();
      stream->WritesDone();
      while (stream->Read(&reply)) {
      }
      grpc::Status status = stream->Finish();
      if (!greeted) {
        EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
            << status.error_message();
        EXPECT_THAT(status.error_message(), HasSubstr("--max_streams"));
      }
    });
  }
  resolved.Wait();
  all_resolved.Notify();
  for (std::thread& t : threads) t.join();
  return served.load();
}

TEST_F(LimitsTest, MaxStreamsHoldsWhenManyStreamsOpenAtOnce) {
  StartCollector({"--max_streams=3"});
  constexpr int kRounds = 200, kStreams = 50, kCap = 3;
  int most = 0;
  for (int round = 0; round < kRounds; ++round) {
    const int served = OpenAtOnce(channel_, kStreams);
    most = std::max(most, served);
    ASSERT_LE(served, kCap) << "round " << round;
    ASSERT_GE(served, 1) << "round " << round << "\n" << collector_->Log();
    // The next round starts with every slot free again.
    ASSERT_TRUE(WaitForMetric(metrics_, "constance_agent_streams", 0, absl::Seconds(10)));
  }
  EXPECT_EQ(most, kCap) << "the cap was never reached: the test proves nothing";
}

TEST_F(LimitsTest, LimitsRefuseWithErrorsNamingTheirFlag) {
  StartCollector({"--max_streams=1", "--max_locations=1", "--max_series=2",
                  "--max_batch_observations=10", "--max_message_bytes=65536",
                  "--stats_interval=100ms"});
  auto streams_closed = [&] {
    ASSERT_TRUE(WaitForMetric(metrics_, "constance_agent_streams", 0, absl::Seconds(10)));
  };
  {
    Stream first(channel_);
    v1::Ack ack;
    // Two series fit; the third is rejected with its reason, the rest of
    // the batch applied (partial success).
    ASSERT_TRUE(first.Send(Batch("store-a", 1, 3, "k"), &ack));
    EXPECT_EQ(ack.outcome(), v1::Ack::APPLIED);
    EXPECT_EQ(ack.watermark(), 3u);
    ASSERT_EQ(ack.rejections_size(), 1);
    EXPECT_EQ(ack.rejections(0).sequence(), 3u);
    EXPECT_THAT(ack.rejections(0).reason(), HasSubstr("--max_series"));
    // A second stream while the first is open.
    Stream second(channel_);
    v1::Ack unused;
    EXPECT_FALSE(second.Send(Batch("store-a", 4, 1, "k-0"), &unused));
    grpc::Status s = second.Close();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("--max_streams"));
    EXPECT_TRUE(first.Close().ok());
  }
  streams_closed();
  {
    Stream other(channel_);
    v1::Ack unused;
    EXPECT_FALSE(other.Send(Batch("store-b", 1, 1, "k-0"), &unused));
    grpc::Status s = other.Close();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("--max_locations"));
  }
  streams_closed();
  {
    Stream big(channel_);
    v1::Ack ack;
    ASSERT_TRUE(big.Send(Batch("store-a", 4, 10, "k"), &ack)) << "10 observations fit";
    EXPECT_FALSE(big.Send(Batch("store-a", 14, 11, "k"), &ack));
    grpc::Status s = big.Close();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("--max_batch_observations"));
  }
  streams_closed();
  {
    Stream huge(channel_);
    v1::Ack ack;
    v1::Batch batch = Batch("store-a", 14, 1, "k-0");
    ASSERT_TRUE(huge.Send(batch, &ack)) << "a small message fits";
    batch.set_first_sequence(15);
    batch.mutable_observations(0)->set_key(std::string(70'000, 'k'));
    EXPECT_FALSE(huge.Send(batch, &ack));
    grpc::Status s = huge.Close();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  }
  EXPECT_EQ(Metric(metrics_, R"(constance_refusals_total{reason="max_streams")"), 1);
  EXPECT_EQ(Metric(metrics_, R"(constance_refusals_total{reason="max_locations")"), 1);
  EXPECT_EQ(Metric(metrics_, R"(constance_refusals_total{reason="invalid_message")"), 1);
  // The third key of the first batch and eight of the ten-observation one.
  EXPECT_TRUE(WaitForMetric(metrics_, R"(constance_observations_rejected_total{reason="series")",
                            9, absl::Seconds(10)));
}

// A heartbeat admits its location outside the batch log, so a restart
// that decided --max_locations again from the log alone would admit the
// location whose batch was refused and refuse the acknowledged one's.
TEST_F(LimitsTest, ACrashKeepsWhatWasAcknowledgedWhenAHeartbeatTookTheLastLocation) {
  const std::vector<std::string> flags = {"--max_locations=1", "--state_dir=" + dir_.path(),
                                          "--stats_interval=50ms", "--snapshot_interval=1h"};
  StartCollector(flags);
  Stream a(channel_);
  ASSERT_TRUE(a.Heartbeat("store-a", 7));
  // Its health in /metrics: the heartbeat admitted store-a.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  absl::StatusOr<double> depth;
  while (!depth.ok() && absl::Now() < deadline) {
    absl::StatusOr<HttpResponse> r = HttpGet(metrics_, "/metrics");
    ASSERT_TRUE(r.ok()) << r.status();
    depth = MetricValue(r->body, R"(constance_agent_spool_depth{location="store-a")");
    if (!depth.ok()) absl::SleepFor(absl::Milliseconds(20));  // The poll's pace.
  }
  ASSERT_TRUE(depth.ok()) << depth.status();
  EXPECT_EQ(*depth, 7);
  {
    Stream b(channel_);
    v1::Ack unused;
    EXPECT_FALSE(b.Send(Batch("store-b", 1, 1, "b"), &unused));
    EXPECT_THAT(b.Close().error_message(), HasSubstr("--max_locations"));
  }
  v1::Batch batch = Batch("store-a", 1, 3, "unused");
  for (int i = 0; i < 3; ++i) batch.mutable_observations(i)->set_key(KeyOf(i + 1));
  v1::Ack ack;
  ASSERT_TRUE(a.Send(batch, &ack));
  ASSERT_EQ(ack.outcome(), v1::Ack::APPLIED);
  ASSERT_EQ(ack.applied(), 3u);

  ASSERT_TRUE(collector_->Stop(SIGKILL, absl::Seconds(10)).ok());
  (void)a.Close();
  std::remove(dir_.File("collector.ready").c_str());
  StartCollector(flags);
  const Delivery d = CountApplied(grpc_, 3);
  EXPECT_EQ(d.applied_once, 3u) << ::testing::PrintToString(d.problems) << collector_->Log();
  // store-b's refused batch came in with the replay; the log says so.
  EXPECT_THAT(collector_->Log(), HasSubstr("2 locations, above --max_locations=1"));
}

TEST_F(LimitsTest, EvaluationThreadsOutsideTheirRangeAreRefusedNamingTheFlag) {
  for (const char* threads : {"0", "65", "-1"}) {
    CommandResult r =
        RunCommand(absl::StrCat(BinDir(), "/constance-collector --insecure --listen=127.0.0.1:0 ",
                                "--metrics_listen=127.0.0.1:0 --evaluation_threads=", threads),
                   "");
    EXPECT_EQ(r.exit_code, 2) << threads << ": " << r.output;
    EXPECT_THAT(r.output, HasSubstr(absl::StrCat("--evaluation_threads must be between 1 and "
                                                 "64, got ",
                                                 threads)));
  }
}

TEST_F(LimitsTest, EachLocationIsBoundedBeforeTheSharedSeriesCap) {
  StartCollector({"--max_cells_per_location=100", "--max_series=140", "--stats_interval=100ms"});
  {
    // store-a sends 200 keys: its first 100 are kept, the rest refused
    // for store-a's own bound, not the collector's.
    RawStream a(grpc_, "store-a", 1, /*out_of_order=*/true);
    ASSERT_TRUE(a.Send(1, 200));
    std::optional<v1::Ack> ack = a.NextAck();
    ASSERT_TRUE(ack.has_value()) << collector_->Log();
    EXPECT_EQ(ack->applied(), 100u);
    ASSERT_EQ(ack->rejections_size(), 100);
    EXPECT_EQ(ack->rejections(0).sequence(), 101u);
    EXPECT_THAT(ack->rejections(0).reason(),
                HasSubstr("location 'store-a' holds its limit of 100 keys "
                          "(--max_cells_per_location)"));
    EXPECT_TRUE(a.Finish().ok());
  }
  {
    // store-b has room of its own: 50 keys store-a holds, then (stepping
    // over 51..100 as a declared dropped range) new series until the
    // collector's cap of 140.
    RawStream b(grpc_, "store-b", 1, /*out_of_order=*/true);
    ASSERT_TRUE(b.Send(1, 50));
    std::optional<v1::Ack> ack = b.NextAck();
    ASSERT_TRUE(ack.has_value()) << collector_->Log();
    EXPECT_EQ(ack->applied(), 50u);
    ASSERT_TRUE(b.Send(101, 60, /*skipped_from=*/51));  // k101..: store-a was refused them.
    ack = b.NextAck();
    ASSERT_TRUE(ack.has_value()) << collector_->Log();
    EXPECT_EQ(ack->applied(), 40u) << ack->ShortDebugString().substr(0, 600);
    ASSERT_EQ(ack->rejections_size(), 20);
    EXPECT_THAT(ack->rejections(0).reason(), HasSubstr("--max_series"));
    EXPECT_TRUE(b.Finish().ok());
  }
  // /metrics shows the statistics last published: one publication may
  // hold store-a's refusals and not yet store-b's, so each is awaited.
  EXPECT_TRUE(WaitForMetric(
      metrics_, R"(constance_observations_rejected_total{reason="location_cells")", 100,
      absl::Seconds(10)));
  EXPECT_TRUE(WaitForMetric(metrics_, R"(constance_observations_rejected_total{reason="series")",
                            20, absl::Seconds(10)))
      << Metric(metrics_, R"(constance_observations_rejected_total{reason="series")");
}

// One store with 100k keys: every query answer stays under gRPC's default
// 4 MiB, cut at the collector's default limit with an "N more" line.
TEST_F(LimitsTest, QueriesAnswerForALocationWith100kKeys) {
  StartCollector({"--stats_interval=200ms"});
  constexpr uint64_t kKeys = 100'000, kBatch = 10'000;
  RawStream stream(grpc_, "store-1", 1, /*out_of_order=*/true);
  for (uint64_t first = 1; first <= kKeys; first += kBatch) {
    ASSERT_TRUE(stream.Send(first, kBatch));
    std::optional<v1::Ack> ack = stream.NextAck();
    ASSERT_TRUE(ack.has_value()) << collector_->Log();
    ASSERT_EQ(ack->applied(), kBatch) << ack->ShortDebugString().substr(0, 500);
  }
  EXPECT_TRUE(stream.Finish().ok());
  const std::string cli = BinDir() + "/constance --collector=" + grpc_;
  CommandResult report = RunCommand(cli + " report --wait_for_observations=100000 2>&1", "");
  EXPECT_EQ(report.exit_code, 0) << report.output.substr(0, 2000);
  EXPECT_THAT(report.output, HasSubstr("Series by dispersion (20 of 100000)"));
  CommandResult all = RunCommand(cli + " report --max_series=0 2>&1", "");
  EXPECT_EQ(all.exit_code, 0) << all.output.substr(0, 2000);
  EXPECT_THAT(all.output, HasSubstr("... 99000 more series not sent by the collector"));
  CommandResult location = RunCommand(cli + " location store-1 2>&1", "");
  EXPECT_EQ(location.exit_code, 0) << location.output.substr(0, 2000);
  EXPECT_THAT(location.output, HasSubstr("... 99000 more values not sent by the collector"));
  CommandResult findings = RunCommand(cli + " findings --all 2>&1", "");
  EXPECT_EQ(findings.exit_code, 0) << findings.output.substr(0, 2000);
  CommandResult json = RunCommand(cli + " location store-1 --limit=5 --json 2>&1", "");
  EXPECT_EQ(json.exit_code, 0) << json.output.substr(0, 2000);
  EXPECT_THAT(json.output, HasSubstr(R"("values_omitted": "99995")"));
}

}  // namespace
}  // namespace constance::testing
