// The write side of one agent stream: serialized replies written one at a
// time in the order queued (gRPC allows one outstanding write per stream),
// then the stream's end once the write in flight is done.
//
// Thread-safety: Push, End and WriteDone may be called from any thread
// (the stream's reads, the batch log's committer, gRPC's write callback).
#ifndef CONSTANCE_COLLECTOR_REPLY_QUEUE_H_
#define CONSTANCE_COLLECTOR_REPLY_QUEUE_H_

#include <deque>
#include <functional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/status.h"

namespace constance::collector {

class ReplyQueue {
 public:
  // `start_write` begins writing one message (the reactor's StartWrite:
  // the pointer stays valid until the matching WriteDone); `finish` ends
  // the stream (the reactor's Finish). Both are called without the
  // queue's lock held.
  ReplyQueue(std::function<void(const grpc::ByteBuffer*)> start_write,
             std::function<void(const grpc::Status&)> finish)
      : start_write_(std::move(start_write)), finish_(std::move(finish)) {}
  ReplyQueue(const ReplyQueue&) = delete;
  ReplyQueue& operator=(const ReplyQueue&) = delete;

  // Queues `message`; dropped once the stream is ending.
  void Push(grpc::ByteBuffer message);
  // Ends the stream with `status` after the replies queued so far are
  // written. Only the first call counts.
  void End(grpc::Status status);
  // The reactor's OnWriteDone: starts the next write, or the finish.
  void WriteDone(bool ok);

 private:
  // True exactly once: when the stream is ending and no write is in flight.
  bool TakeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::function<void(const grpc::ByteBuffer*)> start_write_;
  const std::function<void(const grpc::Status&)> finish_;
  absl::Mutex mu_;
  // std::deque keeps references to existing elements valid on push_back,
  // so the message being written is never moved.
  std::deque<grpc::ByteBuffer> out_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // Written once under mu_ before finishing_ is set; read after.
  grpc::Status final_status_;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_REPLY_QUEUE_H_
