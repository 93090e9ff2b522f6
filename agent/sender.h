// Delivery from the agent's spool to the collector.
//
// The Sender keeps one long-lived gRPC stream, constance.v1.Ingest/Stream,
// to the collector. It gathers consecutive spooled observations for
// flush_interval (or until max_batch are waiting) into a Batch, keeps at most
// max_in_flight_batches unacknowledged batches on the stream, and deletes
// from the spool what the collector's acks settle (their watermark covers
// applied, refused-for-good and duplicate observations). A THROTTLED ack
// means nothing of that batch was applied: sending resumes from the
// watermark after retry_after_ms. A heartbeat with the agent's health goes
// up right after connecting and every heartbeat_interval.
//
// After any stream failure it reconnects with exponential backoff and
// jitter (backoff_initial, x1.6 per failure up to backoff_max, +-20%) and
// resends everything unacknowledged from the oldest; the collector drops
// what it already has, by (location, incarnation, sequence).
//
// Threads: Start() runs the connection loop on one thread, which also
// writes; each stream has a reader thread for acks. The sync gRPC API is
// enough for one stream and keeps the flow plain; every blocking call is
// unblocked by cancelling the stream's ClientContext, so Stop() never
// blocks past its bound.
//
// Example:
//   Sender sender(options, &spool, &metrics);
//   sender.Start();
//   ... sender.NotifyAppended(last_sequence) after each spool append ...
//   uint64_t left = sender.Stop(absl::Seconds(5));   // drain, then close
//
// `spool` and `metrics` must outlive the Sender. All public methods are
// thread-safe.
#ifndef CONSTANCE_AGENT_SENDER_H_
#define CONSTANCE_AGENT_SENDER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/metrics.h"
#include "agent/spool.h"
#include "constance/tls.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace constance::agent {

struct SenderOptions {
  std::string location;
  // gRPC target of the collector (HOST:PORT).
  std::string collector;
  // How the channel is secured (constance/tls.h); null credentials mean
  // plaintext (--insecure).
  ChannelSecurity security;
  absl::Duration flush_interval = absl::Milliseconds(100);
  size_t max_batch = 1000;
  size_t max_in_flight_batches = 20;
  absl::Duration backoff_initial = absl::Seconds(1);
  absl::Duration backoff_max = absl::Seconds(120);
  absl::Duration heartbeat_interval = absl::Seconds(30);
  // Reported in heartbeats.
  std::string version;
  std::map<std::string, std::string> labels;
  absl::Duration data_cadence = absl::ZeroDuration();  // Zero: continuously.
};

class Sender {
 public:
  Sender(SenderOptions options, Spool* spool, AgentMetrics* metrics);
  // Stops without draining if Stop() was not called.
  ~Sender();
  Sender(const Sender&) = delete;
  Sender& operator=(const Sender&) = delete;

  // Starts the connection loop. Call once.
  void Start();

  // Tells the sender the spool now holds observations up to
  // `last_sequence`. Cheap; call after every append.
  void NotifyAppended(uint64_t last_sequence);

  // Keeps delivering until everything appended so far is acknowledged or
  // `drain_timeout` has passed, then closes the stream (cleanly when
  // drained, by cancelling it otherwise) and joins every thread. Returns the
  // number of observations left unacknowledged. Call once; appends after
  // the call may not be delivered.
  uint64_t Stop(absl::Duration drain_timeout);

  // True while a stream to the collector is established.
  bool connected() const { return connected_.load(); }

  // The Ingest protocol of the collector on the current or last stream
  // (constance/version.h): its Hello's, or 1 once an ack came without one
  // (a collector of the first release); 0 before either. The agent uses
  // nothing the collector's protocol lacks.
  uint32_t collector_protocol() const { return collector_protocol_.load(); }

 private:
  enum class Action { kWait, kSend, kHeartbeat, kDrained, kBroken, kStop };
  struct InFlight {
    uint64_t first;
    uint64_t last;
  };
  using Stream = grpc::ClientReaderWriter<v1::AgentMessage, v1::CollectorMessage>;

  void Run();
  // One stream, from connecting to its end. Sets *healthy if it worked:
  // acknowledged something, or stayed up for a heartbeat interval.
  absl::Status RunStream(bool* healthy);
  // Writes batches and heartbeats; true when it ended because the spool is
  // drained (close cleanly), false when the stream broke or must stop now.
  bool WriteLoop(Stream* stream);
  bool WriteHeartbeat(Stream* stream);
  bool WriteBatch(Stream* stream, uint64_t from, size_t count);
  void ReadAcks(Stream* stream);
  void HandleAck(const v1::Ack& ack);

  Action NextAction(absl::Time now, absl::Time* deadline, uint64_t* from, size_t* count)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MarkConnected() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Drained() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return acked_ >= known_last_; }
  bool ShouldExit() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_now_ || (draining_ && Drained());
  }
  bool EventsChanged() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return events_ != seen_events_; }
  bool StreamDoneOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stream_done_ || stop_now_;
  }

  const SenderOptions options_;
  Spool* const spool_;
  AgentMetrics* const metrics_;
  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<v1::Ingest::Stub> stub_;
  std::atomic<bool> connected_{false};
  std::atomic<uint32_t> collector_protocol_{0};
  std::thread thread_;

  absl::Mutex mu_;
  // Bumped on every change that may let the writer act (new data, ack,
  // stream end, stop); the writer sleeps until it changes or a deadline.
  uint64_t events_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t seen_events_ ABSL_GUARDED_BY(mu_) = 0;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time drain_deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  bool stop_now_ ABSL_GUARDED_BY(mu_) = false;
  // Highest sequence known to be in the spool, and the collector's
  // watermark: everything <= acked_ is settled and deleted.
  uint64_t known_last_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t acked_ ABSL_GUARDED_BY(mu_) = 0;
  // State of the current stream.
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool stream_done_ ABSL_GUARDED_BY(mu_) = false;
  bool stream_connected_ ABSL_GUARDED_BY(mu_) = false;
  bool stream_acked_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t sent_ ABSL_GUARDED_BY(mu_) = 0;  // Highest sequence sent on it.
  std::deque<InFlight> in_flight_ ABSL_GUARDED_BY(mu_);
  // Resend what follows this sequence (throttled: acked_; out of order:
  // the collector's expected sequence - 1); nullopt: carry on.
  std::optional<uint64_t> rewind_to_ ABSL_GUARDED_BY(mu_);
  absl::Time throttled_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // When the oldest unsent observation was first seen (InfiniteFuture if
  // none): a batch leaves flush_interval later, or sooner if full.
  absl::Time gather_since_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  absl::Time next_heartbeat_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_SENDER_H_
