#include "collector/refusal.h"

#include "absl/strings/cord.h"

namespace constance::collector {
namespace {

// The payload's type URL: private to the collector, never sent on the wire
// (ToGrpcStatus keeps only the code and the message).
constexpr char kReasonType[] = "constance.collector/refusal";

}  // namespace

absl::Status Refusal(absl::Status status, absl::string_view reason) {
  status.SetPayload(kReasonType, absl::Cord(reason));
  return status;
}

std::string RefusalReason(const absl::Status& status) {
  const auto reason = status.GetPayload(kReasonType);
  return reason.has_value() ? std::string(*reason) : std::string(kRefusedInvalidBatch);
}

}  // namespace constance::collector
