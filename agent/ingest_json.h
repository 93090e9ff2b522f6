// The JSON side of the agent's local ingest, kept apart from the HTTP server
// so it can be tested without one.
//
// A request body is one JSON object or an array of them. The array is
// framed with nlohmann_json and each item is mapped to a v1::Observation
// with protobuf's JSON mapping, then validated, so one bad item is refused
// with its index and reason while the others are accepted.
//
// Example:
//   absl::StatusOr<ParsedObservations> parsed = ParseObservations(body, absl::Now(), limits);
//   if (!parsed.ok()) return 400;                  // not JSON, or not objects
//   spool.Append(std::move(parsed->accepted));
//   std::string answer = RenderIngestAnswer(n, parsed->rejected);
//
// Pure functions; thread-safe.
#ifndef CONSTANCE_AGENT_INGEST_JSON_H_
#define CONSTANCE_AGENT_INGEST_JSON_H_

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "constance/v1/observation.pb.h"
#include "constance/validate.h"

namespace constance::agent {

// Why the item at `index` of a request (0 for a lone object) was refused.
struct ItemRejection {
  size_t index = 0;
  std::string reason;
};

struct ParsedObservations {
  // Valid items in request order, observed_at set (items without one are
  // stamped with the receive time).
  std::vector<v1::Observation> accepted;
  std::vector<ItemRejection> rejected;
  // Request items accepted (one item may give several observations, or none).
  size_t items_accepted = 0;
};

// Maps one request item (the JSON text of one object) to what it adds to
// `*out`; an error refuses that item alone, with its message as the reason.
using ItemMapper =
    std::function<absl::Status(absl::string_view item, std::vector<v1::Observation>* out)>;

// Frames `body` (one JSON object or an array of them) and maps each item
// with `map_item`, so one bad item does not refuse the others. Errors as
// ParseObservations.
absl::StatusOr<ParsedObservations> ParseItems(absl::string_view body, const ItemMapper& map_item);

// Parses `body`. InvalidArgument (with the JSON parser's reason) when the
// body is not JSON or is neither an object nor an array; everything
// item-level is reported per item in `rejected`. `now` is the receive time:
// the clock for event-time bounds and the stamp for items without
// observed_at.
absl::StatusOr<ParsedObservations> ParseObservations(absl::string_view body, absl::Time now,
                                                     const Limits& limits);

// {"accepted":N,"rejected":[{"index":I,"reason":"..."},...]}
std::string RenderIngestAnswer(size_t accepted, const std::vector<ItemRejection>& rejected);

// {"error":"..."}: a request refused as a whole.
std::string RenderIngestError(absl::string_view error);

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_INGEST_JSON_H_
