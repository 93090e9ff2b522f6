// Helpers the peer benchmarks share: what a process costs (proc_stats.h),
// a keep-alive HTTP/1.1 client for loopback peers, and reading back the
// port a peer chose.
//
//   double before = CpuSeconds(pid);
//   ... load ...
//   double cpu = CpuSeconds(pid) - before;
//   int64_t rss = ProcStatusKb(pid, "VmRSS");
//
//   HttpConnection prometheus("127.0.0.1:9090");
//   absl::StatusOr<HttpResponse> r = prometheus.Request("GET", "/-/ready", {}, "");
//
// Not thread-safe: an HttpConnection belongs to one thread; the free
// functions are safe from any thread.
#ifndef CONSTANCE_TESTS_BENCH_BENCH_UTIL_H_
#define CONSTANCE_TESTS_BENCH_BENCH_UTIL_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/bench/proc_stats.h"
#include "tests/integration/harness.h"

namespace constance::testing {

// One HTTP/1.1 connection to `address` (host:port), kept alive across
// requests and reopened once if the server closed it in between. Bodies of
// responses may be sized (Content-Length), chunked or delimited by close.
class HttpConnection {
 public:
  explicit HttpConnection(std::string address);
  ~HttpConnection();
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  // Sends one request and reads its whole response. `headers` are extra
  // header lines (name, value); Host, Content-Length and keep-alive are set
  // here. Fails on connection or protocol errors, not on HTTP statuses.
  absl::StatusOr<HttpResponse> Request(
      const std::string& method, const std::string& path,
      const std::vector<std::pair<std::string, std::string>>& headers, const std::string& body);

 private:
  absl::Status Connect();
  void Close();
  absl::StatusOr<HttpResponse> RequestOnce(const std::string& request);
  // Reads until `buffer_` holds at least `n` bytes; false at EOF or error.
  bool Fill(size_t n);

  std::string address_;
  int fd_ = -1;
  std::string buffer_;  // Received, not yet consumed.
};

// Waits until the log of `process` holds a Go exporter-toolkit line
// `msg="Listening on" address=HOST:PORT` (Prometheus, Pushgateway,
// node-exporter started with port 0) and returns HOST:PORT.
absl::StatusOr<std::string> WaitForListenAddress(Subprocess& process, absl::Duration timeout);

// A loopback port that was free a moment ago (bound with port 0 and
// released), for programs that cannot listen on port 0 themselves.
// `udp` picks a datagram port. The caller retries if it is taken since.
absl::StatusOr<int> FreeLoopbackPort(bool udp);

}  // namespace constance::testing

#endif  // CONSTANCE_TESTS_BENCH_BENCH_UTIL_H_
