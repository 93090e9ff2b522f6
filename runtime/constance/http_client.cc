#include "constance/http_client.h"

#include <algorithm>
#include <cstdint>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "civetweb.h"

namespace constance {
namespace {

void InitCivetweb() {
  // mg_start does this for servers; a client-only process must do it once.
  static const bool done = [] {
    mg_init_library(0);
    return true;
  }();
  (void)done;
}

std::string RequestText(const std::string& host, int port, const HttpRequest& r) {
  std::string text = absl::StrCat(r.method, " ", r.path, " HTTP/1.1\r\nConnection: close\r\n");
  const bool has_body = r.method != "GET" && r.method != "HEAD";
  bool host_given = false, type_given = false;
  for (const auto& [name, value] : r.headers) {
    host_given = host_given || absl::EqualsIgnoreCase(name, "Host");
    type_given = type_given || absl::EqualsIgnoreCase(name, "Content-Type");
    if (!value.empty()) absl::StrAppend(&text, name, ": ", value, "\r\n");
  }
  if (!host_given) absl::StrAppend(&text, "Host: ", host, ":", port, "\r\n");
  if (has_body) {
    if (!type_given) absl::StrAppend(&text, "Content-Type: application/json\r\n");
    absl::StrAppend(&text, "Content-Length: ", r.body.size(), "\r\n");
  }
  absl::StrAppend(&text, "\r\n", has_body ? r.body : "");
  return text;
}

}  // namespace

absl::StatusOr<HttpResponse> HttpFetch(const std::string& host, int port,
                                       const HttpRequest& request, absl::Duration timeout) {
  InitCivetweb();
  const std::string where = absl::StrCat("http://", host, ":", port, request.path);
  char error[256] = {0};
  mg_connection* conn = mg_connect_client(host.c_str(), port, /*use_ssl=*/0, error, sizeof(error));
  if (conn == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot connect to ", where, ": ", error));
  }
  const std::string text = RequestText(host, port, request);
  if (mg_write(conn, text.data(), text.size()) != static_cast<int>(text.size())) {
    mg_close_connection(conn);
    return absl::UnavailableError(absl::StrCat("cannot send the request to ", where));
  }
  const int timeout_ms = static_cast<int>(std::min<int64_t>(
      std::max<int64_t>(absl::ToInt64Milliseconds(timeout), 1), std::numeric_limits<int>::max()));
  if (mg_get_response(conn, error, sizeof(error), timeout_ms) < 0) {
    mg_close_connection(conn);
    return absl::UnavailableError(absl::StrCat("no answer from ", where, ": ", error));
  }
  HttpResponse response;
  response.status = mg_get_response_info(conn)->status_code;
  char buf[16384];
  int n;
  while ((n = mg_read(conn, buf, sizeof(buf))) > 0) response.body.append(buf, n);
  mg_close_connection(conn);
  return response;
}

}  // namespace constance
