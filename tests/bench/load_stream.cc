#include "tests/bench/load_stream.h"

namespace constance::testing {

grpc::ByteBuffer SerializeMessage(const v1::AgentMessage& message) {
  const std::string bytes = message.SerializeAsString();
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace constance::testing
