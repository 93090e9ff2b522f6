// Hostile local input against a running agent process (issue 17): every
// probe of the hostile-input report is replayed over HTTP and through the
// drop directory, and each must get its answer (status and reason) while
// the agent stays up and every good item posted before and after reaches a
// real collector. A file that crashes the agent (simulated with the test
// hook CONSTANCE_AGENT_TEST_ABORT_ON, drop_dir.h) is quarantined after the
// second stop instead of crashing every restart.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "constance/v1/query.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"

namespace constance::testing {
namespace {

using ::testing::HasSubstr;
using Headers = std::vector<std::pair<std::string, std::string>>;

std::string Nested(int depth, const std::string& open, const std::string& inner,
                   const std::string& close) {
  std::string out;
  for (int i = 0; i < depth; ++i) out += open;
  out += inner;
  for (int i = 0; i < depth; ++i) out += close;
  return out;
}

std::string GoodItem(int n) {
  return absl::StrCat(R"({"key":"good-)", n, R"(","score":)", n, "}");
}

// A loopback connection that sends half a request line and then nothing.
int IdleSocket(const std::string& address) {
  const int port = std::stoi(address.substr(address.rfind(':') + 1));
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      write(fd, "POST /v1/obs", 12) != 12) {
    if (fd >= 0) close(fd);
    return -1;
  }
  return fd;
}

class HostileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    drop_ = dir_.File("drop");
    ASSERT_EQ(mkdir(drop_.c_str(), 0750), 0);
    std::ofstream(dir_.File("agent.yaml"))
        << "location: store-a\ninsecure: true\nhttp_request_timeout: 5s\n"
           "drop_directory:\n  path: "
        << drop_
        << "\n  poll_interval: 50ms\n  settle_time: 500ms\n"
           "  files:\n    - pattern: \"*.jsonl\"\n      format: jsonl\n"
           "      records: observation\n";
  }

  void StartCollector() {
    std::ofstream(dir_.File("catalog.yaml")) << "families:\n  score: {min_samples: 1}\n";
    collector_ = std::make_unique<Subprocess>(
        CollectorArgs(dir_.File("catalog.yaml"), dir_.File("collector.ready")),
        dir_.File("collector.log"));
    auto ready = WaitForReadyFile(dir_.File("collector.ready"), *collector_, absl::Seconds(30));
    ASSERT_TRUE(ready.ok()) << ready.status();
    collector_grpc_ = (*ready)["grpc"];
  }

  // Starts the agent; false (without failing) when it exits before ready.
  bool StartAgent() {
    std::filesystem::remove(dir_.File("agent.ready"));
    log_ = dir_.File(absl::StrCat("agent", ++runs_, ".log"));
    agent_ = std::make_unique<Subprocess>(
        AgentArgs(dir_.File("agent.yaml"), collector_grpc_, dir_.File("spool.db"),
                  dir_.File("agent.ready")),
        log_);
    auto ready = WaitForReadyFile(dir_.File("agent.ready"), *agent_, absl::Seconds(30));
    if (!ready.ok()) return false;
    http_ = (*ready)["http"];
    return true;
  }

  uint64_t Applied() { return ObservationsApplied(collector_grpc_); }

  // Posts good item `n` and expects it taken.
  void PostGood(int n) {
    absl::StatusOr<HttpResponse> r = HttpPost(http_, "/v1/observations", GoodItem(n));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 200) << r->body;
  }

  TempDir dir_;
  std::string drop_;
  std::unique_ptr<Subprocess> collector_;
  std::string collector_grpc_;
  std::unique_ptr<Subprocess> agent_;
  std::string http_;
  std::string log_;
  int runs_ = 0;
};

TEST_F(HostileTest, EveryProbeIsAnsweredAndGoodItemsStillArrive) {
  StartCollector();
  ASSERT_TRUE(StartAgent()) << ReadFile(log_);
  const std::string port = http_.substr(http_.rfind(':') + 1);
  const std::string ticket_9999 =
      R"({"ticket":"A1","service":"checkout","event":"created","at":"9999-01-01T00:00:00Z"})";
  const struct {
    const char* what;
    std::string path;
    std::string body;
    Headers headers;
    int status;
    std::string reason;  // Substring of the answer.
  } kProbes[] = {
      {"object nested 700 deep", "/v1/observations", Nested(700, R"({"a":)", "1", "}"), {}, 400,
       "nested deeper than 64 levels"},
      {"array nested 2000 deep", "/v1/price_checks", Nested(2000, "[", "", "]"), {}, 400,
       "nested deeper than 64 levels"},
      {"text/plain", "/v1/observations", GoodItem(1000), {{"Content-Type", "text/plain"}}, 415,
       "Content-Type must be application/json"},
      {"foreign Origin", "/v1/observations", GoodItem(1001),
       {{"Origin", "http://evil.example"}}, 403, "Origin 'http://evil.example' is not this agent"},
      {"foreign Host", "/v1/observations", GoodItem(1002), {{"Host", "evil.example:" + port}},
       403, "Host 'evil.example:" + port + "' is not this agent"},
      {"key, first use", "/v1/observations", GoodItem(1003), {{"Idempotency-Key", "hostile-1"}},
       200, R"("accepted":1)"},
      {"same key, other body", "/v1/observations", GoodItem(1004),
       {{"Idempotency-Key", "hostile-1"}}, 422, "Idempotency-Key 'hostile-1' was already used"},
      {"ticket in year 9999", "/v1/tickets", ticket_9999, {}, 200, R"("accepted":1)"},
  };
  int good = 0;
  int delivered = 0;  // Good items the collector must apply in the end.
  for (const auto& p : kProbes) {
    SCOPED_TRACE(p.what);
    PostGood(good++);
    absl::StatusOr<HttpResponse> r = HttpPostWithHeaders(http_, p.path, p.body, p.headers);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, p.status) << r->body;
    EXPECT_THAT(r->body, HasSubstr(p.reason));
    if (p.status == 200 && p.path == "/v1/observations") ++delivered;
    ASSERT_TRUE(agent_->Running()) << ReadFile(log_);
    PostGood(good++);
  }
  // The ticket dated 9999 is refused by the tracker, not kept open.
  EXPECT_THAT(ReadFile(log_), HasSubstr("ahead of the agent's clock; refused"));

  // 50 idle sockets: a valid POST is answered at once all the same.
  std::vector<int> idle;
  for (int i = 0; i < 50; ++i) idle.push_back(IdleSocket(http_));
  for (int fd : idle) ASSERT_GE(fd, 0);
  const absl::Time start = absl::Now();
  PostGood(good++);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  for (int fd : idle) close(fd);

  // The drop directory: a line nested 100k deep (600 KB, within the
  // default max_line_bytes of 1 MiB), a line over it, a symlink to a file
  // outside; good lines around them.
  const std::string outside = dir_.File("outside.jsonl");
  std::ofstream(outside) << R"({"key":"secret","score":1})" << "\n";
  ASSERT_EQ(symlink(outside.c_str(), (drop_ + "/link.jsonl").c_str()), 0);
  std::ofstream(drop_ + "/deep.jsonl")
      << GoodItem(good) << "\n"
      << Nested(100'000, R"({"a":)", "1", "}") << "\n"
      << GoodItem(good + 1) << "\n";
  std::ofstream(drop_ + "/long.jsonl")
      << GoodItem(good + 2) << "\n"
      << R"({"key":"long","score":1,"note":")" << std::string(1'500'000, 'x') << "\"}\n"
      << GoodItem(good + 3) << "\n";
  good += 4;
  EXPECT_TRUE(WaitFor(
      [&] {
        const std::string log = ReadFile(log_);
        return log.find(drop_ + "/deep.jsonl:2: ") != std::string::npos &&
               log.find(drop_ + "/long.jsonl:2: line over max_line_bytes (1048576 bytes)") !=
                   std::string::npos &&
               log.find("link.jsonl is not a regular file") != std::string::npos;
      },
      absl::Seconds(30)))
      << ReadFile(log_);
  EXPECT_THAT(ReadFile(log_), HasSubstr("nested deeper than 64 levels"));
  ASSERT_TRUE(agent_->Running()) << ReadFile(log_);
  PostGood(good++);

  delivered += good;
  EXPECT_TRUE(WaitFor([&] { return Applied() == static_cast<uint64_t>(delivered); },
                      absl::Seconds(60)))
      << "applied " << Applied() << " of " << delivered << "\n"
      << ReadFile(log_);
  ASSERT_TRUE(agent_->Running());
}

// A line that stops the agent (the test hook aborts on it, as the deep
// JSON once crashed it): the first restart reads the file again, the
// second stop quarantines it, and the agent then runs and delivers the
// other files.
TEST_F(HostileTest, AFileThatCrashesTheAgentIsQuarantinedNotLooped) {
  StartCollector();
  std::ofstream(drop_ + "/a-crash.jsonl") << GoodItem(1) << "\n"
                                          << R"({"key":"CRASH-HERE","score":1})" << "\n";
  std::ofstream(drop_ + "/b-good.jsonl") << GoodItem(2) << "\n";
  ASSERT_EQ(setenv("CONSTANCE_AGENT_TEST_ABORT_ON", "CRASH-HERE", 1), 0);
  int stops = 0;
  for (int run = 0; run < 4 && stops < 2; ++run) {
    // The agent may die before or after writing its ready file.
    StartAgent();
    if (WaitFor([&] { return !agent_->Running(); }, absl::Seconds(30))) ++stops;
  }
  ASSERT_EQ(unsetenv("CONSTANCE_AGENT_TEST_ABORT_ON"), 0);
  ASSERT_EQ(stops, 2);
  ASSERT_TRUE(std::filesystem::exists(drop_ + "/a-crash.jsonl"));
  ASSERT_TRUE(StartAgent()) << ReadFile(log_);
  EXPECT_TRUE(std::filesystem::exists(drop_ + "/quarantine/a-crash.jsonl"));
  EXPECT_FALSE(std::filesystem::exists(drop_ + "/a-crash.jsonl"));
  EXPECT_THAT(ReadFile(log_), HasSubstr("the agent stopped twice while reading " + drop_ +
                                        "/a-crash.jsonl at byte 0; moved to " + drop_ +
                                        "/quarantine/a-crash.jsonl"));
  PostGood(3);
  EXPECT_TRUE(WaitFor([&] { return Applied() == 2; }, absl::Seconds(60)))
      << "applied " << Applied() << "\n"
      << ReadFile(log_);
  EXPECT_TRUE(agent_->Running());
}

}  // namespace
}  // namespace constance::testing
