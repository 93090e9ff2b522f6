// A synthetic chain's price exports, built like a real case, for the replay
// acceptance test and benchmark.
//
// One file per store and day, named like a store system names them
// (`Supermarket 269_Prices_22.01.2026_7.15h.csv`: the store and the time
// are only there; SyntheticAgentYaml's name_regex reads them), Windows-1250 text with
// item names in Croatian ('č', 'ž'), ';' delimited with a decimal comma.
// Each store's file comes at its own time of the morning. What the chain
// holds, on purpose:
//   - an undeclared price zone (40% of the stores) lists `zone_keys` at a
//     clearly lower level and `near_keys` one cent lower (within the
//     floor: no finding);
//   - one store (`overcharger`) lists `overcharged_key` far above the rest;
//   - on day 2, `rollout_keys` change chain-wide (each store at its file's
//     time), and `convergence_store`, which alone listed
//     `convergence_key` on day 1, moves it to the price every other store
//     lists for the first time that day;
//   - `uncataloged` is missing from the catalog SyntheticCatalogYaml writes.
// With `plain` set, none of that: every store lists the same prices (for
// benchmarks over many days).
//
// Thread-compatible; writes files only under `dir`.
#ifndef CONSTANCE_TESTS_INTEGRATION_SYNTHETIC_CHAIN_H_
#define CONSTANCE_TESTS_INTEGRATION_SYNTHETIC_CHAIN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/civil_time.h"

namespace constance::testing {

struct SyntheticChainOptions {
  int stores = 120;
  int items = 200;
  int days = 2;
  absl::CivilDay first_day = absl::CivilDay(2026, 1, 22);
  bool plain = false;
  // From this day (0-based) on, the overcharger lists the item at the
  // chain's price again; 0: never.
  int corrected_on_day = 0;
};

struct SyntheticChain {
  std::vector<std::string> locations;       // Location ids, e.g. supermarket-269.
  std::vector<std::string> zone_locations;  // The undeclared zone's members.
  std::vector<std::string> zone_keys;
  std::vector<std::string> near_keys;
  std::string overcharger;
  std::string overcharged_key;
  std::vector<std::string> rollout_keys;
  std::string convergence_store;
  std::string convergence_key;
  std::string uncataloged;
  uint64_t rows = 0;
  uint64_t files = 0;
};

// Writes the exports into `dir` (which must exist).
absl::StatusOr<SyntheticChain> WriteSyntheticChain(const std::string& dir,
                                                   const SyntheticChainOptions& options);

// An agent.yaml whose drop_directory mapping reads those files.
std::string SyntheticAgentYaml();

// How a catalog declares the zone a replay suggests: not at all; as a peer
// group on label `zone` given to the zone's members only (`south`: the
// others fall back to the whole chain); or given to every store (`rest`
// for the others).
enum class ZoneDeclaration { kNone, kZoneMembers, kEveryStore };

// A catalog declaring every location but `uncataloged`, and the zone as
// `zone` says.
std::string SyntheticCatalogYaml(const SyntheticChain& chain, ZoneDeclaration zone);

}  // namespace constance::testing

#endif  // CONSTANCE_TESTS_INTEGRATION_SYNTHETIC_CHAIN_H_
