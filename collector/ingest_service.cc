#include "collector/ingest_service.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "collector/refusal.h"
#include "collector/reply_queue.h"
#include "collector/services.h"
#include "constance/batch_view.h"
#include "constance/validate.h"
#include "constance/version.h"
#include "google/protobuf/arena.h"
#include "grpcpp/support/proto_buffer_writer.h"
#include "spdlog/spdlog.h"

namespace constance::collector {

namespace {

google::protobuf::ArenaOptions IncomingArenaOptions() {
  google::protobuf::ArenaOptions options;
  // A batch of 1,000 price observations takes about 150 KiB parsed.
  options.start_block_size = 16 << 10;
  options.max_block_size = 256 << 10;
  return options;
}

}  // namespace

// One message read from an agent stream: its bytes as received and, for a
// batch, a view of them (batch_view.h: no copies, no parsed messages; the
// ingest path's largest cost was parsing). Anything the view does not
// decode (a heartbeat, an encoding no agent writes) is parsed by protobuf
// on an arena of its own, and a batch is then viewed in that message. The
// whole goes to the batch log by reference, never copied: the log writes
// the batch's own received bytes (after protobuf's parse, the parsed batch
// serialized again). Freed with its last reference.
struct IncomingMessage {
  IncomingMessage() = default;
  IncomingMessage(const IncomingMessage&) = delete;
  IncomingMessage& operator=(const IncomingMessage&) = delete;

  // Reads `received` (keeping its bytes in one slice: gRPC's own when it
  // has one, else a copy) into `batch` or `message`. False if it is not an
  // AgentMessage.
  bool Parse() {
    if (received.Valid()) {  // Else an empty message.
      if (!received.DumpToSingleSlice(&wire).ok()) return false;
      received.Clear();
    }
    const absl::string_view bytes(reinterpret_cast<const char*>(wire.begin()), wire.size());
    if (DecodeAgentBatch(bytes, &batch_bytes, &batch)) {
      is_batch = true;
      return true;
    }
    arena.emplace(IncomingArenaOptions());
    message = google::protobuf::Arena::CreateMessage<v1::AgentMessage>(&*arena);
    if (!message->ParseFromArray(wire.begin(), static_cast<int>(wire.size()))) return false;
    if (message->has_batch()) {
      is_batch = true;
      batch = ViewOf(message->batch());
      // The log gets the parsed batch serialized again (whatever the
      // encoding that came), and replays it into the same batch.
      batch_bytes = reserialized = message->batch().SerializeAsString();
    }
    return true;
  }

  grpc::ByteBuffer received;  // Filled by the read; emptied by Parse.
  grpc::Slice wire;
  bool is_batch = false;
  BatchView batch;                // Into `wire`, or into `message`.
  absl::string_view batch_bytes;  // The serialized batch, for the log.
  std::string reserialized;
  std::optional<google::protobuf::Arena> arena;  // Only for protobuf's parse.
  v1::AgentMessage* message = nullptr;           // Owned by `arena`.
  // The batch's validation (Engine::CheckBatch), made on the stream's
  // thread before the batch is logged, so the apply, one batch at a
  // time, does not.
  Engine::BatchChecks checks;
};

// A reply, serialized for a raw write.
grpc::ByteBuffer Serialize(const v1::CollectorMessage& message) {
  grpc::ByteBuffer buffer;
  bool own_buffer = false;
  (void)grpc::GenericSerialize<grpc::ProtoBufferWriter, v1::CollectorMessage>(message, &buffer,
                                                                              &own_buffer);
  return buffer;
}

// One agent stream. Deletes itself in OnDone, after gRPC is finished with
// it; nothing else holds a pointer to it.
class IngestStream final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // `certified`: the location of the client certificate; empty without TLS.
  // `not_after`: when that certificate expires (InfinitePast without TLS).
  IngestStream(IngestService* service, std::string peer, std::string certified,
               absl::Time not_after)
      : service_(service),
        peer_(std::move(peer)),
        certified_(std::move(certified)),
        not_after_(not_after),
        replies_([this](const grpc::ByteBuffer* m) { StartWrite(m); },
                 [this](const grpc::Status& s) { Finish(s); }),
        throttle_(&service->limiter_),
        in_(std::make_shared<IncomingMessage>()) {
    // Counted in streams_open_ by IngestService::ClaimStreamSlot already.
    StartRead(&in_->received);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The agent closed its side (or the stream broke): finish once every
      // batch read is acknowledged and the acks are written, so an agent
      // may half-close right after its last batch.
      bool committing = false;
      {
        absl::MutexLock lock(&mu_);
        half_closed_ = true;
        committing = committing_ > 0;
      }
      if (!committing) EndStream(grpc::Status::OK);
      return;
    }
    // The message read goes to Handle (and may outlive this call, waiting
    // for its commit); the next read gets a fresh one.
    std::shared_ptr<IncomingMessage> incoming = std::move(in_);
    in_ = std::make_shared<IncomingMessage>();
    absl::Status status =
        incoming->Parse() ? Handle(std::move(incoming))
                          : absl::InvalidArgumentError("message: not a constance.v1.AgentMessage");
    if (absl::IsAborted(status)) {  // Superseded: not the client's fault.
      EndStream(ToGrpcStatus(status));
      return;
    }
    if (!status.ok()) {
      spdlog::warn("ingest stream from {} ({}) refused: {}", peer_, location_,
                   std::string(status.message()));
      service_->streams_refused_.fetch_add(1, std::memory_order_relaxed);
      service_->Refused(RefusalReason(status));
      EndStream(ToGrpcStatus(status));
      return;
    }
    StartRead(&in_->received);
  }

  void OnWriteDone(bool ok) override { replies_.WriteDone(ok); }

  void OnCancel() override {}

  void OnDone() override {
    if (owner_ != 0) service_->Release(location_, this, owner_);
    service_->streams_open_.fetch_sub(1, std::memory_order_relaxed);
    Unref();
  }

  // A newer stream claimed this one's location: it ends, and none of its
  // batches applies any more (the engine refuses its owner token).
  void Supersede() {
    spdlog::info("ingest stream from {} ({}) superseded by a newer stream", peer_, location_);
    EndStream(
        grpc::Status(grpc::StatusCode::ABORTED,
                     absl::StrCat("superseded by a newer stream for location '", location_, "'")));
  }

  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  // The last reference (gRPC's, released in OnDone, or a pending commit's
  // or a superseding stream's) deletes the reactor.
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

 private:
  absl::Status Handle(std::shared_ptr<IncomingMessage> incoming) {
    if (incoming->is_batch) {
      const BatchView& batch = incoming->batch;
      if (absl::Status s = BindLocation(batch.location); !s.ok()) return s;
      if (absl::Status s = ValidateIncarnation(batch.incarnation, "batch.incarnation"); !s.ok()) {
        return s;
      }
      if (Throttle(batch)) return absl::OkStatus();
      if (service_->options_.log == nullptr) {
        const absl::Time received = service_->engine_->now();
        return ApplyAndAck(batch, received, service_->engine_->CheckBatch(batch, received));
      }
      // A batch that leaves a gap is answered before the log sees it.
      if (std::optional<v1::Ack> gap = service_->engine_->Admit(batch)) return AnswerGap(*gap);
      // Durable first: the batch is applied, in log order, and
      // acknowledged only once committed. The reference keeps this reactor
      // alive until the commit reports, even if the stream ends.
      Ref();
      {
        absl::MutexLock lock(&mu_);
        ++committing_;
      }
      const absl::Time received = service_->engine_->now();
      incoming->checks = service_->engine_->CheckBatch(batch, received);
      // The bytes stay valid until a callback has run: they hold them.
      // Where the engine can apply the batch beside other locations'
      // (ApplyBeside), the log's helpers may (batch_log.h); else, or when
      // it declines, it applies in log order.
      service_->options_.log->Append(
          incoming->batch_bytes, received, absl::HashOf(location_),
          [this, incoming, received] {
            std::optional<v1::Ack> ack =
                service_->engine_->ApplyBeside(incoming->batch, received, owner_, incoming->checks);
            if (!ack.has_value()) return false;
            Acknowledge(*std::move(ack));
            Settled(absl::OkStatus(), /*committed=*/true);
            return true;
          },
          [this, incoming, received](absl::Status committed) {
            absl::Status s = committed.ok()
                                 ? ApplyAndAck(incoming->batch, received, incoming->checks)
                                 : committed;
            Settled(s, committed.ok());
          });
      return absl::OkStatus();
    }
    const v1::AgentMessage& message = *incoming->message;
    if (message.has_heartbeat()) {
      if (absl::Status s = BindLocation(message.heartbeat().location()); !s.ok()) return s;
      if (absl::Status s =
              ValidateIncarnation(message.heartbeat().incarnation(), "heartbeat.incarnation");
          !s.ok()) {
        return s;
      }
      Greet(message.heartbeat());
      if (not_after_ != absl::InfinitePast()) {
        // The expiry of the certificate actually presented, not a claim.
        v1::Heartbeat heartbeat = message.heartbeat();
        heartbeat.mutable_certificate_not_after()->set_seconds(absl::ToUnixSeconds(not_after_));
        return service_->engine_->RecordHeartbeat(heartbeat);
      }
      return service_->engine_->RecordHeartbeat(message.heartbeat());
    }
    return absl::InvalidArgumentError("message: neither batch nor heartbeat is set");
  }

  // Answers an agent's first announcement of protocol 2 or more with this
  // collector's Hello, queued before any ack of the stream. Agents of
  // protocol 1 (no announcement) get nothing they do not know.
  void Greet(const v1::Heartbeat& heartbeat) {
    if (greeted_ || heartbeat.protocol_version() < 2) return;
    greeted_ = true;
    v1::CollectorMessage reply;
    v1::Hello* hello = reply.mutable_hello();
    hello->set_protocol_version(kProtocolVersion);
    hello->set_version(std::string(Version()));
    for (const std::string& c : heartbeat.capabilities()) {
      if (c == kCapabilityOutOfOrder) {
        out_of_order_ok_.store(true, std::memory_order_relaxed);
        hello->add_capabilities(c);
      }
    }
    Enqueue(Serialize(reply));
  }

  // Answers a batch that leaves a gap (the OUT_OF_ORDER `ack`, nothing of
  // it applied): with that ack to a client that announced it understands
  // it; an older client, which would take any ack but THROTTLED as
  // settling its batch, has its stream ended instead and resends after
  // reconnecting.
  absl::Status AnswerGap(const v1::Ack& ack) {
    if (!out_of_order_ok_.load(std::memory_order_relaxed)) {
      return Refusal(absl::FailedPreconditionError(absl::StrCat(
                         "sequence gap: expected ", ack.expected_sequence(), ", got ",
                         ack.first_sequence(), " (resend from sequence ", ack.expected_sequence(),
                         ", or announce the capability '", kCapabilityOutOfOrder, "')")),
                     kRefusedSequenceGap);
    }
    v1::CollectorMessage reply;
    *reply.mutable_ack() = ack;
    Enqueue(Serialize(reply));
    return absl::OkStatus();
  }

  absl::Status ApplyAndAck(const BatchView& batch, absl::Time received,
                           const Engine::BatchChecks& checks) {
    absl::StatusOr<v1::Ack> ack = service_->engine_->ApplyBatch(batch, received, owner_, checks);
    if (!ack.ok()) return ack.status();
    if (ack->outcome() == v1::Ack::OUT_OF_ORDER) return AnswerGap(*ack);
    Acknowledge(*std::move(ack));
    return absl::OkStatus();
  }

  void Acknowledge(v1::Ack ack) {
    v1::CollectorMessage reply;
    *reply.mutable_ack() = std::move(ack);
    Enqueue(Serialize(reply));
  }

  // A logged batch's end, `s` its outcome (`committed`: the log has it):
  // a failure ends the stream; the last batch committing after the agent
  // half-closed ends it too; the reference Handle took is released.
  void Settled(const absl::Status& s, bool committed) {
    if (!s.ok()) {
      spdlog::warn("ingest stream from {} ({}) ended: {}", peer_, location_,
                   std::string(s.message()));
      if (committed && !absl::IsAborted(s)) service_->Refused(RefusalReason(s));
      EndStream(ToGrpcStatus(s));
    }
    bool last = false;
    {
      absl::MutexLock lock(&mu_);
      last = --committing_ == 0 && half_closed_;
    }
    if (last) EndStream(grpc::Status::OK);  // A no-op if it ended above.
    Unref();
  }

  // Answers THROTTLED (nothing applied) when the location is over its
  // rate. Once a batch was throttled, every later batch of the stream is
  // too until the agent resends from the throttled one: applying a later
  // batch would move the high-water mark past the throttled observations.
  bool Throttle(const BatchView& batch) {
    const absl::Duration wait =
        throttle_.Wait(location_, batch.first_sequence, batch.observations.size(), absl::Now());
    if (wait <= absl::ZeroDuration()) return false;
    service_->throttled_.fetch_add(1, std::memory_order_relaxed);
    v1::CollectorMessage reply;
    v1::Ack* ack = reply.mutable_ack();
    ack->set_location(std::string(batch.location));
    ack->set_incarnation(batch.incarnation);
    ack->set_first_sequence(batch.first_sequence);
    ack->set_count(batch.observations.size());
    ack->set_outcome(v1::Ack::THROTTLED);
    ack->set_retry_after_ms(
        static_cast<uint32_t>(std::max<int64_t>(100, absl::ToInt64Milliseconds(wait))));
    Enqueue(Serialize(reply));
    return true;
  }

  absl::Status BindLocation(absl::string_view location) {
    if (!certified_.empty() && location != certified_) {
      // Nothing of this message is applied: it is refused before the log
      // and the engine see it.
      return Refusal(absl::PermissionDeniedError(
                         absl::StrCat("the client certificate is for location '", certified_,
                                      "', the message claims '", location, "'")),
                     kRefusedLocationMismatch);
    }
    if (location_.empty()) {
      location_ = std::string(location);
      owner_ = service_->Claim(location_, this);
      return absl::OkStatus();
    }
    if (location != location_) {
      return Refusal(
          absl::PermissionDeniedError(absl::StrCat("this stream belongs to location '", location_,
                                                   "', not '", location, "'")),
          kRefusedLocationMismatch);
    }
    return absl::OkStatus();
  }

  void Enqueue(grpc::ByteBuffer message) { replies_.Push(std::move(message)); }
  void EndStream(grpc::Status status) { replies_.End(std::move(status)); }

  IngestService* const service_;
  const std::string peer_;
  const std::string certified_;
  const absl::Time not_after_;
  std::atomic<int> refs_{1};
  ReplyQueue replies_;
  StreamThrottle throttle_;  // Used from OnReadDone only.
  // Only touched from OnReadDone, which gRPC never runs concurrently with
  // itself (location_ is read by commit callbacks after it was set).
  std::shared_ptr<IncomingMessage> in_;  // The message the pending read fills.
  std::string location_;
  // The engine's owner token for location_ (set with it; read by commit
  // callbacks and OnDone after).
  uint64_t owner_ = 0;
  bool greeted_ = false;  // The Hello was queued (OnReadDone only).
  // The first heartbeat announced "out_of_order" (read by commit callbacks).
  std::atomic<bool> out_of_order_ok_{false};

  absl::Mutex mu_;
  int committing_ ABSL_GUARDED_BY(mu_) = 0;        // Batches in the log, not yet acknowledged.
  bool half_closed_ ABSL_GUARDED_BY(mu_) = false;  // The agent sends nothing more.
};

bool IngestService::ClaimStreamSlot() {
  // Compare and swap: two streams opening at once never both take the
  // last slot (a check, then an increment, would let them).
  int64_t open = streams_open_.load(std::memory_order_relaxed);
  do {
    if (options_.max_streams > 0 && open >= options_.max_streams) return false;
  } while (!streams_open_.compare_exchange_weak(open, open + 1, std::memory_order_relaxed));
  return true;
}

uint64_t IngestService::Claim(const std::string& location, IngestStream* claimant) {
  IngestStream* previous = nullptr;
  uint64_t owner = 0;
  {
    absl::MutexLock lock(&live_mu_);
    owner = engine_->ClaimLocation(location);
    IngestStream*& live = live_[location];
    previous = live;
    live = claimant;
    // Kept alive past the lock: it leaves live_ (in OnDone) only under it.
    if (previous != nullptr) previous->Ref();
  }
  if (previous != nullptr) {
    previous->Supersede();
    previous->Unref();
  }
  return owner;
}

void IngestService::Release(const std::string& location, IngestStream* stream, uint64_t owner) {
  absl::MutexLock lock(&live_mu_);
  engine_->ReleaseLocation(location, owner);
  if (auto it = live_.find(location); it != live_.end() && it->second == stream) live_.erase(it);
}

// A stream refused before reading anything: finishes at once.
class RefusedStream final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  explicit RefusedStream(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* IngestService::Stream(
    grpc::CallbackServerContext* context) {
  std::string certified;
  absl::Time not_after = absl::InfinitePast();
  if (options_.require_location) {
    absl::StatusOr<PeerIdentity> id = CallerIdentity(*context);
    if (id.ok() && id->role != PeerIdentity::Role::kLocation) {
      id = absl::PermissionDeniedError(absl::StrCat("operator certificate '", id->name,
                                                    "' may not send observations (Ingest needs a "
                                                    "location certificate)"));
    }
    if (!id.ok()) {
      spdlog::warn("ingest stream from {} refused: {}", context->peer(),
                   std::string(id.status().message()));
      Refused(kRefusedNotALocation);
      return new RefusedStream(ToGrpcStatus(id.status()));
    }
    certified = id->name;
    if (absl::StatusOr<absl::Time> t = CallerCertificateNotAfter(*context); t.ok()) {
      not_after = *t;
    }
  }
  if (!ClaimStreamSlot()) {
    Refused(kRefusedMaxStreams);
    return new RefusedStream(
        grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                     absl::StrCat("the collector serves its limit of ", options_.max_streams,
                                  " agent streams (--max_streams); retry later")));
  }
  return new IngestStream(this, context->peer(), std::move(certified), not_after);
}

}  // namespace constance::collector
