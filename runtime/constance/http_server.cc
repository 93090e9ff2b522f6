#include "constance/http_server.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "civetweb.h"
#include "spdlog/spdlog.h"

namespace constance {
namespace {

int LogMessage(const mg_connection* conn, const char* message) {
  const mg_context* ctx = conn != nullptr ? mg_get_context(conn) : nullptr;
  const auto* name =
      ctx != nullptr ? static_cast<const std::string*>(mg_get_user_data(ctx)) : nullptr;
  spdlog::warn("{}: {}", name != nullptr ? *name : "http", message);
  return 1;  // Handled: civetweb writes no log file of its own.
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options) {
  auto log_name = std::make_unique<std::string>(options.log_name);
  const std::string threads = std::to_string(std::max(1, options.threads));
  const std::string timeout_ms =
      std::to_string(std::max<int64_t>(1, absl::ToInt64Milliseconds(options.request_timeout)));
  // No document_root: these servers serve their handlers and no files.
  // Keep-alive stays off (civetweb's default): a connection holds a worker
  // for one request only.
  const char* config[] = {"listening_ports",    options.listen.c_str(), "num_threads",
                          threads.c_str(),      "request_timeout_ms",   timeout_ms.c_str(),
                          nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  callbacks.log_message = LogMessage;
  mg_init_data init;
  std::memset(&init, 0, sizeof(init));
  init.callbacks = &callbacks;
  init.user_data = log_name.get();
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
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen, ": ",
                                               error_text[0] ? error_text : "unknown error"));
  }
  std::vector<mg_server_port> ports(4);
  const int n = mg_get_server_ports(ctx, static_cast<int>(ports.size()), ports.data());
  if (n <= 0) {
    mg_stop(ctx);
    return absl::UnavailableError(absl::StrCat("no listening port on ", options.listen));
  }
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(log_name), ctx, ports[0].port));
}

HttpServer::~HttpServer() { mg_stop(ctx_); }

void HttpServer::Handle(const char* uri, Handler handler, void* data) {
  mg_set_request_handler(ctx_, uri, handler, data);
}

}  // namespace constance
