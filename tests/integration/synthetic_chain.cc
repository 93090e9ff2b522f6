#include "tests/integration/synthetic_chain.h"

#include <cmath>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace constance::testing {
namespace {

// Item names in Windows-1250: Č C8, č E8, Š 8A, š 9A, ž 9E, ć E6.
// clang-format off
const char* const kNames[] = {
    "\xC8okolada mlije\xE8na", "\x8A" "e\xE6" "er", "Ri\x9E" "a", "Sok od naran\xE8" "e",
    "Kruh bijeli",             "Ka\x9A" "a",       "Mlijeko", "Sir gauda",
    "Ulje suncokretovo",       "Bra\x9A" "no",
};
// clang-format on

constexpr int kZoneKeys = 30;       // Keys 0..29: the zone lists them 8% lower.
constexpr int kNearKeys = 4;        // Keys 30..33: the zone lists them 1 cent lower.
constexpr int kRolloutFirst = 100;  // Keys 100..111 change chain-wide on day 2.
constexpr int kRolloutKeys = 12;
constexpr int kOverchargedKey = 150;
constexpr int kOvercharger = 2;  // Store indexes.
constexpr int kConvergenceStore = 7;
constexpr int kUncataloged = 13;

std::string Key(int item) { return absl::StrFormat("art-%05d", item); }
int StoreNumber(int store) { return 101 + store; }
std::string Location(int store) { return absl::StrCat("supermarket-", StoreNumber(store)); }
bool InZone(int store) { return store % 5 == 0 || store % 5 == 1; }
int64_t Base(int item) { return 49 + (static_cast<int64_t>(item) * 7919) % 1950; }
int64_t Percent(int64_t cents, int percent) {
  return static_cast<int64_t>(std::llround(static_cast<double>(cents) * percent / 100.0));
}

// The price a store lists for an item on a day (0-based), or 0 for none.
int64_t Price(const SyntheticChainOptions& o, int store, int item, int day) {
  int64_t p = Base(item);
  if (o.plain) return p;
  const bool day2 = day >= 1;
  if (item == o.items - 1) {  // The convergence key: new chain-wide on day 2.
    if (!day2) return store == kConvergenceStore ? Percent(p, 120) : 0;
    return p;
  }
  if (item >= kRolloutFirst && item < kRolloutFirst + kRolloutKeys && day2) p = Percent(p, 105);
  if (InZone(store) && item < kZoneKeys) p = Percent(p, 92);
  if (InZone(store) && item >= kZoneKeys && item < kZoneKeys + kNearKeys) p -= 1;
  const bool corrected = o.corrected_on_day > 0 && day >= o.corrected_on_day;
  if (store == kOvercharger && item == kOverchargedKey && !corrected) p = Percent(p, 150);
  return p;
}

std::string Cents(int64_t cents) { return absl::StrFormat("%d,%02d", cents / 100, cents % 100); }

}  // namespace

absl::StatusOr<SyntheticChain> WriteSyntheticChain(const std::string& dir,
                                                   const SyntheticChainOptions& o) {
  SyntheticChain chain;
  for (int s = 0; s < o.stores; ++s) {
    chain.locations.push_back(Location(s));
    if (InZone(s)) chain.zone_locations.push_back(Location(s));
  }
  if (!o.plain) {
    for (int k = 0; k < kZoneKeys; ++k) chain.zone_keys.push_back(Key(k));
    for (int k = kZoneKeys; k < kZoneKeys + kNearKeys; ++k) chain.near_keys.push_back(Key(k));
    for (int k = kRolloutFirst; k < kRolloutFirst + kRolloutKeys; ++k) {
      chain.rollout_keys.push_back(Key(k));
    }
    chain.overcharger = Location(kOvercharger);
    chain.overcharged_key = Key(kOverchargedKey);
    chain.convergence_store = Location(kConvergenceStore);
    chain.convergence_key = Key(o.items - 1);
    chain.uncataloged = Location(kUncataloged);
  }
  std::string file;
  for (int day = 0; day < o.days; ++day) {
    const absl::CivilDay date = o.first_day + day;
    const std::string date_text =
        absl::StrFormat("%02d.%02d.%04d", date.day(), date.month(), static_cast<int>(date.year()));
    for (int s = 0; s < o.stores; ++s) {
      // Each store exports at its own time between 6:00 and 8:59.
      const int minute = 6 * 60 + (s * 37 + day * 11) % 180;
      const std::string name = absl::StrFormat("%s/Supermarket %d_Prices_%s_%d.%02dh.csv", dir,
                                               StoreNumber(s), date_text, minute / 60, minute % 60);
      // The store and the time are only in the file's name.
      file = "\x8Aifra;Naziv;Cijena\r\n";
      for (int item = 0; item < o.items; ++item) {
        const int64_t price = Price(o, s, item, day);
        if (price == 0) continue;
        absl::StrAppend(&file, Key(item), ";", kNames[item % 10], " ", item, ";", Cents(price),
                        "\r\n");
        ++chain.rows;
      }
      std::ofstream out(name, std::ios::binary);
      out << file;
      if (!out) return absl::InternalError(absl::StrCat("cannot write ", name));
      ++chain.files;
    }
  }
  return chain;
}

std::string SyntheticAgentYaml() {
  return R"(location: replay-test
collector: 127.0.0.1:7070
insecure: true
drop_directory:
  files:
    - pattern: "Supermarket *_Prices_*.csv"
      format: csv
      encoding: windows-1250
      delimiter: ";"
      decimal: ","
      records: price
      key_column: Šifra
      value_column: Cijena
      currency: EUR
      name_regex: '^Supermarket (?P<location>\d+)_Prices_(?P<observed_at>\d{2}\.\d{2}\.\d{4}_\d{1,2}\.\d{2})h\.csv$'
      name_time_format: "%d.%m.%Y_%H.%M"
      location_prefix: supermarket-
)";
}

std::string SyntheticCatalogYaml(const SyntheticChain& chain, ZoneDeclaration declaration) {
  std::string yaml = "locations:\n";
  for (const std::string& id : chain.locations) {
    if (id == chain.uncataloged) continue;
    bool zone = false;
    for (const std::string& z : chain.zone_locations) zone = zone || z == id;
    const char* label = "";
    if (declaration != ZoneDeclaration::kNone && zone) label = ", zone: south";
    if (declaration == ZoneDeclaration::kEveryStore && !zone) label = ", zone: rest";
    absl::StrAppend(&yaml, "  - {id: ", id, ", labels: {brand: super", label, "}}\n");
  }
  if (declaration != ZoneDeclaration::kNone) {
    absl::StrAppend(&yaml,
                    "peer_groups:\n  - {name: price-zone, label: zone, families: [price]}\n");
  }
  return yaml;
}

}  // namespace constance::testing
