// The fault-injection suite: nothing acknowledged to a local writer is lost
// or counted twice, whatever happens between the agents and the collector
// (issue 4, docs/design.md "Delivery guarantees").
//
// Real processes on loopback: one collector with a durable state directory
// and kAgents agents with durable spools, each agent dialing the collector
// through its own TcpProxy. One writer thread per agent posts score
// observations over the agent's HTTP API and records exactly what was
// acknowledged (HTTP 200): per (location, key) the count and the sum of the
// values. Meanwhile one fault thread, driven by a seeded random generator:
//   - SIGKILLs the collector at random moments and restarts it on the same
//     --state_dir (at least 10 times);
//   - SIGKILLs an agent right after it acknowledged a write, and restarts it
//     on the same spool;
//   - drops every connection of a proxy, and black-holes one for a while;
//   - black-holes the agent with a small spool (refuse policy) until its
//     writer is refused with 507, then lets it drain;
//   - waits until one agent's spool is drained, SIGKILLs it, wipes its spool
//     and restarts it: a new incarnation, whose observations must be
//     applied, not dropped as duplicates;
//   - keeps one agent offline for most of the run, its writer stamping
//     observations two to four days old (within the collector's 7 d
//     max_lateness and the score family's 30 d window), then lets its
//     backlog drain.
// At the end every agent's spool drains, and the collector's per-location
// sample count and mean of every key (Query.KeyDetail) must equal what the
// writers were acknowledged, and ChainSummary's applied count the total.
//
// Environment:
//   CONSTANCE_FAULTS_SEED          replay a run (the seed is printed)
//   CONSTANCE_FAULTS_OBSERVATIONS  acknowledged observations to reach
//                                  (default 200000)
//   CONSTANCE_FAULTS_COLLECTOR_KILLS  (default 12)
//
// Pauses between faults and the writers' pacing are part of the workload;
// every wait for a state polls a condition with a deadline.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "constance/v1/query.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/faults/tcp_proxy.h"
#include "tests/integration/harness.h"

namespace constance::testing {
namespace {

constexpr int kAgents = 4;
constexpr int kKeys = 10;
// Roles, by agent index.
constexpr int kWiped = 0;       // Spool wiped and restarted mid-run.
constexpr int kKilled = 1;      // SIGKILLed right after acknowledgements.
constexpr int kSmallSpool = 2;  // A small spool_max_observations.
constexpr int kOffline = 3;     // Offline most of the run; late observations.

uint64_t EnvOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  uint64_t out = 0;
  return v != nullptr && absl::SimpleAtoi(v, &out) ? out : fallback;
}

// Polls `ready` every 10 ms until it holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& ready, absl::Duration timeout) {
  for (absl::Time deadline = absl::Now() + timeout;;) {
    if (ready()) return true;
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
}

// The collector, restartable on the same state directory.
class CollectorProcess {
 public:
  explicit CollectorProcess(const TempDir& dir) : dir_(dir) {}

  absl::Status Start() {
    const std::string ready = dir_.File("collector.ready");
    std::filesystem::remove(ready);
    std::filesystem::create_directories(dir_.File("collector-state"));
    process_ = std::make_unique<Subprocess>(
        std::vector<std::string>{
            BinDir() + "/constance-collector", "--insecure", "--listen=127.0.0.1:0",
            "--metrics_listen=127.0.0.1:0", "--state_dir=" + dir_.File("collector-state"),
            "--stats_interval=100ms", "--log_level=warn", "--ready_file=" + ready},
        dir_.File("collector.log"));
    auto r = WaitForReadyFile(ready, *process_, absl::Seconds(60));
    if (!r.ok()) return r.status();
    address_ = (*r)["grpc"];
    return absl::OkStatus();
  }
  void Kill() {
    if (process_ != nullptr) (void)process_->Stop(SIGKILL, absl::Seconds(10));
  }
  const std::string& address() const { return address_; }
  std::string Log() const { return process_ != nullptr ? process_->Log() : ""; }

 private:
  const TempDir& dir_;
  std::unique_ptr<Subprocess> process_;
  std::string address_;
};

// One agent: its process, spool, proxy, and what its writer was told.
struct Agent {
  int index = 0;
  std::string location;
  std::string dir;
  TcpProxy proxy;
  std::unique_ptr<Subprocess> process;
  int starts = 0;
  uint64_t spool_max_observations = 0;  // 0: the default bound.

  absl::Mutex mu;
  std::string http ABSL_GUARDED_BY(mu);  // Empty while down.

  // Writer state.
  std::atomic<uint64_t> accepted{0};
  std::atomic<uint64_t> refused_full{0};
  std::atomic<uint64_t> requests_acknowledged{0};
  std::atomic<bool> paused{false};
  std::atomic<bool> idle{false};  // Paused and no request in flight.
  std::atomic<bool> done{false};
  std::string writer_error;  // Set by the writer thread before done.
  // (count, sum of values) acknowledged per key. Owned by the writer
  // thread until it is joined.
  std::map<std::string, std::pair<uint64_t, int64_t>> acknowledged;

  std::string Http() {
    absl::MutexLock lock(&mu);
    return http;
  }
  std::string SpoolPath() const { return dir + "/spool.db"; }

  absl::Status Start(const TempDir& root) {
    const std::string ready = dir + "/ready";
    std::filesystem::remove(ready);
    std::string config =
        absl::StrCat("location: ", location, "\ncollector: 127.0.0.1:", proxy.port(),
                     "\ninsecure: true\nlisten: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\n"
                     "flush_interval: 20ms\nbackoff_initial: 100ms\nbackoff_max: 1s\n"
                     "heartbeat_interval: 1s\ndrain_timeout: 2s\nspool_path: ",
                     SpoolPath(), "\n");
    if (spool_max_observations > 0) {
      absl::StrAppend(&config, "spool_max_observations: ", spool_max_observations, "\n");
    }
    std::ofstream(dir + "/agent.yaml") << config;
    process = std::make_unique<Subprocess>(
        std::vector<std::string>{BinDir() + "/constance-agent", "run",
                                 "--config=" + dir + "/agent.yaml", "--log_level=warn",
                                 "--ready_file=" + ready},
        root.File(location + ".log"));
    ++starts;
    auto r = WaitForReadyFile(ready, *process, absl::Seconds(60));
    if (!r.ok()) return r.status();
    absl::MutexLock lock(&mu);
    http = (*r)["http"];
    return absl::OkStatus();
  }
  void Kill() {
    {
      absl::MutexLock lock(&mu);
      http.clear();
    }
    if (process != nullptr) (void)process->Stop(SIGKILL, absl::Seconds(10));
  }
  // The spool depth /healthz reports, or -1 if the agent does not answer.
  int64_t SpoolDepth() {
    const std::string address = Http();
    if (address.empty()) return -1;
    auto r = HttpGet(address, "/healthz");
    if (!r.ok() || r->status != 200) return -1;
    auto j = nlohmann::json::parse(r->body, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("spool_depth")) return -1;
    return j["spool_depth"].get<int64_t>();
  }
};

// Posts observations to `agent` until `quota` are acknowledged, paced to
// spread them over `duration`. Each request is retried with the same item
// ids until the agent answers, so a request cut by a SIGKILL is stored once
// whether or not it reached the spool first.
void Writer(Agent* agent, uint64_t quota, absl::Duration duration, uint64_t seed,
            const std::atomic<bool>* abort) {
  std::mt19937_64 rng(seed);
  const absl::Time start = absl::Now();
  uint64_t next_id = 0;
  int generation = 0;  // Ids restart per generation after a refusal.
  auto fail = [agent](std::string why) {
    agent->writer_error = std::move(why);
    agent->done = true;
  };
  while (agent->accepted.load() < quota) {
    if (abort->load()) return fail("aborted");
    if (agent->paused.load()) {
      agent->idle = true;
      while (agent->paused.load() && !abort->load()) absl::SleepFor(absl::Milliseconds(5));
      agent->idle = false;
      continue;
    }
    const int n = std::uniform_int_distribution<int>(50, 250)(rng);
    nlohmann::json items = nlohmann::json::array();
    std::map<std::string, std::pair<uint64_t, int64_t>> batch;
    const absl::Time now = absl::Now();
    for (int i = 0; i < n; ++i) {
      const std::string key =
          absl::StrCat("k", std::uniform_int_distribution<int>(0, kKeys - 1)(rng));
      const int64_t value = std::uniform_int_distribution<int64_t>(0, 1000)(rng);
      // Late for the offline agent (a backlog after a long outage), recent
      // for the others.
      const absl::Duration age =
          agent->index == kOffline
              ? absl::Hours(48) +
                    absl::Seconds(std::uniform_int_distribution<int>(0, 48 * 3600)(rng))
              : absl::Seconds(std::uniform_int_distribution<int>(0, 3600)(rng));
      items.push_back(
          {{"key", key},
           {"score", value},
           {"observed_at", absl::FormatTime(absl::RFC3339_sec, now - age, absl::UTCTimeZone())},
           {"id", absl::StrCat(agent->location, "-", generation, "-", next_id++)}});
      auto& [count, sum] = batch[key];
      ++count;
      sum += value;
    }
    const std::string body = items.dump();
    const absl::Time give_up = absl::Now() + absl::Seconds(120);
    bool settled = false;
    while (!settled) {
      if (abort->load()) return fail("aborted");
      if (absl::Now() > give_up) return fail("no answer from the agent for 120 s");
      const std::string address = agent->Http();
      if (address.empty()) {  // Down: the fault thread restarts it.
        absl::SleepFor(absl::Milliseconds(10));
        continue;
      }
      absl::StatusOr<HttpResponse> r = HttpPost(address, "/v1/observations", body);
      if (!r.ok() || r->status == 503) {  // Killed mid-request, or stopping.
        absl::SleepFor(absl::Milliseconds(10));
        continue;
      }
      if (r->status == 200) {
        for (const auto& [key, cs] : batch) {
          agent->acknowledged[key].first += cs.first;
          agent->acknowledged[key].second += cs.second;
        }
        agent->accepted += static_cast<uint64_t>(n);
        agent->requests_acknowledged += 1;
        settled = true;
      } else if (r->status == 507) {
        // Refused as a whole: nothing stored, nothing acknowledged. The
        // next request has new ids (these may be sent again as new data).
        agent->refused_full += static_cast<uint64_t>(n);
        ++generation;
        next_id = 0;
        absl::SleepFor(absl::Milliseconds(std::uniform_int_distribution<int>(50, 200)(rng)));
        settled = true;
      } else {
        return fail(absl::StrCat("unexpected HTTP ", r->status, ": ", r->body));
      }
    }
    // Pacing: the workload, not synchronisation.
    const absl::Time due = start + duration * (static_cast<double>(agent->accepted.load()) /
                                               static_cast<double>(quota));
    while (absl::Now() < due && !abort->load() && !agent->paused.load()) {
      absl::SleepFor(std::min(due - absl::Now(), absl::Milliseconds(50)));
    }
  }
  agent->done = true;
}

v1::KeyDetailResponse KeyDetail(const std::string& address, const std::string& key,
                                grpc::Status* status) {
  auto stub = v1::Query::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::KeyDetailRequest req;
  req.mutable_series()->set_family(v1::FAMILY_SCORE);
  req.mutable_series()->set_key(key);
  v1::KeyDetailResponse resp;
  *status = stub->KeyDetail(&ctx, req, &resp);
  return resp;
}

v1::ChainSummaryResponse Summary(const std::string& address) {
  auto stub = v1::Query::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::ChainSummaryResponse s;
  (void)stub->ChainSummary(&ctx, v1::ChainSummaryRequest(), &s);
  return s;
}

TEST(FaultSuite, NothingAcknowledgedIsLostOrCountedTwice) {
  const uint64_t seed = EnvOr("CONSTANCE_FAULTS_SEED", std::random_device()());
  const uint64_t total = EnvOr("CONSTANCE_FAULTS_OBSERVATIONS", 200'000);
  const int collector_kills = static_cast<int>(EnvOr("CONSTANCE_FAULTS_COLLECTOR_KILLS", 12));
  std::printf("faults: seed %llu (replay with CONSTANCE_FAULTS_SEED=%llu)\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  std::mt19937_64 rng(seed);
  auto pause = [&rng](double lo, double hi) {
    absl::SleepFor(absl::Seconds(std::uniform_real_distribution<double>(lo, hi)(rng)));
  };

  TempDir root;
  CollectorProcess collector(root);
  ASSERT_TRUE(collector.Start().ok()) << collector.Log();

  std::vector<std::unique_ptr<Agent>> agents;
  for (int i = 0; i < kAgents; ++i) {
    auto a = std::make_unique<Agent>();
    a->index = i;
    a->location = absl::StrCat("fault-", i);
    a->dir = root.File(a->location);
    std::filesystem::create_directories(a->dir);
    ASSERT_TRUE(a->proxy.Start(collector.address()).ok());
    if (i == kOffline) a->proxy.SetMode(TcpProxy::Mode::kRefuse);
    // Small enough that a few seconds of black hole fill it at the
    // writer's pace.
    if (i == kSmallSpool) a->spool_max_observations = std::clamp<uint64_t>(total / 60, 200, 3000);
    ASSERT_TRUE(a->Start(root).ok()) << a->process->Log();
    agents.push_back(std::move(a));
  }

  // Writers: the total split evenly, spread over the planned fault time.
  std::atomic<bool> abort{false};
  std::vector<std::thread> writers;
  const absl::Duration write_for = absl::Seconds(2.5 * collector_kills + 15);
  for (auto& a : agents) {
    writers.emplace_back(Writer, a.get(), (total + kAgents - 1) / kAgents, write_for, rng(),
                         &abort);
  }
  // Whatever happens below, every thread and process stops with the test.
  absl::Cleanup stop_all = [&] {
    abort = true;
    for (auto& a : agents) a->paused = false;
    for (std::thread& t : writers) {
      if (t.joinable()) t.join();
    }
    for (auto& a : agents) a->Kill();
    collector.Kill();
  };

  int collector_killed = 0, agent_kills = 0, partitions = 0;
  auto restart_collector = [&]() -> absl::Status {
    collector.Kill();
    ++collector_killed;
    pause(0, 0.5);  // Down for a moment, then back on the same state.
    if (absl::Status s = collector.Start(); !s.ok()) return s;
    for (auto& a : agents) a->proxy.SetUpstream(collector.address());
    return absl::OkStatus();
  };

  // The schedule: the agent-level faults in the first two thirds, so their
  // writers are still writing, collector kills and link faults throughout.
  enum Fault { kCollectorKill, kDrop, kBlackHole, kAgentKill, kFillSpool, kWipe, kReleaseOffline };
  std::vector<Fault> early = {kAgentKill, kAgentKill, kFillSpool, kWipe, kDrop, kBlackHole};
  std::vector<Fault> late = {kDrop, kBlackHole, kDrop};
  for (int i = 0; i < collector_kills; ++i) (i % 2 == 0 ? early : late).push_back(kCollectorKill);
  std::shuffle(early.begin(), early.end(), rng);
  std::shuffle(late.begin(), late.end(), rng);
  std::vector<Fault> schedule = early;
  schedule.push_back(kReleaseOffline);
  schedule.insert(schedule.end(), late.begin(), late.end());
  partitions = 1;  // The offline agent's.
  bool offline_held = true;

  for (Fault f : schedule) {
    pause(0.5, 2.0);
    // A link fault hits any agent but the one held offline.
    const int last = offline_held ? kAgents - 2 : kAgents - 1;
    static_assert(kOffline == kAgents - 1, "the offline agent is the last one");
    Agent* any = agents[std::uniform_int_distribution<int>(0, last)(rng)].get();
    switch (f) {
      case kCollectorKill:
        ASSERT_TRUE(restart_collector().ok()) << collector.Log();
        break;
      case kDrop:
        any->proxy.DropAll();
        ++partitions;
        break;
      case kBlackHole:
        any->proxy.SetMode(TcpProxy::Mode::kBlackHole);
        pause(1.0, 4.0);
        any->proxy.SetMode(TcpProxy::Mode::kForward);
        ++partitions;
        break;
      case kAgentKill: {
        Agent& a = *agents[kKilled];
        // Right after a local acknowledgement: those observations are only
        // in the spool.
        const uint64_t before = a.requests_acknowledged.load();
        ASSERT_TRUE(WaitFor([&] { return a.requests_acknowledged.load() > before || a.done; },
                            absl::Seconds(30)));
        a.Kill();
        ++agent_kills;
        ASSERT_TRUE(a.Start(root).ok()) << a.process->Log();
        break;
      }
      case kFillSpool: {
        Agent& a = *agents[kSmallSpool];
        const uint64_t before = a.refused_full.load();
        a.proxy.SetMode(TcpProxy::Mode::kBlackHole);
        EXPECT_TRUE(
            WaitFor([&] { return a.refused_full.load() > before || a.done; }, absl::Seconds(60)))
            << "the writer of the small spool was never refused";
        a.proxy.SetMode(TcpProxy::Mode::kForward);
        ++partitions;
        break;
      }
      case kWipe: {
        Agent& a = *agents[kWiped];
        a.paused = true;
        ASSERT_TRUE(WaitFor([&] { return a.idle.load() || a.done; }, absl::Seconds(60)));
        // Only a drained spool may be wiped without losing what it holds.
        ASSERT_TRUE(WaitFor([&] { return a.SpoolDepth() == 0; }, absl::Seconds(60)))
            << a.process->Log();
        a.Kill();
        ++agent_kills;
        for (const char* suffix : {"", "-wal", "-shm"}) {
          std::filesystem::remove(a.SpoolPath() + suffix);
        }
        ASSERT_TRUE(a.Start(root).ok()) << a.process->Log();
        a.paused = false;
        break;
      }
      case kReleaseOffline:
        agents[kOffline]->proxy.SetMode(TcpProxy::Mode::kForward);
        offline_held = false;
        break;
    }
  }

  // Everything acknowledged, then everything delivered.
  for (std::thread& t : writers) t.join();
  for (auto& a : agents) ASSERT_EQ(a->writer_error, "") << a->location;
  for (auto& a : agents) {
    EXPECT_TRUE(WaitFor([&] { return a->SpoolDepth() == 0; }, absl::Seconds(120)))
        << a->location << " did not drain:\n"
        << a->process->Log();
  }

  uint64_t accepted = 0;
  for (auto& a : agents) accepted += a->accepted.load();
  // The statistics tick publishes what ingest applied; wait for it.
  v1::ChainSummaryResponse summary;
  WaitFor(
      [&] {
        summary = Summary(collector.address());
        return summary.observations_applied() >= accepted;
      },
      absl::Seconds(30));

  uint64_t delivered = 0, lost = 0, duplicated = 0, wrong_values = 0;
  for (int k = 0; k < kKeys; ++k) {
    const std::string key = absl::StrCat("k", k);
    grpc::Status status;
    v1::KeyDetailResponse detail = KeyDetail(collector.address(), key, &status);
    ASSERT_TRUE(status.ok()) << key << ": " << status.error_message();
    std::map<std::string, v1::LocationValue> got;
    for (const v1::GroupDetail& g : detail.groups()) {
      for (const v1::LocationValue& v : g.values()) got[v.location()] = v;
    }
    for (auto& a : agents) {
      const auto [count, sum] = a->acknowledged[key];
      const auto it = got.find(a->location);
      const uint64_t samples = it == got.end() ? 0 : it->second.samples();
      delivered += std::min(samples, count);
      if (samples < count) lost += count - samples;
      if (samples > count) duplicated += samples - count;
      const double mean = count == 0 ? 0 : static_cast<double>(sum) / static_cast<double>(count);
      if (samples == count && count > 0 && it->second.value() != mean) {
        ++wrong_values;
        ADD_FAILURE() << a->location << " " << key << ": mean " << it->second.value()
                      << ", acknowledged " << mean;
      }
      EXPECT_EQ(samples, count) << a->location << " " << key;
    }
  }
  std::printf(
      "faults: %d collector kills, %d agent kills, %d partitions; accepted %llu, delivered "
      "%llu, lost %llu, duplicated %llu (seed %llu)\n",
      collector_killed, agent_kills, partitions, static_cast<unsigned long long>(accepted),
      static_cast<unsigned long long>(delivered), static_cast<unsigned long long>(lost),
      static_cast<unsigned long long>(duplicated), static_cast<unsigned long long>(seed));
  uint64_t refused = 0;
  for (auto& a : agents) refused += a->refused_full.load();
  std::printf("faults: %llu observations refused with 507 (spool full, never acknowledged)\n",
              static_cast<unsigned long long>(refused));
  std::fflush(stdout);

  EXPECT_GE(accepted, total);
  EXPECT_GE(collector_killed, 10);
  EXPECT_GT(agents[kSmallSpool]->refused_full.load(), 0u);
  EXPECT_EQ(agents[kWiped]->starts, 2);
  EXPECT_EQ(lost, 0u) << "seed " << seed;
  EXPECT_EQ(duplicated, 0u) << "seed " << seed;
  EXPECT_EQ(wrong_values, 0u) << "seed " << seed;
  EXPECT_EQ(summary.observations_applied(), accepted) << "seed " << seed;
  EXPECT_EQ(summary.observations_rejected(), 0u) << "seed " << seed;
}

}  // namespace
}  // namespace constance::testing
