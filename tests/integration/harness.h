// Test harness for integration tests that run real constance processes.
//
// Subprocess starts a binary with arguments, keeps its stderr in a file for
// the failure message, and stops it (SIGTERM, then SIGKILL after a bound) in
// its destructor, so every process a test starts is stopped by that test.
// Processes report their OS-chosen ports through a ready file
// (`name=host:port` lines, written atomically), which WaitForReadyFile reads.
//
// HttpGet/HttpPost talk plain HTTP/1.1 to loopback through the product's
// own client (constance/http_client.h), so the tests exercise it too.
//
// Not thread-safe: use from the test's thread.
#ifndef CONSTANCE_TESTS_INTEGRATION_HARNESS_H_
#define CONSTANCE_TESTS_INTEGRATION_HARNESS_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "constance/http_client.h"

namespace constance::testing {

// A fresh directory under $TMPDIR, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

class Subprocess {
 public:
  // Starts `argv[0]` with `argv`; stderr and stdout go to `log_path`.
  Subprocess(std::vector<std::string> argv, std::string log_path);
  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  // Sends `signal` and waits up to `timeout` for exit; returns the exit
  // status as from waitpid, or an error if it did not exit in time (it is
  // then killed).
  absl::StatusOr<int> Stop(int signal, absl::Duration timeout);
  // True while the process has not exited.
  bool Running();
  // The captured output so far (for failure messages).
  std::string Log() const;

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
  std::string log_path_;
};

// Waits until `path` exists and parses its `name=value` lines. Fails if
// `process` exits first or the deadline passes.
absl::StatusOr<std::map<std::string, std::string>> WaitForReadyFile(const std::string& path,
                                                                    Subprocess& process,
                                                                    absl::Duration timeout);

// The product's own client (constance/http_client.h) does the talking.
using HttpResponse = ::constance::HttpResponse;

// `address` is host:port. Bodies are sent as application/json.
absl::StatusOr<HttpResponse> HttpGet(const std::string& address, const std::string& path);
absl::StatusOr<HttpResponse> HttpPost(const std::string& address, const std::string& path,
                                      const std::string& body);

// As HttpPost, with `headers` (name, value) added: a Host or Content-Type
// among them replaces the default, and an empty value leaves it out
// (probes of what the agent refuses).
absl::StatusOr<HttpResponse> HttpPostWithHeaders(
    const std::string& address, const std::string& path, const std::string& body,
    const std::vector<std::pair<std::string, std::string>>& headers);

// Runs `command` through /bin/sh with `input` on stdin; returns exit status
// and combined output.
struct CommandResult {
  int exit_code = -1;
  std::string output;
};
CommandResult RunCommand(const std::string& command, const std::string& input);

// The whole file at `path`, "" when it cannot be read.
std::string ReadFile(const std::string& path);

// Polls `condition` every 20 ms until it holds or `timeout` passes; its
// last answer.
template <typename F>
bool WaitFor(F condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return condition();
}

// The command line of a plaintext collector on 127.0.0.1 port 0 (gRPC
// and /metrics) that evaluates every 100 ms, with `catalog` and writing
// its ports to `ready_file`; `extra` flags are appended.
std::vector<std::string> CollectorArgs(const std::string& catalog, const std::string& ready_file,
                                       const std::vector<std::string>& extra = {});

// The command line of a plaintext agent (`run`) with `config`, sending to
// `collector`, on 127.0.0.1 port 0, retrying within half a second, flushing
// every 20 ms and not draining at exit; its spool and ready file as given.
std::vector<std::string> AgentArgs(const std::string& config, const std::string& collector,
                                   const std::string& spool, const std::string& ready_file);

// Observations applied by the plaintext collector at `grpc_address`
// (ChainSummary); 0 when it does not answer.
uint64_t ObservationsApplied(const std::string& grpc_address);

// Sends one shelf price (EUR, observed now) of `key` for `location` to the
// plaintext collector at `grpc_address` as one batch of incarnation 1 at
// `sequence` (1: the location's first), and waits for its acknowledgement.
absl::Status SendShelfPrice(const std::string& grpc_address, const std::string& location,
                            const std::string& key, int64_t minor_units, uint64_t sequence = 1);

// Directory of the built binaries (CONSTANCE_BIN_DIR, set by CMake).
std::string BinDir();

// The source tree (CONSTANCE_SOURCE_DIR, set by CMake), for scripts such
// as deploy/pki/pki.sh.
std::string SourceDir();

// The value of the first sample in Prometheus text `exposition` whose name
// and labels start with `series` (e.g. `constance_refusals_total{reason="x"`
// or `constance_agent_connected`); NotFound if there is none.
absl::StatusOr<double> MetricValue(const std::string& exposition, const std::string& series);

// The loopback address (127.0.0.1:port) process `p` listens on, from the
// socket table (`ss`, package iproute2), for servers that do not report
// the port they were given (Prometheus, Alertmanager). Fails if `p` exits
// or the deadline passes.
absl::StatusOr<std::string> ListeningAddress(Subprocess& p, absl::Duration timeout);

// `s` percent-encoded for a URL's query string.
std::string UrlEncode(const std::string& s);

}  // namespace constance::testing

#endif  // CONSTANCE_TESTS_INTEGRATION_HARNESS_H_
