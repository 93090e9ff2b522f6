// The catalog: what the chain promises and what the collector expects.
//
// Loaded from the collector's YAML file (see deploy/collector/catalog.yaml
// for every key with its default). It declares the expected locations with
// their labels and calendars, the peer groups (locations that must be alike
// for a key, e.g. a price zone = region), promises (HQ list prices, "p%
// served within N s", required checks), approved exceptions, and every
// threshold the engine uses: every default in docs/design.md, "Findings", is a key here; a
// catalog file may be empty, which means "the defaults, any location".
//
//   absl::StatusOr<Catalog> c = LoadCatalog("/etc/constance/catalog.yaml");
//   if (!c.ok()) die(c.status());   // "catalog.yaml:12: locations[3].timezone: ..."
//
// Validation errors name the file, the line and the field. Unknown keys are
// errors (a typo must never silently fall back to a default).
//
// A Catalog is a plain value: immutable once loaded, safe to share between
// threads through a shared_ptr<const Catalog>.
#ifndef CONSTANCE_COLLECTOR_CATALOG_H_
#define CONSTANCE_COLLECTOR_CATALOG_H_

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "constance/v1/observation.pb.h"

namespace constance::collector {

// Per-family parameters. Defaults differ per family: see FamilyDefaults.
struct FamilyPolicy {
  // A deviation must exceed max(floor_ratio * |median|, floor_absolute) to
  // count. Price: 1% and 1 minor unit; wait: 10%; compliance: 0.05 (five
  // points of pass rate); score: 5%.
  double floor_ratio = 0;
  double floor_absolute = 0;
  // A cell not refreshed within this drops out of the statistics.
  absl::Duration ttl = absl::Hours(24 * 30);
  // Samples older than `window` (event time) leave the comparable value;
  // they are kept in fixed bins of `bin`. Unused for prices.
  absl::Duration window = absl::Hours(1);
  absl::Duration bin = absl::Minutes(15);
  // A cell with fewer samples in its window is not compared.
  uint64_t min_samples = 1;
};

// Wait cells: which quantile is compared across locations, and the
// sketch's relative accuracy.
struct WaitPolicy {
  double compared_quantile = 0.5;   // p50 by default; 0.9 compares the tail.
  double relative_accuracy = 0.01;  // 1%.
  // Rush hours differ: when a peer group spans time zones, its locations
  // are compared within the same local hour-of-week (Tue 12h with Tue 12h)
  // once at least two such buckets hold min_group of them each.
  bool hour_of_week = true;
};

struct DriftPolicy {
  absl::Duration bin = absl::Minutes(5);
  double ewma_lambda = 0.2;
  double ewma_limit = 3;   // L, in baseline sigmas.
  double cusum_k = 0.5;    // Allowance, in baseline sigmas.
  double cusum_h = 5;      // Decision interval, in baseline sigmas.
  int baseline_bins = 12;  // Calm bins that freeze the baseline scale.
};

struct TrustPolicy {
  double deposit = 1;     // Per promise per day kept (pro rata between evaluations).
  double withdrawal = 5;  // Per broken promise or outlier per day.
  absl::Duration half_life = absl::Hours(24 * 7);
};

// Thresholds of the findings (docs/design.md, "Findings").
struct Thresholds {
  double z_threshold = 3.5;
  uint64_t min_group = 5;      // Fewer reporting locations: no findings.
  uint64_t min_level = 3;      // Locations sharing a level to form a split.
  int persistence = 2;         // Evaluations before opening / closing.
  double hysteresis = 0.2;     // Clear by 20% of the threshold to close.
  uint64_t zone_min_keys = 5;  // Same locations split on this many keys: a zone.
  absl::Duration rollout_grace = absl::Hours(24);
  double unkeepable_share = 0.5;  // Share of locations breaking a promise.
  absl::Duration irregular_window = absl::Hours(48);
  // A change is judged irregular only once it is this old, so the first
  // movers of a chain-wide change are not flagged before the others follow.
  absl::Duration irregular_settle = absl::Hours(1);
  double irregular_peer_share = 0.10;
  int flip_changes = 3;
  absl::Duration flip_window = absl::Hours(24 * 7);
  uint64_t finding_cap = 10'000;                 // Active finding series on /metrics.
  absl::Duration location_ttl = absl::Hours(1);  // Silent after this while open.
  absl::Duration restart_grace = absl::Minutes(10);
  absl::Duration stats_interval = absl::Seconds(1);
  absl::Duration evaluation_interval = absl::Minutes(1);
  // Retention (docs/design.md, "Retention"): a cell not refreshed for its
  // family's ttl plus `retention` is freed at the next evaluation (a
  // compliance key judged with a cadence: only with its location), and a
  // series left without cells is removed. A location neither reporting nor
  // heart-beating for `location_retention` past the point it counts as
  // silent (its cadence plus location_ttl; in all at least the collector's
  // --max_lateness plus --max_future_skew) is dropped with its drift state
  // and trust balance.
  absl::Duration retention = absl::Hours(24 * 7);
  absl::Duration location_retention = absl::Hours(24 * 30);
};

// A half-open interval of absolute time.
struct Interval {
  absl::Time from = absl::InfinitePast();
  absl::Time to = absl::InfiniteFuture();
  std::string reason;
  bool Contains(absl::Time t) const { return from <= t && t < to; }
};

// Weekly opening hours in the location's local time. Each day holds
// [open, close) minute ranges since local midnight; close may exceed 1440
// for a night that ends after midnight. `always_open` when no hours are
// declared.
struct OpeningHours {
  bool always_open = true;
  std::array<std::vector<std::pair<int, int>>, 7> days;  // 0 = Monday.
};

struct LocationEntry {
  std::string id;
  std::map<std::string, std::string> labels;  // brand, region, district, format, ...
  std::string timezone = "UTC";               // IANA name.
  absl::TimeZone tz = absl::UTCTimeZone();
  OpeningHours hours;
  std::vector<Interval> closures;     // Holidays, refits: not expected to report.
  std::vector<Interval> maintenance;  // Maintenance windows: same.
  absl::Time opened = absl::InfinitePast();
  bool closed = false;  // Closed for good: never silent, never compared.
  // How often new data is expected (daily exports: 24h); zero: the agent's
  // own heartbeat says (data_cadence), else continuously.
  absl::Duration cadence = absl::ZeroDuration();
  // Known from its agent's heartbeat labels only (not in the catalog file):
  // grouped by those labels, never silent, not counted as declared.
  bool from_agent = false;
  int line = 0;  // Where it was declared, for messages.
  // The public board (`constance publish`): the name customers know it by
  // (default: the id), and whether it has a page (opt-in).
  std::string name;
  bool publish = false;
  // Its peer group under each rule of the catalog's peer_groups (same
  // order): an index into that rule's Catalog::peer_group_names. Filled by
  // Catalog::Index().
  std::vector<uint32_t> groups;
};

// Locations that must be alike: those sharing the value of `label`, for
// the families and keys listed (empty = all). A key pattern is exact or
// ends in '*' (prefix).
struct PeerGroupRule {
  std::string name;
  std::string label;
  std::vector<v1::Family> families;
  std::vector<std::string> keys;
  int line = 0;
};

// The group of the locations compared all together: every location of a
// series without a peer-group rule, and those a rule's label is missing on.
inline constexpr char kChainGroup[] = "chain";
// The group `rule` puts `entry` in: "<rule name>=<its label value>", else
// the chain's.
std::string PeerGroupOf(const PeerGroupRule& rule, const LocationEntry& entry);

// HQ's list price for an item, optionally only where the location's labels
// match `where` (a price zone), from `effective` on.
struct PricePromise {
  std::string key;
  std::string currency;
  v1::PriceKind kind = v1::SHELF;
  int64_t list_minor_units = 0;
  std::map<std::string, std::string> where;
  absl::Time effective = absl::InfinitePast();
  int line = 0;
  bool publish = false;  // Shown on the public board's pages (opt-in).
};

// "share of customers served within `within_seconds`" for a service.
struct WaitPromise {
  std::string key;
  double within_seconds = 0;
  double share = 0.9;
  int line = 0;
  bool publish = false;  // Shown on the public board: the record and the live waits.
};

// A check every location must pass; a critical one fails the location
// outright when failed once in the window.
struct CheckPromise {
  std::string key;
  bool critical = false;
  double min_pass_rate = 1.0;
  int line = 0;
  bool publish = false;  // Shown on the public board's pages (opt-in).
};

// How a compliance key's locations are judged (catalog `judging:`):
//   rate    the share of checks passed over the family's window (the
//           default);
//   latest  the most recent result decides: the checks of the newest bin
//           (the latest inspection or complete checklist), so a passed
//           re-inspection closes what the failed one opened.
// `expected_every` (e.g. 365d for a yearly inspection) is the key's
// cadence: a result older than it no longer counts (the key's TTL), the
// rate window spans at least one cadence, and a location whose newest
// result is older is stale for that key. Zero: the family's TTL and window.
enum class JudgingMode { kRate, kLatest };
struct KeyJudging {
  std::string key;  // A key, or a prefix ending in '*'.
  JudgingMode mode = JudgingMode::kRate;
  absl::Duration expected_every = absl::ZeroDuration();
  int line = 0;
};

// Whether `key` matches `pattern`: equal, or `pattern` ends in '*' and
// `key` starts with what precedes it. Peer groups and judging rules match
// keys with it.
bool KeyPatternMatches(absl::string_view pattern, absl::string_view key);

// An approved deviation: silences findings for (location, family, key)
// until it expires. Owner and reason are shown with what it silences.
struct Exception {
  std::string location;
  v1::Family family = v1::FAMILY_UNSPECIFIED;
  std::string key;
  std::string owner;
  std::string reason;
  absl::Time expires = absl::InfiniteFuture();
  int line = 0;
};

struct Catalog {
  std::string path;  // The file it came from ("" for defaults).
  // Unknown locations are accepted and compared (true) or rejected (false).
  bool auto_register = true;
  Thresholds thresholds;
  FamilyPolicy price, wait, compliance, score;
  WaitPolicy wait_sketch;
  DriftPolicy drift;
  TrustPolicy trust;
  std::vector<LocationEntry> locations;
  std::vector<PeerGroupRule> peer_groups;
  std::vector<PricePromise> price_promises;
  std::vector<WaitPromise> wait_promises;
  std::vector<CheckPromise> check_promises;
  std::vector<Exception> exceptions;
  std::vector<KeyJudging> judging;  // Compliance keys; the first match applies.

  // By id, into `locations`. Filled by the loader (and by Index()).
  absl::flat_hash_map<std::string, size_t> location_index;
  // By key, into `price_promises` and `exceptions`, each key's in the
  // catalog's order; how many of each were indexed. Filled by Index().
  absl::flat_hash_map<std::string, std::vector<uint32_t>> price_promises_by_key, exceptions_by_key;
  size_t indexed_price_promises = 0, indexed_exceptions = 0;
  // By rule (peer_groups' order), the groups it makes (PeerGroupOf), the
  // chain's first. Filled by Index().
  std::vector<std::vector<std::string>> peer_group_names;

  // Rebuilds location_index, the lookups by key and each location's peer
  // groups; for catalogs built or changed in code (tests).
  void Index();
  // The price promises of series (key, currency, kind), in the catalog's
  // order: its list prices, chain-wide and per zone, dated or not. A
  // series reads them once per evaluation, a scrape once per series: a
  // chain lists a price for each of its items, so they are looked up by
  // key, never scanned (unless promises were added since Index()).
  std::vector<const PricePromise*> PricePromisesOf(absl::string_view key,
                                                   absl::string_view currency,
                                                   v1::PriceKind kind) const;
  // The exceptions of `key` in `family` (in force or not), in the
  // catalog's order; looked up as PricePromisesOf's are.
  std::vector<const Exception*> ExceptionsOf(v1::Family family, absl::string_view key) const;
  const LocationEntry* FindLocation(absl::string_view id) const;
  const FamilyPolicy& policy(v1::Family family) const;
  // The judging rule of compliance key `key` (the first that matches), or
  // null: judged by rate over the family's window.
  const KeyJudging* JudgingFor(absl::string_view key) const;
  // The compliance policy of `key`: the family's, with its rule's cadence
  // as TTL and at least as window (KeyJudging), and min_samples at most
  // the results one window holds at that cadence (at least 1).
  FamilyPolicy CompliancePolicy(absl::string_view key) const;
  // Whether `location` is expected to report at `t`: declared, not closed
  // for good, opened, inside its opening hours, outside closures and
  // maintenance windows. Unknown locations: false.
  bool ExpectedOpen(absl::string_view location, absl::Time t) const;
};

// The defaults of one family's policy (docs/design.md, "Collector: cells"); what both
// DefaultCatalog() and a catalog file that omits the family use. A
// default-constructed FamilyPolicy for FAMILY_UNSPECIFIED.
FamilyPolicy FamilyDefaults(v1::Family family);

// A catalog of defaults only (no file): any location, chain-wide groups.
Catalog DefaultCatalog();

// Parses catalog YAML; `filename` is used in messages only.
absl::StatusOr<Catalog> ParseCatalog(absl::string_view yaml, absl::string_view filename);

// Reads and parses a catalog file. NotFound names the path.
absl::StatusOr<Catalog> LoadCatalog(const std::string& path);

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_CATALOG_H_
