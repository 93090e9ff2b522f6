// The Ingest contract as a client written from proto/constance/v1 and
// README's "Writing a client" alone sees it: a raw stream client (not the
// agent) drives a real collector through gaps, overlaps, twin streams,
// throttling with acks out of order, and a collector killed (SIGKILL,
// --state_dir) between send and ack. It pipelines batches, matches acks by
// incarnation and first sequence, resends from the last watermark after
// any ack that settles nothing or any stream that ends, and at the end
// reads every sequence's key back (Query.KeyDetail): each acknowledged
// observation must be applied exactly once. Each test prints
//   contract: <scenario>: ... lost 0, duplicated 0
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"
#include "tests/integration/raw_stream.h"

namespace constance::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kLocation[] = "store-1";
constexpr uint64_t kIncarnation = 0xc0ffee;

struct ClientOptions {
  uint64_t total = 600;  // Sequences 1 .. total.
  uint64_t batch = 20;
  size_t window = 4;      // Batches in flight at most.
  int gap_every = 0;      // Every Nth batch jumps ahead, leaving a gap (0 = never).
  int overlap_every = 0;  // Every Nth batch starts half a batch back.
};

// The client side of the contract, one (location, incarnation) spool.
class ContractClient {
 public:
  explicit ContractClient(ClientOptions options) : o_(options) {}

  // A new stream to `address`; the old one, if any, is cancelled. Every
  // batch not acknowledged goes again, from the last watermark.
  void Connect(const std::string& address) {
    if (stream_) stream_->Cancel();
    stream_ = std::make_unique<RawStream>(address, kLocation, kIncarnation, true);
    Rewind();
    ++streams_;
  }

  // Sends batches while the window has room and nothing asked to rewind.
  void Fill() {
    while (!rewinding_ && inflight_.size() < o_.window && next_ <= o_.total) {
      ++batches_;
      uint64_t first = next_;
      if (o_.gap_every > 0 && batches_ % o_.gap_every == 0 && next_ + o_.batch <= o_.total) {
        first += o_.batch;  // A sender bug, or a spool that lost a batch.
        ++gaps_;
      } else if (o_.overlap_every > 0 && batches_ % o_.overlap_every == 0 &&
                 next_ > o_.batch && inflight_.count(next_ - o_.batch / 2) == 0) {
        first -= o_.batch / 2;  // A resend of what may be applied already.
        ++overlaps_;
      }
      const uint64_t count = std::min(o_.batch, o_.total - first + 1);
      if (!stream_->Send(first, count)) return;  // The read shows why.
      inflight_[first] = count;
      next_ = first + count;
    }
  }

  // Reads and handles one ack; false when the stream ended (its status in
  // ended()).
  bool Pump() {
    Fill();
    // Everything is acknowledged: no answer is owed, reading would wait
    // for nothing.
    if (inflight_.empty() && acked_ >= o_.total) return true;
    std::optional<v1::Ack> ack = stream_->NextAck();
    if (!ack.has_value()) {
      ended_ = stream_->Finish();
      return false;
    }
    Handle(*ack);
    if (rewinding_ && inflight_.empty()) {
      // Every batch sent has its answer: resend from the watermark, after
      // the wait a THROTTLED ack asked for.
      absl::SleepFor(retry_after_);
      retry_after_ = absl::ZeroDuration();
      Rewind();
    }
    return true;
  }

  // Pumps until every sequence is acknowledged, reconnecting to
  // `collector` whenever a stream ends.
  void RunToEnd(const CollectorProcess& collector) {
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (acked_ < o_.total && absl::Now() < deadline) {
      if (!Pump()) Connect(collector.address());
    }
    ASSERT_EQ(acked_, o_.total) << collector.Log();
    EXPECT_TRUE(stream_->Finish().ok());
  }

  // A second stream for the same location and incarnation while this
  // one has batches in flight (a reconnect while the old connection is
  // not dead yet). Once the newer stream holds the location, the older
  // one is sent one more batch and read to its end; its acks are handled
  // like any other. Continues on the newer stream from the watermark and
  // returns how the older one ended.
  grpc::Status Twin(const std::string& address) {
    Fill();
    auto newer = std::make_unique<RawStream>(address, kLocation, kIncarnation, true);
    EXPECT_TRUE(newer->Greeted());
    if (next_ <= o_.total) {
      const uint64_t count = std::min(o_.batch, o_.total - next_ + 1);
      if (stream_->Send(next_, count)) inflight_[next_] = count;
    }
    while (std::optional<v1::Ack> ack = stream_->NextAck()) Handle(*ack);
    grpc::Status older = stream_->Finish();
    stream_ = std::move(newer);
    Rewind();
    ++streams_;
    return older;
  }

  RawStream& stream() { return *stream_; }
  const grpc::Status& ended() const { return ended_; }
  uint64_t acked() const { return acked_; }
  std::map<uint64_t, uint64_t>& inflight() { return inflight_; }

  // "gaps 3, overlaps 2, ...": what the run went through.
  std::string Counts() const {
    return absl::StrCat("streams ", streams_, ", batches ", batches_, ", gaps ", gaps_,
                        ", overlaps ", overlaps_, ", out_of_order ", out_of_order_,
                        ", throttled ", throttled_, ", acks overtaking ", overtaking_,
                        ", applied ", applied_, ", duplicates ", duplicates_);
  }
  uint64_t out_of_order() const { return out_of_order_; }
  uint64_t throttled() const { return throttled_; }
  uint64_t overtaking() const { return overtaking_; }
  uint64_t duplicates() const { return duplicates_; }

 private:
  void Rewind() {
    inflight_.clear();
    rewinding_ = false;
    next_ = acked_ + 1;
  }

  // Matches `ack` to its batch by incarnation and first sequence, never by
  // position, and does what its outcome asks.
  void Handle(const v1::Ack& ack) {
    EXPECT_EQ(ack.incarnation(), kIncarnation);
    auto it = inflight_.find(ack.first_sequence());
    if (it == inflight_.end()) {
      ADD_FAILURE() << "an ack for no batch in flight: " << ack.ShortDebugString();
      return;
    }
    EXPECT_EQ(ack.count(), it->second);
    if (it != inflight_.begin()) ++overtaking_;  // An earlier batch is still unanswered.
    inflight_.erase(it);
    switch (ack.outcome()) {
      case v1::Ack::APPLIED:
        EXPECT_GE(ack.watermark(), acked_) << "a watermark never goes back";
        acked_ = std::max(acked_, ack.watermark());
        EXPECT_EQ(ack.applied() + ack.duplicates() + ack.rejections_size(), ack.count())
            << ack.ShortDebugString();
        EXPECT_EQ(ack.rejections_size(), 0) << ack.ShortDebugString();
        applied_ += ack.applied();
        duplicates_ += ack.duplicates();
        break;
      case v1::Ack::THROTTLED:
        ++throttled_;
        EXPECT_GT(ack.retry_after_ms(), 0u);
        retry_after_ = std::max(retry_after_, absl::Milliseconds(ack.retry_after_ms()));
        rewinding_ = true;
        break;
      case v1::Ack::OUT_OF_ORDER:
        ++out_of_order_;
        EXPECT_GT(ack.expected_sequence(), ack.watermark());
        EXPECT_LT(ack.expected_sequence(), ack.first_sequence());
        EXPECT_EQ(ack.applied(), 0u);
        rewinding_ = true;
        break;
      default:
        ADD_FAILURE() << "an ack of no known outcome: " << ack.ShortDebugString();
    }
  }

  const ClientOptions o_;
  std::unique_ptr<RawStream> stream_;
  std::map<uint64_t, uint64_t> inflight_;  // first sequence -> count.
  uint64_t next_ = 1, acked_ = 0;
  bool rewinding_ = false;
  absl::Duration retry_after_ = absl::ZeroDuration();
  grpc::Status ended_;
  uint64_t streams_ = 0, batches_ = 0, gaps_ = 0, overlaps_ = 0, out_of_order_ = 0,
           throttled_ = 0, overtaking_ = 0, applied_ = 0, duplicates_ = 0;
};

// Reads every sequence back, prints the summary line and checks it.
void ExpectExactlyOnce(const std::string& scenario, const CollectorProcess& collector,
                       const ContractClient& client, uint64_t total) {
  const Delivery d = CountApplied(collector.address(), total);
  std::printf("contract: %s: acknowledged %llu, applied once %llu, lost %llu, duplicated %llu (%s)\n",
              scenario.c_str(), static_cast<unsigned long long>(client.acked()),
              static_cast<unsigned long long>(d.applied_once),
              static_cast<unsigned long long>(d.lost),
              static_cast<unsigned long long>(d.duplicated), client.Counts().c_str());
  std::fflush(stdout);
  EXPECT_EQ(d.lost, 0u) << absl::StrJoin(d.problems, "\n");
  EXPECT_EQ(d.duplicated, 0u) << absl::StrJoin(d.problems, "\n");
  EXPECT_EQ(d.applied_once, total);
}

class ContractTest : public ::testing::TestWithParam<bool> {
 protected:
  std::string Scenario(const std::string& name) const {
    return absl::StrCat(name, GetParam() ? " (durable)" : " (in memory)");
  }
};

TEST_P(ContractTest, GapsAndOverlapsApplyEachObservationOnce) {
  TempDir dir;
  CollectorProcess collector(dir, GetParam());
  ClientOptions o;
  o.gap_every = 7;
  o.overlap_every = 5;
  ContractClient client(o);
  client.Connect(collector.address());
  client.RunToEnd(collector);
  EXPECT_GT(client.out_of_order(), 0u) << "no gap was answered: the test proves nothing";
  EXPECT_GT(client.duplicates(), 0u) << "no overlap was sent: the test proves nothing";
  ExpectExactlyOnce(Scenario("gaps and overlaps"), collector, client, o.total);
}

TEST_P(ContractTest, TwinStreamsApplyEachObservationOnce) {
  TempDir dir;
  CollectorProcess collector(dir, GetParam());
  ClientOptions o;
  // Enough to keep batches in flight through every twin: a twin of a
  // stream with nothing left to send proves nothing.
  o.total = 2000;
  ContractClient client(o);
  client.Connect(collector.address());
  for (int twin = 0; twin < 5; ++twin) {
    ASSERT_LT(client.acked(), o.total) << "twin " << twin << ": everything is acknowledged "
                                       << "already; raise o.total";
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(client.Pump()) << "twin " << twin << ", pump " << i << ": stream ended "
                                 << client.ended().error_code() << " "
                                 << client.ended().error_message() << "\n"
                                 << collector.Log();
    }
    const grpc::Status older = client.Twin(collector.address());
    EXPECT_EQ(older.error_code(), grpc::StatusCode::ABORTED) << older.error_message();
    EXPECT_THAT(older.error_message(), HasSubstr("superseded by a newer stream"));
  }
  client.RunToEnd(collector);
  ExpectExactlyOnce(Scenario("twin streams"), collector, client, o.total);
}

// Throttled batches are answered when read, applied ones after their
// commit: acks overtake earlier batches' acks.
TEST(ContractThrottleTest, ThrottledBatchesAndAcksOutOfOrderApplyEachObservationOnce) {
  TempDir dir;
  CollectorProcess collector(dir, /*durable=*/true,
                             {"--max_rate_per_location=1000", "--rate_burst=100"});
  ClientOptions o;
  o.total = 1500;
  o.batch = 50;
  o.window = 8;
  ContractClient client(o);
  client.Connect(collector.address());
  client.RunToEnd(collector);
  EXPECT_GT(client.throttled(), 0u) << "nothing was throttled: the test proves nothing";
  EXPECT_GT(client.overtaking(), 0u) << "no ack came out of order: the test proves nothing";
  ExpectExactlyOnce("throttling and acks out of order (durable)", collector, client, o.total);
}

// The collector dies with batches sent and not yet acknowledged; what the
// log committed is replayed, and the resend after reconnecting applies the
// rest, each observation once.
TEST(ContractKillTest, ACollectorKilledBetweenSendAndAckLosesAndDuplicatesNothing) {
  TempDir dir;
  CollectorProcess collector(dir, /*durable=*/true);
  ClientOptions o;
  ContractClient client(o);
  client.Connect(collector.address());
  for (int kill = 0; kill < 5; ++kill) {
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(client.Pump()) << collector.Log();
    client.Fill();  // Sent, not yet acknowledged.
    ASSERT_FALSE(client.inflight().empty());
    ASSERT_TRUE(collector.Restart(SIGKILL).ok());
    client.Connect(collector.address());
  }
  client.RunToEnd(collector);
  ExpectExactlyOnce("collector SIGKILL between send and ack (durable)", collector, client,
                    o.total);
}

TEST(ContractRefusalTest, IncarnationZeroIsRefusedSayingWhatToSend) {
  TempDir dir;
  CollectorProcess collector(dir, /*durable=*/false);
  RawStream stream(collector.address(), kLocation, /*incarnation=*/0, true);
  grpc::Status status = stream.Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("heartbeat.incarnation: 0 is not an incarnation"));
  EXPECT_THAT(status.error_message(), HasSubstr("random non-zero 64-bit id"));
}

INSTANTIATE_TEST_SUITE_P(LogAndMemory, ContractTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "Durable" : "InMemory";
                         });

}  // namespace
}  // namespace constance::testing
