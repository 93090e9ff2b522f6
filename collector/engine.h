// The collector's state: cells, delivery watermarks, statistics, findings.
//
// Engine owns every (location, series) cell. The ingest path (ApplyBatch)
// validates each observation, drops what an earlier batch already
// delivered (high-water mark per location and spool incarnation), updates
// the cell and marks its series dirty: nothing more. Two ticks run off
// that path:
//   - the statistics tick (catalog stats_interval, 1 s) recomputes dirty
//     series per peer group and publishes an immutable Snapshot that the
//     Query API and /metrics read, so a scrape never blocks ingest;
//   - the evaluation tick (evaluation_interval, 1 min) first forgets what
//     retention frees (retention.cc: expired cells, empty series, gone
//     locations, idle marks), then recomputes every
//     series (windows slide, cells expire) and evaluates the findings of
//     docs/design.md ("Findings"): outliers, splits and rollouts, zones, broken and
//     unkeepable promises, irregular price changes, drift, silent and
//     stale locations; persistence and hysteresis decide what opens and closes,
//     and each location's trust account is updated.
// Findings are evaluated on fixed ticks, never per observation, so false
// alarm rates do not grow with traffic.
//
//   Engine engine(Engine::Options{});
//   engine.Start();                       // both ticks
//   absl::StatusOr<v1::Ack> ack = engine.ApplyBatch(batch);
//   std::shared_ptr<const Snapshot> s = engine.snapshot();
//   engine.Stop();
//
// Thread-safety: every public method may be called from any thread.
// Snapshots are immutable and may outlive later ticks.
#ifndef CONSTANCE_COLLECTOR_ENGINE_H_
#define CONSTANCE_COLLECTOR_ENGINE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/node_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "collector/catalog.h"
#include "collector/cell_table.h"
#include "collector/cells.h"
#include "collector/evaluators.h"
#include "collector/findings.h"
#include "collector/stats.h"
#include "collector/vector_pool.h"
#include "constance/v1/ingest.pb.h"
#include "constance/v1/query.pb.h"
#include "constance/validate.h"

namespace constance::state::v1 {
class EngineState;
class Series;
}  // namespace constance::state::v1

namespace constance::collector {

// Identity of a compared series. Prices carry currency and kind (an
// unspecified kind is a shelf price); other families leave them empty.
struct SeriesKey {
  v1::Family family = v1::FAMILY_UNSPECIFIED;
  std::string key;
  std::string currency;
  v1::PriceKind kind = v1::PRICE_KIND_UNSPECIFIED;

  template <typename H>
  friend H AbslHashValue(H h, const SeriesKey& k) {
    return H::combine(std::move(h), k.family, k.key, k.currency, k.kind);
  }
  friend bool operator==(const SeriesKey& a, const SeriesKey& b) {
    return a.family == b.family && a.key == b.key && a.currency == b.currency && a.kind == b.kind;
  }
};

// A SeriesKey's fields without copies of its strings, for finding a series
// on the ingest path. Valid while the strings it points into are.
struct SeriesKeyView {
  v1::Family family = v1::FAMILY_UNSPECIFIED;
  absl::string_view key;
  absl::string_view currency;
  v1::PriceKind kind = v1::PRICE_KIND_UNSPECIFIED;

  SeriesKeyView() = default;
  SeriesKeyView(const SeriesKey& k)  // NOLINT: implicit, for lookups.
      : family(k.family), key(k.key), currency(k.currency), kind(k.kind) {}
  friend bool operator==(const SeriesKeyView& a, const SeriesKeyView& b) {
    return a.family == b.family && a.key == b.key && a.currency == b.currency && a.kind == b.kind;
  }
};

// A view with its hash, computed once (HashedSeriesKeyView::Of) for a
// lookup fetched ahead of time (prefetch) and then made (find).
struct HashedSeriesKeyView {
  SeriesKeyView view;
  size_t hash = 0;

  static HashedSeriesKeyView Of(const SeriesKeyView& view);
};

// Hash and equality over SeriesKey, SeriesKeyView and HashedSeriesKeyView
// alike, so a series is found from an observation's fields without
// building a SeriesKey.
struct SeriesKeyHash {
  using is_transparent = void;
  size_t operator()(const SeriesKeyView& k) const {
    return absl::HashOf(k.family, k.key, k.currency, k.kind);
  }
  size_t operator()(const HashedSeriesKeyView& k) const { return k.hash; }
};
struct SeriesKeyEq {
  using is_transparent = void;
  bool operator()(const SeriesKeyView& a, const SeriesKeyView& b) const { return a == b; }
  bool operator()(const HashedSeriesKeyView& a, const SeriesKeyView& b) const {
    return a.view == b;
  }
  bool operator()(const SeriesKeyView& a, const HashedSeriesKeyView& b) const {
    return a == b.view;
  }
};

inline HashedSeriesKeyView HashedSeriesKeyView::Of(const SeriesKeyView& view) {
  return {view, SeriesKeyHash{}(view)};
}
using SeriesIndex = absl::flat_hash_map<SeriesKey, uint32_t, SeriesKeyHash, SeriesKeyEq>;

// The series an observation belongs to, qualifiers normalised.
SeriesKey SeriesOf(const v1::Observation& obs);
SeriesKey SeriesOf(const ObservationView& obs);
// The same as a view into `obs`'s strings.
SeriesKeyView SeriesViewOf(const v1::Observation& obs);
SeriesKeyView SeriesViewOf(const ObservationView& obs);
SeriesKey SeriesFromProto(const v1::SeriesId& id);
void SeriesToProto(const SeriesKey& key, v1::SeriesId* id);
// "price coffee-250g EUR/shelf", "wait checkout".
std::string SeriesName(const SeriesKey& key);

// The outlier rule's parameters as the catalog sets them.
OutlierPolicy PolicyFromCatalog(const Catalog& catalog);

// The published statistics of one series in one peer group.
struct SeriesStats {
  SeriesKey key;
  std::string group;  // "chain", or "<peer group>=<label value>".
  GroupSummary summary;
  // Over the group's own members: a chain group that comparable groups'
  // members were copied into (FallBackToChain) counts them in `summary`,
  // not here. What the mergeable sums add, so each location counts once.
  GroupSummary own;
  Band band;
  // Prices: a level's value and how many locations hold it. Published
  // without its member list: rebuilt at every recomputation a little
  // longer or shorter and kept until the next, those lists left holes in
  // the heap that the next did not fit (resident memory crept).
  struct LevelCount {
    double value = 0;
    size_t locations = 0;
  };
  LevelCount main_level;                 // The level at the median; 0 locations: none.
  std::vector<LevelCount> other_levels;  // Consistent deviating levels.
  bool rollout = false;             // A chain-wide change is rolling out.
  std::vector<OutlierResult> outliers;
  std::vector<std::string> outlier_locations;  // Parallel to outliers.
  // Waits only: the own members' comparable values, so /metrics can bucket
  // them into the mergeable histogram from the snapshot alone (a wait key
  // has one value per location: a few per service, not per item).
  std::vector<double> wait_values;
};

// What one agent last said about itself.
struct AgentHealth {
  std::string version;
  uint64_t spool_depth = 0;
  uint64_t spool_bytes = 0;
  uint64_t spool_dropped = 0;  // Since the agent started.
  double oldest_unacknowledged_seconds = 0;
  absl::Time certificate_not_after = absl::InfinitePast();  // Unset without TLS.
  absl::Time heartbeat_at = absl::InfinitePast();
  absl::Duration data_cadence = absl::ZeroDuration();  // Zero: continuously.
};

// Per-location delivery facts, for /metrics and the scorecard.
struct LocationState {
  std::string location;
  absl::Time last_report = absl::InfinitePast();  // Receive time of the last batch.
  // The location's current spool incarnation: the one its latest
  // heartbeat announced or its latest batch carried (0 = none yet, e.g.
  // just restored). One live stream per location means batches of an
  // older incarnation apply only before the newer one's stream claims it.
  uint64_t incarnation = 0;
  uint64_t watermark = 0;  // Of `incarnation`.
  AgentHealth health;
};

// A decrease of a price at a location, as the evaluation that saw it
// classifies it (the price-drop feed, price_drops.h, records these).
struct PriceDrop {
  std::string location;
  SeriesKey series;  // A promo price is series.kind PROMO.
  int64_t from = 0;  // Minor units.
  int64_t to = 0;
  absl::Time at;  // Event time of the lower price.
  // The lower price is where a chain-wide change is going, by the rule that
  // keeps rollouts from being outliers (a level at least min_level
  // locations moved to within rollout_grace, or a list price taking
  // effect); else the location lowered it alone.
  bool rollout = false;
  // The revision (PriceDropList) of the evaluation that first published
  // the drop as it is: one that changes it (its classification, say)
  // publishes it again with its own.
  uint64_t revision = 0;
};

// The price drops one evaluation publishes: those within rollout_grace of
// it, and those that arrived older than that (by this evaluation only).
// Held as the lists the engine keeps per series, shared rather than copied
// each evaluation: at a chain's size an evaluation publishes hundreds of
// thousands of drops and changes a few thousand.
//
// Revisions number one engine's evaluations (source(): which engine), so
// a reader that recorded a list up to revision r needs, from any later
// list of the same source, only the drops with a revision above r: every
// drop the later list holds as the list of revision r held it keeps the
// revision it had there (PriceDropFeed::Record).
class PriceDropList {
 public:
  using Part = std::shared_ptr<const std::vector<PriceDrop>>;
  PriceDropList() = default;
  // An empty list of `source` at `revision`.
  PriceDropList(uint64_t source, uint64_t revision) : source_(source), revision_(revision) {}
  // `drops` (each at its own revision) as the list of `source` at `revision`.
  PriceDropList(std::vector<PriceDrop> drops, uint64_t source, uint64_t revision);
  // A number no other list or engine of this process has.
  static uint64_t NewSource();

  // Adds the drops of `part` whose event time is `since` or later.
  void Add(Part part, absl::Time since);
  template <typename F>
  void ForEach(F&& f) const {
    for (const Held& h : parts_) {
      for (const PriceDrop& d : *h.drops) {
        if (d.at >= h.since) f(d);
      }
    }
  }
  size_t size() const;
  bool empty() const { return size() == 0; }
  // Every drop, by location (in the order added within one location).
  std::vector<PriceDrop> Sorted() const;
  uint64_t source() const { return source_; }
  uint64_t revision() const { return revision_; }

 private:
  struct Held {
    Part drops;
    absl::Time since;
  };
  std::vector<Held> parts_;
  uint64_t source_ = 0;
  uint64_t revision_ = 0;
};

// Whether a location kept one promise of the catalog in one evaluation
// (the promise record, promise_record.h, counts these).
struct PromiseStanding {
  std::string location;
  SeriesKey series;     // The promise's series: one promise per series and location.
  std::string promise;  // What is promised: "list price 4.49 EUR", "90% served within 150 s".
  bool kept = false;
};

// One service's waits at a location now, over the wait window its
// comparison reads (catalog wait.window).
struct CurrentWait {
  std::string service;  // The wait key.
  double median_seconds = 0;
  double p90_seconds = 0;
  uint64_t samples = 0;
  absl::Time updated = absl::InfinitePast();  // Event time of the newest ticket.
};

// The findings and trust published by the evaluation tick.
struct FindingsView {
  absl::Time evaluated_at = absl::InfinitePast();
  std::vector<v1::Finding> active;  // Most severe first.
  std::vector<v1::Finding> closed;  // Recently closed, newest last.
  struct Trust {
    std::string location;
    double balance = 0;
    double score = 100;
    uint64_t kept = 0;    // Promises kept at the last evaluation.
    uint64_t broken = 0;  // Promises broken at the last evaluation.
  };
  std::vector<Trust> trust;  // By location.
  // Observations (applied + rejected) covered by the last `persistence`
  // evaluations: findings reflect at least these.
  uint64_t observations_settled = 0;
  // Price decreases whose event time is within thresholds.rollout_grace of
  // the evaluation (while their classification may still change), and
  // those that arrived later than that, for rollout_grace from the
  // evaluation that found them (Sorted(): by location). Empty after a
  // restore until the first evaluation.
  PriceDropList price_drops;
  // Every promise applying to a location in this evaluation, kept or
  // broken (exceptions excluded), by location. Empty after a restore.
  std::vector<PromiseStanding> promises;
};

// An immutable view published by the ticks.
struct Snapshot {
  absl::Time computed_at = absl::InfinitePast();
  uint64_t locations = 0;
  uint64_t cells = 0;
  // Observations covered by the statistics below.
  uint64_t observations_applied = 0;
  uint64_t observations_rejected = 0;
  uint64_t observations_duplicate = 0;
  // Since the collector started: sequences agents declared deleted unsent
  // (Batch.skipped_from), and batches answered OUT_OF_ORDER.
  uint64_t observations_dropped = 0;
  uint64_t batches_out_of_order = 0;
  uint64_t batches = 0;
  // Rejected observations by the field that failed validation.
  std::map<std::string, uint64_t> rejected_by_reason;
  std::vector<std::shared_ptr<const SeriesStats>> series;  // One per (series, group).
  // Series with a group of fewer than min_group locations: not compared.
  uint64_t uncompared_series = 0;
  // Series held (with at least one cell), against --max_series, and
  // high-water marks held (one per location and spool incarnation, plus
  // one per location dropped for silence): what retention bounds.
  uint64_t series_held = 0;
  uint64_t streams_held = 0;
  // Those series: for each, the index in `series` of one of its rows and
  // the locations in its groups.
  struct Uncompared {
    size_t row = 0;
    uint64_t n = 0;
  };
  std::vector<Uncompared> uncompared;
  std::vector<LocationState> location_states;  // By location name.
  std::shared_ptr<const FindingsView> findings = std::make_shared<FindingsView>();
  std::shared_ptr<const Catalog> catalog;
};

// The Query API's rendering of a published series.
void FillSeriesStats(const SeriesStats& stats, v1::GroupStats* out);
void FillSeriesOutliers(const SeriesStats& stats,
                        google::protobuf::RepeatedPtrField<v1::Outlier>* out);

class Engine {
 public:
  struct Options {
    std::shared_ptr<const Catalog> catalog = std::make_shared<const Catalog>(DefaultCatalog());
    Limits limits;
    // The collector's clock, injectable for tests and replays.
    std::function<absl::Time()> clock = [] { return absl::Now(); };
    // Called before each series is recomputed, on the thread recomputing
    // it (the ticking thread unless evaluation_threads > 1); tests use it
    // to act while a tick is in progress.
    std::function<void()> before_series;
    // Evaluate recomputes only the series whose cells changed or whose
    // horizon came (cells.h Horizon), reusing what the others added last
    // time; false recomputes every series every time (the reference the
    // incremental evaluation is tested against).
    bool incremental = true;
    // Threads that recompute series at once, the ticking thread among
    // them: each takes the next series, copies it under the ingest lock and
    // computes it outside. Findings and statistics are the same whatever
    // the count (outcomes are kept and merged by series index); more
    // threads shorten a tick that recomputes many series.
    int evaluation_threads = 1;
    // Called before each of those threads beside the ticking one starts;
    // tests throw std::system_error from it to stand for a machine out of
    // threads (the tick then recomputes on the threads it has).
    std::function<void()> before_helper_start;
  };

  explicit Engine(Options options);
  ~Engine();  // Stops the ticks.
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Starts and stops the tick threads. Stop is idempotent and prompt:
  // a recomputation or evaluation in progress (tens of seconds at 10M
  // cells) is abandoned at the next series, publishing nothing and
  // changing no finding, instead of holding up a shutdown.
  void Start();
  void Stop();
  // The first half of Stop, without waiting for the tick threads: from
  // now until the next Start, ticks and direct Recompute/Evaluate calls
  // give up at their next series. Thread-safe.
  void RequestStop();

  // Applies one batch and returns its acknowledgement: observations above
  // the (location, incarnation) high-water mark are validated and applied
  // or rejected with a reason; those at or below it are duplicates. Only a
  // contiguous prefix is applied: a batch starting past watermark + 1 (and
  // not declaring the range before it dropped, Batch.skipped_from) is
  // answered OUT_OF_ORDER with the expected sequence, nothing applied. A
  // declared dropped range is counted (observations_dropped) and stepped
  // over. Errors
  // concern the batch as a whole and leave the state untouched:
  // InvalidArgument (bad location id, sequence 0), PermissionDenied (a
  // location the catalog does not know while auto_register is off).
  absl::StatusOr<v1::Ack> ApplyBatch(const v1::Batch& batch);
  // The same with the time the batch was received (durable log replay
  // validates event-time bounds against it, as the first time).
  absl::StatusOr<v1::Ack> ApplyBatch(const v1::Batch& batch, absl::Time received);
  // The same on a view of the batch's bytes (batch_view.h), as ingest
  // reads it.
  absl::StatusOr<v1::Ack> ApplyBatch(const BatchView& batch, absl::Time received);
  // The same for a stream holding `owner` (ClaimLocation): Aborted, nothing
  // applied, once a newer stream claimed the batch's location.
  absl::StatusOr<v1::Ack> ApplyBatch(const BatchView& batch, absl::Time received, uint64_t owner);

  // Which observations of a batch fail ValidateObservation, and why, in
  // observation order. A function of the batch, its receive time and the
  // limits alone, so ingest computes it on its own thread before the
  // batch is logged, outside every engine lock; ApplyBatch without one
  // (replay, tests) computes it the same way, before it takes its lock.
  struct BatchChecks {
    std::vector<std::pair<uint32_t, absl::Status>> failed;  // (observation index, why)
  };
  BatchChecks CheckBatch(const BatchView& batch, absl::Time received) const;
  // ApplyBatch with the checks of `batch` at `received` (CheckBatch).
  absl::StatusOr<v1::Ack> ApplyBatch(const BatchView& batch, absl::Time received, uint64_t owner,
                                     const BatchChecks& checks);
  // The part of ApplyBatch that needs no order across locations: the
  // batch applied, and its ack, when its location and series exist (its
  // stream is registered if new), each new cell's table is started, the
  // location has room for its new cells, and nothing of it is refused,
  // rejected or out of order; else nothing done (nullopt: ApplyBatch
  // decides). Batches of
  // different locations applied this way commute with each other and
  // with any ApplyBatch of another location (the durable log's lanes,
  // batch_log.h).
  std::optional<v1::Ack> ApplyBeside(const BatchView& batch, absl::Time received, uint64_t owner,
                                     const BatchChecks& checks);

  // One live stream per location: makes the caller the location's owner
  // and returns its token (never 0). From then on batches applied with an
  // older owner's token are refused, so nothing of a superseded stream
  // applies after the newer stream's first batch. ReleaseLocation forgets
  // the owner when it is still `owner` (the stream ended).
  uint64_t ClaimLocation(absl::string_view location);
  void ReleaseLocation(absl::string_view location, uint64_t owner);

  // The check ingest makes before a batch goes to the durable log: the
  // OUT_OF_ORDER ack (nothing logged or applied) if the batch starts past
  // the next sequence expected after the watermark and every batch
  // admitted before it (committing, not yet applied); else nullopt, and
  // the batch counts as admitted. ApplyBatch checks again against what was
  // applied, so a batch admitted after one that never applied still
  // leaves no gap.
  std::optional<v1::Ack> Admit(const BatchView& batch);

  // Records an agent's heartbeat. InvalidArgument for a bad location id.
  absl::Status RecordHeartbeat(const v1::Heartbeat& heartbeat);

  // Applies a batch of the durable log again on a restart: ApplyBatch
  // without the capacity limits (--max_locations, --max_series,
  // --max_cells_per_location). What those admitted live depended also on
  // what the log does not hold (a heartbeat admitting its location,
  // retention freeing cells, series and locations at an evaluation), so
  // deciding them again could refuse what was acknowledged. What a limit
  // refused since the snapshot comes in with the rest (it was never
  // acknowledged as applied; the client's resend counts as a duplicate);
  // the limits hold again for every batch after. Not beside ApplyBatch.
  absl::StatusOr<v1::Ack> ReplayBatch(const v1::Batch& batch, absl::Time received);
  // What the capacity limits count that is held now over its limit, one
  // line each ("3 locations, above --max_locations=2"); empty when none
  // is (after a replay, say).
  std::vector<std::string> OverCapacity() const ABSL_LOCKS_EXCLUDED(mu_);

  // Replaces the catalog (SIGHUP). Cells, watermarks, findings and trust
  // are kept; groups, promises and thresholds apply from the next tick.
  void SetCatalog(std::shared_ptr<const Catalog> catalog);

  // Recomputes every dirty series and publishes a new snapshot now.
  void Recompute();
  // Recomputes everything and evaluates the findings now (the evaluation
  // tick calls it; tests call it with an injected clock).
  void Evaluate();

  // The latest published snapshot; never null.
  std::shared_ptr<const Snapshot> snapshot() const;

  // The three queries below read cells as they are now, under the ingest
  // lock held shared: they run beside one another and beside the
  // evaluation's copies; a batch waits for the one reading.

  // One series as it is now (not as of the last tick): every location's
  // value per peer group, the statistics and outliers over exactly those
  // values. NotFound for a series nobody reported.
  absl::StatusOr<v1::KeyDetailResponse> KeyDetail(const v1::SeriesId& series,
                                                  const std::string& group = "") const;

  // `location`'s waits per service now, by service; empty for a location
  // without wait tickets in the window (or unknown).
  std::vector<CurrentWait> CurrentWaits(const std::string& location) const;

  // The scorecard of one location, with its trust trend (TrustTrend).
  // NotFound if it never reported and is not in the catalog.
  absl::StatusOr<v1::LocationScorecardResponse> LocationScorecard(
      const std::string& location) const;

  absl::Time now() const { return options_.clock(); }

  // The whole state (cells, high-water marks, counters, findings being
  // tracked with their start times, trust accounts, drift baselines and
  // charts) as a serialized constance.state.v1.EngineState: exactly the
  // batches applied so far. The three capture steps below, in one call.
  std::string SaveState();

  // A capture of the whole state in progress, taken in three steps so that
  // ingest never waits for it (the collector's snapshots, batch_log.h):
  //
  //   std::shared_ptr<Engine::StateCapture> c = engine.PrepareCapture();
  //   engine.BeginCapture(c);       // brief: the moment the state is taken
  //   std::string state = engine.FinishCapture(c);  // long; ingest goes on
  //
  // PrepareCapture copies the findings being tracked, trust and drift as
  // of the last evaluation (it waits for one in progress; ingest does not).
  // BeginCapture, under the engine's lock for a moment, copies the
  // locations, high-water marks and counters and fixes the series to be
  // captured: the state is then that of exactly the batches applied so
  // far. FinishCapture copies those series a few at a time (the lock held
  // for a chunk of cells at most) and serializes everything off the lock.
  // Meanwhile the first change to each cell of a series not yet copied
  // keeps the cell as it was (copy before write, one cell at a time), so
  // every series is captured as it was at BeginCapture: the result is that
  // moment's state, whatever was applied since. The evaluation state is from no later than that
  // moment (a snapshot reads as if taken before any evaluation after it), so every location it
  // names is in the snapshot. Each step once, in this order; captures may overlap. The steps may
  // run on different threads, one at a time. A capture dropped after BeginCapture without
  // FinishCapture stops being kept.
  class StateCapture;
  std::shared_ptr<StateCapture> PrepareCapture();
  void BeginCapture(const std::shared_ptr<StateCapture>& capture);
  std::string FinishCapture(const std::shared_ptr<StateCapture>& capture);
  // Replaces the state with a snapshot's (at start, before any batch).
  // A snapshot of an older format is migrated (engine_state.cc lists the
  // formats and their migrations). FailedPrecondition, naming both
  // formats, for one written by a newer collector; InvalidArgument naming
  // what is wrong for one it cannot read; either way the engine is
  // unchanged. The restored findings and trust are published at once (a
  // restart never empties /metrics' findings until the next evaluation);
  // statistics are recomputed from the restored cells on the next tick.
  absl::Status LoadState(const std::string& bytes);

  // The snapshot format SaveState writes (engine_state.cc lists them), and
  // the oldest LoadState reads (the first release's): every format in
  // between is read.
  static const uint32_t kStateFormat;
  static constexpr uint32_t kOldestStateFormat = 1;

 private:
  struct Series {
    SeriesKey key;
    CellTable<PriceCell> price;  // By location index.
    CellTable<WaitCell> wait;
    CellTable<ComplianceCell> compliance;
    CellTable<ScoreCell> score;
    // What must be done again: kStats its statistics (the stats tick),
    // kFindings its evaluation, kRetain retention's pass over its cells
    // (set for a new cell, or all of them: ApplyObservationLocked).
    static constexpr uint8_t kStats = 1, kFindings = 2, kRetain = 4;
    static constexpr uint8_t kChanged = kStats | kFindings | kRetain;
    uint8_t dirty = 0;
    // When time alone next changes its statistics (Horizon), for the stats
    // tick; Evaluate keeps its own in SeriesOutcome.
    int64_t stats_until_ns = INT64_MAX;
    // When retention next has a cell of it to free (ExpireCellsLocked).
    int64_t expire_at_ns = INT64_MIN;
    // False for a slot retention freed (on free_series_ for reuse).
    bool live = true;
  };
  struct Location {
    LocationState state;
    const LocationEntry* entry = nullptr;  // Into catalog_; null if undeclared.
    uint64_t cells = 0;                    // Against limits.max_cells_per_location.
    // The series this location started a cell in: every series holding one
    // of its cells is here, so a query about one location reads its own
    // series, not every series, while it holds the ingest lock. Entries
    // whose cell retention freed (or whose slot another series took) stay
    // until the list is a quarter longer than the cells held and is
    // compacted where it lies (NoteCellLocked: its capacity stays, so a
    // year of churn never grows it past the next power of two above 1.25
    // times the cells); readers check each entry (SeriesOfLocked).
    std::vector<uint32_t> series;
    // False for a slot retention freed (on free_locations_ for reuse).
    bool live = true;
  };
  struct Stream {
    uint64_t watermark = 0;
    absl::Time last_applied = absl::InfinitePast();  // Receive time of its last batch.
  };
  // The newest mark of a location dropped for silence.
  struct RetiredStream {
    uint64_t incarnation = 0;
    Stream stream;
  };
  // What one retention pass freed: the names of the removed series, the
  // slots of the dropped locations.
  struct Forgotten {
    absl::flat_hash_set<std::string> series_names;
    absl::flat_hash_set<uint32_t> locations;
  };
  // A series' values by peer group, and the drift states, as the
  // evaluators read them (evaluators.h).
  using Member = GroupMember;
  using GroupDrift = GroupDriftState;
  using CellDrift = CellDriftState;
  struct SeriesData {
    uint32_t index = 0;
    SeriesKey key;
    std::vector<GroupData> groups;
    // Prices: decreases within rollout_grace of `now`, by location index.
    std::vector<std::pair<uint32_t, PriceChange>> drops;
    // When time alone next changes what this series reads (HorizonWalk, engine.cc).
    int64_t until_ns = INT64_MAX;
  };
  // Price drops by series index: (location index, change).
  using LateDrops = absl::flat_hash_map<uint32_t, std::vector<std::pair<uint32_t, PriceChange>>>;
  // What one series added to an evaluation, kept and added again by the
  // evaluations that do not recompute it: the same inputs give the same
  // conditions, and trust is tallied per evaluation. until_ns 0: none yet.
  struct SeriesOutcome {
    int64_t until_ns = 0;
    std::vector<Condition> conditions;
    std::vector<SplitCandidate> splits;
    // Kept (true) or broken promises, and trust, by location index, in the
    // order LocationCondition counted them.
    std::vector<std::pair<uint32_t, bool>> kept;
    std::vector<std::pair<uint32_t, double>> deposits, withdrawals;
    // Those within rollout_grace when computed; null when none.
    PriceDropList::Part price_drops;
    std::vector<PromiseStanding> promises;
  };
  // Which series a recomputation takes: called under mu_ with each live
  // series' index and the recomputation's now.
  using SeriesFilter = std::function<bool(uint32_t index, const Series& series, int64_t now_ns)>;
  static void FallBackToChain(uint64_t min_group,
                              std::map<std::string, std::vector<Member>>* groups);
  // Copies one series' comparable values grouped by peer group, the
  // members naming their locations from `names`. Caller holds mu_, shared
  // or not.
  // The groups' vectors come from `pool` when one is given.
  SeriesData CollectLocked(uint32_t index, absl::Time now, const Catalog& catalog,
                           MemberNames* names, VectorPool<GroupMember>* pool = nullptr) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Statistics, levels, rollouts and outliers of every group.
  void ComputeGroups(SeriesData* data, absl::Time now, const Catalog& catalog) const;
  // Evaluate's assembly (engine.cc) of the evaluators (evaluators.h, one
  // per finding kind). An Evaluation holds one evaluation's inputs and
  // what its series add for zones, the tracker and trust; a Pending is one
  // location's reasons in a series before the series' unkeepable promises
  // are known. Reasons are appended as (strength, reason) in the order a
  // location finding lists them before sorting. What reads or updates
  // drift state runs with eval_mu_ held (inside RecomputeSeries' visit).
  struct Evaluation;
  struct Pending;
  // Every condition of one computed series: group drift, split candidates,
  // unkeepable promises, each judged location's finding; the trust each
  // location earns there.
  void EvaluateSeries(const SeriesData& data, const Evaluation& ev, SeriesOutcome* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(eval_mu_);
  // Evaluates the series whose outcome no longer holds (every series when
  // not Options::incremental), then adds every series' outcome to *ev in
  // series order, and the late drops published now. False when a stop
  // abandoned it.
  bool EvaluateSeriesOutcomes(const std::shared_ptr<const Catalog>& catalog, const LateDrops& late,
                              Evaluation* ev) ABSL_EXCLUSIVE_LOCKS_REQUIRED(eval_mu_);
  // Adds one series' outcome to the evaluation's.
  static void Merge(const SeriesOutcome& outcome, const FindingTracker& tracker, Evaluation* ev);
  // The series' price drops (data.drops), each classified in the group
  // its location is judged in by the rollout rule (NearAny, evaluators.h),
  // at `revision` unless `before` (the series' last outcome's) held it as
  // it is. Null when there are none.
  static PriceDropList::Part PriceDropsOf(
      const SeriesData& data, const std::vector<std::pair<uint32_t, PriceChange>>& drops,
      const std::vector<PriceDrop>* before, uint64_t revision);
  // Settles *p's promise and outlier in ev's trust tallies (a promise in
  // `unkeepable` counts for nothing) and adds its location condition when
  // a reason remains that holds, or that keeps a condition `tracker`
  // tracks. Moves p's reasons out of `pool` (the series' reasons).
  static void LocationCondition(const SeriesKey& key, const std::string& series_name,
                                const absl::flat_hash_set<std::string>& unkeepable,
                                const TrustPolicy& trust, const FindingTracker& tracker, Pending* p,
                                std::vector<WeightedReason>* pool, SeriesOutcome* out);
  // Stale keys: a location whose newest result for a compliance key with
  // a cadence (KeyJudging::expected_every) is older than that cadence.
  void OverdueKeyConditions(absl::Time now, std::vector<Condition>* out) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // Recomputes the series `wanted` takes (clearing their `clears` bits of
  // Series::dirty as each is read), publishes, and hands each computed
  // series to `visit` (evaluation) before dropping it. `visit` runs on
  // Options::evaluation_threads threads at once, each series' on one;
  // `slots`, if given, is called first on the calling thread with the
  // number of series slots (every index visited is below it). False, with
  // nothing published and the series not reached still dirty, if a stop was
  // requested meanwhile.
  bool RecomputeSeries(const SeriesFilter& wanted, uint8_t clears,
                       const std::function<void(SeriesData&)>& visit,
                       const std::function<void(size_t)>& slots = nullptr);
  // Copies series `index` (clearing `clears` of its dirty bits), computes
  // its groups and publishes them in published_[index] (sized for it), then
  // visits it.
  void RecomputeOne(uint32_t index, absl::Time now, const Catalog& catalog, uint8_t clears,
                    MemberNames* names, const std::function<void(SeriesData&)>& visit)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(recompute_mu_);
  void Publish(std::shared_ptr<Snapshot> snapshot);
  // One series' cells, for a snapshot.
  static void SeriesToState(const Series& in, const std::vector<uint32_t>& saved,
                            state::v1::Series* out);
  // A deep copy of a series' key and cells (not its flags).
  static Series CopyOf(const Series& in);
  // Keeps, for every capture in progress that has not copied series
  // `index` yet, the cell of family `value` at location `loc` as it is now
  // (or that there is none), unless it kept it already. Anything changing,
  // creating or removing a cell calls it first; nothing may move a series
  // to another index while captures_ is not empty.
  void PreserveForCapturesLocked(uint32_t index, v1::Observation::ValueCase value, uint32_t loc)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!captures_.empty()) PreserveSlowLocked(index, value, loc);
  }
  void PreserveSlowLocked(uint32_t index, v1::Observation::ValueCase value, uint32_t loc)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether a capture is between BeginCapture and the end of its
  // FinishCapture (forgetting those abandoned). Retention, which frees and
  // reuses slots, waits while one is.
  bool CaptureRunningLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Puts the cells a capture kept (PreserveForCapturesLocked) back into
  // `copy`, a copy of their series made since.
  struct CaptureBefore;
  static void PutBack(const CaptureBefore& before, Series* copy);
  // One series of a snapshot, its cells checked against `n_locations`;
  // adds its cells to `*cells`. InvalidArgument naming what is wrong.
  static absl::Status SeriesFromState(const state::v1::Series& in, uint32_t n_locations,
                                      Series* out, uint64_t* cells);
  // LoadState's steps: a snapshot decoded and checked aside
  // (engine_state.cc), then put in use, the ingest state and the
  // evaluation state. Each moves what it installs out of `*restored`.
  struct Restored;
  void InstallIngestStateLocked(Restored* restored) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void InstallEvaluationStateLocked(Restored* restored) ABSL_EXCLUSIVE_LOCKS_REQUIRED(eval_mu_);
  // Publishes the tracked findings and the trust accounts of `names` (by
  // location index) as evaluated at `evaluated_at`, with each location's
  // promises kept and broken in that evaluation (none after a restore).
  // Evaluate calls it, and LoadState, so that the findings a snapshot
  // restores are served from the first scrape after a restart.
  void PublishFindings(
      absl::Time evaluated_at, int persistence, const std::vector<std::string>& names,
      const absl::flat_hash_map<uint32_t, std::pair<uint64_t, uint64_t>>& kept_broken,
      PriceDropList price_drops = {}, std::vector<PromiseStanding> promises = {})
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(eval_mu_);
  uint32_t LocationIndex(absl::string_view location) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether location `loc` may hold `obs`'s cell in `series` (nullptr for
  // a series not started): the cell exists, or
  // the location is under max_cells_per_location and, for a new series,
  // the collector under max_series. Else the rejection, its reason code
  // first ("location_cells: ...", "series: ...").
  absl::Status RoomForCellLocked(const Series* series, uint32_t loc,
                                 const ObservationView& obs) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Rebuilds catalog_ from base_catalog_ and the agents' labels when they
  // changed: once per tick at most, not per heartbeat.
  void RefreshCatalogLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether `batch` may apply: its stream still owns the location (when
  // `owner` is not 0), the catalog allows it, --max_locations has room.
  absl::Status MayApplyLocked(const BatchView& batch, uint64_t owner) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // ApplyBatch's steps. What every observation of one batch shares
  // (engine.cc). The per-observation steps are always inlined (defined in
  // engine.cc, ApplyBatch their only caller): the ingest path pays no call
  // for them.
  struct ApplyContext;
  // Applies observation number `seq` of a batch to its cell (creating the
  // series or the cell when new): true. Or counts its rejection (`invalid`,
  // its validation's failure, else no room for a new cell) and adds it to
  // *ack: false.
  // `looked_up` is what was found for it before the batch's first
  // observation was applied.
  struct LookedUp {
    static constexpr uint32_t kNoSeries = UINT32_MAX;
    uint32_t series = kNoSeries;
    // The location's cell of that family (a PriceCell, WaitCell, ... of
    // the series), null if it did not exist. It stays where it is while
    // the batch applies: a cell is only inserted into its location's
    // stripe's table (CellTable), by a batch holding that stripe or mu_
    // exclusively, so only an observation of the same series, family and
    // location of this batch could insert beside it, and that one finds
    // it; nothing erases during a batch; a series moved when series_
    // grows keeps its tables' storage (Series moves without throwing).
    void* cell = nullptr;
  };
  // The index of `obs`'s series (or of `key`'s), kNoSeries if not held.
  uint32_t FindSeriesLocked(const ObservationView& obs) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  uint32_t FindSeriesLocked(const HashedSeriesKeyView& key) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Looks up every observation's series and cell into *out (ApplyBatch
  // says how). With `shared` asked, false at the first observation the
  // shared path cannot apply: its series is not held, or its cell is not
  // and its table is not started (CellTable::started).
  bool LookUpLocked(const BatchView& batch, uint32_t loc, bool shared, std::vector<LookedUp>* out)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The shared path: `batch` applied under mu_ held shared and its
  // location's stripe, when its location, stream and series all exist,
  // each new cell's table is started, the location has room for its new
  // cells, and nothing of it is refused, rejected or out of order; else
  // nothing done (nullopt) and ApplyBatch takes mu_ exclusively; declined
  // because its location or stream is not registered yet, it also sets
  // *unregistered (RegisterStream may then let it apply shared).
  std::optional<v1::Ack> ApplyShared(const BatchView& batch, absl::Time now, uint64_t owner,
                                     const BatchChecks& checks, bool* unregistered)
      ABSL_LOCKS_EXCLUDED(mu_);
  // A batch's end, on either path: its counts, its stream's mark, its
  // location's state, its ack. The caller holds mu_ exclusively, or
  // shared and the location's stripe.
  v1::Ack FinishBatchLocked(const BatchView& batch, absl::Time now, uint32_t loc, Stream& stream,
                            uint32_t duplicates, uint32_t applied, v1::Ack ack)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  inline ABSL_ATTRIBUTE_ALWAYS_INLINE bool ApplyObservationLocked(
      const ObservationView& obs, uint64_t seq, const absl::Status* invalid, LookedUp looked_up,
      const ApplyContext& ctx, v1::Ack* ack) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Location `loc` started a cell in series `index`: counted, and listed.
  // The caller holds mu_ exclusively, or shared and the location's stripe.
  void NoteCellLocked(uint32_t loc, uint32_t index) ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Whether location `loc` may start `more` cells under
  // --max_cells_per_location.
  bool RoomForCellsLocked(uint32_t loc, uint64_t more) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Registers the stream of `batch`, and its location if `new_location`
  // allows, when new and the batch may apply, so the batch and its
  // stream's next ones take the shared path; whether it registered
  // anything.
  bool RegisterStream(const BatchView& batch, uint64_t owner, bool new_location)
      ABSL_LOCKS_EXCLUDED(mu_);
  // ApplyShared, and once more after RegisterStream(`new_location`) when
  // it declined for want of a registered location or stream.
  std::optional<v1::Ack> ApplySharedRegistering(const BatchView& batch, absl::Time now,
                                                uint64_t owner, const BatchChecks& checks,
                                                bool new_location) ABSL_LOCKS_EXCLUDED(mu_);
  // The series holding a cell of location `loc`, once each, by index.
  std::vector<uint32_t> SeriesOfLocked(uint32_t loc) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Keeps of `listed` (location `loc`'s list or a copy) the series
  // holding a cell of `loc`, once each, by index.
  void KeepSeriesOfLocked(uint32_t loc, std::vector<uint32_t>* listed) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Counts the rejection of observation `seq` and adds it to *ack.
  void RejectLocked(uint64_t seq, const absl::Status& why, v1::Ack* ack)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Starts the series of `obs`, in a slot retention freed if there is one.
  SeriesIndex::iterator AddSeriesLocked(const ObservationView& obs)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies `obs`, observed at `at` (ns), to its location's cell in
  // `series` (number `index`): true when the cell is new (with mu_ held
  // shared, the caller holds the location's stripe and the cell's table
  // is started). A price drop
  // already older than the rollout grace goes to late_drops_; a price
  // compared before and seen again unchanged sets *seen_again.
  // `found`: the cell the lookup found (LookedUp::cell), or null.
  inline ABSL_ATTRIBUTE_ALWAYS_INLINE bool ApplyToCellLocked(Series* series, uint32_t index,
                                                             void* found,
                                                             const ObservationView& obs, int64_t at,
                                                             const ApplyContext& ctx,
                                                             bool* seen_again)
      ABSL_SHARED_LOCKS_REQUIRED(mu_) ABSL_LOCKS_EXCLUDED(late_mu_);
  // Whether `location` may report: known already, or the catalog allows
  // it and --max_locations has room. Else the refusal (refusal.h reason).
  absl::Status AdmitLocationLocked(absl::string_view location) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Capacity limit `limit` (0: none), or none while ReplayBatch applies:
  // every capacity check reads its limit through here.
  uint64_t Capacity(uint64_t limit) const {
    return replaying_.load(std::memory_order_relaxed) ? 0 : limit;
  }
  // In the operator's catalog (agent labels do not declare a location).
  bool DeclaredLocked(absl::string_view location) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void TickLoop(bool evaluation);
  // Retention (docs/design.md, "Retention"), at the start of Evaluate:
  // frees expired cells, removes series without cells, drops locations
  // removed from the catalog or silent past location_retention, prunes
  // superseded high-water marks, then the drift state and trust of what
  // went.
  void ForgetLocked(absl::Time now, const Catalog& catalog)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(eval_mu_, recompute_mu_, mu_);
  // Frees `series`'s cells older than its family's ttl plus retention;
  // true when none is left.
  bool ExpireCellsLocked(Series* series, absl::Time now, const Catalog& catalog)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveSeriesLocked(uint32_t index, Forgotten* forgotten)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(eval_mu_, recompute_mu_, mu_);
  // Frees `loc`'s slot: never while a recomputation runs (MemberNames).
  void DropLocationLocked(uint32_t loc, Forgotten* forgotten)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(recompute_mu_, mu_);
  // Whether `loc` is to be dropped now: not in the operator's catalog with
  // auto_register off, or silent past location_retention.
  bool ExpiredLocationLocked(const Location& l, absl::Time now, const Catalog& catalog) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PruneStreamsLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // How long a mark must have been idle before it may go (the proof is
  // at PruneStreamsLocked): --max_lateness plus --max_future_skew.
  absl::Duration MarkIdleBound() const;

  const Options options_;
  const absl::Time started_at_;

  mutable absl::Mutex mu_;
  // The operator's catalog, and the one in use: the operator's with the
  // labels agents declare merged in (RefreshCatalogLocked).
  std::shared_ptr<const Catalog> base_catalog_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const Catalog> catalog_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::map<std::string, std::string>> agent_labels_
      ABSL_GUARDED_BY(mu_);
  bool labels_dirty_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<std::string, uint32_t> location_index_ ABSL_GUARDED_BY(mu_);
  std::vector<Location> locations_ ABSL_GUARDED_BY(mu_);
  SeriesIndex series_index_ ABSL_GUARDED_BY(mu_);
  std::vector<Series> series_ ABSL_GUARDED_BY(mu_);
  // Price drops that arrived older than the rollout grace, by series index:
  // evaluations publish drops by event time within the grace, so these are
  // published by the next evaluation instead (snapshots keep them: the
  // batch that brought one is gone from the log once a snapshot is saved).
  LateDrops late_drops_ ABSL_GUARDED_BY(late_mu_);
  // Adds late_drops_ to a snapshot, by series id and location name.
  void SaveLateDropsLocked(state::v1::EngineState* state) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_, late_mu_);
  // Takes late_drops_, leaving out those of series and locations retention
  // just freed (their slots may be reused before they are published),
  // each series' in order of location and time (batches of different
  // locations add them in either order).
  LateDrops TakeLateDropsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_, late_mu_);
  // Slots of locations_ and series_ that retention freed, reused first.
  std::vector<uint32_t> free_locations_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> free_series_ ABSL_GUARDED_BY(mu_);
  // ApplyBatch's lookups of one batch (kept to spare an allocation a batch).
  std::vector<LookedUp> looked_up_ ABSL_GUARDED_BY(mu_);
  // Stripes: batches of different locations apply at once. A batch on
  // the shared path (ApplyShared) holds mu_ shared and its location's
  // stripe (StripeOf) exclusively, and writes only
  // its location's cells (new ones into its stripe's tables, started
  // ones: CellTable), stream and state, its series' dirty flags (an
  // atomic or), the counters (atomics) and, under late_mu_, late_drops_.
  // Who reads those under mu_ held shared holds every stripe shared
  // (StripesShared); under mu_ exclusively, no batch applies. Applied on
  // the shared path, a batch changes what a batch of another location
  // would find in no way, so applying batches at once equals applying
  // them one after the other: structure (locations, streams, series, a
  // table's stripes) and rejections are only changed under mu_
  // exclusively.
  static constexpr size_t kStripes = kLocationStripes;
  static size_t StripeOf(uint32_t loc) { return LocationStripe(loc); }
  struct alignas(64) Stripe {
    absl::Mutex mu;
  };
  mutable std::array<Stripe, kStripes> stripes_;
  class StripesShared;
  absl::Mutex late_mu_ ABSL_ACQUIRED_AFTER(mu_);
  // High-water marks by (location index, incarnation).
  absl::flat_hash_map<std::pair<uint32_t, uint64_t>, Stream> streams_ ABSL_GUARDED_BY(mu_);
  // The newest mark of each location dropped for silence, by name, given
  // back when it reports again (PruneStreamsLocked says why it is kept).
  absl::flat_hash_map<std::string, RetiredStream> retired_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> cells_{0};  // Added to on the shared path too.
  // The latest `now` a recomputation read cells at: a price seen again
  // unchanged and not stale then was compared then (ApplyBatch).
  int64_t recomputed_at_ns_ ABSL_GUARDED_BY(mu_) = INT64_MIN;
  // Atomic: batches on the shared path add to them at once.
  std::atomic<uint64_t> applied_{0};
  uint64_t rejected_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<uint64_t> duplicates_{0};
  std::atomic<uint64_t> batches_{0};
  // Declared dropped by agents, and batches answered OUT_OF_ORDER (in the
  // saved state since 0.2; a 0.1 snapshot starts them at 0).
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t out_of_order_ ABSL_GUARDED_BY(mu_) = 0;
  // The stream that owns each location now (ClaimLocation), by token.
  absl::flat_hash_map<std::string, uint64_t> owners_ ABSL_GUARDED_BY(mu_);
  uint64_t last_owner_ ABSL_GUARDED_BY(mu_) = 0;
  // The end of the batches Admit let through, by (location, incarnation).
  absl::flat_hash_map<std::pair<std::string, uint64_t>, uint64_t> admitted_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> rejected_by_reason_ ABSL_GUARDED_BY(mu_);
  // Captures begun and not yet finished (BeginCapture), which series keep
  // copies for (PreserveForCapturesLocked).
  std::vector<std::weak_ptr<StateCapture>> captures_ ABSL_GUARDED_BY(mu_);

  // Serialises recomputations so two ticks never interleave publishing.
  absl::Mutex recompute_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::vector<std::vector<std::shared_ptr<const SeriesStats>>> published_
      ABSL_GUARDED_BY(recompute_mu_);

  // Evaluation state: findings, trust, drift.
  absl::Mutex eval_mu_ ABSL_ACQUIRED_BEFORE(recompute_mu_);
  FindingTracker tracker_ ABSL_GUARDED_BY(eval_mu_);
  // Recomputations' buffers (engine.cc); their pools lock themselves.
  struct Scratch;
  const std::unique_ptr<Scratch> scratch_;
  absl::flat_hash_map<uint32_t, TrustAccount> trust_ ABSL_GUARDED_BY(eval_mu_);
  // When trust last accrued: each evaluation credits the time since (a
  // day kept earns one deposit), whatever the evaluation interval. The
  // first evaluation of a fresh engine credits one interval; a restored
  // one carries on from its accounts' last update.
  absl::Time trust_accrued_at_ ABSL_GUARDED_BY(eval_mu_) = absl::InfinitePast();
  // Each location's trust balance by day (a leaf lock: the scorecard reads
  // it without waiting for an evaluation).
  mutable absl::Mutex trend_mu_;
  absl::flat_hash_map<uint32_t, TrustTrend> trust_trend_ ABSL_GUARDED_BY(trend_mu_);
  std::deque<uint64_t> evaluated_counts_ ABSL_GUARDED_BY(eval_mu_);
  // Each series' part of the last evaluation that computed it, by index,
  // and the catalog those were computed with (another one voids them all).
  std::vector<SeriesOutcome> outcomes_ ABSL_GUARDED_BY(eval_mu_);
  std::shared_ptr<const Catalog> outcomes_catalog_ ABSL_GUARDED_BY(eval_mu_);
  // The price drops' source and the revision of the last evaluation.
  const uint64_t drop_source_ = PriceDropList::NewSource();
  uint64_t drop_revision_ ABSL_GUARDED_BY(eval_mu_) = 0;
  // Drops that arrived older than rollout_grace, as evaluations found
  // them, and until when they are published.
  std::vector<std::pair<PriceDropList::Part, absl::Time>> late_published_ ABSL_GUARDED_BY(eval_mu_);
  // By group id, each with its cells' drift. A node map: series evaluated
  // on different threads (Options::evaluation_threads) add their groups'
  // while others hold theirs; drift_mu_ guards finding and adding one.
  absl::node_hash_map<std::string, GroupDriftState> group_drift_ ABSL_GUARDED_BY(eval_mu_);
  absl::Mutex drift_mu_ ABSL_ACQUIRED_AFTER(eval_mu_);

  mutable absl::Mutex snapshot_mu_;
  std::shared_ptr<const Snapshot> snapshot_ ABSL_GUARDED_BY(snapshot_mu_);

  absl::Mutex tick_mu_;
  bool stopping_ ABSL_GUARDED_BY(tick_mu_) = false;
  // Set by RequestStop, cleared by Start; read between series.
  std::atomic<bool> abandon_{false};
  // Set while ReplayBatch applies (Capacity).
  std::atomic<bool> replaying_{false};
  std::thread stats_thread_;
  std::thread eval_thread_;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_ENGINE_H_
