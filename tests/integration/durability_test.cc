// The collector's acknowledgement means durable: a batch acknowledged
// before a SIGKILL is in the statistics after a restart on the same state
// directory, and its resend after the restart counts as a duplicate.
#include <signal.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "constance/v1/query.grpc.pb.h"
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
    if (r.ok()) address_ = (*r)["grpc"];
  }
  Subprocess& process() { return *process_; }
  const std::string& address() const { return address_; }

 private:
  std::unique_ptr<Subprocess> process_;
  std::string address_;
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

// Sends `batches` on one stream and returns their acks.
std::vector<v1::Ack> Send(const std::string& address, const std::vector<v1::Batch>& batches) {
  auto stub = v1::Ingest::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto stream = stub->Stream(&ctx);
  std::vector<v1::Ack> acks;
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
  const v1::ChainSummaryResponse before = Summary(first->address());
  EXPECT_EQ(before.observations_applied(), 1000u);
  // No clean shutdown: SIGKILL right after the acknowledgements.
  ASSERT_TRUE(first->process().Stop(SIGKILL, absl::Seconds(10)).ok());

  Collector second(dir, "second");
  const v1::ChainSummaryResponse after = Summary(second.address());
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

}  // namespace
}  // namespace constance::testing
