// Why the collector refused a stream or a call, as a typed reason carried
// by the absl::Status that refuses it (a payload), never read back from
// the message text. The reasons are the `reason` label of
// constance_refusals_total, kept few so the label stays bounded.
#ifndef CONSTANCE_COLLECTOR_REFUSAL_H_
#define CONSTANCE_COLLECTOR_REFUSAL_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace constance::collector {

inline constexpr char kRefusedLocationMismatch[] = "location_mismatch";
inline constexpr char kRefusedNotALocation[] = "not_a_location";
inline constexpr char kRefusedNotAnOperator[] = "not_an_operator";
inline constexpr char kRefusedMaxStreams[] = "max_streams";
inline constexpr char kRefusedMaxLocations[] = "max_locations";
inline constexpr char kRefusedUnknownLocation[] = "unknown_location";
inline constexpr char kRefusedInvalidBatch[] = "invalid_message";
inline constexpr char kRefusedSequenceGap[] = "sequence_gap";

// `status` (not OK) tagged with `reason`, one of the kRefused* above.
absl::Status Refusal(absl::Status status, absl::string_view reason);

// The reason `status` was tagged with; kRefusedInvalidBatch when it
// carries none (a message that does not parse, a field out of range).
std::string RefusalReason(const absl::Status& status);

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_REFUSAL_H_
