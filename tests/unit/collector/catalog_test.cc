// Tests of the catalog loader: values, every validation rule with its
// line and field, and the opening-hours calendar.
#include "collector/catalog.h"

#include <string>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace constance::collector {
namespace {

using ::testing::HasSubstr;

absl::Time At(const char* rfc3339) {
  absl::Time t;
  std::string err;
  EXPECT_TRUE(absl::ParseTime(absl::RFC3339_full, rfc3339, &t, &err)) << rfc3339 << ": " << err;
  return t;
}

auto Tie(const FamilyPolicy& p) {
  return std::tie(p.floor_ratio, p.floor_absolute, p.ttl, p.window, p.bin, p.min_samples);
}
auto Tie(const Thresholds& t) {
  return std::tie(t.z_threshold, t.min_group, t.min_level, t.persistence, t.hysteresis,
                  t.zone_min_keys, t.rollout_grace, t.unkeepable_share, t.irregular_window,
                  t.irregular_settle, t.irregular_peer_share, t.flip_changes, t.flip_window,
                  t.finding_cap, t.location_ttl, t.restart_grace, t.stats_interval,
                  t.evaluation_interval, t.retention, t.location_retention);
}
auto Tie(const DriftPolicy& d) {
  return std::tie(d.bin, d.ewma_lambda, d.ewma_limit, d.cusum_k, d.cusum_h, d.baseline_bins);
}
auto Tie(const TrustPolicy& t) { return std::tie(t.deposit, t.withdrawal, t.half_life); }

// The tunable parts of two catalogs are equal.
void ExpectSamePolicies(const Catalog& got, const Catalog& want) {
  EXPECT_EQ(got.auto_register, want.auto_register);
  EXPECT_TRUE(Tie(got.thresholds) == Tie(want.thresholds));
  EXPECT_TRUE(Tie(got.price) == Tie(want.price));
  EXPECT_TRUE(Tie(got.wait) == Tie(want.wait));
  EXPECT_TRUE(Tie(got.compliance) == Tie(want.compliance));
  EXPECT_TRUE(Tie(got.score) == Tie(want.score));
  EXPECT_EQ(got.wait_sketch.compared_quantile, want.wait_sketch.compared_quantile);
  EXPECT_EQ(got.wait_sketch.relative_accuracy, want.wait_sketch.relative_accuracy);
  EXPECT_TRUE(Tie(got.drift) == Tie(want.drift));
  EXPECT_TRUE(Tie(got.trust) == Tie(want.trust));
}

TEST(CatalogDefaultsTest, FamilyDefaultsAreDesignValues) {
  static const struct {
    v1::Family family;
    double floor_ratio, floor_absolute;
    absl::Duration ttl, window, bin;
    uint64_t min_samples;
  } kCases[] = {
      {v1::FAMILY_PRICE, 0.01, 1, absl::Hours(720), absl::Hours(1), absl::Minutes(15), 1},
      {v1::FAMILY_WAIT, 0.10, 0, absl::Hours(2), absl::Hours(1), absl::Minutes(15), 30},
      {v1::FAMILY_COMPLIANCE, 0, 0.05, absl::Hours(336), absl::Hours(168), absl::Hours(24), 5},
      {v1::FAMILY_SCORE, 0.05, 0, absl::Hours(2160), absl::Hours(720), absl::Hours(24), 1},
  };
  const Catalog c = DefaultCatalog();
  for (const auto& k : kCases) {
    SCOPED_TRACE(v1::Family_Name(k.family));
    const FamilyPolicy& p = c.policy(k.family);
    EXPECT_EQ(p.floor_ratio, k.floor_ratio);
    EXPECT_EQ(p.floor_absolute, k.floor_absolute);
    EXPECT_EQ(p.ttl, k.ttl);
    EXPECT_EQ(p.window, k.window);
    EXPECT_EQ(p.bin, k.bin);
    EXPECT_EQ(p.min_samples, k.min_samples);
    EXPECT_TRUE(Tie(p) == Tie(FamilyDefaults(k.family)));
  }
  EXPECT_EQ(c.wait_sketch.compared_quantile, 0.5);
  EXPECT_EQ(c.wait_sketch.relative_accuracy, 0.01);
  EXPECT_TRUE(c.auto_register);
  EXPECT_TRUE(c.locations.empty());
  EXPECT_EQ(c.path, "");
}

TEST(CatalogParseTest, EmptyFileGivesDefaults) {
  static const char* const kCases[] = {"", "{}", "# nothing yet\n", "thresholds:\nfamilies:\n"};
  for (const char* yaml : kCases) {
    SCOPED_TRACE(yaml);
    absl::StatusOr<Catalog> c = ParseCatalog(yaml, "empty.yaml");
    ASSERT_TRUE(c.ok()) << c.status();
    ExpectSamePolicies(*c, DefaultCatalog());
    EXPECT_TRUE(c->locations.empty());
    EXPECT_TRUE(c->peer_groups.empty());
    EXPECT_TRUE(c->exceptions.empty());
    EXPECT_EQ(c->path, "empty.yaml");
  }
}

// Every key set to a value other than its default; line numbers matter.
constexpr char kFull[] = R"(auto_register: false
thresholds:
  z_threshold: 4
  min_group: 6
  min_level: 4
  persistence: 3
  hysteresis: 0.25
  zone_min_keys: 7
  rollout_grace: 12h
  unkeepable_share: 0.6
  irregular_window: 24h
  irregular_settle: 30m
  irregular_peer_share: 0.2
  flip_changes: 4
  flip_window: 72h
  finding_cap: 500
  location_ttl: 30m
  restart_grace: 5m
  stats_interval: 2s
  evaluation_interval: 30s
  retention: 2d
  location_retention: 60d
families:
  price:      {floor_ratio: 0.02, floor_absolute: 2, ttl: 360h, min_samples: 2}
  wait:       {floor_ratio: 0.2, floor_absolute: 5, ttl: 1h, window: 30m, bin: 10m, min_samples: 20, compared_quantile: 0.9, relative_accuracy: 0.02}
  compliance: {floor_ratio: 0.01, floor_absolute: 0.1, ttl: 24h, window: 48h, bin: 12h, min_samples: 3}
  score:      {floor_ratio: 0.1, floor_absolute: 1, ttl: 48h, window: 24h, bin: 1h, min_samples: 2}
drift: {bin: 10m, ewma_lambda: 0.3, ewma_limit: 2.5, cusum_k: 1, cusum_h: 4, baseline_bins: 6}
trust: {deposit: 2, withdrawal: 10, half_life: 24h}
locations:
  - id: fr-paris-0042
    labels: {brand: acme, region: idf, district: paris-11, format: city}
    timezone: Europe/Paris
    hours: {mon: "08:00-21:00", tue: "08:00-21:00", wed: "08:00-21:00", thu: "08:00-21:00", fri: "08:00-12:00, 14:00-19:00,22:00-02:00", sat: "24h", sun: closed}
    closures: [{from: 2026-12-25, to: 2026-12-26, reason: Christmas}]
    maintenance: [{from: "2026-11-30T02:00:00Z", to: "2026-11-30T04:00:00Z"}]
    opened: 2019-03-01
    closed: false
  - id: fr-lyon-0007
    closed: true
    cadence: 24h
peer_groups:
  - {name: price-zone, label: region, families: [price, wait], keys: ["*", coffee-*, tea]}
promises:
  prices: [{key: coffee-250g, currency: EUR, kind: promo, list: "4.49", where: {region: idf}, effective: 2026-12-01}]
  waits:  [{key: checkout, within_seconds: 300, share: 0.8}]
  checks: [{key: fridge-temp, critical: true, min_pass_rate: 0.95}]
exceptions:
  - {location: fr-paris-0042, family: price, key: coffee-250g, owner: j.dupont, reason: "local supplier", expires: 2027-01-31}
)";

TEST(CatalogParseTest, FullCatalog) {
  absl::StatusOr<Catalog> parsed = ParseCatalog(kFull, "full.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const Catalog& c = *parsed;

  Catalog want = DefaultCatalog();
  want.auto_register = false;
  Thresholds& t = want.thresholds;
  t.z_threshold = 4;
  t.min_group = 6;
  t.min_level = 4;
  t.persistence = 3;
  t.hysteresis = 0.25;
  t.zone_min_keys = 7;
  t.rollout_grace = absl::Hours(12);
  t.unkeepable_share = 0.6;
  t.irregular_window = absl::Hours(24);
  t.irregular_settle = absl::Minutes(30);
  t.irregular_peer_share = 0.2;
  t.flip_changes = 4;
  t.flip_window = absl::Hours(72);
  t.finding_cap = 500;
  t.location_ttl = absl::Minutes(30);
  t.restart_grace = absl::Minutes(5);
  t.stats_interval = absl::Seconds(2);
  t.evaluation_interval = absl::Seconds(30);
  t.retention = absl::Hours(48);
  t.location_retention = absl::Hours(24 * 60);
  want.price = {0.02, 2, absl::Hours(360), absl::Hours(1), absl::Minutes(15), 2};
  want.wait = {0.2, 5, absl::Hours(1), absl::Minutes(30), absl::Minutes(10), 20};
  want.compliance = {0.01, 0.1, absl::Hours(24), absl::Hours(48), absl::Hours(12), 3};
  want.score = {0.1, 1, absl::Hours(48), absl::Hours(24), absl::Hours(1), 2};
  want.wait_sketch = {0.9, 0.02};
  want.drift = {absl::Minutes(10), 0.3, 2.5, 1, 4, 6};
  want.trust = {2, 10, absl::Hours(24)};
  ExpectSamePolicies(c, want);

  ASSERT_EQ(c.locations.size(), 2u);
  const LocationEntry* paris = c.FindLocation("fr-paris-0042");
  ASSERT_NE(paris, nullptr);
  EXPECT_EQ(paris->line, 31);
  EXPECT_EQ(paris->labels.at("district"), "paris-11");
  EXPECT_EQ(paris->labels.size(), 4u);
  EXPECT_EQ(paris->timezone, "Europe/Paris");
  EXPECT_EQ(paris->tz.name(), "Europe/Paris");
  EXPECT_FALSE(paris->hours.always_open);
  using Ranges = std::vector<std::pair<int, int>>;
  EXPECT_EQ(paris->hours.days[0], (Ranges{{480, 1260}}));
  EXPECT_EQ(paris->hours.days[4], (Ranges{{480, 720}, {840, 1140}, {1320, 1560}}));
  EXPECT_EQ(paris->hours.days[5], (Ranges{{0, 1440}}));
  EXPECT_TRUE(paris->hours.days[6].empty());
  ASSERT_EQ(paris->closures.size(), 1u);
  EXPECT_EQ(paris->closures[0].from, At("2026-12-25T00:00:00+01:00"));
  EXPECT_EQ(paris->closures[0].to, At("2026-12-26T00:00:00+01:00"));
  EXPECT_EQ(paris->closures[0].reason, "Christmas");
  ASSERT_EQ(paris->maintenance.size(), 1u);
  EXPECT_EQ(paris->maintenance[0].from, At("2026-11-30T02:00:00Z"));
  EXPECT_EQ(paris->maintenance[0].to, At("2026-11-30T04:00:00Z"));
  EXPECT_EQ(paris->opened, At("2019-03-01T00:00:00+01:00"));
  EXPECT_FALSE(paris->closed);

  const LocationEntry* lyon = c.FindLocation("fr-lyon-0007");
  ASSERT_NE(lyon, nullptr);
  EXPECT_TRUE(lyon->closed);
  EXPECT_EQ(lyon->cadence, absl::Hours(24));
  EXPECT_EQ(paris->cadence, absl::ZeroDuration());
  EXPECT_TRUE(lyon->hours.always_open);
  EXPECT_EQ(lyon->tz, absl::UTCTimeZone());
  EXPECT_EQ(c.FindLocation("fr-nice-0001"), nullptr);

  ASSERT_EQ(c.peer_groups.size(), 1u);
  EXPECT_EQ(c.peer_groups[0].name, "price-zone");
  EXPECT_EQ(c.peer_groups[0].label, "region");
  EXPECT_EQ(c.peer_groups[0].families,
            (std::vector<v1::Family>{v1::FAMILY_PRICE, v1::FAMILY_WAIT}));
  EXPECT_EQ(c.peer_groups[0].keys, (std::vector<std::string>{"*", "coffee-*", "tea"}));
  EXPECT_EQ(c.peer_groups[0].line, 43);

  ASSERT_EQ(c.price_promises.size(), 1u);
  const PricePromise& price = c.price_promises[0];
  EXPECT_EQ(price.key, "coffee-250g");
  EXPECT_EQ(price.currency, "EUR");
  EXPECT_EQ(price.kind, v1::PROMO);
  EXPECT_EQ(price.list_minor_units, 449);
  EXPECT_EQ(price.where, (std::map<std::string, std::string>{{"region", "idf"}}));
  EXPECT_EQ(price.effective, At("2026-12-01T00:00:00Z"));
  EXPECT_EQ(price.line, 45);
  ASSERT_EQ(c.wait_promises.size(), 1u);
  EXPECT_EQ(c.wait_promises[0].key, "checkout");
  EXPECT_EQ(c.wait_promises[0].within_seconds, 300);
  EXPECT_EQ(c.wait_promises[0].share, 0.8);
  ASSERT_EQ(c.check_promises.size(), 1u);
  EXPECT_EQ(c.check_promises[0].key, "fridge-temp");
  EXPECT_TRUE(c.check_promises[0].critical);
  EXPECT_EQ(c.check_promises[0].min_pass_rate, 0.95);

  ASSERT_EQ(c.exceptions.size(), 1u);
  const Exception& e = c.exceptions[0];
  EXPECT_EQ(e.location, "fr-paris-0042");
  EXPECT_EQ(e.family, v1::FAMILY_PRICE);
  EXPECT_EQ(e.key, "coffee-250g");
  EXPECT_EQ(e.owner, "j.dupont");
  EXPECT_EQ(e.reason, "local supplier");
  // A date is midnight where the excepted location is.
  EXPECT_EQ(e.expires, At("2027-01-31T00:00:00+01:00"));
  EXPECT_EQ(e.line, 49);
}

TEST(CatalogParseTest, ListPriceIsParsedAsDecimalText) {
  static const struct {
    const char* list;
    bool ok;
    int64_t minor_units;
  } kCases[] = {
      {"\"4.49\"", true, 449}, {"\"4.5\"", true, 450},    {"\"4\"", true, 400},
      {"4.35", true, 435},     {"\"0.07\"", true, 7},     {"\"999999.99\"", true, 99999999},
      {"\"4.499\"", false, 0}, {"\"4.\"", false, 0},      {"\".5\"", false, 0},
      {"\"-1\"", false, 0},    {"\"4,49\"", false, 0},    {"\"1e3\"", false, 0},
      {"\"\"", false, 0},      {"\"1000000\"", false, 0},
  };
  for (const auto& k : kCases) {
    SCOPED_TRACE(k.list);
    const std::string yaml =
        std::string("promises:\n  prices:\n    - key: a\n      currency: EUR\n") +
        "      list: " + k.list + "\n";
    absl::StatusOr<Catalog> c = ParseCatalog(yaml, "p.yaml");
    if (!k.ok) {
      ASSERT_FALSE(c.ok());
      EXPECT_THAT(c.status().message(), HasSubstr("p.yaml:5: promises.prices[0].list: "));
      continue;
    }
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->price_promises[0].list_minor_units, k.minor_units);
  }
}

TEST(CatalogParseTest, ValidationErrorsNameLineAndField) {
  static const struct {
    const char* name;
    const char* yaml;
    const char* want;  // Must appear in the message, after "t.yaml".
  } kCases[] = {
      // Syntax.
      {"syntax", "thresholds: {z_threshold: 3\nlocations: []\n",
       ":2: syntax error: end of map flow not found"},
      {"not a mapping", "- a\n- b\n", ":1: catalog: expected a mapping"},
      {"duplicate key", "trust: {}\nauto_register: true\ntrust: {}\n",
       ":3: trust: duplicate key (first at line 1)"},
      // Unknown keys, with the allowed ones.
      {"unknown top-level key", "auto_register: true\ntresholds: {}\n",
       ":2: tresholds: unknown key (allowed: auto_register, thresholds, families"},
      {"unknown threshold", "thresholds:\n  z_treshold: 3\n",
       ":2: thresholds.z_treshold: unknown key (allowed: z_threshold, min_group"},
      {"unknown family", "families:\n  prices: {}\n", ":2: families.prices: unknown key"},
      {"quantile outside wait", "families:\n  price: {compared_quantile: 0.5}\n",
       ":2: families.price.compared_quantile: unknown key"},
      {"unknown location key", "locations:\n  - id: a\n    hour: {}\n",
       ":3: locations[0].hour: unknown key (allowed: id, labels, timezone, hours"},
      {"unknown weekday", "locations:\n  - id: a\n    hours:\n      mond: 08:00-09:00\n",
       ":4: locations[0].hours.mond: unknown key (allowed: mon, tue"},
      {"unknown promise list", "promises:\n  price: []\n", ":2: promises.price: unknown key"},
      // Types and ranges.
      {"string for number", "thresholds:\n  z_threshold: high\n",
       ":2: thresholds.z_threshold: expected a number > 0, got 'high'"},
      {"quoted number", "thresholds:\n  z_threshold: \"3.5\"\n",
       ":2: thresholds.z_threshold: expected a number"},
      {"empty number", "thresholds:\n  z_threshold:\n  min_group: 5\n",
       ":2: thresholds.z_threshold: has no value"},
      {"list for number", "trust:\n  deposit: [1]\n", ":2: trust.deposit: expected a single value"},
      {"z_threshold zero", "thresholds: {z_threshold: 0}\n",
       ":1: thresholds.z_threshold: must be > 0, got 0"},
      {"min_group one", "\nthresholds:\n  min_group: 1\n",
       ":3: thresholds.min_group: must be >= 2, got 1"},
      {"min_group fraction", "thresholds:\n  min_group: 2.5\n",
       ":2: thresholds.min_group: expected a whole number"},
      {"persistence zero", "thresholds:\n  persistence: 0\n",
       ":2: thresholds.persistence: must be >= 1"},
      {"negative duration", "thresholds:\n  rollout_grace: -1h\n",
       ":2: thresholds.rollout_grace: must not be negative"},
      {"zero location_retention", "thresholds:\n  location_retention: 0d\n",
       ":2: thresholds.location_retention: must be positive"},
      {"negative retention", "thresholds:\n  retention: -1h\n",
       ":2: thresholds.retention: must not be negative"},
      {"retention not a duration", "thresholds:\n  retention: a week\n",
       ":2: thresholds.retention: 'a week' is not a duration"},
      {"zero ttl", "families:\n  wait:\n    ttl: 0s\n", ":3: families.wait.ttl: must be positive"},
      {"bad duration", "families:\n  wait:\n    ttl: 2 hours\n",
       ":3: families.wait.ttl: '2 hours' is not a duration"},
      {"days are not a unit", "trust: {half_life: 7d}\n", ":1: trust.half_life: '7d' is not"},
      {"ratio above one", "thresholds:\n  hysteresis: 1.5\n",
       ":2: thresholds.hysteresis: must be in [0, 1], got 1.5"},
      {"negative floor ratio", "families:\n  price:\n    floor_ratio: -0.1\n",
       ":3: families.price.floor_ratio: must be in [0, 1]"},
      {"quantile one", "families:\n  wait: {compared_quantile: 1}\n",
       ":2: families.wait.compared_quantile: must be in (0, 1)"},
      {"quantile zero", "families:\n  wait: {compared_quantile: 0}\n",
       ":2: families.wait.compared_quantile: must be in (0, 1)"},
      {"accuracy half", "families:\n  wait: {relative_accuracy: 0.5}\n",
       ":2: families.wait.relative_accuracy: must be in (0, 0.5)"},
      {"accuracy zero", "families:\n  wait: {relative_accuracy: 0}\n",
       ":2: families.wait.relative_accuracy: must be in (0, 0.5)"},
      {"bin above window", "families:\n  score: {window: 1h, bin: 2h}\n",
       ":2: families.score.bin: must not exceed window (1h)"},
      {"bool", "auto_register: maybe\n", ":1: auto_register: expected true or false"},
      {"section not a mapping", "drift: 5m\n", ":1: drift: expected a mapping"},
      // Locations.
      {"missing id", "locations:\n  - timezone: UTC\n",
       ":2: locations[0].id: required (every location needs an id)"},
      {"bad id", "locations:\n  - id: fr-paris-0042\n  - id: Paris\n",
       ":3: locations[1].id: 'Paris': must start with a lower-case letter or digit"},
      {"duplicate id", "locations:\n  - id: a\n  - id: b\n\n  - id: a\n",
       ":5: locations[2].id: duplicate location id 'a' (first declared at line 2)"},
      {"unknown time zone",
       "locations:\n  - id: a\n  - id: b\n  - id: c\n    timezone: Europe/Pariss\n",
       ":5: locations[2].timezone: unknown time zone 'Europe/Pariss'"},
      {"locations not a list", "locations: {id: a}\n", ":1: locations: expected a list"},
      {"hours syntax", "locations:\n  - id: a\n    hours: {mon: 8h-21h}\n",
       ":3: locations[0].hours.mon: '8h-21h' is not a range like 08:00-21:00"},
      {"hours minutes", "locations:\n  - id: a\n    hours: {mon: \"08:60-21:00\"}\n",
       ":3: locations[0].hours.mon: '08:60-21:00' is not a range"},
      {"hours open 24:00", "locations:\n  - id: a\n    hours: {mon: \"24:00-02:00\"}\n",
       ":3: locations[0].hours.mon: '24:00-02:00' is not a range"},
      {"hours close equals open", "locations:\n  - id: a\n    hours:\n      tue: \"08:00-08:00\"\n",
       ":4: locations[0].hours.tue: '08:00-08:00': close must differ from open"},
      {"hours overlap",
       "locations:\n  - id: a\n    hours:\n      tue: \"08:00-12:00,11:00-19:00\"\n",
       ":4: locations[0].hours.tue: ranges of '08:00-12:00,11:00-19:00' overlap"},
      {"closure backwards",
       "locations:\n  - id: a\n    closures:\n      - {from: 2026-12-26, to: 2026-12-25}\n",
       ":4: locations[0].closures[0].to: must be after from"},
      {"closure empty",
       "locations:\n  - id: a\n    closures:\n      - from: 2026-12-25\n        to: 2026-12-25\n",
       ":5: locations[0].closures[0].to: must be after from"},
      {"closure bad date",
       "locations:\n  - id: a\n    closures: [{from: 2026-02-30, to: 2026-03-02}]\n",
       ":3: locations[0].closures[0].from: '2026-02-30' is not a date"},
      {"closure without end", "locations:\n  - id: a\n    closures: [{from: 2026-12-25}]\n",
       ":3: locations[0].closures[0].to: required"},
      {"maintenance backwards",
       "locations:\n  - id: a\n    maintenance:\n      - {from: \"2026-11-30T04:00:00Z\", to: "
       "\"2026-11-30T02:00:00Z\"}\n",
       ":4: locations[0].maintenance[0].to: must be after from"},
      {"opened not a date", "locations:\n  - id: a\n    opened: soon\n",
       ":3: locations[0].opened: 'soon' is not a date"},
      // Peer groups.
      {"peer group without label", "peer_groups:\n  - {name: zone}\n",
       ":2: peer_groups[0].label: required"},
      {"peer group without name", "peer_groups:\n  - {label: region}\n",
       ":2: peer_groups[0].name: required"},
      {"peer group empty name", "peer_groups:\n  - {name: \"\", label: region}\n",
       ":2: peer_groups[0].name: '': must not be empty"},
      {"duplicate peer group",
       "peer_groups:\n  - {name: zone, label: region}\n  - {name: zone, label: format}\n",
       ":3: peer_groups[1].name: duplicate peer group 'zone' (first declared at line 2)"},
      {"peer group family",
       "peer_groups:\n  - name: zone\n    label: region\n    families: [prices]\n",
       ":4: peer_groups[0].families[0]: 'prices': "},
      {"peer group key pattern", "peer_groups:\n  - {name: zone, label: region, keys: [\"a*b\"]}\n",
       ":2: peer_groups[0].keys[0]: 'a*b': character '*' not allowed"},
      // Promises.
      {"price bad key",
       "promises:\n  prices:\n    - {key: \"coffee 250g\", currency: EUR, list: 4}\n",
       ":3: promises.prices[0].key: 'coffee 250g': character ' ' not allowed"},
      {"price without currency", "promises:\n  prices:\n    - {key: coffee, list: 4}\n",
       ":3: promises.prices[0].currency: required"},
      {"price bad currency", "promises:\n  prices:\n    - {key: coffee, currency: eur, list: 4}\n",
       ":3: promises.prices[0].currency: 'eur': must be three upper-case letters"},
      {"price bad kind",
       "promises:\n  prices:\n    - {key: coffee, currency: EUR, list: 4, kind: sale}\n",
       ":3: promises.prices[0].kind: unknown kind 'sale' (allowed: shelf, pos, list, promo)"},
      {"price without list", "promises:\n  prices:\n    - {key: coffee, currency: EUR}\n",
       ":3: promises.prices[0].list: required"},
      {"wait share zero",
       "promises:\n  waits:\n    - {key: checkout, within_seconds: 300, share: 0}\n",
       ":3: promises.waits[0].share: must be in (0, 1]"},
      {"wait share above one",
       "promises:\n  waits:\n    - key: checkout\n      within_seconds: 300\n      share: 1.5\n",
       ":5: promises.waits[0].share: must be in (0, 1]"},
      {"wait within zero", "promises:\n  waits:\n    - {key: checkout, within_seconds: 0}\n",
       ":3: promises.waits[0].within_seconds: must be > 0"},
      {"wait within negative", "promises:\n  waits:\n    - {key: checkout, within_seconds: -5}\n",
       ":3: promises.waits[0].within_seconds: must be > 0"},
      {"wait bad key", "promises:\n  waits:\n    - {key: \"\", within_seconds: 60}\n",
       ":3: promises.waits[0].key: '': must not be empty"},
      {"check pass rate", "promises:\n  checks:\n    - {key: fridge, min_pass_rate: 2}\n",
       ":3: promises.checks[0].min_pass_rate: must be in [0, 1]"},
      // Exceptions.
      {"exception without expiry",
       "exceptions:\n  - {location: a, family: price, key: k, owner: me}\n",
       ":2: exceptions[0].expires: required (an approved deviation must expire)"},
      {"exception without owner",
       "exceptions:\n  - {location: a, family: price, key: k, expires: 2027-01-31}\n",
       ":2: exceptions[0].owner: required"},
      {"exception bad family",
       "exceptions:\n  - {location: a, family: prices, key: k, owner: me, expires: 2027-01-31}\n",
       ":2: exceptions[0].family: 'prices': "},
      {"exception bad location",
       "exceptions:\n  - {location: A, family: price, key: k, owner: me, expires: 2027-01-31}\n",
       ":2: exceptions[0].location: 'A': "},
      {"judging without key", "judging:\n  - {mode: latest}\n", ":2: judging[0].key: required"},
      {"judging bad mode", "judging:\n  - key: inspection\n    mode: newest\n",
       ":3: judging[0].mode: unknown mode 'newest' (allowed: rate, the share passed over the "
       "window; latest, the most recent result decides)"},
      {"judging bad cadence", "judging:\n  - key: inspection\n    expected_every: yearly\n",
       ":3: judging[0].expected_every: 'yearly' is not a duration (e.g. 90s, 1h30m, 168h, 365d)"},
      {"judging zero cadence", "judging:\n  - {key: inspection, expected_every: 0d}\n",
       ":2: judging[0].expected_every: must be positive"},
      {"judging bad pattern", "judging:\n  - {key: 'insp ection*'}\n", ":2: judging[0].key: "},
  };
  for (const auto& k : kCases) {
    SCOPED_TRACE(k.name);
    absl::StatusOr<Catalog> c = ParseCatalog(k.yaml, "t.yaml");
    ASSERT_FALSE(c.ok()) << k.yaml;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(std::string("t.yaml") + k.want));
  }
}

// Whatever the input, ParseCatalog returns a status (nothing throws).
TEST(CatalogParseTest, MalformedInputIsAnErrorNotAThrow) {
  static const char* const kCases[] = {
      "thresholds: [",
      "? [a, b]\n: c\n",
      "*undefined\n",
      "locations: &a [*a]\n",
      "locations:\n  - &l {id: a}\n  - *l\n",
      "families: {wait: {window: !!binary aGVsbG8=}}\n",
      "\"unterminated\n",
      "a: b: c\n",
  };
  for (const char* yaml : kCases) {
    SCOPED_TRACE(yaml);
    absl::StatusOr<Catalog> c = ParseCatalog(yaml, "t.yaml");
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("t.yaml:"));
  }
}

TEST(CatalogParseTest, ExceptionMayNameUndeclaredLocation) {
  absl::StatusOr<Catalog> c = ParseCatalog(
      "exceptions:\n  - {location: b, family: wait, key: k, owner: me, expires: 2027-01-31}\n",
      "t.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->exceptions[0].expires, At("2027-01-31T00:00:00Z"));  // UTC: b is not declared.
}

constexpr char kCalendar[] = R"(
locations:
  - id: shop
    timezone: Europe/Paris
    opened: 2019-03-01
    hours:
      mon: "08:00-21:00"
      fri: "08:00-12:00,22:00-02:00"
      sat: "09:00-20:00"
      sun: "09:00-12:00"
  - id: always
    timezone: Europe/Paris
    closures: [{from: 2026-12-25, to: 2026-12-26, reason: Christmas}]
    maintenance: [{from: "2026-11-30T02:00:00Z", to: "2026-11-30T04:00:00Z"}]
  - id: gone
    closed: true
)";

TEST(CatalogExpectedOpenTest, Calendar) {
  absl::StatusOr<Catalog> c = ParseCatalog(kCalendar, "calendar.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  static const struct {
    const char* name;
    const char* location;
    const char* at;
    bool open;
  } kCases[] = {
      // Monday 2026-12-21, 08:00-21:00 local (UTC+1).
      {"opening minute", "shop", "2026-12-21T08:00:00+01:00", true},
      {"before opening", "shop", "2026-12-21T07:59:59+01:00", false},
      {"last second", "shop", "2026-12-21T20:59:59+01:00", true},
      {"closing minute", "shop", "2026-12-21T21:00:00+01:00", false},
      {"opening minute seen in UTC", "shop", "2026-12-21T07:00:00Z", true},
      {"day not listed", "shop", "2026-12-22T10:00:00+01:00", false},
      // Friday 2026-12-18: a morning, then a night into Saturday.
      {"between ranges", "shop", "2026-12-18T13:00:00+01:00", false},
      {"night starts", "shop", "2026-12-18T22:00:00+01:00", true},
      {"night after midnight", "shop", "2026-12-19T01:00:00+01:00", true},
      {"night ends", "shop", "2026-12-19T02:00:00+01:00", false},
      {"saturday own hours", "shop", "2026-12-19T09:00:00+01:00", true},
      {"thursday night is not friday's", "shop", "2026-12-18T01:00:00+01:00", false},
      // Sunday 2026-03-29: Paris moves from UTC+1 to UTC+2 at 02:00.
      {"DST day opening", "shop", "2026-03-29T07:00:00Z", true},  // 09:00 CEST.
      {"DST day before opening", "shop", "2026-03-29T06:59:59Z", false},
      {"DST day closing", "shop", "2026-03-29T10:00:00Z", false},  // 12:00 CEST.
      {"DST back opening", "shop", "2026-10-25T08:00:00Z", true},  // 09:00 CET.
      {"DST back before opening", "shop", "2026-10-25T07:59:59Z", false},
      {"before opened", "shop", "2019-02-28T10:00:00+01:00", false},
      // A closure day is a local day.
      {"eve of closure", "always", "2026-12-24T22:59:59Z", true},
      {"closure starts", "always", "2026-12-24T23:00:00Z", false},
      {"closure last second", "always", "2026-12-25T22:59:59Z", false},
      {"closure over", "always", "2026-12-25T23:00:00Z", true},
      {"before maintenance", "always", "2026-11-30T01:59:59Z", true},
      {"maintenance starts", "always", "2026-11-30T02:00:00Z", false},
      {"maintenance last second", "always", "2026-11-30T03:59:59Z", false},
      {"maintenance over", "always", "2026-11-30T04:00:00Z", true},
      {"closed for good", "gone", "2026-12-21T12:00:00Z", false},
      {"unknown location", "nowhere", "2026-12-21T12:00:00Z", false},
  };
  for (const auto& k : kCases) {
    SCOPED_TRACE(k.name);
    EXPECT_EQ(c->ExpectedOpen(k.location, At(k.at)), k.open) << k.at;
  }
}

TEST(CatalogIndexTest, BuiltInCode) {
  Catalog c = DefaultCatalog();
  c.locations.push_back({});
  c.locations.back().id = "a";
  c.locations.push_back({});
  c.locations.back().id = "b";
  EXPECT_EQ(c.FindLocation("b"), nullptr);  // Not indexed yet.
  c.Index();
  ASSERT_NE(c.FindLocation("b"), nullptr);
  EXPECT_EQ(c.FindLocation("b")->id, "b");
  EXPECT_TRUE(c.ExpectedOpen("a", absl::Now()));  // No hours: always open.
}

// A series' list prices and exceptions are looked up by key: only the
// series' own (currency, kind, family), in the file's order, whether the
// catalog was loaded (indexed) or built in code after its Index().
TEST(CatalogIndexTest, PromisesAndExceptionsOfASeries) {
  absl::StatusOr<Catalog> c = ParseCatalog(R"(
promises:
  prices:
    - {key: tea, currency: EUR, list: "2.00", where: {region: north}}
    - {key: coffee, currency: EUR, list: "4.00"}
    - {key: tea, currency: EUR, list: "2.10"}
    - {key: tea, currency: USD, list: "2.50"}
    - {key: tea, currency: EUR, kind: promo, list: "1.50"}
    - {key: tea, currency: EUR, list: "2.20", effective: 2027-01-01}
exceptions:
  - {location: a, family: price, key: tea, owner: me, expires: 2027-01-31}
  - {location: b, family: wait, key: tea, owner: me, expires: 2027-01-31}
  - {location: c, family: price, key: coffee, owner: me, expires: 2027-01-31}
  - {location: d, family: price, key: tea, owner: me, expires: 2027-02-28}
)",
                                           "keys.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  auto lists = [](const std::vector<const PricePromise*>& promises) {
    std::vector<int64_t> out;
    for (const PricePromise* p : promises) out.push_back(p->list_minor_units);
    return out;
  };
  auto locations = [](const std::vector<const Exception*>& exceptions) {
    std::vector<std::string> out;
    for (const Exception* e : exceptions) out.push_back(e->location);
    return out;
  };
  for (bool in_code : {false, true}) {
    SCOPED_TRACE(in_code ? "built in code" : "loaded");
    Catalog built = DefaultCatalog();
    if (in_code) {  // Added one by one, indexed (or not) after each.
      for (size_t i = 0; i < c->price_promises.size(); ++i) {
        built.price_promises.push_back(c->price_promises[i]);
        if (i % 2 == 0) built.Index();
      }
      for (const Exception& e : c->exceptions) built.exceptions.push_back(e);
    }
    const Catalog& catalog = in_code ? built : *c;
    EXPECT_EQ(lists(catalog.PricePromisesOf("tea", "EUR", v1::SHELF)),
              (std::vector<int64_t>{200, 210, 220}));
    EXPECT_EQ(lists(catalog.PricePromisesOf("tea", "EUR", v1::PROMO)), (std::vector<int64_t>{150}));
    EXPECT_EQ(lists(catalog.PricePromisesOf("tea", "USD", v1::SHELF)), (std::vector<int64_t>{250}));
    EXPECT_EQ(lists(catalog.PricePromisesOf("coffee", "EUR", v1::SHELF)),
              (std::vector<int64_t>{400}));
    EXPECT_TRUE(catalog.PricePromisesOf("te", "EUR", v1::SHELF).empty());
    EXPECT_TRUE(catalog.PricePromisesOf("cake", "EUR", v1::SHELF).empty());
    EXPECT_EQ(locations(catalog.ExceptionsOf(v1::FAMILY_PRICE, "tea")),
              (std::vector<std::string>{"a", "d"}));
    EXPECT_EQ(locations(catalog.ExceptionsOf(v1::FAMILY_WAIT, "tea")),
              (std::vector<std::string>{"b"}));
    EXPECT_TRUE(catalog.ExceptionsOf(v1::FAMILY_COMPLIANCE, "tea").empty());
  }
}

// Each location's peer group under each rule is named once, when the
// catalog is indexed: evaluations read it by index.
TEST(CatalogIndexTest, PeerGroupsOfEachLocation) {
  absl::StatusOr<Catalog> c = ParseCatalog(R"(
peer_groups:
  - {name: zone, label: region}
  - {name: format, label: format}
locations:
  - {id: a, labels: {region: north, format: big}}
  - {id: b, labels: {region: south}}
  - {id: c, labels: {region: north, format: small}}
  - {id: d}
)",
                                           "groups.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->peer_group_names.size(), 2u);
  EXPECT_EQ(c->peer_group_names[0],
            (std::vector<std::string>{kChainGroup, "zone=north", "zone=south"}));
  EXPECT_EQ(c->peer_group_names[1],
            (std::vector<std::string>{kChainGroup, "format=big", "format=small"}));
  const std::vector<std::vector<uint32_t>> expected = {{1, 1}, {2, 0}, {1, 2}, {0, 0}};
  for (size_t i = 0; i < expected.size(); ++i) {
    const LocationEntry& l = c->locations[i];
    EXPECT_EQ(l.groups, expected[i]) << l.id;
    for (size_t r = 0; r < c->peer_groups.size(); ++r) {
      EXPECT_EQ(c->peer_group_names[r][l.groups[r]], PeerGroupOf(c->peer_groups[r], l)) << l.id;
    }
  }
}

TEST(CatalogLoadTest, DeployExampleParsesToDefaults) {
  const std::string path = std::string(CONSTANCE_SOURCE_DIR) + "/deploy/collector/catalog.yaml";
  absl::StatusOr<Catalog> c = LoadCatalog(path);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->path, path);
  // It lists every key with its default.
  ExpectSamePolicies(*c, DefaultCatalog());
}

TEST(CatalogLoadTest, MissingFileIsNotFound) {
  absl::StatusOr<Catalog> c = LoadCatalog("/nonexistent/catalog.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("/nonexistent/catalog.yaml"));
}

}  // namespace
}  // namespace constance::collector

namespace constance::collector {
namespace {

TEST(CatalogParseTest, JudgingPerKeyWithItsCadence) {
  absl::StatusOr<Catalog> c = ParseCatalog(
      "judging:\n"
      "  - {key: 'inspection*', mode: latest, expected_every: 365d}\n"
      "  - {key: fridge-temp, mode: rate}\n",
      "t.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->judging.size(), 2u);
  EXPECT_EQ(c->judging[0].line, 2);
  const KeyJudging* j = c->JudgingFor("inspection-food");
  ASSERT_NE(j, nullptr);
  EXPECT_EQ(j->mode, JudgingMode::kLatest);
  EXPECT_EQ(j->expected_every, absl::Hours(24 * 365));
  EXPECT_EQ(c->JudgingFor("fridge-temp")->mode, JudgingMode::kRate);
  EXPECT_EQ(c->JudgingFor("door-seal"), nullptr);
  // The cadence is the key's TTL and at least its window; others keep the family's.
  EXPECT_EQ(c->CompliancePolicy("inspection-food").ttl, absl::Hours(24 * 365));
  EXPECT_EQ(c->CompliancePolicy("inspection-food").window, absl::Hours(24 * 365));
  EXPECT_EQ(c->CompliancePolicy("door-seal").ttl, c->compliance.ttl);
  EXPECT_EQ(c->CompliancePolicy("fridge-temp").window, c->compliance.window);
}

// A key with a cadence is asked for no more results than one window holds
// at that cadence: a yearly inspection needs one, a daily check keeps the
// family's five (its 168h window holds seven).
TEST(CatalogParseTest, MinSamplesFollowAKeysCadence) {
  static const struct {
    const char* expected_every;
    uint64_t min_samples;
  } cases[] = {
      {"365d", 1}, {"30d", 1}, {"72h", 2}, {"24h", 5}, {"1h", 5},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.expected_every);
    absl::StatusOr<Catalog> c = ParseCatalog(
        absl::StrCat("judging:\n  - {key: inspection, expected_every: ", tc.expected_every, "}\n"),
        "t.yaml");
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->compliance.min_samples, 5u);
    EXPECT_EQ(c->CompliancePolicy("inspection").min_samples, tc.min_samples);
    EXPECT_EQ(c->CompliancePolicy("fridge-temp").min_samples, 5u);
  }
}

}  // namespace
}  // namespace constance::collector
