// Views of a constance.v1.Batch in the bytes it arrived in.
//
// The collector's ingest path reads every observation once, to validate it
// and update a cell. Parsing a batch into protobuf messages first costs a
// price observation three arena messages and two copied strings, about
// 0.4 CPU s per million observations, a third of the collector's whole
// cost at 100k series. DecodeBatch instead reads the wire format into
// views of the received bytes, and only the encodings a v1 agent writes:
// each known field at most once, with its declared wire type and a
// one-byte tag, and ASCII strings (varints and lengths may be written
// longer than needed, as protobuf allows). Anything else (an unknown or
// repeated field, a non-ASCII string, a malformed encoding) makes it
// return false, and the caller parses with protobuf and views the message
// (ViewOf): whatever DecodeBatch accepts, protobuf accepts and reads the
// same, which the batch fuzzer checks on every input.
//
// Example:
//   constance::BatchView view;
//   v1::Batch parsed;
//   if (!constance::DecodeBatch(bytes, &view)) {
//     if (!parsed.ParseFromArray(bytes.data(), bytes.size())) return error;
//     view = constance::ViewOf(parsed);
//   }
//
// A view borrows: the bytes (or the message) it was made from must outlive
// it. Functions here are pure and thread-safe.
#ifndef CONSTANCE_BATCH_VIEW_H_
#define CONSTANCE_BATCH_VIEW_H_

#include <cstdint>
#include <vector>

#include "absl/strings/string_view.h"
#include "constance/v1/ingest.pb.h"
#include "constance/v1/observation.pb.h"

namespace constance {

// One Observation's fields. Only the members of the value that is set
// (`value`) mean anything; the others keep their defaults.
struct ObservationView {
  absl::string_view key;
  absl::string_view id;
  bool has_observed_at = false;
  int64_t observed_seconds = 0;
  int32_t observed_nanos = 0;
  v1::Observation::ValueCase value = v1::Observation::VALUE_NOT_SET;
  // kPrice.
  int64_t minor_units = 0;
  absl::string_view currency;
  int32_t kind = 0;  // A v1::PriceKind, possibly one this build does not know.
  // kWaitSeconds or kScore.
  double number = 0;
  // kCheck.
  bool passed = false;
  bool critical = false;

  bool operator==(const ObservationView& other) const;
  bool operator!=(const ObservationView& other) const { return !(*this == other); }
};

// One Batch's fields.
struct BatchView {
  absl::string_view location;
  uint64_t incarnation = 0;
  uint64_t first_sequence = 0;
  uint64_t skipped_from = 0;  // 0: no gap declared.
  std::vector<ObservationView> observations;

  bool operator==(const BatchView& other) const;
  bool operator!=(const BatchView& other) const { return !(*this == other); }
};

// Decodes the serialized Batch `bytes` into `*out` (replacing what it
// held), without copying: `*out` points into `bytes`. Returns false when
// `bytes` holds anything outside the encodings described above, or is not
// a Batch at all; `*out` is then unspecified and the caller parses with
// protobuf instead.
bool DecodeBatch(absl::string_view bytes, BatchView* out);

// The same for a serialized constance.v1.AgentMessage whose only field is
// its batch (what an agent sends): `*batch_bytes` is then the serialized
// batch, within `message`. False for anything else, a heartbeat
// included: the caller parses with protobuf.
bool DecodeAgentBatch(absl::string_view message, absl::string_view* batch_bytes,
                      BatchView* out);

// The view of a parsed message; it points into `obs` / `batch`.
ObservationView ViewOf(const v1::Observation& obs);
BatchView ViewOf(const v1::Batch& batch);

}  // namespace constance

#endif  // CONSTANCE_BATCH_VIEW_H_
