// The collector's state: cells, delivery watermarks and published statistics.
//
// Engine owns every (location, series) cell. The ingest path (ApplyBatch)
// validates each observation, drops what an earlier batch already
// delivered (high-water mark per location and spool incarnation), updates
// cells and marks their series dirty: nothing more. A background tick
// (Options::stats_interval) recomputes the dirty series off the ingest path
// and publishes an immutable Snapshot that Query and /metrics read, so an
// observation never triggers a rescan of the chain and a scrape never
// blocks ingest.
//
//   Engine engine(Engine::Options{});
//   engine.Start();                       // the statistics tick
//   v1::Ack ack = *engine.ApplyBatch(batch);
//   std::shared_ptr<const Snapshot> s = engine.snapshot();
//   engine.Stop();
//
// Thread-safety: every public method may be called from any thread.
// Snapshots are immutable and may outlive the Engine's next tick.
#ifndef CONSTANCE_COLLECTOR_ENGINE_H_
#define CONSTANCE_COLLECTOR_ENGINE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "collector/stats.h"
#include "constance/v1/ingest.pb.h"
#include "constance/v1/query.pb.h"
#include "constance/validate.h"

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

// The series an observation belongs to, qualifiers normalised.
SeriesKey SeriesOf(const v1::Observation& obs);
SeriesKey SeriesFromProto(const v1::SeriesId& id);
void SeriesToProto(const SeriesKey& key, v1::SeriesId* id);

// The published statistics of one series.
struct SeriesStats {
  SeriesKey key;
  std::string group;  // "chain" until peer groups are declared.
  GroupSummary summary;
  Band band;
  std::vector<OutlierResult> outliers;  // Locations as names below.
  std::vector<std::string> outlier_locations;
};

// The Query API's rendering of a published series.
void FillSeriesStats(const SeriesStats& stats, v1::GroupStats* out);
void FillSeriesOutliers(const SeriesStats& stats,
                        google::protobuf::RepeatedPtrField<v1::Outlier>* out);

// What one agent last said about itself.
struct AgentHealth {
  std::string version;
  uint64_t spool_depth = 0;
  double oldest_unacknowledged_seconds = 0;
  absl::Time heartbeat_at = absl::InfinitePast();
};

// Per-location delivery facts, for /metrics.
struct LocationState {
  std::string location;
  absl::Time last_report = absl::InfinitePast();  // Receive time of the last batch.
  uint64_t watermark = 0;                         // Of the latest incarnation seen.
  AgentHealth health;
};

// An immutable view published by the statistics tick.
struct Snapshot {
  absl::Time computed_at = absl::InfinitePast();
  uint64_t locations = 0;
  uint64_t cells = 0;
  // Observations covered by the statistics below.
  uint64_t observations_applied = 0;
  uint64_t observations_rejected = 0;
  uint64_t observations_duplicate = 0;
  uint64_t batches = 0;
  // Rejected observations by the field that failed validation.
  std::map<std::string, uint64_t> rejected_by_reason;
  std::vector<std::shared_ptr<const SeriesStats>> series;  // Unordered.
  std::vector<LocationState> location_states;              // By location name.
};

class Engine {
 public:
  struct Options {
    absl::Duration stats_interval = absl::Seconds(1);
    OutlierPolicy policy;
    Limits limits;
    // The collector's clock, injectable for tests and replays.
    std::function<absl::Time()> clock = [] { return absl::Now(); };
  };

  explicit Engine(Options options);
  ~Engine();  // Stops the tick.
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Starts and stops the statistics tick thread. Stop is idempotent.
  void Start();
  void Stop();

  // Applies one batch and returns its acknowledgement: observations above
  // the (location, incarnation) high-water mark are validated and applied
  // or rejected with a reason; those at or below it are counted as
  // duplicates. Errors (InvalidArgument) concern the batch as a whole
  // (bad location id, sequence 0) and leave the state untouched.
  absl::StatusOr<v1::Ack> ApplyBatch(const v1::Batch& batch);

  // Records an agent's heartbeat. InvalidArgument for a bad location id.
  absl::Status RecordHeartbeat(const v1::Heartbeat& heartbeat);

  // Recomputes every dirty series and publishes a new snapshot now; the
  // tick calls it, tests call it to be deterministic.
  void Recompute();

  // The latest published snapshot; never null.
  std::shared_ptr<const Snapshot> snapshot() const;

  // One series as it is now (not as of the last tick): every location's
  // value, the statistics and outliers over exactly those values.
  // NotFound for a series nobody reported.
  absl::StatusOr<v1::KeyDetailResponse> KeyDetail(const v1::SeriesId& series) const;

  const Options& options() const { return options_; }

 private:
  // One (location, series) cell. Families use the fields they need.
  struct Cell {
    int64_t observed_at_ns = 0;  // Latest event time seen.
    double value = 0;            // Price: the latest price in minor units.
    double sum = 0;              // Wait: seconds; score: values; compliance: passes.
    uint64_t count = 0;          // Samples.
    uint32_t critical_failures = 0;
  };
  struct Series {
    SeriesKey key;
    absl::flat_hash_map<uint32_t, Cell> cells;  // By location index.
    bool dirty = false;
  };
  struct Stream {
    uint64_t watermark = 0;
  };

  static double Comparable(v1::Family family, const Cell& cell);
  static void ApplyToCell(const v1::Observation& obs, int64_t observed_at_ns, Cell* cell);
  uint32_t LocationIndex(const std::string& location) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TickLoop();

  const Options options_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, uint32_t> location_index_ ABSL_GUARDED_BY(mu_);
  std::vector<LocationState> locations_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<SeriesKey, uint32_t> series_index_ ABSL_GUARDED_BY(mu_);
  std::vector<Series> series_ ABSL_GUARDED_BY(mu_);
  // High-water marks by (location index, incarnation).
  absl::flat_hash_map<std::pair<uint32_t, uint64_t>, Stream> streams_ ABSL_GUARDED_BY(mu_);
  uint64_t cells_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t applied_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t rejected_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t duplicates_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t batches_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, uint64_t> rejected_by_reason_ ABSL_GUARDED_BY(mu_);

  // Serialises Recompute so two ticks never interleave their publishing.
  absl::Mutex recompute_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::vector<std::shared_ptr<const SeriesStats>> published_ ABSL_GUARDED_BY(recompute_mu_);

  mutable absl::Mutex snapshot_mu_;
  std::shared_ptr<const Snapshot> snapshot_ ABSL_GUARDED_BY(snapshot_mu_);

  absl::Mutex tick_mu_;
  bool stopping_ ABSL_GUARDED_BY(tick_mu_) = false;
  std::thread tick_thread_;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_ENGINE_H_
