// Three-way price integrity: the shelf, POS and list price of one item at
// one moment, turned into observations the collector can compare.
//
// A PriceCheck becomes up to three price observations (kinds SHELF, POS,
// LIST; each only when given) and, when both shelf and POS are given, a
// compliance check on key `<item>.price_match`: passed when the POS charges
// what the shelf displays, failed otherwise, and critical when the POS
// charges more (overcharge: the customer pays more than displayed). An
// undercharge fails without being critical. The collector thus counts
// mismatches per store and compares pass rates across stores, and a single
// overcharge fails the location for that item outright.
//
// Example:
//   absl::StatusOr<PriceCheck> check = ParsePriceCheckJson(R"({"item":"sku-1",
//       "currency":"EUR","shelf":"4.49","pos":"4.59"})");
//   absl::StatusOr<std::vector<v1::Observation>> obs =
//       PriceCheckObservations(*check, absl::Now(), Limits{});
//
// Pure functions; thread-safe.
#ifndef CONSTANCE_AGENT_PRICE_CHECK_H_
#define CONSTANCE_AGENT_PRICE_CHECK_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "constance/v1/observation.pb.h"
#include "constance/validate.h"

namespace constance::agent {

struct PriceCheck {
  std::string item;
  std::string currency;
  // Minor units of `currency` (450 for 450 JPY, 449 for 4.49 EUR); unset
  // when that price was not read.
  std::optional<int64_t> shelf, pos, list;
  // Unset (InfinitePast): when the agent receives it.
  absl::Time observed_at = absl::InfinitePast();
  // Optional idempotency id; the observations get `<id>/shelf`, `<id>/pos`,
  // `<id>/list` and `<id>/match`.
  std::string id;
};

// The key of the shelf-vs-POS check of `item`.
std::string PriceMatchKey(absl::string_view item);

// One JSON object: {"item":..., "currency":"EUR", "shelf":"4.49",
// "pos":4.59, "list":"4.49", "observed_at":"RFC 3339", "id":...}; prices as
// decimal strings or JSON numbers in the currency's decimals ("450" for JPY,
// "1.250" for KWD; read by ParseMoney). InvalidArgument naming the field.
absl::StatusOr<PriceCheck> ParsePriceCheckJson(absl::string_view object);

// The observations of `check`, validated against `limits` with `now` as the
// clock (and as observed_at when unset). InvalidArgument naming the field
// when no price is given or one is invalid.
absl::StatusOr<std::vector<v1::Observation>> PriceCheckObservations(const PriceCheck& check,
                                                                    absl::Time now,
                                                                    const Limits& limits);

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_PRICE_CHECK_H_
