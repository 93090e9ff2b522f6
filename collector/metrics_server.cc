#include "collector/metrics_server.h"

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
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
  // Chunked: the exposition is written as it is rendered, a piece at a
  // time, so a scrape at chain scale holds one piece in memory, not 90 MB,
  // and its first bytes are on the wire while the rest is rendered.
  mg_response_header_start(conn, 200);
  mg_response_header_add(conn, "Content-Type", "text/plain; version=0.0.4; charset=utf-8", -1);
  mg_response_header_add(conn, "Cache-Control", "no-store", -1);
  if (head) {
    mg_response_header_send(conn);
    return 200;
  }
  mg_response_header_add(conn, "Transfer-Encoding", "chunked", -1);
  mg_response_header_send(conn);
  bool open = true;  // Until a write fails (the scraper went away).
  metrics->Render([&](absl::string_view piece) {
    if (open && mg_send_chunk(conn, piece.data(), static_cast<unsigned>(piece.size())) < 0) {
      open = false;
    }
  });
  if (open) mg_send_chunk(conn, "", 0);
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
