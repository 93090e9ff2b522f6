// Harness for tests that drive a real collector through raw Ingest
// streams, as a client written from proto/constance/v1 alone would: no
// agent, every message built by hand.
//
// CollectorProcess runs constance-collector on 127.0.0.1 (port 0) and can
// kill and restart it on the same --state_dir. RawStream is one Ingest
// stream, driven step by step. Every observation is a score whose key
// names its sequence ("k<sequence>") and whose value is the sequence: a
// key's sample count in Query.KeyDetail says how often that observation
// was applied (CountApplied).
//
// Not thread-safe: use each object from one thread.
#ifndef CONSTANCE_TESTS_INTEGRATION_RAW_STREAM_H_
#define CONSTANCE_TESTS_INTEGRATION_RAW_STREAM_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "tests/integration/harness.h"

namespace constance::testing {

class CollectorProcess {
 public:
  // Starts the collector with `extra` flags after the usual ones
  // (--insecure, loopback port 0 for gRPC and /metrics, a 50 ms statistics
  // tick). `durable`: with --state_dir=dir, so batches go through the log.
  CollectorProcess(const TempDir& dir, bool durable, std::vector<std::string> extra = {});

  // Stops the process with `signal` (SIGKILL: a crash, nothing flushed)
  // and starts it again with the same flags; it listens on a new port.
  absl::Status Restart(int signal);

  const std::string& address() const { return address_; }
  const std::string& metrics() const { return metrics_; }
  std::string Log() const { return process_->Log(); }

  // A sample from /metrics once the statistics tick has applied at least
  // `applied` observations (polled with a deadline); -1 if it never did.
  double Metric(const std::string& series, double applied) const;

 private:
  absl::Status Start();
  const TempDir& dir_;
  std::vector<std::string> argv_;
  std::unique_ptr<Subprocess> process_;
  std::string address_, metrics_;
};

// The key of the observation with sequence `sequence`.
std::string KeyOf(uint64_t sequence);

// One raw Ingest stream. Its first message is a heartbeat announcing the
// current protocol and, with `out_of_order`, the "out_of_order"
// capability.
class RawStream {
 public:
  RawStream(const std::string& address, const std::string& location, uint64_t incarnation,
            bool out_of_order);

  // Sends sequences first .. first + count - 1 (declaring skipped_from
  // when not 0); false if the stream is broken.
  bool Send(uint64_t first, uint64_t count, uint64_t skipped_from = 0);
  // The same batch claiming `location` instead of the stream's.
  bool SendAs(const std::string& location, uint64_t first, uint64_t count);
  // The next message from the collector, or nullopt once the stream ended.
  std::optional<v1::CollectorMessage> Next();
  // The next ack (a Hello is skipped), or nullopt once the stream ended.
  std::optional<v1::Ack> NextAck();
  // Waits for the collector's Hello: the heartbeat before it was handled
  // (this stream holds its location).
  bool Greeted();
  // Half-closes, drains what is left and returns the stream's status.
  grpc::Status Finish();
  // Cancels the stream (a client giving up on a connection) and finishes.
  void Cancel();

 private:
  bool SendBatch(const std::string& location, uint64_t first, uint64_t count,
                 uint64_t skipped_from);
  std::unique_ptr<v1::Ingest::Stub> stub_;
  std::string location_;
  uint64_t incarnation_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::AgentMessage, v1::CollectorMessage>> stream_;
};

// Delivery of sequences 1 .. n as the collector holds it: each sequence's
// key read back with Query.KeyDetail. A key never applied is lost, one
// applied more than once duplicated.
struct Delivery {
  uint64_t applied_once = 0, lost = 0, duplicated = 0;
  std::vector<std::string> problems;  // "k17: 2 samples", the first few.
};
Delivery CountApplied(const std::string& address, uint64_t n);

}  // namespace constance::testing

#endif  // CONSTANCE_TESTS_INTEGRATION_RAW_STREAM_H_
