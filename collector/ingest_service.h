// The collector's Ingest service: one long-lived bidirectional stream per
// agent, served with gRPC's callback API.
//
// Each stream is an IngestStream (ingest_service.cc) made of three parts:
// the stream handler (reads, binds the stream to its location, hands a
// batch to the batch log or the engine), a StreamThrottle (rate_limiter.h:
// the location's quota) and a ReplyQueue (reply_queue.h: acks written one
// at a time, then the end). The method is served raw (grpc::ByteBuffer):
// messages are parsed here, so the batch log can keep a batch's received
// bytes instead of serializing the parsed batch again. A stream belongs to
// the location of its first message; a later message claiming another
// location ends the stream (PERMISSION_DENIED). A newer stream for a
// location supersedes the older one (ABORTED).
//
// Refusals are counted by their typed reason (refusal.h), never by their
// message text.
//
// Keeps raw pointers to the Engine, the log and the refusal counter, which
// must outlive the server. Thread-safety: gRPC calls it from its own
// threads; it is safe for it.
#ifndef CONSTANCE_COLLECTOR_INGEST_SERVICE_H_
#define CONSTANCE_COLLECTOR_INGEST_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "collector/auth.h"
#include "collector/batch_log.h"
#include "collector/engine.h"
#include "collector/rate_limiter.h"
#include "constance/v1/ingest.grpc.pb.h"

namespace constance::collector {

class IngestStream;

struct IngestOptions {
  // With a log, a batch is applied and acknowledged only once it is
  // durable in it; without, at once.
  BatchLog* log = nullptr;
  // Observations per second one location may send (0 = unlimited), and
  // the burst it may save up. Over it a batch is answered THROTTLED
  // (nothing applied, retry after the time its tokens need), so one noisy
  // agent cannot starve the others and nothing acknowledged is dropped.
  double rate_per_location = 0;
  double burst = 0;
  // A stream needs a client certificate naming a location and may only
  // carry that location (PERMISSION_DENIED otherwise).
  bool require_location = false;
  // Streams past it are refused RESOURCE_EXHAUSTED (0 = unlimited); the
  // agent retries later.
  int64_t max_streams = 0;
  // Counts what is refused, by reason (may be null).
  RefusalCounter* refusals = nullptr;
};

class IngestService final : public v1::Ingest::WithRawCallbackMethod_Stream<v1::Ingest::Service> {
 public:
  IngestService(Engine* engine, IngestOptions options)
      : engine_(engine), options_(options), limiter_(options.rate_per_location, options.burst) {}
  IngestService(const IngestService&) = delete;
  IngestService& operator=(const IngestService&) = delete;

  // Reads serialized constance.v1.AgentMessages, writes serialized
  // constance.v1.CollectorMessages: the wire protocol is the generated
  // service's.
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Stream(
      grpc::CallbackServerContext* context) override;

  const RefusalCounter* refusals() const { return options_.refusals; }
  // Streams open right now.
  int64_t streams_open() const { return streams_open_.load(std::memory_order_relaxed); }
  // Streams ended for a protocol violation, e.g. a second location.
  uint64_t streams_refused() const { return streams_refused_.load(std::memory_order_relaxed); }
  // Batches answered THROTTLED.
  uint64_t batches_throttled() const { return throttled_.load(std::memory_order_relaxed); }
  // The durable batch log, or null without one (for its commit metrics).
  const BatchLog* log() const { return options_.log; }

 private:
  friend class IngestStream;
  // Takes one of the max_streams slots for a new stream (counted in
  // streams_open_ until its OnDone); false, taking nothing, when all are
  // taken.
  bool ClaimStreamSlot();
  // Makes `claimant` the one live stream of `location` and ends the one it
  // supersedes (ABORTED); returns the engine's owner token for it.
  uint64_t Claim(const std::string& location, IngestStream* claimant);
  // Forgets `stream` as `location`'s live stream (it ended).
  void Release(const std::string& location, IngestStream* stream, uint64_t owner);
  void Refused(const std::string& reason) {
    if (options_.refusals != nullptr) options_.refusals->Add(reason);
  }

  Engine* const engine_;
  const IngestOptions options_;
  RateLimiter limiter_;
  absl::Mutex live_mu_;
  absl::flat_hash_map<std::string, IngestStream*> live_ ABSL_GUARDED_BY(live_mu_);
  std::atomic<uint64_t> throttled_{0};
  std::atomic<int64_t> streams_open_{0};
  std::atomic<uint64_t> streams_refused_{0};
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_INGEST_SERVICE_H_
