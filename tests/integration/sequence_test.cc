// Delivery for any client, driven by raw Ingest streams (not the agent)
// against a real collector on 127.0.0.1: only a contiguous prefix of each
// (location, incarnation) is applied, so a batch that leaves a gap is
// answered OUT_OF_ORDER (to a client announcing "out_of_order") or ends
// the stream with FAILED_PRECONDITION (any other client), and resending
// from the expected sequence applies every observation exactly once; and
// a second stream for a location supersedes the first.
//
// Every observation has a key of its own ("k<sequence>", raw_stream.h): the collector's
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
#include "tests/integration/raw_stream.h"

namespace constance::testing {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kIncarnation = 0x5eed;

// The suite's one location, spool incarnation and harness.
class Collector : public CollectorProcess {
 public:
  Collector(const TempDir& dir, bool durable) : CollectorProcess(dir, durable) {}
};

class RawStream : public testing::RawStream {
 public:
  RawStream(const std::string& address, const std::string& location, bool out_of_order)
      : testing::RawStream(address, location, kIncarnation, out_of_order) {}
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
