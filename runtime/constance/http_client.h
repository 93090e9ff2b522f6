// A small HTTP/1.1 client for loopback: `constance-agent observe` posting to
// a running agent, and the integration tests talking to the agent's ingest
// and the collector's /metrics. One request per connection, whole answer
// read into memory.
//
// Built on civetweb's client (mg_connect_client / mg_get_response), which
// both binaries already link for their servers. libcurl would be the usual
// choice, but Debian 12 ships only its runtime here (no libcurl4-*-dev is
// installed) and nothing we link pulls it in: a new build dependency for
// plain-text requests to 127.0.0.1 would buy nothing.
//
// Example:
//   HttpRequest request;
//   request.method = "POST";
//   request.path = "/v1/observations";
//   request.body = json;
//   absl::StatusOr<HttpResponse> r = HttpFetch("127.0.0.1", 8080, request, absl::Seconds(10));
//
// Thread-safe: each call has its own connection.
#ifndef CONSTANCE_HTTP_CLIENT_H_
#define CONSTANCE_HTTP_CLIENT_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace constance {

struct HttpRequest {
  std::string method = "GET";
  std::string path = "/";
  // Sent with Content-Length, and Content-Type application/json, for any
  // method but GET and HEAD.
  std::string body;
  // Added headers (name, value). A Host or Content-Type here replaces the
  // default one, and an empty value leaves that header out (for probes of
  // what a server refuses).
  std::vector<std::pair<std::string, std::string>> headers;
};

struct HttpResponse {
  int status = 0;
  std::string body;
};

// Sends `request` to host:port and reads the whole answer. Unavailable,
// naming the URL, when the server cannot be reached or does not answer
// within `timeout`. Any status the server sends is an answer, not an error.
absl::StatusOr<HttpResponse> HttpFetch(const std::string& host, int port,
                                       const HttpRequest& request, absl::Duration timeout);

}  // namespace constance

#endif  // CONSTANCE_HTTP_CLIENT_H_
