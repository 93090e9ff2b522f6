// The board's facts against a real collector process. The price-drop feed:
// price decreases sent over Ingest come out of `constance price-drops`
// (table, CSV, JSON lines), local and rollout told apart, and the feed
// survives a SIGKILL and restart on the same --state_dir without losing or
// repeating a drop. The promise record: `constance record` shows each
// promise kept or broken and the waits now, and keeps its counts across a
// SIGKILL.
#include <signal.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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
using ::testing::Not;

class BoardTest : public ::testing::Test {
 protected:
  void StartCollector() {
    std::vector<std::string> argv = {
        BinDir() + "/constance-collector", "--insecure", "--listen=127.0.0.1:0",
        "--metrics_listen=127.0.0.1:0", "--stats_interval=100ms", "--evaluation_interval=200ms",
        "--state_dir=" + dir_.path(), "--ready_file=" + dir_.File("collector.ready")};
    if (!catalog_.empty()) argv.push_back("--catalog=" + catalog_);
    collector_ = std::make_unique<Subprocess>(argv, dir_.File("collector.log"));
    (void)std::remove(dir_.File("collector.ready").c_str());
    auto ready = WaitForReadyFile(dir_.File("collector.ready"), *collector_, absl::Seconds(30));
    ASSERT_TRUE(ready.ok()) << ready.status();
    grpc_ = (*ready)["grpc"];
  }

  // One acknowledged batch from `location` with these (key, minor units)
  // shelf prices, observed now.
  void Send(const std::string& location, const std::map<std::string, int64_t>& prices) {
    std::vector<v1::Observation> observations;
    for (const auto& [key, minor] : prices) {
      v1::Observation& obs = observations.emplace_back();
      obs.set_key(key);
      obs.mutable_price()->set_minor_units(minor);
      obs.mutable_price()->set_currency("EUR");
      obs.mutable_price()->set_kind(v1::SHELF);
    }
    SendObservations(location, std::move(observations));
  }

  // `n` checkout tickets from `location`, waits from `first` seconds up.
  void SendWaits(const std::string& location, int n, double first) {
    std::vector<v1::Observation> observations;
    for (int i = 0; i < n; ++i) {
      v1::Observation& obs = observations.emplace_back();
      obs.set_key("checkout");
      obs.set_wait_seconds(first + i);
    }
    SendObservations(location, std::move(observations));
  }

  void SendObservations(const std::string& location, std::vector<v1::Observation> observations) {
    auto channel = grpc::CreateChannel(grpc_, grpc::InsecureChannelCredentials());
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    auto stream = v1::Ingest::NewStub(channel)->Stream(&ctx);
    v1::AgentMessage msg;
    v1::Batch* batch = msg.mutable_batch();
    batch->set_location(location);
    batch->set_incarnation(1);
    uint64_t& next = next_[location];
    if (next == 0) next = 1;
    batch->set_first_sequence(next);
    next += observations.size();
    for (v1::Observation& obs : observations) {
      *obs.mutable_observed_at() = google::protobuf::util::TimeUtil::GetCurrentTime();
      *batch->add_observations() = std::move(obs);
    }
    ASSERT_TRUE(stream->Write(msg));
    v1::CollectorMessage reply;
    while (stream->Read(&reply) && !reply.has_ack()) {
    }
    ASSERT_TRUE(reply.has_ack()) << location << " got no ack";
    EXPECT_EQ(reply.ack().rejections_size(), 0);
    stream->WritesDone();
    while (stream->Read(&reply)) {
    }
    (void)stream->Finish();
  }

  CommandResult Cli(const std::string& args) {
    return RunCommand(absl::StrCat(BinDir(), "/constance --collector=", grpc_, " ", args), "");
  }

  // `constance price-drops ARGS --json` once it prints `lines` drops (the
  // recorder writes within a second of an evaluation).
  std::vector<std::string> DropsWhen(const std::string& args, size_t lines) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    std::vector<std::string> out;
    do {
      CommandResult r = Cli("price-drops --json " + args);
      EXPECT_EQ(r.exit_code, 0) << r.output;
      out = absl::StrSplit(r.output, '\n', absl::SkipEmpty());
      if (out.size() >= lines) return out;
      absl::SleepFor(absl::Milliseconds(100));  // Polling a condition, bounded by the deadline.
    } while (absl::Now() < deadline);
    ADD_FAILURE() << "price-drops " << args << " never printed " << lines << " drops:\n"
                  << absl::StrJoin(out, "\n");
    return out;
  }

  // `constance record ARGS` once its output holds `text`.
  CommandResult RecordWith(const std::string& args, const std::string& text) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    CommandResult r;
    do {
      r = Cli("record " + args);
      if (absl::StrContains(r.output, text)) return r;
      absl::SleepFor(absl::Milliseconds(100));  // Polling a condition, bounded by the deadline.
    } while (absl::Now() < deadline);
    ADD_FAILURE() << "record " << args << " never showed '" << text << "':\n" << r.output;
    return r;
  }

  TempDir dir_;
  std::string catalog_;
  std::unique_ptr<Subprocess> collector_;
  std::string grpc_;
  std::map<std::string, uint64_t> next_;
};

size_t Count(const std::vector<std::string>& lines, const std::string& text) {
  size_t n = 0;
  for (const std::string& l : lines) n += absl::StrContains(l, text);
  return n;
}

TEST_F(BoardTest, PriceDropsAreFedLocalOrRolloutAndSurviveAKill) {
  StartCollector();
  for (int i = 1; i <= 8; ++i) Send(absl::StrCat("store-", i), {{"coffee", 449}, {"tea", 300}});
  // store-3 lowers coffee alone; every store lowers tea together.
  Send("store-3", {{"coffee", 399}});
  for (int i = 1; i <= 8; ++i) Send(absl::StrCat("store-", i), {{"tea", 250}});

  std::vector<std::string> drops = DropsWhen("--since=72h", 9);
  ASSERT_EQ(drops.size(), 9u) << absl::StrJoin(drops, "\n");
  EXPECT_EQ(Count(drops, "\"key\":\"coffee\""), 1u);
  for (const std::string& d : drops) {
    if (absl::StrContains(d, "\"key\":\"coffee\"")) {
      EXPECT_THAT(d, HasSubstr("\"location\":\"store-3\""));
      EXPECT_THAT(d, HasSubstr("\"previous_minor_units\":\"449\""));
      EXPECT_THAT(d, HasSubstr("\"new_minor_units\":\"399\""));
      EXPECT_THAT(d, HasSubstr("\"rollout\":false"));
    } else {
      EXPECT_THAT(d, HasSubstr("\"rollout\":true"));
      EXPECT_THAT(d, HasSubstr("\"promo\":false"));
    }
  }
  CommandResult table = Cli("price-drops --since=72h --location=store-3");
  ASSERT_EQ(table.exit_code, 0) << table.output;
  EXPECT_THAT(table.output, HasSubstr("Price drops (2):"));
  EXPECT_THAT(table.output,
              ::testing::ContainsRegex(
                  "store-3 +price coffee EUR/shelf +4.49 EUR +3.99 EUR +-11.1% +local"));
  EXPECT_THAT(table.output, ::testing::ContainsRegex("store-3 +price tea EUR/shelf .* rollout"));
  CommandResult csv = Cli("price-drops --csv --location=store-3");
  ASSERT_EQ(csv.exit_code, 0) << csv.output;
  EXPECT_THAT(csv.output, HasSubstr("\"store-3\",\"coffee\",\"EUR\",\"shelf\",\"449\",\"399\""));

  // SIGKILL: no clean shutdown. The feed is committed per evaluation.
  ASSERT_TRUE(collector_->Stop(SIGKILL, absl::Seconds(10)).ok());
  StartCollector();
  std::vector<std::string> after = DropsWhen("", 9);
  EXPECT_EQ(after, drops) << "the feed changed across the restart";
  // A drop after the restart joins them, and nothing is recorded twice.
  Send("store-5", {{"coffee", 429}});
  std::vector<std::string> more = DropsWhen("", 10);
  EXPECT_EQ(more.size(), 10u) << absl::StrJoin(more, "\n");
  EXPECT_EQ(Count(more, "\"location\":\"store-5\""), 2u);
  EXPECT_THAT(Cli("price-drops --location=store-9").output, HasSubstr("Price drops (0):"));
}

// The first promise's evaluations_90d in `constance record --json` output.
int64_t Evaluations90d(const std::string& json) {
  const std::string field = "\"evaluations_90d\": \"";
  const size_t at = json.find(field);
  if (at == std::string::npos) return -1;
  return std::atoll(json.c_str() + at + field.size());
}

TEST_F(BoardTest, TheRecordShowsPromisesKeptAndWaitsNowAndSurvivesAKill) {
  catalog_ = dir_.File("catalog.yaml");
  std::ofstream(catalog_) << "promises:\n"
                             "  waits:\n"
                             "    - {key: checkout, within_seconds: 150, share: 0.9}\n"
                             "locations:\n"
                             "  - {id: store-1, timezone: Europe/Paris}\n"
                             "  - {id: store-2}\n"
                             "  - {id: store-3}\n"
                             "  - {id: store-4}\n"
                             "  - {id: store-5, closed: true}\n";
  StartCollector();
  // store-4's checkout breaks the promise (every ticket over 150 s).
  // 40 tickets each: waits are compared from 30 in the window.
  for (int i = 1; i <= 4; ++i) SendWaits(absl::StrCat("store-", i), 40, i == 4 ? 300 : 60);

  CommandResult one = RecordWith("store-1", "wait checkout");
  EXPECT_THAT(one.output, HasSubstr("store-1 (Europe/Paris): open"));
  EXPECT_THAT(one.output, ::testing::ContainsRegex(
                              "wait checkout +90% served within 150 s +100.0% \\([0-9]+\\)"));
  EXPECT_THAT(one.output, ::testing::ContainsRegex("checkout +(78|79|80|81) s +(94|95|96|97) s +40"));
  CommandResult four = RecordWith("store-4 --json", "\"promise\": \"90% served within 150 s\"");
  EXPECT_THAT(four.output, HasSubstr("\"kept_30d\": 0,"));
  EXPECT_THAT(four.output, HasSubstr("\"open_now\": true"));
  EXPECT_THAT(Cli("record store-5").output, HasSubstr("store-5 (UTC): closed for good"));
  CommandResult unknown = Cli("record store-99");
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_THAT(unknown.output, HasSubstr("never reported and is not in the catalog"));

  // The counts are committed per evaluation: after a SIGKILL they go on
  // from where they were, not from zero.
  CommandResult before = Cli("record store-1 --json");
  ASSERT_TRUE(collector_->Stop(SIGKILL, absl::Seconds(10)).ok());
  StartCollector();
  CommandResult after = Cli("record store-1 --json");
  ASSERT_EQ(after.exit_code, 0) << after.output;
  EXPECT_THAT(after.output, HasSubstr("\"kept_90d\": 1,"));
  EXPECT_GE(Evaluations90d(after.output), Evaluations90d(before.output)) << after.output;
  EXPECT_GT(Evaluations90d(before.output), 0) << before.output;
}

// The public board from a real collector's records: only the catalog's
// `publish: true` locations and promises, under their own names and time
// zones, self-contained, and a closed location saying so.
// What headless Chromium (Debian's `chromium`) made of a page read from
// disk: the DOM after load, and from its verbose log every URL requested
// that is not one of Chromium's own background services, and every
// console message. Hosts never resolve (--host-resolver-rules), so a page
// that tried the network fails visibly too.
struct BrowserView {
  int exit_code = -1;
  std::string dom;
  std::vector<std::string> requests;
  std::vector<std::string> console;
};

BrowserView LoadInChromium(const std::string& file, const std::string& screenshot = "") {
  const std::string flags =
      "--headless --no-sandbox --disable-gpu --no-first-run --disable-sync "
      "--disable-background-networking --disable-component-update --disable-default-apps "
      "'--host-resolver-rules=MAP * ~NOTFOUND' --enable-logging=stderr --v=1 "
      "--window-size=412,915 --user-data-dir=" +
      file + ".profile ";
  BrowserView view;
  CommandResult dom = RunCommand("chromium " + flags + "--dump-dom file://" + file + " 2>" + file +
                                     ".log",
                                 "");
  view.exit_code = dom.exit_code;
  view.dom = dom.output;
  std::ifstream log(file + ".log");
  for (std::string line; std::getline(log, line);) {
    static const std::string kRequest = "NotifyBeforeURLRequest: ";
    if (size_t at = line.find(kRequest); at != std::string::npos) {
      const std::string url = line.substr(at + kRequest.size());
      const bool chromium_own = absl::StrContains(url, ".google.com/") ||
                                absl::StrContains(url, ".googleapis.com/") ||
                                absl::StrContains(url, ".gvt1.com/");
      if (!chromium_own && !absl::StartsWith(url, "file://")) view.requests.push_back(url);
    }
    if (absl::StrContains(line, ":CONSOLE")) view.console.push_back(line);
  }
  if (!screenshot.empty()) {
    CommandResult shot = RunCommand("chromium " + flags + "--screenshot=" + screenshot +
                                        " file://" + file + " 2>/dev/null",
                                    "");
    EXPECT_EQ(shot.exit_code, 0) << shot.output;
  }
  return view;
}

TEST_F(BoardTest, PublishWritesThePagesTheCatalogOptsIn) {
  catalog_ = dir_.File("catalog.yaml");
  std::ofstream(catalog_)
      << "promises:\n"
         "  waits:\n"
         "    - {key: checkout, within_seconds: 150, share: 0.9, publish: true}\n"
         "    - {key: returns, within_seconds: 300, share: 0.9}\n"
         "locations:\n"
         "  - {id: store-1, name: \"Acme <Lyon>\", timezone: Europe/Paris, publish: true}\n"
         "  - {id: store-2}\n"
         "  - {id: store-3}\n"
         "  - {id: store-5, name: Acme Nice, closed: true, publish: true}\n";
  StartCollector();
  for (int i = 1; i <= 3; ++i) SendWaits(absl::StrCat("store-", i), 40, 60);
  RecordWith("store-1", "wait checkout");

  const std::string out = dir_.File("board");
  CommandResult publish = Cli("publish --out=" + out + " --catalog=" + catalog_);
  ASSERT_EQ(publish.exit_code, 0) << publish.output;
  EXPECT_THAT(publish.output, HasSubstr("published 2 locations"));
  const std::string page = ReadFile(out + "/store-1.html");
  EXPECT_THAT(page, HasSubstr("<html lang=\"en\">"));
  EXPECT_THAT(page, HasSubstr("<h1>Acme &lt;Lyon&gt;</h1>"));
  EXPECT_THAT(page, HasSubstr("(Europe/Paris)"));
  EXPECT_THAT(page, HasSubstr("<li>checkout: about 1 minute, updated "));
  EXPECT_THAT(page, HasSubstr("checkout: 90% served within 150 s: kept 100% of the time"));
  for (const char* never : {"<script", "src=", "http:", "https:", "store-2", "p90", "returns"}) {
    EXPECT_THAT(page, Not(HasSubstr(never))) << never;
  }
  const std::string json = ReadFile(out + "/store-1.json");
  EXPECT_THAT(json, HasSubstr("\"status\": \"open\""));
  EXPECT_THAT(json, HasSubstr("\"median_minutes\": 1.3"));
  EXPECT_THAT(ReadFile(out + "/store-5.html"), HasSubstr("This location is closed."));
  EXPECT_THAT(ReadFile(out + "/store-5.json"), HasSubstr("\"status\": \"closed\""));
  const std::string index = ReadFile(out + "/index.html");
  EXPECT_THAT(index, HasSubstr("<a href=\"store-1.html\">Acme &lt;Lyon&gt;</a>"));
  EXPECT_THAT(index, HasSubstr("<a href=\"store-5.html\">Acme Nice</a>"));
  EXPECT_THAT(index, Not(HasSubstr("store-2")));
  EXPECT_TRUE(ReadFile(out + "/store-2.html").empty());

  // In a browser: it renders what the file says, asks the network for
  // nothing and logs no console message. The screenshot (a phone's width)
  // stays in the build tree as the test's artifact.
  const std::string shot = std::string(CONSTANCE_ARTIFACT_DIR) + "/board-store-1.png";
  (void)std::remove(shot.c_str());
  BrowserView view = LoadInChromium(out + "/store-1.html", shot);
  ASSERT_EQ(view.exit_code, 0) << view.dom;
  EXPECT_THAT(view.dom, HasSubstr("<h1>Acme &lt;Lyon&gt;</h1>"));
  EXPECT_THAT(view.dom, HasSubstr("checkout: about 1 minute, updated "));
  EXPECT_THAT(view.dom, HasSubstr("kept 100% of the time"));
  EXPECT_TRUE(view.requests.empty()) << absl::StrJoin(view.requests, "\n");
  EXPECT_TRUE(view.console.empty()) << absl::StrJoin(view.console, "\n");
  EXPECT_GT(ReadFile(shot).size(), 1000u) << "no screenshot at " << shot;
  EXPECT_THAT(LoadInChromium(out + "/store-5.html").dom, HasSubstr("This location is closed."));

  // The same checks catch a page that does reach out or logs an error.
  std::ofstream(out + "/control.html")
      << "<!doctype html><html lang=\"en\"><body><img src=\"http://example.com/x.png\">"
         "<script>console.error('control')</script></body></html>";
  BrowserView control = LoadInChromium(out + "/control.html");
  EXPECT_THAT(control.requests, ::testing::Contains(HasSubstr("example.com/x.png")));
  EXPECT_THAT(control.console, ::testing::Contains(HasSubstr("control")));
}

}  // namespace
}  // namespace constance::testing
