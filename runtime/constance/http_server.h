// Starting and stopping a civetweb HTTP/1.1 server the way both binaries
// want one: the agent's local ingest and the collector's /metrics.
//
// One place decides the civetweb options (listening port, worker threads,
// request timeout, no document root, keep-alive off), routes civetweb's own
// log lines to spdlog, turns a failed start into a Status naming the
// address, and reads back the port when the address asked for port 0.
// TLS is not offered: the agent's ingest listens on loopback by default and
// /metrics is scraped on the operator's network, as before this helper.
//
// Example:
//   HttpServerOptions options;
//   options.listen = "127.0.0.1:0";
//   options.log_name = "metrics http";
//   absl::StatusOr<std::unique_ptr<HttpServer>> server = HttpServer::Start(options);
//   (*server)->Handle("/metrics", HandleMetrics, &metrics);
//   int port = (*server)->port();
//
// Thread-safety: requests run on civetweb's worker threads. Handle() is
// for set-up, before requests are expected; the destructor stops the
// server and waits for the handlers in progress, so it must not run on one
// of them.
#ifndef CONSTANCE_HTTP_SERVER_H_
#define CONSTANCE_HTTP_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

struct mg_context;
struct mg_connection;

namespace constance {

struct HttpServerOptions {
  // HOST:PORT or [V6]:PORT; port 0 picks a free port (see port()).
  std::string listen;
  // Worker threads: at most this many requests are served at once.
  int threads = 2;
  // A request whose headers and body take longer is cut off.
  absl::Duration request_timeout = absl::Seconds(30);
  // Prefix of civetweb's own log lines ("http", "metrics http").
  std::string log_name = "http";
};

class HttpServer {
 public:
  // civetweb's handler: returns the HTTP status sent (or 0 to let civetweb
  // answer). `data` is what was given to Handle().
  using Handler = int (*)(mg_connection* conn, void* data);

  // Listens as `options` says. Unavailable naming the address and
  // civetweb's reason when it cannot.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpServerOptions& options);

  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  ~HttpServer();

  // Routes `uri` ("/metrics"; "**" for every other path) to `handler`.
  // `data` must outlive the server.
  void Handle(const char* uri, Handler handler, void* data);

  // The port listened on (the one picked, for port 0).
  int port() const { return port_; }

 private:
  HttpServer(std::unique_ptr<std::string> log_name, mg_context* ctx, int port)
      : log_name_(std::move(log_name)), ctx_(ctx), port_(port) {}

  // civetweb's user data: its log callback reads the name from there.
  const std::unique_ptr<std::string> log_name_;
  mg_context* const ctx_;
  const int port_;
};

}  // namespace constance

#endif  // CONSTANCE_HTTP_SERVER_H_
