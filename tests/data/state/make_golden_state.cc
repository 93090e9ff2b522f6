// Writes a golden state directory: what a collector of the release this is
// compiled against leaves in its --state_dir, for the upgrade tests of
// later releases (tests/unit/collector/golden_state_test.cc).
//
//   make_golden_state OUT_DIR
//
// It runs the collector's own engine and batch log, on an injected clock,
// over a chain of 12 stores for two hours of five-minute rounds:
//   - prices: store-03 overcharges coffee (an outlier); every store sells
//     tea at one price;
//   - waits: every store reports 40 checkout waits a round, store-05's creep
//     up (a drift), with a frozen drift baseline and CUSUM per store;
//   - compliance: store-07 fails its critical fridge check;
//   - scores: every store reports a satisfaction score;
//   - store-01 reports under two incarnations (its spool was wiped after
//     the first hour), so the state has two high-water marks for it.
// Findings are evaluated every round, so findings are open with their
// start times and trust accounts move. Then the log is closed cleanly
// (the snapshot is written), reopened without a checkpoint, and three
// more rounds of prices are logged after the snapshot, as a collector
// killed before its next snapshot would leave them.
//
// OUT_DIR receives batches.db (the state directory's only file), and
// expected_state.textproto: the engine's whole state after the last batch
// (constance.state.v1.EngineState in text format), which the test
// compares with what the current collector restores. clock.txt holds the
// injected clock at the end (Unix seconds), README.md says how it was made.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <future>
#include <iostream>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/strings/str_format.h"
#include "collector/batch_log.h"
#include "collector/engine.h"
#include "constance/state/v1/engine_state.pb.h"
#include "google/protobuf/text_format.h"

namespace constance::collector {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1'764'583'200);  // 2025-12-01T10:00:00Z
constexpr int kStores = 12;

std::string Store(int i) { return absl::StrFormat("store-%02d", i); }

[[noreturn]] void Die(const std::string& what) {
  std::cerr << "make_golden_state: " << what << "\n";
  std::exit(1);
}

class Feeder {
 public:
  Feeder(Engine* engine, absl::Time* now) : engine_(engine), now_(now) {}
  void set_log(BatchLog* log) { log_ = log; }

  v1::Observation At(const std::string& key) const {
    v1::Observation o;
    o.set_key(key);
    o.mutable_observed_at()->set_seconds(absl::ToUnixSeconds(*now_));
    return o;
  }
  v1::Observation Price(const std::string& key, int64_t minor) const {
    v1::Observation o = At(key);
    o.mutable_price()->set_minor_units(minor);
    o.mutable_price()->set_currency("EUR");
    return o;
  }
  v1::Observation Wait(double seconds) const {
    v1::Observation o = At("checkout");
    o.set_wait_seconds(seconds);
    return o;
  }
  v1::Observation Check(bool passed) const {
    v1::Observation o = At("fridge-temp");
    o.mutable_check()->set_passed(passed);
    o.mutable_check()->set_critical(true);
    return o;
  }
  v1::Observation Score(double score) const {
    v1::Observation o = At("satisfaction");
    o.set_score(score);
    return o;
  }

  // Logs one batch and applies it once it is durable, as ingest does.
  void Send(int store, uint64_t incarnation, std::vector<v1::Observation> obs) {
    v1::Batch batch;
    batch.set_location(Store(store));
    batch.set_incarnation(incarnation);
    uint64_t& next = next_[{store, incarnation}];
    if (next == 0) next = 1;
    batch.set_first_sequence(next);
    next += obs.size();
    for (auto& o : obs) *batch.add_observations() = std::move(o);
    auto bytes = std::make_shared<std::string>(batch.SerializeAsString());
    std::promise<absl::Status> done;
    const absl::Time received = *now_;
    log_->Append(*bytes, received, [&, bytes](absl::Status committed) {
      if (committed.ok()) {
        absl::StatusOr<v1::Ack> ack = engine_->ApplyBatch(batch, received);
        if (!ack.ok()) committed = ack.status();
      }
      done.set_value(committed);
    });
    if (absl::Status s = done.get_future().get(); !s.ok()) Die(std::string(s.message()));
  }

 private:
  Engine* engine_;
  absl::Time* now_;
  BatchLog* log_ = nullptr;
  std::map<std::pair<int, uint64_t>, uint64_t> next_;
};

uint64_t IncarnationOf(int store, int round) {
  // store-01's spool was wiped after the first hour: a new incarnation.
  if (store == 1 && round >= 12) return 0x01'0000'0002;
  return 0x01'0000'0001 + static_cast<uint64_t>(store) * 0x100;
}

void Round(Feeder& feed, int round) {
  for (int i = 0; i < kStores; ++i) {
    std::vector<v1::Observation> obs;
    obs.push_back(feed.Price("coffee-250g", i == 3 ? 519 : 449));
    obs.push_back(feed.Price("tea-100g", 299));
    for (int t = 0; t < 40; ++t) {
      obs.push_back(feed.Wait(170 + i + (t % 5) + (i == 5 ? round * 0.8 : 0)));
    }
    obs.push_back(feed.Check(i != 7));
    obs.push_back(feed.Score(80 + (i % 4)));
    feed.Send(i, IncarnationOf(i, round), std::move(obs));
  }
}

// Snapshots the whole state at the log's clean stop. 0.1.0's batch log
// takes one function returning the state; later ones take the capture in
// three steps (BatchLog::Prepare, Begin, Finish): the same SaveState here.
template <typename Log, typename = void>
struct HasCaptureSteps : std::false_type {};
template <typename Log>
struct HasCaptureSteps<Log, std::void_t<typename Log::Prepare>> : std::true_type {};

template <typename Log>
void SnapshotAtStop(Log& log, Engine& engine) {
  if constexpr (HasCaptureSteps<Log>::value) {
    log.SetCheckpoint(absl::InfiniteDuration(), [&engine]() -> typename Log::Begin {
      return [&engine]() -> typename Log::Finish { return [&engine] { return engine.SaveState(); }; };
    });
  } else {
    log.SetCheckpoint(absl::InfiniteDuration(), [&engine] { return engine.SaveState(); });
  }
}

int Main(const std::string& out) {
  absl::Time now = kStart;
  Engine::Options options;
  options.limits.max_lateness = absl::Hours(24 * 365);
  options.clock = [&now] { return now; };
  Engine engine(std::move(options));
  Feeder feed(&engine, &now);
  const std::string path = out + "/batches.db";
  {
    absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path);
    if (!log.ok()) Die(std::string(log.status().message()));
    SnapshotAtStop(**log, engine);
    (*log)->Start();
    feed.set_log(log->get());
    for (int round = 0; round < 24; ++round) {
      now += absl::Minutes(5);
      Round(feed, round);
      engine.Evaluate();
    }
  }  // A clean stop: the snapshot covers every batch so far.
  {
    absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(path);
    if (!log.ok()) Die(std::string(log.status().message()));
    (*log)->Start();  // No checkpoint: these batches stay in the log.
    feed.set_log(log->get());
    for (int round = 24; round < 27; ++round) {
      now += absl::Minutes(1);
      for (int i = 0; i < kStores; ++i) {
        feed.Send(i, IncarnationOf(i, round), {feed.Price("tea-100g", i == 9 ? 329 : 299)});
      }
    }
  }
  state::v1::EngineState expected;
  if (!expected.ParseFromString(engine.SaveState())) Die("cannot parse the engine's state");
  std::string text;
  google::protobuf::TextFormat::PrintToString(expected, &text);
  std::ofstream(out + "/expected_state.textproto") << text;
  std::ofstream(out + "/clock.txt") << absl::ToUnixSeconds(now) << "\n";
  std::cout << "wrote " << path << " and the expected state ("
            << engine.snapshot()->findings->active.size() << " active findings)\n";
  return 0;
}

}  // namespace
}  // namespace constance::collector

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_golden_state OUT_DIR\n";
    return 2;
  }
  return constance::collector::Main(argv[1]);
}
