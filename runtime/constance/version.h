// The release this build is, and the versions of what it speaks and
// writes, for `--version`, heartbeats and the upgrade checks.
//
//   constance::Version()            "0.2.0" (CMake's project version)
//   constance::kProtocolVersion     what the Ingest stream speaks (below)
//   constance::VersionLine("constance-agent")
//       "constance-agent 0.2.0 (protocol 2)"
//
// Protocol versions of constance.v1.Ingest (proto/constance/v1/ingest.proto):
//   1  constance 0.1.0, the first release: batches and heartbeats up, acks
//      down; no version is announced (a heartbeat without protocol_version
//      is protocol 1).
//   2  constance 0.2.0: the agent's first heartbeat announces its protocol
//      version, and the collector answers an agent that announced 2 or
//      more with a Hello of its own before any ack. A collector never sends
//      a message or field an agent did not announce it understands, and an
//      agent that gets no Hello speaks protocol 1. The messages also carry
//      a list of capabilities, for optional features a later protocol
//      adds. Capabilities (announced in the first heartbeat; the Hello
//      lists those both sides know):
//        "out_of_order"  the agent understands Ack.OUT_OF_ORDER and
//                        resends from Ack.expected_sequence; without it a
//                        batch that leaves a gap ends the stream with
//                        FAILED_PRECONDITION.
//
// Thread-safe: constants only.
#ifndef CONSTANCE_VERSION_H_
#define CONSTANCE_VERSION_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace constance {

inline constexpr uint32_t kProtocolVersion = 2;

// The capability of a client that understands Ack.OUT_OF_ORDER.
inline constexpr absl::string_view kCapabilityOutOfOrder = "out_of_order";

// The release, e.g. "0.2.0".
absl::string_view Version();

// "<binary> <release> (protocol N[, <extra>])": what --version prints.
std::string VersionLine(absl::string_view binary, absl::string_view extra = "");

// Makes absl's --version flag print VersionLine(binary, extra) and exit 0.
// Call before absl::ParseCommandLine.
void SetVersionFlag(absl::string_view binary, absl::string_view extra = "");

}  // namespace constance

#endif  // CONSTANCE_VERSION_H_
