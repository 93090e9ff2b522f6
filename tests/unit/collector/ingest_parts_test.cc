// The ingest stream's parts on their own: the reply queue, the rate
// limiter with a stream's throttle, and typed refusal reasons.
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "collector/rate_limiter.h"
#include "collector/refusal.h"
#include "collector/reply_queue.h"
#include "gmock/gmock.h"
#include "grpcpp/support/byte_buffer.h"
#include "gtest/gtest.h"

namespace constance::collector {
namespace {

using ::testing::ElementsAre;

grpc::ByteBuffer Message(const std::string& text) {
  grpc::Slice slice(text);
  return grpc::ByteBuffer(&slice, 1);
}

std::string Text(const grpc::ByteBuffer* buffer) {
  grpc::Slice slice;
  EXPECT_TRUE(buffer->DumpToSingleSlice(&slice).ok());
  return std::string(reinterpret_cast<const char*>(slice.begin()), slice.size());
}

// Records what the queue asks of the stream, as a reactor would see it.
struct FakeStream {
  ReplyQueue queue{[this](const grpc::ByteBuffer* m) { writes.push_back(Text(m)); },
                   [this](const grpc::Status& s) { finishes.push_back(s.error_message()); }};
  std::vector<std::string> writes;
  std::vector<std::string> finishes;
};

TEST(ReplyQueueTest, WritesOneAtATimeInTheOrderQueued) {
  FakeStream s;
  s.queue.Push(Message("a"));
  s.queue.Push(Message("b"));
  s.queue.Push(Message("c"));
  EXPECT_THAT(s.writes, ElementsAre("a")) << "a second write started before the first ended";
  s.queue.WriteDone(true);
  EXPECT_THAT(s.writes, ElementsAre("a", "b"));
  s.queue.WriteDone(true);
  s.queue.WriteDone(true);
  EXPECT_THAT(s.writes, ElementsAre("a", "b", "c"));
  EXPECT_TRUE(s.finishes.empty());
}

TEST(ReplyQueueTest, EndsOnlyAfterTheQueuedRepliesAreWritten) {
  FakeStream s;
  s.queue.Push(Message("ack 1"));
  s.queue.Push(Message("ack 2"));
  s.queue.End(grpc::Status(grpc::StatusCode::ABORTED, "superseded"));
  EXPECT_TRUE(s.finishes.empty()) << "finished with a write in flight";
  s.queue.Push(Message("late"));  // Dropped: the stream is ending.
  s.queue.End(grpc::Status(grpc::StatusCode::INTERNAL, "second end"));  // Ignored.
  s.queue.WriteDone(true);
  EXPECT_TRUE(s.finishes.empty());
  s.queue.WriteDone(true);
  EXPECT_THAT(s.writes, ElementsAre("ack 1", "ack 2"));
  EXPECT_THAT(s.finishes, ElementsAre("superseded"));
}

TEST(ReplyQueueTest, EndsAtOnceWhenNothingIsBeingWritten) {
  FakeStream s;
  s.queue.End(grpc::Status::OK);
  EXPECT_EQ(s.finishes.size(), 1u);
}

TEST(ReplyQueueTest, ABrokenWriteDropsTheRestAndStillFinishesOnce) {
  FakeStream s;
  s.queue.Push(Message("a"));
  s.queue.Push(Message("b"));
  s.queue.End(grpc::Status(grpc::StatusCode::CANCELLED, "gone"));
  s.queue.WriteDone(false);
  EXPECT_THAT(s.writes, ElementsAre("a"));
  EXPECT_THAT(s.finishes, ElementsAre("gone"));
}

TEST(RateLimiterTest, UnlimitedNeverWaits) {
  RateLimiter limiter(0, 0);
  EXPECT_FALSE(limiter.limited());
  EXPECT_EQ(limiter.Take("store-1", 1'000'000, absl::UnixEpoch()), absl::ZeroDuration());
}

TEST(RateLimiterTest, ABucketRefillsAtItsRateAndLocationsAreApart) {
  RateLimiter limiter(/*rate=*/100, /*burst=*/200);
  const absl::Time t0 = absl::FromUnixSeconds(1'000);
  EXPECT_EQ(limiter.Take("store-1", 200, t0), absl::ZeroDuration());  // The burst.
  // 50 more need half a second of refill; nothing is taken meanwhile.
  EXPECT_EQ(limiter.Take("store-1", 50, t0), absl::Milliseconds(500));
  EXPECT_EQ(limiter.Take("store-2", 200, t0), absl::ZeroDuration()) << "buckets are shared";
  EXPECT_EQ(limiter.Take("store-1", 50, t0 + absl::Milliseconds(500)), absl::ZeroDuration());
}

TEST(RateLimiterTest, ABatchLargerThanTheBucketPassesWhenItIsFull) {
  RateLimiter limiter(/*rate=*/10, /*burst=*/20);
  EXPECT_EQ(limiter.Take("store-1", 5'000, absl::FromUnixSeconds(1)), absl::ZeroDuration());
  EXPECT_GT(limiter.Take("store-1", 5'000, absl::FromUnixSeconds(1)), absl::ZeroDuration());
}

TEST(StreamThrottleTest, LaterBatchesWaitUntilTheThrottledOneIsResent) {
  RateLimiter limiter(/*rate=*/100, /*burst=*/100);
  StreamThrottle throttle(&limiter);
  const absl::Time t0 = absl::FromUnixSeconds(1'000);
  EXPECT_EQ(throttle.Wait("store-1", 1, 100, t0), absl::ZeroDuration());
  EXPECT_GT(throttle.Wait("store-1", 101, 100, t0), absl::ZeroDuration());  // Throttled.
  // Tokens are back, but a batch after the throttled one must not apply
  // before the throttled one is resent: that would leave a hole.
  const absl::Time later = t0 + absl::Seconds(10);
  EXPECT_GT(throttle.Wait("store-1", 201, 100, later), absl::ZeroDuration());
  EXPECT_EQ(throttle.Wait("store-1", 101, 100, later), absl::ZeroDuration());  // The resend.
  EXPECT_EQ(throttle.Wait("store-1", 201, 50, later + absl::Seconds(1)), absl::ZeroDuration());
}

TEST(RefusalTest, TheReasonTravelsWithTheStatusNotItsText) {
  const absl::Status refused =
      Refusal(absl::PermissionDeniedError("mentions the catalog"), kRefusedLocationMismatch);
  EXPECT_EQ(RefusalReason(refused), kRefusedLocationMismatch);
  EXPECT_EQ(refused.message(), "mentions the catalog");
  EXPECT_EQ(RefusalReason(absl::InvalidArgumentError("catalog")), kRefusedInvalidBatch);
}

}  // namespace
}  // namespace constance::collector
