// The collector's acknowledgement means durable: a batch acknowledged
// before a SIGKILL is in the statistics after a restart on the same state
// directory, and its resend after the restart counts as a duplicate. Also:
// throttling never drops data, the collector's /metrics shows delivery
// (group-commit latency, duplicates, watermarks, what heartbeats carry),
// and an agent's drop_oldest spool policy keeps the newest and counts the
// rest. The fault-injection suite (tests/faults/) puts all of it under
// random faults.
#include <signal.h>

#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "constance/v1/query.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"

namespace constance::testing {
namespace {

class Collector {
 public:
  Collector(const TempDir& dir, const std::string& name, std::vector<std::string> extra = {}) {
    const std::string ready = dir.File(name + ".ready");
    std::vector<std::string> argv = {BinDir() + "/constance-collector",
                                     "--insecure",
                                     "--listen=127.0.0.1:0",
                                     "--metrics_listen=127.0.0.1:0",
                                     "--state_dir=" + dir.path(),
                                     "--stats_interval=50ms",
                                     "--ready_file=" + ready};
    argv.insert(argv.end(), extra.begin(), extra.end());
    process_ = std::make_unique<Subprocess>(std::move(argv), dir.File(name + ".log"));
    auto r = WaitForReadyFile(ready, *process_, absl::Seconds(30));
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) {
      address_ = (*r)["grpc"];
      metrics_address_ = (*r)["metrics"];
    }
  }
  Subprocess& process() { return *process_; }
  const std::string& address() const { return address_; }
  const std::string& metrics_address() const { return metrics_address_; }

 private:
  std::unique_ptr<Subprocess> process_;
  std::string address_;
  std::string metrics_address_;
};

v1::Batch MakeBatch(uint64_t first, int count, const std::string& location = "store-a") {
  v1::Batch b;
  b.set_location(location);
  b.set_incarnation(77);
  b.set_first_sequence(first);
  for (int i = 0; i < count; ++i) {
    v1::Observation* o = b.add_observations();
    o->set_key(absl::StrCat("sku-", (first + i) % 10));
    o->mutable_price()->set_minor_units(100 + static_cast<int64_t>(first + i));
    o->mutable_price()->set_currency("EUR");
  }
  return b;
}

// Sends `batches` on one stream (after `heartbeat`, if any) and returns
// their acks.
std::vector<v1::Ack> Send(const std::string& address, const std::vector<v1::Batch>& batches,
                          const v1::Heartbeat* heartbeat = nullptr) {
  auto stub = v1::Ingest::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto stream = stub->Stream(&ctx);
  std::vector<v1::Ack> acks;
  if (heartbeat != nullptr) {
    v1::AgentMessage m;
    *m.mutable_heartbeat() = *heartbeat;
    EXPECT_TRUE(stream->Write(m));
  }
  for (const v1::Batch& b : batches) {
    v1::AgentMessage m;
    *m.mutable_batch() = b;
    EXPECT_TRUE(stream->Write(m));
  }
  v1::CollectorMessage reply;
  while (acks.size() < batches.size() && stream->Read(&reply)) acks.push_back(reply.ack());
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  return acks;
}

v1::ChainSummaryResponse Summary(const std::string& address, uint64_t applied = 0) {
  auto stub = v1::Query::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  v1::ChainSummaryResponse s;
  // The statistics tick publishes what ingest applied; wait for it.
  for (absl::Time deadline = absl::Now() + absl::Seconds(10); absl::Now() < deadline;) {
    grpc::ClientContext ctx;
    s.Clear();
    EXPECT_TRUE(stub->ChainSummary(&ctx, v1::ChainSummaryRequest(), &s).ok());
    if (s.series_size() == 10 && s.observations_applied() >= applied) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return s;
}

std::map<std::string, double> Medians(const v1::ChainSummaryResponse& s) {
  std::map<std::string, double> out;
  for (const auto& g : s.series()) out[g.series().key()] = g.median();
  return out;
}

TEST(DurabilityTest, AcknowledgedBatchesSurviveSigkillAndApplyOnce) {
  TempDir dir;
  std::vector<v1::Batch> batches;
  for (int i = 0; i < 20; ++i) batches.push_back(MakeBatch(1 + i * 50, 50));

  auto first = std::make_unique<Collector>(dir, "first");
  std::vector<v1::Ack> acks = Send(first->address(), batches);
  ASSERT_EQ(acks.size(), batches.size());
  EXPECT_EQ(acks.back().watermark(), 1000u);
  const v1::ChainSummaryResponse before = Summary(first->address(), 1000);
  EXPECT_EQ(before.observations_applied(), 1000u);
  // No clean shutdown: SIGKILL right after the acknowledgements.
  ASSERT_TRUE(first->process().Stop(SIGKILL, absl::Seconds(10)).ok());

  Collector second(dir, "second");
  const v1::ChainSummaryResponse after = Summary(second.address(), 1000);
  EXPECT_EQ(after.observations_applied(), 1000u);
  EXPECT_EQ(Medians(after), Medians(before));

  // The agent never heard the acks (say): it resends everything. Nothing
  // is applied twice, and the watermark it gets back lets it delete all.
  std::vector<v1::Ack> resent = Send(second.address(), batches);
  ASSERT_EQ(resent.size(), batches.size());
  for (const v1::Ack& a : resent) EXPECT_EQ(a.duplicates(), 50u);
  EXPECT_EQ(resent.back().watermark(), 1000u);
  // New data after the restart continues the numbering.
  std::vector<v1::Ack> more = Send(second.address(), {MakeBatch(1001, 10)});
  ASSERT_EQ(more.size(), 1u);
  EXPECT_EQ(more[0].duplicates(), 0u);
  EXPECT_EQ(more[0].watermark(), 1010u);
  auto status = second.process().Stop(SIGTERM, absl::Seconds(15));
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(*status, 0) << second.process().Log();
}

// An agent may half-close right after its last batch, before any ack:
// every batch the collector read is still acknowledged before the stream
// ends, so nothing is sent twice for want of an ack.
TEST(DurabilityTest, AStreamHalfClosedAfterItsLastBatchGetsEveryAck) {
  TempDir dir;
  Collector collector(dir, "half-close");
  std::vector<v1::Ack> acks;
  {
    auto stub = v1::Ingest::NewStub(
        grpc::CreateChannel(collector.address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    auto stream = stub->Stream(&ctx);
    for (int i = 0; i < 20; ++i) {
      v1::AgentMessage m;
      *m.mutable_batch() = MakeBatch(1 + i * 50, 50);
      ASSERT_TRUE(stream->Write(m));
    }
    ASSERT_TRUE(stream->WritesDone());
    v1::CollectorMessage reply;
    while (stream->Read(&reply)) acks.push_back(reply.ack());
    const grpc::Status status = stream->Finish();
    EXPECT_TRUE(status.ok()) << status.error_message();
  }
  ASSERT_EQ(acks.size(), 20u);
  for (size_t i = 0; i < acks.size(); ++i) {
    EXPECT_EQ(acks[i].first_sequence(), 1 + i * 50);
    EXPECT_EQ(acks[i].outcome(), v1::Ack::APPLIED);
  }
  EXPECT_EQ(acks.back().watermark(), 1000u);
  auto stopped = collector.process().Stop(SIGTERM, absl::Seconds(15));
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ(*stopped, 0) << collector.process().Log();
}

TEST(ThrottlingTest, ANoisyLocationIsThrottledWithoutLossAndOthersKeepGoing) {
  TempDir dir;
  Collector collector(dir, "throttle", {"--max_rate_per_location=100", "--rate_burst=100"});
  // 100 observations of burst, then store-a is over its rate.
  std::vector<v1::Ack> list = Send(collector.address(), {MakeBatch(1, 50), MakeBatch(51, 50),
                                                         MakeBatch(101, 50), MakeBatch(151, 50)});
  ASSERT_EQ(list.size(), 4u);
  // Applied acks wait for their commit, throttled ones do not: agents match
  // acks by first sequence, and so does this test.
  std::map<uint64_t, v1::Ack> acks;
  for (const v1::Ack& a : list) acks[a.first_sequence()] = a;
  EXPECT_EQ(acks[1].outcome(), v1::Ack::APPLIED);
  EXPECT_EQ(acks[51].outcome(), v1::Ack::APPLIED);
  EXPECT_EQ(acks[51].watermark(), 100u);
  // Throttled: nothing applied, and the batch after it is throttled too, so
  // the resend cannot be mistaken for duplicates.
  for (uint64_t first : {101, 151}) {
    EXPECT_EQ(acks[first].outcome(), v1::Ack::THROTTLED) << first;
    EXPECT_GE(acks[first].retry_after_ms(), 100u) << first;
  }
  // Another location has its own budget.
  std::vector<v1::Ack> other = Send(collector.address(), {MakeBatch(1, 50, "store-b")});
  ASSERT_EQ(other.size(), 1u);
  EXPECT_EQ(other[0].outcome(), v1::Ack::APPLIED);
  // The agent retries after retry_after_ms, as the protocol says, until applied.
  std::vector<v1::Ack> retry;
  for (absl::Time deadline = absl::Now() + absl::Seconds(20); absl::Now() < deadline;) {
    absl::SleepFor(absl::Milliseconds(acks[101].retry_after_ms()));
    retry = Send(collector.address(), {MakeBatch(101, 50)});
    if (retry.size() == 1 && retry[0].outcome() == v1::Ack::APPLIED) break;
  }
  ASSERT_EQ(retry.size(), 1u);
  EXPECT_EQ(retry[0].outcome(), v1::Ack::APPLIED);
  EXPECT_EQ(retry[0].watermark(), 150u);
  EXPECT_EQ(retry[0].duplicates(), 0u);
  EXPECT_EQ(Summary(collector.address(), 200).observations_applied(), 200u);
  auto status = collector.process().Stop(SIGTERM, absl::Seconds(15));
  ASSERT_TRUE(status.ok());
}

// The value of the sample `series` (name with labels, as exposed) in a
// /metrics text, or -1 when absent.
double Sample(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, series + " ")) {
      double v = -1;
      return absl::SimpleAtod(line.substr(series.size() + 1), &v) ? v : -1;
    }
  }
  return -1;
}

TEST(DeliveryMetricsTest, CommitLatencyDuplicatesWatermarkAndAgentHealthAreExported) {
  TempDir dir;
  Collector collector(dir, "metrics");
  v1::Heartbeat hb;
  hb.set_location("store-a");
  hb.set_incarnation(77);
  hb.set_version("9.8.7");
  hb.set_spool_depth(12);
  hb.set_spool_bytes(3456);
  hb.set_spool_dropped(7);
  hb.set_oldest_unacknowledged_seconds(4.5);
  std::vector<v1::Batch> batches;
  for (int i = 0; i < 5; ++i) batches.push_back(MakeBatch(1 + i * 10, 10));
  ASSERT_EQ(Send(collector.address(), batches, &hb).size(), 5u);
  ASSERT_EQ(Send(collector.address(), {MakeBatch(1, 10)}).size(), 1u);  // A resend.

  // /metrics reads the snapshot the statistics tick publishes: poll.
  std::string text;
  const std::string loc = "{location=\"store-a\"}";
  bool published = false;
  for (absl::Time deadline = absl::Now() + absl::Seconds(10); absl::Now() < deadline;) {
    auto r = HttpGet(collector.metrics_address(), "/metrics");
    ASSERT_TRUE(r.ok()) << r.status();
    text = r->body;
    if (Sample(text, "constance_observations_duplicate_total") == 10 &&
        Sample(text, "constance_agent_spool_bytes" + loc) == 3456) {
      published = true;
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(published) << text;
  // Every batch, the resend included, went through a durable group commit.
  EXPECT_EQ(Sample(text, "constance_batch_log_batches_committed_total"), 6) << text;
  const double commits = Sample(text, "constance_batch_log_commit_seconds_count");
  EXPECT_GE(commits, 1) << text;
  EXPECT_LE(commits, 6) << text;
  EXPECT_EQ(Sample(text, "constance_batch_log_commit_seconds_bucket{le=\"+Inf\"}"), commits)
      << text;
  EXPECT_GT(Sample(text, "constance_batch_log_commit_seconds_sum"), 0) << text;
  EXPECT_EQ(Sample(text, "constance_batch_log_commit_failures_total"), 0) << text;
  EXPECT_EQ(Sample(text, "constance_location_watermark" + loc), 50) << text;
  EXPECT_EQ(Sample(text, "constance_agent_spool_depth" + loc), 12) << text;
  EXPECT_EQ(Sample(text, "constance_agent_spool_dropped_total" + loc), 7) << text;
  EXPECT_EQ(Sample(text, "constance_agent_oldest_unacknowledged_seconds" + loc), 4.5) << text;
  EXPECT_EQ(Sample(text, "constance_agent_info{location=\"store-a\",version=\"9.8.7\"}"), 1)
      << text;
  ASSERT_TRUE(collector.process().Stop(SIGTERM, absl::Seconds(15)).ok());
}

// An agent configured with spool_when_full: drop_oldest keeps the newest
// observations while the collector is unreachable and counts what it
// dropped on its /metrics; a misspelt policy is refused at start.
TEST(SpoolPolicyTest, DropOldestKeepsTheNewestAndCountsTheDropped) {
  TempDir dir;
  const std::string config = dir.File("agent.yaml");
  // Nothing listens on port 1: the sender keeps retrying, nothing is acked.
  std::ofstream(config)
      << "location: store-d\ncollector: 127.0.0.1:1\ninsecure: true\n"
         "listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\n"
         "spool_path: "
      << dir.File("spool.db")
      << "\nspool_max_observations: 5\nspool_when_full: drop_oldest\ndrain_timeout: 0s\n";
  Subprocess agent({BinDir() + "/constance-agent", "run", "--config=" + config,
                    "--ready_file=" + dir.File("agent.ready")},
                   dir.File("agent.log"));
  auto ready = WaitForReadyFile(dir.File("agent.ready"), agent, absl::Seconds(30));
  ASSERT_TRUE(ready.ok()) << ready.status();
  for (int request = 0; request < 3; ++request) {
    std::string body = "[";
    for (int i = 0; i < 3; ++i) {
      absl::StrAppend(&body, i > 0 ? "," : "", R"({"key":"k)", request * 3 + i, R"(","score":1})");
    }
    body += "]";
    auto r = HttpPost((*ready)["http"], "/v1/observations", body);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 200) << r->body;  // Never refused: the oldest make room.
  }
  auto metrics = HttpGet((*ready)["metrics"], "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(Sample(metrics->body, "constance_agent_spool_dropped_total"), 4) << metrics->body;
  EXPECT_EQ(Sample(metrics->body, "constance_agent_spool_depth"), 5) << metrics->body;
  EXPECT_EQ(
      Sample(metrics->body, "constance_agent_observations_rejected_total{reason=\"spool_full\"}"),
      0)
      << metrics->body;
  ASSERT_TRUE(agent.Stop(SIGTERM, absl::Seconds(15)).ok());

  const std::string bad_config = dir.File("bad.yaml");
  std::ofstream(bad_config) << "location: store-d\ncollector: 127.0.0.1:1\ninsecure: true\n"
                               "spool_when_full: sometimes\n";
  CommandResult bad = RunCommand(BinDir() + "/constance-agent run --config=" + bad_config, "");
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_THAT(bad.output, ::testing::HasSubstr("spool_when_full")) << bad.output;
  EXPECT_THAT(bad.output, ::testing::HasSubstr("refuse or drop_oldest")) << bad.output;
}

}  // namespace
}  // namespace constance::testing
