// Idempotent local writes at the HTTP level, on a real loopback port, with
// the in-memory and the SQLite spool: the Idempotency-Key header and item
// ids; and who may write: content types, Host and Origin, slow clients.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/http_ingest.h"
#include "agent/sqlite_spool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace constance::agent {
namespace {

using ::testing::HasSubstr;

struct RawResponse {
  int status = 0;
  std::string headers;  // Lower-cased, "name: value" lines.
  std::string body;
};

// A minimal HTTP/1.1 POST with extra headers (the agent's own client,
// PostJson, sends none), reading until the server closes.
RawResponse RawPost(int port, const std::string& path, const std::string& body,
                    const std::vector<std::pair<std::string, std::string>>& headers) {
  RawResponse response;
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_GE(fd, 0) << std::strerror(errno);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ADD_FAILURE() << "connect: " << std::strerror(errno);
    close(fd);
    return response;
  }
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  // Host and Content-Type given in `headers` replace the defaults; an
  // empty value leaves the header out.
  std::string request = absl::StrCat("POST ", path, " HTTP/1.1\r\nConnection: close\r\n",
                                     "Content-Length: ", body.size(), "\r\n");
  bool host = false, type = false;
  for (const auto& [name, value] : headers) {
    host = host || absl::EqualsIgnoreCase(name, "Host");
    type = type || absl::EqualsIgnoreCase(name, "Content-Type");
    if (!value.empty()) absl::StrAppend(&request, name, ": ", value, "\r\n");
  }
  if (!host) absl::StrAppend(&request, "Host: 127.0.0.1:", port, "\r\n");
  if (!type) absl::StrAppend(&request, "Content-Type: application/json\r\n");
  absl::StrAppend(&request, "\r\n", body);
  EXPECT_EQ(write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
  std::string raw;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) raw.append(buf, static_cast<size_t>(n));
  close(fd);
  const size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos) {
    ADD_FAILURE() << "no HTTP answer: " << raw;
    return response;
  }
  std::vector<std::string> lines = absl::StrSplit(raw.substr(0, end), "\r\n");
  std::vector<std::string> status_line = absl::StrSplit(lines[0], ' ');
  if (status_line.size() < 2 || !absl::SimpleAtoi(status_line[1], &response.status)) {
    ADD_FAILURE() << "bad status line: " << lines[0];
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    absl::StrAppend(&response.headers, absl::AsciiStrToLower(lines[i]), "\n");
  }
  response.body = raw.substr(end + 4);
  return response;
}

constexpr char kPath[] = "/v1/observations";

class IdempotencyTest : public ::testing::TestWithParam<bool /*sqlite*/> {
 protected:
  void SetUp() override {
    const char* base = std::getenv("TEST_TMPDIR");
    std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/idem_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    http_.reset();
    spool_.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  void Start(uint64_t spool_max = 1000) {
    http_.reset();
    spool_.reset();
    SpoolOptions options;
    options.max_observations = spool_max;
    if (GetParam()) {
      auto spool = SqliteSpool::Open(dir_ + "/spool.db", options);
      ASSERT_TRUE(spool.ok()) << spool.status();
      spool_ = *std::move(spool);
    } else {
      spool_ = std::make_unique<MemorySpool>(options);
    }
    HttpIngestOptions http_options;
    http_options.listen = "127.0.0.1:0";
    http_options.location = "store-a";
    auto http = HttpIngest::Start(http_options, spool_.get(), &metrics_, nullptr);
    ASSERT_TRUE(http.ok()) << http.status();
    http_ = *std::move(http);
  }

  RawResponse Post(const std::string& body, const std::string& key = "") {
    std::vector<std::pair<std::string, std::string>> headers;
    if (!key.empty()) headers.emplace_back("Idempotency-Key", key);
    return RawPost(http_->port(), kPath, body, headers);
  }

  std::string dir_;
  AgentMetrics metrics_{"store-a", "test"};
  std::unique_ptr<Spool> spool_;
  std::unique_ptr<HttpIngest> http_;
};

INSTANTIATE_TEST_SUITE_P(Spools, IdempotencyTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Sqlite" : "Memory";
                         });

TEST_P(IdempotencyTest, ARetryWithTheSameKeyGetsTheSameAnswerAndStoresNothing) {
  Start();
  const struct {
    const char* what;
    std::string key;
    const char* body;
    int status;
    const char* answer;  // Substring.
    bool replayed;
    uint64_t depth;  // Spool depth after.
  } kSteps[] = {
      {"first", "k1", R"([{"key":"a","score":1},{"key":"b","score":2}])", 200,
       R"({"accepted":2,"rejected":[]})", false, 2},
      {"retry", "k1", R"([{"key":"a","score":1},{"key":"b","score":2}])", 200,
       R"({"accepted":2,"rejected":[]})", true, 2},
      {"same key, other body: refused, naming the key", "k1", R"({"key":"c","score":3})", 422,
       "Idempotency-Key 'k1' was already used for another request", false, 2},
      {"other key", "k2", R"({"key":"c","score":3})", 200, R"({"accepted":1,"rejected":[]})", false,
       3},
      {"partly refused, remembered", "k3",
       R"([{"key":"d","score":4},{"key":"e","wait_seconds":-1}])", 400,
       R"({"accepted":1,"rejected":[{"index":1,)", false, 4},
      {"its retry", "k3", R"([{"key":"d","score":4},{"key":"e","wait_seconds":-1}])", 400,
       R"({"accepted":1,"rejected":[{"index":1,)", true, 4},
      {"malformed JSON is not remembered", "k4", R"([{"key":)", 400, "malformed JSON", false, 4},
      {"so the corrected retry is stored", "k4", R"({"key":"f","score":5})", 200,
       R"({"accepted":1,)", false, 5},
      {"no key: stored again", "", R"({"key":"f","score":5})", 200, R"({"accepted":1,)", false, 6},
      {"key too long", std::string(256, 'x'), R"({"key":"g","score":5})", 400,
       "Idempotency-Key must be", false, 6},
  };
  for (const auto& step : kSteps) {
    SCOPED_TRACE(step.what);
    RawResponse r = Post(step.body, step.key);
    EXPECT_EQ(r.status, step.status) << r.body;
    EXPECT_THAT(r.body, HasSubstr(step.answer));
    EXPECT_EQ(r.headers.find("idempotent-replayed: true") != std::string::npos, step.replayed)
        << r.headers;
    EXPECT_EQ(spool_->Depth(), step.depth);
  }
}

// A key is bound to its endpoint too: the same body on another endpoint
// under the same key is not a retry.
TEST_P(IdempotencyTest, TheSameKeyOnAnotherEndpointIsRefused) {
  Start();
  const std::string body = R"({"key":"a","score":1})";
  EXPECT_EQ(Post(body, "k1").status, 200);
  RawResponse r = RawPost(http_->port(), "/v1/checklists", body, {{"Idempotency-Key", "k1"}});
  EXPECT_EQ(r.status, 422) << r.body;
  EXPECT_THAT(r.body, HasSubstr("Idempotency-Key 'k1'"));
  EXPECT_EQ(spool_->Depth(), 1u);
}

TEST_P(IdempotencyTest, ItemIdsAreStoredOnceAndAcceptedAgain) {
  Start();
  RawResponse r =
      Post(R"([{"key":"a","score":1,"id":"sale-1"},{"key":"b","score":1,"id":"sale-2"}])");
  EXPECT_EQ(r.status, 200) << r.body;
  r = Post(R"([{"key":"a","score":1,"id":"sale-1"},{"key":"c","score":1,"id":"sale-3"}])");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_THAT(r.body, HasSubstr(R"("accepted":2)"));
  EXPECT_EQ(spool_->Depth(), 3u);
  // Delivered and deleted: a retry is still recognised.
  ASSERT_TRUE(spool_->Acknowledge(3).ok());
  r = Post(R"({"key":"b","score":1,"id":"sale-2"})");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(spool_->Depth(), 0u);
  EXPECT_EQ(spool_->LastSequence(), 3u);
}

TEST_P(IdempotencyTest, AFullSpoolDoesNotUseUpTheKey) {
  Start(/*spool_max=*/1);
  EXPECT_EQ(Post(R"({"key":"a","score":1})").status, 200);
  RawResponse r = Post(R"({"key":"b","score":1})", "k");
  EXPECT_EQ(r.status, 507) << r.body;
  ASSERT_TRUE(spool_->Acknowledge(1).ok());
  r = Post(R"({"key":"b","score":1})", "k");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.headers.find("idempotent-replayed"), std::string::npos);
  EXPECT_EQ(spool_->Depth(), 1u);
}

// Only the durable spool: the in-memory one forgets everything on restart.
class DurableIdempotencyTest : public IdempotencyTest {};
INSTANTIATE_TEST_SUITE_P(Spools, DurableIdempotencyTest, ::testing::Values(true),
                         [](const ::testing::TestParamInfo<bool>&) { return "Sqlite"; });

TEST_P(DurableIdempotencyTest, KeysSurviveARestartWithTheDurableSpool) {
  Start();
  EXPECT_EQ(Post(R"({"key":"a","score":1})", "k").status, 200);
  Start();  // The same file again.
  RawResponse r = Post(R"({"key":"a","score":1})", "k");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_THAT(r.headers, HasSubstr("idempotent-replayed: true"));
  EXPECT_EQ(spool_->Depth(), 1u);
}

}  // namespace
}  // namespace constance::agent

namespace constance::agent {
namespace {

class HttpGuardTest : public ::testing::Test {
 protected:
  void Start(HttpIngestOptions options = {}) {
    options.listen = "127.0.0.1:0";
    options.location = "store-a";
    auto http = HttpIngest::Start(options, &spool_, &metrics_, nullptr);
    ASSERT_TRUE(http.ok()) << http.status();
    http_ = *std::move(http);
    port_ = std::to_string(http_->port());
  }

  AgentMetrics metrics_{"store-a", "test"};
  MemorySpool spool_{SpoolOptions{}};
  std::unique_ptr<HttpIngest> http_;
  std::string port_;
};

// JSON bodies only; the agent addressed by its own names; no web page of
// another origin.
TEST_F(HttpGuardTest, ContentTypeHostAndOriginByCase) {
  HttpIngestOptions options;
  options.allowed_hosts = {"store-12.local"};
  Start(options);
  const struct {
    const char* what;
    std::vector<std::pair<std::string, std::string>> headers;
    int status;
    std::string answer;  // Substring.
  } kCases[] = {
      {"JSON", {}, 200, R"("accepted":1)"},
      {"JSON with charset", {{"Content-Type", "application/json; charset=utf-8"}}, 200, ""},
      {"text/plain", {{"Content-Type", "text/plain"}}, 415,
       "Content-Type must be application/json (got 'text/plain')"},
      {"form", {{"Content-Type", "application/x-www-form-urlencoded"}}, 415, "application/json"},
      {"no type", {{"Content-Type", ""}}, 415, "(got 'none')"},
      {"localhost", {{"Host", "localhost:" + port_}}, 200, ""},
      {"IPv6 loopback", {{"Host", "[::1]:" + port_}}, 200, ""},
      {"configured name", {{"Host", "Store-12.local:" + port_}}, 200, ""},
      {"no Host", {{"Host", ""}}, 200, ""},
      {"foreign Host (DNS rebinding)", {{"Host", "evil.example:" + port_}}, 403,
       "Host 'evil.example:" + port_ + "' is not this agent"},
      {"another port", {{"Host", "127.0.0.1:1"}}, 403, "is not this agent"},
      {"same origin", {{"Origin", "http://127.0.0.1:" + port_}}, 200, ""},
      {"foreign Origin", {{"Origin", "https://evil.example"}}, 403,
       "Origin 'https://evil.example' is not this agent"},
      {"null Origin", {{"Origin", "null"}}, 403, "Origin 'null'"},
  };
  uint64_t stored = 0;
  for (const auto& c : kCases) {
    SCOPED_TRACE(c.what);
    RawResponse r = RawPost(http_->port(), kPath, R"({"key":"a","score":1})", c.headers);
    EXPECT_EQ(r.status, c.status) << r.body;
    EXPECT_THAT(r.body, HasSubstr(c.answer));
    if (r.status == 200) ++stored;
    EXPECT_EQ(spool_.Depth(), stored);
  }
}

// Idle connections (a slow or hostile client) hold a worker each until
// request_timeout; with the default workers, 50 of them leave a valid
// POST answered at once, and each is closed when its time is up.
TEST_F(HttpGuardTest, IdleSocketsNeitherBlockAPostNorStayOpen) {
  HttpIngestOptions options;
  options.request_timeout = absl::Seconds(3);
  Start(options);
  std::vector<int> idle;
  for (int i = 0; i < 50; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(http_->port()));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    // Half a request line, never finished.
    ASSERT_EQ(write(fd, "POST /v1/obs", 12), 12);
    idle.push_back(fd);
  }
  const absl::Time start = absl::Now();
  RawResponse r = RawPost(http_->port(), kPath, R"({"key":"a","score":1})", {});
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  // The server closes each idle socket after request_timeout: read ends
  // (0 or an error), well before the receive timeout of 20 s.
  for (int fd : idle) {
    timeval timeout{20, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    char buf[512];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
    }
    EXPECT_TRUE(n == 0 || errno != EAGAIN) << "still open after 20 s";
    close(fd);
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));
}

}  // namespace
}  // namespace constance::agent
