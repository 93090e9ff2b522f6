// The drop directory (drop_dir.h) on real files in a temporary folder with
// a real SQLite spool: checkpoints across restarts, files appended to while
// read, truncation, rotation, moving aside, queue logs, and ticket state
// surviving a restart without ticket ids leaving the store.
#include "agent/drop_dir.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "agent/sqlite_spool.h"
#include "agent/tickets.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"

namespace constance::agent {
namespace {

class TempDir {
 public:
  TempDir() {
    const char* base = getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/drop_test.XXXXXX";
    char* made = mkdtemp(tmpl.data());
    EXPECT_NE(made, nullptr);
    path_ = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string Read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

void Append(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::app) << text;
}

InputMapping ScoreCsv() {
  InputMapping m;
  m.pattern = "*.csv";
  m.records = InputMapping::Records::kScore;
  m.key_column = "key";
  m.value_column = "value";
  return m;
}

std::string ScoreLines(int from, int to) {
  std::string out;
  for (int i = from; i <= to; ++i) absl::StrAppend(&out, "k", i, ",", i, "\n");
  return out;
}

// Every spooled observation's key -> how many times.
std::map<std::string, int> SpooledKeys(Spool& spool) {
  std::map<std::string, int> keys;
  absl::StatusOr<std::vector<SpoolEntry>> all = spool.Read(1, 1'000'000);
  EXPECT_TRUE(all.ok()) << all.status();
  if (all.ok()) {
    for (const SpoolEntry& e : *all) ++keys[e.observation.key()];
  }
  return keys;
}

class DropDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    drop_ = dir_.File("drop");
    ASSERT_EQ(mkdir(drop_.c_str(), 0750), 0);
    config_.path = drop_;
    config_.files = {ScoreCsv()};
    config_.settle_time = absl::Minutes(10);
  }

  absl::StatusOr<std::unique_ptr<SqliteSpool>> OpenSpool(uint64_t max_observations = 1'000'000) {
    SpoolOptions options;
    options.max_observations = max_observations;
    return SqliteSpool::Open(dir_.File("spool.db"), options);
  }

  std::unique_ptr<DropDirectory> MakeDropDir(Spool* spool, TicketTracker* tickets = nullptr) {
    DropDirectoryDeps deps;
    deps.spool = spool;
    deps.tickets = tickets;
    deps.metrics = &metrics_;
    deps.location = "store-1";
    deps.now = [this] { return now_; };
    absl::StatusOr<std::unique_ptr<DropDirectory>> dd = DropDirectory::Create(config_, deps);
    EXPECT_TRUE(dd.ok()) << dd.status();
    return dd.ok() ? *std::move(dd) : nullptr;
  }

  TempDir dir_;
  std::string drop_;
  DropDirectoryConfig config_;
  AgentMetrics metrics_{"store-1", "test"};
  // Files written now are not settled until the clock moves past settle_time.
  absl::Time now_ = absl::Now();
};

TEST_F(DropDirTest, RestartNeitherRereadsNorMissesALine) {
  config_.max_records_per_commit = 100;
  std::ofstream(drop_ + "/big.csv") << "key,value\n" << ScoreLines(1, 2500);
  {
    // The spool fills after 1000 observations: the file stops at a
    // checkpoint in its middle, as if the agent had been stopped there.
    auto spool = OpenSpool(1000);
    ASSERT_TRUE(spool.ok()) << spool.status();
    auto dd = MakeDropDir(spool->get());
    ASSERT_TRUE(dd->ScanOnce().ok());
    // Commits of 100 records (the header is the first): 99 + 9 x 100 fit.
    EXPECT_EQ((*spool)->Depth(), 999u);
  }
  auto spool = OpenSpool();
  ASSERT_TRUE(spool.ok()) << spool.status();
  auto dd = MakeDropDir(spool->get());
  ASSERT_TRUE(dd->ScanOnce().ok());
  std::map<std::string, int> keys = SpooledKeys(**spool);
  EXPECT_EQ(keys.size(), 2500u);
  for (const auto& [key, count] : keys) EXPECT_EQ(count, 1) << key;
  // Scanning again reads nothing more.
  ASSERT_TRUE(dd->ScanOnce().ok());
  EXPECT_EQ((*spool)->Depth(), 2500u);
}

TEST_F(DropDirTest, FileAppendedWhileBeingRead) {
  auto spool = OpenSpool();
  ASSERT_TRUE(spool.ok());
  auto dd = MakeDropDir(spool->get());
  const std::string path = drop_ + "/live.csv";
  Append(path, "key,value\n" + ScoreLines(1, 10) + "k11,1");  // k11 is being written.
  ASSERT_TRUE(dd->ScanOnce().ok());
  EXPECT_EQ((*spool)->Depth(), 10u);
  Append(path, "1\n" + ScoreLines(12, 20));
  ASSERT_TRUE(dd->ScanOnce().ok());
  std::map<std::string, int> keys = SpooledKeys(**spool);
  ASSERT_EQ(keys.size(), 20u);
  absl::StatusOr<std::vector<SpoolEntry>> all = (*spool)->Read(1, 100);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ((*all)[10].observation.key(), "k11");
  EXPECT_EQ((*all)[10].observation.score(), 11);  // "k11,1" completed by "1\n".
  for (const auto& [key, count] : keys) EXPECT_EQ(count, 1) << key;
  // Still recent: not moved aside yet.
  EXPECT_TRUE(std::filesystem::exists(path));

  // Settled: a last line without newline is taken, then the file moves.
  Append(path, "k21,21");
  now_ += absl::Hours(1);
  absl::StatusOr<ScanStats> stats = dd->ScanOnce();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->files_done, 1u);
  EXPECT_EQ((*spool)->Depth(), 21u);
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_TRUE(std::filesystem::exists(drop_ + "/processed/live.csv"));
  EXPECT_EQ(metrics_.Read().input_files_processed, 1u);
  auto state = (*spool)->ReadState("drop/");
  ASSERT_TRUE(state.ok());
  EXPECT_TRUE(state->empty());
}

TEST_F(DropDirTest, TruncatedFileIsReadFromTheStart) {
  config_.keep_processed = true;
  auto spool = OpenSpool();
  ASSERT_TRUE(spool.ok());
  auto dd = MakeDropDir(spool->get());
  const std::string path = drop_ + "/t.csv";
  std::ofstream(path) << "key,value\n" << ScoreLines(1, 50);
  ASSERT_TRUE(dd->ScanOnce().ok());
  EXPECT_EQ((*spool)->Depth(), 50u);
  // copytruncate-style rotation: same inode, shorter content.
  std::ofstream(path, std::ios::trunc) << "key,value\n" << ScoreLines(100, 102);
  ASSERT_TRUE(dd->ScanOnce().ok());
  std::map<std::string, int> keys = SpooledKeys(**spool);
  EXPECT_EQ(keys.size(), 53u);
  EXPECT_EQ(keys["k101"], 1);
}

TEST_F(DropDirTest, RotatedFileKeepsItsPlace) {
  auto spool = OpenSpool();
  ASSERT_TRUE(spool.ok());
  auto dd = MakeDropDir(spool->get());
  const std::string path = drop_ + "/log.csv";
  std::ofstream(path) << "key,value\n" << ScoreLines(1, 5);
  ASSERT_TRUE(dd->ScanOnce().ok());
  // Rotation by rename: the old file gets a new name (still matching) and
  // a last line; a new file starts under the old name.
  ASSERT_EQ(rename(path.c_str(), (drop_ + "/log.1.csv").c_str()), 0);
  Append(drop_ + "/log.1.csv", ScoreLines(6, 7));
  std::ofstream(path) << "key,value\n" << ScoreLines(8, 9);
  ASSERT_TRUE(dd->ScanOnce().ok());
  std::map<std::string, int> keys = SpooledKeys(**spool);
  EXPECT_EQ(keys.size(), 9u);
  for (const auto& [key, count] : keys) EXPECT_EQ(count, 1) << key;
}

TEST_F(DropDirTest, BadLinesAreCountedAndSkipped) {
  auto spool = OpenSpool();
  ASSERT_TRUE(spool.ok());
  auto dd = MakeDropDir(spool->get());
  std::ofstream(drop_ + "/bad.csv") << "key,value\nk1,1\nk2,two\nk3\nk4,4\n";
  absl::StatusOr<ScanStats> stats = dd->ScanOnce();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->rejected, 2u);
  EXPECT_EQ((*spool)->Depth(), 2u);
  EXPECT_EQ(metrics_.Read().input_records_rejected, 2u);
}

// Files stay inside the drop directory: a symlink (to a file outside it,
// or to a file inside) and a FIFO matching a pattern are left alone, never
// read, and the scan does not block on the FIFO.
TEST_F(DropDirTest, OnlyRegularFilesInsideTheDirectoryAreRead) {
  auto spool = OpenSpool();
  ASSERT_TRUE(spool.ok());
  auto dd = MakeDropDir(spool->get());
  const std::string outside = dir_.File("outside.csv");
  std::ofstream(outside) << "key,value\nsecret,1\n";
  ASSERT_EQ(symlink(outside.c_str(), (drop_ + "/link.csv").c_str()), 0);
  ASSERT_EQ(mkfifo((drop_ + "/pipe.csv").c_str(), 0600), 0);
  std::ofstream(drop_ + "/real.csv") << "key,value\nk1,1\n";
  now_ += absl::Hours(1);
  absl::StatusOr<ScanStats> stats = dd->ScanOnce();
  ASSERT_TRUE(stats.ok()) << stats.status();
  std::map<std::string, int> keys = SpooledKeys(**spool);
  EXPECT_EQ(keys, (std::map<std::string, int>{{"k1", 1}}));
}

TEST_F(DropDirTest, UnmatchedFilesAreLeftAlone) {
  auto spool = OpenSpool();
  ASSERT_TRUE(spool.ok());
  auto dd = MakeDropDir(spool->get());
  std::ofstream(drop_ + "/notes.txt") << "hello\n";
  now_ += absl::Hours(1);
  ASSERT_TRUE(dd->ScanOnce().ok());
  EXPECT_TRUE(std::filesystem::exists(drop_ + "/notes.txt"));
  EXPECT_EQ((*spool)->Depth(), 0u);
}

TEST_F(DropDirTest, LocationColumnKeepsThisStoresRows) {
  InputMapping m = ScoreCsv();
  m.location_column = "store";
  config_.files = {m};
  auto spool = OpenSpool();
  ASSERT_TRUE(spool.ok());
  auto dd = MakeDropDir(spool->get());
  std::ofstream(drop_ + "/all.csv") << "store,key,value\nSTORE-1,a,1\nstore-2,a,2\nstore-1,b,3\n";
  absl::StatusOr<ScanStats> stats = dd->ScanOnce();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->other_location, 1u);
  EXPECT_EQ(SpooledKeys(**spool), (std::map<std::string, int>{{"a", 1}, {"b", 1}}));
}

// Log lines written while it lives, for tests of what is logged.
class CapturedLog {
 public:
  CapturedLog() : previous_(spdlog::default_logger()) {
    spdlog::set_default_logger(std::make_shared<spdlog::logger>(
        "test", std::make_shared<spdlog::sinks::ostream_sink_mt>(out_)));
  }
  ~CapturedLog() { spdlog::set_default_logger(previous_); }
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> previous_;
};

// A line over max_line_bytes is reported as FILE:LINE and skipped to its
// newline, whether it fits in one read or not; the lines after it are read,
// and one still being written waits for its newline.
TEST_F(DropDirTest, LongLinesAreReportedAndSkipped) {
  config_.max_line_bytes = 1024;
  auto spool = OpenSpool();
  ASSERT_TRUE(spool.ok());
  auto dd = MakeDropDir(spool->get());
  const std::string path = drop_ + "/long.csv";
  Append(path, "key,value\nk1,1\nk2," + std::string(5000, '9') + "\nk3,3\n");
  // Longer than a read chunk (4 MiB), its newline not written yet.
  Append(path, "k4," + std::string(size_t{5} << 20, '9'));
  CapturedLog log;
  absl::StatusOr<ScanStats> stats = dd->ScanOnce();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(SpooledKeys(**spool), (std::map<std::string, int>{{"k1", 1}, {"k3", 1}}));
  EXPECT_THAT(log.text(), ::testing::HasSubstr(path + ":3: line over max_line_bytes (1024 bytes)"));
  Append(path, "\nk5,5\n");
  stats = dd->ScanOnce();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->rejected, 1u);
  EXPECT_EQ(SpooledKeys(**spool),
            (std::map<std::string, int>{{"k1", 1}, {"k3", 1}, {"k5", 1}}));
  EXPECT_THAT(log.text(), ::testing::HasSubstr(path + ":5: line over max_line_bytes"));
  // Checkpoints hold after a restart: nothing read twice.
  dd.reset();
  dd = MakeDropDir(spool->get());
  ASSERT_TRUE(dd->ScanOnce().ok());
  EXPECT_EQ((*spool)->Depth(), 3u);
}

// The agent notes the file it reads. Stopped once in it (a kill), the file
// is read again; stopped twice at the same place (a crash it causes), the
// file is quarantined at the next start and the others are read. The stops
// are aborts from the test hook, in death-test children.
TEST_F(DropDirTest, FileThatStopsTheAgentTwiceIsQuarantined) {
  // "fast": the child forks from this fixture and uses its folder.
  GTEST_FLAG_SET(death_test_style, "fast");
  std::ofstream(drop_ + "/bad.csv") << "key,value\nk1,1\nBOOM,2\n";
  std::ofstream(drop_ + "/good.csv") << "key,value\nk9,9\n";
  ASSERT_EQ(setenv("CONSTANCE_AGENT_TEST_ABORT_ON", "BOOM", 1), 0);
  for (int stop = 0; stop < 2; ++stop) {
    EXPECT_DEATH(
        {
          auto spool = OpenSpool();
          auto dd = MakeDropDir(spool->get());
          (void)dd->ScanOnce();
        },
        "");
  }
  ASSERT_EQ(unsetenv("CONSTANCE_AGENT_TEST_ABORT_ON"), 0);
  CapturedLog log;
  auto spool = OpenSpool();
  ASSERT_TRUE(spool.ok());
  auto dd = MakeDropDir(spool->get());
  ASSERT_NE(dd, nullptr);
  EXPECT_FALSE(std::filesystem::exists(drop_ + "/bad.csv"));
  EXPECT_TRUE(std::filesystem::exists(drop_ + "/quarantine/bad.csv"));
  EXPECT_THAT(log.text(), ::testing::HasSubstr("the agent stopped twice while reading " + drop_ +
                                               "/bad.csv at byte 0; moved to " + drop_ +
                                               "/quarantine/bad.csv"));
  ASSERT_TRUE(dd->ScanOnce().ok());
  EXPECT_EQ(SpooledKeys(**spool), (std::map<std::string, int>{{"k9", 1}}));
}

TEST_F(DropDirTest, FileThatStopsTheAgentOnceIsReadAgain) {
  // "fast": the child forks from this fixture and uses its folder.
  GTEST_FLAG_SET(death_test_style, "fast");
  std::ofstream(drop_ + "/bad.csv") << "key,value\nk1,1\nBOOM,2\n";
  ASSERT_EQ(setenv("CONSTANCE_AGENT_TEST_ABORT_ON", "BOOM", 1), 0);
  EXPECT_DEATH(
      {
        auto spool = OpenSpool();
        auto dd = MakeDropDir(spool->get());
        (void)dd->ScanOnce();
      },
      "");
  ASSERT_EQ(unsetenv("CONSTANCE_AGENT_TEST_ABORT_ON"), 0);
  auto spool = OpenSpool();
  ASSERT_TRUE(spool.ok());
  auto dd = MakeDropDir(spool->get());
  ASSERT_TRUE(dd->ScanOnce().ok());
  EXPECT_EQ(SpooledKeys(**spool), (std::map<std::string, int>{{"BOOM", 1}, {"k1", 1}}));
  EXPECT_FALSE(std::filesystem::exists(drop_ + "/quarantine"));
}

// Published price lists name their store and time only in the file name.
InputMapping NamedPriceList() {
  InputMapping m;
  m.pattern = "Supermarket *.csv";
  m.records = InputMapping::Records::kPrice;
  m.key_column = "item";
  m.values = {{"price", "shelf"}, {"promo", "promo"}};
  m.currency = "EUR";
  m.name_regex =
      R"(^Supermarket (?P<location>\d+)_.*_(?P<observed_at>\d{2}\.\d{2}\.\d{4}_\d{1,2}\.\d{2})h\.csv$)";
  m.name_time_format = "%d.%m.%Y_%H.%M";
  m.location_prefix = "store-";
  return m;
}

std::string NamedFile(int store, absl::Time at) {
  return absl::StrCat("Supermarket ", store, "_Main St_",
                      absl::FormatTime("%d.%m.%Y_%H.%M", at, absl::UTCTimeZone()), "h.csv");
}

TEST_F(DropDirTest, FileNamedForAnotherLocationIsSkippedCountedAndLogged) {
  config_.files = {NamedPriceList()};
  auto spool = OpenSpool();
  ASSERT_TRUE(spool.ok());
  auto dd = MakeDropDir(spool->get());
  const absl::Time at = absl::FromUnixSeconds(absl::ToUnixSeconds(now_ - absl::Hours(2)) / 60 * 60);
  const std::string mine = NamedFile(1, at);
  const std::string theirs = NamedFile(2, at);
  std::ofstream(drop_ + "/" + mine) << "item,price,promo\nmilk,1.99,1.49\nbread,2.50,\n";
  // Another store's bad row is not this agent's to judge either.
  std::ofstream(drop_ + "/" + theirs) << "item,price,promo\nmilk,2.19,\nbread,x,\n";
  now_ += absl::Hours(1);
  CapturedLog log;
  absl::StatusOr<ScanStats> stats = dd->ScanOnce();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->other_location, 2u);
  EXPECT_EQ(stats->rejected, 0u);
  EXPECT_EQ(stats->files_done, 2u);
  EXPECT_THAT(log.text(), ::testing::HasSubstr(
                              absl::StrCat(theirs,
                                           " is for location store-2 (from its name), not this "
                                           "agent's store-1; its records are skipped")));
  // This store's file: milk's shelf and promo prices, bread's shelf price,
  // at the time its name gives.
  absl::StatusOr<std::vector<SpoolEntry>> all = (*spool)->Read(1, 100);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 3u);
  for (const SpoolEntry& e : *all) {
    EXPECT_EQ(absl::FromUnixSeconds(e.observation.observed_at().seconds()), at);
  }
  EXPECT_EQ((*all)[0].observation.price().kind(), v1::SHELF);
  EXPECT_EQ((*all)[1].observation.price().kind(), v1::PROMO);
  EXPECT_EQ((*all)[1].observation.price().minor_units(), 149);
  EXPECT_EQ((*all)[2].observation.key(), "bread");
}

TEST_F(DropDirTest, FileWhoseNameCannotBeReadIsLeftAloneAndReported) {
  config_.files = {NamedPriceList()};
  auto spool = OpenSpool();
  ASSERT_TRUE(spool.ok());
  auto dd = MakeDropDir(spool->get());
  const std::string bad_date = "Supermarket 1_Main St_31.02.2026_7.15h.csv";
  const std::string no_match = "Supermarket 1 prices.csv";
  std::ofstream(drop_ + "/" + bad_date) << "item,price,promo\nmilk,1.99,\n";
  std::ofstream(drop_ + "/" + no_match) << "item,price,promo\nmilk,1.99,\n";
  now_ += absl::Hours(1);
  CapturedLog log;
  ASSERT_TRUE(dd->ScanOnce().ok());
  ASSERT_TRUE(dd->ScanOnce().ok());
  EXPECT_EQ((*spool)->Depth(), 0u);
  EXPECT_TRUE(std::filesystem::exists(drop_ + "/" + bad_date));
  EXPECT_TRUE(std::filesystem::exists(drop_ + "/" + no_match));
  const std::string text = log.text();
  EXPECT_THAT(text, ::testing::HasSubstr(absl::StrCat("file '", bad_date, "': observed_at")));
  EXPECT_THAT(text, ::testing::HasSubstr(
                        absl::StrCat("file '", no_match, "': the name does not match name_regex")));
  // Reported once, not at every scan.
  EXPECT_EQ(text.find(no_match), text.rfind(no_match));
}

TEST_F(DropDirTest, QueueLogTicketsSurviveARestartAndNeverLeaveTheStore) {
  InputMapping m;
  m.pattern = "*.jsonl";
  m.format = InputMapping::Format::kJsonl;
  m.records = InputMapping::Records::kTicket;
  config_.files = {m};
  absl::Time t;
  std::string err;
  ASSERT_TRUE(absl::ParseTime(absl::RFC3339_full, "2026-11-20T10:00:00Z", &t, &err));
  now_ = t;
  const std::string log =
      Read(std::string(CONSTANCE_SOURCE_DIR) + "/tests/data/agent/queue-log.jsonl");
  ASSERT_FALSE(log.empty());
  {
    auto spool = OpenSpool();
    ASSERT_TRUE(spool.ok());
    auto tracker = TicketTracker::Open(spool->get(), TicketOptions{});
    ASSERT_TRUE(tracker.ok());
    auto dd = MakeDropDir(spool->get(), tracker->get());
    std::ofstream(drop_ + "/queue.jsonl") << log;
    absl::StatusOr<ScanStats> stats = dd->ScanOnce();
    ASSERT_TRUE(stats.ok());
    EXPECT_EQ(stats->rejected, 1u);  // "teleported"
    absl::StatusOr<std::vector<SpoolEntry>> all = (*spool)->Read(1, 100);
    ASSERT_TRUE(all.ok());
    std::multimap<std::string, std::string> got;
    for (const SpoolEntry& e : *all) {
      const v1::Observation& o = e.observation;
      got.emplace(o.key(), o.has_check() ? (o.check().passed() ? "pass" : "fail")
                                         : absl::StrCat(o.wait_seconds()));
      EXPECT_TRUE(o.id().empty());
    }
    const std::multimap<std::string, std::string> want = {
        {"checkout", "120"},         {"checkout.served", "pass"},  // A001 called after 2 min
        {"checkout.served", "fail"},                               // A002 abandoned
        {"pharmacy", "600"},         {"pharmacy.served", "pass"},  // B001 served without a call
        {"checkout", "180"},         {"checkout.served", "pass"},  // A003 called after 3 min
    };
    EXPECT_EQ(got, want);
    // A003 (called, not served) and A005 (created) are still open.
    EXPECT_EQ((*tracker)->open_tickets(), 2u);
    EXPECT_EQ(metrics_.Read().ticket_events_ignored, 1u);  // A001 called again
  }
  // The ticket ids are in no observation and not in the spool's file.
  for (const char* suffix : {"", "-wal"}) {
    const std::string bytes = Read(dir_.File(absl::StrCat("spool.db", suffix)));
    EXPECT_EQ(bytes.find("A003"), std::string::npos) << suffix;
    EXPECT_EQ(bytes.find("A005"), std::string::npos) << suffix;
  }
  // After a restart the open tickets are still there: A005 is called.
  auto spool = OpenSpool();
  ASSERT_TRUE(spool.ok());
  auto tracker = TicketTracker::Open(spool->get(), TicketOptions{});
  ASSERT_TRUE(tracker.ok());
  EXPECT_EQ((*tracker)->open_tickets(), 2u);
  const uint64_t before = (*spool)->LastSequence();
  absl::StatusOr<TicketOutcome> outcome =
      (*tracker)->Apply({{"A005", "checkout", TicketEvent::Type::kCalled, t},
                         {"A003", "checkout", TicketEvent::Type::kServed, t}},
                        t);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(outcome->append.stored, 2u);  // A005's wait and check; A003 was called already.
  absl::StatusOr<std::vector<SpoolEntry>> added = (*spool)->Read(before + 1, 10);
  ASSERT_TRUE(added.ok());
  ASSERT_EQ(added->size(), 2u);
  EXPECT_EQ((*added)[0].observation.wait_seconds(), 51 * 60);  // Created 09:09, called 10:00.
  EXPECT_EQ((*tracker)->open_tickets(), 1u);
}

}  // namespace
}  // namespace constance::agent
