#include "tests/integration/raw_stream.h"

#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "constance/v1/query.grpc.pb.h"
#include "constance/version.h"
#include "gtest/gtest.h"

namespace constance::testing {

CollectorProcess::CollectorProcess(const TempDir& dir, bool durable,
                                   std::vector<std::string> extra)
    : dir_(dir) {
  argv_ = {BinDir() + "/constance-collector", "--insecure", "--listen=127.0.0.1:0",
           "--metrics_listen=127.0.0.1:0", "--stats_interval=50ms",
           "--ready_file=" + dir.File("collector.ready")};
  if (durable) argv_.push_back("--state_dir=" + dir.path());
  argv_.insert(argv_.end(), extra.begin(), extra.end());
  absl::Status s = Start();
  if (!s.ok()) ADD_FAILURE_AT(__FILE__, __LINE__) << s;
}

absl::Status CollectorProcess::Start() {
  const std::string ready = dir_.File("collector.ready");
  std::remove(ready.c_str());
  process_ = std::make_unique<Subprocess>(argv_, dir_.File("collector.log"));
  auto r = WaitForReadyFile(ready, *process_, absl::Seconds(30));
  if (!r.ok()) return r.status();
  address_ = (*r)["grpc"];
  metrics_ = (*r)["metrics"];
  return absl::OkStatus();
}

absl::Status CollectorProcess::Restart(int signal) {
  if (absl::StatusOr<int> stopped = process_->Stop(signal, absl::Seconds(15)); !stopped.ok()) {
    return stopped.status();
  }
  return Start();
}

double CollectorProcess::Metric(const std::string& series, double applied) const {
  for (absl::Time deadline = absl::Now() + absl::Seconds(10); absl::Now() < deadline;) {
    absl::StatusOr<HttpResponse> r = HttpGet(metrics_, "/metrics");
    if (r.ok() &&
        MetricValue(r->body, "constance_observations_applied_total").value_or(-1) >= applied) {
      return MetricValue(r->body, series).value_or(-1);
    }
    absl::SleepFor(absl::Milliseconds(20));  // Polling the statistics tick.
  }
  return -1;
}

std::string KeyOf(uint64_t sequence) { return absl::StrCat("k", sequence); }

RawStream::RawStream(const std::string& address, const std::string& location,
                     uint64_t incarnation, bool out_of_order)
    : stub_(v1::Ingest::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))),
      location_(location),
      incarnation_(incarnation) {
  ctx_.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  stream_ = stub_->Stream(&ctx_);
  v1::AgentMessage m;
  v1::Heartbeat* hb = m.mutable_heartbeat();
  hb->set_location(location);
  hb->set_incarnation(incarnation);
  hb->set_protocol_version(kProtocolVersion);
  if (out_of_order) hb->add_capabilities(std::string(kCapabilityOutOfOrder));
  (void)stream_->Write(m);  // A refused stream shows in the reads.
}

bool RawStream::Send(uint64_t first, uint64_t count, uint64_t skipped_from) {
  return SendBatch(location_, first, count, skipped_from);
}

bool RawStream::SendAs(const std::string& location, uint64_t first, uint64_t count) {
  return SendBatch(location, first, count, 0);
}

bool RawStream::SendBatch(const std::string& location, uint64_t first, uint64_t count,
                          uint64_t skipped_from) {
  v1::AgentMessage m;
  v1::Batch* b = m.mutable_batch();
  b->set_location(location);
  b->set_incarnation(incarnation_);
  b->set_first_sequence(first);
  b->set_skipped_from(skipped_from);
  for (uint64_t s = first; s < first + count; ++s) {
    v1::Observation* o = b->add_observations();
    o->set_key(KeyOf(s));
    o->set_score(static_cast<double>(s));
  }
  return stream_->Write(m);
}

std::optional<v1::CollectorMessage> RawStream::Next() {
  v1::CollectorMessage reply;
  if (!stream_->Read(&reply)) return std::nullopt;
  return reply;
}

std::optional<v1::Ack> RawStream::NextAck() {
  while (std::optional<v1::CollectorMessage> m = Next()) {
    if (m->has_ack()) return m->ack();
  }
  return std::nullopt;
}

bool RawStream::Greeted() {
  std::optional<v1::CollectorMessage> m = Next();
  return m.has_value() && m->has_hello();
}

grpc::Status RawStream::Finish() {
  stream_->WritesDone();
  v1::CollectorMessage ignored;
  while (stream_->Read(&ignored)) {
  }
  return stream_->Finish();
}

void RawStream::Cancel() {
  ctx_.TryCancel();
  (void)Finish();
}

Delivery CountApplied(const std::string& address, uint64_t n) {
  auto stub = v1::Query::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  Delivery d;
  auto problem = [&d](std::string p) {
    if (d.problems.size() < 10) d.problems.push_back(std::move(p));
  };
  for (uint64_t s = 1; s <= n; ++s) {
    v1::KeyDetailRequest req;
    req.mutable_series()->set_family(v1::FAMILY_SCORE);
    req.mutable_series()->set_key(KeyOf(s));
    v1::KeyDetailResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    grpc::Status status = stub->KeyDetail(&ctx, req, &resp);
    uint64_t samples = 0;
    if (status.ok()) {
      for (const v1::GroupDetail& g : resp.groups()) {
        for (const v1::LocationValue& v : g.values()) samples += v.samples();
      }
    } else if (status.error_code() != grpc::StatusCode::NOT_FOUND) {
      problem(absl::StrCat(KeyOf(s), ": ", status.error_message()));
    }
    if (samples == 1) {
      ++d.applied_once;
    } else if (samples == 0) {
      ++d.lost;
      problem(absl::StrCat(KeyOf(s), ": never applied"));
    } else {
      d.duplicated += samples - 1;
      problem(absl::StrCat(KeyOf(s), ": applied ", samples, " times"));
    }
  }
  return d;
}

}  // namespace constance::testing
