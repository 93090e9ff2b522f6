// Process plumbing both binaries share: the ready file and signal waiting.
//
// A ready file tells whoever started a process (the demo, the tests, a
// supervisor) which ports it bound when it was asked for port 0: lines of
// `name=host:port`, written to PATH.tmp and renamed, so a reader never sees
// a half-written file.
//
//   BlockTerminationSignals();          // first thing in main, before threads
//   ... start servers ...
//   WriteReadyFile(path, {{"grpc", "127.0.0.1:43121"}});
//   int sig = WaitForTerminationSignal();  // SIGTERM or SIGINT
//
// Not thread-safe: call from main's thread.
#ifndef CONSTANCE_PROCESS_H_
#define CONSTANCE_PROCESS_H_

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace constance {

// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread; threads started
// afterwards inherit the mask, so only WaitForTerminationSignal sees them.
void BlockTerminationSignals();

// Waits for SIGTERM or SIGINT and returns it. SIGHUP calls `on_hangup`
// (e.g. reload configuration) and keeps waiting.
int WaitForTerminationSignal(const std::function<void()>& on_hangup = nullptr);

// Writes `entries` as name=value lines atomically. An empty path is a no-op.
absl::Status WriteReadyFile(const std::string& path,
                            const std::vector<std::pair<std::string, std::string>>& entries);

// The address a local client should dial for a server bound to `listen`
// on `port`: wildcard hosts (0.0.0.0, [::], empty) become loopback.
std::string DialAddress(absl::string_view listen, int port);

}  // namespace constance

#endif  // CONSTANCE_PROCESS_H_
