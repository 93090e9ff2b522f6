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

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
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
