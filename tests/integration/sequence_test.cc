// Delivery for any client, driven by raw Ingest streams (not the agent)
// against a real collector on 127.0.0.1: only a contiguous prefix of each
// (location, incarnation) is applied, so a batch that leaves a gap is
// answered OUT_OF_ORDER (to a client announcing "out_of_order") or ends
// the stream with FAILED_PRECONDITION (any other client), and resending
// from the expected sequence applies every observation exactly once; and
// a second stream for a location supersedes the first.
//
// Every observation has a key of its own ("k<sequence>"): the collector's
// applied count equal to the distinct observations sent, with no
// duplicates counted, means each was applied exactly once.
#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "constance/v1/query.grpc.pb.h"
#include "constance/version.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"

namespace constance::testing {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kIncarnation = 0x5eed;

class Collector {
 public:
  // `durable`: with --state_dir, so batches go through the log first.
  Collector(const TempDir& dir, bool durable) {
    const std::string ready = dir.File("collector.ready");
    std::vector<std::string> argv = {BinDir() + "/constance-collector", "--insecure",
                                     "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
                                     "--stats_interval=50ms", "--ready_file=" + ready};
    if (durable) argv.push_back("--state_dir=" + dir.path());
    process_ = std::make_unique<Subprocess>(std::move(argv), dir.File("collector.log"));
    auto r = WaitForReadyFile(ready, *process_, absl::Seconds(30));
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) {
      address_ = (*r)["grpc"];
      metrics_ = (*r)["metrics"];
    }
  }
  const std::string& address() const { return address_; }
  std::string Log() const { return process_->Log(); }

  // A counter from /metrics once the statistics tick has applied
  // `applied` observations (polled, with a deadline).
  double Metric(const std::string& series, double applied) const {
    double value = -1;
    for (absl::Time deadline = absl::Now() + absl::Seconds(10); absl::Now() < deadline;) {
      absl::StatusOr<HttpResponse> r = HttpGet(metrics_, "/metrics");
      if (r.ok() &&
          MetricValue(r->body, "constance_observations_applied_total").value_or(-1) >= applied) {
        return MetricValue(r->body, series).value_or(-1);
      }
      absl::SleepFor(absl::Milliseconds(20));  // Polling the statistics tick.
    }
    return value;
  }

 private:
  std::unique_ptr<Subprocess> process_;
  std::string address_, metrics_;
};

// One raw Ingest stream, driven step by step.
class RawStream {
 public:
  RawStream(const std::string& address, const std::string& location, bool out_of_order)
      : stub_(v1::Ingest::NewStub(
            grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))),
        location_(location) {
    ctx_.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    stream_ = stub_->Stream(&ctx_);
    v1::AgentMessage m;
    v1::Heartbeat* hb = m.mutable_heartbeat();
    hb->set_location(location);
    hb->set_incarnation(kIncarnation);
    hb->set_protocol_version(kProtocolVersion);
    if (out_of_order) hb->add_capabilities(std::string(kCapabilityOutOfOrder));
    EXPECT_TRUE(stream_->Write(m));
  }

  // Sends sequences first .. first + count - 1, one wait each.
  bool Send(uint64_t first, uint64_t count) {
    v1::AgentMessage m;
    v1::Batch* b = m.mutable_batch();
    b->set_location(location_);
    b->set_incarnation(kIncarnation);
    b->set_first_sequence(first);
    for (uint64_t s = first; s < first + count; ++s) {
      v1::Observation* o = b->add_observations();
      o->set_key(absl::StrCat("k", s));
      o->set_wait_seconds(static_cast<double>(s));
    }
    return stream_->Write(m);
  }

  // The next ack (a Hello is skipped), or nullopt when the stream ended.
  std::optional<v1::Ack> NextAck() {
    v1::CollectorMessage reply;
    while (stream_->Read(&reply)) {
      if (reply.has_ack()) return reply.ack();
    }
    return std::nullopt;
  }

  // Waits for the collector's Hello: the heartbeat before it was handled
  // (this stream holds its location).
  bool Greeted() {
    v1::CollectorMessage reply;
    return stream_->Read(&reply) && reply.has_hello();
  }

  grpc::Status Finish() {
    stream_->WritesDone();
    v1::CollectorMessage ignored;
    while (stream_->Read(&ignored)) {
    }
    return stream_->Finish();
  }

 private:
  std::unique_ptr<v1::Ingest::Stub> stub_;
  std::string location_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::AgentMessage, v1::CollectorMessage>> stream_;
};

class SequenceTest : public ::testing::TestWithParam<bool> {};

TEST_P(SequenceTest, AGapIsAnsweredOutOfOrderAndTheResendAppliesEachObservationOnce) {
  TempDir dir;
  Collector collector(dir, GetParam());
  RawStream stream(collector.address(), "store-1", /*out_of_order=*/true);
  ASSERT_TRUE(stream.Send(1, 10));
  std::optional<v1::Ack> ack = stream.NextAck();
  ASSERT_TRUE(ack.has_value()) << collector.Log();
  EXPECT_EQ(ack->outcome(), v1::Ack::APPLIED);
  EXPECT_EQ(ack->watermark(), 10u);

  ASSERT_TRUE(stream.Send(21, 10));  // 11..20 left out.
  ack = stream.NextAck();
  ASSERT_TRUE(ack.has_value()) << collector.Log();
  EXPECT_EQ(ack->outcome(), v1::Ack::OUT_OF_ORDER);
  EXPECT_EQ(ack->first_sequence(), 21u);
  EXPECT_EQ(ack->expected_sequence(), 11u);
  EXPECT_EQ(ack->watermark(), 10u);

  ASSERT_TRUE(stream.Send(11, 10));
  ASSERT_TRUE(stream.Send(21, 10));
  for (uint64_t want : {20u, 30u}) {
    ack = stream.NextAck();
    ASSERT_TRUE(ack.has_value());
    EXPECT_EQ(ack->outcome(), v1::Ack::APPLIED);
    EXPECT_EQ(ack->watermark(), want);
    EXPECT_EQ(ack->duplicates(), 0u);
  }
  EXPECT_TRUE(stream.Finish().ok());
  EXPECT_EQ(collector.Metric("constance_observations_applied_total", 30), 30) << collector.Log();
  EXPECT_EQ(collector.Metric("constance_observations_duplicate_total", 30), 0);
  EXPECT_EQ(collector.Metric("constance_batches_out_of_order_total", 30), 1);
}

TEST_P(SequenceTest, AClientWithoutTheCapabilityHasItsStreamEndedAndResends) {
  TempDir dir;
  Collector collector(dir, GetParam());
  {
    RawStream stream(collector.address(), "store-1", /*out_of_order=*/false);
    ASSERT_TRUE(stream.Send(1, 10));
    std::optional<v1::Ack> ack = stream.NextAck();
    ASSERT_TRUE(ack.has_value()) << collector.Log();
    EXPECT_EQ(ack->watermark(), 10u);
    ASSERT_TRUE(stream.Send(21, 10));
    EXPECT_FALSE(stream.NextAck().has_value()) << "no ack it would misread as settling";
    grpc::Status status = stream.Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_THAT(status.error_message(), HasSubstr("sequence gap: expected 11, got 21"));
  }
  // Reconnected, it resends from its last watermark.
  RawStream again(collector.address(), "store-1", /*out_of_order=*/false);
  ASSERT_TRUE(again.Send(11, 20));
  std::optional<v1::Ack> ack = again.NextAck();
  ASSERT_TRUE(ack.has_value()) << collector.Log();
  EXPECT_EQ(ack->outcome(), v1::Ack::APPLIED);
  EXPECT_EQ(ack->watermark(), 30u);
  EXPECT_EQ(ack->duplicates(), 0u);
  EXPECT_TRUE(again.Finish().ok());
  EXPECT_EQ(collector.Metric("constance_observations_applied_total", 30), 30) << collector.Log();
  EXPECT_EQ(collector.Metric("constance_observations_duplicate_total", 30), 0);
}

TEST_P(SequenceTest, ASecondStreamForALocationSupersedesTheFirst) {
  TempDir dir;
  Collector collector(dir, GetParam());
  RawStream older(collector.address(), "store-1", /*out_of_order=*/true);
  ASSERT_TRUE(older.Greeted()) << collector.Log();
  ASSERT_TRUE(older.Send(1, 10));
  std::optional<v1::Ack> ack = older.NextAck();
  ASSERT_TRUE(ack.has_value()) << collector.Log();
  EXPECT_EQ(ack->watermark(), 10u);
  // The older stream sends 11..20 and never reads the answer (lost, say).
  ASSERT_TRUE(older.Send(11, 10));

  RawStream newer(collector.address(), "store-1", /*out_of_order=*/true);
  ASSERT_TRUE(newer.Greeted()) << collector.Log();
  // Whatever the older stream sends now applies nothing.
  (void)older.Send(21, 10);
  uint64_t acked_on_older = 10;
  while (std::optional<v1::Ack> late = older.NextAck()) {
    acked_on_older = std::max<uint64_t>(acked_on_older, late->watermark());
  }
  grpc::Status ended = older.Finish();
  EXPECT_EQ(ended.error_code(), grpc::StatusCode::ABORTED) << ended.error_message();
  EXPECT_THAT(ended.error_message(), HasSubstr("superseded by a newer stream"));
  EXPECT_LE(acked_on_older, 20u) << "21..30 went only to the superseded stream";

  // The newer stream resends everything past what it knows acknowledged.
  ASSERT_TRUE(newer.Send(11, 10));
  ASSERT_TRUE(newer.Send(21, 10));
  uint64_t duplicates = 0;
  for (int i = 0; i < 2; ++i) {
    ack = newer.NextAck();
    ASSERT_TRUE(ack.has_value()) << collector.Log();
    EXPECT_EQ(ack->outcome(), v1::Ack::APPLIED);
    duplicates += ack->duplicates();
  }
  EXPECT_EQ(ack->watermark(), 30u);
  // 11..20 count as duplicates only if the older stream's batch applied
  // before the newer stream claimed the location.
  EXPECT_LE(duplicates, 10u);
  EXPECT_TRUE(newer.Finish().ok());
  EXPECT_EQ(collector.Metric("constance_observations_applied_total", 30), 30) << collector.Log();
  EXPECT_EQ(collector.Metric("constance_observations_duplicate_total", 30), duplicates);
}

INSTANTIATE_TEST_SUITE_P(LogAndMemory, SequenceTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "Durable" : "InMemory";
                         });

}  // namespace
}  // namespace constance::testing
