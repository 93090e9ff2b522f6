// Upgrades lose nothing: state directories written by earlier releases
// (tests/data/state/<release>/, made by make_golden_state.cc compiled at
// that release) are read by this collector, migrated, and carry every
// figure over; a state directory of a newer format is refused with both
// versions named, and left exactly as it was.
#include <sqlite3.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "collector/batch_log.h"
#include "collector/engine.h"
#include "collector/server.h"
#include "constance/state/v1/engine_state.pb.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace constance::collector {
namespace {

namespace fs = std::filesystem;
namespace pb = ::constance::state::v1;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A copy of a golden state directory in a fresh temporary directory, so
// the migration a test runs never writes into tests/data.
class GoldenCopy {
 public:
  explicit GoldenCopy(const std::string& release)
      : golden_(fs::path(CONSTANCE_SOURCE_DIR) / "tests/data/state" / release) {
    char pattern[] = "/tmp/constance-golden.XXXXXX";
    dir_ = mkdtemp(pattern);
    fs::copy_file(golden_ / "batches.db", dir_ / "batches.db");
  }
  ~GoldenCopy() { fs::remove_all(dir_); }
  std::string db() const { return (dir_ / "batches.db").string(); }
  std::string dir() const { return dir_.string(); }
  const fs::path& golden() const { return golden_; }
  absl::Time clock() const {
    int64_t seconds = 0;
    std::string text = ReadFile(golden_ / "clock.txt");
    EXPECT_TRUE(absl::SimpleAtoi(text, &seconds)) << text;
    return absl::FromUnixSeconds(seconds);
  }

 private:
  fs::path golden_;
  fs::path dir_;
};

void Sql(const std::string& db, const std::string& sql) {
  sqlite3* h = nullptr;
  ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
  char* err = nullptr;
  EXPECT_EQ(sqlite3_exec(h, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(h);
}


int64_t QueryInt(const std::string& db, const std::string& sql) {
  sqlite3* h = nullptr;
  EXPECT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(h, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK) << sql;
  int64_t v = -1;
  if (sqlite3_step(stmt) == SQLITE_ROW) v = sqlite3_column_int64(stmt, 0);
  sqlite3_finalize(stmt);
  sqlite3_close(h);
  return v;
}

int64_t UserVersion(const std::string& db) { return QueryInt(db, "PRAGMA user_version"); }

// Loads `copy` as the collector does at start: the snapshot, then the
// batches logged after it.
struct Loaded {
  std::unique_ptr<Engine> engine;
  std::unique_ptr<BatchLog> log;
  uint64_t replayed = 0;
};
Loaded Load(const GoldenCopy& copy) {
  Loaded out;
  Engine::Options options;
  options.limits.max_lateness = absl::Hours(24 * 365);  // As the release ran.
  const absl::Time now = copy.clock();
  options.clock = [now] { return now; };
  out.engine = std::make_unique<Engine>(std::move(options));
  absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(copy.db());
  EXPECT_TRUE(log.ok()) << log.status();
  if (!log.ok()) return out;
  out.log = *std::move(log);
  absl::StatusOr<BatchLog::Snapshot> snapshot = out.log->LoadSnapshot();
  EXPECT_TRUE(snapshot.ok()) << snapshot.status();
  if (!snapshot.ok()) return out;
  absl::Status loaded = out.engine->LoadState(snapshot->state);
  EXPECT_TRUE(loaded.ok()) << loaded;
  absl::StatusOr<uint64_t> replayed = out.log->Replay(
      [&](const v1::Batch& b, absl::Time at) { (void)out.engine->ApplyBatch(b, at); },
      snapshot->through);
  EXPECT_TRUE(replayed.ok()) << replayed.status();
  out.replayed = replayed.value_or(0);
  return out;
}

pb::EngineState Expected(const GoldenCopy& copy) {
  pb::EngineState expected;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(
      ReadFile(copy.golden() / "expected_state.textproto"), &expected));
  return expected;
}

TEST(GoldenStateTest, TheFirstReleasesStateCarriesEveryFigureOver) {
  GoldenCopy copy("v0.1.0");
  ASSERT_EQ(UserVersion(copy.db()), 0) << "0.1.0 recorded no log format";
  Loaded loaded = Load(copy);
  ASSERT_NE(loaded.engine, nullptr);
  EXPECT_EQ(loaded.replayed, 36u) << "three rounds of 12 stores were logged after the snapshot";
  EXPECT_EQ(UserVersion(copy.db()), BatchLog::kLogFormat) << "the log is migrated on open";

  pb::EngineState expected = Expected(copy);
  ASSERT_EQ(expected.format(), 1u);
  pb::EngineState restored;
  ASSERT_TRUE(restored.ParseFromString(loaded.engine->SaveState()));
  EXPECT_EQ(restored.format(), Engine::kStateFormat);
  // Counters 0.1.0 did not save start at 0, and are saved from now on.
  EXPECT_EQ(restored.counters().dropped(), 0u);
  EXPECT_EQ(restored.counters().batches_out_of_order(), 0u);

  // A few figures by name, so a failure reads as what was lost.
  int store01_incarnations = 0;
  for (const pb::Stream& s : restored.streams()) {
    if (restored.locations(s.location()).name() == "store-01") ++store01_incarnations;
  }
  EXPECT_EQ(store01_incarnations, 2) << "high-water marks of both of store-01's incarnations";
  int price = 0, wait = 0, compliance = 0, score = 0;
  for (const pb::Series& s : restored.series()) {
    price += s.price_size();
    wait += s.wait_size();
    compliance += s.compliance_size();
    score += s.score_size();
  }
  EXPECT_EQ(price, 24);
  EXPECT_EQ(wait, 12);
  EXPECT_EQ(compliance, 12);
  EXPECT_EQ(score, 12);
  EXPECT_GT(restored.cell_drift_size(), 0);
  EXPECT_GT(restored.group_drift_size(), 0);
  EXPECT_EQ(restored.trust_size(), 12);

  // Format 2's trust trends start with each account's balance on the day
  // of its last update: what the migration adds.
  for (pb::Trust& t : *restored.mutable_trust()) {
    ASSERT_EQ(t.days_size(), 1) << "location " << t.location();
    EXPECT_EQ(t.days(0).day(), t.updated_ns() / 1'000'000'000 / 86400);
    EXPECT_DOUBLE_EQ(t.days(0).balance(), t.deposits() - t.withdrawals());
    t.clear_days();
  }

  // Then every figure: the whole state equals what the release held after
  // its last batch (the order of hash maps aside; the save time aside).
  expected.clear_saved_at_ns();
  restored.clear_saved_at_ns();
  // Receive times of marks were added with retention: each mark has one
  // now (the snapshot's time, or its replayed batch's), compared apart.
  for (pb::Stream& s : *restored.mutable_streams()) {
    EXPECT_NE(s.last_applied_ns(), 0) << "stream of location " << s.location();
    s.clear_last_applied_ns();
  }
  expected.set_format(Engine::kStateFormat);  // What a migration changes.
  // Rejection reasons added since 0.1.0 are kept from the start, at 0.
  (*expected.mutable_counters()->mutable_rejected_by_reason())["location_cells"] += 0;
  google::protobuf::util::MessageDifferencer diff;
  diff.set_repeated_field_comparison(google::protobuf::util::MessageDifferencer::AS_SET);
  std::string report;
  diff.ReportDifferencesToString(&report);
  EXPECT_TRUE(diff.Compare(expected, restored)) << report;
}

// The last log format with the snapshot inside SQLite (log format 1,
// state format 2, written at commit b1881fa): read with this collector,
// the engine's state is exactly what that tree held after its last batch.
TEST(GoldenStateTest, ALogOfFormat1CarriesEveryFigureOver) {
  GoldenCopy copy("log-format-1");
  ASSERT_EQ(UserVersion(copy.db()), 1);
  Loaded loaded = Load(copy);
  ASSERT_NE(loaded.engine, nullptr);
  EXPECT_EQ(loaded.replayed, 36u) << "three rounds of 12 stores were logged after the snapshot";
  EXPECT_EQ(UserVersion(copy.db()), BatchLog::kLogFormat) << "the log is migrated on open";
  pb::EngineState expected = Expected(copy);
  ASSERT_EQ(expected.format(), 2u);
  pb::EngineState restored;
  ASSERT_TRUE(restored.ParseFromString(loaded.engine->SaveState()));
  EXPECT_EQ(restored.trust_size(), 12);
  EXPECT_EQ(restored.streams_size(), 13) << "store-01 under two incarnations";
  expected.clear_saved_at_ns();
  restored.clear_saved_at_ns();
  google::protobuf::util::MessageDifferencer diff;
  diff.set_repeated_field_comparison(google::protobuf::util::MessageDifferencer::AS_SET);
  std::string report;
  diff.ReportDifferencesToString(&report);
  EXPECT_TRUE(diff.Compare(expected, restored)) << report;
}

// The next snapshot after the upgrade moves the state out of the log into
// a file beside it and drops the blob; restarting from that file gives the
// same exact state.
TEST(GoldenStateTest, TheNextSnapshotMovesALogOfFormat1ToASnapshotFile) {
  GoldenCopy copy("log-format-1");
  {
    Loaded loaded = Load(copy);
    ASSERT_NE(loaded.log, nullptr);
    Engine* engine = loaded.engine.get();
    loaded.log->SetCheckpoint(absl::InfiniteDuration(), [engine]() -> BatchLog::Begin {
      return [engine]() -> BatchLog::Finish { return [engine] { return engine->SaveState(); }; };
    });
    loaded.log->Start();
  }  // A clean stop: the snapshot.
  EXPECT_EQ(QueryInt(copy.db(), "SELECT length(state) FROM snapshot"), 0) << "the blob is dropped";
  EXPECT_EQ(QueryInt(copy.db(), "SELECT count(*) FROM batches"), 0);
  Loaded loaded = Load(copy);
  ASSERT_NE(loaded.engine, nullptr);
  EXPECT_EQ(loaded.replayed, 0u);
  absl::StatusOr<BatchLog::Snapshot> snapshot = loaded.log->LoadSnapshot();
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  EXPECT_TRUE(fs::exists(snapshot->file)) << snapshot->file;
  EXPECT_EQ(fs::path(snapshot->file).parent_path(), fs::path(copy.dir()));
  pb::EngineState expected = Expected(copy);
  pb::EngineState restored;
  ASSERT_TRUE(restored.ParseFromString(loaded.engine->SaveState()));
  expected.clear_saved_at_ns();
  restored.clear_saved_at_ns();
  google::protobuf::util::MessageDifferencer diff;
  diff.set_repeated_field_comparison(google::protobuf::util::MessageDifferencer::AS_SET);
  std::string report;
  diff.ReportDifferencesToString(&report);
  EXPECT_TRUE(diff.Compare(expected, restored)) << report;
}

// A collector whose recorded snapshot file is gone stops, naming it,
// rather than start without the state the compacted batches held.
TEST(GoldenStateTest, AMissingSnapshotFileStopsTheCollector) {
  GoldenCopy copy("log-format-1");
  std::string file;
  {
    Loaded loaded = Load(copy);
    ASSERT_NE(loaded.log, nullptr);
    Engine* engine = loaded.engine.get();
    loaded.log->SetCheckpoint(absl::InfiniteDuration(), [engine]() -> BatchLog::Begin {
      return [engine]() -> BatchLog::Finish { return [engine] { return engine->SaveState(); }; };
    });
    loaded.log->Start();
  }
  {
    absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(copy.db());
    ASSERT_TRUE(log.ok()) << log.status();
    absl::StatusOr<BatchLog::Snapshot> snapshot = (*log)->LoadSnapshot();
    ASSERT_TRUE(snapshot.ok()) << snapshot.status();
    file = snapshot->file;
  }
  ASSERT_TRUE(fs::remove(file));
  ServerOptions options;
  options.insecure = true;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "127.0.0.1:0";
  options.state_dir = copy.dir();
  CollectorServer server(options);
  absl::Status started = server.Start();
  EXPECT_TRUE(absl::IsDataLoss(started)) << started;
  EXPECT_TRUE(absl::StrContains(started.message(), file + " (log position 324")) << started;
  EXPECT_TRUE(absl::StrContains(started.message(), "is missing")) << started;
  server.Shutdown(absl::ZeroDuration());
}

// Retention prunes a superseded mark only once it has been idle past the
// lateness bound: the first release saved no receive times, so a mark it
// saved counts from the snapshot, and an evaluation right after the
// restart keeps both of store-01's incarnations.
TEST(GoldenStateTest, TheFirstReleasesMarksAreNotPrunedAtOnce) {
  GoldenCopy copy("v0.1.0");
  Loaded loaded = Load(copy);
  ASSERT_NE(loaded.engine, nullptr);
  pb::EngineState before;
  ASSERT_TRUE(before.ParseFromString(loaded.engine->SaveState()));
  loaded.engine->Evaluate();
  EXPECT_EQ(loaded.engine->snapshot()->streams_held,
            static_cast<uint64_t>(before.streams_size()));
  pb::EngineState restored;
  ASSERT_TRUE(restored.ParseFromString(loaded.engine->SaveState()));
  int store01_incarnations = 0;
  for (const pb::Stream& s : restored.streams()) {
    if (restored.locations(s.location()).name() == "store-01") ++store01_incarnations;
  }
  EXPECT_EQ(store01_incarnations, 2);
}

TEST(GoldenStateTest, RestoredFindingsAreServedBeforeAnyEvaluation) {
  GoldenCopy copy("v0.1.0");
  Loaded loaded = Load(copy);
  ASSERT_NE(loaded.engine, nullptr);
  const pb::EngineState expected = Expected(copy);
  // No Evaluate() has run: what /metrics and the Query API read now.
  std::shared_ptr<const Snapshot> snap = loaded.engine->snapshot();
  std::map<std::string, int64_t> served;
  for (const v1::Finding& f : snap->findings->active) served[f.id()] = f.started_at().seconds();
  std::map<std::string, int64_t> open;
  for (const pb::TrackedFinding& t : expected.tracked()) {
    if (t.open()) open[t.id()] = t.finding().started_at().seconds();
  }
  ASSERT_EQ(open.size(), 2u) << "store-03's overcharge and store-07's failing check";
  EXPECT_EQ(served, open) << "the open findings with their start times";
  EXPECT_EQ(snap->findings->trust.size(), 12u);
  EXPECT_NE(snap->findings->evaluated_at, absl::InfinitePast());
  // The scorecard's trust trend starts at the restored balance.
  absl::StatusOr<v1::LocationScorecardResponse> card = loaded.engine->LocationScorecard("store-03");
  ASSERT_TRUE(card.ok()) << card.status();
  ASSERT_EQ(card->trust_trend_size(), 1);
  EXPECT_DOUBLE_EQ(card->trust_trend(0).balance(), card->trust().balance());
  EXPECT_LT(card->trust().balance(), 0) << "store-03 overcharges";
}

TEST(GoldenStateTest, ALogOfANewerFormatIsRefusedAndLeftAsItWas) {
  GoldenCopy copy("v0.1.0");
  Sql(copy.db(), "PRAGMA user_version=99");
  const std::string before = ReadFile(copy.db());
  absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(copy.db());
  ASSERT_FALSE(log.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(log.status())) << log.status();
  EXPECT_TRUE(absl::StrContains(log.status().message(), "log format 99")) << log.status();
  EXPECT_TRUE(absl::StrContains(log.status().message(),
                                absl::StrCat("reads log formats 1 to ", BatchLog::kLogFormat)))
      << log.status();
  EXPECT_EQ(ReadFile(copy.db()), before);
}

TEST(GoldenStateTest, ASnapshotOfANewerFormatStopsTheCollectorAndIsLeftAsItWas) {
  GoldenCopy copy("v0.1.0");
  {
    // The snapshot as a newer collector would write it: format 99.
    absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(copy.db());
    ASSERT_TRUE(log.ok()) << log.status();
    absl::StatusOr<BatchLog::Snapshot> snapshot = (*log)->LoadSnapshot();
    ASSERT_TRUE(snapshot.ok());
    pb::EngineState state;
    ASSERT_TRUE(state.ParseFromString(snapshot->state));
    state.set_format(99);
    Engine engine{Engine::Options()};
    absl::Status s = engine.LoadState(state.SerializeAsString());
    EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "state format 99")) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), absl::StrCat("reads state formats 1 to ",
                                                            Engine::kStateFormat)))
        << s;
    EXPECT_TRUE(engine.snapshot()->findings->active.empty()) << "the engine is unchanged";
    std::string hex;
    for (unsigned char c : state.SerializeAsString()) hex += absl::StrCat(absl::Hex(c, absl::kZeroPad2));
    log->reset();
    Sql(copy.db(), "UPDATE snapshot SET state = x'" + hex + "' WHERE id = 1");
  }
  const std::string before = ReadFile(copy.db());
  ServerOptions options;
  options.insecure = true;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "127.0.0.1:0";
  options.state_dir = copy.dir();
  CollectorServer server(options);
  absl::Status started = server.Start();
  EXPECT_TRUE(absl::IsFailedPrecondition(started)) << started;
  EXPECT_TRUE(absl::StrContains(started.message(), "state format 99")) << started;
  server.Shutdown(absl::ZeroDuration());
  EXPECT_EQ(ReadFile(copy.db()), before) << "nothing in the state directory was written";
}

}  // namespace
}  // namespace constance::collector
