// Serves CollectorMetrics::Render() at GET /metrics over HTTP/1.1
// (civetweb), in place of prometheus-cpp's Exposer, which can only serve
// prometheus::Collectable families through its own serializer (see
// collector/exposition.h for why that is too slow at chain scale).
//
// Answers 200 with the text format (version 0.0.4, identity encoding: a
// scrape is on loopback or the LAN, and compressing 90 MB would cost more
// than sending it), 405 for methods other than GET and HEAD, and 404 with
// the one path there is for any other path.
//
//   auto server = MetricsServer::Start("127.0.0.1:0", &metrics);
//   int port = (*server)->port();
//
// Thread-safety: requests are served on civetweb's threads; Stop() (or
// the destructor) waits for those in progress.
#ifndef CONSTANCE_COLLECTOR_METRICS_SERVER_H_
#define CONSTANCE_COLLECTOR_METRICS_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "collector/metrics.h"
#include "constance/http_server.h"

namespace constance::collector {

class MetricsServer {
 public:
  // Listens on `listen` (HOST:PORT, [V6]:PORT; port 0 picks one) with
  // `threads` request threads. `metrics` must outlive the server.
  // Unavailable, naming `listen` and civetweb's reason, if it cannot.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& listen,
                                                              const CollectorMetrics* metrics,
                                                              int threads = 2);

  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  ~MetricsServer() = default;

  // The port listened on.
  int port() const { return server_->port(); }

 private:
  explicit MetricsServer(std::unique_ptr<HttpServer> server) : server_(std::move(server)) {}

  const std::unique_ptr<HttpServer> server_;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_METRICS_SERVER_H_
