// Snapshots across a SIGKILL: a collector killed after a snapshot restarts
// from it with its findings' start times and its high-water marks, though
// the batches the snapshot covers are gone from the log.
#include <signal.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "google/protobuf/util/time_util.h"
#include "constance/v1/query.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"

namespace constance::testing {
namespace {

struct Running {
  std::unique_ptr<Subprocess> process;
  std::string grpc;
  std::string metrics;
};

Running StartCollector(const TempDir& dir, const std::string& name) {
  const std::string ready = dir.File(name + ".ready");
  Running r;
  r.process = std::make_unique<Subprocess>(
      std::vector<std::string>{BinDir() + "/constance-collector", "--insecure",
                               "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
                               "--state_dir=" + dir.path(), "--stats_interval=50ms",
                               "--evaluation_interval=100ms", "--snapshot_interval=100ms",
                               "--ready_file=" + ready},
      dir.File(name + ".log"));
  auto values = WaitForReadyFile(ready, *r.process, absl::Seconds(30));
  EXPECT_TRUE(values.ok()) << values.status();
  if (values.ok()) {
    r.grpc = (*values)["grpc"];
    r.metrics = (*values)["metrics"];
  }
  return r;
}

v1::Batch PriceBatch(int store) {
  v1::Batch b;
  b.set_location(absl::StrFormat("store-%02d", store));
  b.set_incarnation(5);
  b.set_first_sequence(1);
  v1::Observation* o = b.add_observations();
  o->set_key("coffee");
  o->mutable_price()->set_minor_units(store == 3 ? 499 : 449);
  o->mutable_price()->set_currency("EUR");
  *o->mutable_observed_at() = google::protobuf::util::TimeUtil::GetCurrentTime();
  return b;
}

// Sends one batch per store on one stream each; returns the acks.
std::vector<v1::Ack> Send(const std::string& address, const std::vector<v1::Batch>& batches) {
  auto stub = v1::Ingest::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  std::vector<v1::Ack> acks;
  for (const v1::Batch& batch : batches) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    auto stream = stub->Stream(&ctx);
    v1::AgentMessage m;
    *m.mutable_batch() = batch;
    EXPECT_TRUE(stream->Write(m));
    v1::CollectorMessage reply;
    while (stream->Read(&reply)) {
      if (reply.has_ack()) {
        acks.push_back(reply.ack());
        break;
      }
    }
    stream->WritesDone();
    ctx.TryCancel();
    (void)stream->Finish();
  }
  return acks;
}

// The active outlier findings about store-03, polled until there is one.
absl::StatusOr<v1::Finding> WaitForFinding(const std::string& address) {
  auto stub = v1::Query::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    grpc::ClientContext ctx;
    v1::FindingsRequest req;
    req.set_location("store-03");
    v1::FindingsResponse resp;
    if (stub->Findings(&ctx, req, &resp).ok() && resp.findings_size() > 0) {
      return resp.findings(0);
    }
    absl::SleepFor(absl::Milliseconds(50));  // Polling a condition, with a deadline.
  }
  return absl::DeadlineExceededError("no finding for store-03 within 30 s");
}

absl::StatusOr<double> Metric(const std::string& address, const std::string& series) {
  absl::StatusOr<HttpResponse> r = HttpGet(address, "/metrics");
  if (!r.ok()) return r.status();
  return MetricValue(r->body, series);
}

TEST(SnapshotTest, AKilledCollectorRestartsFromItsSnapshotWithFindingsAndWatermarks) {
  TempDir dir;
  std::vector<v1::Batch> batches;
  for (int i = 0; i < 10; ++i) batches.push_back(PriceBatch(i));
  v1::Finding before;
  {
    Running c = StartCollector(dir, "first");
    ASSERT_FALSE(c.grpc.empty());
    std::vector<v1::Ack> acks = Send(c.grpc, batches);
    ASSERT_EQ(acks.size(), 10u);
    for (const v1::Ack& a : acks) ASSERT_EQ(a.watermark(), 1u);
    absl::StatusOr<v1::Finding> f = WaitForFinding(c.grpc);
    ASSERT_TRUE(f.ok()) << f.status() << c.process->Log();
    before = *f;
    // Wait for a snapshot taken after the finding opened: two more than now.
    absl::StatusOr<double> taken = Metric(c.metrics, "constance_snapshots_total{result=\"ok\"");
    ASSERT_TRUE(taken.ok()) << taken.status();
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    absl::StatusOr<double> now = taken;
    while (now.ok() && *now < *taken + 2 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(50));  // Polling a condition, with a deadline.
      now = Metric(c.metrics, "constance_snapshots_total{result=\"ok\"");
    }
    ASSERT_TRUE(now.ok() && *now >= *taken + 2) << c.process->Log();
    absl::StatusOr<double> compacted =
        Metric(c.metrics, "constance_batch_log_compacted_batches_total");
    ASSERT_TRUE(compacted.ok());
    EXPECT_EQ(*compacted, 10);  // Every batch is covered by a snapshot.
    absl::StatusOr<int> status = c.process->Stop(SIGKILL, absl::Seconds(10));
    ASSERT_TRUE(status.ok()) << status.status();
  }
  Running c = StartCollector(dir, "second");
  ASSERT_FALSE(c.grpc.empty());
  absl::StatusOr<v1::Finding> after = WaitForFinding(c.grpc);
  ASSERT_TRUE(after.ok()) << after.status() << c.process->Log();
  EXPECT_EQ(after->id(), before.id());
  EXPECT_EQ(after->started_at().seconds(), before.started_at().seconds());
  EXPECT_EQ(after->started_at().nanos(), before.started_at().nanos());
  EXPECT_TRUE(absl::StrContains(c.process->Log(), "loaded the snapshot")) << c.process->Log();
  // The log no longer holds those batches; the restored high-water marks
  // still know them: resent, they are duplicates.
  std::vector<v1::Ack> acks = Send(c.grpc, batches);
  ASSERT_EQ(acks.size(), 10u);
  for (const v1::Ack& a : acks) EXPECT_EQ(a.duplicates(), 1u);
}

}  // namespace
}  // namespace constance::testing
