#include "collector/engine.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <system_error>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "collector/memory.h"
#include "collector/refusal.h"
#include "constance/format.h"
#include "constance/validate.h"
#include "spdlog/spdlog.h"

namespace constance::collector {
namespace {

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

// A series' cells of one family, by location index (each below `bound`):
// hash order is no order. Where the cells fill a good share of the
// locations, a table indexed by location orders them in one pass.
template <typename Cell>
std::vector<std::pair<uint32_t, const Cell*>> InLocationOrder(
    const CellTable<Cell>& cells, size_t bound) {
  std::vector<std::pair<uint32_t, const Cell*>> out;
  out.reserve(cells.size());
  if (cells.size() * 8 >= bound) {
    std::vector<const Cell*> at(bound, nullptr);
    for (const auto& [loc, cell] : cells) at[loc] = &cell;
    for (uint32_t loc = 0; loc < bound; ++loc) {
      if (at[loc] != nullptr) out.emplace_back(loc, at[loc]);
    }
    return out;
  }
  for (const auto& [loc, cell] : cells) out.emplace_back(loc, &cell);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

// When time alone next changes what CollectLocked, ComputeGroups or
// EvaluateSeries read of a series: every input they compare with now,
// read forwards. Fed each cell as CollectLocked walks them (a second walk
// would fetch every cell again), then the series' own dates (Finish).
class HorizonWalk {
 public:
  HorizonWalk(const Catalog& catalog, Horizon* h)
      : catalog_(catalog),
        th_(catalog.thresholds),
        h_(h),
        flip_since_(absl::ToUnixNanos(absl::FromUnixNanos(h->now_ns()) - th_.flip_window)),
        now_(absl::FromUnixNanos(h->now_ns())),
        flip_span_(Horizon::SpanNs(th_.flip_window + absl::Nanoseconds(1))),
        settle_span_(Horizon::SpanNs(th_.irregular_settle)) {}

  // `at`: the family's policy at the horizon's now.
  void Price(const LocationEntry* e, const PriceCell& cell, const PolicyAt& at) {
    Opening(e);
    CellHorizon(cell, at, h_);
    if (cell.changes == nullptr) return;
    // Only what CollectLocked reads of the changes. A change counts while
    // at_ns >= now - window, and is settled from at_ns + settle.
    const PriceChanges& changes = *cell.changes;
    // The flip count is read against flip_changes (and shown once it
    // reaches it). Without new changes it only falls, so changes leaving
    // the window change nothing while it is below.
    if (changes.CountSince(flip_since_) >= th_.flip_changes) {
      for (int i = 0; i < changes.size; ++i) {
        h_->After(changes.ring[i].at_ns, flip_span_);
      }
    }
    // The latest change's settling. Its rollout_grace: RolloutHorizon, once
    // the groups are known; the irregular window: IrregularHorizon, once
    // they are computed. Drops leaving the grace leave what evaluations
    // publish without a recomputation (Engine::Merge).
    if (const PriceChange* latest = changes.latest(); latest != nullptr) {
      h_->After(latest->at_ns, settle_span_);
    }
  }

  void Wait(const LocationEntry* e, const WaitCell& cell, const PolicyAt& at) {
    Opening(e);
    CellHorizon(cell, at, h_);
    if (!catalog_.wait_sketch.hour_of_week) return;
    // Waits compared by local hour: each zone's next hour.
    const absl::TimeZone tz = e != nullptr ? e->tz : absl::UTCTimeZone();
    if (std::find(zones_.begin(), zones_.end(), tz) != zones_.end()) return;
    zones_.push_back(tz);
    const absl::Time now = absl::FromUnixNanos(h_->now_ns());
    h_->At(absl::FromCivil(absl::ToCivilHour(now, tz) + 1, tz));
  }

  // Compliance (with the key's policy) and scores.
  template <typename C>
  void Other(const LocationEntry* e, const C& cell, const PolicyAt& at) {
    Opening(e);
    CellHorizon(cell, at, h_);
  }

  void Finish(const SeriesKey& key) {
    // Drift reads each series once per bin (prices have none).
    if (key.family != v1::FAMILY_PRICE) {
      h_->After(BinStart(h_->now_ns(), catalog_.drift.bin), catalog_.drift.bin);
    }
    // A list price applies from its effective date; a rollout to it is
    // expected for rollout_grace after.
    for (const PricePromise* p : PricePromisesFor(key, catalog_)) {
      h_->At(p->effective);
      if (p->effective != absl::InfinitePast()) h_->At(p->effective + th_.rollout_grace);
    }
    for (const Exception* e : catalog_.ExceptionsOf(key.family, key.key)) h_->At(e->expires);
  }

 private:
  // A store not open yet is compared from its opening (the horizon folds
  // in only what is after now: compared first, converted only then).
  void Opening(const LocationEntry* e) {
    if (e != nullptr && e->opened > now_) h_->At(e->opened);
  }

  const Catalog& catalog_;
  const Thresholds& th_;
  Horizon* h_;
  const int64_t flip_since_;
  // Read at every cell: absl's time arithmetic is out of line.
  const absl::Time now_;
  const std::optional<int64_t> flip_span_, settle_span_;
  std::vector<absl::TimeZone> zones_;
};

// How many cells ahead a walk fetches what a cell points to.
constexpr size_t kPrefetchAhead = 8;

void PrefetchChanges(const PriceCell& cell) {
  if (const PriceChanges* c = cell.changes.get(); c != nullptr) {
    __builtin_prefetch(c);
    __builtin_prefetch(reinterpret_cast<const char*>(c) + sizeof(PriceChanges) - 1);
  }
}

// Rush hours differ: a group spanning time zones compares waits within
// the same local hour-of-week once at least two such buckets have
// min_group locations each; the locations of smaller buckets stay
// compared together in the group.
void BucketByLocalHour(absl::Time now, uint64_t min_group,
                       std::map<std::string, std::vector<GroupMember>>* groups) {
  std::vector<std::pair<absl::TimeZone, std::string>> hour_in;  // Each zone's bucket, once.
  auto bucket_of = [&](const absl::TimeZone& tz) -> const std::string& {
    for (const auto& [zone, bucket] : hour_in) {
      if (zone == tz) return bucket;
    }
    return hour_in.emplace_back(tz, absl::FormatTime("%a %Hh", now, tz)).second;
  };
  std::map<std::string, std::vector<GroupMember>> bucketed;
  for (auto& [name, members] : *groups) {
    std::map<std::string, std::vector<GroupMember>> buckets;
    for (GroupMember& m : members) {
      const absl::TimeZone tz = m.entry != nullptr ? m.entry->tz : absl::UTCTimeZone();
      buckets[bucket_of(tz)].push_back(std::move(m));
    }
    size_t enough = 0;
    for (const auto& [bucket, in] : buckets) enough += in.size() >= min_group;
    std::vector<GroupMember>& rest = bucketed[name];
    if (enough < 2) {  // One hour (or none) with enough data: compare as one group.
      for (auto& [bucket, in] : buckets) {
        for (GroupMember& m : in) rest.push_back(std::move(m));
      }
      continue;
    }
    for (auto& [bucket, in] : buckets) {
      if (in.size() >= min_group) {
        bucketed[absl::StrCat(name, "@", bucket)] = std::move(in);
      } else {
        for (GroupMember& m : in) rest.push_back(std::move(m));
      }
    }
  }
  *groups = std::move(bucketed);
}

// Where a series' members go as CollectLocked walks them: the group each
// location is in under the series' peer-group rule, found by the
// catalog's index (each group's name once per series, not per member).
// A group's vector is taken from `pool` when there is one.
class MemberGroups {
 public:
  using Groups = std::map<std::string, std::vector<GroupMember>>;
  MemberGroups(const PeerGroupRule* rule, const Catalog& catalog, Groups* groups,
               VectorPool<GroupMember>* pool)
      : rule_(rule),
        rule_index_(rule == nullptr ? 0 : static_cast<size_t>(rule - catalog.peer_groups.data())),
        catalog_(catalog),
        groups_(groups),
        names_(rule == nullptr || rule_index_ >= catalog.peer_group_names.size()
                   ? nullptr
                   : &catalog.peer_group_names[rule_index_]),
        by_index_(names_ == nullptr ? 0 : names_->size(), nullptr),
        pool_(pool) {}

  std::vector<GroupMember>& Of(const LocationEntry* entry) {
    if (rule_ == nullptr || entry == nullptr) return Chain();
    // An entry of another catalog (one loaded since), or of one built in
    // code and not indexed: its name, as the index would have made it.
    const auto& all = catalog_.locations;
    const bool indexed = !all.empty() && std::less_equal<>()(all.data(), entry) &&
                         std::less<>()(entry, all.data() + all.size()) &&
                         entry->groups.size() == catalog_.peer_groups.size() &&
                         entry->groups[rule_index_] < by_index_.size();
    if (!indexed) return Group(PeerGroupOf(*rule_, *entry));
    std::vector<GroupMember>*& group = by_index_[entry->groups[rule_index_]];
    if (group == nullptr) group = &Group((*names_)[entry->groups[rule_index_]]);
    return *group;
  }

  // Every member of a series without a rule: one group, one lookup.
  std::vector<GroupMember>& Chain() {
    if (chain_ == nullptr) chain_ = &Group(kChainGroup);
    return *chain_;
  }

 private:
  std::vector<GroupMember>& Group(const std::string& name) {
    auto [it, added] = groups_->try_emplace(name);
    if (added && pool_ != nullptr) it->second = pool_->Take();
    return it->second;
  }

  const PeerGroupRule* rule_;
  size_t rule_index_;
  const Catalog& catalog_;
  Groups* groups_;
  const std::vector<std::string>* names_;            // The rule's groups (null: not indexed).
  std::vector<std::vector<GroupMember>*> by_index_;  // By the rule's group index.
  std::vector<GroupMember>* chain_ = nullptr;
  VectorPool<GroupMember>* pool_;
};

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

// The approved exceptions in force for `key` at `now`. A series has a
// few at most: its members are checked against these alone, not against
// every exception of the chain.
std::vector<const Exception*> ExceptionsFor(const SeriesKey& key, absl::Time now,
                                            const Catalog& catalog) {
  std::vector<const Exception*> out = catalog.ExceptionsOf(key.family, key.key);
  out.erase(
      std::remove_if(out.begin(), out.end(), [&](const Exception* e) { return now >= e->expires; }),
      out.end());
  return out;
}

bool Excepted(const std::string& location, const std::vector<const Exception*>& exceptions) {
  return std::any_of(exceptions.begin(), exceptions.end(),
                     [&](const Exception* e) { return e->location == location; });
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

// Puts `value` in a slot retention freed, if there is one, else at the
// end; returns its index.
template <typename T>
uint32_t PlaceInSlot(std::vector<T>* slots, std::vector<uint32_t>* free, T value) {
  if (free->empty()) {
    slots->push_back(std::move(value));
    return static_cast<uint32_t>(slots->size() - 1);
  }
  const uint32_t index = free->back();
  free->pop_back();
  (*slots)[index] = std::move(value);
  return index;
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
    k.kind =
        obs.kind == v1::PRICE_KIND_UNSPECIFIED ? v1::SHELF : static_cast<v1::PriceKind>(obs.kind);
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
  if (stats.main_level.locations > 0) {
    v1::Level* l = out->add_levels();
    l->set_value(stats.main_level.value);
    l->set_locations(stats.main_level.locations);
  }
  for (const SeriesStats::LevelCount& level : stats.other_levels) {
    v1::Level* l = out->add_levels();
    l->set_value(level.value);
    l->set_locations(level.locations);
  }
}

void FillSeriesOutliers(const SeriesStats& stats,
                        google::protobuf::RepeatedPtrField<v1::Outlier>* out) {
  for (size_t i = 0; i < stats.outliers.size(); ++i) {
    FillOutlier(stats.key, stats.group, stats.summary, stats.band, stats.outliers[i],
                stats.outlier_locations[i], out->Add());
  }
}

// A location's evaluation in one series, before unkeepable promises are
// known (they need every group's tally).
struct Engine::Pending {
  uint32_t location;
  std::string name;
  const GroupData* group;
  // Its reasons: [first_reason, end_reason) of the series' pool (one
  // vector for every member, not one allocation each).
  size_t first_reason = 0, end_reason = 0;
  std::string promise_id;  // Non-empty when a promise applies.
  bool promise_broken = false;
  bool outlier = false;
  bool critical_failure = false;  // Compliance: a critical check failed in the window.
  bool promise_critical = false;  // Its promise broken by a failed critical check.
  int64_t evidence_ns = 0;        // Comparable::evidence_ns.
  std::string promise;            // PromiseVerdict::promise.
  size_t member = 0;              // Its index in group->members.
};

// The buffers recomputations build their series in, kept between series
// and evaluations (VectorPool): a few per thread recomputing, a series'
// groups each taking one.
struct Engine::Scratch {
  static constexpr size_t kKept = 16;
  VectorPool<GroupMember> members{kKept};
  VectorPool<Assessment> assessed{kKept};
  VectorPool<LocatedValue> values{kKept};
  VectorPool<Pending> pending{kKept};
  VectorPool<WeightedReason> reasons{kKept};
};

Engine::Engine(Options options)
    : options_(std::move(options)),
      started_at_(options_.clock()),
      base_catalog_(options_.catalog),
      catalog_(options_.catalog),
      tracker_(options_.catalog->thresholds.persistence, options_.catalog->thresholds.hysteresis),
      scratch_(std::make_unique<Scratch>()) {
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
  Location l;
  l.state.location = std::string(location);
  l.entry = catalog_->FindLocation(location);
  const uint32_t index = PlaceInSlot(&locations_, &free_locations_, std::move(l));
  location_index_.emplace(std::string(location), index);
  // Back after being dropped for silence: its agent carries on from the
  // mark it was acknowledged.
  if (auto it = retired_.find(location); it != retired_.end()) {
    streams_[{index, it->second.incarnation}] = it->second.stream;
    retired_.erase(it);
  }
  return index;
}

void Engine::SetCatalog(std::shared_ptr<const Catalog> catalog) {
  absl::MutexLock lock(&mu_);
  base_catalog_ = catalog;
  catalog_ = std::move(catalog);
  labels_dirty_ = !agent_labels_.empty();
  RefreshCatalogLocked();
  for (Location& l : locations_) l.entry = catalog_->FindLocation(l.state.location);
  for (Series& s : series_) s.dirty = Series::kChanged;
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
    LocationEntry* entry =
        it != merged->location_index.end() ? &merged->locations[it->second] : nullptr;
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
  for (Series& s : series_) s.dirty = Series::kChanged;
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

// The ack of `batch` with `outcome`, naming the batch.
v1::Ack AckOf(const BatchView& batch, v1::Ack::Outcome outcome) {
  v1::Ack ack;
  ack.set_location(std::string(batch.location));
  ack.set_incarnation(batch.incarnation);
  ack.set_first_sequence(batch.first_sequence);
  ack.set_count(static_cast<uint32_t>(batch.observations.size()));
  ack.set_outcome(outcome);
  return ack;
}

v1::Ack OutOfOrderAck(const BatchView& batch, uint64_t watermark, uint64_t expected) {
  v1::Ack ack = AckOf(batch, v1::Ack::OUT_OF_ORDER);
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
  } else if (auto it = retired_.find(batch.location);
             it != retired_.end() && it->second.incarnation == batch.incarnation) {
    watermark = it->second.stream.watermark;  // Dropped for silence; ApplyBatch gives it back.
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

absl::StatusOr<v1::Ack> Engine::ReplayBatch(const v1::Batch& batch, absl::Time received) {
  replaying_.store(true, std::memory_order_relaxed);
  absl::StatusOr<v1::Ack> ack = ApplyBatch(batch, received);
  replaying_.store(false, std::memory_order_relaxed);
  return ack;
}

std::vector<std::string> Engine::OverCapacity() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<std::string> over;
  const Limits& limits = options_.limits;
  if (limits.max_locations > 0 && location_index_.size() > limits.max_locations) {
    over.push_back(absl::StrCat(location_index_.size(),
                                " locations, above --max_locations=", limits.max_locations));
  }
  if (limits.max_series > 0 && series_index_.size() > limits.max_series) {
    over.push_back(
        absl::StrCat(series_index_.size(), " series, above --max_series=", limits.max_series));
  }
  return over;
}

absl::StatusOr<v1::Ack> Engine::ApplyBatch(const BatchView& batch, absl::Time now) {
  return ApplyBatch(batch, now, /*owner=*/0);
}

absl::StatusOr<v1::Ack> Engine::ApplyBatch(const BatchView& batch, absl::Time now, uint64_t owner) {
  if (absl::Status s = ValidateBatchShape(batch, options_.limits); !s.ok()) return s;
  return ApplyBatch(batch, now, owner, CheckBatch(batch, now));
}

Engine::BatchChecks Engine::CheckBatch(const BatchView& batch, absl::Time received) const {
  BatchChecks checks;
  const ObservationValidator validator(received, options_.limits);
  for (size_t i = 0; i < batch.observations.size(); ++i) {
    absl::Status s = validator.Check(batch.observations[i]);
    if (!s.ok()) checks.failed.emplace_back(static_cast<uint32_t>(i), std::move(s));
  }
  return checks;
}

absl::Status Engine::MayApplyLocked(const BatchView& batch, uint64_t owner) const {
  if (owner != 0) {
    if (auto it = owners_.find(batch.location); it == owners_.end() || it->second != owner) {
      return absl::AbortedError(
          absl::StrCat("superseded by a newer stream for location '", batch.location,
                       "': nothing of this stream applies any more; resend on the newer one"));
    }
  }
  return AdmitLocationLocked(batch.location);
}

absl::Status Engine::AdmitLocationLocked(absl::string_view location) const {
  const Catalog& catalog = *catalog_;
  if (!catalog.auto_register && !location_index_.contains(location) && !DeclaredLocked(location)) {
    return Refusal(
        absl::PermissionDeniedError(absl::StrCat(
            "location '", location, "' is not in the catalog and auto_register is off: add it to ",
            catalog.path)),
        kRefusedUnknownLocation);
  }
  if (const uint64_t limit = Capacity(options_.limits.max_locations);
      limit > 0 && !location_index_.contains(location) && location_index_.size() >= limit) {
    // Refused before anything is kept: the agent retries and loses nothing.
    return Refusal(
        absl::ResourceExhaustedError(absl::StrCat(
            "location '", location, "' would be one more than the ", options_.limits.max_locations,
            " locations this collector accepts (--max_locations)")),
        kRefusedMaxLocations);
  }
  return absl::OkStatus();
}

namespace {

// Calls `f` with the cell table of `value`'s family in `series`; false
// when the value has none (nothing is created).
template <typename S, typename F>
bool WithCellTable(S& series, v1::Observation::ValueCase value, F&& f) {
  switch (value) {
    case v1::Observation::kPrice:
      f(series.price);
      return true;
    case v1::Observation::kWaitSeconds:
      f(series.wait);
      return true;
    case v1::Observation::kCheck:
      f(series.compliance);
      return true;
    case v1::Observation::kScore:
      f(series.score);
      return true;
    case v1::Observation::VALUE_NOT_SET:
      break;
  }
  return false;
}

// Whether a cell of `value`'s family may be created in `series` under one
// location stripe alone (CellTable::started).
template <typename S>
bool CellTableStarted(const S& series, v1::Observation::ValueCase value) {
  bool started = false;
  WithCellTable(series, value, [&](const auto& cells) { started = cells.started(); });
  return started;
}

template <typename S>
bool HasCell(const S& series, uint32_t loc, v1::Observation::ValueCase value) {
  bool has = true;  // Nothing is created.
  WithCellTable(series, value, [&](const auto& cells) { has = cells.contains(loc); });
  return has;
}

// The cell of `value`'s family at `loc` in `series`, null if none.
template <typename S>
void* FindCell(S& series, uint32_t loc, v1::Observation::ValueCase value) {
  void* found = nullptr;
  WithCellTable(series, value, [&](auto& cells) {
    if (auto it = cells.find(loc); it != cells.end()) found = &it->second;
  });
  return found;
}

// The cell the lookup found, else the one at `loc` (created if none: then
// `fresh`).
template <typename Cell>
std::pair<Cell*, bool> CellAt(CellTable<Cell>* cells, uint32_t loc, void* found) {
  if (found != nullptr) return {static_cast<Cell*>(found), false};
  return cells->try_emplace(loc);
}

// Fetches where FindCell will look (the cell table's control bytes and
// slots for `loc`) without waiting for it.
template <typename S>
void PrefetchCell(const S& series, uint32_t loc, v1::Observation::ValueCase value) {
  WithCellTable(series, value, [&](const auto& cells) { cells.prefetch(loc); });
}

// Fetches what PrefetchCell reads first: the header of `loc`'s stripe's
// table.
template <typename S>
void PrefetchCellTable(const S& series, uint32_t loc, v1::Observation::ValueCase value) {
  WithCellTable(series, value, [&](const auto& cells) { cells.PrefetchStripe(loc); });
}

}  // namespace

// What every observation of one batch shares: its location, its receive
// time, the catalog's bins, computed once per batch.
struct Engine::ApplyContext {
  ApplyContext(const Catalog& c, uint32_t l, absl::Time received, int64_t recomputed_at_ns)
      : catalog(c),
        loc(l),
        now(received),
        now_ns(absl::ToUnixNanos(received)),
        wait_bins(c.wait),
        compliance_bins(c.compliance),
        score_bins(c.score),
        judged_keys(!c.judging.empty()),
        rollout_grace_ns(absl::ToInt64Nanoseconds(c.thresholds.rollout_grace)),
        price_seen_since(
            recomputed_at_ns == INT64_MIN
                ? INT64_MAX
                : absl::ToUnixNanos(absl::FromUnixNanos(recomputed_at_ns) - c.price.ttl)) {}

  const Catalog& catalog;
  const uint32_t loc;
  const absl::Time now;
  const int64_t now_ns;
  const BinSpan wait_bins, compliance_bins, score_bins;
  // A judged key's window may be longer than the family's: its bins reach
  // further back.
  const bool judged_keys;
  const int64_t rollout_grace_ns;
  // A price observed at or after this was compared by the last
  // recomputation (not stale then, nor at any earlier one).
  const int64_t price_seen_since;
};

// Holds every stripe shared (in order), for who reads cells or location
// states under mu_ held shared: no batch applies meanwhile (stripes_).
class Engine::StripesShared {
 public:
  explicit StripesShared(const Engine* engine) ABSL_NO_THREAD_SAFETY_ANALYSIS
      : stripes_(engine->stripes_) {
    for (Stripe& s : stripes_) s.mu.ReaderLock();
  }
  ~StripesShared() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    for (auto it = stripes_.rbegin(); it != stripes_.rend(); ++it) it->mu.ReaderUnlock();
  }
  StripesShared(const StripesShared&) = delete;
  StripesShared& operator=(const StripesShared&) = delete;

 private:
  std::array<Stripe, kStripes>& stripes_;
};

// Every observation's series and cell are looked up before the first is
// applied, in two passes: every series (its index entry fetched a few
// observations ahead, its cell table's header once found), then every
// cell (each fetched a few observations ahead). The
// lookups do not depend on one another, so their cache misses (index
// entry, series, cell table: at a million series each is one) overlap
// instead of each waiting for the last.
bool Engine::LookUpLocked(const BatchView& batch, uint32_t loc, bool shared,
                          std::vector<LookedUp>* out) {
  static_assert(std::is_nothrow_move_constructible_v<Series>,
                "LookedUp::cell: a series moves its tables' storage when series_ grows");
  const uint64_t count = batch.observations.size();
  std::vector<LookedUp>& looked_up = *out;
  looked_up.resize(count);
  // Each key hashed once, for both the fetch ahead and the lookup.
  thread_local std::vector<HashedSeriesKeyView> keys;
  keys.resize(count);
  for (uint64_t i = 0; i < count; ++i) {
    keys[i] = HashedSeriesKeyView::Of(SeriesViewOf(batch.observations[i]));
    if (i < kPrefetchAhead) series_index_.prefetch(keys[i]);
  }
  for (uint64_t i = 0; i < count; ++i) {
    if (i + kPrefetchAhead < count) series_index_.prefetch(keys[i + kPrefetchAhead]);
    looked_up[i].series = FindSeriesLocked(keys[i]);
    if (looked_up[i].series != LookedUp::kNoSeries) {
      __builtin_prefetch(&series_[looked_up[i].series].price);
    } else if (shared) {
      return false;
    }
  }
  for (uint64_t i = 0; i < count; ++i) {
    // The table's header first (its cell's slot is found from it), then
    // the slot.
    if (i + 2 * kPrefetchAhead < count) {
      const uint32_t ahead = looked_up[i + 2 * kPrefetchAhead].series;
      if (ahead != LookedUp::kNoSeries) {
        PrefetchCellTable(series_[ahead], loc, batch.observations[i + 2 * kPrefetchAhead].value);
      }
    }
    if (i + kPrefetchAhead < count) {
      const uint32_t ahead = looked_up[i + kPrefetchAhead].series;
      if (ahead != LookedUp::kNoSeries) {
        PrefetchCell(series_[ahead], loc, batch.observations[i + kPrefetchAhead].value);
      }
    }
    LookedUp& l = looked_up[i];
    l.cell = l.series == LookedUp::kNoSeries
                 ? nullptr
                 : FindCell(series_[l.series], loc, batch.observations[i].value);
    if (shared && l.cell == nullptr &&
        !CellTableStarted(series_[l.series], batch.observations[i].value)) {
      return false;
    }
  }
  return true;
}

std::optional<v1::Ack> Engine::ApplyShared(const BatchView& batch, absl::Time now, uint64_t owner,
                                           const BatchChecks& checks, bool* unregistered) {
  if (!checks.failed.empty()) return std::nullopt;  // Rejections are counted exclusively.
  absl::ReaderMutexLock lock(&mu_);
  if (!captures_.empty() || !MayApplyLocked(batch, owner).ok()) return std::nullopt;
  const auto location = location_index_.find(batch.location);
  if (location == location_index_.end()) {
    *unregistered = true;
    return std::nullopt;
  }
  const uint32_t loc = location->second;
  const auto found = streams_.find({loc, batch.incarnation});
  if (found == streams_.end()) {
    *unregistered = true;
    return std::nullopt;
  }
  absl::MutexLock stripe(&stripes_[StripeOf(loc)].mu);
  Stream& stream = found->second;
  // A gap, declared or not, is counted exclusively.
  if (batch.first_sequence > stream.watermark + 1) return std::nullopt;
  thread_local std::vector<LookedUp> looked_up;
  if (!LookUpLocked(batch, loc, /*shared=*/true, &looked_up)) return std::nullopt;
  const uint64_t count = batch.observations.size();
  // Cells to start, at most (a key sent twice counts twice): a location
  // near its limit applies exclusively, where each is checked in turn.
  uint64_t new_cells = 0;
  for (uint64_t i = 0; i < count; ++i) new_cells += looked_up[i].cell == nullptr;
  if (new_cells > 0 && !RoomForCellsLocked(loc, new_cells)) return std::nullopt;
  const ApplyContext ctx(*catalog_, loc, now, recomputed_at_ns_);
  uint32_t duplicates = 0, applied = 0;
  for (uint64_t i = 0; i < count; ++i) {
    // A batch's first cells were found too long ago to still be cached.
    if (i + kPrefetchAhead < count) __builtin_prefetch(looked_up[i + kPrefetchAhead].cell, 1);
    if (batch.first_sequence + i <= stream.watermark) {
      ++duplicates;
      continue;
    }
    const ObservationView& obs = batch.observations[i];
    Series& series = series_[looked_up[i].series];
    const int64_t at = obs.has_observed_at
                           ? obs.observed_seconds * 1'000'000'000 + obs.observed_nanos
                           : ctx.now_ns;
    bool seen_again = false;
    uint8_t mark = 0;
    if (ApplyToCellLocked(&series, looked_up[i].series, looked_up[i].cell, obs, at, ctx,
                          &seen_again)) {
      ++cells_;
      NoteCellLocked(loc, looked_up[i].series);
      mark = Series::kRetain;  // As ApplyObservationLocked says why.
    }
    if (!seen_again) mark |= Series::kStats | Series::kFindings;
    // Batches of other locations mark the same series at once (an atomic
    // or), read first: once marked, the series' line stays shared, not
    // bounced between the cores for every observation.
    if ((__atomic_load_n(&series.dirty, __ATOMIC_RELAXED) & mark) != mark) {
      __atomic_fetch_or(&series.dirty, mark, __ATOMIC_RELAXED);
    }
    ++applied;
  }
  applied_ += applied;
  return FinishBatchLocked(batch, now, loc, stream, duplicates, applied,
                           AckOf(batch, v1::Ack::APPLIED));
}

std::optional<v1::Ack> Engine::ApplyBeside(const BatchView& batch, absl::Time now, uint64_t owner,
                                           const BatchChecks& checks) {
  if (!ValidateBatchShape(batch, options_.limits).ok()) return std::nullopt;
  // A new stream of a known location (an agent's restart) commutes with
  // other locations' batches; a new location does not (--max_locations,
  // numbering): it is registered in log order, by ApplyBatch.
  return ApplySharedRegistering(batch, now, owner, checks, /*new_location=*/false);
}

std::optional<v1::Ack> Engine::ApplySharedRegistering(const BatchView& batch, absl::Time now,
                                                      uint64_t owner, const BatchChecks& checks,
                                                      bool new_location) {
  bool unregistered = false;
  if (std::optional<v1::Ack> ack = ApplyShared(batch, now, owner, checks, &unregistered)) {
    return ack;
  }
  if (unregistered && RegisterStream(batch, owner, new_location)) {
    return ApplyShared(batch, now, owner, checks, &unregistered);
  }
  return std::nullopt;
}

absl::StatusOr<v1::Ack> Engine::ApplyBatch(const BatchView& batch, absl::Time now, uint64_t owner,
                                           const BatchChecks& checks) {
  if (absl::Status s = ValidateBatchShape(batch, options_.limits); !s.ok()) return s;
  // A new location's or stream's first batch: registered exclusively, and
  // applied beside other locations' batches all the same.
  if (std::optional<v1::Ack> ack =
          ApplySharedRegistering(batch, now, owner, checks, /*new_location=*/true)) {
    return *std::move(ack);
  }
  const uint64_t count = batch.observations.size();
  v1::Ack ack = AckOf(batch, v1::Ack::APPLIED);

  absl::MutexLock lock(&mu_);
  if (absl::Status s = MayApplyLocked(batch, owner); !s.ok()) return s;
  const uint32_t loc = LocationIndex(batch.location);
  Stream& stream = streams_[{loc, batch.incarnation}];
  if (const uint64_t expected = ExpectedInstead(batch, stream.watermark); expected != 0) {
    ++out_of_order_;
    return OutOfOrderAck(batch, stream.watermark, expected);
  }
  if (batch.first_sequence > stream.watermark + 1) {  // A declared dropped range.
    dropped_ += batch.first_sequence - 1 - stream.watermark;
  }
  const ApplyContext ctx(*catalog_, loc, now, recomputed_at_ns_);
  LookUpLocked(batch, loc, /*shared=*/false, &looked_up_);
  uint32_t duplicates = 0, applied = 0;
  auto failed = checks.failed.begin();
  for (uint64_t i = 0; i < count; ++i) {
    if (i + kPrefetchAhead < count) __builtin_prefetch(looked_up_[i + kPrefetchAhead].cell, 1);
    const uint64_t seq = batch.first_sequence + i;
    const absl::Status* invalid = nullptr;
    if (failed != checks.failed.end() && failed->first == i) invalid = &(failed++)->second;
    if (seq <= stream.watermark) {
      ++duplicates;
      continue;
    }
    if (ApplyObservationLocked(batch.observations[i], seq, invalid, looked_up_[i], ctx, &ack)) {
      ++applied;
    }
  }
  return FinishBatchLocked(batch, now, loc, stream, duplicates, applied, std::move(ack));
}

v1::Ack Engine::FinishBatchLocked(const BatchView& batch, absl::Time now, uint32_t loc,
                                  Stream& stream, uint32_t duplicates, uint32_t applied,
                                  v1::Ack ack) {
  duplicates_ += duplicates;
  ++batches_;
  const uint64_t count = batch.observations.size();
  stream.watermark = std::max(stream.watermark, batch.first_sequence + count - 1);
  stream.last_applied = std::max(stream.last_applied, now);
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
bool HoldsCell(const S& series, uint32_t loc) {
  return series.price.contains(loc) || series.wait.contains(loc) ||
         series.compliance.contains(loc) || series.score.contains(loc);
}

}  // namespace

bool Engine::RegisterStream(const BatchView& batch, uint64_t owner, bool new_location) {
  absl::MutexLock lock(&mu_);
  if (!captures_.empty() || !MayApplyLocked(batch, owner).ok()) return false;
  const bool known = location_index_.contains(batch.location);
  if (!known && !new_location) return false;
  const uint32_t loc = LocationIndex(batch.location);
  return streams_.try_emplace({loc, batch.incarnation}).second || !known;
}

bool Engine::RoomForCellsLocked(uint32_t loc, uint64_t more) const {
  const uint64_t limit = Capacity(options_.limits.max_cells_per_location);
  return limit == 0 || locations_[loc].cells + more <= limit;
}

void Engine::NoteCellLocked(uint32_t loc, uint32_t index) {
  Location& l = locations_[loc];
  ++l.cells;
  l.series.push_back(index);
  if (l.series.size() > l.cells + l.cells / 4 + 64) KeepSeriesOfLocked(loc, &l.series);
}

std::vector<uint32_t> Engine::SeriesOfLocked(uint32_t loc) const {
  std::vector<uint32_t> listed = locations_[loc].series;
  KeepSeriesOfLocked(loc, &listed);
  return listed;
}

void Engine::KeepSeriesOfLocked(uint32_t loc, std::vector<uint32_t>* listed) const {
  std::sort(listed->begin(), listed->end());
  listed->erase(std::unique(listed->begin(), listed->end()), listed->end());
  // A loop, not remove_if: the lock analysis does not see into a lambda.
  size_t kept = 0;
  for (uint32_t i : *listed) {
    if (i < series_.size() && HoldsCell(series_[i], loc)) (*listed)[kept++] = i;
  }
  listed->resize(kept);
}

void Engine::RejectLocked(uint64_t seq, const absl::Status& why, v1::Ack* ack) {
  v1::Rejection* r = ack->add_rejections();
  r->set_sequence(seq);
  r->set_reason(std::string(why.message()));
  ++rejected_by_reason_[ReasonCode(why.message())];
  ++rejected_;
}

uint32_t Engine::FindSeriesLocked(const ObservationView& obs) const {
  // From views into the observation (no copies).
  return FindSeriesLocked(HashedSeriesKeyView::Of(SeriesViewOf(obs)));
}

uint32_t Engine::FindSeriesLocked(const HashedSeriesKeyView& key) const {
  auto found = series_index_.find(key);
  return found == series_index_.end() ? LookedUp::kNoSeries : found->second;
}

inline bool Engine::ApplyObservationLocked(const ObservationView& obs, uint64_t seq,
                                           const absl::Status* invalid, LookedUp looked_up,
                                           const ApplyContext& ctx, v1::Ack* ack) {
  // Validation came first (CheckBatch): its failure is the reason.
  if (invalid != nullptr) {
    RejectLocked(seq, *invalid, ack);
    return false;
  }
  // What the lookup found stays true while the batch applies (nothing is
  // removed meanwhile); what it did not find an earlier observation of
  // the batch may have created since.
  if (looked_up.series == LookedUp::kNoSeries || looked_up.cell == nullptr) {
    if (looked_up.series == LookedUp::kNoSeries) looked_up.series = FindSeriesLocked(obs);
    const Series* series =
        looked_up.series == LookedUp::kNoSeries ? nullptr : &series_[looked_up.series];
    if (absl::Status s = RoomForCellLocked(series, ctx.loc, obs); !s.ok()) {
      RejectLocked(seq, s, ack);
      return false;
    }
  }
  const uint32_t index =
      looked_up.series == LookedUp::kNoSeries ? AddSeriesLocked(obs)->second : looked_up.series;
  PreserveForCapturesLocked(index, obs.value, ctx.loc);
  Series& series = series_[index];
  const int64_t at =
      obs.has_observed_at ? obs.observed_seconds * 1'000'000'000 + obs.observed_nanos : ctx.now_ns;
  bool seen_again = false;
  if (ApplyToCellLocked(&series, index, looked_up.cell, obs, at, ctx, &seen_again)) {
    ++cells_;
    NoteCellLocked(ctx.loc, index);
    // A new cell may be older than every cell the series held, so expire
    // before the series' expire_at_ns: retention reads the series again.
    // An observation of a held cell only ever moves it later (the cells'
    // Apply keep the newest time), which leaves expire_at_ns, its oldest
    // cell's expiry, an early bound: no pass needed.
    series.dirty |= Series::kRetain;
  }
  // A price seen again unchanged changes no statistic and no finding (a
  // finding keeps the earliest evidence it was seen on: FindingTracker).
  if (!seen_again) series.dirty |= Series::kStats | Series::kFindings;
  ++applied_;
  return true;
}

SeriesIndex::iterator Engine::AddSeriesLocked(const ObservationView& obs) {
  Series series;
  series.key = SeriesOf(obs);
  const uint32_t index = PlaceInSlot(&series_, &free_series_, std::move(series));
  return series_index_.emplace(series_[index].key, index).first;
}

inline bool Engine::ApplyToCellLocked(Series* series, uint32_t index, void* found,
                                      const ObservationView& obs, int64_t at,
                                      const ApplyContext& ctx, bool* seen_again) {
  const uint32_t loc = ctx.loc;
  switch (obs.value) {
    case v1::Observation::kPrice: {
      auto [cell, fresh] = CellAt(&series->price, loc, found);
      const int64_t before = cell->observed_at_ns;
      if (!cell->Apply(obs.minor_units, at)) {
        *seen_again = !fresh && before >= ctx.price_seen_since;
      } else {
        const PriceChange& change = *cell->changes->latest();
        // A drop older than the rollout grace when it arrives is outside
        // the window evaluations publish drops from: noted for the next.
        if (change.to < change.from && change.at_ns < ctx.now_ns - ctx.rollout_grace_ns) {
          absl::MutexLock lock(&late_mu_);
          late_drops_[index].push_back({loc, change});
        }
      }
      return fresh;
    }
    case v1::Observation::kWaitSeconds: {
      auto [cell, fresh] = CellAt(&series->wait, loc, found);
      cell->Apply(obs.number, at, ctx.wait_bins, ctx.catalog.wait_sketch);
      return fresh;
    }
    case v1::Observation::kCheck: {
      auto [cell, fresh] = CellAt(&series->compliance, loc, found);
      if (ctx.judged_keys && ctx.catalog.JudgingFor(obs.key) != nullptr) {
        cell->Apply(obs.passed, obs.critical, at, BinSpan(ctx.catalog.CompliancePolicy(obs.key)));
      } else {
        cell->Apply(obs.passed, obs.critical, at, ctx.compliance_bins);
      }
      return fresh;
    }
    case v1::Observation::kScore: {
      auto [cell, fresh] = CellAt(&series->score, loc, found);
      cell->Apply(obs.number, at, ctx.score_bins);
      return fresh;
    }
    case v1::Observation::VALUE_NOT_SET:
      break;
  }
  return false;
}

absl::Status Engine::RoomForCellLocked(const Series* series, uint32_t loc,
                                       const ObservationView& obs) const {
  const bool new_series = series == nullptr;
  if (!new_series && HasCell(*series, loc, obs.value)) return absl::OkStatus();
  const Limits& limits = options_.limits;
  if (!RoomForCellsLocked(loc, 1)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("location_cells: location '", locations_[loc].state.location,
                     "' holds its limit of ", limits.max_cells_per_location,
                     " keys (--max_cells_per_location); a new key is not started"));
  }
  if (const uint64_t limit = Capacity(limits.max_series);
      new_series && limit > 0 && series_index_.size() >= limit) {
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
  if (absl::Status s = AdmitLocationLocked(heartbeat.location()); !s.ok()) return s;
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
  state.health.data_cadence =
      absl::Seconds(std::min<uint64_t>(heartbeat.data_cadence_seconds(), 366ULL * 24 * 3600));
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
void Engine::FallBackToChain(uint64_t min_group,
                             std::map<std::string, std::vector<Member>>* groups) {
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

namespace {

bool SameMove(const PriceChange& a, const PriceChange& b) {
  return a.from == b.from && a.to == b.to;
}

// Calls f(first, last) for each move's run [first, last) of `moves`.
template <typename F>
void ForEachMove(const std::vector<PriceChange>& moves, F&& f) {
  for (auto first = moves.begin(); first != moves.end();) {
    auto last = first + 1;
    while (last != moves.end() && SameMove(*last, *first)) ++last;
    f(first, last);
    first = last;
  }
}

// A price group's moves (GroupData::moves) at `now`.
std::vector<PriceChange> RolloutMoves(const std::vector<GroupMember>& members, absl::Time now,
                                      const Thresholds& th) {
  std::vector<PriceChange> moves;
  const int64_t grace_since = absl::ToUnixNanos(now - th.rollout_grace);
  for (const GroupMember& m : members) {
    if (m.latest_change.at_ns != 0 && m.latest_change.at_ns >= grace_since) {
      moves.push_back(m.latest_change);
    }
  }
  std::sort(moves.begin(), moves.end(), [](const PriceChange& a, const PriceChange& b) {
    return std::tie(a.from, a.to, a.at_ns) < std::tie(b.from, b.to, b.at_ns);
  });
  return moves;
}

// When time alone next changes a price group's rollouts (PriceStructure):
// a move made by min_level locations or more within the rollout grace
// falling below min_level as its changes age out.
void RolloutHorizon(const std::vector<PriceChange>& moves, const Thresholds& th, Horizon* h) {
  // Without new changes a move's count only falls as its changes age out
  // of the grace, and the group's rollouts change only when one falls
  // below min_level: after its (n - min_level + 1)-th oldest change.
  // (A move with no change left is none: min_level 0 counts as 1.)
  const uint64_t min_level = std::max<uint64_t>(th.min_level, 1);
  ForEachMove(moves, [&](auto first, auto last) {
    const auto n = static_cast<uint64_t>(last - first);
    if (n < min_level) return;
    h->After((first + static_cast<std::ptrdiff_t>(n - min_level))->at_ns,
             th.rollout_grace + absl::Nanoseconds(1));
  });
}

}  // namespace

Engine::SeriesData Engine::CollectLocked(uint32_t index, absl::Time now, const Catalog& catalog,
                                         MemberNames* names, VectorPool<GroupMember>* pool) const {
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
  MemberGroups member_groups(rule, catalog, &groups, pool);
  if (rule == nullptr) {
    member_groups.Chain().reserve(series.price.size() + series.wait.size() +
                                  series.compliance.size() + series.score.size());
  }
  auto add = [&](uint32_t loc, const std::optional<Comparable>& value,
                 const PriceCell* price) ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    if (!value.has_value()) return;
    const Location& l = locations_[loc];
    // A store closed for good, or not open yet, is never compared.
    if (l.entry != nullptr && (l.entry->closed || l.entry->opened > now)) return;
    // Built in place: a member is large.
    Member& m = member_groups.Of(l.entry).emplace_back();
    m.location = loc;
    m.value = *value;
    m.entry = l.entry;
    m.name = names->Of(loc, l.state.location);
    if (price != nullptr && price->changes != nullptr) {
      m.latest_change = *price->changes->latest();
      m.changes_in_flip_window = price->changes->CountSince(flip_since);
      for (int i = 0; i < price->changes->size; ++i) {
        const PriceChange& c = price->changes->ring[i];
        if (c.to < c.from && c.at_ns >= drops_since) data.drops.push_back({loc, c});
      }
    }
  };
  // Cells in location order, so each group's members come out sorted.
  // A cell's changes live apart from it: fetched a few cells ahead, their
  // misses overlap instead of each stalling the walk.
  Horizon horizon(now);
  HorizonWalk walk(catalog, &horizon);
  auto entry = [&](uint32_t loc) ABSL_SHARED_LOCKS_REQUIRED(mu_) { return locations_[loc].entry; };
  const auto prices = InLocationOrder(series.price, locations_.size());
  const PolicyAt price_at(now, catalog.price);
  for (size_t i = 0; i < prices.size(); ++i) {
    // The cell first (its changes pointer is read ahead), then its changes.
    if (i + 2 * kPrefetchAhead < prices.size())
      __builtin_prefetch(prices[i + 2 * kPrefetchAhead].second);
    if (i + kPrefetchAhead < prices.size()) PrefetchChanges(*prices[i + kPrefetchAhead].second);
    const auto& [loc, cell] = prices[i];
    walk.Price(entry(loc), *cell, price_at);
    add(loc, ComparePrice(*cell, price_at), cell);
  }
  if (!series.wait.empty()) {
    const PolicyAt wait_at(now, catalog.wait);
    const double within = wait_promise != nullptr ? wait_promise->within_seconds : 0;
    const auto waits = InLocationOrder(series.wait, locations_.size());
    for (size_t i = 0; i < waits.size(); ++i) {
      if (i + 2 * kPrefetchAhead < waits.size())
        waits[i + 2 * kPrefetchAhead].second->PrefetchBins();
      if (i + kPrefetchAhead < waits.size()) waits[i + kPrefetchAhead].second->PrefetchCounts();
      const auto& [loc, cell] = waits[i];
      walk.Wait(entry(loc), *cell, wait_at);
      add(loc, CompareWait(*cell, wait_at, catalog.wait_sketch, within), nullptr);
    }
  }
  if (!series.compliance.empty()) {
    const FamilyPolicy policy = catalog.CompliancePolicy(series.key.key);
    const PolicyAt compliance_at(now, policy);
    const KeyJudging* judging = catalog.JudgingFor(series.key.key);
    const JudgingMode mode = judging != nullptr ? judging->mode : JudgingMode::kRate;
    for (const auto& [loc, cell] : InLocationOrder(series.compliance, locations_.size())) {
      walk.Other(entry(loc), *cell, compliance_at);
      add(loc, CompareCompliance(*cell, compliance_at, mode), nullptr);
    }
  }
  if (!series.score.empty()) {
    const PolicyAt score_at(now, catalog.score);
    for (const auto& [loc, cell] : InLocationOrder(series.score, locations_.size())) {
      walk.Other(entry(loc), *cell, score_at);
      add(loc, CompareScore(*cell, score_at), nullptr);
    }
  }
  walk.Finish(series.key);

  FallBackToChain(catalog.thresholds.min_group, &groups);
  if (series.key.family == v1::FAMILY_WAIT && catalog.wait_sketch.hour_of_week) {
    BucketByLocalHour(now, catalog.thresholds.min_group, &groups);
  }
  for (auto& [name, members] : groups) {
    if (members.empty()) continue;
    // Only the chain fallback and local-hour buckets leave them unsorted.
    auto by_location = [](const Member& a, const Member& b) { return a.location < b.location; };
    if (!std::is_sorted(members.begin(), members.end(), by_location)) {
      std::sort(members.begin(), members.end(), by_location);
    }
    GroupData g;
    g.group = name;
    g.members = std::move(members);
    g.fallback =
        std::any_of(g.members.begin(), g.members.end(), [](const Member& m) { return !m.judged; });
    data.groups.push_back(std::move(g));
  }
  if (series.key.family == v1::FAMILY_PRICE) {
    for (GroupData& g : data.groups) {
      g.moves = RolloutMoves(g.members, now, catalog.thresholds);
      RolloutHorizon(g.moves, catalog.thresholds, &horizon);
    }
  }
  data.until_ns = horizon.until_ns();
  return data;
}

namespace {

// A price group's structure: its levels, and the rollouts it is in the
// middle of (many locations moved from one level to one new level within
// the grace, or to a list price whose effective date is near). Members of
// a level or of a rollout are marked in *not_outliers (by location).
void PriceStructure(const SeriesKey& key, const std::vector<LocatedValue>& values, absl::Time now,
                    const Catalog& catalog, GroupData* group, SeriesStats* stats,
                    std::vector<bool>* not_outliers_out) {
  GroupData& g = *group;
  std::vector<bool>& not_outliers = *not_outliers_out;
  const Thresholds& th = catalog.thresholds;
  g.levels = FindLevels(values, stats->summary.median, stats->band.floor, th.min_level);
  // A chain-wide change rolling out: many locations moved from one
  // level to one new level within the grace, or to a promised list
  // price whose effective date is near.
  ForEachMove(g.moves, [&](auto first, auto last) {
    if (static_cast<uint64_t>(last - first) >= th.min_level) {
      g.rollout_values.push_back(static_cast<double>(first->from));
      g.rollout_values.push_back(static_cast<double>(first->to));
    }
  });
  for (const PricePromise* p : PricePromisesFor(key, catalog)) {
    if (p->effective != absl::InfinitePast() && p->effective + th.rollout_grace > now) {
      g.rollout_values.push_back(static_cast<double>(p->list_minor_units));
    }
  }
  auto in_rollout = [&](double v) { return NearAny(g.rollout_values, v, stats->band.floor); };
  std::vector<Level> kept;
  for (Level& level : g.levels.others) {
    for (uint32_t loc : level.members) not_outliers[loc] = true;
    if (in_rollout(level.value)) {
      stats->rollout = true;
    } else {
      kept.push_back(std::move(level));
    }
  }
  for (const GroupMember& m : g.members) {
    if (in_rollout(m.value.value) &&
        std::fabs(m.value.value - stats->summary.median) > stats->band.floor) {
      not_outliers[m.location] = true;
      stats->rollout = true;
    }
  }
  g.levels.others = std::move(kept);
  stats->main_level = {g.levels.main.value, g.levels.main.members.size()};
  for (const Level& level : g.levels.others) {
    stats->other_levels.push_back({level.value, level.members.size()});
  }
}

}  // namespace

void Engine::ComputeGroups(SeriesData* data, absl::Time now, const Catalog& catalog) const {
  const OutlierPolicy policy = PolicyFromCatalog(catalog);
  for (GroupData& g : data->groups) {
    PooledVector<LocatedValue> pooled_values(&scratch_->values);
    std::vector<LocatedValue>& values = *pooled_values;
    values.reserve(g.members.size());
    for (const Member& m : g.members) values.push_back({m.location, m.value.value});
    auto stats = std::make_shared<SeriesStats>();
    stats->key = data->key;
    stats->group = g.group;
    std::vector<LocatedValue> own;  // Without other groups' copies: only with them.
    if (g.fallback) {
      for (const Member& m : g.members) {
        if (m.judged) own.push_back({m.location, m.value.value});
      }
    }
    if (data->key.family == v1::FAMILY_WAIT) {  // In member order, as exposition sums them.
      const std::vector<LocatedValue>& mine = g.fallback ? own : values;
      stats->wait_values.reserve(mine.size());
      for (const LocatedValue& v : mine) stats->wait_values.push_back(v.value);
    }
    // Sorted once by value (then location): the summary and the levels
    // then find them in order and sort nothing again.
    SortByValueThenLocation(&values);
    stats->summary = SummarizeGroup(values);
    stats->own = g.fallback ? SummarizeGroup(own) : stats->summary;
    stats->band = ExpectedBand(data->key.family, stats->summary, policy);
    // Members are sorted by location: the last bounds them.
    std::vector<bool> not_outliers(g.members.empty() ? 0 : g.members.back().location + 1);
    if (data->key.family == v1::FAMILY_PRICE) {
      PriceStructure(data->key, values, now, catalog, &g, stats.get(), &not_outliers);
    }
    if (g.assessed.capacity() == 0) g.assessed = scratch_->assessed.Take();
    g.assessed.clear();
    g.assessed.reserve(g.members.size());
    std::vector<std::pair<OutlierResult, const std::string*>> outliers;
    for (const Member& m : g.members) {
      Assessment a = AssessValue(data->key.family, m.value.value, stats->summary, stats->band,
                                 policy, m.value.samples);
      if (not_outliers[m.location] || !m.judged) {
        a = Assessment{a.deviation, 0, 0, false, a.direction};
      }
      if (a.outlier) {
        const double median = stats->summary.median;
        outliers.push_back({OutlierResult{m.location, m.value.value, a.z,
                                          median != 0 ? std::fabs(a.deviation) / std::fabs(median)
                                                      : std::fabs(a.deviation),
                                          a.direction},
                            m.name});
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
    if (data->key.family == v1::FAMILY_PRICE && data->key.kind != v1::PROMO) {
      Horizon h(now);
      IrregularHorizon(g, now, catalog.thresholds, &h);
      data->until_ns = std::min(data->until_ns, h.until_ns());
    }
  }
}

bool Engine::RecomputeSeries(const SeriesFilter& wanted, uint8_t clears,
                             const std::function<void(SeriesData&)>& visit,
                             const std::function<void(size_t)>& slots) {
  absl::MutexLock recompute_lock(&recompute_mu_);
  const absl::Time now = options_.clock();
  auto snapshot = std::make_shared<Snapshot>();
  std::vector<uint32_t> todo;
  std::shared_ptr<const Catalog> catalog;
  std::unique_ptr<MemberNames> names;
  {
    absl::MutexLock lock(&mu_);
    RefreshCatalogLocked();
    catalog = catalog_;
    recomputed_at_ns_ = std::max(recomputed_at_ns_, absl::ToUnixNanos(now));
    for (uint32_t i = 0; i < series_.size(); ++i) {
      if (series_[i].live && wanted(i, series_[i], absl::ToUnixNanos(now))) todo.push_back(i);
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
    snapshot->series_held = series_index_.size();
    snapshot->streams_held = streams_.size() + retired_.size();
    std::vector<std::string> by_location;
    if (!todo.empty()) by_location.reserve(locations_.size());
    snapshot->location_states.reserve(locations_.size());
    for (const Location& l : locations_) {
      if (!todo.empty()) by_location.push_back(l.live ? l.state.location : std::string());
      if (!l.live) continue;
      snapshot->location_states.push_back(l.state);
      if (l.state.last_report != absl::InfinitePast()) ++snapshot->locations;
    }
    names = std::make_unique<MemberNames>(std::move(by_location));
  }
  if (slots) slots(published_.size());
  // Each thread takes the next series; the ingest lock is held only to
  // copy it. A stop is noticed between series.
  std::atomic<size_t> next{0};
  std::atomic<bool> abandoned{false};
  auto work = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(recompute_mu_) {
    for (size_t i = next++; i < todo.size(); i = next++) {
      if (abandon_.load(std::memory_order_relaxed)) {
        abandoned = true;
        return;
      }
      RecomputeOne(todo[i], now, *catalog, clears, names.get(), visit);
    }
  };
  const size_t n_threads =
      std::min(todo.size(), static_cast<size_t>(std::max(1, options_.evaluation_threads)));
  std::vector<std::thread> threads;  // Beside this one.
  for (size_t t = 1; t < n_threads; ++t) {
    try {
      if (options_.before_helper_start) options_.before_helper_start();
      threads.emplace_back(work);
    } catch (const std::system_error& e) {
      // Out of threads (a unit's TasksMax, RLIMIT_NPROC): fewer do it all.
      spdlog::warn("recomputing on {} threads, not {}: {}", t, n_threads, e.what());
      break;
    }
  }
  work();
  for (std::thread& t : threads) t.join();
  if (abandoned) return false;
  size_t published = 0;
  for (const auto& groups : published_) published += groups.size();
  snapshot->series.reserve(published);
  for (const auto& groups : published_) {
    bool compared = true;
    uint64_t n = 0;
    for (const auto& s : groups) {
      snapshot->series.push_back(s);
      compared = compared && s->summary.n >= catalog->thresholds.min_group;
      n += s->own.n;
    }
    if (!compared) snapshot->uncompared.push_back({snapshot->series.size() - 1, n});
    snapshot->uncompared_series += !compared;
  }
  std::sort(snapshot->location_states.begin(), snapshot->location_states.end(),
            [](const LocationState& a, const LocationState& b) { return a.location < b.location; });
  snapshot->computed_at = now;
  snapshot->catalog = catalog;
  Publish(std::move(snapshot));
  return true;
}

void Engine::RecomputeOne(uint32_t index, absl::Time now, const Catalog& catalog, uint8_t clears,
                          MemberNames* names, const std::function<void(SeriesData&)>& visit) {
  if (options_.before_series) options_.before_series();
  SeriesData data;
  {
    // Shared: the threads of one recomputation copy their series at once,
    // each writing only its own series' flags; ingest waits for them.
    absl::ReaderMutexLock lock(&mu_);
    const StripesShared stripes(this);
    Series& series = series_[index];
    series.dirty &= static_cast<uint8_t>(~clears);
    data = CollectLocked(index, now, catalog, names, &scratch_->members);
    series.stats_until_ns = data.until_ns;
  }
  ComputeGroups(&data, now, catalog);
  std::vector<std::shared_ptr<const SeriesStats>> groups;
  for (const GroupData& g : data.groups) groups.push_back(g.stats);
  published_[index] = std::move(groups);
  if (visit) visit(data);
  for (GroupData& g : data.groups) {
    scratch_->members.Give(std::move(g.members));
    scratch_->assessed.Give(std::move(g.assessed));
  }
}

void Engine::Publish(std::shared_ptr<Snapshot> snapshot) {
  absl::MutexLock lock(&snapshot_mu_);
  if (snapshot->findings == nullptr || snapshot->findings->evaluated_at == absl::InfinitePast()) {
    snapshot->findings = snapshot_->findings;
  }
  snapshot_ = std::move(snapshot);
}

void Engine::Recompute() {
  RecomputeSeries(
      [](uint32_t, const Series& s, int64_t now_ns) {
        return (s.dirty & Series::kStats) != 0 || now_ns >= s.stats_until_ns;
      },
      Series::kStats, nullptr);
}

namespace {

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
  std::vector<const SplitCandidate*> splits;  // Into the series outcomes.
  absl::flat_hash_map<uint32_t, std::pair<uint64_t, uint64_t>> kept_broken;
  absl::flat_hash_map<uint32_t, double> deposits, withdrawals;
  PriceDropList price_drops;
  std::vector<PromiseStanding> promises;
};

void Engine::Evaluate() {
  absl::MutexLock eval_lock(&eval_mu_);
  const absl::Time now = options_.clock();
  std::shared_ptr<const Catalog> catalog_ptr;
  std::vector<LocationState> states;
  std::vector<const LocationEntry*> entries;
  LateDrops late;
  {
    absl::MutexLock recompute_lock(&recompute_mu_);
    absl::MutexLock lock(&mu_);
    RefreshCatalogLocked();
    // A snapshot being captured names locations and series by slot: what
    // retention would free waits for the next evaluation.
    if (!CaptureRunningLocked()) ForgetLocked(now, *catalog_);
    RefreshCatalogLocked();  // A dropped location's agent labels went.
    {
      absl::MutexLock late_lock(&late_mu_);
      late = TakeLateDropsLocked();
    }
    catalog_ptr = catalog_;
    // A slot retention freed stays in place with an empty name: indices
    // are location indices.
    states.reserve(locations_.size());
    entries.reserve(locations_.size());
    for (const Location& l : locations_) {
      states.push_back(l.state);
      entries.push_back(l.entry);
    }
  }
  const Catalog& catalog = *catalog_ptr;
  const Thresholds& th = catalog.thresholds;
  tracker_.set_policy(th.persistence, th.hysteresis);
  Evaluation ev(now, catalog);
  ev.price_drops = PriceDropList(drop_source_, ++drop_revision_);

  // Stopping: this evaluation saw only part of the chain, so it opens,
  // closes and deposits nothing; its late drops wait for the next one.
  if (!EvaluateSeriesOutcomes(catalog_ptr, late, &ev)) {
    absl::MutexLock lock(&mu_);
    absl::MutexLock late_lock(&late_mu_);
    for (auto& [index, drops] : late) {
      auto& kept = late_drops_[index];
      kept.insert(kept.end(), drops.begin(), drops.end());
    }
    return;
  }

  ZoneConditions(ev.splits, th, &ev.conditions);
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
  {
    absl::MutexLock trend(&trend_mu_);
    for (size_t i = 0; i < states.size(); ++i) {
      const uint32_t loc = static_cast<uint32_t>(i);
      names.push_back(states[i].location);
      if (states[i].location.empty()) continue;  // A freed slot.
      TrustAccount& account = trust_[loc];
      account.DecayTo(now, catalog.trust.half_life);
      if (auto it = ev.deposits.find(loc); it != ev.deposits.end()) {
        account.Deposit(it->second * days);
      }
      if (auto it = ev.withdrawals.find(loc); it != ev.withdrawals.end()) {
        account.Withdraw(it->second * days);
      }
      trust_trend_[loc].Record(now, account.balance(), account.score());
    }
  }
  PublishFindings(now, th.persistence, names, ev.kept_broken, std::move(ev.price_drops),
                  std::move(ev.promises));
}

bool Engine::EvaluateSeriesOutcomes(const std::shared_ptr<const Catalog>& catalog,
                                    const LateDrops& late, Evaluation* ev) {
  if (outcomes_catalog_ != catalog) {  // Another catalog: nothing computed before holds.
    outcomes_.clear();
    outcomes_catalog_ = catalog;
  }
  const bool all = !options_.incremental;
  auto wanted = [&](uint32_t i, const Series& s,
                    int64_t now_ns) ABSL_EXCLUSIVE_LOCKS_REQUIRED(eval_mu_) {
    if (all || i >= outcomes_.size() || late.contains(i)) return true;
    const SeriesOutcome& o = outcomes_[i];
    return o.until_ns == 0 || now_ns >= o.until_ns || (s.dirty & Series::kFindings) != 0;
  };
  std::vector<std::pair<uint32_t, PriceDropList::Part>> late_drops;
  absl::Mutex late_mu;  // Series are visited on several threads at once.
  const uint64_t revision = ev->price_drops.revision();
  const bool completed = RecomputeSeries(
      wanted, Series::kStats | Series::kFindings,
      [&](SeriesData& data) ABSL_EXCLUSIVE_LOCKS_REQUIRED(eval_mu_) {
        // Each series' outcome is its own: written by the one thread
        // visiting it, in a slot sized before any visit.
        SeriesOutcome& o = outcomes_[data.index];
        PriceDropList::Part before = std::move(o.price_drops);
        o = SeriesOutcome();
        EvaluateSeries(data, *ev, &o);
        o.price_drops = PriceDropsOf(data, data.drops, before.get(), revision);
        o.until_ns = data.until_ns;
        // Not part of what is kept: published from this evaluation on
        // (late_published_, below).
        if (auto it = late.find(data.index); it != late.end()) {
          PriceDropList::Part part = PriceDropsOf(data, it->second, nullptr, revision);
          absl::MutexLock lock(&late_mu);
          late_drops.emplace_back(data.index, std::move(part));
        }
      },
      [&](size_t slots) ABSL_EXCLUSIVE_LOCKS_REQUIRED(eval_mu_) {
        if (outcomes_.size() < slots) outcomes_.resize(slots);
      });
  if (!completed) return false;
  // In series order, as a full recomputation adds them; room made once
  // (grown by doubling, each evaluation's lists left a trail of freed
  // buffers in the heap). Not for the conditions: most outcomes' are weak
  // and not copied (Merge), and room for them all cost more than it saved
  // (tests/bench/RESULTS.md).
  size_t splits = 0, promises = 0;
  for (const SeriesOutcome& o : outcomes_) {
    splits += o.splits.size();
    promises += o.promises.size();
  }
  ev->splits.reserve(ev->splits.size() + splits);
  ev->promises.reserve(ev->promises.size() + promises);
  for (uint32_t i = 0; i < outcomes_.size(); ++i) Merge(outcomes_[i], tracker_, ev);
  // Late drops are published for rollout_grace after the evaluation that
  // found them, at its revision: a recorder that skipped it still sees
  // them, one that recorded it skips them.
  std::sort(late_drops.begin(), late_drops.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& [index, part] : late_drops) {
    if (part != nullptr)
      late_published_.push_back({std::move(part), ev->now + ev->th.rollout_grace});
  }
  late_published_.erase(std::remove_if(late_published_.begin(), late_published_.end(),
                                       [&](const auto& l) { return l.second < ev->now; }),
                        late_published_.end());
  for (const auto& [part, until] : late_published_) ev->price_drops.Add(part, absl::InfinitePast());
  return true;
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
                       absl::FormatTime("%Y-%m-%d", last, absl::UTCTimeZone()), ", expected every ",
                       absl::FormatDuration(judging->expected_every),
                       ": overdue, no longer judged"),
          age, absl::ToDoubleSeconds(judging->expected_every), 0,
          absl::ToDoubleSeconds(judging->expected_every), 0, 1);
      out->push_back(std::move(c));
    }
  }
}

void Engine::EvaluateSeries(const SeriesData& data, const Evaluation& evaluation,
                            SeriesOutcome* out) {
  const Evaluation* ev = &evaluation;
  const SeriesKey& key = data.key;
  const Thresholds& th = ev->th;
  const std::string series_name = SeriesName(key);
  const WaitPromise* wait_promise =
      key.family == v1::FAMILY_WAIT ? WaitPromiseFor(key.key, ev->catalog) : nullptr;
  const CheckPromise* check_promise =
      key.family == v1::FAMILY_COMPLIANCE ? CheckPromiseFor(key.key, ev->catalog) : nullptr;
  const std::vector<const PricePromise*> price_promises = PricePromisesFor(key, ev->catalog);

  // Nor for a compliance key judged per inspection (a judging rule): its
  // values step with each rare result, which drift bins would read as a
  // trend.
  const bool judged_key =
      key.family == v1::FAMILY_COMPLIANCE && ev->catalog.JudgingFor(key.key) != nullptr;
  const std::vector<const Exception*> exceptions = ExceptionsFor(key, ev->now, ev->catalog);
  PooledVector<Pending> pooled_pending(&scratch_->pending);
  PooledVector<WeightedReason> pooled_reasons(&scratch_->reasons);
  std::vector<Pending>& pending = *pooled_pending;
  std::vector<WeightedReason>& reasons = *pooled_reasons;  // Every pending's, in order.
  PromiseTally promise_tally;
  for (const GroupData& g : data.groups) {
    const bool comparable = g.members.size() >= th.min_group;
    const std::string group_id = absl::StrCat(series_name, "|", g.group);
    // Drift of the group's dispersion is not for prices: their changes are
    // steps, which irregular change covers. The fallback's spread mixes
    // declared groups: their own drift and splits are found in them.
    GroupDrift* gd = nullptr;
    if (key.family != v1::FAMILY_PRICE && comparable && !g.fallback && !judged_key) {
      GroupDrift* state;
      {
        absl::MutexLock lock(&drift_mu_);
        state = &group_drift_[group_id];  // A node: stays where it is.
      }
      gd = state;
      if (std::optional<Condition> c = GroupDriftCondition(
              key, group_id, g, ev->drift_bin, ev->drift, th.z_threshold, ev->weak, state)) {
        out->conditions.push_back(std::move(*c));
      }
    }
    // Split: consistent deviating levels (prices).
    if (comparable && !g.fallback && !g.levels.others.empty()) {
      out->splits.push_back(SplitCondition(key, group_id, g));
    }

    const bool irregular_read =
        key.family == v1::FAMILY_PRICE && key.kind != v1::PROMO && comparable;
    const IrregularClock irregular_clock(ev->now, th);
    const uint64_t changed = irregular_read ? ChangedInIrregularWindow(g, irregular_clock) : 0;
    for (size_t i = 0; i < g.members.size(); ++i) {
      const Member& m = g.members[i];
      if (!m.judged || Excepted(*m.name, exceptions)) continue;
      // A Pending (and the name's copy) only for what is kept (below).
      const size_t first_reason = reasons.size();
      const bool outlier = OutlierReason(key, g, i, ev->weak, &reasons, /*detail=*/false);
      std::optional<PromiseVerdict> promise = PromiseVerdictFor(
          key, m.entry, m.value, price_promises, wait_promise, check_promise, ev->now, ev->catalog);
      if (promise.has_value()) {
        auto& tally = promise_tally[promise->id];
        ++tally.first;
        if (promise->strength >= 1) ++tally.second;
        if (promise->strength >= ev->weak) {
          reasons.emplace_back(promise->strength, std::move(promise->reason));
        }
      }
      if (irregular_read) {
        IrregularChangeReason(key, g, i, changed, irregular_clock, th, &reasons);
      }
      if (gd != nullptr && gd->baseline.frozen && gd->scale > 0) {
        if (std::optional<WeightedReason> r = CellDriftReason(
                key, g, i, gd->scale, ev->drift_bin, ev->drift, ev->weak, &gd->cells[m.location])) {
          reasons.push_back(std::move(*r));
        }
      }
      const bool promised = promise.has_value() && !promise->id.empty();
      if (reasons.size() == first_reason && !promised) continue;
      Pending& p = pending.emplace_back();
      p.location = m.location;
      p.name = *m.name;
      p.group = &g;
      p.first_reason = first_reason;
      p.end_reason = reasons.size();
      p.critical_failure = m.value.critical_failure;
      p.evidence_ns = m.value.evidence_ns;
      p.member = i;
      p.outlier = outlier;
      if (promise.has_value()) {
        p.promise_id = std::move(promise->id);
        p.promise = std::move(promise->promise);
        p.promise_broken = promise->strength >= 1;
        p.promise_critical = promise->critical;
      }
    }
  }

  const absl::flat_hash_set<std::string> unkeepable =
      UnkeepableConditions(key, series_name, promise_tally, th, &out->conditions);
  for (Pending& p : pending) {
    LocationCondition(key, series_name, unkeepable, ev->catalog.trust, tracker_, &p, &reasons, out);
  }
}

void Engine::Merge(const SeriesOutcome& o, const FindingTracker& tracker, Evaluation* ev) {
  // Weak conditions (hysteresis) matter to the tracker only when it tracks
  // them, and then without their finding: most are neither copied nor kept.
  for (const Condition& c : o.conditions) {
    if (FindingTracker::Holds(c.strength)) {
      ev->conditions.push_back(c);
    } else if (tracker.Tracks(c.id)) {
      ev->conditions.push_back(Condition{c.id, c.strength, {}});
    }
  }
  // Pointed to, not copied: a zone gathers most of them and drops them.
  for (const SplitCandidate& s : o.splits) ev->splits.push_back(&s);
  for (const auto& [loc, kept] : o.kept) {
    auto& kb = ev->kept_broken[loc];
    ++(kept ? kb.first : kb.second);
  }
  for (const auto& [loc, amount] : o.deposits) ev->deposits[loc] += amount;
  for (const auto& [loc, amount] : o.withdrawals) ev->withdrawals[loc] += amount;
  // The outcome's drops were within the grace when it was computed; those
  // that have left it since are not published (a full recomputation would
  // not collect them).
  if (o.price_drops != nullptr) ev->price_drops.Add(o.price_drops, ev->now - ev->th.rollout_grace);
  ev->promises.insert(ev->promises.end(), o.promises.begin(), o.promises.end());
}

PriceDropList::Part Engine::PriceDropsOf(const SeriesData& data,
                                         const std::vector<std::pair<uint32_t, PriceChange>>& drops,
                                         const std::vector<PriceDrop>* before, uint64_t revision) {
  if (drops.empty()) return nullptr;
  // What the series' last outcome held, by location and event time.
  absl::flat_hash_map<std::pair<absl::string_view, int64_t>, const PriceDrop*> held;
  if (before != nullptr) {
    held.reserve(before->size());
    for (const PriceDrop& d : *before) held.try_emplace({d.location, absl::ToUnixNanos(d.at)}, &d);
  }
  auto out = std::make_shared<std::vector<PriceDrop>>();
  // Kept until the series is next recomputed (an hour, say), each time a
  // few drops longer or shorter: sized by class (memory.h).
  out->reserve(SizeClass(drops.size()));
  for (const auto& [loc, change] : drops) {
    for (const GroupData& g : data.groups) {
      const Member* m = FindMember(g, loc);
      if (m == nullptr || !m->judged) continue;
      PriceDrop& d = out->emplace_back();
      d.location = *m->name;
      d.series = data.key;
      d.from = change.from;
      d.to = change.to;
      d.at = absl::FromUnixNanos(change.at_ns);
      d.rollout = NearAny(g.rollout_values, static_cast<double>(change.to), g.stats->band.floor);
      d.revision = revision;
      if (auto it = held.find(std::pair<absl::string_view, int64_t>(d.location, change.at_ns));
          it != held.end()) {
        const PriceDrop& b = *it->second;
        if (b.series == d.series && b.from == d.from && b.to == d.to && b.rollout == d.rollout) {
          d.revision = b.revision;  // Unchanged: published as it is before.
        }
      }
      break;
    }
  }
  if (out->empty()) return nullptr;
  return out;
}

void Engine::LocationCondition(const SeriesKey& key, const std::string& series_name,
                               const absl::flat_hash_set<std::string>& unkeepable,
                               const TrustPolicy& trust, const FindingTracker& tracker, Pending* p,
                               std::vector<WeightedReason>* pool, SeriesOutcome* out) {
  const bool promise_counts = !p->promise_id.empty() && !unkeepable.contains(p->promise_id);
  if (promise_counts) {
    out->kept.push_back({p->location, !p->promise_broken});
    if (p->promise_broken) {
      out->withdrawals.push_back({p->location, trust.withdrawal});
    } else {
      out->deposits.push_back({p->location, trust.deposit});
    }
  }
  if (p->outlier) out->withdrawals.push_back({p->location, trust.withdrawal});
  if (!p->promise_id.empty()) {
    out->promises.push_back({p->name, key, std::move(p->promise), !p->promise_broken});
  }
  auto counts = [&](const WeightedReason& r) {
    return r.second.kind() != v1::BROKEN_PROMISE || promise_counts;
  };
  Condition c;
  bool any = false;
  for (size_t i = p->first_reason; i < p->end_reason; ++i) {
    if (!counts((*pool)[i])) continue;
    any = true;
    c.strength = std::max(c.strength, (*pool)[i].first);
  }
  if (!any) return;
  c.id = absl::StrCat("loc|", p->name, "|", series_name);
  // Weak: the tracker reads no finding of it, and only if it tracks the
  // condition already. Only this series makes a condition of this id, and
  // the tracker takes up only conditions that hold: one it does not track
  // now it cannot track in an evaluation that reuses this outcome.
  if (!FindingTracker::Holds(c.strength)) {
    if (tracker.Tracks(c.id)) out->conditions.push_back(std::move(c));
    return;
  }
  std::vector<WeightedReason> reasons;
  for (size_t i = p->first_reason; i < p->end_reason; ++i) {
    if (counts((*pool)[i])) reasons.push_back(std::move((*pool)[i]));
  }
  for (auto& [strength, reason] : reasons) {  // Left out while it might not be shown.
    if (reason.kind() == v1::OUTLIER) reason.set_detail(OutlierDetail(key, *p->group, p->member));
  }
  std::sort(reasons.begin(), reasons.end(), [](const auto& a, const auto& b) {
    const bool ha = a.first >= 1, hb = b.first >= 1;
    if (ha != hb) return ha;
    return KindRank(a.second.kind()) > KindRank(b.second.kind());
  });
  v1::Finding& f = c.finding;
  f.set_location(p->name);
  SeriesToProto(key, f.mutable_series());
  f.set_group(p->group->group);
  f.set_group_size(p->group->members.size());
  f.set_kind(reasons.front().second.kind());
  if (p->evidence_ns != 0) ToTimestamp(p->evidence_ns, f.mutable_evidence_at());
  bool only_drift = true;
  f.set_severity(LocationSeverity(key.family, reasons, p->group->stats->band.floor,
                                  p->promise_critical, p->critical_failure, &only_drift));
  for (auto& [strength, reason] : reasons) *f.add_reasons() = std::move(reason);
  f.set_audience(only_drift ? "region" : "store");
  out->conditions.push_back(std::move(c));
}

PriceDropList::PriceDropList(std::vector<PriceDrop> drops, uint64_t source, uint64_t revision)
    : source_(source), revision_(revision) {
  if (!drops.empty()) {
    Add(std::make_shared<const std::vector<PriceDrop>>(std::move(drops)), absl::InfinitePast());
  }
}

uint64_t PriceDropList::NewSource() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

void PriceDropList::Add(Part part, absl::Time since) {
  if (part != nullptr && !part->empty()) parts_.push_back(Held{std::move(part), since});
}

size_t PriceDropList::size() const {
  size_t n = 0;
  ForEach([&](const PriceDrop&) { ++n; });
  return n;
}

std::vector<PriceDrop> PriceDropList::Sorted() const {
  std::vector<const PriceDrop*> order;
  ForEach([&](const PriceDrop& d) { order.push_back(&d); });
  std::stable_sort(order.begin(), order.end(), [](const PriceDrop* a, const PriceDrop* b) {
    return a->location < b->location;
  });
  std::vector<PriceDrop> out;
  out.reserve(order.size());
  for (const PriceDrop* d : order) out.push_back(*d);
  return out;
}

void Engine::PublishFindings(
    absl::Time evaluated_at, int persistence, const std::vector<std::string>& names,
    const absl::flat_hash_map<uint32_t, std::pair<uint64_t, uint64_t>>& kept_broken,
    PriceDropList price_drops, std::vector<PromiseStanding> promises) {
  persistence = std::max(1, persistence);
  auto view = std::make_shared<FindingsView>();
  view->evaluated_at = evaluated_at;
  view->price_drops = std::move(price_drops);
  view->promises = std::move(promises);
  std::stable_sort(
      view->promises.begin(), view->promises.end(),
      [](const PromiseStanding& a, const PromiseStanding& b) { return a.location < b.location; });
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
    if (names[i].empty()) continue;  // A slot retention freed.
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
  MemberNames names;  // One series: each member's name copied.
  SeriesData data;
  std::shared_ptr<const Catalog> catalog;
  // Observed-at and samples per location, read with the values.
  absl::flat_hash_map<uint32_t, int64_t> observed_at;
  {
    absl::ReaderMutexLock lock(&mu_);
    const StripesShared stripes(this);
    catalog = catalog_;
    auto it = series_index_.find(key);
    if (it == series_index_.end()) {
      return absl::NotFoundError(absl::StrCat("no location reports ", SeriesName(key)));
    }
    data = CollectLocked(it->second, now, *catalog, &names);
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
      return *a->name < *b->name;
    });
    for (const Member* m : members) {
      v1::LocationValue* v = detail->add_values();
      v->set_location(*m->name);
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
  absl::ReaderMutexLock lock(&mu_);
  const StripesShared stripes(this);
  auto it = location_index_.find(location);
  if (it == location_index_.end()) return out;
  const Catalog& catalog = *catalog_;
  for (uint32_t i : SeriesOfLocked(it->second)) {
    const Series& s = series_[i];
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
  std::optional<uint32_t> index;
  {
    absl::ReaderMutexLock lock(&mu_);
    const StripesShared stripes(this);
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
      index = loc;
      ToTimestamp(locations_[loc].state.last_report, response.mutable_last_report());
      for (uint32_t i : SeriesOfLocked(loc)) {
        const Series& s = series_[i];
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
  if (index.has_value()) {
    absl::MutexLock lock(&trend_mu_);
    if (auto it = trust_trend_.find(*index); it != trust_trend_.end()) {
      for (const TrustTrend::Day& d : it->second.Days(now)) {
        v1::TrustDay* day = response.add_trust_trend();
        ToTimestamp(TrustTrend::StartOf(d.day), day->mutable_day());
        day->set_balance(d.balance);
        day->set_score(d.score);
      }
    }
  }
  for (const v1::Finding& f : snap->findings->active) {
    if (f.location() == location ||
        std::find(f.locations().begin(), f.locations().end(), location) != f.locations().end()) {
      *response.add_findings() = f;
    }
  }
  return response;
}

Engine::LateDrops Engine::TakeLateDropsLocked() {
  LateDrops taken;
  for (auto& [index, drops] : late_drops_) {
    if (index >= series_.size() || !series_[index].live) continue;
    std::vector<std::pair<uint32_t, PriceChange>> kept;
    for (const auto& drop : drops) {
      if (drop.first < locations_.size() && locations_[drop.first].live) kept.push_back(drop);
    }
    std::stable_sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) {
      return std::pair(a.first, a.second.at_ns) < std::pair(b.first, b.second.at_ns);
    });
    if (!kept.empty()) taken[index] = std::move(kept);
  }
  late_drops_.clear();
  return taken;
}

}  // namespace constance::collector
