// A load generator's agent stream, shared by the benchmarks that drive a
// collector: constance.v1.Ingest/Stream through grpc::GenericStub (the
// same bytes on the wire as the generated stub), writing batches
// serialized before the clock starts, so that sending costs no protobuf
// work and what is measured is the collector.
//
//   std::vector<grpc::ByteBuffer> batches;
//   batches.push_back(SerializeMessage(agent_message));  // first_sequence 1, 1 + batch, ...
//   LoadStream load(&stub, std::move(batches), "store-1", total, batch, window);
//   load.Start();
//   StreamResult r = load.Wait();  // acknowledged, ack latencies, error
//
// Thread-safety: gRPC's callbacks run on its threads; Start and Wait from
// one thread.
#ifndef CONSTANCE_TESTS_BENCH_LOAD_STREAM_H_
#define CONSTANCE_TESTS_BENCH_LOAD_STREAM_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "constance/v1/ingest.pb.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/codegen/proto_utils.h"

namespace constance::testing {

// A message serialized as the generated stub would send it.
grpc::ByteBuffer SerializeMessage(const v1::AgentMessage& message);

struct StreamResult {
  int64_t acknowledged = 0;
  std::vector<double> latencies_ms;
  std::string error;
};

// One agent's stream: writes its prebuilt batches in order, keeping at
// most `window` unacknowledged, and times each ack. One write and one read are outstanding at a
// time (gRPC's rule); Wait() returns the result once the stream is finished.
class LoadStream final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // `batches` hold `total` observations of `location`, batch i holding
  // `batch` of them from sequence i * batch + 1 (the last may hold fewer).
  LoadStream(grpc::GenericStub* stub, std::vector<grpc::ByteBuffer> batches, std::string location,
             int64_t total, int batch, int window)
      : batches_(std::move(batches)),
        location_(std::move(location)),
        total_(total),
        batch_(batch),
        window_(window),
        sent_at_(batches_.size()) {
    stub->PrepareBidiStreamingCall(&ctx_, "/constance.v1.Ingest/Stream", grpc::StubOptions(), this);
  }

  // A message written before the batches that no ack answers: the
  // heartbeat constance-agent sends first on every stream. Before Start().
  void SendFirst(grpc::ByteBuffer message) {
    absl::MutexLock lock(&mu_);
    first_ = std::move(message);
    first_pending_ = true;
  }

  void Start() {
    StartRead(&in_);
    WriteMore();
    StartCall();
  }

  StreamResult Wait() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
    if (result_.error.empty() && result_.acknowledged < total_) {
      result_.error = absl::StrCat(location_, ": ", result_.acknowledged, " of ", total_,
                                   " acknowledged; stream ended: ", status_.error_message());
    }
    return std::move(result_);
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) stopped_ = true;  // The stream broke; the read fails too.
    }
    WriteMore();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // The stream ended; OnDone follows.
    const absl::Time now = absl::Now();
    v1::CollectorMessage msg;
    const bool parsed =
        grpc::SerializationTraits<v1::CollectorMessage>::Deserialize(&in_, &msg).ok();
    bool all_acked = false;
    bool refused = false;
    {
      absl::MutexLock lock(&mu_);
      if (!parsed) {
        result_.error = absl::StrCat(location_, ": cannot parse a collector message");
        refused = true;
      } else if (msg.has_ack()) {
        const v1::Ack& ack = msg.ack();
        if (ack.outcome() != v1::Ack::APPLIED) {
          result_.error = absl::StrCat(location_, ": ack outcome ", ack.outcome());
          refused = true;
        } else {
          const size_t n = static_cast<size_t>((ack.first_sequence() - 1) / batch_);
          result_.latencies_ms.push_back(absl::ToDoubleMilliseconds(now - sent_at_[n]));
          result_.acknowledged += ack.count();
          ++acked_batches_;
          --in_flight_;
        }
      }
      all_acked = acked_batches_ == batches_.size();
      if (refused) stopped_ = true;
    }
    if (refused) {
      // A refused ack leaves the stream to end.
      ctx_.TryCancel();
      return;
    }
    if (all_acked) return;  // The stream was half-closed after the last write.
    StartRead(&in_);
    WriteMore();
  }

  void OnDone(const grpc::Status& status) override {
    absl::MutexLock lock(&mu_);
    status_ = status;
    done_ = true;
  }

 private:
  // Starts the next write when none is outstanding and the window has
  // room; after the last batch, half-closes (as an agent may: the collector
  // acknowledges every batch it read before it ends the stream).
  void WriteMore() {
    const grpc::ByteBuffer* next = nullptr;
    {
      absl::MutexLock lock(&mu_);
      if (writing_ || stopped_ || writes_done_) return;
      if (first_pending_) {
        writing_ = true;
        first_pending_ = false;
        next = &first_;
      } else if (next_ == batches_.size()) {
        writing_ = true;
        writes_done_ = true;
      } else {
        if (in_flight_ >= window_) return;
        writing_ = true;
        ++in_flight_;
        sent_at_[next_] = absl::Now();
        next = &batches_[next_++];
      }
    }
    if (next == nullptr) {
      StartWritesDone();
    } else {
      StartWrite(next);
    }
  }

  grpc::ClientContext ctx_;
  const std::vector<grpc::ByteBuffer> batches_;
  const std::string location_;
  const int64_t total_;
  const int batch_;
  const int window_;
  grpc::ByteBuffer in_;  // Only touched by the one outstanding read.

  absl::Mutex mu_;
  std::vector<absl::Time> sent_at_ ABSL_GUARDED_BY(mu_);  // By batch number.
  grpc::ByteBuffer first_ ABSL_GUARDED_BY(mu_);           // SendFirst's, while first_pending_.
  bool first_pending_ ABSL_GUARDED_BY(mu_) = false;
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;  // The next batch to write.
  size_t acked_batches_ ABSL_GUARDED_BY(mu_) = 0;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool writes_done_ ABSL_GUARDED_BY(mu_) = false;  // Half-closed after the last batch.
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  StreamResult result_ ABSL_GUARDED_BY(mu_);
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace constance::testing

#endif  // CONSTANCE_TESTS_BENCH_LOAD_STREAM_H_
