#include "collector/engine.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "constance/format.h"
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

void ToTimestamp(int64_t ns, google::protobuf::Timestamp* ts) {
  ts->set_seconds(ns / 1'000'000'000);
  ts->set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
}

void ToTimestamp(absl::Time t, google::protobuf::Timestamp* ts) {
  if (t == absl::InfinitePast()) return;
  ToTimestamp(absl::ToUnixNanos(t), ts);
}

std::string Format(const SeriesKey& key, double value) {
  return FormatValue(key.family, key.currency, value);
}

std::string Percent(double ratio) { return absl::StrFormat("%+.1f%%", 100 * ratio); }

bool KeyMatches(const std::vector<std::string>& patterns, const std::string& key) {
  if (patterns.empty()) return true;
  for (const std::string& p : patterns) {
    if (KeyPatternMatches(p, key)) return true;
  }
  return false;
}

bool FamilyMatches(const std::vector<v1::Family>& families, v1::Family family) {
  return families.empty() || std::find(families.begin(), families.end(), family) != families.end();
}

const PeerGroupRule* RuleFor(const SeriesKey& key, const Catalog& catalog) {
  for (const PeerGroupRule& rule : catalog.peer_groups) {
    if (FamilyMatches(rule.families, key.family) && KeyMatches(rule.keys, key.key)) return &rule;
  }
  return nullptr;
}

std::string GroupName(const PeerGroupRule* rule, const LocationEntry* entry) {
  if (rule == nullptr || entry == nullptr) return kChainGroup;
  auto it = entry->labels.find(rule->label);
  if (it == entry->labels.end()) return kChainGroup;
  return absl::StrCat(rule->name, "=", it->second);
}

bool LabelsMatch(const std::map<std::string, std::string>& where, const LocationEntry* entry) {
  if (where.empty()) return true;
  if (entry == nullptr) return false;
  for (const auto& [label, value] : where) {
    auto it = entry->labels.find(label);
    if (it == entry->labels.end() || it->second != value) return false;
  }
  return true;
}

// The list price promised to a location now: the matching promise with the
// latest effective date not after now (zone-specific promises are matched
// through `where`).
const PricePromise* PricePromiseFor(const SeriesKey& key, const LocationEntry* entry,
                                    absl::Time now, const Catalog& catalog) {
  const PricePromise* best = nullptr;
  for (const PricePromise& p : catalog.price_promises) {
    if (p.key != key.key || p.currency != key.currency || p.kind != key.kind) continue;
    if (p.effective > now || !LabelsMatch(p.where, entry)) continue;
    if (best == nullptr || p.effective > best->effective ||
        (p.effective == best->effective && p.where.size() > best->where.size())) {
      best = &p;
    }
  }
  return best;
}

const WaitPromise* WaitPromiseFor(const std::string& key, const Catalog& catalog) {
  for (const WaitPromise& p : catalog.wait_promises) {
    if (p.key == key) return &p;
  }
  return nullptr;
}

const CheckPromise* CheckPromiseFor(const std::string& key, const Catalog& catalog) {
  for (const CheckPromise& p : catalog.check_promises) {
    if (p.key == key) return &p;
  }
  return nullptr;
}

const Exception* ExceptionFor(const std::string& location, const SeriesKey& key, absl::Time now,
                              const Catalog& catalog) {
  for (const Exception& e : catalog.exceptions) {
    if (e.location == location && e.family == key.family && e.key == key.key && now < e.expires) {
      return &e;
    }
  }
  return nullptr;
}

double PromiseFloor(const SeriesKey& key, double reference, const Catalog& catalog) {
  return FamilyFloor(key.family, reference, PolicyFromCatalog(catalog));
}

std::string Meaning(v1::Family family, double deviation) {
  return DeviationMeaning(family, deviation > 0);
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
  out->set_p10(s.p10);
  out->set_p90(s.p90);
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

v1::Reason MakeReason(v1::FindingKind kind, std::string detail, double value, double expected,
                      double low, double high, double magnitude, double deviation) {
  v1::Reason r;
  r.set_kind(kind);
  r.set_detail(std::move(detail));
  r.set_value(value);
  r.set_expected(expected);
  r.set_band_low(low);
  r.set_band_high(high);
  r.set_magnitude(magnitude);
  r.set_direction(deviation > 0   ? v1::ABOVE
                  : deviation < 0 ? v1::BELOW
                                  : v1::DIRECTION_UNSPECIFIED);
  return r;
}

// Whether `v` is within `floor` of one of `values`: a price at a level a
// rollout goes to (GroupData::rollout_values).
bool NearAny(const std::vector<double>& values, double v, double floor) {
  for (double r : values) {
    if (std::fabs(v - r) <= floor) return true;
  }
  return false;
}

std::string Fingerprint(const std::vector<std::string>& names) {
  return absl::StrFormat("%016x", absl::HashOf(absl::StrJoin(names, ",")));
}

}  // namespace

SeriesKey SeriesOf(const v1::Observation& obs) { return SeriesOf(ViewOf(obs)); }

SeriesKey SeriesOf(const ObservationView& obs) {
  const SeriesKeyView v = SeriesViewOf(obs);
  SeriesKey k;
  k.family = v.family;
  k.key = std::string(v.key);
  k.currency = std::string(v.currency);
  k.kind = v.kind;
  return k;
}

SeriesKeyView SeriesViewOf(const v1::Observation& obs) { return SeriesViewOf(ViewOf(obs)); }

SeriesKeyView SeriesViewOf(const ObservationView& obs) {
  SeriesKeyView k;
  k.family = FamilyOf(obs);
  k.key = obs.key;
  if (k.family == v1::FAMILY_PRICE) {
    k.currency = obs.currency;
    k.kind = obs.kind == v1::PRICE_KIND_UNSPECIFIED ? v1::SHELF
                                                    : static_cast<v1::PriceKind>(obs.kind);
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

std::string SeriesName(const SeriesKey& key) {
  std::string out = absl::StrCat(FamilyName(key.family), " ", key.key);
  if (key.family == v1::FAMILY_PRICE) {
    absl::StrAppend(&out, " ", key.currency, "/",
                    absl::AsciiStrToLower(v1::PriceKind_Name(key.kind)));
  }
  return out;
}

OutlierPolicy PolicyFromCatalog(const Catalog& catalog) {
  OutlierPolicy p;
  p.z_threshold = catalog.thresholds.z_threshold;
  p.min_group = catalog.thresholds.min_group;
  p.price = {catalog.price.floor_ratio, catalog.price.floor_absolute};
  p.wait = {catalog.wait.floor_ratio, catalog.wait.floor_absolute};
  p.compliance = {catalog.compliance.floor_ratio, catalog.compliance.floor_absolute};
  p.score = {catalog.score.floor_ratio, catalog.score.floor_absolute};
  return p;
}

void FillSeriesStats(const SeriesStats& stats, v1::GroupStats* out) {
  FillGroupStats(stats.key, stats.group, stats.summary, stats.band, out);
  if (stats.key.family != v1::FAMILY_PRICE) return;
  if (!stats.main_level.members.empty()) {
    v1::Level* l = out->add_levels();
    l->set_value(stats.main_level.value);
    l->set_locations(stats.main_level.members.size());
  }
  for (const Level& level : stats.other_levels) {
    v1::Level* l = out->add_levels();
    l->set_value(level.value);
    l->set_locations(level.members.size());
  }
}

void FillSeriesOutliers(const SeriesStats& stats,
                        google::protobuf::RepeatedPtrField<v1::Outlier>* out) {
  for (size_t i = 0; i < stats.outliers.size(); ++i) {
    FillOutlier(stats.key, stats.group, stats.summary, stats.band, stats.outliers[i],
                stats.outlier_locations[i], out->Add());
  }
}

Engine::Engine(Options options)
    : options_(std::move(options)),
      started_at_(options_.clock()),
      base_catalog_(options_.catalog),
      catalog_(options_.catalog),
      tracker_(options_.catalog->thresholds.persistence, options_.catalog->thresholds.hysteresis) {
  // Every reason an observation can be rejected for, at 0, so rates and
  // dashboards have a series before the first rejection.
  for (const char* reason :
       {"id", "key", "location_cells", "observed_at", "price.currency", "price.kind",
        "price.minor_units", "score", "series", "value", "wait_seconds"}) {
    rejected_by_reason_[reason] = 0;
  }
  auto empty = std::make_shared<Snapshot>();
  empty->computed_at = started_at_;
  empty->rejected_by_reason = rejected_by_reason_;
  empty->catalog = options_.catalog;
  snapshot_ = std::move(empty);
}

Engine::~Engine() { Stop(); }

void Engine::Start() {
  absl::MutexLock lock(&tick_mu_);
  if (stats_thread_.joinable()) return;
  stopping_ = false;
  abandon_.store(false, std::memory_order_relaxed);
  stats_thread_ = std::thread([this] { TickLoop(false); });
  eval_thread_ = std::thread([this] { TickLoop(true); });
}

void Engine::RequestStop() {
  abandon_.store(true, std::memory_order_relaxed);
  absl::MutexLock lock(&tick_mu_);
  stopping_ = true;
}

void Engine::Stop() {
  RequestStop();
  if (stats_thread_.joinable()) stats_thread_.join();
  if (eval_thread_.joinable()) eval_thread_.join();
}

void Engine::TickLoop(bool evaluation) {
  for (;;) {
    absl::Duration interval;
    {
      absl::MutexLock lock(&mu_);
      interval = evaluation ? catalog_->thresholds.evaluation_interval
                            : catalog_->thresholds.stats_interval;
    }
    {
      absl::MutexLock lock(&tick_mu_);
      if (tick_mu_.AwaitWithTimeout(absl::Condition(&stopping_), interval)) return;
    }
    if (evaluation) {
      Evaluate();
    } else {
      Recompute();
    }
  }
}

uint32_t Engine::LocationIndex(absl::string_view location) {
  if (auto it = location_index_.find(location); it != location_index_.end()) return it->second;
  const uint32_t index = static_cast<uint32_t>(locations_.size());
  location_index_.emplace(std::string(location), index);
  Location l;
  l.state.location = std::string(location);
  l.entry = catalog_->FindLocation(location);
  locations_.push_back(std::move(l));
  return index;
}

void Engine::SetCatalog(std::shared_ptr<const Catalog> catalog) {
  absl::MutexLock lock(&mu_);
  base_catalog_ = catalog;
  catalog_ = std::move(catalog);
  labels_dirty_ = !agent_labels_.empty();
  RefreshCatalogLocked();
  for (Location& l : locations_) l.entry = catalog_->FindLocation(l.state.location);
  for (Series& s : series_) s.dirty = true;
}

bool Engine::DeclaredLocked(absl::string_view location) const {
  return base_catalog_->FindLocation(location) != nullptr;
}

void Engine::RefreshCatalogLocked() {
  if (!labels_dirty_) return;
  labels_dirty_ = false;
  auto merged = std::make_shared<Catalog>(*base_catalog_);
  for (const auto& [location, labels] : agent_labels_) {
    auto it = merged->location_index.find(location);
    LocationEntry* entry = it != merged->location_index.end() ? &merged->locations[it->second]
                                                              : nullptr;
    if (entry == nullptr) {
      entry = &merged->locations.emplace_back();
      entry->id = location;
      entry->from_agent = true;
    }
    for (const auto& [name, value] : labels) entry->labels.emplace(name, value);  // Catalog wins.
  }
  merged->Index();
  catalog_ = std::move(merged);
  for (Location& l : locations_) l.entry = catalog_->FindLocation(l.state.location);
  for (Series& s : series_) s.dirty = true;
}

namespace {

// The sequence `batch` should have started at, when it leaves a gap after
// `through` (everything at or below it settled or on its way); 0 when it
// follows on, counting a declared dropped range (Batch.skipped_from).
uint64_t ExpectedInstead(const BatchView& batch, uint64_t through) {
  const uint64_t next = through + 1;
  if (batch.first_sequence <= next) return 0;
  if (batch.skipped_from != 0 && batch.skipped_from <= next) return 0;
  return next;
}

v1::Ack OutOfOrderAck(const BatchView& batch, uint64_t watermark, uint64_t expected) {
  v1::Ack ack;
  ack.set_location(std::string(batch.location));
  ack.set_incarnation(batch.incarnation);
  ack.set_first_sequence(batch.first_sequence);
  ack.set_count(static_cast<uint32_t>(batch.observations.size()));
  ack.set_outcome(v1::Ack::OUT_OF_ORDER);
  ack.set_watermark(watermark);
  ack.set_expected_sequence(expected);
  return ack;
}

}  // namespace

std::optional<v1::Ack> Engine::Admit(const BatchView& batch) {
  if (batch.first_sequence == 0) return std::nullopt;  // ApplyBatch refuses it.
  absl::MutexLock lock(&mu_);
  uint64_t watermark = 0;
  if (auto loc = location_index_.find(batch.location); loc != location_index_.end()) {
    if (auto it = streams_.find({loc->second, batch.incarnation}); it != streams_.end()) {
      watermark = it->second.watermark;
    }
  }
  uint64_t& admitted = admitted_[{std::string(batch.location), batch.incarnation}];
  const uint64_t through = std::max(admitted, watermark);
  if (const uint64_t expected = ExpectedInstead(batch, through); expected != 0) {
    ++out_of_order_;
    return OutOfOrderAck(batch, watermark, expected);
  }
  admitted = std::max(through, batch.first_sequence + batch.observations.size() - 1);
  return std::nullopt;
}

absl::StatusOr<v1::Ack> Engine::ApplyBatch(const v1::Batch& batch) {
  return ApplyBatch(batch, options_.clock());
}

absl::StatusOr<v1::Ack> Engine::ApplyBatch(const v1::Batch& batch, absl::Time now) {
  return ApplyBatch(ViewOf(batch), now);
}

uint64_t Engine::ClaimLocation(absl::string_view location) {
  absl::MutexLock lock(&mu_);
  const uint64_t owner = ++last_owner_;
  owners_[location] = owner;
  return owner;
}

void Engine::ReleaseLocation(absl::string_view location, uint64_t owner) {
  absl::MutexLock lock(&mu_);
  if (auto it = owners_.find(location); it != owners_.end() && it->second == owner) {
    owners_.erase(it);
  }
}

absl::StatusOr<v1::Ack> Engine::ApplyBatch(const BatchView& batch, absl::Time now) {
  return ApplyBatch(batch, now, /*owner=*/0);
}

absl::Status Engine::MayApplyLocked(const BatchView& batch, uint64_t owner) const {
  if (owner != 0) {
    if (auto it = owners_.find(batch.location); it == owners_.end() || it->second != owner) {
      return absl::AbortedError(absl::StrCat(
          "superseded by a newer stream for location '", batch.location,
          "': nothing of this stream applies any more; resend on the newer one"));
    }
  }
  const Catalog& catalog = *catalog_;
  if (!catalog.auto_register && !location_index_.contains(batch.location) &&
      !DeclaredLocked(batch.location)) {
    return absl::PermissionDeniedError(
        absl::StrCat("location '", batch.location,
                     "' is not in the catalog and auto_register is off: add it to ", catalog.path));
  }
  if (options_.limits.max_locations > 0 && !location_index_.contains(batch.location) &&
      location_index_.size() >= options_.limits.max_locations) {
    // Refused before anything is kept: the agent retries and loses nothing.
    return absl::ResourceExhaustedError(absl::StrCat("location '", batch.location,
                                                     "' would be one more than the ",
                                                     options_.limits.max_locations,
                                                     " locations this collector accepts "
                                                     "(--max_locations)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Ack> Engine::ApplyBatch(const BatchView& batch, absl::Time now,
                                           uint64_t owner) {
  if (absl::Status s = ValidateBatchShape(batch, options_.limits); !s.ok()) return s;
  const uint64_t count = batch.observations.size();
  const int64_t now_ns = absl::ToUnixNanos(now);

  v1::Ack ack;
  ack.set_location(std::string(batch.location));
  ack.set_incarnation(batch.incarnation);
  ack.set_first_sequence(batch.first_sequence);
  ack.set_count(static_cast<uint32_t>(count));
  ack.set_outcome(v1::Ack::APPLIED);

  absl::MutexLock lock(&mu_);
  if (absl::Status s = MayApplyLocked(batch, owner); !s.ok()) return s;
  const Catalog& catalog = *catalog_;
  const uint32_t loc = LocationIndex(batch.location);
  Stream& stream = streams_[{loc, batch.incarnation}];
  if (const uint64_t expected = ExpectedInstead(batch, stream.watermark); expected != 0) {
    ++out_of_order_;
    return OutOfOrderAck(batch, stream.watermark, expected);
  }
  if (batch.first_sequence > stream.watermark + 1) {  // A declared dropped range.
    dropped_ += batch.first_sequence - 1 - stream.watermark;
  }
  const BinSpan wait_bins(catalog.wait), compliance_bins(catalog.compliance),
      score_bins(catalog.score);
  // A judged key's window may be longer than the family's: its bins reach
  // further back.
  const bool judged_keys = !catalog.judging.empty();
  uint32_t duplicates = 0, applied = 0;
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t seq = batch.first_sequence + i;
    if (seq <= stream.watermark) {
      ++duplicates;
      continue;
    }
    const ObservationView& obs = batch.observations[i];
    // The series is looked up before validation, from views into the
    // observation (no copies): a series created from validated
    // observations vouches for its key and currency, so only the rest is
    // checked again, and the first failing check (the rejection's reason)
    // is the same as with every check.
    const SeriesKeyView view = SeriesViewOf(obs);
    auto found = series_index_.find(view);
    const bool vouched = found != series_index_.end() && series_[found->second].validated;
    absl::Status s = ValidateObservation(
        obs, now, options_.limits,
        vouched ? SeriesValidation::kAlreadyValid : SeriesValidation::kCheck);
    if (s.ok()) s = RoomForCellLocked(found, loc, obs);
    if (!s.ok()) {
      v1::Rejection* r = ack.add_rejections();
      r->set_sequence(seq);
      r->set_reason(std::string(s.message()));
      ++rejected_by_reason_[ReasonCode(s.message())];
      ++rejected_;
      continue;
    }
    if (found == series_index_.end()) {
      Series series;
      series.key = SeriesOf(obs);
      found = series_index_.emplace(series.key, static_cast<uint32_t>(series_.size())).first;
      series_.push_back(std::move(series));
    }
    Series& series = series_[found->second];
    series.validated = true;
    const int64_t at = obs.has_observed_at
                             ? obs.observed_seconds * 1'000'000'000 + obs.observed_nanos
                             : now_ns;
    bool created = false;
    switch (obs.value) {
      case v1::Observation::kPrice: {
        auto [cell, fresh] = series.price.try_emplace(loc);
        created = fresh;
        cell->second.Apply(obs.minor_units, at);
        break;
      }
      case v1::Observation::kWaitSeconds: {
        auto [cell, fresh] = series.wait.try_emplace(loc);
        created = fresh;
        cell->second.Apply(obs.number, at, wait_bins, catalog.wait_sketch);
        break;
      }
      case v1::Observation::kCheck: {
        auto [cell, fresh] = series.compliance.try_emplace(loc);
        created = fresh;
        if (judged_keys && catalog.JudgingFor(obs.key) != nullptr) {
          cell->second.Apply(obs.passed, obs.critical, at,
                             BinSpan(catalog.CompliancePolicy(obs.key)));
        } else {
          cell->second.Apply(obs.passed, obs.critical, at, compliance_bins);
        }
        break;
      }
      case v1::Observation::kScore: {
        auto [cell, fresh] = series.score.try_emplace(loc);
        created = fresh;
        cell->second.Apply(obs.number, at, score_bins);
        break;
      }
      case v1::Observation::VALUE_NOT_SET:
        break;
    }
    if (created) {
      ++cells_;
      ++locations_[loc].cells;
    }
    series.dirty = true;
    ++applied_;
    ++applied;
  }
  duplicates_ += duplicates;
  ++batches_;
  stream.watermark = std::max(stream.watermark, batch.first_sequence + count - 1);
  LocationState& state = locations_[loc].state;
  state.last_report = now;
  state.incarnation = batch.incarnation;
  state.watermark = stream.watermark;
  ack.set_watermark(stream.watermark);
  ack.set_duplicates(duplicates);
  ack.set_applied(applied);
  return ack;
}

namespace {

template <typename S>
bool HasCell(const S& series, uint32_t loc, v1::Observation::ValueCase value) {
  switch (value) {
    case v1::Observation::kPrice:
      return series.price.contains(loc);
    case v1::Observation::kWaitSeconds:
      return series.wait.contains(loc);
    case v1::Observation::kCheck:
      return series.compliance.contains(loc);
    case v1::Observation::kScore:
      return series.score.contains(loc);
    case v1::Observation::VALUE_NOT_SET:
      break;
  }
  return true;  // Nothing is created.
}

}  // namespace

absl::Status Engine::RoomForCellLocked(SeriesIndex::const_iterator found, uint32_t loc,
                                       const ObservationView& obs) const {
  const bool new_series = found == series_index_.end();
  if (!new_series && HasCell(series_[found->second], loc, obs.value)) return absl::OkStatus();
  const Limits& limits = options_.limits;
  if (limits.max_cells_per_location > 0 &&
      locations_[loc].cells >= limits.max_cells_per_location) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "location_cells: location '", locations_[loc].state.location, "' holds its limit of ",
        limits.max_cells_per_location,
        " keys (--max_cells_per_location); a new key is not started"));
  }
  if (new_series && limits.max_series > 0 && series_.size() >= limits.max_series) {
    return absl::ResourceExhaustedError(
        absl::StrCat("series: the collector holds its limit of ", limits.max_series,
                     " series (--max_series); a new one is not started"));
  }
  return absl::OkStatus();
}

absl::Status Engine::RecordHeartbeat(const v1::Heartbeat& heartbeat) {
  if (absl::Status s = ValidateLocationId(heartbeat.location()); !s.ok()) return s;
  std::map<std::string, std::string> labels(heartbeat.labels().begin(), heartbeat.labels().end());
  if (absl::Status s = ValidateLabels(labels); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("heartbeat.labels: ", s.message()));
  }
  absl::MutexLock lock(&mu_);
  if (!catalog_->auto_register && !location_index_.contains(heartbeat.location()) &&
      !DeclaredLocked(heartbeat.location())) {
    return absl::PermissionDeniedError(
        absl::StrCat("location '", heartbeat.location(), "' is not in the catalog"));
  }
  if (options_.limits.max_locations > 0 && !location_index_.contains(heartbeat.location()) &&
      location_index_.size() >= options_.limits.max_locations) {
    return absl::ResourceExhaustedError(absl::StrCat("location '", heartbeat.location(),
                                                     "' would be one more than the ",
                                                     options_.limits.max_locations,
                                                     " locations this collector accepts "
                                                     "(--max_locations)"));
  }
  const uint32_t loc = LocationIndex(heartbeat.location());
  LocationState& state = locations_[loc].state;
  if (heartbeat.incarnation() != 0 && state.incarnation != heartbeat.incarnation()) {
    // A new spool: the watermark shown is the new incarnation's.
    state.incarnation = heartbeat.incarnation();
    auto it = streams_.find({loc, heartbeat.incarnation()});
    state.watermark = it == streams_.end() ? 0 : it->second.watermark;
  }
  state.health.version = heartbeat.version().substr(0, 64);
  state.health.spool_depth = heartbeat.spool_depth();
  state.health.oldest_unacknowledged_seconds = heartbeat.oldest_unacknowledged_seconds();
  state.health.spool_bytes = heartbeat.spool_bytes();
  state.health.spool_dropped = heartbeat.spool_dropped();
  if (heartbeat.has_certificate_not_after()) {
    state.health.certificate_not_after =
        absl::FromUnixSeconds(heartbeat.certificate_not_after().seconds());
  }
  state.health.heartbeat_at = options_.clock();
  state.health.data_cadence = absl::Seconds(
      std::min<uint64_t>(heartbeat.data_cadence_seconds(), 366ULL * 24 * 3600));
  auto known = agent_labels_.find(heartbeat.location());
  const bool had = known != agent_labels_.end();
  if (had ? known->second != labels : !labels.empty()) {
    if (labels.empty()) {
      agent_labels_.erase(known);
    } else {
      agent_labels_[heartbeat.location()] = std::move(labels);
    }
    labels_dirty_ = true;
  }
  return absl::OkStatus();
}

// A declared group smaller than min_group falls back to the chain: its
// members (and those without the group's label) are compared against every
// location of the series, the members of comparable groups included but
// judged in their own group only. Without declared groups, or when no
// member needs the fallback, nothing changes.
void Engine::FallBackToChain(uint64_t min_group, std::map<std::string, std::vector<Member>>* groups) {
  std::vector<Member>& chain = (*groups)[kChainGroup];
  for (auto it = groups->begin(); it != groups->end();) {
    if (it->first != kChainGroup && it->second.size() < min_group) {
      for (Member& m : it->second) chain.push_back(std::move(m));
      it = groups->erase(it);
    } else {
      ++it;
    }
  }
  if (chain.empty() || groups->size() == 1) return;
  for (const auto& [name, members] : *groups) {
    if (name == kChainGroup) continue;
    for (const Member& m : members) {
      chain.push_back(m);
      chain.back().judged = false;
    }
  }
}

Engine::SeriesData Engine::CollectLocked(uint32_t index, absl::Time now,
                                         const Catalog& catalog) const {
  const Series& series = series_[index];
  SeriesData data;
  data.index = index;
  data.key = series.key;
  const PeerGroupRule* rule = RuleFor(series.key, catalog);
  const WaitPromise* wait_promise =
      series.key.family == v1::FAMILY_WAIT ? WaitPromiseFor(series.key.key, catalog) : nullptr;
  const int64_t flip_since = absl::ToUnixNanos(now - catalog.thresholds.flip_window);
  const int64_t drops_since = absl::ToUnixNanos(now - catalog.thresholds.rollout_grace);
  std::map<std::string, std::vector<Member>> groups;
  auto add = [&](uint32_t loc, const std::optional<Comparable>& value, const PriceCell* price)
                 ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
                   if (!value.has_value()) return;
                   const Location& l = locations_[loc];
                   // A store closed for good, or not open yet, is never compared.
                   if (l.entry != nullptr && (l.entry->closed || l.entry->opened > now)) return;
                   Member m;
                   m.location = loc;
                   m.value = *value;
                   m.entry = l.entry;
                   m.name = l.state.location;
                   if (price != nullptr && price->changes != nullptr) {
                     m.latest_change = *price->changes->latest();
                     m.changes_in_flip_window = price->changes->CountSince(flip_since);
                     for (int i = 0; i < price->changes->size; ++i) {
                       const PriceChange& c = price->changes->ring[i];
                       if (c.to < c.from && c.at_ns >= drops_since) data.drops.push_back({loc, c});
                     }
                   }
                   groups[GroupName(rule, l.entry)].push_back(std::move(m));
                 };
  for (const auto& [loc, cell] : series.price)
    add(loc, ComparePrice(cell, now, catalog.price), &cell);
  for (const auto& [loc, cell] : series.wait) {
    add(loc,
        CompareWait(cell, now, catalog.wait, catalog.wait_sketch,
                    wait_promise != nullptr ? wait_promise->within_seconds : 0),
        nullptr);
  }
  if (!series.compliance.empty()) {
    const FamilyPolicy policy = catalog.CompliancePolicy(series.key.key);
    const KeyJudging* judging = catalog.JudgingFor(series.key.key);
    const JudgingMode mode = judging != nullptr ? judging->mode : JudgingMode::kRate;
    for (const auto& [loc, cell] : series.compliance) {
      add(loc, CompareCompliance(cell, now, policy, mode), nullptr);
    }
  }
  for (const auto& [loc, cell] : series.score)
    add(loc, CompareScore(cell, now, catalog.score), nullptr);

  FallBackToChain(catalog.thresholds.min_group, &groups);
  // Rush hours differ: a group spanning time zones compares waits within
  // the same local hour-of-week once at least two such buckets have
  // min_group locations each; the locations of smaller buckets stay
  // compared together in the group.
  if (series.key.family == v1::FAMILY_WAIT && catalog.wait_sketch.hour_of_week) {
    std::map<std::string, std::vector<Member>> bucketed;
    for (auto& [name, members] : groups) {
      std::map<std::string, std::vector<Member>> buckets;
      for (Member& m : members) {
        const absl::TimeZone tz = m.entry != nullptr ? m.entry->tz : absl::UTCTimeZone();
        buckets[absl::FormatTime("%a %Hh", now, tz)].push_back(std::move(m));
      }
      size_t enough = 0;
      for (const auto& [bucket, in] : buckets) enough += in.size() >= catalog.thresholds.min_group;
      std::vector<Member>& rest = bucketed[name];
      if (enough < 2) {  // One hour (or none) with enough data: compare as one group.
        for (auto& [bucket, in] : buckets) {
          for (Member& m : in) rest.push_back(std::move(m));
        }
        continue;
      }
      for (auto& [bucket, in] : buckets) {
        if (in.size() >= catalog.thresholds.min_group) {
          bucketed[absl::StrCat(name, "@", bucket)] = std::move(in);
        } else {
          for (Member& m : in) rest.push_back(std::move(m));
        }
      }
    }
    groups = std::move(bucketed);
  }
  for (auto& [name, members] : groups) {
    if (members.empty()) continue;
    std::sort(members.begin(), members.end(),
              [](const Member& a, const Member& b) { return a.location < b.location; });
    GroupData g;
    g.group = name;
    g.members = std::move(members);
    g.fallback = std::any_of(g.members.begin(), g.members.end(),
                             [](const Member& m) { return !m.judged; });
    data.groups.push_back(std::move(g));
  }
  return data;
}

void Engine::ComputeGroups(SeriesData* data, absl::Time now, const Catalog& catalog) const {
  const OutlierPolicy policy = PolicyFromCatalog(catalog);
  const Thresholds& th = catalog.thresholds;
  for (GroupData& g : data->groups) {
    std::vector<LocatedValue> values;
    values.reserve(g.members.size());
    for (const Member& m : g.members) values.push_back({m.location, m.value.value});
    auto stats = std::make_shared<SeriesStats>();
    stats->key = data->key;
    stats->group = g.group;
    stats->summary = SummarizeGroup(values);
    stats->band = ExpectedBand(data->key.family, stats->summary, policy);
    if (data->key.family == v1::FAMILY_WAIT) {
      stats->wait_values.reserve(values.size());
      for (const LocatedValue& v : values) stats->wait_values.push_back(v.value);
    }
    absl::flat_hash_set<uint32_t> not_outliers;
    if (data->key.family == v1::FAMILY_PRICE) {
      g.levels = FindLevels(values, stats->summary.median, stats->band.floor, th.min_level);
      // A chain-wide change rolling out: many locations moved from one
      // level to one new level within the grace, or to a promised list
      // price whose effective date is near.
      std::map<std::pair<int64_t, int64_t>, uint64_t> moves;
      const int64_t grace_since = absl::ToUnixNanos(now - th.rollout_grace);
      for (const Member& m : g.members) {
        if (m.latest_change.at_ns != 0 && m.latest_change.at_ns >= grace_since) {
          ++moves[{m.latest_change.from, m.latest_change.to}];
        }
      }
      for (const auto& [move, n] : moves) {
        if (n >= th.min_level) {
          g.rollout_values.push_back(static_cast<double>(move.first));
          g.rollout_values.push_back(static_cast<double>(move.second));
        }
      }
      for (const PricePromise& p : catalog.price_promises) {
        if (p.key == data->key.key && p.currency == data->key.currency &&
            p.kind == data->key.kind && p.effective != absl::InfinitePast() &&
            p.effective + th.rollout_grace > now) {
          g.rollout_values.push_back(static_cast<double>(p.list_minor_units));
        }
      }
      auto in_rollout = [&](double v) { return NearAny(g.rollout_values, v, stats->band.floor); };
      std::vector<Level> kept;
      for (Level& level : g.levels.others) {
        if (in_rollout(level.value)) {
          stats->rollout = true;
        } else {
          kept.push_back(level);
        }
        for (uint32_t loc : level.members) not_outliers.insert(loc);
      }
      for (const Member& m : g.members) {
        if (in_rollout(m.value.value) &&
            std::fabs(m.value.value - stats->summary.median) > stats->band.floor) {
          not_outliers.insert(m.location);
          stats->rollout = true;
        }
      }
      g.levels.others = kept;
      stats->main_level = g.levels.main;
      stats->other_levels = kept;
    }
    g.assessed.clear();
    g.assessed.reserve(g.members.size());
    std::vector<std::pair<OutlierResult, const std::string*>> outliers;
    for (const Member& m : g.members) {
      Assessment a = AssessValue(data->key.family, m.value.value, stats->summary, stats->band,
                                 policy, m.value.samples);
      if (not_outliers.contains(m.location) || !m.judged) {
        a = Assessment{a.deviation, 0, 0, false, a.direction};
      }
      if (a.outlier) {
        const double median = stats->summary.median;
        outliers.push_back({OutlierResult{m.location, m.value.value, a.z,
                                          median != 0 ? std::fabs(a.deviation) / std::fabs(median)
                                                      : std::fabs(a.deviation),
                                          a.direction},
                            &m.name});
      }
      g.assessed.push_back(a);
    }
    std::sort(outliers.begin(), outliers.end(), [](const auto& a, const auto& b) {
      if (std::fabs(a.first.z) != std::fabs(b.first.z)) {
        return std::fabs(a.first.z) > std::fabs(b.first.z);
      }
      return a.first.location < b.first.location;
    });
    for (const auto& [r, name] : outliers) {
      stats->outliers.push_back(r);
      stats->outlier_locations.push_back(*name);
    }
    g.stats = std::move(stats);
  }
}

bool Engine::RecomputeSeries(bool all, const std::function<void(SeriesData&)>& visit) {
  absl::MutexLock recompute_lock(&recompute_mu_);
  const absl::Time now = options_.clock();
  auto snapshot = std::make_shared<Snapshot>();
  std::vector<uint32_t> todo;
  std::shared_ptr<const Catalog> catalog;
  {
    absl::MutexLock lock(&mu_);
    RefreshCatalogLocked();
    catalog = catalog_;
    for (uint32_t i = 0; i < series_.size(); ++i) {
      if (all || series_[i].dirty) todo.push_back(i);
      series_[i].dirty = false;
    }
    published_.resize(series_.size());
    snapshot->cells = cells_;
    snapshot->observations_applied = applied_;
    snapshot->observations_rejected = rejected_;
    snapshot->observations_duplicate = duplicates_;
    snapshot->observations_dropped = dropped_;
    snapshot->batches_out_of_order = out_of_order_;
    snapshot->batches = batches_;
    snapshot->rejected_by_reason = rejected_by_reason_;
    for (const Location& l : locations_) {
      snapshot->location_states.push_back(l.state);
      if (l.state.last_report != absl::InfinitePast()) ++snapshot->locations;
    }
  }
  // One series at a time: the ingest lock is held only to copy it.
  for (size_t i = 0; i < todo.size(); ++i) {
    const uint32_t index = todo[i];
    if (abandon_.load(std::memory_order_relaxed)) {
      absl::MutexLock lock(&mu_);
      for (size_t j = i; j < todo.size(); ++j) series_[todo[j]].dirty = true;
      return false;
    }
    if (options_.before_series) options_.before_series();
    SeriesData data;
    {
      absl::MutexLock lock(&mu_);
      data = CollectLocked(index, now, *catalog);
    }
    ComputeGroups(&data, now, *catalog);
    std::vector<std::shared_ptr<const SeriesStats>> groups;
    for (const GroupData& g : data.groups) groups.push_back(g.stats);
    published_[index] = std::move(groups);
    if (visit) visit(data);
  }
  for (const auto& groups : published_) {
    bool compared = true;
    for (const auto& s : groups) {
      snapshot->series.push_back(s);
      compared = compared && s->summary.n >= catalog->thresholds.min_group;
    }
    snapshot->uncompared_series += !compared;
  }
  std::sort(snapshot->location_states.begin(), snapshot->location_states.end(),
            [](const LocationState& a, const LocationState& b) { return a.location < b.location; });
  snapshot->computed_at = now;
  snapshot->catalog = catalog;
  Publish(std::move(snapshot));
  return true;
}

void Engine::Publish(std::shared_ptr<Snapshot> snapshot) {
  absl::MutexLock lock(&snapshot_mu_);
  if (snapshot->findings == nullptr || snapshot->findings->evaluated_at == absl::InfinitePast()) {
    snapshot->findings = snapshot_->findings;
  }
  snapshot_ = std::move(snapshot);
}

void Engine::Recompute() { RecomputeSeries(false, nullptr); }

namespace {

// A declared location expected open whose agent stopped talking (no batch
// and no heartbeat within location_ttl) is silent; one whose agent is alive
// but whose newest data is older than its cadence (the catalog's, else the
// agent's own, else none) plus location_ttl is stale: the store's export
// stopped, not the store.
void DeliveryConditions(const std::vector<LocationState>& states, const Catalog& catalog,
                        absl::Time now, std::vector<Condition>* out) {
  const Thresholds& th = catalog.thresholds;
  absl::flat_hash_map<std::string, const LocationState*> by_name;
  for (const LocationState& s : states) by_name[s.location] = &s;
  for (const LocationEntry& entry : catalog.locations) {
    if (entry.closed || entry.from_agent || !catalog.ExpectedOpen(entry.id, now)) continue;
    auto it = by_name.find(entry.id);
    const LocationState* state = it == by_name.end() ? nullptr : it->second;
    const absl::Time last = state != nullptr ? state->last_report : absl::InfinitePast();
    const absl::Time heard = state != nullptr ? std::max(last, state->health.heartbeat_at) : last;
    const absl::Duration cadence =
        entry.cadence > absl::ZeroDuration()
            ? entry.cadence
            : (state != nullptr ? state->health.data_cadence : absl::ZeroDuration());
    const bool silent = heard == absl::InfinitePast() || now - heard > th.location_ttl;
    const absl::Duration allowed = cadence + th.location_ttl;
    if (!silent && last != absl::InfinitePast() && now - last <= allowed) continue;
    Condition c;
    c.id = absl::StrCat(silent ? "silent|" : "stale|", entry.id);
    c.strength = 1;
    v1::Finding& f = c.finding;
    f.set_kind(silent ? v1::SILENT : v1::STALE);
    f.set_severity(silent ? v1::HIGH : v1::MEDIUM);
    f.set_location(entry.id);
    f.set_audience("store");
    for (const auto& [k, v] : entry.labels) (*f.mutable_labels())[k] = v;
    const std::string age =
        last == absl::InfinitePast()
            ? std::string("has never sent data")
            : absl::StrCat("newest data ",
                           absl::FormatDuration(absl::Trunc(now - last, absl::Seconds(1))), " old");
    std::string detail;
    if (silent) {
      detail = heard == absl::InfinitePast()
                   ? std::string("expected open but has never reported")
                   : absl::StrCat("expected open but silent for ",
                                  absl::FormatDuration(absl::Trunc(now - heard, absl::Seconds(1))));
    } else {
      detail = absl::StrCat("agent alive but ", age, ", expected ",
                            cadence > absl::ZeroDuration()
                                ? absl::StrCat("every ", absl::FormatDuration(cadence))
                                : std::string("continuously"),
                            " (+", absl::FormatDuration(th.location_ttl), ")");
    }
    const double limit = absl::ToDoubleSeconds(silent ? th.location_ttl : allowed);
    const double since = absl::ToDoubleSeconds(now - (silent ? heard : last));
    *f.add_reasons() = MakeReason(silent ? v1::SILENT : v1::STALE, std::move(detail),
                                  std::isfinite(since) ? since : 0, limit, 0, limit, 0, 1);
    out->push_back(std::move(c));
  }
}

// A split found in one group, with one signature (the sorted names of its
// locations) per deviating level, so that zones can gather the splits of
// the same locations on many keys.
struct SplitCandidate {
  Condition condition;
  std::vector<std::string> signatures;  // One per deviating level.
};

// A location's standing under the promise that applies to it in a series.
struct PromiseVerdict {
  std::string id;        // "price:LINE", "wait:LINE" or "check:LINE".
  std::string promise;   // What is promised, for the promise record.
  double strength = -1;  // Above 1: broken.
  bool critical = false;  // A critical check failed: broken at once.
  v1::Reason reason;
};

// id -> (locations it applies to, locations breaking it), in one series.
using PromiseTally = std::map<std::string, std::pair<uint64_t, uint64_t>>;

// The promise on `key` at a location whose value is `value`, if one
// applies: a price promise for its entry, else the series' wait or check
// promise (looked up once per series by the caller).
std::optional<PromiseVerdict> PromiseVerdictFor(const SeriesKey& key, const LocationEntry* entry,
                                                const Comparable& value,
                                                const WaitPromise* wait_promise,
                                                const CheckPromise* check_promise, absl::Time now,
                                                const Catalog& catalog) {
  const double x = value.value;
  PromiseVerdict v;
  if (key.family == v1::FAMILY_PRICE) {
    const PricePromise* promise = PricePromiseFor(key, entry, now, catalog);
    if (promise == nullptr) return std::nullopt;
    const double list = static_cast<double>(promise->list_minor_units);
    const double pf = PromiseFloor(key, list, catalog);
    const double over = x - list;
    v.id = absl::StrCat("price:", promise->line);
    v.promise = absl::StrCat("list price ", Format(key, list));
    v.strength = over > pf ? over / pf : std::min(0.999, std::max(0.0, over / pf));
    v.reason =
        MakeReason(v1::BROKEN_PROMISE,
                   absl::StrCat("price ", Format(key, x), " above the list price ",
                                Format(key, list), " (", Percent(list != 0 ? over / list : 0), ")"),
                   x, list, list - pf, list + pf, list != 0 ? std::fabs(over) / list : 0, over);
  } else if (wait_promise != nullptr) {
    const double share = value.share_within;
    const double pf = std::max(catalog.compliance.floor_absolute, 1e-9);
    v.id = absl::StrCat("wait:", wait_promise->line);
    v.promise = absl::StrFormat("%.0f%% served within %.0f s", 100 * wait_promise->share,
                                wait_promise->within_seconds);
    v.strength = share < wait_promise->share
                     ? 1 + (wait_promise->share - share) / pf
                     : std::min(0.999, 1 - (share - wait_promise->share) / pf);
    v.reason =
        MakeReason(v1::BROKEN_PROMISE,
                   absl::StrFormat("%.1f%% served within %.0f s, promised %.1f%%", 100 * share,
                                   wait_promise->within_seconds, 100 * wait_promise->share),
                   share, wait_promise->share, wait_promise->share, 1, wait_promise->share - share,
                   share - wait_promise->share);
  } else if (check_promise != nullptr) {
    const double pf = std::max(catalog.compliance.floor_absolute, 1e-9);
    v.id = absl::StrCat("check:", check_promise->line);
    v.promise = check_promise->critical ? absl::StrCat(key.key, " never failed (critical)")
                                        : absl::StrFormat("%s passed %.0f%% of the time", key.key,
                                                          100 * check_promise->min_pass_rate);
    const bool critical = check_promise->critical && value.critical_failure;
    v.critical = critical;
    // A failed critical check breaks its promise at once; a rate, only
    // when its interval says so (the rate rule, stats.h).
    v.strength =
        critical ? 2 : RateShortfall(x, value.samples, check_promise->min_pass_rate, pf);
    v.reason =
        MakeReason(v1::BROKEN_PROMISE,
                   critical ? absl::StrCat("critical check ", key.key, " failed")
                            : absl::StrFormat("%s passed %.1f%% of checks, required %.1f%%",
                                              key.key, 100 * x, 100 * check_promise->min_pass_rate),
                   x, check_promise->min_pass_rate, check_promise->min_pass_rate, 1,
                   check_promise->min_pass_rate - x, x - check_promise->min_pass_rate);
  } else {
    return std::nullopt;
  }
  return v;
}

// Unkeepable promises: most locations break it, so the promise needs
// fixing, not the stores. One finding for HQ; no per-store pages. Returns
// the ids of the unkeepable promises, whose breaks then count against no
// location.
absl::flat_hash_set<std::string> UnkeepableConditions(const SeriesKey& key,
                                                      const std::string& series_name,
                                                      const PromiseTally& promise_tally,
                                                      const Thresholds& th,
                                                      std::vector<Condition>* out) {
  absl::flat_hash_set<std::string> unkeepable;
  for (const auto& [id, tally] : promise_tally) {
    const auto [applicable, broken] = tally;
    if (!(applicable >= th.min_group && applicable > 0 &&
          static_cast<double>(broken) >= th.unkeepable_share * applicable)) {
      continue;
    }
    unkeepable.insert(id);
    Condition c;
    c.id = absl::StrCat("unkeepable|", series_name, "|", id);
    c.strength = 1;
    v1::Finding& f = c.finding;
    f.set_kind(v1::UNKEEPABLE_PROMISE);
    f.set_severity(v1::MEDIUM);
    SeriesToProto(key, f.mutable_series());
    f.set_group_size(applicable);
    f.set_audience("hq");
    *f.add_reasons() = MakeReason(
        v1::UNKEEPABLE_PROMISE,
        absl::StrFormat("%d of %d locations break the promise on %s (%.0f%%): fix the promise",
                        broken, applicable, series_name, 100.0 * broken / applicable),
        static_cast<double>(broken) / applicable, th.unkeepable_share, 0, th.unkeepable_share,
        static_cast<double>(broken) / applicable, 1);
    out->push_back(std::move(c));
  }
  return unkeepable;
}

// A pass rate's evidence, for an outlier's detail: "; 1 of 4 checks
// passed, 99.9% interval 5.0% .. 69.9%". Empty for other families.
std::string RateEvidence(const SeriesKey& key, const Comparable& value) {
  if (key.family != v1::FAMILY_COMPLIANCE || value.samples == 0) return "";
  const auto passed =
      static_cast<uint64_t>(std::llround(value.value * static_cast<double>(value.samples)));
  const RateInterval in = WilsonInterval(passed, value.samples);
  return absl::StrFormat("; %d of %d checks passed, 99.9%% interval %.1f%% .. %.1f%%", passed,
                         value.samples, 100 * in.low, 100 * in.high);
}

// The severity one reason of a location finding asks for: an outlier's by
// its distance from the expected value in floors (a pass rate's by its
// strength: the evidence), a broken promise high, an irregular change
// medium. Only a failed critical check is ever critical on a compliance
// key (`critical_failure`: the check failed in the window or, for a
// promise, its critical check did).
v1::Severity ReasonSeverity(v1::Family family, const v1::Reason& reason, double strength,
                            double floor, bool critical_failure) {
  switch (reason.kind()) {
    case v1::OUTLIER:
      if (family == v1::FAMILY_COMPLIANCE) {
        const v1::Severity s = SeverityFor(strength, 1);
        return critical_failure ? s : std::min(s, v1::HIGH);
      }
      return SeverityFor(reason.value() - reason.expected(), floor);
    case v1::BROKEN_PROMISE:
      return critical_failure ? v1::CRITICAL : v1::HIGH;
    case v1::IRREGULAR_CHANGE:
      return v1::MEDIUM;
    default:
      return v1::LOW;
  }
}

// Zones: the same locations split from the rest on many keys. Said once,
// instead of one split per key: the splits a zone gathers are dropped, the
// others added after the zones.
void ZoneConditions(std::vector<SplitCandidate>* splits, const Thresholds& th,
                    std::vector<Condition>* out) {
  std::map<std::string, std::vector<size_t>> by_signature;
  for (size_t i = 0; i < splits->size(); ++i) {
    for (const std::string& sig : (*splits)[i].signatures) by_signature[sig].push_back(i);
  }
  std::vector<bool> in_zone(splits->size(), false);
  for (const auto& [sig, indexes] : by_signature) {
    if (indexes.size() < th.zone_min_keys) continue;
    std::vector<std::string> names = absl::StrSplit(sig, ',');
    Condition c;
    c.id = absl::StrCat("zone|", Fingerprint(names));
    c.strength = 1;
    v1::Finding& f = c.finding;
    f.set_kind(v1::ZONE);
    f.set_severity(v1::MEDIUM);
    f.set_audience("hq");
    f.set_group_size(names.size());
    for (const std::string& name : names) f.add_locations(name);
    for (size_t i : indexes) {
      in_zone[i] = true;
      f.add_keys(SeriesName(SeriesFromProto((*splits)[i].condition.finding.series())));
    }
    *f.add_reasons() = MakeReason(
        v1::ZONE,
        absl::StrCat(names.size(), " locations (", names.front(), names.size() > 1 ? ", ..." : "",
                     ") split from the rest on ", indexes.size(),
                     " keys: an undeclared zone; declare it as a peer group in the catalog"),
        static_cast<double>(indexes.size()), static_cast<double>(th.zone_min_keys), 0, 0, 0, 1);
    out->push_back(std::move(c));
  }
  for (size_t i = 0; i < splits->size(); ++i) {
    if (!in_zone[i]) out->push_back(std::move((*splits)[i].condition));
  }
}

// Location labels on every location finding, for routing by region: the
// entry the engine knows the location by (states[i] <-> entries[i]), else
// the catalog's.
void AddLocationLabels(const std::vector<LocationState>& states,
                       const std::vector<const LocationEntry*>& entries, const Catalog& catalog,
                       std::vector<Condition>* conditions) {
  absl::flat_hash_map<std::string, const LocationEntry*> entry_by_name;
  for (size_t i = 0; i < states.size(); ++i) entry_by_name[states[i].location] = entries[i];
  for (Condition& c : *conditions) {
    if (c.finding.location().empty()) continue;
    auto it = entry_by_name.find(c.finding.location());
    const LocationEntry* e =
        it != entry_by_name.end() ? it->second : catalog.FindLocation(c.finding.location());
    if (e != nullptr) {
      for (const auto& [k, v] : e->labels) (*c.finding.mutable_labels())[k] = v;
    }
  }
}

}  // namespace

// One evaluation: its inputs, the same for every series, and what the
// series add for zones, the tracker and the trust accounts.
struct Engine::Evaluation {
  Evaluation(absl::Time at, const Catalog& in)
      : now(at),
        catalog(in),
        th(in.thresholds),
        weak(1 - in.thresholds.hysteresis),
        drift(in.drift),
        drift_bin(BinStart(absl::ToUnixNanos(at), in.drift.bin)) {}

  const absl::Time now;
  const Catalog& catalog;
  const Thresholds& th;
  const double weak;  // Strength still worth carrying: 1 - hysteresis.
  const DriftPolicy& drift;
  const int64_t drift_bin;  // The drift bin `now` falls in.
  std::vector<Condition> conditions;
  std::vector<SplitCandidate> splits;
  absl::flat_hash_map<uint32_t, std::pair<uint64_t, uint64_t>> kept_broken;
  absl::flat_hash_map<uint32_t, double> deposits, withdrawals;
  std::vector<PriceDrop> price_drops;
  std::vector<PromiseStanding> promises;
};

// A location's evaluation in one series, before unkeepable promises are
// known (they need every group's tally).
struct Engine::Pending {
  uint32_t location;
  std::string name;
  const GroupData* group;
  std::vector<std::pair<double, v1::Reason>> reasons;  // (strength, reason)
  std::string promise_id;                              // Non-empty when a promise applies.
  bool promise_broken = false;
  bool outlier = false;
  bool critical_failure = false;  // Compliance: a critical check failed in the window.
  bool promise_critical = false;  // Its promise broken by a failed critical check.
  int64_t evidence_ns = 0;        // Comparable::evidence_ns.
  std::string promise;            // PromiseVerdict::promise.
};

void Engine::Evaluate() {
  absl::MutexLock eval_lock(&eval_mu_);
  const absl::Time now = options_.clock();
  std::shared_ptr<const Catalog> catalog_ptr;
  std::vector<LocationState> states;
  std::vector<const LocationEntry*> entries;
  {
    absl::MutexLock lock(&mu_);
    RefreshCatalogLocked();
    catalog_ptr = catalog_;
    for (const Location& l : locations_) {
      states.push_back(l.state);
      entries.push_back(l.entry);
    }
  }
  const Catalog& catalog = *catalog_ptr;
  const Thresholds& th = catalog.thresholds;
  tracker_.set_policy(th.persistence, th.hysteresis);
  Evaluation ev(now, catalog);

  const bool completed = RecomputeSeries(true, [&](SeriesData& data) ABSL_EXCLUSIVE_LOCKS_REQUIRED(
                                                   eval_mu_) {
    EvaluateSeries(data, &ev);
    PriceDropsOf(data, &ev.price_drops);
  });
  // Stopping: this evaluation saw only part of the chain, so it opens,
  // closes and deposits nothing.
  if (!completed) return;

  ZoneConditions(&ev.splits, th, &ev.conditions);
  // Silent and stale: declared locations that should be open.
  if (now - started_at_ >= th.restart_grace) {
    DeliveryConditions(states, catalog, now, &ev.conditions);
    OverdueKeyConditions(now, &ev.conditions);
  }
  AddLocationLabels(states, entries, catalog, &ev.conditions);

  tracker_.Evaluate(std::move(ev.conditions), now);
  {
    // What this evaluation saw is what RecomputeSeries just published.
    std::shared_ptr<const Snapshot> seen = snapshot();
    evaluated_counts_.push_back(seen->observations_applied + seen->observations_rejected);
    while (evaluated_counts_.size() > static_cast<size_t>(std::max(1, th.persistence))) {
      evaluated_counts_.pop_front();
    }
  }

  // Trust: decay, then this evaluation's deposits and withdrawals, per
  // day: each promise kept (broken, each outlier) over the time since the
  // last evaluation earns (costs) its share of a day, so balances measure
  // the stores, not how often the collector evaluates.
  const absl::Duration elapsed = trust_accrued_at_ == absl::InfinitePast()
                                     ? th.evaluation_interval
                                     : std::max(absl::ZeroDuration(), now - trust_accrued_at_);
  trust_accrued_at_ = now;
  const double days = absl::FDivDuration(elapsed, absl::Hours(24));
  std::vector<std::string> names;
  for (size_t i = 0; i < states.size(); ++i) {
    const uint32_t loc = static_cast<uint32_t>(i);
    TrustAccount& account = trust_[loc];
    account.DecayTo(now, catalog.trust.half_life);
    if (auto it = ev.deposits.find(loc); it != ev.deposits.end()) {
      account.Deposit(it->second * days);
    }
    if (auto it = ev.withdrawals.find(loc); it != ev.withdrawals.end()) {
      account.Withdraw(it->second * days);
    }
    names.push_back(states[i].location);
  }
  PublishFindings(now, th.persistence, names, ev.kept_broken, std::move(ev.price_drops),
                  std::move(ev.promises));
}

void Engine::OverdueKeyConditions(absl::Time now, std::vector<Condition>* out) const {
  absl::MutexLock lock(&mu_);
  const Catalog& catalog = *catalog_;
  if (catalog.judging.empty()) return;
  for (const Series& series : series_) {
    if (series.key.family != v1::FAMILY_COMPLIANCE) continue;
    const KeyJudging* judging = catalog.JudgingFor(series.key.key);
    if (judging == nullptr || judging->expected_every <= absl::ZeroDuration()) continue;
    const int64_t due_ns = absl::ToUnixNanos(now - judging->expected_every);
    const std::string series_name = SeriesName(series.key);
    for (const auto& [loc, cell] : series.compliance) {
      const Location& l = locations_[loc];
      if (cell.observed_at_ns >= due_ns || (l.entry != nullptr && l.entry->closed)) continue;
      const absl::Time last = absl::FromUnixNanos(cell.observed_at_ns);
      Condition c;
      c.id = absl::StrCat("stale|", l.state.location, "|", series_name);
      c.strength = 1;
      v1::Finding& f = c.finding;
      f.set_kind(v1::STALE);
      f.set_severity(v1::MEDIUM);
      f.set_location(l.state.location);
      SeriesToProto(series.key, f.mutable_series());
      f.set_audience("store");
      const double age = absl::ToDoubleSeconds(now - last);
      *f.add_reasons() = MakeReason(
          v1::STALE,
          absl::StrCat(series.key.key, ": newest result ",
                       absl::FormatTime("%Y-%m-%d", last, absl::UTCTimeZone()),
                       ", expected every ", absl::FormatDuration(judging->expected_every),
                       ": overdue, no longer judged"),
          age, absl::ToDoubleSeconds(judging->expected_every), 0,
          absl::ToDoubleSeconds(judging->expected_every), 0, 1);
      out->push_back(std::move(c));
    }
  }
}

void Engine::EvaluateSeries(const SeriesData& data, Evaluation* ev) {
  const SeriesKey& key = data.key;
  const Thresholds& th = ev->th;
  const std::string series_name = SeriesName(key);
  const WaitPromise* wait_promise =
      key.family == v1::FAMILY_WAIT ? WaitPromiseFor(key.key, ev->catalog) : nullptr;
  const CheckPromise* check_promise =
      key.family == v1::FAMILY_COMPLIANCE ? CheckPromiseFor(key.key, ev->catalog) : nullptr;

  // Nor for a compliance key judged per inspection (a judging rule): its
  // values step with each rare result, which drift bins would read as a
  // trend.
  const bool judged_key =
      key.family == v1::FAMILY_COMPLIANCE && ev->catalog.JudgingFor(key.key) != nullptr;
  std::vector<Pending> pending;
  PromiseTally promise_tally;
  for (const GroupData& g : data.groups) {
    const bool comparable = g.members.size() >= th.min_group;
    const std::string group_id = absl::StrCat(series_name, "|", g.group);
    // Drift of the group's dispersion is not for prices: their changes are
    // steps, which irregular change covers. The fallback's spread mixes
    // declared groups: their own drift and splits are found in them.
    const GroupDrift* gd = key.family != v1::FAMILY_PRICE && comparable && !g.fallback &&
                                   !judged_key
                               ? GroupDriftCondition(key, group_id, g, ev)
                               : nullptr;
    // Split: consistent deviating levels (prices).
    if (comparable && !g.fallback && !g.levels.others.empty()) {
      AddSplitCandidate(key, group_id, g, ev);
    }

    for (size_t i = 0; i < g.members.size(); ++i) {
      const Member& m = g.members[i];
      if (!m.judged || ExceptionFor(m.name, key, ev->now, ev->catalog) != nullptr) continue;
      Pending p{m.location, m.name, &g, {}, {}, false, false, m.value.critical_failure, false,
                m.value.evidence_ns, {}};
      p.outlier = OutlierReason(key, g, i, ev->weak, &p.reasons);
      if (std::optional<PromiseVerdict> promise = PromiseVerdictFor(
              key, m.entry, m.value, wait_promise, check_promise, ev->now, ev->catalog)) {
        p.promise_id = promise->id;
        p.promise = promise->promise;
        p.promise_broken = promise->strength >= 1;
        p.promise_critical = promise->critical;
        auto& tally = promise_tally[promise->id];
        ++tally.first;
        if (p.promise_broken) ++tally.second;
        if (promise->strength >= ev->weak) {
          p.reasons.emplace_back(promise->strength, std::move(promise->reason));
        }
      }
      if (key.family == v1::FAMILY_PRICE && key.kind != v1::PROMO && comparable) {
        IrregularChangeReason(key, g, i, ev->now, th, &p.reasons);
      }
      if (gd != nullptr && gd->baseline.frozen && gd->scale > 0) {
        CellDriftReason(key, group_id, g, i, gd->scale, ev, &p.reasons);
      }
      if (!p.reasons.empty() || !p.promise_id.empty()) pending.push_back(std::move(p));
    }
  }

  const absl::flat_hash_set<std::string> unkeepable =
      UnkeepableConditions(key, series_name, promise_tally, th, &ev->conditions);
  for (Pending& p : pending) LocationCondition(key, series_name, unkeepable, &p, ev);
}

// Drift of the group's dispersion (EWMA), and the frozen scale the cells'
// CUSUMs are measured in.
const Engine::GroupDrift* Engine::GroupDriftCondition(const SeriesKey& key,
                                                      const std::string& group_id,
                                                      const GroupData& g, Evaluation* ev) {
  const DriftPolicy& drift = ev->drift;
  const double floor = g.stats->band.floor;
  const double scale = g.stats->band.scale;
  GroupDrift* gd = &group_drift_[group_id];
  if (gd->last_bin != ev->drift_bin) {
    gd->last_bin = ev->drift_bin;
    if (!gd->baseline.frozen) {
      gd->baseline.Add(scale, drift.baseline_bins);
      if (gd->baseline.frozen) {
        // Floored so a calm group with no spread at all (MAD = 0)
        // does not turn every small step into many sigmas.
        gd->scale = std::max(gd->baseline.mean, floor / ev->th.z_threshold);
      }
    } else if (gd->scale > 0) {
      const double d = scale / gd->scale;
      const double base_mean = gd->baseline.mean / gd->scale;
      const double base_sd = std::max(gd->baseline.stddev / gd->scale, 0.1);
      gd->ewma.Update(d, drift.ewma_lambda, base_mean);
      const double limit = base_mean + drift.ewma_limit * base_sd *
                                           std::sqrt(drift.ewma_lambda / (2 - drift.ewma_lambda));
      gd->level = (gd->ewma.z - base_mean) / (limit - base_mean);
    }
  }
  if (gd->baseline.frozen && gd->level >= ev->weak) {
    const std::string series_name = SeriesName(key);
    Condition c;
    c.id = absl::StrCat("drift|", group_id);
    c.strength = gd->level;
    v1::Finding& f = c.finding;
    f.set_kind(v1::DRIFT);
    f.set_severity(v1::LOW);
    SeriesToProto(key, f.mutable_series());
    f.set_group(g.group);
    f.set_group_size(g.members.size());
    f.set_audience("hq");
    *f.add_reasons() = MakeReason(
        v1::DRIFT,
        absl::StrFormat("dispersion of %s across %s is trending up: EWMA %.2f x the calm "
                        "baseline",
                        series_name, g.group, gd->ewma.z),
        scale, gd->scale, 0, 0, gd->ewma.z - 1, 1);
    ev->conditions.push_back(std::move(c));
  }
  return gd;
}

void Engine::AddSplitCandidate(const SeriesKey& key, const std::string& group_id,
                               const GroupData& g, Evaluation* ev) {
  const GroupSummary& s = g.stats->summary;
  SplitCandidate split;
  Condition& c = split.condition;
  c.id = absl::StrCat("split|", group_id);
  c.strength = 1;
  v1::Finding& f = c.finding;
  f.set_kind(v1::SPLIT);
  f.set_severity(v1::MEDIUM);
  SeriesToProto(key, f.mutable_series());
  f.set_group(g.group);
  f.set_group_size(g.members.size());
  f.set_audience("hq");
  // With an even split the median falls between the levels and no
  // location sits at it: then there is no main level to show.
  std::vector<std::string> parts;
  size_t level_count = g.levels.others.size();
  if (!g.levels.main.members.empty()) {
    v1::Level* main = f.add_levels();
    main->set_value(g.levels.main.value);
    main->set_locations(g.levels.main.members.size());
    parts.push_back(
        absl::StrCat(g.levels.main.members.size(), " at ", Format(key, g.levels.main.value)));
    ++level_count;
  }
  for (const Level& level : g.levels.others) {
    v1::Level* l = f.add_levels();
    l->set_value(level.value);
    l->set_locations(level.members.size());
    parts.push_back(absl::StrCat(level.members.size(), " at ", Format(key, level.value)));
    std::vector<std::string> names;
    for (uint32_t loc : level.members) {
      for (const Member& m : g.members) {
        if (m.location == loc) names.push_back(m.name);
      }
    }
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) f.add_locations(name);
    split.signatures.push_back(absl::StrJoin(names, ","));
  }
  const double first = g.levels.others.front().value;
  *f.add_reasons() = MakeReason(
      v1::SPLIT,
      absl::StrCat(SeriesName(key), " has ", level_count, " consistent levels in ", g.group, ": ",
                   absl::StrJoin(parts, ", "), " (declare a peer group if this is a price zone)"),
      first, g.levels.main.value, g.stats->band.low, g.stats->band.high,
      s.median != 0 ? std::fabs(first - s.median) / std::fabs(s.median) : 0, first - s.median);
  ev->splits.push_back(std::move(split));
}

// Outlier: the rule's own verdict (ComputeGroups), held weakly too so that
// a finding closes only with the hysteresis margin.
bool Engine::OutlierReason(const SeriesKey& key, const GroupData& g, size_t i, double weak,
                           std::vector<std::pair<double, v1::Reason>>* reasons) {
  const double strength = g.assessed[i].strength;
  if (!(strength > 0 && strength >= weak)) return false;
  const SeriesStats& stats = *g.stats;
  const GroupSummary& s = stats.summary;
  const double x = g.members[i].value.value;
  const double dev = x - s.median;
  const double magnitude = s.median != 0 ? std::fabs(dev) / std::fabs(s.median) : std::fabs(dev);
  v1::Reason r =
      MakeReason(v1::OUTLIER,
                 absl::StrCat(Meaning(key.family, dev), ": ", Format(key, x), " against ",
                              Format(key, s.median), " expected (",
                              Percent(s.median != 0 ? dev / std::fabs(s.median) : 0), "), ",
                              strength >= 1 ? "outside" : "near the edge of", " the band ",
                              Format(key, stats.band.low), " .. ", Format(key, stats.band.high),
                              " of ", g.members.size(), " locations in ", g.group,
                              RateEvidence(key, g.members[i].value)),
                 x, s.median, stats.band.low, stats.band.high, magnitude, dev);
  reasons->emplace_back(strength, std::move(r));
  return g.assessed[i].outlier;
}

void Engine::PriceDropsOf(const SeriesData& data, std::vector<PriceDrop>* out) {
  for (const auto& [loc, change] : data.drops) {
    for (const GroupData& g : data.groups) {
      auto m = std::find_if(g.members.begin(), g.members.end(),
                            [&, l = loc](const Member& x) { return x.location == l && x.judged; });
      if (m == g.members.end()) continue;
      PriceDrop d;
      d.location = m->name;
      d.series = data.key;
      d.from = change.from;
      d.to = change.to;
      d.at = absl::FromUnixNanos(change.at_ns);
      d.rollout =
          NearAny(g.rollout_values, static_cast<double>(change.to), g.stats->band.floor);
      out->push_back(std::move(d));
      break;
    }
  }
}

// Irregular change: flipping back and forth, or a change few peers made
// that ends away from every level of the group. A change that ends where
// peers are (the main level, or another level at least min_level locations
// share) is convergence: a store joining its peers' price, whether they
// changed theirs (a rollout) or listed the item at it for the first time,
// or correcting an overcharge.
void Engine::IrregularChangeReason(const SeriesKey& key, const GroupData& g, size_t i,
                                   absl::Time now, const Thresholds& th,
                                   std::vector<std::pair<double, v1::Reason>>* reasons) {
  const Member& m = g.members[i];
  const SeriesStats& stats = *g.stats;
  const double median = stats.summary.median;
  const double floor = stats.band.floor;
  const uint64_t n = g.members.size();
  auto in_rollout = [&](double v) { return NearAny(g.rollout_values, v, floor); };
  auto at_a_level = [&](double v) {
    if (std::fabs(v - median) <= floor) return true;
    for (const Level& l : g.levels.others) {
      if (std::fabs(v - l.value) <= floor) return true;
    }
    return false;
  };
  const PriceChange& ch = m.latest_change;
  const int64_t window_since = absl::ToUnixNanos(now - th.irregular_window);
  const int64_t settled_before = absl::ToUnixNanos(now - th.irregular_settle);
  std::string detail;
  if (m.changes_in_flip_window >= th.flip_changes) {
    detail = absl::StrCat("changed its price ", m.changes_in_flip_window, " times in ",
                          absl::FormatDuration(th.flip_window), ", last from ",
                          Format(key, static_cast<double>(ch.from)), " to ",
                          Format(key, static_cast<double>(ch.to)));
  } else if (ch.at_ns != 0 && ch.at_ns >= window_since && ch.at_ns <= settled_before &&
             !in_rollout(static_cast<double>(ch.to)) && !at_a_level(static_cast<double>(ch.to))) {
    uint64_t peers_changed = 0;
    for (const Member& other : g.members) {
      if (other.location != m.location && other.latest_change.at_ns >= window_since) {
        ++peers_changed;
      }
    }
    if (!(static_cast<double>(peers_changed) < th.irregular_peer_share * (n - 1))) return;
    detail = absl::StrCat(
        "changed from ", Format(key, static_cast<double>(ch.from)), " to ",
        Format(key, static_cast<double>(ch.to)), " at ",
        absl::FormatTime("%Y-%m-%d %H:%M UTC", absl::FromUnixNanos(ch.at_ns), absl::UTCTimeZone()),
        " while ", peers_changed, " of ", n - 1, " peers changed theirs");
  } else {
    return;
  }
  reasons->emplace_back(
      1, MakeReason(v1::IRREGULAR_CHANGE, detail, m.value.value, static_cast<double>(ch.from),
                    stats.band.low, stats.band.high,
                    ch.from != 0 ? std::fabs(static_cast<double>(ch.to - ch.from)) / ch.from : 0,
                    static_cast<double>(ch.to - ch.from)));
}

// Drift of this cell's deviation (CUSUM), in the group's frozen scale.
void Engine::CellDriftReason(const SeriesKey& key, const std::string& group_id, const GroupData& g,
                             size_t i, double group_scale, const Evaluation* ev,
                             std::vector<std::pair<double, v1::Reason>>* reasons) {
  const DriftPolicy& drift = ev->drift;
  const Member& m = g.members[i];
  const SeriesStats& stats = *g.stats;
  const GroupSummary& s = stats.summary;
  const double x = m.value.value;
  const double dev = x - s.median;
  CellDrift& cd = cell_drift_[{group_id, m.location}];
  if (cd.last_bin != ev->drift_bin) {
    cd.last_bin = ev->drift_bin;
    const double z = dev / group_scale;
    if (!cd.baseline.frozen) {
      cd.baseline.Add(z, drift.baseline_bins);
    } else {
      cd.up.Update(z - cd.baseline.mean, drift.cusum_k);
      cd.down.Update(cd.baseline.mean - z, drift.cusum_k);
    }
  }
  double level = 0;
  if (key.family != v1::FAMILY_COMPLIANCE) level = std::max(level, cd.up.s / drift.cusum_h);
  if (key.family != v1::FAMILY_WAIT) level = std::max(level, cd.down.s / drift.cusum_h);
  if (level < ev->weak) return;
  reasons->emplace_back(level,
                        MakeReason(v1::DRIFT,
                                   absl::StrFormat("%s at this location is drifting away from its "
                                                   "peers: CUSUM %.1f baseline sigmas",
                                                   SeriesName(key), level * drift.cusum_h),
                                   x, s.median, stats.band.low, stats.band.high,
                                   s.median != 0 ? std::fabs(dev) / std::fabs(s.median) : 0, dev));
}

void Engine::LocationCondition(const SeriesKey& key, const std::string& series_name,
                               const absl::flat_hash_set<std::string>& unkeepable, Pending* p,
                               Evaluation* ev) {
  const TrustPolicy& trust = ev->catalog.trust;
  const bool promise_counts = !p->promise_id.empty() && !unkeepable.contains(p->promise_id);
  if (promise_counts) {
    auto& kb = ev->kept_broken[p->location];
    if (p->promise_broken) {
      ++kb.second;
      ev->withdrawals[p->location] += trust.withdrawal;
    } else {
      ++kb.first;
      ev->deposits[p->location] += trust.deposit;
    }
  }
  if (p->outlier) ev->withdrawals[p->location] += trust.withdrawal;
  if (!p->promise_id.empty()) {
    ev->promises.push_back({p->name, key, std::move(p->promise), !p->promise_broken});
  }
  std::vector<std::pair<double, v1::Reason>> reasons;
  for (auto& r : p->reasons) {
    if (r.second.kind() == v1::BROKEN_PROMISE && !promise_counts) continue;
    reasons.push_back(std::move(r));
  }
  if (reasons.empty()) return;
  std::sort(reasons.begin(), reasons.end(), [](const auto& a, const auto& b) {
    const bool ha = a.first >= 1, hb = b.first >= 1;
    if (ha != hb) return ha;
    return KindRank(a.second.kind()) > KindRank(b.second.kind());
  });
  Condition c;
  c.id = absl::StrCat("loc|", p->name, "|", series_name);
  v1::Finding& f = c.finding;
  f.set_location(p->name);
  SeriesToProto(key, f.mutable_series());
  f.set_group(p->group->group);
  f.set_group_size(p->group->members.size());
  f.set_kind(reasons.front().second.kind());
  if (p->evidence_ns != 0) ToTimestamp(p->evidence_ns, f.mutable_evidence_at());
  // Severity comes from the reasons past their threshold: a near miss
  // carried along (an outlier short of the floor beside a drift) does
  // not raise it. Only while hysteresis alone holds the finding open
  // (no reason at full strength) do the weaker reasons set it.
  const bool any_full = reasons.front().first >= 1;
  v1::Severity severity = v1::LOW;
  bool only_drift = true;
  for (auto& [strength, reason] : reasons) {
    c.strength = std::max(c.strength, strength);
    if (strength >= 1 || !any_full) {
      const bool critical = reason.kind() == v1::BROKEN_PROMISE ? p->promise_critical
                                                                : p->critical_failure;
      severity = std::max(severity, ReasonSeverity(key.family, reason, strength,
                                                   p->group->stats->band.floor, critical));
      only_drift = only_drift && reason.kind() == v1::DRIFT;
    }
    *f.add_reasons() = std::move(reason);
  }
  f.set_severity(severity);
  f.set_audience(only_drift ? "region" : "store");
  ev->conditions.push_back(std::move(c));
}

void Engine::PublishFindings(
    absl::Time evaluated_at, int persistence, const std::vector<std::string>& names,
    const absl::flat_hash_map<uint32_t, std::pair<uint64_t, uint64_t>>& kept_broken,
    std::vector<PriceDrop> price_drops, std::vector<PromiseStanding> promises) {
  persistence = std::max(1, persistence);
  auto view = std::make_shared<FindingsView>();
  view->evaluated_at = evaluated_at;
  view->price_drops = std::move(price_drops);
  view->promises = std::move(promises);
  std::stable_sort(
      view->promises.begin(), view->promises.end(),
      [](const PromiseStanding& a, const PromiseStanding& b) { return a.location < b.location; });
  std::stable_sort(
      view->price_drops.begin(), view->price_drops.end(),
      [](const PriceDrop& a, const PriceDrop& b) { return a.location < b.location; });
  if (evaluated_counts_.size() >= static_cast<size_t>(persistence)) {
    view->observations_settled = evaluated_counts_.front();
  }
  view->active = tracker_.Active();
  std::stable_sort(view->active.begin(), view->active.end(),
                   [](const v1::Finding& a, const v1::Finding& b) {
                     if (a.severity() != b.severity()) return a.severity() > b.severity();
                     return KindRank(a.kind()) > KindRank(b.kind());
                   });
  view->closed.assign(tracker_.Closed().begin(), tracker_.Closed().end());
  for (size_t i = 0; i < names.size(); ++i) {
    const uint32_t loc = static_cast<uint32_t>(i);
    const TrustAccount& account = trust_[loc];
    FindingsView::Trust t;
    t.location = names[i];
    t.balance = account.balance();
    t.score = account.score();
    if (auto it = kept_broken.find(loc); it != kept_broken.end()) {
      t.kept = it->second.first;
      t.broken = it->second.second;
    }
    view->trust.push_back(std::move(t));
  }
  std::sort(view->trust.begin(), view->trust.end(),
            [](const FindingsView::Trust& a, const FindingsView::Trust& b) {
              return a.location < b.location;
            });

  absl::MutexLock lock(&snapshot_mu_);
  auto snapshot = std::make_shared<Snapshot>(*snapshot_);
  snapshot->findings = std::move(view);
  snapshot_ = std::move(snapshot);
}

std::shared_ptr<const Snapshot> Engine::snapshot() const {
  absl::MutexLock lock(&snapshot_mu_);
  return snapshot_;
}

absl::StatusOr<v1::KeyDetailResponse> Engine::KeyDetail(const v1::SeriesId& id,
                                                        const std::string& group) const {
  const SeriesKey key = SeriesFromProto(id);
  if (key.family == v1::FAMILY_UNSPECIFIED) {
    return absl::InvalidArgumentError("series.family: one of price, wait, compliance, score");
  }
  if (key.family == v1::FAMILY_PRICE && key.currency.empty()) {
    return absl::InvalidArgumentError("series.currency: a price series needs its currency");
  }
  const absl::Time now = options_.clock();
  SeriesData data;
  std::shared_ptr<const Catalog> catalog;
  // Observed-at and samples per location, read with the values.
  absl::flat_hash_map<uint32_t, int64_t> observed_at;
  {
    absl::MutexLock lock(&mu_);
    catalog = catalog_;
    auto it = series_index_.find(key);
    if (it == series_index_.end()) {
      return absl::NotFoundError(absl::StrCat("no location reports ", SeriesName(key)));
    }
    data = CollectLocked(it->second, now, *catalog);
    const Series& s = series_[it->second];
    for (const auto& [loc, c] : s.price) observed_at[loc] = c.observed_at_ns;
    for (const auto& [loc, c] : s.wait) observed_at[loc] = c.observed_at_ns;
    for (const auto& [loc, c] : s.compliance) observed_at[loc] = c.observed_at_ns;
    for (const auto& [loc, c] : s.score) observed_at[loc] = c.observed_at_ns;
  }
  if (data.groups.empty()) {
    return absl::NotFoundError(absl::StrCat("no location has a comparable value for ",
                                            SeriesName(key),
                                            " now (stale, or too few samples in the window)"));
  }
  ComputeGroups(&data, now, *catalog);
  v1::KeyDetailResponse response;
  bool found = false;
  for (const GroupData& g : data.groups) {
    if (!group.empty() && g.group != group) continue;
    found = true;
    v1::GroupDetail* detail = response.add_groups();
    FillSeriesStats(*g.stats, detail->mutable_stats());
    std::vector<const Member*> members;
    for (const Member& m : g.members) members.push_back(&m);
    std::sort(members.begin(), members.end(), [](const Member* a, const Member* b) {
      if (a->value.value != b->value.value) return a->value.value < b->value.value;
      return a->name < b->name;
    });
    for (const Member* m : members) {
      v1::LocationValue* v = detail->add_values();
      v->set_location(m->name);
      v->set_value(m->value.value);
      v->set_samples(m->value.samples);
      ToTimestamp(observed_at[m->location], v->mutable_observed_at());
    }
    FillSeriesOutliers(*g.stats, detail->mutable_outliers());
  }
  if (!found) {
    return absl::NotFoundError(absl::StrCat("no peer group '", group, "' for ", SeriesName(key)));
  }
  // The single-group fields show the largest group (the chain, usually).
  const v1::GroupDetail* largest = &response.groups(0);
  for (const v1::GroupDetail& g : response.groups()) {
    if (g.stats().n() > largest->stats().n()) largest = &g;
  }
  *response.mutable_stats() = largest->stats();
  *response.mutable_values() = largest->values();
  *response.mutable_outliers() = largest->outliers();
  // With a group asked for, only its findings: those of the group, and
  // those about its members (a key-wide finding names no group).
  absl::flat_hash_set<std::string> members;
  for (const v1::GroupDetail& g : response.groups()) {
    for (const v1::LocationValue& v : g.values()) members.insert(v.location());
  }
  std::shared_ptr<const Snapshot> snap = snapshot();
  for (const v1::Finding& f : snap->findings->active) {
    if (!f.has_series() || !(SeriesFromProto(f.series()) == key)) continue;
    if (!group.empty() && f.group() != group && !members.contains(f.location())) continue;
    *response.add_findings() = f;
  }
  return response;
}

std::vector<CurrentWait> Engine::CurrentWaits(const std::string& location) const {
  const absl::Time now = options_.clock();
  std::vector<CurrentWait> out;
  absl::MutexLock lock(&mu_);
  auto it = location_index_.find(location);
  if (it == location_index_.end()) return out;
  const Catalog& catalog = *catalog_;
  for (const Series& s : series_) {
    auto cell = s.wait.find(it->second);
    if (cell == s.wait.end()) continue;
    const QuantileSketch window = cell->second.Window(now, catalog.wait, catalog.wait_sketch);
    if (window.empty()) continue;
    out.push_back({s.key.key, window.Quantile(0.5), window.Quantile(0.9), window.count(),
                   absl::FromUnixNanos(cell->second.observed_at_ns)});
  }
  std::sort(out.begin(), out.end(),
            [](const CurrentWait& a, const CurrentWait& b) { return a.service < b.service; });
  return out;
}

absl::StatusOr<v1::LocationScorecardResponse> Engine::LocationScorecard(
    const std::string& location) const {
  if (absl::Status s = ValidateLocationId(location); !s.ok()) return s;
  const absl::Time now = options_.clock();
  v1::LocationScorecardResponse response;
  response.set_location(location);
  std::vector<std::pair<SeriesKey, Comparable>> values;
  std::shared_ptr<const Catalog> catalog;
  {
    absl::MutexLock lock(&mu_);
    catalog = catalog_;
    auto it = location_index_.find(location);
    const LocationEntry* entry = catalog->FindLocation(location);
    if (it == location_index_.end() && entry == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("location '", location, "' has never reported and is not in the catalog"));
    }
    if (entry != nullptr) {
      for (const auto& [k, v] : entry->labels) (*response.mutable_labels())[k] = v;
    }
    if (it != location_index_.end()) {
      const uint32_t loc = it->second;
      ToTimestamp(locations_[loc].state.last_report, response.mutable_last_report());
      for (const Series& s : series_) {
        std::optional<Comparable> c;
        if (auto p = s.price.find(loc); p != s.price.end())
          c = ComparePrice(p->second, now, catalog->price);
        if (auto w = s.wait.find(loc); w != s.wait.end()) {
          c = CompareWait(w->second, now, catalog->wait, catalog->wait_sketch, 0);
        }
        if (auto k = s.compliance.find(loc); k != s.compliance.end()) {
          const KeyJudging* judging = catalog->JudgingFor(s.key.key);
          c = CompareCompliance(k->second, now, catalog->CompliancePolicy(s.key.key),
                                judging != nullptr ? judging->mode : JudgingMode::kRate);
        }
        if (auto sc = s.score.find(loc); sc != s.score.end())
          c = CompareScore(sc->second, now, catalog->score);
        if (c.has_value()) values.emplace_back(s.key, *c);
      }
    }
  }
  response.set_expected_open(catalog->ExpectedOpen(location, now));
  std::sort(values.begin(), values.end(),
            [](const auto& a, const auto& b) { return SeriesName(a.first) < SeriesName(b.first); });
  for (const auto& [key, c] : values) {
    SeriesToProto(key, response.add_series());
    v1::LocationValue* v = response.add_values();
    v->set_location(location);
    v->set_value(c.value);
    v->set_samples(c.samples);
  }
  std::shared_ptr<const Snapshot> snap = snapshot();
  v1::TrustScore* trust = response.mutable_trust();
  trust->set_location(location);
  trust->set_score(100);
  for (const FindingsView::Trust& t : snap->findings->trust) {
    if (t.location != location) continue;
    trust->set_balance(t.balance);
    trust->set_score(t.score);
    response.set_promises_kept(t.kept);
    response.set_promises_broken(t.broken);
  }
  for (const v1::Finding& f : snap->findings->active) {
    if (f.location() == location ||
        std::find(f.locations().begin(), f.locations().end(), location) != f.locations().end()) {
      *response.add_findings() = f;
    }
  }
  return response;
}

}  // namespace constance::collector
