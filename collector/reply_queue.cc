#include "collector/reply_queue.h"

#include <utility>

namespace constance::collector {

void ReplyQueue::Push(grpc::ByteBuffer message) {
  const grpc::ByteBuffer* start = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (finishing_) return;
    out_.push_back(std::move(message));
    if (!writing_) {
      writing_ = true;
      start = &out_.front();
    }
  }
  if (start != nullptr) start_write_(start);
}

void ReplyQueue::End(grpc::Status status) {
  bool finish = false;
  {
    absl::MutexLock lock(&mu_);
    if (finishing_) return;
    finishing_ = true;
    final_status_ = std::move(status);
    finish = TakeFinishLocked();
  }
  if (finish) finish_(final_status_);
}

void ReplyQueue::WriteDone(bool ok) {
  const grpc::ByteBuffer* next = nullptr;
  bool finish = false;
  {
    absl::MutexLock lock(&mu_);
    if (!ok) {
      // The stream is broken; the pending read fails too and ends it.
      out_.clear();
    } else {
      out_.pop_front();
    }
    if (!out_.empty()) {
      next = &out_.front();
    } else {
      writing_ = false;
      finish = TakeFinishLocked();
    }
  }
  if (next != nullptr) {
    start_write_(next);
  } else if (finish) {
    finish_(final_status_);
  }
}

bool ReplyQueue::TakeFinishLocked() {
  if (!finishing_ || writing_ || finished_) return false;
  finished_ = true;
  return true;
}

}  // namespace constance::collector
