#include "agent/sender.h"

#include <algorithm>
#include <climits>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "constance/version.h"
#include "google/protobuf/util/time_util.h"
#include "spdlog/spdlog.h"

namespace constance::agent {
namespace {

int Millis(absl::Duration d) {
  return static_cast<int>(std::clamp<int64_t>(absl::ToInt64Milliseconds(d), 1, INT_MAX));
}

std::shared_ptr<grpc::Channel> MakeChannel(const SenderOptions& o) {
  grpc::ChannelArguments args;
  // Consistent with the collector's keepalive policy: pings every 20 s even
  // on an idle stream, so a store's NAT never drops a healthy stream
  // silently, and a dead peer is noticed within 30 s.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // The channel's own reconnection follows the same schedule as ours, so it
  // is not still backing off when our next attempt comes.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, Millis(o.backoff_initial));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, Millis(o.backoff_max));
  // Resending is this class's job (from the spool, after reconnecting);
  // gRPC's retry layer would only buffer copies of the stream's messages.
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  if (o.security.credentials == nullptr) {
    return grpc::CreateCustomChannel(o.collector, grpc::InsecureChannelCredentials(), args);
  }
  o.security.Apply(&args);
  return grpc::CreateCustomChannel(o.collector, o.security.credentials, args);
}

google::protobuf::Timestamp ToProto(absl::Time t) {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

absl::Status FromGrpc(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

}  // namespace

Sender::Sender(SenderOptions options, Spool* spool, AgentMetrics* metrics)
    : options_(std::move(options)),
      spool_(spool),
      metrics_(metrics),
      channel_(MakeChannel(options_)),
      stub_(v1::Ingest::NewStub(channel_)) {
  absl::MutexLock lock(&mu_);
  known_last_ = spool_->LastSequence();
  acked_ = known_last_ - spool_->Depth();
}

Sender::~Sender() {
  bool running;
  {
    absl::MutexLock lock(&mu_);
    running = started_ && !finished_;
  }
  if (running || thread_.joinable()) Stop(absl::ZeroDuration());
}

void Sender::Start() {
  absl::MutexLock lock(&mu_);
  if (started_) return;
  started_ = true;
  thread_ = std::thread([this] { Run(); });
}

void Sender::NotifyAppended(uint64_t last_sequence) {
  absl::MutexLock lock(&mu_);
  if (last_sequence <= known_last_) return;
  known_last_ = last_sequence;
  if (gather_since_ == absl::InfiniteFuture()) gather_since_ = absl::Now();
  ++events_;
}

uint64_t Sender::Stop(absl::Duration drain_timeout) {
  {
    absl::MutexLock lock(&mu_);
    if (started_ && !draining_) {
      draining_ = true;
      drain_deadline_ = absl::Now() + drain_timeout;
      ++events_;
    }
    if (started_ && !mu_.AwaitWithDeadline(absl::Condition(&finished_), drain_deadline_)) {
      // Out of time: cancelling the stream unblocks any Write, Read or
      // Finish in progress.
      stop_now_ = true;
      ++events_;
      if (context_ != nullptr) context_->TryCancel();
    }
  }
  if (thread_.joinable()) thread_.join();
  absl::MutexLock lock(&mu_);
  return known_last_ > acked_ ? known_last_ - acked_ : 0;
}

void Sender::Run() {
  absl::BitGen gen;
  absl::Duration backoff = options_.backoff_initial;
  for (bool first = true;; first = false) {
    {
      absl::MutexLock lock(&mu_);
      if (ShouldExit()) break;
    }
    if (!first) metrics_->AddReconnect();
    bool healthy = false;
    absl::Status status = RunStream(&healthy);
    // Only a stream that worked restarts the schedule: one the collector
    // accepts and then ends at once (e.g. UNIMPLEMENTED) must keep backing
    // off.
    if (healthy) backoff = options_.backoff_initial;
    const absl::Duration wait = backoff * absl::Uniform(gen, 0.8, 1.2);
    backoff = std::min(backoff * 1.6, options_.backoff_max);

    absl::MutexLock lock(&mu_);
    if (ShouldExit()) break;
    spdlog::warn("collector {}: stream ended ({}); reconnecting in {}", options_.collector,
                 status.ToString(), absl::FormatDuration(absl::Trunc(wait, absl::Milliseconds(1))));
    mu_.AwaitWithTimeout(absl::Condition(this, &Sender::ShouldExit), wait);
    if (ShouldExit()) break;
  }
  absl::MutexLock lock(&mu_);
  finished_ = true;
}

absl::Status Sender::RunStream(bool* healthy) {
  grpc::ClientContext ctx;
  const absl::Time started = absl::Now();
  {
    absl::MutexLock lock(&mu_);
    if (ShouldExit()) return absl::OkStatus();
    context_ = &ctx;
    stream_done_ = false;
    stream_connected_ = false;
    stream_acked_ = false;
    // Everything unacknowledged goes again, from the oldest.
    sent_ = acked_;
    in_flight_.clear();
    rewind_to_.reset();
    throttled_until_ = absl::InfinitePast();
    const absl::Time now = absl::Now();
    gather_since_ = known_last_ > sent_ ? now : absl::InfiniteFuture();
    next_heartbeat_ = now;  // The collector hears about our health first.
  }
  std::unique_ptr<Stream> stream = stub_->Stream(&ctx);
  std::thread reader([this, s = stream.get()] { ReadAcks(s); });

  const bool drained = WriteLoop(stream.get());
  if (drained) {
    // Half-close and let the collector end the call, within the drain
    // bound; Stop() cancels it if the bound passes first.
    stream->WritesDone();
    absl::MutexLock lock(&mu_);
    if (!mu_.AwaitWithDeadline(absl::Condition(this, &Sender::StreamDoneOrStopping),
                               drain_deadline_) ||
        !stream_done_) {
      ctx.TryCancel();
    }
  } else {
    // Broken, or out of time: make sure the reader's Read returns. Not once
    // the reader has seen the end: cancelling would replace the
    // collector's status (what the log should say) with CANCELLED.
    absl::MutexLock lock(&mu_);
    if (!stream_done_) ctx.TryCancel();
  }
  reader.join();
  connected_ = false;  // After the reader: a late ack cannot set it again.
  const grpc::Status status = stream->Finish();
  absl::MutexLock lock(&mu_);
  context_ = nullptr;
  *healthy =
      stream_acked_ || (stream_connected_ && absl::Now() - started >= options_.heartbeat_interval);
  if (drained && stream_connected_) {
    spdlog::info("collector {}: every observation acknowledged; stream closed", options_.collector);
  }
  return FromGrpc(status);
}

bool Sender::WriteLoop(Stream* stream) {
  for (;;) {
    Action action;
    uint64_t from = 0;
    size_t count = 0;
    {
      absl::MutexLock lock(&mu_);
      for (;;) {
        absl::Time deadline = absl::InfiniteFuture();
        action = NextAction(absl::Now(), &deadline, &from, &count);
        if (action != Action::kWait) break;
        seen_events_ = events_;
        mu_.AwaitWithDeadline(absl::Condition(this, &Sender::EventsChanged), deadline);
      }
    }
    switch (action) {
      case Action::kDrained:
        return true;
      case Action::kBroken:
      case Action::kStop:
      case Action::kWait:
        return false;
      case Action::kHeartbeat:
        if (!WriteHeartbeat(stream)) return false;
        break;
      case Action::kSend:
        if (!WriteBatch(stream, from, count)) return false;
        break;
    }
  }
}

Sender::Action Sender::NextAction(absl::Time now, absl::Time* deadline, uint64_t* from,
                                  size_t* count) {
  if (stop_now_) return Action::kStop;
  if (stream_done_) return Action::kBroken;
  if (rewind_to_) {
    // Throttled or out of order: nothing after that point was applied;
    // send it again.
    sent_ = *rewind_to_;
    rewind_to_.reset();
    in_flight_.clear();
  }
  // The collector may acknowledge past what this stream sent (it kept an
  // earlier stream's batches whose ack was lost).
  sent_ = std::max(sent_, acked_);
  if (draining_ && Drained()) return Action::kDrained;
  if (now >= next_heartbeat_) return Action::kHeartbeat;
  *deadline = next_heartbeat_;

  const uint64_t unsent = known_last_ > sent_ ? known_last_ - sent_ : 0;
  if (unsent == 0) {
    gather_since_ = absl::InfiniteFuture();
    return Action::kWait;
  }
  if (gather_since_ == absl::InfiniteFuture()) gather_since_ = now;
  if (now < throttled_until_) {
    *deadline = std::min(*deadline, throttled_until_);
    return Action::kWait;
  }
  // A full window waits for acks (each one bumps events_).
  if (in_flight_.size() >= options_.max_in_flight_batches) return Action::kWait;
  const absl::Time flush_at = gather_since_ + options_.flush_interval;
  if (unsent >= options_.max_batch || draining_ || now >= flush_at) {
    *from = sent_ + 1;
    *count = static_cast<size_t>(std::min<uint64_t>(unsent, options_.max_batch));
    return Action::kSend;
  }
  *deadline = std::min(*deadline, flush_at);
  return Action::kWait;
}

bool Sender::WriteHeartbeat(Stream* stream) {
  const absl::Time now = absl::Now();
  v1::AgentMessage msg;
  v1::Heartbeat* hb = msg.mutable_heartbeat();
  hb->set_location(options_.location);
  hb->set_incarnation(spool_->incarnation());
  hb->set_version(options_.version);
  hb->set_spool_depth(spool_->Depth());
  hb->set_oldest_unacknowledged_seconds(absl::ToDoubleSeconds(spool_->OldestUnacknowledgedAge()));
  hb->set_spool_bytes(spool_->Bytes());
  hb->set_spool_dropped(spool_->DroppedOldest());
  *hb->mutable_sent_at() = ToProto(now);
  hb->set_protocol_version(kProtocolVersion);
  hb->add_capabilities(std::string(kCapabilityOutOfOrder));
  for (const auto& [name, value] : options_.labels) (*hb->mutable_labels())[name] = value;
  hb->set_data_cadence_seconds(
      static_cast<uint64_t>(absl::ToInt64Seconds(options_.data_cadence)));
  {
    absl::MutexLock lock(&mu_);
    next_heartbeat_ = now + options_.heartbeat_interval;
  }
  if (!stream->Write(msg)) return false;
  // A write can complete before the connection is up; only a ready channel
  // means the stream reached the collector.
  if (channel_->GetState(/*try_to_connect=*/false) == GRPC_CHANNEL_READY) {
    absl::MutexLock lock(&mu_);
    MarkConnected();
  }
  return true;
}

bool Sender::WriteBatch(Stream* stream, uint64_t from, size_t count) {
  absl::StatusOr<std::vector<SpoolEntry>> entries = spool_->Read(from, count);
  if (!entries.ok()) {
    spdlog::error("spool: cannot read observations from {}: {}", from,
                  std::string(entries.status().message()));
    return false;
  }
  if (entries->empty()) {
    // Acknowledged in the meantime (the ack moved past them).
    absl::MutexLock lock(&mu_);
    sent_ = std::max(sent_, from + count - 1);
    return true;
  }
  v1::AgentMessage msg;
  v1::Batch* batch = msg.mutable_batch();
  batch->set_location(options_.location);
  batch->set_incarnation(spool_->incarnation());
  batch->set_first_sequence(entries->front().sequence);
  // The full spool deleted from .. first - 1 unsent (drop_oldest): the
  // batch declares the gap, so the collector steps over it.
  if (entries->front().sequence > from) batch->set_skipped_from(from);
  const uint64_t last = entries->back().sequence;
  batch->mutable_observations()->Reserve(static_cast<int>(entries->size()));
  for (SpoolEntry& e : *entries) *batch->add_observations() = std::move(e.observation);
  {
    // In flight before the write: its ack may arrive before Write returns.
    absl::MutexLock lock(&mu_);
    sent_ = std::max(sent_, last);
    in_flight_.push_back(InFlight{batch->first_sequence(), last});
  }
  if (!stream->Write(msg)) return false;
  metrics_->AddBatchSent();
  return true;
}

void Sender::ReadAcks(Stream* stream) {
  v1::CollectorMessage msg;
  bool greeted = false;  // This stream's collector sent its Hello.
  while (stream->Read(&msg)) {
    if (msg.has_hello()) {
      greeted = true;
      const uint32_t protocol = std::min(msg.hello().protocol_version(), kProtocolVersion);
      if (collector_protocol_.exchange(protocol) != protocol) {
        spdlog::info("collector {}: constance {}, protocol {}", options_.collector,
                     msg.hello().version(), msg.hello().protocol_version());
      }
    }
    if (msg.has_ack()) {
      if (!greeted && collector_protocol_.exchange(1) != 1) {
        spdlog::info("collector {}: protocol 1 (constance 0.1.0): newer features unused",
                     options_.collector);
      }
      greeted = true;
      HandleAck(msg.ack());
    }
  }
  absl::MutexLock lock(&mu_);
  stream_done_ = true;
  ++events_;
}

void Sender::HandleAck(const v1::Ack& ack) {
  if (ack.incarnation() != spool_->incarnation()) {
    spdlog::warn("collector {}: ack for incarnation {:016x}, ours is {:016x}; ignored",
                 options_.collector, ack.incarnation(), spool_->incarnation());
    return;
  }
  for (const v1::Rejection& r : ack.rejections()) {
    spdlog::warn("collector {}: observation {} refused for good: {}", options_.collector,
                 r.sequence(), r.reason());
  }
  uint64_t delivered = 0;
  {
    absl::MutexLock lock(&mu_);
    MarkConnected();
    stream_acked_ = true;
    if (ack.watermark() > known_last_) {
      spdlog::warn("collector {}: watermark {} is past our last observation {}", options_.collector,
                   ack.watermark(), known_last_);
    }
    if (ack.watermark() > acked_) {
      delivered = ack.watermark() - acked_;
      acked_ = ack.watermark();
    }
    // The batch this ack answers is settled or throttled either way, and so
    // is everything the watermark covers.
    const uint64_t acked = acked_;
    in_flight_.erase(std::remove_if(in_flight_.begin(), in_flight_.end(),
                                    [&](const InFlight& f) {
                                      return f.first == ack.first_sequence() || f.last <= acked;
                                    }),
                     in_flight_.end());
    if (ack.outcome() == v1::Ack::OUT_OF_ORDER && ack.expected_sequence() > 0) {
      // The collector expects an earlier sequence (an ack lost with an
      // earlier stream, say): everything from there goes again.
      const uint64_t from = std::max(acked_, ack.expected_sequence() - 1);
      rewind_to_ = std::min(rewind_to_.value_or(from), from);
      spdlog::info("collector {}: batch {} out of order; resending from {}", options_.collector,
                   ack.first_sequence(), from + 1);
    }
    if (ack.outcome() == v1::Ack::THROTTLED) {
      throttled_until_ = absl::Now() + absl::Milliseconds(ack.retry_after_ms());
      rewind_to_ = std::min(rewind_to_.value_or(acked_), acked_);
      spdlog::info("collector {}: throttled; resending from {} in {} ms", options_.collector,
                   acked_ + 1, ack.retry_after_ms());
    }
    ++events_;
  }
  if (delivered > 0) {
    if (absl::Status s = spool_->Acknowledge(ack.watermark()); !s.ok()) {
      spdlog::error("spool: cannot delete acknowledged observations: {}", std::string(s.message()));
    }
    metrics_->AddDelivered(delivered);
  }
  metrics_->AddRefusedByCollector(static_cast<uint64_t>(ack.rejections_size()));
}

void Sender::MarkConnected() {
  if (stream_connected_) return;
  stream_connected_ = true;
  connected_ = true;
  if (known_last_ > acked_) {
    spdlog::info(
        "collector {}: connected; {} unacknowledged observations go (again) from "
        "sequence {}",
        options_.collector, known_last_ - acked_, acked_ + 1);
  } else {
    spdlog::info("collector {}: connected", options_.collector);
  }
}

}  // namespace constance::agent
