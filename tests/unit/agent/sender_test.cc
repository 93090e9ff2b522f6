// The sender against an in-process fake collector on a loopback port:
// delivery and acknowledgement, resending after a broken stream, throttling,
// the in-flight window, heartbeats, and a bounded stop with no collector.
// Waits are on conditions with deadlines, never sleeps.
#include "agent/sender.h"

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "constance/version.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace constance::agent {
namespace {

// Acknowledges contiguous batches with the watermark. Behaviours for the
// tests: fail the stream on the next batch, throttle the next batch, or
// never acknowledge anything.
class FakeCollector final : public v1::Ingest::Service {
 public:
  struct Received {
    int stream;
    uint64_t first;
    int count;
  };

  grpc::Status Stream(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<v1::CollectorMessage, v1::AgentMessage>* stream) override {
    int stream_no;
    {
      absl::MutexLock lock(&mu_);
      stream_no = ++streams_;
    }
    v1::AgentMessage msg;
    while (stream->Read(&msg)) {
      v1::CollectorMessage answer;
      {
        absl::MutexLock lock(&mu_);
        if (msg.has_heartbeat()) {
          heartbeats_.push_back(msg.heartbeat());
          continue;
        }
        const v1::Batch& b = msg.batch();
        received_.push_back(Received{stream_no, b.first_sequence(), b.observations_size()});
        if (fail_next_batch_) {
          fail_next_batch_ = false;
          return grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake collector crashed");
        }
        if (never_ack_) continue;
        v1::Ack* ack = answer.mutable_ack();
        ack->set_location(b.location());
        ack->set_incarnation(b.incarnation());
        ack->set_first_sequence(b.first_sequence());
        ack->set_count(b.observations_size());
        if (out_of_order_next_batch_) {
          out_of_order_next_batch_ = false;
          ack->set_outcome(v1::Ack::OUT_OF_ORDER);
          ack->set_expected_sequence(watermark_ + 1);
        } else if (throttle_next_batch_) {
          throttle_next_batch_ = false;
          ack->set_outcome(v1::Ack::THROTTLED);
          ack->set_retry_after_ms(20);
        } else {
          ack->set_outcome(v1::Ack::APPLIED);
          const uint64_t last = b.first_sequence() + b.observations_size() - 1;
          if (b.first_sequence() <= watermark_ + 1) watermark_ = std::max(watermark_, last);
        }
        ack->set_watermark(watermark_);
      }
      if (!stream->Write(answer)) break;
    }
    return grpc::Status::OK;
  }

  // True once the watermark reaches `want` within `timeout`.
  bool WaitForWatermark(uint64_t want, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, want]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return watermark_ >= want; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), timeout);
  }

  // True once `want` batches arrived within `timeout`.
  bool WaitForBatches(size_t want, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, want]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return received_.size() >= want; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), timeout);
  }

  void FailNextBatch() {
    absl::MutexLock lock(&mu_);
    fail_next_batch_ = true;
  }
  void ThrottleNextBatch() {
    absl::MutexLock lock(&mu_);
    throttle_next_batch_ = true;
  }
  void OutOfOrderNextBatch() {
    absl::MutexLock lock(&mu_);
    out_of_order_next_batch_ = true;
  }
  void NeverAck() {
    absl::MutexLock lock(&mu_);
    never_ack_ = true;
  }
  std::vector<Received> received() {
    absl::MutexLock lock(&mu_);
    return received_;
  }
  std::vector<v1::Heartbeat> heartbeats() {
    absl::MutexLock lock(&mu_);
    return heartbeats_;
  }
  int streams() {
    absl::MutexLock lock(&mu_);
    return streams_;
  }

 private:
  absl::Mutex mu_;
  int streams_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t watermark_ ABSL_GUARDED_BY(mu_) = 0;
  bool fail_next_batch_ ABSL_GUARDED_BY(mu_) = false;
  bool throttle_next_batch_ ABSL_GUARDED_BY(mu_) = false;
  bool out_of_order_next_batch_ ABSL_GUARDED_BY(mu_) = false;
  bool never_ack_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<Received> received_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::Heartbeat> heartbeats_ ABSL_GUARDED_BY(mu_);
};

class SenderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&collector_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }

  void TearDown() override {
    sender_.reset();  // Before the server: it may still hold a stream.
    server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  }

  SenderOptions Options() {
    SenderOptions o;
    o.location = "store-a";
    o.collector = "127.0.0.1:" + std::to_string(port_);
    o.flush_interval = absl::Milliseconds(5);
    o.max_batch = 100;
    o.backoff_initial = absl::Milliseconds(10);
    o.backoff_max = absl::Milliseconds(100);
    o.version = "test";
    return o;
  }

  // Appends `n` observations and tells the sender.
  void Append(int n) {
    std::vector<v1::Observation> obs(n);
    for (int i = 0; i < n; ++i) {
      obs[i].set_key("k" + std::to_string(i));
      obs[i].set_score(i);
    }
    absl::StatusOr<uint64_t> first = spool_.Append(std::move(obs));
    ASSERT_TRUE(first.ok()) << first.status();
    if (sender_) sender_->NotifyAppended(*first + n - 1);
  }

  FakeCollector collector_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  MemorySpool spool_{SpoolOptions{}};
  AgentMetrics metrics_{"store-a", "test"};
  std::unique_ptr<Sender> sender_;
};

TEST_F(SenderTest, DeliversInBatchesAndEmptiesTheSpool) {
  SenderOptions options = Options();
  options.labels = {{"region", "idf"}, {"format", "city"}};
  options.data_cadence = absl::Hours(24);
  sender_ = std::make_unique<Sender>(options, &spool_, &metrics_);
  sender_->Start();
  Append(250);
  ASSERT_TRUE(collector_.WaitForWatermark(250, absl::Seconds(20)));
  // Everything is acknowledged: stopping drains at once.
  EXPECT_EQ(sender_->Stop(absl::Seconds(10)), 0u);
  EXPECT_EQ(spool_.Depth(), 0u);

  std::vector<FakeCollector::Received> got = collector_.received();
  uint64_t next = 1;
  for (const auto& r : got) {
    EXPECT_EQ(r.first, next) << "batches are consecutive";
    EXPECT_LE(r.count, 100) << "max_batch";
    next = r.first + r.count;
  }
  EXPECT_EQ(next, 251u);
  AgentMetrics::Snapshot s = metrics_.Read();
  EXPECT_EQ(s.delivered, 250u);
  EXPECT_EQ(s.batches_sent, got.size());

  // The collector hears about the agent's health first.
  std::vector<v1::Heartbeat> hb = collector_.heartbeats();
  ASSERT_FALSE(hb.empty());
  EXPECT_EQ(hb[0].location(), "store-a");
  EXPECT_EQ(hb[0].incarnation(), spool_.incarnation());
  EXPECT_EQ(hb[0].version(), "test");
  EXPECT_TRUE(hb[0].has_sent_at());
  EXPECT_EQ(hb[0].labels().at("region"), "idf");
  EXPECT_EQ(hb[0].labels().at("format"), "city");
  EXPECT_EQ(hb[0].data_cadence_seconds(), 24u * 3600);
}

TEST_F(SenderTest, DrainOnStopSendsWhatIsLeft) {
  SenderOptions o = Options();
  o.flush_interval = absl::Hours(1);  // Only the drain can send.
  sender_ = std::make_unique<Sender>(o, &spool_, &metrics_);
  sender_->Start();
  Append(30);
  EXPECT_EQ(sender_->Stop(absl::Seconds(10)), 0u);
  EXPECT_EQ(spool_.Depth(), 0u);
}

TEST_F(SenderTest, ResendsEverythingUnacknowledgedAfterAFailure) {
  collector_.FailNextBatch();
  sender_ = std::make_unique<Sender>(Options(), &spool_, &metrics_);
  Append(50);  // Before Start: the sender finds it in the spool.
  sender_->Start();
  sender_->NotifyAppended(spool_.LastSequence());
  ASSERT_TRUE(collector_.WaitForWatermark(50, absl::Seconds(20)));
  EXPECT_EQ(sender_->Stop(absl::Seconds(10)), 0u);

  std::vector<FakeCollector::Received> got = collector_.received();
  ASSERT_GE(got.size(), 2u);
  EXPECT_EQ(got[0].stream, 1);
  EXPECT_EQ(got[0].first, 1u);
  // The next stream starts again from the oldest unacknowledged.
  EXPECT_EQ(got[1].stream, 2);
  EXPECT_EQ(got[1].first, 1u);
  EXPECT_GE(metrics_.Read().reconnects, 1u);
}

TEST_F(SenderTest, ThrottledBatchIsSentAgain) {
  collector_.ThrottleNextBatch();
  sender_ = std::make_unique<Sender>(Options(), &spool_, &metrics_);
  sender_->Start();
  Append(10);
  ASSERT_TRUE(collector_.WaitForWatermark(10, absl::Seconds(20)));
  EXPECT_EQ(sender_->Stop(absl::Seconds(10)), 0u);
  std::vector<FakeCollector::Received> got = collector_.received();
  ASSERT_GE(got.size(), 2u);
  EXPECT_EQ(got[0].first, 1u);
  EXPECT_EQ(got[1].first, 1u);
  EXPECT_EQ(collector_.streams(), 1) << "throttling is not a stream failure";
}

TEST_F(SenderTest, OutOfOrderRewindsToTheExpectedSequence) {
  collector_.OutOfOrderNextBatch();
  sender_ = std::make_unique<Sender>(Options(), &spool_, &metrics_);
  sender_->Start();
  Append(10);
  ASSERT_TRUE(collector_.WaitForWatermark(10, absl::Seconds(20)));
  EXPECT_EQ(sender_->Stop(absl::Seconds(10)), 0u);
  std::vector<FakeCollector::Received> got = collector_.received();
  ASSERT_GE(got.size(), 2u);
  EXPECT_EQ(got[1].first, 1u) << "resent from the expected sequence";
  EXPECT_EQ(collector_.streams(), 1) << "an out-of-order answer is not a stream failure";
  ASSERT_FALSE(collector_.heartbeats().empty());
  EXPECT_THAT(collector_.heartbeats()[0].capabilities(),
              ::testing::Contains(std::string(kCapabilityOutOfOrder)));
}

TEST_F(SenderTest, InFlightWindowIsBounded) {
  collector_.NeverAck();
  SenderOptions o = Options();
  o.max_batch = 10;
  o.max_in_flight_batches = 2;
  sender_ = std::make_unique<Sender>(o, &spool_, &metrics_);
  sender_->Start();
  Append(100);
  ASSERT_TRUE(collector_.WaitForBatches(2, absl::Seconds(20)));
  // A third batch would need an ack first.
  EXPECT_FALSE(collector_.WaitForBatches(3, absl::Milliseconds(300)));
  // Nothing acknowledged: a short drain gives up and reports what is left.
  EXPECT_EQ(sender_->Stop(absl::Milliseconds(50)), 100u);
  EXPECT_EQ(spool_.Depth(), 100u);
  // Stopped: however late a third batch would have gone, none went.
  EXPECT_EQ(collector_.received().size(), 2u);
}

TEST(SenderStopTest, BoundedWithoutACollector) {
  MemorySpool spool(SpoolOptions{});
  AgentMetrics metrics("store-a", "test");
  SenderOptions o;
  o.location = "store-a";
  o.collector = "127.0.0.1:1";  // Nothing listens there.
  o.backoff_initial = absl::Milliseconds(10);
  o.backoff_max = absl::Milliseconds(50);
  Sender sender(o, &spool, &metrics);
  sender.Start();
  std::vector<v1::Observation> obs(1);
  obs[0].set_key("a");
  obs[0].set_score(1);
  ASSERT_TRUE(spool.Append(obs).ok());
  sender.NotifyAppended(1);
  const absl::Time start = absl::Now();
  EXPECT_EQ(sender.Stop(absl::Milliseconds(300)), 1u);
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_FALSE(sender.connected());
}

}  // namespace
}  // namespace constance::agent
