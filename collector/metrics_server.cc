#include "collector/metrics_server.h"

#include <cstring>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "civetweb.h"
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

int LogMessage(const mg_connection*, const char* message) {
  spdlog::warn("metrics http: {}", message);
  return 1;  // Handled: civetweb writes no log file of its own.
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& listen,
                                                                    const CollectorMetrics* metrics,
                                                                    int threads) {
  const std::string thread_count = std::to_string(threads);
  // No document_root: this server serves /metrics and no files.
  const char* config[] = {"listening_ports",    listen.c_str(), "num_threads", thread_count.c_str(),
                          "request_timeout_ms", "30000",        nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  callbacks.log_message = LogMessage;
  mg_init_data init;
  std::memset(&init, 0, sizeof(init));
  init.callbacks = &callbacks;
  init.configuration_options = config;
  unsigned error_code = 0;
  char error_text[256] = {0};
  mg_error_data error;
  std::memset(&error, 0, sizeof(error));
  error.code = &error_code;
  error.text = error_text;
  error.text_buffer_size = sizeof(error_text);
  mg_context* ctx = mg_start2(&init, &error);
  if (ctx == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("--metrics_listen=", listen,
                     ": cannot listen there: ", error_text[0] ? error_text : "unknown error"));
  }
  // const_cast: civetweb's callback data is void*; the handler only reads.
  mg_set_request_handler(ctx, "/metrics", HandleMetrics, const_cast<CollectorMetrics*>(metrics));
  mg_set_request_handler(ctx, "**", HandleUnknown, nullptr);
  std::vector<mg_server_port> ports(4);
  const int n = mg_get_server_ports(ctx, static_cast<int>(ports.size()), ports.data());
  if (n <= 0) {
    mg_stop(ctx);
    return absl::UnavailableError(absl::StrCat("--metrics_listen=", listen, ": no listening port"));
  }
  return std::unique_ptr<MetricsServer>(new MetricsServer(ctx, ports[0].port));
}

MetricsServer::~MetricsServer() { mg_stop(ctx_); }

}  // namespace constance::collector
