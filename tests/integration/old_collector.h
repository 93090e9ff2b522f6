// A collector that answers agents as the first release (0.1.0, Ingest
// protocol 1) did: heartbeats are recorded and answered with nothing, each
// batch is applied by the engine and answered with its ack, and nothing
// else is ever sent (no Hello, whatever the agent announces). Used to test
// the current agent against an older collector, and to record the
// messages an agent sends (tests/data/wire/).
//
//   OldCollector old;
//   absl::StatusOr<std::string> address = old.Start();   // 127.0.0.1:port
//   ... agents stream to *address ...
//   old.engine().snapshot() ...
//
// Thread-safe: gRPC serves streams on its own threads; the engine and the
// recording have their own locks.
#ifndef CONSTANCE_TESTS_INTEGRATION_OLD_COLLECTOR_H_
#define CONSTANCE_TESTS_INTEGRATION_OLD_COLLECTOR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "collector/engine.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "grpcpp/grpcpp.h"

namespace constance::testing {

class OldCollector final : public v1::Ingest::Service {
 public:
  OldCollector() : engine_(collector::Engine::Options()) {}
  ~OldCollector() override {
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
  }

  // Listens on a free loopback port; returns HOST:PORT.
  absl::StatusOr<std::string> Start() {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
    if (server_ == nullptr || port == 0) return absl::UnavailableError("cannot listen");
    return absl::StrCat("127.0.0.1:", port);
  }

  grpc::Status Stream(grpc::ServerContext*,
                      grpc::ServerReaderWriter<v1::CollectorMessage, v1::AgentMessage>* stream)
      override {
    size_t index = 0;
    {
      absl::MutexLock lock(&mu_);
      index = recordings_.size();
      recordings_.emplace_back();
    }
    v1::AgentMessage message;
    while (stream->Read(&message)) {
      Record(index, message);
      if (message.has_batch()) {
        absl::StatusOr<v1::Ack> ack = engine_.ApplyBatch(message.batch());
        if (!ack.ok()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad batch");
        v1::CollectorMessage reply;
        *reply.mutable_ack() = *std::move(ack);
        if (!stream->Write(reply)) break;
      } else if (message.has_heartbeat()) {
        (void)engine_.RecordHeartbeat(message.heartbeat());
      } else {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "message: neither batch nor heartbeat is set");
      }
    }
    return grpc::Status::OK;
  }

  collector::Engine& engine() { return engine_; }

  // Every message received so far, one string per stream in the order
  // the streams opened, each the stream's AgentMessages in order,
  // serialized behind their length (a varint): the format of
  // tests/data/wire.
  std::vector<std::string> Recordings() {
    absl::MutexLock lock(&mu_);
    return recordings_;
  }

  // Splits a recording into its messages.
  static absl::StatusOr<std::vector<v1::AgentMessage>> ParseRecording(const std::string& bytes) {
    google::protobuf::io::ArrayInputStream array(bytes.data(), static_cast<int>(bytes.size()));
    google::protobuf::io::CodedInputStream in(&array);
    std::vector<v1::AgentMessage> out;
    uint32_t size = 0;
    while (in.ReadVarint32(&size)) {
      std::string body;
      v1::AgentMessage m;
      if (!in.ReadString(&body, static_cast<int>(size)) || !m.ParseFromString(body)) {
        return absl::DataLossError(absl::StrCat("recording: message ", out.size() + 1,
                                                " is cut short or not an AgentMessage"));
      }
      out.push_back(std::move(m));
    }
    return out;
  }

 private:
  void Record(size_t index, const v1::AgentMessage& message) {
    std::string body = message.SerializeAsString();
    std::string framed;
    {
      google::protobuf::io::StringOutputStream sink(&framed);
      google::protobuf::io::CodedOutputStream out(&sink);
      out.WriteVarint32(static_cast<uint32_t>(body.size()));
      out.WriteString(body);
    }
    absl::MutexLock lock(&mu_);
    recordings_[index] += framed;
  }

  collector::Engine engine_;
  std::unique_ptr<grpc::Server> server_;
  absl::Mutex mu_;
  std::vector<std::string> recordings_ ABSL_GUARDED_BY(mu_);
};

}  // namespace constance::testing

#endif  // CONSTANCE_TESTS_INTEGRATION_OLD_COLLECTOR_H_
