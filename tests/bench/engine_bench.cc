// The collector's engine on one core: observations applied per second with
// every cell of a 10,000-location x 1,000-key chain already present, and
// resident bytes per cell, per family. Also the cost of one full
// evaluation (statistics and findings over every cell), and of taking and
// loading a snapshot of the whole state.
//
//   engine_bench                        # full size (10M price, compliance and
//                                       # score cells, 1M wait cells)
//   engine_bench --family=wait --locations=10000   # one family, 10M cells
//   engine_bench --smoke                # tiny, for ctest
//
// --family (price, wait, compliance, score; default all) registers only
// that family's benchmarks, so each family can run in its own process and
// its resident growth is its own. --locations overrides the chain's
// locations (1,000 keys each); --iterations the evaluations and snapshots
// timed (default 3); --exceptions=N gives the catalog N approved
// exceptions, each for one store and key of the chain (spread over both);
// --list_prices gives the price family's catalog a chain-wide list price
// (a price promise) for every key, as a chain that publishes its price
// list has; --zones=N declares every location with a `zone` label (N
// values) and compares each key's locations per zone (a peer-group rule),
// as a chain with price zones is;
// --evaluation_threads=N recomputes series on N threads (default 1). The
// evaluations' CPU time is the process's, every thread's.
//
// Figures and the command that produced them: tests/bench/RESULTS.md.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "benchmark/benchmark.h"
#include "collector/engine.h"

namespace constance::collector {
namespace {

// Set by a benchmark whose engine call failed: the run then exits 1, so
// the smoke run in ctest fails (SkipWithError alone only prints).
std::atomic<bool> g_failed{false};

void Fail(benchmark::State& state, const std::string& why) {
  g_failed.store(true);
  state.SkipWithError(why.c_str());
}

bool g_smoke = false;
int g_locations = 0;  // 0: the family's default.
int g_exceptions = 0;
bool g_list_prices = false;
int g_zones = 0;               // Peer groups by a `zone` label; 0: the chain is one group.
int g_evaluation_threads = 1;  // Engine::Options::evaluation_threads.
const absl::Time kNow = absl::FromUnixSeconds(1'767'225'600);

double ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return static_cast<double>(resident) * sysconf(_SC_PAGESIZE);
}

struct Chain {
  int locations;
  int keys;
  std::unique_ptr<Engine> engine;
  std::vector<uint64_t> next_seq;
  double bytes_per_cell = 0;
};

v1::Batch MakeBatch(Chain& c, int location, v1::Family family, int first_key, int count,
                    int round) {
  v1::Batch b;
  b.set_location(absl::StrCat("store-", location));
  b.set_incarnation(1);
  b.set_first_sequence(c.next_seq[location]);
  c.next_seq[location] += count;
  for (int k = 0; k < count; ++k) {
    v1::Observation* o = b.add_observations();
    o->set_key(absl::StrCat("item-", (first_key + k) % c.keys));
    o->mutable_observed_at()->set_seconds(absl::ToUnixSeconds(kNow) + round);
    switch (family) {
      case v1::FAMILY_PRICE:
        o->mutable_price()->set_minor_units(100 + (location + k + round) % 7);
        o->mutable_price()->set_currency("EUR");
        break;
      case v1::FAMILY_WAIT:
        o->set_wait_seconds(120 + (location * 7 + k + round) % 90);
        break;
      case v1::FAMILY_COMPLIANCE:
        o->mutable_check()->set_passed((location + k + round) % 10 != 0);
        break;
      default:
        o->set_score(50 + (location * 3 + k + round) % 20);
        break;
    }
  }
  return b;
}

// Builds (once per family) a chain with every cell present and measures
// the resident memory it added.
Chain& Fixture(v1::Family family) {
  static std::map<v1::Family, Chain*> chains;
  Chain*& c = chains[family];
  if (c != nullptr) return *c;
  c = new Chain;
  c->locations = g_smoke                     ? 50
                 : g_locations > 0           ? g_locations
                 : family == v1::FAMILY_WAIT ? 1'000
                                             : 10'000;
  c->keys = g_smoke ? 20 : 1'000;
  Catalog catalog = DefaultCatalog();
  catalog.wait.min_samples = 1;
  catalog.compliance.min_samples = 1;
  for (int e = 0; e < g_exceptions; ++e) {
    Exception& x = catalog.exceptions.emplace_back();
    x.location = absl::StrCat("store-", e * 7919 % c->locations);
    x.family = family;
    x.key = absl::StrCat("item-", e % c->keys);
    x.owner = "bench";
    x.reason = "approved";
  }
  for (int l = 0; g_zones > 0 && l < c->locations; ++l) {
    LocationEntry& entry = catalog.locations.emplace_back();
    entry.id = absl::StrCat("store-", l);
    entry.labels["zone"] = absl::StrCat("zone-", l % g_zones);
  }
  if (g_zones > 0) {
    PeerGroupRule& zone = catalog.peer_groups.emplace_back();
    zone.name = "zone";
    zone.label = "zone";
  }
  for (int k = 0; g_list_prices && family == v1::FAMILY_PRICE && k < c->keys; ++k) {
    PricePromise& p = catalog.price_promises.emplace_back();
    p.key = absl::StrCat("item-", k);
    p.currency = "EUR";
    p.list_minor_units = 103;
  }
  catalog.Index();
  Engine::Options options;
  options.catalog = std::make_shared<const Catalog>(catalog);
  options.clock = [] { return kNow + absl::Minutes(1); };
  options.evaluation_threads = g_evaluation_threads;
  const double before = ResidentBytes();
  c->engine = std::make_unique<Engine>(options);
  c->next_seq.assign(c->locations, 1);
  for (int l = 0; l < c->locations; ++l) {
    for (int k = 0; k < c->keys; k += 1000) {
      const int n = std::min(1000, c->keys - k);
      (void)c->engine->ApplyBatch(MakeBatch(*c, l, family, k, n, 0));
    }
  }
  const double cells = static_cast<double>(c->locations) * c->keys;
  c->bytes_per_cell = (ResidentBytes() - before) / cells;
  return *c;
}

// Batches of 1,000 observations onto existing cells, as agents send them.
void BM_Apply(benchmark::State& state, v1::Family family) {
  Chain& c = Fixture(family);
  // MakeBatch numbers each batch after the previous one; these are
  // renumbered as they are applied, so the sequences they took are given
  // back (else every batch would start past a gap: OUT_OF_ORDER, nothing
  // applied).
  const std::vector<uint64_t> next_seq = c.next_seq;
  std::vector<v1::Batch> batches;
  for (int i = 0; i < 64; ++i) {
    batches.push_back(
        MakeBatch(c, (i * 7919) % c.locations, family, i * 13, std::min(1000, c.keys), i + 1));
  }
  c.next_seq = next_seq;
  size_t i = 0;
  int64_t applied = 0;
  for (auto _ : state) {
    // Renumber so every batch is new data, not a duplicate.
    v1::Batch& b = batches[i++ % batches.size()];
    const int loc = std::stoi(b.location().substr(6));
    b.set_first_sequence(c.next_seq[loc]);
    c.next_seq[loc] += b.observations_size();
    absl::StatusOr<v1::Ack> ack = c.engine->ApplyBatch(b);
    if (!ack.ok() || ack->outcome() != v1::Ack::APPLIED) {
      Fail(state, ack.ok() ? "a batch was not applied (OUT_OF_ORDER)"
                           : std::string(ack.status().message()));
      break;
    }
    applied += ack->applied();
  }
  state.SetItemsProcessed(applied);
  state.counters["cells"] = static_cast<double>(c.locations) * c.keys;
  state.counters["bytes_per_cell"] = c.bytes_per_cell;
}

// One evaluation tick over every cell: statistics per group and findings.
// Setting the catalog again before each marks every series changed, so
// each evaluation recomputes all of them (what a catalog reload costs).
void BM_Evaluate(benchmark::State& state, v1::Family family) {
  Chain& c = Fixture(family);
  for (auto _ : state) {
    state.PauseTiming();
    if (auto catalog = c.engine->snapshot()->catalog; catalog != nullptr) {
      c.engine->SetCatalog(catalog);
    }
    state.ResumeTiming();
    c.engine->Evaluate();
  }
  state.counters["cells"] = static_cast<double>(c.locations) * c.keys;
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(c.locations) * c.keys);
}

// One evaluation after 1% of the cells changed (applied before it, not
// timed): `spread` false, 1% of the keys at every location (a price
// change going out: 1% of the series); true, every key at 1% of the
// locations (their agents' daily sends: every series).
void BM_EvaluateChanged(benchmark::State& state, v1::Family family, bool spread) {
  Chain& c = Fixture(family);
  c.engine->Evaluate();  // Every series' outcome in place.
  static int round = 10;
  const int keys = std::max(1, c.keys / 100);
  for (auto _ : state) {
    state.PauseTiming();
    ++round;
    if (spread) {
      for (int i = 0; i < std::max(1, c.locations / 100); ++i) {
        const int l = (i * 7919 + round) % c.locations;
        (void)c.engine->ApplyBatch(MakeBatch(c, l, family, 0, std::min(1000, c.keys), round));
      }
    } else {
      for (int l = 0; l < c.locations; ++l) {
        (void)c.engine->ApplyBatch(MakeBatch(c, l, family, round * keys, keys, round));
      }
    }
    state.ResumeTiming();
    c.engine->Evaluate();
  }
  state.counters["cells"] = static_cast<double>(c.locations) * c.keys;
}

// A snapshot of every cell (what the collector stores every
// --snapshot_interval) taken at once, and loading it (a restart).
void BM_SnapshotSave(benchmark::State& state, v1::Family family) {
  Chain& c = Fixture(family);
  size_t bytes = 0;
  for (auto _ : state) bytes = c.engine->SaveState().size();
  state.counters["cells"] = static_cast<double>(c.locations) * c.keys;
  state.counters["bytes_per_cell"] = static_cast<double>(bytes) / (c.locations * c.keys);
}

// Batches of up to 1,000 observations onto existing cells, and what applying
// one takes (ms), renumbered each time so every batch is new data.
class TimedApplies {
 public:
  TimedApplies(Chain& c, v1::Family family) : c_(c) {
    const std::vector<uint64_t> next_seq = c.next_seq;
    for (int i = 0; i < 64; ++i) {
      batches_.push_back(
          MakeBatch(c, (i * 7919) % c.locations, family, i * 13, std::min(1000, c.keys), i + 1));
    }
    c.next_seq = next_seq;
  }
  double ApplyOne() {
    v1::Batch& b = batches_[i_++ % batches_.size()];
    const int loc = std::stoi(b.location().substr(6));
    b.set_first_sequence(c_.next_seq[loc]);
    c_.next_seq[loc] += b.observations_size();
    const absl::Time t0 = absl::Now();
    absl::StatusOr<v1::Ack> ack = c_.engine->ApplyBatch(b);
    const double ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
    if (!ack.ok() || ack->outcome() != v1::Ack::APPLIED) {
      if (!g_failed.exchange(true)) {
        std::fprintf(stderr, "engine_bench: a batch under ingest was not applied: %s\n",
                     ack.ok() ? "OUT_OF_ORDER" : std::string(ack.status().message()).c_str());
      }
    }
    return ms;
  }

 private:
  Chain& c_;
  std::vector<v1::Batch> batches_;
  size_t i_ = 0;
};

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1))];
}

// A snapshot taken as the collector takes it (engine.h, PrepareCapture):
// BeginCapture under the engine's lock, then FinishCapture on another
// thread while this one applies batches of 1,000 onto existing cells, as
// ingest does meanwhile. Reports the time BeginCapture held the lock, and
// each batch's apply time while the capture runs (which includes copying
// the series it changes first, and waiting for FinishCapture's chunks)
// beside the same batches' apply time with no capture.
void BM_SnapshotUnderIngest(benchmark::State& state, v1::Family family) {
  Chain& c = Fixture(family);
  TimedApplies applies(c, family);
  auto apply_one = [&] { return applies.ApplyOne(); };
  auto percentile = Percentile;
  double begin_ms = 0, finish_ms = 0;
  std::vector<double> during, idle;
  for (auto _ : state) {
    std::shared_ptr<Engine::StateCapture> capture = c.engine->PrepareCapture();
    const absl::Time t0 = absl::Now();
    c.engine->BeginCapture(capture);
    begin_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
    std::atomic<bool> finished{false};
    std::thread finisher([&] {
      const absl::Time f0 = absl::Now();
      benchmark::DoNotOptimize(c.engine->FinishCapture(capture).size());
      finish_ms = absl::ToDoubleMilliseconds(absl::Now() - f0);
      finished.store(true);
    });
    during.clear();
    while (!finished.load()) during.push_back(apply_one());
    finisher.join();
    idle.clear();
    for (size_t k = 0; k < during.size(); ++k) idle.push_back(apply_one());
  }
  state.counters["cells"] = static_cast<double>(c.locations) * c.keys;
  state.counters["begin_ms"] = begin_ms;
  state.counters["finish_ms"] = finish_ms;
  state.counters["batches_during"] = static_cast<double>(during.size());
  state.counters["apply_p50_ms"] = percentile(during, 0.5);
  state.counters["apply_p99_ms"] = percentile(during, 0.99);
  state.counters["apply_max_ms"] = percentile(during, 1.0);
  state.counters["idle_p50_ms"] = percentile(idle, 0.5);
  state.counters["idle_p99_ms"] = percentile(idle, 0.99);
}

// LocationScorecard asked 20 times in a row on another thread (a dashboard
// of stores) while this one applies batches of 1,000 onto existing cells.
// Reports each scorecard's time and each batch's apply time meanwhile
// (a scorecard holds the engine's lock while it reads the location's
// cells), beside the same batches' apply time with no queries.
// state.range(0) threads each ask 20 scorecards (two dashboards at once:
// the queries hold the ingest lock shared, so they overlap).
void BM_ScorecardUnderIngest(benchmark::State& state, v1::Family family) {
  Chain& c = Fixture(family);
  TimedApplies applies(c, family);
  const int queriers = static_cast<int>(state.range(0));
  std::vector<double> during, idle, cards;
  double queries_ms = 0;
  for (auto _ : state) {
    std::atomic<int> running{queriers};
    std::vector<std::vector<double>> times(queriers);
    std::vector<std::thread> threads;
    const absl::Time start = absl::Now();
    for (int t = 0; t < queriers; ++t) {
      threads.emplace_back([&, t] {
        for (int q = 0; q < 20; ++q) {
          const absl::Time t0 = absl::Now();
          benchmark::DoNotOptimize(
              c.engine->LocationScorecard(absl::StrCat("store-", (q + 20 * t) * 37 % c.locations)));
          times[t].push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
        }
        running.fetch_sub(1);
      });
    }
    during.clear();
    while (running.load() > 0) during.push_back(applies.ApplyOne());
    for (std::thread& t : threads) t.join();
    queries_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
    cards.clear();
    for (const auto& v : times) cards.insert(cards.end(), v.begin(), v.end());
    idle.clear();
    for (size_t k = 0; k < during.size(); ++k) idle.push_back(applies.ApplyOne());
  }
  state.counters["cells"] = static_cast<double>(c.locations) * c.keys;
  state.counters["scorecard_p50_ms"] = Percentile(cards, 0.5);
  state.counters["scorecard_max_ms"] = Percentile(cards, 1.0);
  state.counters["scorecards_per_s"] = static_cast<double>(cards.size()) / queries_ms * 1000;
  state.counters["batches_during"] = static_cast<double>(during.size());
  state.counters["apply_p99_ms"] = Percentile(during, 0.99);
  state.counters["apply_max_ms"] = Percentile(during, 1.0);
  state.counters["idle_p99_ms"] = Percentile(idle, 0.99);
}

void BM_SnapshotLoad(benchmark::State& state, v1::Family family) {
  Chain& c = Fixture(family);
  const std::string saved = c.engine->SaveState();
  for (auto _ : state) {
    Engine restored{Engine::Options{}};
    absl::Status s = restored.LoadState(saved);
    if (!s.ok()) Fail(state, std::string(s.message()));
  }
  state.counters["cells"] = static_cast<double>(c.locations) * c.keys;
}

}  // namespace
}  // namespace constance::collector

int main(int argc, char** argv) {
  std::vector<char*> args;
  std::string only_family;
  int evaluations = 0;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--smoke") == 0) {
      constance::collector::g_smoke = true;
    } else if (std::strncmp(argv[i], "--family=", 9) == 0) {
      only_family = argv[i] + 9;
    } else if (std::strncmp(argv[i], "--locations=", 12) == 0) {
      constance::collector::g_locations = std::atoi(argv[i] + 12);
    } else if (std::strncmp(argv[i], "--exceptions=", 13) == 0) {
      constance::collector::g_exceptions = std::max(0, std::atoi(argv[i] + 13));
    } else if (std::strncmp(argv[i], "--zones=", 8) == 0) {
      constance::collector::g_zones = std::max(0, std::atoi(argv[i] + 8));
    } else if (std::strcmp(argv[i], "--list_prices") == 0) {
      constance::collector::g_list_prices = true;
    } else if (std::strncmp(argv[i], "--evaluation_threads=", 21) == 0) {
      constance::collector::g_evaluation_threads = std::max(1, std::atoi(argv[i] + 21));
    } else if (std::strncmp(argv[i], "--iterations=", 13) == 0) {
      evaluations = std::max(1, std::atoi(argv[i] + 13));
    } else {
      args.push_back(argv[i]);
    }
  }
  int n = static_cast<int>(args.size());
  using constance::v1::FAMILY_COMPLIANCE;
  using constance::v1::FAMILY_PRICE;
  using constance::v1::FAMILY_SCORE;
  using constance::v1::FAMILY_WAIT;
  if (evaluations == 0) evaluations = constance::collector::g_smoke ? 1 : 3;
  const std::pair<const char*, constance::v1::Family> families[] = {
      {"price", FAMILY_PRICE},
      {"wait", FAMILY_WAIT},
      {"compliance", FAMILY_COMPLIANCE},
      {"score", FAMILY_SCORE}};
  bool known = only_family.empty();
  for (auto [name, family] : families) known = known || only_family == name;
  if (!known) {
    std::fprintf(stderr, "engine_bench: --family must be price, wait, compliance or score\n");
    return 2;
  }
  for (auto [name, family] : families) {
    if (!only_family.empty() && only_family != name) continue;
    benchmark::RegisterBenchmark(absl::StrCat("apply/", name).c_str(),
                                 constance::collector::BM_Apply, family)
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(absl::StrCat("evaluate/", name).c_str(),
                                 constance::collector::BM_Evaluate, family)
        ->Unit(benchmark::kMillisecond)
        ->MeasureProcessCPUTime()  // The evaluation's threads, all of them.
        ->Iterations(evaluations);
    for (bool spread : {false, true}) {
      benchmark::RegisterBenchmark(
          absl::StrCat("evaluate_1pct_", spread ? "locations/" : "keys/", name).c_str(),
          constance::collector::BM_EvaluateChanged, family, spread)
          ->Unit(benchmark::kMillisecond)
          ->MeasureProcessCPUTime()
          ->Iterations(evaluations);
    }
    benchmark::RegisterBenchmark(absl::StrCat("snapshot_save/", name).c_str(),
                                 constance::collector::BM_SnapshotSave, family)
        ->Unit(benchmark::kMillisecond)
        ->Iterations(evaluations);
    benchmark::RegisterBenchmark(absl::StrCat("snapshot_under_ingest/", name).c_str(),
                                 constance::collector::BM_SnapshotUnderIngest, family)
        ->Unit(benchmark::kMillisecond)
        ->Iterations(1)
        ->UseRealTime();
    benchmark::RegisterBenchmark(absl::StrCat("scorecard_under_ingest/", name).c_str(),
                                 constance::collector::BM_ScorecardUnderIngest, family)
        ->Arg(1)
        ->Arg(2)
        ->Unit(benchmark::kMillisecond)
        ->Iterations(1)
        ->UseRealTime();
    benchmark::RegisterBenchmark(absl::StrCat("snapshot_load/", name).c_str(),
                                 constance::collector::BM_SnapshotLoad, family)
        ->Unit(benchmark::kMillisecond)
        ->Iterations(evaluations);
  }
  benchmark::Initialize(&n, args.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return constance::collector::g_failed.load() ? 1 : 0;
}
