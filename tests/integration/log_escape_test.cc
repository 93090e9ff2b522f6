// Untrusted text cannot forge a log line: a newline, an ANSI escape and
// bytes that are not UTF-8 in a location a client claims (collector) or in
// a file name in the drop directory (agent) each show up escaped, on
// exactly one line per event (constance/log.h: every message passes
// EscapeForLog), and no raw control or invalid byte reaches the log.
#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"
#include "tests/integration/raw_stream.h"

namespace constance::testing {
namespace {

struct Hostile {
  std::string raw;      // As the client or the file system gives it.
  std::string escaped;  // As it must appear in the log.
};

const std::vector<Hostile>& HostileTexts() {
  static const auto* texts = new std::vector<Hostile>{
      {"evil\n2026-01-01T00:00:00.000Z info constance-collector: forged",
       "evil\\n2026-01-01T00:00:00.000Z info constance-collector: forged"},
      {"\x1b[31mred", "\\x1b[31mred"},
      {"bad\xff\xfeutf8", "bad\\xff\\xfeutf8"},
  };
  return *texts;
}

std::vector<std::string> Lines(const std::string& log) {
  return absl::StrSplit(log, '\n', absl::SkipEmpty());
}

int LinesWith(const std::string& log, const std::string& needle) {
  int n = 0;
  for (const std::string& line : Lines(log)) n += absl::StrContains(line, needle);
  return n;
}

// Nothing raw got through: no forged line, no escape byte, no invalid byte.
void ExpectNothingRaw(const std::string& log) {
  for (const std::string& line : Lines(log)) {
    EXPECT_FALSE(absl::StartsWith(line, "2026-01-01T00:00:00.000Z")) << "a forged line: " << line;
  }
  EXPECT_FALSE(absl::StrContains(log, "\x1b")) << "a raw ANSI escape";
  EXPECT_FALSE(absl::StrContains(log, "\xff")) << "a raw byte that is not UTF-8";
}

TEST(LogEscapeTest, TheCollectorLogsAClaimedLocationEscapedOnOneLine) {
  TempDir dir;
  CollectorProcess collector(dir, /*durable=*/false);
  for (const Hostile& h : HostileTexts()) {
    // As the first message's location (a heartbeat), and as a batch's on
    // a stream that belongs to another location: the first is refused as
    // an invalid id, the second as a second location, one line each. A
    // string that is not UTF-8 never gets that far: the message is refused
    // as no AgentMessage (proto3 strings are UTF-8) and logged without it.
    RawStream first(collector.address(), h.raw, 1, /*out_of_order=*/true);
    grpc::Status status = first.Finish();
    EXPECT_NE(status.error_code(), grpc::StatusCode::OK);
    RawStream second(collector.address(), "store-1", 1, /*out_of_order=*/true);
    ASSERT_TRUE(second.Greeted()) << collector.Log();
    ASSERT_TRUE(second.SendAs(h.raw, 1, 1));
    status = second.Finish();
    EXPECT_NE(status.error_code(), grpc::StatusCode::OK);
  }
  const std::string log = collector.Log();
  for (const Hostile& h : HostileTexts()) {
    const int want = absl::StrContains(h.raw, "\xff") ? 0 : 2;
    EXPECT_EQ(LinesWith(log, h.escaped), want) << h.escaped << " in\n" << log;
  }
  EXPECT_EQ(LinesWith(log, "not a constance.v1.AgentMessage"), 2) << log;
  ExpectNothingRaw(log);
}

TEST(LogEscapeTest, TheAgentLogsAFileNameEscapedOnOneLine) {
  TempDir dir;
  CollectorProcess collector(dir, /*durable=*/false);
  const std::string drop = dir.File("drop");
  ASSERT_EQ(mkdir(drop.c_str(), 0750), 0);
  // Files no pattern reads: each is named in one warning, once.
  for (const Hostile& h : HostileTexts()) std::ofstream(drop + "/" + h.raw + ".txt") << "x\n";
  std::ofstream(dir.File("agent.yaml"))
      << "location: store-a\ninsecure: true\ndrop_directory:\n  path: " << drop
      << "\n  poll_interval: 50ms\n  files:\n    - pattern: \"*.csv\"\n      records: score\n"
         "      key_column: key\n      value_column: value\n";
  Subprocess agent({BinDir() + "/constance-agent", "run", "--config=" + dir.File("agent.yaml"),
                    "--collector=" + collector.address(), "--listen=127.0.0.1:0",
                    "--metrics_listen=127.0.0.1:0", "--spool_path=" + dir.File("spool.db"),
                    "--ready_file=" + dir.File("agent.ready")},
                   dir.File("agent.log"));
  ASSERT_TRUE(WaitForReadyFile(dir.File("agent.ready"), agent, absl::Seconds(30)).ok())
      << agent.Log();
  std::string log;
  for (absl::Time deadline = absl::Now() + absl::Seconds(20); absl::Now() < deadline;) {
    log = agent.Log();
    if (LinesWith(log, "matches no files[].pattern") >= 3) break;
    absl::SleepFor(absl::Milliseconds(50));  // Polling the agent's scans.
  }
  ASSERT_EQ(LinesWith(log, "matches no files[].pattern"), 3) << log;
  for (const Hostile& h : HostileTexts()) {
    EXPECT_EQ(LinesWith(log, h.escaped + ".txt"), 1) << h.escaped << " in\n" << log;
  }
  ExpectNothingRaw(log);
}

}  // namespace
}  // namespace constance::testing
