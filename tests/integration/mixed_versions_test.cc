// Mixed versions on the wire: store servers are upgraded over weeks, so
// agents of the previous release report to this collector and this agent
// may report to a collector not yet upgraded. Nothing is lost or counted
// twice either way, and neither side sends the other what it does not
// know:
//   - the streams a 0.1.0 agent sent (recorded in tests/data/wire/v0.1.0)
//     are applied by this collector exactly once, answered with acks only
//     (no Hello: that agent announced no protocol);
//   - this agent, against a collector answering as 0.1.0 did
//     (old_collector.h), delivers everything once and knows it is talking
//     protocol 1;
//   - this agent and this collector greet each other with protocol 2.
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "constance/v1/query.grpc.pb.h"
#include "constance/version.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"
#include "tests/integration/old_collector.h"

namespace constance::testing {
namespace {

std::vector<v1::AgentMessage> Recorded(const std::string& name) {
  const std::string path =
      absl::StrCat(CONSTANCE_SOURCE_DIR, "/tests/data/wire/v0.1.0/", name);
  std::ifstream in(path, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  absl::StatusOr<std::vector<v1::AgentMessage>> messages =
      OldCollector::ParseRecording(bytes.str());
  EXPECT_TRUE(messages.ok()) << path << ": " << messages.status();
  EXPECT_FALSE(messages->empty()) << path;
  return messages.value_or(std::vector<v1::AgentMessage>());
}

class Collector {
 public:
  explicit Collector(const TempDir& dir) {
    const std::string ready = dir.File("collector.ready");
    process_ = std::make_unique<Subprocess>(
        std::vector<std::string>{BinDir() + "/constance-collector", "--insecure",
                                 "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
                                 "--state_dir=" + dir.path(), "--stats_interval=50ms",
                                 // The recording's observations keep their dates.
                                 "--max_lateness=876000h", "--ready_file=" + ready},
        dir.File("collector.log"));
    auto r = WaitForReadyFile(ready, *process_, absl::Seconds(30));
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) address_ = (*r)["grpc"];
  }
  const std::string& address() const { return address_; }
  std::string Log() const { return process_->Log(); }

 private:
  std::unique_ptr<Subprocess> process_;
  std::string address_;
};

// Sends `messages` on one stream, half-closes, and returns every answer.
std::vector<v1::CollectorMessage> Replay(const std::string& address,
                                         const std::vector<v1::AgentMessage>& messages) {
  auto stub = v1::Ingest::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto stream = stub->Stream(&ctx);
  for (const v1::AgentMessage& m : messages) EXPECT_TRUE(stream->Write(m));
  stream->WritesDone();
  std::vector<v1::CollectorMessage> answers;
  v1::CollectorMessage reply;
  while (stream->Read(&reply)) answers.push_back(reply);
  grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  return answers;
}

uint64_t Observations(const std::vector<v1::AgentMessage>& messages) {
  uint64_t n = 0;
  for (const v1::AgentMessage& m : messages) n += m.batch().observations_size();
  return n;
}

uint64_t AppliedBy(const std::string& address, uint64_t at_least) {
  auto stub = v1::Query::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  v1::ChainSummaryResponse s;
  for (absl::Time deadline = absl::Now() + absl::Seconds(10); absl::Now() < deadline;) {
    grpc::ClientContext ctx;
    s.Clear();
    EXPECT_TRUE(stub->ChainSummary(&ctx, v1::ChainSummaryRequest(), &s).ok());
    if (s.observations_applied() >= at_least) break;
    absl::SleepFor(absl::Milliseconds(20));  // Polling the statistics tick, with a deadline.
  }
  return s.observations_applied();
}

TEST(MixedVersionsTest, TheFirstReleasesAgentIsServedUnchangedAndOnce) {
  TempDir dir;
  Collector collector(dir);
  const std::vector<v1::AgentMessage> first = Recorded("agent-stream1.bin");
  const std::vector<v1::AgentMessage> second = Recorded("agent-stream2.bin");
  ASSERT_TRUE(first.front().has_heartbeat());
  ASSERT_EQ(first.front().heartbeat().protocol_version(), 0u) << "0.1.0 announced nothing";

  uint64_t total = 0;
  for (const auto* stream : {&first, &second}) {
    const uint64_t sent = Observations(*stream);
    uint64_t acked = 0;
    for (const v1::CollectorMessage& answer : Replay(collector.address(), *stream)) {
      ASSERT_TRUE(answer.has_ack()) << "only acks for an agent of protocol 1: "
                                    << answer.ShortDebugString();
      EXPECT_EQ(answer.ack().outcome(), v1::Ack::APPLIED);
      EXPECT_EQ(answer.ack().duplicates(), 0u);
      EXPECT_EQ(answer.ack().rejections_size(), 0) << answer.ShortDebugString();
      acked += answer.ack().count();
    }
    EXPECT_EQ(acked, sent);
    total += sent;
  }
  EXPECT_GT(total, 5u);
  EXPECT_EQ(AppliedBy(collector.address(), total), total) << collector.Log();

  // The first stream again (its acks lost, say): every observation a
  // duplicate, nothing counted twice.
  uint64_t acked_again = 0;
  for (const v1::CollectorMessage& answer : Replay(collector.address(), first)) {
    ASSERT_TRUE(answer.has_ack());
    EXPECT_EQ(answer.ack().duplicates(), answer.ack().count());
    acked_again += answer.ack().count();
  }
  EXPECT_EQ(acked_again, Observations(first)) << "every resent observation answered";
  EXPECT_EQ(AppliedBy(collector.address(), total), total);
}

struct Agent {
  Agent(const TempDir& dir, const std::string& collector) {
    const std::string config = dir.File("agent.yaml");
    std::ofstream(config) << "location: store-17\ncollector: " << collector
                          << "\ninsecure: true\nlisten: 127.0.0.1:0\nmetrics_listen: "
                             "127.0.0.1:0\nflush_interval: 20ms\nspool_path: "
                          << dir.File("spool.db") << "\n";
    const std::string ready = dir.File("agent.ready");
    process = std::make_unique<Subprocess>(
        std::vector<std::string>{BinDir() + "/constance-agent", "run", "--config=" + config,
                                 "--ready_file=" + ready},
        dir.File("agent.log"));
    auto r = WaitForReadyFile(ready, *process, absl::Seconds(30));
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) {
      http = (*r)["http"];
      metrics = (*r)["metrics"];
    }
  }
  // Polls the agent's /metrics until `series` reads `want`; returns the
  // last value read.
  double WaitForMetric(const std::string& series, double want) {
    double value = -1;
    for (absl::Time deadline = absl::Now() + absl::Seconds(20); absl::Now() < deadline;) {
      absl::StatusOr<HttpResponse> r = HttpGet(metrics, "/metrics");
      if (r.ok()) value = MetricValue(r->body, series).value_or(-1);
      if (value == want) break;
      absl::SleepFor(absl::Milliseconds(20));  // Polling, with a deadline.
    }
    return value;
  }
  std::unique_ptr<Subprocess> process;
  std::string http, metrics;
};

constexpr char kThree[] =
    R"([{"key":"coffee-250g","price":{"minor_units":449,"currency":"EUR"}},)"
    R"({"key":"checkout","wait_seconds":95},{"key":"nps","score":42}])";

TEST(MixedVersionsTest, TheAgentFallsBackWithACollectorOfTheFirstRelease) {
  TempDir dir;
  OldCollector old;
  absl::StatusOr<std::string> address = old.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  Agent agent(dir, *address);
  absl::StatusOr<HttpResponse> posted = HttpPost(agent.http, "/v1/observations", kThree);
  ASSERT_TRUE(posted.ok()) << posted.status();
  ASSERT_EQ(posted->status, 200) << posted->body;
  EXPECT_EQ(agent.WaitForMetric("constance_agent_spool_depth", 0), 0) << agent.process->Log();
  EXPECT_EQ(agent.WaitForMetric("constance_agent_collector_protocol", 1), 1)
      << agent.process->Log();
  ASSERT_TRUE(agent.process->Stop(SIGTERM, absl::Seconds(10)).ok());

  old.engine().Recompute();
  std::shared_ptr<const collector::Snapshot> snap = old.engine().snapshot();
  EXPECT_EQ(snap->observations_applied, 3u);
  EXPECT_EQ(snap->observations_duplicate, 0u);
  // The agent announced itself in its first message, in a field the old
  // collector ignores, and sent nothing it could not read.
  const std::vector<std::string> streams = old.Recordings();
  ASSERT_FALSE(streams.empty());
  absl::StatusOr<std::vector<v1::AgentMessage>> sent = OldCollector::ParseRecording(streams[0]);
  ASSERT_TRUE(sent.ok() && !sent->empty());
  ASSERT_TRUE(sent->front().has_heartbeat());
  EXPECT_EQ(sent->front().heartbeat().protocol_version(), kProtocolVersion);
  for (const v1::AgentMessage& m : *sent) EXPECT_TRUE(m.has_batch() || m.has_heartbeat());
}

TEST(MixedVersionsTest, ThisAgentAndCollectorGreetEachOther) {
  TempDir dir;
  Collector collector(dir);
  Agent agent(dir, collector.address());
  absl::StatusOr<HttpResponse> posted = HttpPost(agent.http, "/v1/observations", kThree);
  ASSERT_TRUE(posted.ok()) << posted.status();
  EXPECT_EQ(agent.WaitForMetric("constance_agent_collector_protocol", kProtocolVersion),
            kProtocolVersion)
      << agent.process->Log();
  EXPECT_EQ(AppliedBy(collector.address(), 3), 3u) << collector.Log();
}

}  // namespace
}  // namespace constance::testing
