// A year of a chain at a simulated clock: does the collector's engine stay
// bounded under churn (retention, docs/design.md "Retention")?
//
// An Engine is driven directly, its clock simulated: L locations x K price
// keys, each price cell observed once a simulated day (location l at hour
// l % 24); every simulated week `churn` of the keys are delisted and as
// many new ones listed; every simulated hour each location reports waits
// and compliance checks for `service_keys` keys; the engine evaluates
// every `eval_every`. Batches are applied from --apply_threads threads (2),
// each taking the next location's batches (batches of different
// locations apply at once where their cells exist, as the collector's
// batch log applies them with --apply_threads=2, and its streams without
// --state_dir); then the engine evaluates.
// With --overlap an evaluation runs on a thread of its own beside the next
// simulated hour's batches, as the collector's evaluation tick runs beside
// its ingest: each waits for the other's locks (an evaluation copies a
// series holding every stripe), slower on a 2-core machine than one after
// the other (tests/bench/RESULTS.md), so not the default.
// --max_series is set a quarter above the keys listed at once, so without
// retention the churned keys would exhaust it.
//
//   soak_bench                          # 1,000 x 5,000, 52 weeks, 15 min cap
//   soak_bench --locations=50 --keys=250 --eval_every=1h
//   soak_bench --smoke                  # tiny, a few seconds (ctest)
//
// Per simulated week it prints the series held, cells, marks held, the
// process's resident memory (tests/bench/proc_stats.h), the evaluations' CPU
// time (every thread's) and wall time, the observations rejected for
// `series`, and the wall and process CPU seconds so far (on a shared
// machine the CPU time is the measure). An evaluation's CPU time is the
// process's while it ran, less the applying threads' and the recorder's.
// glibc's malloc runs on transparent huge pages and one arena as the
// collector's unit runs it (--malloc_huge_pages, a re-execution with
// GLIBC_TUNABLES set), with the collector's thresholds (TuneMalloc);
// the end of the run says how much of the memory they held. heap_mb is
// what malloc holds allocated: beside rss_mb it tells memory in use from
// memory freed and not handed back; --malloc_info=FILE appends malloc's
// own report each week, the heap's free chunks by size.
// Evaluations recompute series on --evaluation_threads threads (one per
// core unless told). It asserts nothing while running, and exits 1 if the
// series held or the resident memory (by more than two 2 MiB huge pages)
// grew more than 10% from week 8 to the
// last week reached, or anything was rejected for `series`. Past --max_wall it stops after the
// current week and says how far it got. Figures: tests/bench/RESULTS.md.
//
// With --stores (the default) each evaluation is also recorded as a
// collector with --state_dir records it: finding history, the promise
// record and the price-drop feed, SQLite files in a temporary directory,
// at the simulated time, on a thread of their own as the collector's
// recorders run (while the next hours apply; at most one evaluation
// waits for it). Their size on disk is printed each week, once the
// week's last evaluation is recorded, and, once
// the run is past their longest retention (13 weeks) and the files have
// taken their size, must not grow more than 10% from week 17 to the last.
#include <malloc.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "collector/engine.h"
#include "collector/history.h"
#include "collector/memory.h"
#include "collector/price_drops.h"
#include "collector/promise_record.h"
#include "constance/batch_view.h"
#include "tests/bench/proc_stats.h"

ABSL_FLAG(int, locations, 1'000, "Locations");
ABSL_FLAG(int, keys, 5'000, "Price keys listed at once at every location");
ABSL_FLAG(double, churn, 0.02, "Share of the keys delisted (and as many listed) each week");
ABSL_FLAG(int, service_keys, 50, "Wait keys and compliance keys per location, each hour");
ABSL_FLAG(int, weeks, 52, "Simulated weeks");
ABSL_FLAG(absl::Duration, eval_every, absl::Hours(1), "Simulated time between evaluations");
ABSL_FLAG(absl::Duration, max_wall, absl::Minutes(15), "Stop after the week that passes this");
ABSL_FLAG(bool, smoke, false, "A tiny run: 20 locations x 100 keys, 20 weeks, a few seconds");
ABSL_FLAG(bool, stores, true,
          "Record each evaluation in the finding history, promise record and price-drop feed "
          "(SQLite files in a temporary directory), as a collector with --state_dir does");
ABSL_FLAG(int, evaluation_threads, 0,
          "Threads an evaluation recomputes series on (Engine::Options::evaluation_threads, "
          "the collector's --evaluation_threads); 0 = one per core");
ABSL_FLAG(int, apply_threads, 2,
          "Threads the locations' batches are applied from, each taking the next location "
          "(batches of different locations apply at once: the engine's stripes); 0 = one per "
          "core. Two by default, as a collector with --state_dir applies its logged batches "
          "(--apply_threads=2: different locations' batches at once, those that need an order "
          "across locations alone)");
ABSL_FLAG(bool, overlap, false,
          "Evaluate on a thread of its own beside the next simulated hour's batches, as the "
          "collector's evaluation tick runs beside its ingest (each waits for the other's "
          "locks); false: apply an hour's batches, then evaluate");
ABSL_FLAG(bool, malloc_huge_pages, true,
          "Run as the collector's unit runs it: glibc's malloc on transparent huge pages and "
          "one arena (re-executes itself with GLIBC_TUNABLES=glibc.malloc.hugetlb=1:"
          "glibc.malloc.arena_max=1 unless GLIBC_TUNABLES already sets glibc.malloc.hugetlb)");
ABSL_FLAG(std::string, malloc_info, "",
          "Append malloc_info(3)'s report (free chunks by size, every arena) to this file after "
          "each week's line: where freed memory the heap keeps sits");
ABSL_FLAG(bool, retain_forever, false,
          "Set the catalog's retention to ten years: shows what the run looks like without "
          "retention (series grow, `series` rejections) and that the checks catch it");

namespace constance::collector {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1'767'225'600);  // 2026-01-01.

double CpuSeconds(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

struct Config {
  int locations, keys, service_keys, weeks;
  int churned;  // Keys delisted (and listed) per week.
  int evaluation_threads = 1;
  int apply_threads = 1;
  std::string malloc_info;  // A file for malloc_info(3) each week; empty: none.
  absl::Duration eval_every, max_wall;
  bool retain_forever = false;
  bool stores = true;
  bool overlap = false;
};

struct Week {
  int week = 0;
  uint64_t series = 0, cells = 0, streams = 0;
  int64_t rss_kb = 0;
  int64_t heap_kb = 0;  // Allocated and not freed (malloc's count, every arena).
  int64_t disk_kb = 0;  // The stores' files.
  int evaluations = 0;
  double eval_cpu = 0;           // Seconds, this week's evaluations together.
  double eval_wall = 0;          // The same in wall time.
  uint64_t rejected_series = 0;  // Since the start.
  double wall = 0;      // Seconds since the start.
  double cpu = 0;       // The process's CPU seconds since the start.
};

class Soak {
 public:
  explicit Soak(const Config& c) : c_(c), next_seq_(c.locations, 1) {
    // Every name a batch will point at, made before any thread reads them.
    for (int l = 0; l < c.locations; ++l) stores_.push_back(absl::StrCat("store-", l));
    for (int k = 0; k < c.keys + c.churned * (c.weeks + 1); ++k) {
      items_.push_back(absl::StrCat("item-", k));
    }
    for (int k = 0; k < c.service_keys; ++k) {
      services_.push_back(absl::StrCat("service-", k));
      checks_.push_back(absl::StrCat("check-", k));
    }
    Engine::Options o;
    if (c.retain_forever) {
      Catalog catalog = DefaultCatalog();
      catalog.thresholds.retention = catalog.thresholds.location_retention =
          absl::Hours(24 * 3650);
      o.catalog = std::make_shared<const Catalog>(std::move(catalog));
    }
    // Batches carry their hour's time (Send); the clock is the
    // evaluation's, which may run beside the next hour's batches.
    o.clock = [this] { return absl::FromUnixNanos(eval_at_ns_.load()); };
    o.evaluation_threads = c.evaluation_threads;
    o.limits.max_series =
        static_cast<uint64_t>(c.keys) * 5 / 4 + 2 * static_cast<uint64_t>(c.service_keys);
    engine_ = std::make_unique<Engine>(std::move(o));
    if (c.stores) {
      OpenStores();
      recorder_ = std::thread([this] { RecordLoop(); });
    }
    evaluator_ = std::thread([this] { EvaluateLoop(); });
  }
  ~Soak() {
    {
      absl::MutexLock lock(&eval_mu_);
      eval_mu_.Await(absl::Condition(this, &Soak::EvaluatorIdle));
      eval_ = EvalState::kStop;
    }
    evaluator_.join();
    if (recorder_.joinable()) {
      {
        absl::MutexLock lock(&mu_);
        stop_ = true;
      }
      recorder_.join();
    }
    history_.reset();
    record_.reset();
    drops_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // One simulated hour: the locations whose day starts now send their
  // prices, every location its waits and checks (on --apply_threads
  // threads), beside the last hour's evaluation (--overlap); then an
  // evaluation when one is due.
  void Hour(int hour, Week* w) {
    const int first_key = (hour / (24 * 7)) * c_.churned;  // Listed: [first, first + keys).
    // Each thread takes the next location (a location's batches in
    // order, on one thread): the 42 sending prices this hour are shared
    // out with the rest.
    std::atomic<int> next{0};
    auto apply = [&] {
      const double cpu_before = CpuSeconds(CLOCK_THREAD_CPUTIME_ID);
      BatchView batch;
      for (int l = next++; l < c_.locations; l = next++) {
        if (l % 24 == hour % 24) Send(l, Prices(&batch, l, first_key, hour));
        Send(l, Services(&batch, l, hour));
      }
      const double cpu = CpuSeconds(CLOCK_THREAD_CPUTIME_ID) - cpu_before;
      apply_cpu_ns_ += static_cast<int64_t>(cpu * 1e9);
    };
    std::vector<std::thread> helpers;
    for (int t = 1; t < c_.apply_threads; ++t) helpers.emplace_back(apply);
    apply();
    for (std::thread& t : helpers) t.join();
    FinishEvaluation(w);  // The one that ran beside these batches, if any.
    if (now_ >= next_eval_) {
      StartEvaluation();
      if (!c_.overlap) FinishEvaluation(w);
      ++w->evaluations;
      next_eval_ = now_ + c_.eval_every;
    }
    now_ += absl::Hours(1);
  }

  void Measure(Week* w, absl::Time wall_start) {
    FinishEvaluation(w);
    {
      // The stores' size once they hold the week's last evaluation.
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &Soak::RecordedAll));
    }
    std::shared_ptr<const Snapshot> s = engine_->snapshot();
    w->series = s->series_held;
    w->cells = s->cells;
    w->streams = s->streams_held;
    auto it = s->rejected_by_reason.find("series");
    w->rejected_series = it == s->rejected_by_reason.end() ? 0 : it->second;
    w->rss_kb = testing::ProcStatusKb(getpid(), "VmRSS");
    const struct mallinfo2 heap = mallinfo2();
    w->heap_kb = static_cast<int64_t>((heap.uordblks + heap.hblkhd) / 1024);
    if (!dir_.empty()) {
      for (const auto& f : std::filesystem::directory_iterator(dir_)) {
        w->disk_kb += static_cast<int64_t>(f.file_size() / 1024);
      }
    }
    w->wall = absl::ToDoubleSeconds(absl::Now() - wall_start);
    w->cpu = testing::CpuSeconds(getpid());
  }

 private:
  enum class EvalState { kIdle, kDue, kRunning, kDone, kStop };

  // Starts an evaluation at now_ on the evaluator thread (none running).
  void StartEvaluation() {
    absl::MutexLock lock(&eval_mu_);
    eval_at_ns_ = absl::ToUnixNanos(now_);
    eval_cpu_before_ = OthersCpuSeconds();
    eval_ = EvalState::kDue;
  }

  // Waits for the evaluation started last, if any, and counts it in `w`.
  void FinishEvaluation(Week* w) {
    absl::MutexLock lock(&eval_mu_);
    if (eval_ == EvalState::kIdle) return;
    eval_mu_.Await(absl::Condition(this, &Soak::EvaluationDone));
    w->eval_cpu += OthersCpuSeconds() - eval_cpu_before_;
    w->eval_wall += eval_wall_;
    eval_ = EvalState::kIdle;
  }

  // The process's CPU time less the applying threads' and the recorder's:
  // the evaluations' (the evaluator's and its helpers').
  double OthersCpuSeconds() {
    return CpuSeconds(CLOCK_PROCESS_CPUTIME_ID) - RecorderCpuSeconds() -
           static_cast<double>(apply_cpu_ns_.load()) * 1e-9;
  }

  void EvaluateLoop() {
    while (true) {
      {
        absl::MutexLock lock(&eval_mu_);
        eval_mu_.Await(absl::Condition(this, &Soak::EvaluationDueOrStop));
        if (eval_ == EvalState::kStop) return;
        eval_ = EvalState::kRunning;
      }
      const absl::Time wall_before = absl::Now();
      engine_->Evaluate();
      const double wall = absl::ToDoubleSeconds(absl::Now() - wall_before);
      if (history_ != nullptr) {
        // Every evaluation is recorded: the next waits for the recorder to
        // take this one.
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(this, &Soak::Taken));
        to_record_ = {engine_->snapshot(), absl::FromUnixNanos(eval_at_ns_.load())};
      }
      absl::MutexLock lock(&eval_mu_);
      eval_wall_ = wall;
      eval_ = EvalState::kDone;
    }
  }

  bool EvaluationDone() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(eval_mu_) {
    return eval_ == EvalState::kDone;
  }
  bool EvaluationDueOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(eval_mu_) {
    return eval_ == EvalState::kDue || eval_ == EvalState::kStop;
  }
  bool EvaluatorIdle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(eval_mu_) {
    return eval_ == EvalState::kIdle || eval_ == EvalState::kDone;
  }

  void OpenStores() {
    char tmpl[] = "/tmp/constance-soak.XXXXXX";
    if (mkdtemp(tmpl) == nullptr) Die("cannot make a temporary directory");
    dir_ = tmpl;
    auto history = FindingHistory::Open(dir_ + "/history.db", FindingHistory::Options());
    auto record = PromiseRecordStore::Open(dir_ + "/promise_record.db", {});
    auto drops = PriceDropFeed::Open(dir_ + "/price_drops.db", {});
    if (!history.ok()) Die(history.status().ToString());
    if (!record.ok()) Die(record.status().ToString());
    if (!drops.ok()) Die(drops.status().ToString());
    history_ = std::move(*history);
    record_ = std::move(*record);
    drops_ = std::move(*drops);
  }

  double RecorderCpuSeconds() {
    if (!recorder_.joinable()) return 0;
    clockid_t clock;
    if (pthread_getcpuclockid(recorder_.native_handle(), &clock) != 0) return 0;
    timespec ts{};
    clock_gettime(clock, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
  }

  bool Taken() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return to_record_.first == nullptr; }
  bool RecordedAll() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return Taken() && !recording_; }
  bool ToRecordOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return to_record_.first != nullptr || stop_;
  }

  // What the collector's HistoryRecorder and BoardRecorder do, on their
  // own threads, here with every evaluation at the simulated time it was
  // evaluated at (the collector's take the newest each time they look).
  void RecordLoop() {
    while (true) {
      std::pair<std::shared_ptr<const Snapshot>, absl::Time> next;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(this, &Soak::ToRecordOrStop));
        if (stop_) return;
        next = std::exchange(to_record_, {});
        recording_ = true;
      }
      const FindingsView& view = *next.first->findings;
      const absl::Time at = next.second;
      absl::Status status = history_->Record(view.active, view.closed, nullptr, at);
      if (status.ok()) status = record_->Record(view.promises, view.evaluated_at);
      if (status.ok()) status = drops_->Record(view.price_drops, at);
      if (!status.ok()) Die(status.ToString());
      absl::MutexLock lock(&mu_);
      recording_ = false;
    }
  }

  static void Die(const std::string& what) {
    std::fprintf(stderr, "soak_bench: %s\n", what.c_str());
    std::exit(2);
  }

  // The batches are built as the views the collector's ingest decodes
  // from the wire (DecodeBatch, proto/constance/batch_view.h), over names
  // made once: what is timed is the engine, not building messages.
  BatchView& Start(BatchView* batch, int l) const {
    batch->location = stores_[l];
    batch->incarnation = 1;
    batch->first_sequence = next_seq_[l];
    batch->observations.clear();
    return *batch;
  }

  ObservationView& Add(BatchView& b, const std::string& key) const {
    ObservationView& o = b.observations.emplace_back();
    o.key = key;
    o.has_observed_at = true;
    o.observed_seconds = absl::ToUnixSeconds(now_);
    return o;
  }

  BatchView& Prices(BatchView* batch, int l, int first_key, int hour) const {
    BatchView& b = Start(batch, l);
    for (int k = first_key; k < first_key + c_.keys; ++k) {
      ObservationView& o = Add(b, items_.at(k));
      // A price per key, a few stores a cent off, and a chain-wide change
      // of each key every 14 days, keys staggered by day (a fourteenth of
      // them up or down each day), so levels, changes and the price-drop
      // feed are exercised evenly from the first weeks on.
      const int day = hour / 24;
      o.value = v1::Observation::kPrice;
      o.minor_units = 100 + k % 50 + (l % 17 == 0) + ((day + k) / 14) % 2;
      o.currency = "EUR";
    }
    return b;
  }

  BatchView& Services(BatchView* batch, int l, int hour) const {
    BatchView& b = Start(batch, l);
    for (int k = 0; k < c_.service_keys; ++k) {
      ObservationView& w = Add(b, services_[k]);
      w.value = v1::Observation::kWaitSeconds;
      w.number = 60 + (l * 7 + k + hour) % 120;
      ObservationView& ch = Add(b, checks_[k]);
      ch.value = v1::Observation::kCheck;
      ch.passed = (l + k + hour) % 20 != 0;
    }
    return b;
  }

  void Send(int l, const BatchView& b) {
    absl::StatusOr<v1::Ack> ack = engine_->ApplyBatch(b, now_);
    if (!ack.ok()) {
      std::fprintf(stderr, "batch refused: %s\n", std::string(ack.status().message()).c_str());
      std::exit(2);
    }
    next_seq_[l] += b.observations.size();
  }

  const Config c_;
  absl::Time now_ = kStart;  // The hour being applied.
  // The engine's clock: the time of the evaluation running or last run.
  std::atomic<int64_t> eval_at_ns_{absl::ToUnixNanos(kStart)};
  std::atomic<int64_t> apply_cpu_ns_{0};  // The applying threads' CPU time.
  absl::Time next_eval_ = kStart;
  std::vector<uint64_t> next_seq_;
  std::unique_ptr<Engine> engine_;
  // Names the batches point into, all made at the start.
  std::vector<std::string> stores_, items_, services_, checks_;
  std::string dir_;  // The stores' temporary directory, when recording.
  std::unique_ptr<FindingHistory> history_;
  std::unique_ptr<PromiseRecordStore> record_;
  std::unique_ptr<PriceDropFeed> drops_;
  absl::Mutex mu_;
  std::pair<std::shared_ptr<const Snapshot>, absl::Time> to_record_ ABSL_GUARDED_BY(mu_);
  bool recording_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread recorder_;  // With the stores: records them.
  absl::Mutex eval_mu_;
  EvalState eval_ ABSL_GUARDED_BY(eval_mu_) = EvalState::kIdle;
  double eval_cpu_before_ ABSL_GUARDED_BY(eval_mu_) = 0;
  double eval_wall_ ABSL_GUARDED_BY(eval_mu_) = 0;
  std::thread evaluator_;
};

// Whether `to` is within 10% above `from`.
bool Flat(double from, double to) { return to <= from * 1.10; }

// Resident memory grows in the heap's steps: on transparent huge pages
// one is 2 MiB, a tenth of the smoke's whole heap. Growth of two steps or
// less is not counted; at the size 10% is 120 MB.
constexpr int64_t kRssStepsKb = 2 * 2048;
bool RssFlat(int64_t from_kb, int64_t to_kb) {
  return Flat(static_cast<double>(from_kb), static_cast<double>(to_kb)) ||
         to_kb - from_kb <= kRssStepsKb;
}

// malloc_info(3)'s XML for `week`, appended to `path` (a failure is printed).
void AppendMallocInfo(const std::string& path, int week) {
  FILE* f = std::fopen(path.c_str(), "a");
  if (f == nullptr) {
    std::fprintf(stderr, "soak_bench: cannot append to --malloc_info=%s: %s\n", path.c_str(),
                 std::strerror(errno));
    return;
  }
  std::fprintf(f, "<!-- week %d -->\n", week);
  malloc_info(0, f);
  std::fclose(f);
}

int Run(const Config& c) {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  std::printf(
      "soak: %d locations x %d keys, %d keys churned a week, %d wait + %d check keys hourly, "
      "applied from %d threads, evaluation every %s on %d threads %s, %d weeks (wall cap %s)\n",
      c.locations, c.keys, c.churned, c.service_keys, c.service_keys, c.apply_threads,
      absl::FormatDuration(c.eval_every).c_str(), c.evaluation_threads,
      c.overlap ? "beside the next hour's batches" : "after each hour's batches", c.weeks,
      absl::FormatDuration(c.max_wall).c_str());
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  std::printf("GLIBC_TUNABLES=%s\n", tunables == nullptr ? "" : tunables);
  std::printf("%4s %9s %10s %8s %9s %9s %9s %6s %12s %12s %11s %9s %8s %8s\n", "week", "series",
              "cells", "marks", "rss_mb", "heap_mb", "disk_mb", "evals", "eval_cpu_s", "cpu_per_eval",
              "eval_wall_s", "rej_ser", "wall_s", "cpu_s");
  Soak soak(c);
  const absl::Time wall_start = absl::Now();
  const testing::MachineCpu machine_before = testing::ReadMachineCpu();
  std::vector<Week> weeks;
  bool stopped = false;
  for (int week = 1; week <= c.weeks && !stopped; ++week) {
    Week w;
    w.week = week;
    int hours = 0;
    while (hours < 24 * 7 && !stopped) {
      soak.Hour((week - 1) * 24 * 7 + hours++, &w);
      stopped = absl::Now() - wall_start > c.max_wall;
    }
    soak.Measure(&w, wall_start);
    weeks.push_back(w);
    std::printf("%4d %9lu %10lu %8lu %9.1f %9.1f %9.1f %6d %12.3f %12.4f %11.3f %9lu %8.1f %8.1f\n",
                w.week, static_cast<unsigned long>(w.series), static_cast<unsigned long>(w.cells),
                static_cast<unsigned long>(w.streams), static_cast<double>(w.rss_kb) / 1024,
                static_cast<double>(w.heap_kb) / 1024,
                static_cast<double>(w.disk_kb) / 1024, w.evaluations, w.eval_cpu,
                w.evaluations > 0 ? w.eval_cpu / w.evaluations : 0, w.eval_wall,
                static_cast<unsigned long>(w.rejected_series), w.wall, w.cpu);
    std::fflush(stdout);
    if (!c.malloc_info.empty()) AppendMallocInfo(c.malloc_info, week);
    if (stopped && (week < c.weeks || hours < 24 * 7)) {
      const double done = (week - 1) + hours / (24.0 * 7);
      std::printf(
          "stopped: --max_wall %s passed %d simulated hours into week %d: %.2f of %d weeks "
          "(%.1f%%); the whole run would take about %.0f s\n",
          absl::FormatDuration(c.max_wall).c_str(), hours, week, done, c.weeks,
          100.0 * done / c.weeks, w.wall * c.weeks / done);
      // The partial week's figures are not a week's: not judged.
      weeks.pop_back();
      if (weeks.empty()) return 0;
    }
  }
  std::printf("machine: %s, %.1f%% of CPU time stolen during the run\n", host,
              testing::StolenPercent(machine_before, testing::ReadMachineCpu()));
  std::printf("memory: %.1f of %.1f MB resident on transparent huge pages\n",
              testing::ProcSmapsKb(getpid(), "AnonHugePages") / 1024.0,
              testing::ProcSmapsKb(getpid(), "Rss") / 1024.0);

  bool ok = true;
  const Week& last = weeks.back();
  if (last.rejected_series > 0) {
    std::printf("FAIL: %lu observations rejected for `series`\n",
                static_cast<unsigned long>(last.rejected_series));
    ok = false;
  }
  if (weeks.size() >= 9) {
    const Week& w8 = weeks[7];
    if (!Flat(static_cast<double>(w8.series), static_cast<double>(last.series))) {
      std::printf("FAIL: series grew from %lu (week 8) to %lu (week %d)\n",
                  static_cast<unsigned long>(w8.series), static_cast<unsigned long>(last.series),
                  last.week);
      ok = false;
    }
    if (!RssFlat(w8.rss_kb, last.rss_kb)) {
      std::printf("FAIL: resident memory grew from %ld kB (week 8) to %ld kB (week %d)\n",
                  static_cast<long>(w8.rss_kb), static_cast<long>(last.rss_kb), last.week);
      ok = false;
    }
    if (ok) {
      std::printf("flat: series %+.1f%%, resident memory %+.1f%% from week 8 to week %d\n",
                  100.0 * (static_cast<double>(last.series) / static_cast<double>(w8.series) - 1),
                  100.0 * (static_cast<double>(last.rss_kb) / static_cast<double>(w8.rss_kb) - 1),
                  last.week);
    }
  } else {
    std::printf("not judged: flatness needs week 9 or later (reached week %d)\n", last.week);
  }
  if (c.stores && weeks.size() >= 18) {
    const Week& w17 = weeks[16];
    if (!Flat(static_cast<double>(w17.disk_kb), static_cast<double>(last.disk_kb))) {
      std::printf("FAIL: the stores' files grew from %ld kB (week 17) to %ld kB (week %d)\n",
                  static_cast<long>(w17.disk_kb), static_cast<long>(last.disk_kb), last.week);
      ok = false;
    } else {
      std::printf("flat: the stores' files %+.1f%% from week 17 to week %d\n",
                  100.0 * (static_cast<double>(last.disk_kb) /
                               static_cast<double>(std::max<int64_t>(w17.disk_kb, 1)) -
                           1),
                  last.week);
    }
  } else if (c.stores) {
    std::printf("not judged: the stores' flatness needs week 18 or later (reached week %d)\n",
                last.week);
  }
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace constance::collector

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_malloc_huge_pages)) constance::testing::ReexecWithMallocHugePages(argv);
  constance::collector::TuneMalloc();  // As constance-collector's main does.
  constance::collector::Config c;
  const bool smoke = absl::GetFlag(FLAGS_smoke);
  c.locations = smoke ? 20 : absl::GetFlag(FLAGS_locations);
  c.keys = smoke ? 100 : absl::GetFlag(FLAGS_keys);
  c.service_keys = smoke ? 5 : absl::GetFlag(FLAGS_service_keys);
  c.weeks = smoke ? 20 : absl::GetFlag(FLAGS_weeks);
  c.churned = static_cast<int>(absl::GetFlag(FLAGS_churn) * c.keys + 0.5);
  c.eval_every = smoke ? absl::Hours(1) : absl::GetFlag(FLAGS_eval_every);
  c.retain_forever = absl::GetFlag(FLAGS_retain_forever);
  c.stores = absl::GetFlag(FLAGS_stores);
  c.overlap = absl::GetFlag(FLAGS_overlap);
  c.max_wall = absl::GetFlag(FLAGS_max_wall);
  c.evaluation_threads = absl::GetFlag(FLAGS_evaluation_threads);
  c.apply_threads = absl::GetFlag(FLAGS_apply_threads);
  c.malloc_info = absl::GetFlag(FLAGS_malloc_info);
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (c.evaluation_threads == 0) c.evaluation_threads = cores;
  if (c.apply_threads == 0) c.apply_threads = cores;
  if (c.locations < 1 || c.keys < 1 || c.service_keys < 0 || c.weeks < 1 ||
      c.eval_every <= absl::ZeroDuration() || c.evaluation_threads < 1 || c.apply_threads < 1) {
    std::fprintf(stderr,
                 "soak_bench: --locations, --keys and --weeks must be at least 1, "
                 "--service_keys, --evaluation_threads and --apply_threads at least 0, "
                 "--eval_every positive\n");
    return 2;
  }
  return constance::collector::Run(c);
}
