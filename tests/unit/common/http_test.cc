// The shared civetweb start-up (http_server.h) and client (http_client.h):
// port 0 discovery, routing, a clear error for a port in use, and the
// client's defaults and header overrides, all on 127.0.0.1.
#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "civetweb.h"
#include "constance/http_client.h"
#include "constance/http_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace constance {
namespace {

using ::testing::HasSubstr;

// Answers with the request's method, Host, Content-Type and body.
int Echo(mg_connection* conn, void*) {
  const mg_request_info* ri = mg_get_request_info(conn);
  std::string body;
  char buf[1024];
  int n;
  while ((n = mg_read(conn, buf, sizeof(buf))) > 0) body.append(buf, n);
  const char* host = mg_get_header(conn, "Host");
  const char* type = mg_get_header(conn, "Content-Type");
  const std::string answer = absl::StrCat(ri->request_method, " ", host ? host : "-", " ",
                                          type ? type : "-", " ", body);
  mg_printf(conn, "HTTP/1.1 201 Created\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
            answer.size(), answer.c_str());
  return 201;
}

std::unique_ptr<HttpServer> StartEcho() {
  HttpServerOptions options;
  options.listen = "127.0.0.1:0";
  options.log_name = "test http";
  absl::StatusOr<std::unique_ptr<HttpServer>> server = HttpServer::Start(options);
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return nullptr;
  (*server)->Handle("/echo", Echo, nullptr);
  return *std::move(server);
}

TEST(HttpTest, PortZeroIsReadBackAndRequestsReachTheHandler) {
  std::unique_ptr<HttpServer> server = StartEcho();
  ASSERT_NE(server, nullptr);
  ASSERT_GT(server->port(), 0);
  HttpRequest post;
  post.method = "POST";
  post.path = "/echo";
  post.body = "{\"a\":1}";
  absl::StatusOr<HttpResponse> r = HttpFetch("127.0.0.1", server->port(), post, absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 201);
  EXPECT_EQ(r->body, absl::StrCat("POST 127.0.0.1:", server->port(), " application/json {\"a\":1}"));

  HttpRequest get;
  get.path = "/echo";
  get.headers = {{"Host", "store.local:1"}, {"Content-Type", ""}};
  r = HttpFetch("127.0.0.1", server->port(), get, absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "GET store.local:1 - ");

  // Paths without a handler get civetweb's 404, not a hang.
  get.path = "/elsewhere";
  r = HttpFetch("127.0.0.1", server->port(), get, absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 404);
}

TEST(HttpTest, PortInUseNamesTheAddress) {
  std::unique_ptr<HttpServer> first = StartEcho();
  ASSERT_NE(first, nullptr);
  HttpServerOptions options;
  options.listen = absl::StrCat("127.0.0.1:", first->port());
  absl::StatusOr<std::unique_ptr<HttpServer>> second = HttpServer::Start(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr(absl::StrCat("cannot listen on 127.0.0.1:", first->port())));
}

TEST(HttpTest, NoServerIsUnavailableNamingTheUrl) {
  int port = 0;
  {
    std::unique_ptr<HttpServer> server = StartEcho();
    ASSERT_NE(server, nullptr);
    port = server->port();
  }  // Stopped: nothing listens there now.
  HttpRequest get;
  get.path = "/echo";
  absl::StatusOr<HttpResponse> r = HttpFetch("127.0.0.1", port, get, absl::Seconds(5));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr(absl::StrCat("http://127.0.0.1:", port, "/echo")));
}

}  // namespace
}  // namespace constance
