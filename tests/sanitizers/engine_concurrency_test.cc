// The collector Engine used from many threads at once, as the server does:
// agents' streams apply batches while the statistics and evaluation ticks
// run, the Query API and /metrics read snapshots, and SIGHUP swaps the
// catalog. Meant for the ThreadSanitizer build (tests/sanitizers.sh), where
// a data race fails it; in every build it checks that nothing applied
// concurrently is lost or applied twice.
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "collector/batch_log.h"
#include "collector/catalog.h"
#include "collector/engine.h"
#include "constance/state/v1/engine_state.pb.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace constance::collector {
namespace {

constexpr int kWriters = 4;
constexpr int kBatchesPerWriter = 150;
constexpr int kPerBatch = 4;

// Ticks every few milliseconds so they interleave with ingest.
std::shared_ptr<const Catalog> FastCatalog(double z_threshold) {
  Catalog catalog = DefaultCatalog();
  catalog.price.min_samples = catalog.wait.min_samples = catalog.compliance.min_samples =
      catalog.score.min_samples = 1;
  catalog.thresholds.stats_interval = absl::Milliseconds(2);
  catalog.thresholds.evaluation_interval = absl::Milliseconds(5);
  catalog.thresholds.z_threshold = z_threshold;
  return std::make_shared<const Catalog>(std::move(catalog));
}

v1::Batch MakeBatch(int writer, int batch, absl::Time now) {
  v1::Batch b;
  b.set_location(absl::StrCat("store-", writer));
  b.set_incarnation(1);
  b.set_first_sequence(static_cast<uint64_t>(batch) * kPerBatch + 1);
  for (int i = 0; i < kPerBatch; ++i) {
    v1::Observation* o = b.add_observations();
    o->mutable_observed_at()->set_seconds(absl::ToUnixSeconds(now));
    switch (i) {
      case 0:
        o->set_key("coffee-250g");
        o->mutable_price()->set_minor_units(499 + (writer == 0 ? 100 : 0) + batch % 3);
        o->mutable_price()->set_currency("EUR");
        break;
      case 1:
        o->set_key("checkout");
        o->set_wait_seconds(60 + 10 * writer + batch % 7);
        break;
      case 2:
        o->set_key("fridge-temp");
        o->mutable_check()->set_passed(batch % 5 != writer);
        break;
      default:
        o->set_key("nps");
        o->set_score(40 + writer + batch % 11);
        break;
    }
  }
  return b;
}

// Waits until `done` holds, polling with a deadline.
template <typename Pred>
bool WaitFor(Pred done, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

// `evaluation_threads` recompute the ticks' series (Engine::Options).
void IngestTicksReadersAndCatalogSwaps(int evaluation_threads) {
  Engine::Options options;
  options.catalog = FastCatalog(3.5);
  options.evaluation_threads = evaluation_threads;
  Engine engine(options);
  engine.Start();

  std::atomic<bool> writing{true};
  std::atomic<int> ack_errors{0};
  std::atomic<bool> tick_during_ingest{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&engine, &ack_errors, &tick_during_ingest, w] {
      for (int b = 0; b < kBatchesPerWriter; ++b) {
        // Halfway, one writer waits for a statistics tick over what is
        // applied so far, so ticks surely interleave with ingest.
        if (w == 0 && b == kBatchesPerWriter / 2) {
          tick_during_ingest = WaitFor(
              [&engine] { return engine.snapshot()->observations_applied > 0; }, absl::Seconds(30));
        }
        const v1::Batch batch = MakeBatch(w, b, absl::Now());
        absl::StatusOr<v1::Ack> ack = engine.ApplyBatch(batch);
        if (!ack.ok() || ack->rejections_size() != 0 || ack->duplicates() != 0) ++ack_errors;
        // Every third batch is sent twice, as after a lost ack.
        if (b % 3 == 0) {
          ack = engine.ApplyBatch(batch);
          if (!ack.ok() || ack->duplicates() != kPerBatch) ++ack_errors;
        }
        if (b % 10 == 0) {
          v1::Heartbeat hb;
          hb.set_location(batch.location());
          hb.set_incarnation(1);
          hb.set_version("test");
          if (!engine.RecordHeartbeat(hb).ok()) ++ack_errors;
        }
      }
    });
  }
  std::atomic<uint64_t> reads{0};
  std::atomic<int> query_errors{0};
  // Readers: /metrics and the Query API.
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&engine, &writing, &reads, &query_errors, r] {
      v1::SeriesId id;
      SeriesToProto(SeriesOf(MakeBatch(0, 0, absl::Now()).observations(r)), &id);
      while (writing.load()) {
        std::shared_ptr<const Snapshot> s = engine.snapshot();
        uint64_t seen = s->observations_applied + s->findings->active.size();
        for (const auto& stats : s->series) seen += stats->outliers.size();
        // Both readers query at once (the queries hold the ingest lock
        // shared): nothing but "not reported yet" may come back.
        absl::StatusOr<v1::KeyDetailResponse> detail = engine.KeyDetail(id);
        absl::StatusOr<v1::LocationScorecardResponse> card = engine.LocationScorecard("store-1");
        for (const absl::Status& status : {detail.status(), card.status()}) {
          if (!status.ok() && !absl::IsNotFound(status)) ++query_errors;
        }
        seen += engine.CurrentWaits(absl::StrCat("store-", r)).size();
        reads.fetch_add(1 + seen % 2);
      }
    });
  }
  // SIGHUP: a catalog swap while everything runs.
  threads.emplace_back([&engine, &writing] {
    for (int i = 0; writing.load(); ++i) {
      engine.SetCatalog(FastCatalog(i % 2 == 0 ? 3.0 : 3.5));
      absl::SleepFor(absl::Milliseconds(3));
    }
  });

  for (int w = 0; w < kWriters; ++w) threads[w].join();
  // Both ticks must have published something over the ingested data.
  EXPECT_TRUE(WaitFor(
      [&engine] {
        std::shared_ptr<const Snapshot> s = engine.snapshot();
        return s->observations_applied == uint64_t{kWriters} * kBatchesPerWriter * kPerBatch &&
               s->findings->evaluated_at > absl::InfinitePast();
      },
      absl::Seconds(60)));
  writing.store(false);
  for (size_t i = kWriters; i < threads.size(); ++i) threads[i].join();
  engine.Stop();

  EXPECT_EQ(ack_errors.load(), 0);
  EXPECT_TRUE(tick_during_ingest.load());
  EXPECT_GT(reads.load(), 0u);
  EXPECT_EQ(query_errors.load(), 0);
  engine.Recompute();
  std::shared_ptr<const Snapshot> s = engine.snapshot();
  EXPECT_EQ(s->observations_applied, uint64_t{kWriters} * kBatchesPerWriter * kPerBatch);
  EXPECT_EQ(s->observations_rejected, 0u);
  EXPECT_EQ(s->observations_duplicate,
            uint64_t{kWriters} * ((kBatchesPerWriter + 2) / 3) * kPerBatch);
  ASSERT_EQ(s->location_states.size(), static_cast<size_t>(kWriters));
  for (const LocationState& l : s->location_states) {
    EXPECT_EQ(l.watermark, uint64_t{kBatchesPerWriter} * kPerBatch) << l.location;
  }
}

TEST(EngineConcurrencyTest, IngestTicksReadersAndCatalogSwapsInterleave) {
  IngestTicksReadersAndCatalogSwaps(1);
}

// The same with each tick's series recomputed and evaluated on three
// threads at once: their groups' drift state is found and added from
// several threads (TSan: no race), and nothing is lost.
TEST(EngineConcurrencyTest, SeriesEvaluatedOnSeveralThreadsInterleaveWithIngest) {
  IngestTicksReadersAndCatalogSwaps(3);
}

// Series evaluated on four threads while batches apply: every round of
// batches brings wait keys no evaluation has seen, so their groups' drift
// state is added from several threads at once (TSan: no race), and
// nothing applied is lost.
TEST(EngineConcurrencyTest, SeriesOnFourThreadsAddTheirDriftStateWhileBatchesApply) {
  Catalog catalog = DefaultCatalog();
  catalog.wait.min_samples = 1;
  catalog.thresholds.min_group = 2;  // Every key's group is compared.
  Engine::Options options;
  options.catalog = std::make_shared<const Catalog>(std::move(catalog));
  options.evaluation_threads = 4;
  Engine engine(options);
  constexpr int kLocations = 4, kRounds = 30, kKeys = 16;
  std::atomic<int> ack_errors{0}, finished{0};
  std::vector<std::thread> writers;
  for (int l = 0; l < kLocations; ++l) {
    writers.emplace_back([&engine, &ack_errors, &finished, l] {
      for (int r = 0; r < kRounds; ++r) {
        v1::Batch b;
        b.set_location(absl::StrCat("store-", l));
        b.set_incarnation(1);
        b.set_first_sequence(static_cast<uint64_t>(r) * kKeys + 1);
        for (int k = 0; k < kKeys; ++k) {
          v1::Observation* o = b.add_observations();
          o->mutable_observed_at()->set_seconds(absl::ToUnixSeconds(absl::Now()));
          o->set_key(absl::StrCat("wait-", r, "-", k));
          o->set_wait_seconds(60 + l + k);
        }
        absl::StatusOr<v1::Ack> ack = engine.ApplyBatch(b);
        if (!ack.ok() || ack->rejections_size() != 0) ++ack_errors;
      }
      ++finished;
    });
  }
  int evaluations = 0;
  while (finished.load() < kLocations) {
    engine.Evaluate();
    ++evaluations;
  }
  for (std::thread& t : writers) t.join();
  engine.Evaluate();
  EXPECT_EQ(ack_errors.load(), 0);
  EXPECT_GT(evaluations, 0);
  std::shared_ptr<const Snapshot> s = engine.snapshot();
  EXPECT_EQ(s->observations_applied, uint64_t{kLocations} * kRounds * kKeys);
  EXPECT_EQ(s->series_held, uint64_t{kRounds} * kKeys);
  EXPECT_EQ(s->series.size(), uint64_t{kRounds} * kKeys) << "a group per key";
  EXPECT_GT(s->findings->evaluated_at, absl::InfinitePast());
}

// Renumbers a state's locations in order of name: every `location` field
// (uint32, a location's number) in it follows.
void Renumber(google::protobuf::Message* m, const std::vector<uint32_t>& to) {
  const google::protobuf::Reflection* r = m->GetReflection();
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  r->ListFields(*m, &fields);
  for (const google::protobuf::FieldDescriptor* f : fields) {
    if (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (f->is_repeated()) {
        for (int i = 0; i < r->FieldSize(*m, f); ++i) {
          Renumber(r->MutableRepeatedMessage(m, f, i), to);
        }
      } else {
        Renumber(r->MutableMessage(m, f), to);
      }
    }
  }
  // Number 0 is not set in proto3: looked up, not listed.
  const google::protobuf::FieldDescriptor* loc = m->GetDescriptor()->FindFieldByName("location");
  if (loc != nullptr && !loc->is_repeated() &&
      loc->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_UINT32) {
    r->SetUInt32(m, loc, to.at(r->GetUInt32(*m, loc)));
  }
}

void ByName(state::v1::EngineState* state) {
  std::vector<uint32_t> order(state->locations_size());
  for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    return state->locations(a).name() < state->locations(b).name();
  });
  std::vector<uint32_t> to(order.size());
  for (uint32_t i = 0; i < order.size(); ++i) to[order[i]] = i;
  Renumber(state, to);
}

// Two saved states alike, locations renumbered by name (threads race for
// their numbers).
void ExpectAlike(state::v1::EngineState expected, state::v1::EngineState got) {
  ByName(&expected);
  ByName(&got);
  google::protobuf::util::MessageDifferencer diff;
  diff.set_repeated_field_comparison(google::protobuf::util::MessageDifferencer::AS_SET);
  std::string report;
  diff.ReportDifferencesToString(&report);
  EXPECT_TRUE(diff.Compare(expected, got)) << report;
}

// Runs apply(l, b) for batch b of every location l, each location's in
// order on one of `threads` threads; how many returned false.
template <typename F>
int OnThreads(int locations, int batches, int threads, F apply) {
  std::atomic<int> failed{0};
  std::vector<std::thread> running;
  for (int t = 0; t < threads; ++t) {
    running.emplace_back([&, t] {
      for (int b = 0; b < batches; ++b) {
        for (int l = t; l < locations; l += threads) {
          if (!apply(l, b)) ++failed;
        }
      }
    });
  }
  for (std::thread& t : running) t.join();
  return failed.load();
}

// Batch `b` of location `l` for ParallelBatchesEndAsAppliedOneAfterAnother:
// prices of 20 keys (two a batch changed), one more observed two days
// late (dropping every fourth batch: a late drop), a wait, a check, a
// score; every fifth batch a key of its own (a new series: applied
// exclusively). Sequences run on from `*next`.
v1::Batch LocationBatch(int l, int b, absl::Time now, uint64_t* next) {
  v1::Batch batch;
  batch.set_location(absl::StrCat("store-", l));
  batch.set_incarnation(7);
  batch.set_first_sequence(*next);
  auto add = [&](const std::string& key, absl::Time at) {
    v1::Observation* o = batch.add_observations();
    o->set_key(key);
    o->mutable_observed_at()->set_seconds(absl::ToUnixSeconds(at));
    return o;
  };
  for (int k = 0; k < 20; ++k) {
    const bool changed = k == b % 20 || k == (b + 7) % 20;
    v1::Observation* o = add(absl::StrCat("item-", k), now);
    o->mutable_price()->set_minor_units(300 + k + l % 3 - (changed ? b % 5 + 1 : 0));
    o->mutable_price()->set_currency("EUR");
  }
  v1::Observation* late = add("late-item", now - absl::Hours(48) + absl::Seconds(b));
  late->mutable_price()->set_minor_units(500 - (b % 4 == 1 ? 5 : 0));
  late->mutable_price()->set_currency("EUR");
  add("checkout", now)->set_wait_seconds(30 + (l * 13 + b * 7) % 200);
  add("fridge-temp", now)->mutable_check()->set_passed((l + b) % 6 != 0);
  add("nps", now)->set_score(20 + (l + 3 * b) % 70);
  if (b % 5 == 4) add(absl::StrCat("special-", l, "-", b), now)->set_score(50);
  *next += batch.observations_size();
  return batch;
}

// Stripes: batches of different locations applied at once, on four
// threads (each location's in order, on one), leave the engine exactly as
// the same batches applied one after the other. Most take the shared
// path (cells known), some the exclusive one (a new key), some are sent
// twice; the drops that arrive late are kept in both.
TEST(EngineConcurrencyTest, ParallelBatchesEndAsAppliedOneAfterAnother) {
  constexpr int kLocations = 12, kBatches = 60, kThreads = 4;
  const absl::Time now = absl::FromUnixSeconds(1'780'000'000);
  std::vector<std::vector<v1::Batch>> batches(kLocations);
  for (int l = 0; l < kLocations; ++l) {
    uint64_t next = 1;
    for (int b = 0; b < kBatches; ++b) batches[l].push_back(LocationBatch(l, b, now, &next));
  }
  Engine::Options options;
  options.clock = [now] { return now; };
  Engine serial(options), parallel(options);
  uint64_t applied = 0, duplicates = 0;
  for (int b = 0; b < kBatches; ++b) {
    for (int l = 0; l < kLocations; ++l) {
      absl::StatusOr<v1::Ack> ack = serial.ApplyBatch(batches[l][b], now);
      ASSERT_TRUE(ack.ok()) << ack.status();
      applied += ack->applied();
      if (b % 3 == 0) duplicates += serial.ApplyBatch(batches[l][b], now)->duplicates();
    }
  }
  EXPECT_EQ(OnThreads(kLocations, kBatches, kThreads,
                      [&](int l, int b) {
                        const bool sent = parallel.ApplyBatch(batches[l][b], now).ok();
                        return b % 3 != 0 ? sent
                                          : parallel.ApplyBatch(batches[l][b], now).ok() && sent;
                      }),
            0);

  state::v1::EngineState expected, got;
  ASSERT_TRUE(expected.ParseFromString(serial.SaveState()));
  ASSERT_TRUE(got.ParseFromString(parallel.SaveState()));
  // Everything applied is in it, late drops too.
  EXPECT_EQ(expected.counters().applied(), applied);
  EXPECT_EQ(expected.counters().duplicates(), duplicates);
  EXPECT_EQ(applied, uint64_t{kLocations} * (kBatches * 24 + kBatches / 5));
  EXPECT_GT(expected.late_drops_size(), 0);
  // Locations are numbered as they first report, which the threads race
  // for: compared by name.
  ExpectAlike(expected, got);
}

// Batch `b` of location `l` for the cell-creation tests below: prices of
// keys 0..b (batch b starts location l's cell of key b), each its own
// sequence numbers from `*next`.
v1::Batch NewCellsBatch(int l, int b, absl::Time now, uint64_t* next) {
  v1::Batch batch;
  batch.set_location(absl::StrCat("store-", l));
  batch.set_incarnation(3);
  batch.set_first_sequence(*next);
  for (int k = 0; k <= b; ++k) {
    v1::Observation* o = batch.add_observations();
    o->set_key(absl::StrCat("item-", k));
    o->mutable_observed_at()->set_seconds(absl::ToUnixSeconds(now) - b);
    o->mutable_price()->set_minor_units(200 + k + (l + b) % 4);
    o->mutable_price()->set_currency("EUR");
  }
  *next += batch.observations_size();
  return batch;
}

// The engines' states alike, locations renumbered by name (threads race
// for the numbers), and their cell counts.
void ExpectSameState(Engine& expected_engine, Engine& got_engine) {
  state::v1::EngineState expected, got;
  ASSERT_TRUE(expected.ParseFromString(expected_engine.SaveState()));
  ASSERT_TRUE(got.ParseFromString(got_engine.SaveState()));
  ExpectAlike(expected, got);
  expected_engine.Evaluate();
  got_engine.Evaluate();
  EXPECT_EQ(got_engine.snapshot()->cells, expected_engine.snapshot()->cells);
}

// Every location's batches for the tests below (NewCellsBatch), their
// series all started first in each of `engines` by a location of its own.
std::vector<std::vector<v1::Batch>> NewCellsChain(int locations, int batches, absl::Time now,
                                                  std::initializer_list<Engine*> engines) {
  uint64_t first = 1;
  const v1::Batch starter = NewCellsBatch(locations, batches - 1, now, &first);
  for (Engine* e : engines) EXPECT_TRUE(e->ApplyBatch(starter, now).ok());
  std::vector<std::vector<v1::Batch>> out(static_cast<size_t>(locations));
  for (int l = 0; l < locations; ++l) {
    uint64_t next = 1;
    for (int b = 0; b < batches; ++b) out[l].push_back(NewCellsBatch(l, b, now, &next));
  }
  return out;
}

// New cells in series other locations started, created beside each
// other: 48 locations (every stripe) on four threads, each location's
// first batch and every later one starting a cell, end as the same
// batches applied one after the other, each location's cells counted
// against --max_cells_per_location as they are started.
TEST(EngineConcurrencyTest, CellsOfKnownSeriesStartBesideOtherLocations) {
  constexpr int kLocations = 48, kBatches = 12, kThreads = 4;
  const absl::Time now = absl::FromUnixSeconds(1'780'000'000);
  Engine::Options options;
  options.clock = [now] { return now; };
  options.limits.max_cells_per_location = kBatches;  // Exactly room for every key.
  Engine serial(options), parallel(options);
  const std::vector<std::vector<v1::Batch>> batches =
      NewCellsChain(kLocations, kBatches, now, {&serial, &parallel});
  for (int b = 0; b < kBatches; ++b) {
    for (int l = 0; l < kLocations; ++l) {
      absl::StatusOr<v1::Ack> ack = serial.ApplyBatch(batches[l][b], now);
      ASSERT_TRUE(ack.ok()) << ack.status();
      ASSERT_EQ(ack->rejections_size(), 0);
    }
  }
  EXPECT_EQ(OnThreads(kLocations, kBatches, kThreads,
                      [&](int l, int b) {
                        absl::StatusOr<v1::Ack> ack = parallel.ApplyBatch(batches[l][b], now);
                        return ack.ok() && ack->rejections_size() == 0;
                      }),
            0);
  ExpectSameState(serial, parallel);
  EXPECT_EQ(parallel.snapshot()->cells, uint64_t{kLocations + 1} * kBatches);
  // The limit still holds for cells started beside: one key more is
  // rejected, by name.
  uint64_t next = 1;
  for (int b = 0; b < kBatches; ++b) NewCellsBatch(0, b, now, &next);
  v1::Batch over = NewCellsBatch(0, kBatches, now, &next);
  absl::StatusOr<v1::Ack> ack = parallel.ApplyBatch(over, now);
  ASSERT_TRUE(ack.ok()) << ack.status();
  ASSERT_EQ(ack->rejections_size(), 1);
  EXPECT_TRUE(absl::StartsWith(ack->rejections(0).reason(), "location_cells:"))
      << ack->rejections(0).reason();
}

// The log's helpers (ApplyBeside) take an agent's new stream and its new
// cells beside other locations' batches once its location is known (its
// agent's heartbeat): every first batch applies there, none is left to
// the log order, and the engine ends as the batches applied one after
// the other. A location not known yet is left to the log order.
TEST(EngineConcurrencyTest, NewStreamsOfKnownLocationsApplyBeside) {
  constexpr int kLocations = 32, kBatches = 6, kThreads = 4;
  const absl::Time now = absl::FromUnixSeconds(1'780'000'000);
  Engine::Options options;
  options.clock = [now] { return now; };
  Engine serial(options), beside(options);
  const std::vector<std::vector<v1::Batch>> batches =
      NewCellsChain(kLocations, kBatches, now, {&serial, &beside});
  for (int l = 0; l < kLocations; ++l) {
    v1::Heartbeat heartbeat;
    heartbeat.set_location(absl::StrCat("store-", l));
    heartbeat.set_incarnation(3);
    ASSERT_TRUE(serial.RecordHeartbeat(heartbeat).ok());
    ASSERT_TRUE(beside.RecordHeartbeat(heartbeat).ok());
  }
  for (int b = 0; b < kBatches; ++b) {
    for (int l = 0; l < kLocations; ++l) ASSERT_TRUE(serial.ApplyBatch(batches[l][b], now).ok());
  }
  // Each is taken beside (what the log's helpers call), none declined.
  EXPECT_EQ(
      OnThreads(kLocations, kBatches, kThreads,
                [&](int l, int b) {
                  const BatchView view = ViewOf(batches[l][b]);
                  return beside.ApplyBeside(view, now, 0, beside.CheckBatch(view, now)).has_value();
                }),
      0);
  ExpectSameState(serial, beside);
  uint64_t next = 1;
  const v1::Batch unknown_batch = NewCellsBatch(kLocations + 1, 0, now, &next);
  const BatchView unknown = ViewOf(unknown_batch);
  EXPECT_FALSE(beside.ApplyBeside(unknown, now, 0, beside.CheckBatch(unknown, now)).has_value());
}

// The durable log's lanes (batch_log.h): the batches of
// ParallelBatchesEndAsAppliedOneAfterAnother, and batches with a rejected
// observation, logged in one order and applied from the log's applier
// and two helpers, each location a lane, as ingest applies them (what
// ApplyBeside declines, ApplyBatch applies alone, in log order), in one
// committed group. The
// engine ends as the same batches applied one after the other in log
// order (what a restart replays), and every ack is the one that replay
// gives. --max_series runs out part way: which new keys are rejected for
// `series` depends on the order the exclusive batches apply in.
TEST(EngineConcurrencyTest, TheLogsLanesAckAndEndAsItsReplay) {
  constexpr int kLocations = 12, kBatches = 40;
  const absl::Time now = absl::FromUnixSeconds(1'780'000'000);
  std::vector<v1::Batch> logged;  // Log order: a round of every location at a time.
  std::vector<uint64_t> next(kLocations, 1);
  size_t first_round = 0;  // The batches of b = 0: they make the locations.
  for (int b = 0; b < kBatches; ++b) {
    for (int l = 0; l < kLocations; ++l) {
      const uint64_t first = next[l];
      logged.push_back(LocationBatch(l, b, now, &next[l]));
      if (b % 7 == 3) {  // An observation rejected (a price without a currency).
        v1::Observation* bad = logged.back().add_observations();
        bad->set_key("item-0");
        bad->mutable_price()->set_minor_units(100);
        ++next[l];
      }
      if (b % 3 == 0) logged.push_back(logged.back());  // Sent twice.
      ASSERT_EQ(logged.back().first_sequence(), first);
    }
    if (b == 0) first_round = logged.size();
  }
  Engine::Options options;
  options.clock = [now] { return now; };
  options.limits.max_series = 30 + kLocations * kBatches / 5 / 2;  // Half the new keys fit.
  Engine serial(options), laned(options);
  std::vector<v1::Ack> replayed;
  for (const v1::Batch& b : logged) {
    absl::StatusOr<v1::Ack> ack = serial.ApplyBatch(b, now);
    ASSERT_TRUE(ack.ok()) << ack.status();
    replayed.push_back(*ack);
  }

  char tmpl[] = "/tmp/constance-lanes-test.XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  std::vector<std::string> bytes;
  for (const v1::Batch& b : logged) bytes.push_back(b.SerializeAsString());
  std::vector<BatchView> views;
  for (const v1::Batch& b : logged) views.push_back(ViewOf(b));
  std::vector<v1::Ack> acked(logged.size());
  std::atomic<int> beside{0}, alone{0}, failed{0};
  {
    BatchLog::Options log_options;
    log_options.apply_threads = 3;
    absl::StatusOr<std::unique_ptr<BatchLog>> log =
        BatchLog::Open(dir + "/batches.db", log_options);
    ASSERT_TRUE(log.ok()) << log.status();
    // The first round makes the locations, streams and series (applied
    // as from an earlier group); the rest is queued before the log
    // starts, so its committer takes it as one group, whatever the
    // machine's speed: lanes with cells to update, and batches that must
    // wait (new keys, rejections) among them.
    for (size_t i = 0; i < first_round; ++i) {
      absl::StatusOr<v1::Ack> ack = laned.ApplyBatch(views[i], now);
      ASSERT_TRUE(ack.ok()) << ack.status();
      acked[i] = *std::move(ack);
    }
    for (size_t i = first_round; i < logged.size(); ++i) {
      const uint64_t lane = absl::HashOf(logged[i].location());
      (*log)->Append(
          bytes[i], now, lane,
          [&, i] {
            std::optional<v1::Ack> ack =
                laned.ApplyBeside(views[i], now, 0, laned.CheckBatch(views[i], now));
            if (!ack.has_value()) return false;
            acked[i] = *std::move(ack);
            ++beside;
            return true;
          },
          [&, i](absl::Status committed) {
            absl::StatusOr<v1::Ack> ack = laned.ApplyBatch(views[i], now);
            if (!committed.ok() || !ack.ok()) ++failed;
            if (ack.ok()) acked[i] = *std::move(ack);
            ++alone;
          });
    }
    (*log)->Start();
  }  // Commits and applies what is queued, then stops.
  std::system(("rm -rf " + dir).c_str());
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(beside.load() + alone.load(), static_cast<int>(logged.size() - first_round));
  // Both ways were taken (with three threads, lanes ran beside each other).
  EXPECT_GT(beside.load(), 0);
  EXPECT_GT(alone.load(), 0);

  for (size_t i = 0; i < logged.size(); ++i) {
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(acked[i], replayed[i]))
        << "batch " << i << " (" << logged[i].location() << ", from " << logged[i].first_sequence()
        << "): acknowledged " << acked[i].ShortDebugString() << ", replayed "
        << replayed[i].ShortDebugString();
  }
  state::v1::EngineState expected, got;
  ASSERT_TRUE(expected.ParseFromString(serial.SaveState()));
  ASSERT_TRUE(got.ParseFromString(laned.SaveState()));
  EXPECT_GT(expected.counters().rejected(), 0u);
  EXPECT_GT(expected.counters().rejected_by_reason().count("series"), 0u);
  ExpectAlike(expected, got);
}

// Snapshots taken while batches apply, as the collector takes them: the
// capture's steps on other threads than ingest (Begin on one of its own, as
// the batch log's applier runs it). Each capture must be one moment's state:
// every price cell holds the value of the batch its location's high-water
// mark ends at, and exactly the series created up to then are in it.
TEST(EngineConcurrencyTest, CapturesTakenDuringIngestAreEachOneMomentsState) {
  constexpr int kBatches = 400;
  constexpr int kFixedKeys = 3;
  Engine engine(Engine::Options{});
  const absl::Time start = absl::Now() - absl::Hours(1);
  auto batch_of = [&](int writer, int b) {
    v1::Batch batch;
    batch.set_location(absl::StrCat("store-", writer));
    batch.set_incarnation(1);
    batch.set_first_sequence(static_cast<uint64_t>(b) * (kFixedKeys + 1) + 1);
    for (int k = 0; k <= kFixedKeys; ++k) {
      v1::Observation* o = batch.add_observations();
      o->mutable_observed_at()->set_seconds(absl::ToUnixSeconds(start + absl::Seconds(b)));
      // The last key is new in every batch: series are created mid-capture.
      o->set_key(k < kFixedKeys ? absl::StrCat("sku-", k) : absl::StrCat("new-", writer, "-", b));
      o->mutable_price()->set_minor_units(1000 + b);
      o->mutable_price()->set_currency("EUR");
    }
    return batch;
  };
  std::atomic<int> ack_errors{0};
  std::atomic<bool> writing{true};
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      for (int b = 0; b < kBatches; ++b) {
        absl::StatusOr<v1::Ack> ack = engine.ApplyBatch(batch_of(w, b));
        if (!ack.ok() || ack->rejections_size() != 0) ++ack_errors;
      }
    });
  }
  int captures = 0;
  int inconsistent = 0;
  std::thread snapshots([&] {
    while (writing.load()) {
      std::shared_ptr<Engine::StateCapture> capture = engine.PrepareCapture();
      std::thread([&] { engine.BeginCapture(capture); }).join();
      state::v1::EngineState state;
      if (!state.ParseFromString(engine.FinishCapture(capture))) {
        ++inconsistent;
        continue;
      }
      ++captures;
      std::map<uint32_t, int64_t> last_value;  // By location index: its last batch's price.
      int64_t new_series = 0;
      for (const state::v1::Stream& s : state.streams()) {
        last_value[s.location()] =
            1000 + static_cast<int64_t>(s.watermark()) / (kFixedKeys + 1) - 1;
        new_series += static_cast<int64_t>(s.watermark()) / (kFixedKeys + 1);
      }
      for (const state::v1::Series& s : state.series()) {
        if (absl::StartsWith(s.id().key(), "new-")) {
          --new_series;
          continue;
        }
        for (const state::v1::PriceCell& c : s.price()) {
          if (c.minor_units() != last_value[c.location()]) ++inconsistent;
        }
      }
      if (new_series != 0) ++inconsistent;
    }
  });
  for (std::thread& t : writers) t.join();
  writing.store(false);
  snapshots.join();
  EXPECT_EQ(ack_errors.load(), 0);
  EXPECT_GT(captures, 0);
  EXPECT_EQ(inconsistent, 0);
}

TEST(EngineConcurrencyTest, StopWhileTicksRunIsPromptAndIdempotent) {
  for (int i = 0; i < 20; ++i) {
    Engine::Options options;
    options.catalog = FastCatalog(3.5);
    Engine engine(options);
    engine.Start();
    ASSERT_TRUE(engine.ApplyBatch(MakeBatch(i % kWriters, 0, absl::Now())).ok());
    engine.Stop();
    engine.Stop();
  }  // The destructor stops again.
}

// A stop requested while an evaluation is in progress ends it at the next
// series: it publishes nothing and opens no finding, and the series it did
// not reach are recomputed by the next tick.
TEST(EngineConcurrencyTest, AStopRequestedMidEvaluationAbandonsIt) {
  std::atomic<int> recomputed{0};
  Engine* engine_ptr = nullptr;
  Engine::Options options;
  options.catalog = FastCatalog(3.5);
  options.before_series = [&] {
    // The first series of the evaluation: a shutdown arrives now.
    if (recomputed.fetch_add(1) == 0) engine_ptr->RequestStop();
  };
  Engine engine(options);
  engine_ptr = &engine;
  for (int w = 0; w < kWriters; ++w) {
    ASSERT_TRUE(engine.ApplyBatch(MakeBatch(w, 0, absl::Now())).ok());
  }
  engine.Evaluate();
  EXPECT_EQ(recomputed.load(), 1) << "the evaluation went on past the stop";
  ASSERT_NE(engine.snapshot()->findings, nullptr);
  EXPECT_EQ(engine.snapshot()->findings->evaluated_at, absl::InfinitePast())
      << "an abandoned evaluation published findings";
  EXPECT_EQ(engine.snapshot()->series.size(), 0u);

  // Started again, the ticks compute every series, those the abandoned
  // pass left included (they were marked dirty again).
  engine.Start();
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  std::shared_ptr<const Snapshot> snap = engine.snapshot();
  while (
      (snap->series.size() < kPerBatch || snap->findings->evaluated_at == absl::InfinitePast()) &&
      absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));  // Polling the ticks, with a deadline.
    snap = engine.snapshot();
  }
  engine.Stop();
  EXPECT_EQ(snap->series.size(), static_cast<size_t>(kPerBatch));
  EXPECT_NE(snap->findings->evaluated_at, absl::InfinitePast());
}

}  // namespace
}  // namespace constance::collector
