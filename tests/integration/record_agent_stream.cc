// Records what an agent sends: serves Ingest as the first release did
// (old_collector.h) on a free loopback port, writes `grpc=HOST:PORT` to
// READY_FILE, and on SIGTERM or SIGINT writes the AgentMessages of each
// stream received, in order, to OUT_PREFIX-stream<N>.bin (N from 1, each
// message behind its length as a varint). How tests/data/wire/<release>/
// was made: see its README.md.
//
//   record_agent_stream OUT_PREFIX READY_FILE
#include <fstream>
#include <iostream>

#include "constance/process.h"
#include "tests/integration/old_collector.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: record_agent_stream OUT_PREFIX READY_FILE\n";
    return 2;
  }
  constance::BlockTerminationSignals();
  constance::testing::OldCollector old;
  absl::StatusOr<std::string> address = old.Start();
  if (!address.ok()) {
    std::cerr << "record_agent_stream: " << address.status() << "\n";
    return 1;
  }
  if (absl::Status s = constance::WriteReadyFile(argv[2], {{"grpc", *address}}); !s.ok()) {
    std::cerr << "record_agent_stream: " << s << "\n";
    return 1;
  }
  constance::WaitForTerminationSignal();
  const std::vector<std::string> streams = old.Recordings();
  for (size_t i = 0; i < streams.size(); ++i) {
    std::ofstream(absl::StrCat(argv[1], "-stream", i + 1, ".bin"), std::ios::binary) << streams[i];
  }
  return 0;
}
