#include "collector/metrics_server.h"

#include <cstring>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "civetweb.h"
#include "constance/http_server.h"
#include "spdlog/spdlog.h"

namespace constance::collector {
namespace {

void Reply(mg_connection* conn, int status, const char* content_type, const std::string& body) {
  mg_response_header_start(conn, status);
  mg_response_header_add(conn, "Content-Type", content_type, -1);
  mg_response_header_add(conn, "Content-Length", std::to_string(body.size()).c_str(), -1);
  mg_response_header_add(conn, "Cache-Control", "no-store", -1);
  if (status == 405) mg_response_header_add(conn, "Allow", "GET, HEAD", -1);
  mg_response_header_send(conn);
  mg_write(conn, body.data(), body.size());
}

// Chunked: the exposition is rendered on a thread of its own while this
// one sends what is ready, so at chain scale (90 MB) the render and the
// kernel's copying overlap instead of adding up. At most kQueuedChunks
// pieces wait, so a scrape holds a few pieces in memory, never 90 MB, and a
// slow scraper slows the render rather than filling memory. A scraper that
// goes away stops the sending; the render finishes, unsent.
void SendRendered(mg_connection* conn, const CollectorMetrics& metrics) {
  constexpr size_t kQueuedChunks = 4;
  absl::Mutex mu;
  std::deque<std::string> ready;  // Guarded by mu.
  bool rendered = false;          // Guarded by mu.
  bool gone = false;              // Guarded by mu: the scraper went away.
  std::thread renderer([&] {
    metrics.Render([&](absl::string_view piece) {
      std::string chunk(piece);
      absl::MutexLock lock(&mu);
      auto room = [&] { return gone || ready.size() < kQueuedChunks; };
      mu.Await(absl::Condition(&room));
      if (!gone) ready.push_back(std::move(chunk));
    });
    absl::MutexLock lock(&mu);
    rendered = true;
  });
  for (;;) {
    std::string chunk;
    {
      absl::MutexLock lock(&mu);
      auto next = [&] { return rendered || !ready.empty(); };
      mu.Await(absl::Condition(&next));
      if (ready.empty()) break;  // Rendered, and all of it sent.
      chunk = std::move(ready.front());
      ready.pop_front();
    }
    if (mg_send_chunk(conn, chunk.data(), static_cast<unsigned>(chunk.size())) < 0) {
      absl::MutexLock lock(&mu);
      gone = true;
      ready.clear();
      break;
    }
  }
  renderer.join();  // `gone` is this thread's own write.
  if (!gone) mg_send_chunk(conn, "", 0);
}

int HandleMetrics(mg_connection* conn, void* cbdata) {
  const auto* metrics = static_cast<const CollectorMetrics*>(cbdata);
  const mg_request_info* ri = mg_get_request_info(conn);
  if (std::strcmp(ri->local_uri, "/metrics") != 0) {
    Reply(conn, 404, "text/plain; charset=utf-8",
          absl::StrCat("no such path: ", ri->local_uri, " (GET /metrics)\n"));
    return 404;
  }
  const bool head = std::strcmp(ri->request_method, "HEAD") == 0;
  if (!head && std::strcmp(ri->request_method, "GET") != 0) {
    Reply(conn, 405, "text/plain; charset=utf-8", "use GET on /metrics\n");
    return 405;
  }
  // Chunked, sent while it is rendered (SendRendered).
  mg_response_header_start(conn, 200);
  mg_response_header_add(conn, "Content-Type", "text/plain; version=0.0.4; charset=utf-8", -1);
  mg_response_header_add(conn, "Cache-Control", "no-store", -1);
  if (head) {
    mg_response_header_send(conn);
    return 200;
  }
  mg_response_header_add(conn, "Transfer-Encoding", "chunked", -1);
  mg_response_header_send(conn);
  SendRendered(conn, *metrics);
  return 200;
}

int HandleUnknown(mg_connection* conn, void*) {
  const mg_request_info* ri = mg_get_request_info(conn);
  Reply(conn, 404, "text/plain; charset=utf-8",
        absl::StrCat("no such path: ", ri->local_uri, " (GET /metrics)\n"));
  return 404;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& listen,
                                                                    const CollectorMetrics* metrics,
                                                                    int threads) {
  HttpServerOptions options;
  options.listen = listen;
  options.threads = threads;
  options.request_timeout = absl::Seconds(30);
  options.log_name = "metrics http";
  absl::StatusOr<std::unique_ptr<HttpServer>> server = HttpServer::Start(options);
  if (!server.ok()) {
    return absl::Status(server.status().code(),
                        absl::StrCat("--metrics_listen: ", server.status().message()));
  }
  // const_cast: civetweb's callback data is void*; the handler only reads.
  (*server)->Handle("/metrics", HandleMetrics, const_cast<CollectorMetrics*>(metrics));
  (*server)->Handle("**", HandleUnknown, nullptr);
  return std::unique_ptr<MetricsServer>(new MetricsServer(*std::move(server)));
}


}  // namespace constance::collector
