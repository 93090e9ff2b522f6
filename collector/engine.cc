#include "collector/engine.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "constance/validate.h"

namespace constance::collector {
namespace {

constexpr char kChainGroup[] = "chain";

// The field a validation message names ("price.minor_units: must ..."),
// used as the bounded `reason` label of the rejection counter.
std::string ReasonCode(absl::string_view message) {
  size_t colon = message.find(':');
  return std::string(colon == absl::string_view::npos ? message : message.substr(0, colon));
}

int64_t ToUnixNanos(const google::protobuf::Timestamp& ts) {
  return ts.seconds() * 1'000'000'000 + ts.nanos();
}

void ToTimestamp(int64_t ns, google::protobuf::Timestamp* ts) {
  ts->set_seconds(ns / 1'000'000'000);
  ts->set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
}

void FillGroupStats(const SeriesKey& key, absl::string_view group, const GroupSummary& s,
                    const Band& band, v1::GroupStats* out) {
  SeriesToProto(key, out->mutable_series());
  out->set_group(std::string(group));
  out->set_n(s.n);
  out->set_mean(s.mean);
  out->set_stddev(s.stddev);
  out->set_cv(s.cv);
  out->set_min(s.min);
  out->set_max(s.max);
  out->set_median(s.median);
  out->set_mad(s.mad);
  out->set_band_low(band.low);
  out->set_band_high(band.high);
}

void FillOutlier(const SeriesKey& key, absl::string_view group, const GroupSummary& s,
                 const Band& band, const OutlierResult& r, const std::string& location,
                 v1::Outlier* out) {
  out->set_location(location);
  SeriesToProto(key, out->mutable_series());
  out->set_group(std::string(group));
  out->set_value(r.value);
  out->set_expected(s.median);
  out->set_band_low(band.low);
  out->set_band_high(band.high);
  out->set_z(r.z);
  out->set_magnitude(r.magnitude);
  out->set_direction(r.direction);
  out->set_group_size(s.n);
}

}  // namespace

SeriesKey SeriesOf(const v1::Observation& obs) {
  SeriesKey k;
  k.family = FamilyOf(obs);
  k.key = obs.key();
  if (k.family == v1::FAMILY_PRICE) {
    k.currency = obs.price().currency();
    k.kind = obs.price().kind() == v1::PRICE_KIND_UNSPECIFIED ? v1::SHELF : obs.price().kind();
  }
  return k;
}

SeriesKey SeriesFromProto(const v1::SeriesId& id) {
  SeriesKey k;
  k.family = id.family();
  k.key = id.key();
  if (k.family == v1::FAMILY_PRICE) {
    k.currency = id.currency();
    k.kind = id.kind() == v1::PRICE_KIND_UNSPECIFIED ? v1::SHELF : id.kind();
  }
  return k;
}

void SeriesToProto(const SeriesKey& key, v1::SeriesId* id) {
  id->set_family(key.family);
  id->set_key(key.key);
  if (key.family == v1::FAMILY_PRICE) {
    id->set_currency(key.currency);
    id->set_kind(key.kind);
  }
}

Engine::Engine(Options options) : options_(std::move(options)) {
  auto empty = std::make_shared<Snapshot>();
  empty->computed_at = options_.clock();
  snapshot_ = std::move(empty);
}

Engine::~Engine() { Stop(); }

void Engine::Start() {
  absl::MutexLock lock(&tick_mu_);
  if (tick_thread_.joinable()) return;
  stopping_ = false;
  tick_thread_ = std::thread([this] { TickLoop(); });
}

void Engine::Stop() {
  {
    absl::MutexLock lock(&tick_mu_);
    stopping_ = true;
  }
  if (tick_thread_.joinable()) tick_thread_.join();
}

void Engine::TickLoop() {
  for (;;) {
    {
      absl::MutexLock lock(&tick_mu_);
      if (tick_mu_.AwaitWithTimeout(absl::Condition(&stopping_), options_.stats_interval)) return;
    }
    Recompute();
  }
}

uint32_t Engine::LocationIndex(const std::string& location) {
  auto [it, inserted] = location_index_.try_emplace(location, locations_.size());
  if (inserted) {
    LocationState state;
    state.location = location;
    locations_.push_back(std::move(state));
  }
  return it->second;
}

void Engine::ApplyToCell(const v1::Observation& obs, int64_t observed_at_ns, Cell* cell) {
  switch (obs.value_case()) {
    case v1::Observation::kPrice:
      // The latest event time wins, not the latest arrival.
      if (cell->count == 0 || observed_at_ns >= cell->observed_at_ns) {
        cell->value = static_cast<double>(obs.price().minor_units());
      }
      break;
    case v1::Observation::kWaitSeconds:
      cell->sum += obs.wait_seconds();
      break;
    case v1::Observation::kCheck:
      if (obs.check().passed()) {
        cell->sum += 1;
      } else if (obs.check().critical()) {
        ++cell->critical_failures;
      }
      break;
    case v1::Observation::kScore:
      cell->sum += obs.score();
      break;
    case v1::Observation::VALUE_NOT_SET:
      return;
  }
  ++cell->count;
  cell->observed_at_ns = std::max(cell->observed_at_ns, observed_at_ns);
}

double Engine::Comparable(v1::Family family, const Cell& cell) {
  switch (family) {
    case v1::FAMILY_PRICE:
      return cell.value;
    case v1::FAMILY_COMPLIANCE:
      // A failed critical check fails the location outright.
      return cell.critical_failures > 0 ? 0 : cell.sum / cell.count;
    default:
      return cell.sum / cell.count;
  }
}

absl::StatusOr<v1::Ack> Engine::ApplyBatch(const v1::Batch& batch) {
  if (absl::Status s = ValidateLocationId(batch.location()); !s.ok()) return s;
  if (batch.first_sequence() == 0) {
    return absl::InvalidArgumentError("batch.first_sequence: sequences start at 1");
  }
  const uint64_t count = batch.observations_size();
  if (batch.first_sequence() > UINT64_MAX - count) {
    return absl::InvalidArgumentError("batch.first_sequence: sequence range overflows");
  }
  const absl::Time now = options_.clock();
  const int64_t now_ns = absl::ToUnixNanos(now);

  v1::Ack ack;
  ack.set_location(batch.location());
  ack.set_incarnation(batch.incarnation());
  ack.set_first_sequence(batch.first_sequence());
  ack.set_count(static_cast<uint32_t>(count));
  ack.set_outcome(v1::Ack::APPLIED);

  absl::MutexLock lock(&mu_);
  const uint32_t loc = LocationIndex(batch.location());
  Stream& stream = streams_[{loc, batch.incarnation()}];
  uint32_t duplicates = 0;
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t seq = batch.first_sequence() + i;
    if (seq <= stream.watermark) {
      ++duplicates;
      continue;
    }
    const v1::Observation& obs = batch.observations(static_cast<int>(i));
    if (absl::Status s = ValidateObservation(obs, now, options_.limits); !s.ok()) {
      v1::Rejection* r = ack.add_rejections();
      r->set_sequence(seq);
      r->set_reason(std::string(s.message()));
      ++rejected_by_reason_[ReasonCode(s.message())];
      ++rejected_;
      continue;
    }
    SeriesKey key = SeriesOf(obs);
    auto [it, inserted] = series_index_.try_emplace(key, series_.size());
    if (inserted) {
      Series series;
      series.key = std::move(key);
      series_.push_back(std::move(series));
    }
    Series& series = series_[it->second];
    auto [cell, new_cell] = series.cells.try_emplace(loc);
    if (new_cell) ++cells_;
    ApplyToCell(obs, obs.has_observed_at() ? ToUnixNanos(obs.observed_at()) : now_ns,
                &cell->second);
    series.dirty = true;
    ++applied_;
  }
  duplicates_ += duplicates;
  ++batches_;
  stream.watermark = std::max(stream.watermark, batch.first_sequence() + count - 1);
  LocationState& state = locations_[loc];
  state.last_report = now;
  state.watermark = stream.watermark;
  ack.set_watermark(stream.watermark);
  ack.set_duplicates(duplicates);
  return ack;
}

absl::Status Engine::RecordHeartbeat(const v1::Heartbeat& heartbeat) {
  if (absl::Status s = ValidateLocationId(heartbeat.location()); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  LocationState& state = locations_[LocationIndex(heartbeat.location())];
  state.health.version = heartbeat.version().substr(0, 64);
  state.health.spool_depth = heartbeat.spool_depth();
  state.health.oldest_unacknowledged_seconds = heartbeat.oldest_unacknowledged_seconds();
  state.health.heartbeat_at = options_.clock();
  return absl::OkStatus();
}

void Engine::Recompute() {
  absl::MutexLock recompute_lock(&recompute_mu_);
  struct Work {
    uint32_t index;
    SeriesKey key;
    std::vector<LocatedValue> values;
    std::shared_ptr<SeriesStats> stats;
  };
  std::vector<Work> work;
  auto snapshot = std::make_shared<Snapshot>();
  {
    absl::MutexLock lock(&mu_);
    for (uint32_t i = 0; i < series_.size(); ++i) {
      Series& series = series_[i];
      if (!series.dirty) continue;
      series.dirty = false;
      Work w{i, series.key, {}, nullptr};
      w.values.reserve(series.cells.size());
      for (const auto& [loc, cell] : series.cells) {
        w.values.push_back({loc, Comparable(series.key.family, cell)});
      }
      work.push_back(std::move(w));
    }
    snapshot->cells = cells_;
    snapshot->observations_applied = applied_;
    snapshot->observations_rejected = rejected_;
    snapshot->observations_duplicate = duplicates_;
    snapshot->batches = batches_;
    snapshot->rejected_by_reason = rejected_by_reason_;
    snapshot->location_states = locations_;
    for (const auto& s : snapshot->location_states) {
      if (s.last_report != absl::InfinitePast()) ++snapshot->locations;
    }
  }
  // The expensive part runs without the ingest lock.
  for (Work& w : work) {
    auto stats = std::make_shared<SeriesStats>();
    stats->key = w.key;
    stats->group = kChainGroup;
    stats->summary = SummarizeGroup(w.values);
    stats->band = ExpectedBand(w.key.family, stats->summary, options_.policy);
    stats->outliers = FindOutliers(w.key.family, w.values, stats->summary, options_.policy);
    w.stats = std::move(stats);
  }
  {
    // Location names never change for an index; read them for the outliers.
    absl::MutexLock lock(&mu_);
    for (Work& w : work) {
      for (const OutlierResult& r : w.stats->outliers) {
        w.stats->outlier_locations.push_back(locations_[r.location].location);
      }
    }
  }
  for (Work& w : work) {
    if (published_.size() <= w.index) published_.resize(w.index + 1);
    published_[w.index] = std::move(w.stats);
  }
  for (const auto& s : published_) {
    if (s != nullptr && s->summary.n > 0) snapshot->series.push_back(s);
  }
  std::sort(snapshot->location_states.begin(), snapshot->location_states.end(),
            [](const LocationState& a, const LocationState& b) { return a.location < b.location; });
  snapshot->computed_at = options_.clock();
  absl::MutexLock lock(&snapshot_mu_);
  snapshot_ = std::move(snapshot);
}

std::shared_ptr<const Snapshot> Engine::snapshot() const {
  absl::MutexLock lock(&snapshot_mu_);
  return snapshot_;
}

absl::StatusOr<v1::KeyDetailResponse> Engine::KeyDetail(const v1::SeriesId& id) const {
  const SeriesKey key = SeriesFromProto(id);
  if (key.family == v1::FAMILY_UNSPECIFIED) {
    return absl::InvalidArgumentError("series.family: one of price, wait, compliance, score");
  }
  if (key.family == v1::FAMILY_PRICE && key.currency.empty()) {
    return absl::InvalidArgumentError("series.currency: a price series needs its currency");
  }
  struct Row {
    LocatedValue value;
    std::string location;
    uint64_t samples;
    int64_t observed_at_ns;
  };
  std::vector<Row> rows;
  {
    absl::MutexLock lock(&mu_);
    auto it = series_index_.find(key);
    if (it == series_index_.end() || series_[it->second].cells.empty()) {
      return absl::NotFoundError(absl::StrCat("no location reports ", FamilyName(key.family), " ",
                                              key.key, key.currency.empty() ? "" : " ",
                                              key.currency));
    }
    for (const auto& [loc, cell] : series_[it->second].cells) {
      rows.push_back({{loc, Comparable(key.family, cell)},
                      locations_[loc].location,
                      cell.count,
                      cell.observed_at_ns});
    }
  }
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    if (a.value.value != b.value.value) return a.value.value < b.value.value;
    return a.location < b.location;
  });
  std::vector<LocatedValue> values;
  for (const Row& r : rows) values.push_back(r.value);
  const GroupSummary summary = SummarizeGroup(values);
  const Band band = ExpectedBand(key.family, summary, options_.policy);
  v1::KeyDetailResponse response;
  FillGroupStats(key, kChainGroup, summary, band, response.mutable_stats());
  absl::flat_hash_map<uint32_t, const Row*> by_location;
  for (const Row& r : rows) {
    by_location[r.value.location] = &r;
    v1::LocationValue* v = response.add_values();
    v->set_location(r.location);
    v->set_value(r.value.value);
    v->set_samples(r.samples);
    ToTimestamp(r.observed_at_ns, v->mutable_observed_at());
  }
  for (const OutlierResult& r : FindOutliers(key.family, values, summary, options_.policy)) {
    FillOutlier(key, kChainGroup, summary, band, r, by_location[r.location]->location,
                response.add_outliers());
  }
  return response;
}

// Renders a published series into the Query API's messages.
void FillSeriesStats(const SeriesStats& stats, v1::GroupStats* out) {
  FillGroupStats(stats.key, stats.group, stats.summary, stats.band, out);
}

void FillSeriesOutliers(const SeriesStats& stats,
                        google::protobuf::RepeatedPtrField<v1::Outlier>* out) {
  for (size_t i = 0; i < stats.outliers.size(); ++i) {
    FillOutlier(stats.key, stats.group, stats.summary, stats.band, stats.outliers[i],
                stats.outlier_locations[i], out->Add());
  }
}

}  // namespace constance::collector
