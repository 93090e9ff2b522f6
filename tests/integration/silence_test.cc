// Silences and finding history against a real collector process: added with the `constance`
// command, they mark the finding on /metrics (silenced_by, which the
// shipped alert rules exclude: tests/deploy/alert_rules_test.yml), survive
// a SIGKILL and restart with --state_dir, and their expiry brings the
// finding back to paging. Operator-only access is in tls_test.cc.
#include <signal.h>

#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"

namespace constance::testing {
namespace {

using ::testing::HasSubstr;

class SilenceTest : public ::testing::Test {
 protected:
  void StartCollector() {
    collector_ = std::make_unique<Subprocess>(
        std::vector<std::string>{
            BinDir() + "/constance-collector", "--insecure", "--listen=127.0.0.1:0",
            "--metrics_listen=127.0.0.1:0", "--stats_interval=100ms", "--evaluation_interval=200ms",
            "--state_dir=" + dir_.path(), "--ready_file=" + dir_.File("collector.ready")},
        dir_.File("collector.log"));
    (void)std::remove(dir_.File("collector.ready").c_str());
    auto ready = WaitForReadyFile(dir_.File("collector.ready"), *collector_, absl::Seconds(30));
    ASSERT_TRUE(ready.ok()) << ready.status();
    grpc_ = (*ready)["grpc"];
    metrics_ = (*ready)["metrics"];
  }

  // One acknowledged batch of one shelf price per location; store-6
  // charges 519 where its seven peers charge 449.
  void SendPrices() {
    auto channel = grpc::CreateChannel(grpc_, grpc::InsecureChannelCredentials());
    for (int i = 1; i <= 8; ++i) {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
      auto stream = v1::Ingest::NewStub(channel)->Stream(&ctx);
      v1::AgentMessage msg;
      v1::Batch* batch = msg.mutable_batch();
      batch->set_location(absl::StrCat("store-", i));
      batch->set_incarnation(1);
      batch->set_first_sequence(1);
      v1::Observation* obs = batch->add_observations();
      obs->set_key("coffee-250g");
      *obs->mutable_observed_at() = google::protobuf::util::TimeUtil::GetCurrentTime();
      obs->mutable_price()->set_minor_units(i == 6 ? 519 : 449);
      obs->mutable_price()->set_currency("EUR");
      obs->mutable_price()->set_kind(v1::SHELF);
      ASSERT_TRUE(stream->Write(msg));
      v1::CollectorMessage reply;
      while (stream->Read(&reply) && !reply.has_ack()) {
      }
      ASSERT_TRUE(reply.has_ack()) << "store-" << i << " got no ack";
      stream->WritesDone();
      while (stream->Read(&reply)) {
      }
      (void)stream->Finish();
    }
  }

  // The constance_finding line of store-6's outlier on /metrics, polled
  // until `want` holds of it (the collector publishes on its own tick).
  std::string WaitForFindingLine(const std::function<bool(const std::string&)>& want) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    std::string last;
    while (absl::Now() < deadline) {
      absl::StatusOr<HttpResponse> r = HttpGet(metrics_, "/metrics");
      if (r.ok()) {
        last.clear();
        for (absl::string_view line : absl::StrSplit(r->body, '\n')) {
          if (absl::StartsWith(line, "constance_finding{") &&
              absl::StrContains(line, "location=\"store-6\"")) {
            last = std::string(line);
          }
        }
        if (!last.empty() && want(last)) return last;
      }
      absl::SleepFor(absl::Milliseconds(50));  // Polling a condition, bounded by the deadline.
    }
    ADD_FAILURE() << "no matching finding line in time; last: " << last << "\n";
    return last;
  }

  // `constance history ARGS` once its output holds `text` (the recorder
  // writes within a second of a change).
  CommandResult HistoryWith(const std::string& args, const std::string& text) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    CommandResult r;
    do {
      r = Cli("history " + args);
      if (absl::StrContains(r.output, text)) return r;
      absl::SleepFor(absl::Milliseconds(100));  // Polling a condition, bounded by the deadline.
    } while (absl::Now() < deadline);
    ADD_FAILURE() << "history " << args << " never showed '" << text << "':\n" << r.output;
    return r;
  }

  CommandResult Cli(const std::string& args) {
    return RunCommand(absl::StrCat(BinDir(), "/constance --collector=", grpc_, " ", args), "");
  }

  TempDir dir_;
  std::unique_ptr<Subprocess> collector_;
  std::string grpc_, metrics_;
};

bool Silenced(const std::string& line) { return absl::StrContains(line, "silenced_by=\"1\""); }
bool Loud(const std::string& line) { return absl::StrContains(line, "silenced_by=\"\""); }

TEST_F(SilenceTest, SilenceMarksTheFindingSurvivesAKillAndItsExpiryPagesAgain) {
  StartCollector();
  SendPrices();
  EXPECT_THAT(WaitForFindingLine(Loud), HasSubstr("finding=\"outlier\""));

  CommandResult add =
      Cli("silence add --location=store-6 --key=price:coffee-250g --for=2h --owner=anna "
          "--comment='price test OPS-12'");
  ASSERT_EQ(add.exit_code, 0) << add.output;
  EXPECT_THAT(add.output, HasSubstr("1  location=store-6 key=price:coffee-250g"));
  EXPECT_THAT(add.output, HasSubstr("owner anna (added by insecure)"));
  WaitForFindingLine(Silenced);
  CommandResult findings = Cli("findings --json");
  EXPECT_THAT(findings.output, HasSubstr("\"silenced_by\": \"1\""));
  EXPECT_THAT(Cli("findings --location=store-6").output, HasSubstr("by silence 1"));
  HistoryWith("--location=store-6", "silenced by 1");

  // A crash loses no silence: the store commits before it answers.
  ASSERT_TRUE(collector_->Stop(SIGKILL, absl::Seconds(10)).ok());
  StartCollector();
  CommandResult list = Cli("silence list");
  ASSERT_EQ(list.exit_code, 0) << list.output;
  EXPECT_THAT(list.output, HasSubstr("1  location=store-6"));
  // The restored finding is silenced from its first publication on: a
  // loud line first would page someone.
  const std::string first = WaitForFindingLine([](const std::string&) { return true; });
  EXPECT_TRUE(Silenced(first)) << first;

  CommandResult expire = Cli("silence expire 1");
  ASSERT_EQ(expire.exit_code, 0) << expire.output;
  EXPECT_THAT(expire.output, HasSubstr("(ended)"));
  WaitForFindingLine(Loud);
  EXPECT_THAT(Cli("silence list").output, HasSubstr("No silences."));
  EXPECT_THAT(Cli("silence list --all").output, HasSubstr("expired by insecure"));
  EXPECT_THAT(collector_->Log(), HasSubstr("silence 1 expired by insecure"));

  // The finding's one episode spans the kill, with its silence and its end.
  CommandResult history = HistoryWith("--location=store-6 --csv", "silence 1 ended");
  ASSERT_EQ(history.exit_code, 0) << history.output;
  const std::vector<std::string> rows = absl::StrSplit(history.output, '\n', absl::SkipEmpty());
  ASSERT_EQ(rows.size(), 2u) << history.output;  // Header and one episode.
  EXPECT_THAT(rows[1], HasSubstr("outlier"));
  EXPECT_THAT(rows[1], HasSubstr("silenced by 1")) << collector_->Log();
  EXPECT_THAT(rows[1], HasSubstr("silence 1 ended"));
  EXPECT_THAT(Cli("history --location=store-1").output, HasSubstr("none"));
  ASSERT_TRUE(collector_->Stop(SIGTERM, absl::Seconds(15)).ok());
}

TEST_F(SilenceTest, LocationShowsItsLast30DaysFromHistoryAcrossARestart) {
  StartCollector();
  SendPrices();
  HistoryWith("--location=store-6", "outlier");
  CommandResult card = Cli("location store-6");
  ASSERT_EQ(card.exit_code, 0) << card.output;
  EXPECT_THAT(card.output, HasSubstr("Last 30 days: 1 findings opened, 0 closed"));
  EXPECT_THAT(card.output, HasSubstr("FINDING  DAYS OPEN  TIME OPEN"));
  EXPECT_THAT(card.output, ::testing::ContainsRegex("outlier +[12] +[0-9hms]+ +1 +0 +-"));
  CommandResult json = Cli("location store-6 --json");
  EXPECT_THAT(json.output, HasSubstr("\"days\": 30"));
  EXPECT_THAT(json.output, HasSubstr("\"kind\": \"OUTLIER\""));
  // A location without findings has an empty record, not none.
  EXPECT_THAT(Cli("location store-1").output, HasSubstr("no finding was open"));

  ASSERT_TRUE(collector_->Stop(SIGKILL, absl::Seconds(10)).ok());
  StartCollector();
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  do {
    card = Cli("location store-6");
    if (absl::StrContains(card.output, "1 findings opened")) break;
    absl::SleepFor(absl::Milliseconds(100));  // Polling a condition, bounded by the deadline.
  } while (absl::Now() < deadline);
  EXPECT_THAT(card.output, HasSubstr("Last 30 days: 1 findings opened"));
}

TEST_F(SilenceTest, IncompleteSilencesAreRefusedNamingWhatIsMissing) {
  StartCollector();
  CommandResult none = Cli("silence add --for=1h --owner=anna --comment=x");
  EXPECT_EQ(none.exit_code, 1) << none.output;
  EXPECT_THAT(none.output, HasSubstr("at least one matcher"));
  CommandResult no_comment = Cli("silence add --location=store-1 --for=1h --owner=anna");
  EXPECT_EQ(no_comment.exit_code, 1) << no_comment.output;
  EXPECT_THAT(no_comment.output, HasSubstr("comment"));
  CommandResult no_end = Cli("silence add --location=store-1 --owner=anna --comment=x");
  EXPECT_EQ(no_end.exit_code, 2) << no_end.output;
  EXPECT_THAT(no_end.output, HasSubstr("--for/--until"));
  CommandResult unknown = Cli("silence expire 42");
  EXPECT_EQ(unknown.exit_code, 1) << unknown.output;
  EXPECT_THAT(unknown.output, HasSubstr("no silence '42'"));
  ASSERT_TRUE(collector_->Stop(SIGTERM, absl::Seconds(15)).ok());
}

}  // namespace
}  // namespace constance::testing
