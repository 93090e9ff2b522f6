// The local HTTP ingest on a real loopback port: status codes, what reaches
// the spool, and the sender's notification.
#include "agent/http_ingest.h"

#include <atomic>
#include <memory>
#include <string>

#include "agent/observe.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace constance::agent {
namespace {

using ::testing::HasSubstr;

class HttpIngestTest : public ::testing::Test {
 protected:
  void Start(uint64_t spool_max = 1000, size_t max_body = 4 << 20) {
    SpoolOptions spool_options;
    spool_options.max_observations = spool_max;
    spool_ = std::make_unique<MemorySpool>(spool_options);
    HttpIngestOptions options;
    options.listen = "127.0.0.1:0";
    options.max_body_bytes = max_body;
    options.location = "store-a";
    auto http = HttpIngest::Start(options, spool_.get(), &metrics_,
                                  [this](uint64_t last) { last_notified_ = last; });
    ASSERT_TRUE(http.ok()) << http.status();
    http_ = *std::move(http);
    ASSERT_GT(http_->port(), 0);
    to_.host = "127.0.0.1";
    to_.port = http_->port();
  }

  HttpResponse Post(const std::string& path, const std::string& body) {
    absl::StatusOr<HttpResponse> r = PostJson(to_, path, body, absl::Seconds(10));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : HttpResponse{};
  }

  HttpResponse Get(const std::string& path) {
    absl::StatusOr<HttpResponse> r = GetUrl(to_, path, absl::Seconds(10));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : HttpResponse{};
  }

  AgentMetrics metrics_{"store-a", "test"};
  std::unique_ptr<MemorySpool> spool_;
  std::unique_ptr<HttpIngest> http_;
  std::atomic<uint64_t> last_notified_{0};
  HostPort to_;
};

TEST_F(HttpIngestTest, AnswersByCase) {
  Start();
  static const struct {
    const char* method;
    const char* path;
    const char* body;
    int status;
    const char* answer;  // Substring.
  } kCases[] = {
      {"POST", "/v1/observations",
       R"({"key":"coffee","price":{"minor_units":449,"currency":"EUR"}})", 200,
       R"({"accepted":1,"rejected":[]})"},
      {"POST", "/v1/observations",
       R"([{"key":"fridge","check":{"passed":false}},{"key":"checkout","wait_seconds":-5}])", 400,
       R"({"accepted":1,"rejected":[{"index":1,"reason":"wait_seconds: must not be negative"}]})"},
      {"POST", "/v1/observations", R"([{"key":)", 400, R"({"error":"malformed JSON: )"},
      {"POST", "/v1/observations", "7", 400, "expected a JSON object or an array"},
      {"GET", "/v1/observations", "", 405, "use POST"},
      {"POST", "/v1/observations/extra", "{}", 404, "no such path"},
      {"GET", "/metrics", "", 404, "no such path"},
      {"GET", "/healthz", "", 200, R"("status":"ok")"},
  };
  for (const auto& c : kCases) {
    HttpResponse r = std::string(c.method) == "GET" ? Get(c.path) : Post(c.path, c.body);
    EXPECT_EQ(r.status, c.status) << c.method << " " << c.path << " " << c.body << ": " << r.body;
    EXPECT_THAT(r.body, HasSubstr(c.answer)) << c.method << " " << c.path << " " << c.body;
  }
  // The two valid observations are in the spool and the sender was told.
  EXPECT_EQ(spool_->Depth(), 2u);
  EXPECT_EQ(last_notified_.load(), 2u);
  AgentMetrics::Snapshot s = metrics_.Read();
  EXPECT_EQ(s.accepted, 2u);
  EXPECT_EQ(s.rejected_invalid, 1u);
}

TEST_F(HttpIngestTest, BodyOverTheLimitIs413) {
  Start(/*spool_max=*/1000, /*max_body=*/1024);
  std::string body = "[";
  for (int i = 0; i < 100; ++i) body += R"({"key":"checkout","wait_seconds":1},)";
  body += R"({"key":"checkout","wait_seconds":1}])";
  HttpResponse r = Post("/v1/observations", body);
  EXPECT_EQ(r.status, 413) << r.body;
  EXPECT_THAT(r.body, HasSubstr("over the limit of 1024 bytes"));
  EXPECT_EQ(spool_->Depth(), 0u);
}

TEST_F(HttpIngestTest, SpoolFullIs507AndStoresNothing) {
  Start(/*spool_max=*/2);
  EXPECT_EQ(Post("/v1/observations", R"({"key":"a","score":1})").status, 200);
  HttpResponse r = Post("/v1/observations", R"([{"key":"b","score":1},{"key":"c","score":1}])");
  EXPECT_EQ(r.status, 507) << r.body;
  EXPECT_THAT(r.body, HasSubstr("spool full"));
  EXPECT_EQ(spool_->Depth(), 1u);
  EXPECT_EQ(metrics_.Read().rejected_spool_full, 2u);
}

TEST_F(HttpIngestTest, ClosedRefusesWithoutStoring) {
  Start();
  http_->Close();
  HttpResponse r = Post("/v1/observations", R"({"key":"a","score":1})");
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_THAT(r.body, HasSubstr("shutting down"));
  EXPECT_EQ(spool_->Depth(), 0u);
  http_->Stop();
  http_->Stop();  // Idempotent.
}

TEST(HttpIngestStartTest, PortInUseIsAnError) {
  MemorySpool spool(SpoolOptions{});
  AgentMetrics metrics("store-a", "test");
  HttpIngestOptions options;
  options.listen = "127.0.0.1:0";
  auto first = HttpIngest::Start(options, &spool, &metrics, nullptr);
  ASSERT_TRUE(first.ok()) << first.status();
  options.listen = "127.0.0.1:" + std::to_string((*first)->port());
  auto second = HttpIngest::Start(options, &spool, &metrics, nullptr);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr(options.listen));
}

}  // namespace
}  // namespace constance::agent
