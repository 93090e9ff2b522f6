#include "constance/batch_view.h"

#include <cstring>

#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"

namespace constance {
namespace {

using google::protobuf::io::CodedInputStream;
using WireType = google::protobuf::internal::WireFormatLite::WireType;
using google::protobuf::internal::WireFormatLite;

constexpr uint32_t Tag(int field, WireType type) {
  return static_cast<uint32_t>(field << 3) | static_cast<uint32_t>(type);
}
constexpr WireType kVarint = WireFormatLite::WIRETYPE_VARINT;
constexpr WireType kFixed64 = WireFormatLite::WIRETYPE_FIXED64;
constexpr WireType kBytes = WireFormatLite::WIRETYPE_LENGTH_DELIMITED;

// Reads the stream over the flat array that starts at `base`.
class Reader {
 public:
  Reader(const char* base, int size)
      : base_(base), in_(reinterpret_cast<const uint8_t*>(base), size) {}

  uint32_t Tag() { return in_.ReadTag(); }
  bool ConsumedEntireMessage() { return in_.ConsumedEntireMessage(); }

  // Marks field `bit` of a message seen; false if it already was (protobuf
  // would merge or overwrite: the fallback decides).
  static bool First(uint32_t* seen, int bit) {
    if ((*seen & (1u << bit)) != 0) return false;
    *seen |= 1u << bit;
    return true;
  }

  bool Varint(uint64_t* v) { return in_.ReadVarint64(v); }
  bool Fixed64(uint64_t* v) { return in_.ReadLittleEndian64(v); }
  bool Double(double* v) {
    uint64_t bits = 0;
    if (!in_.ReadLittleEndian64(&bits)) return false;
    std::memcpy(v, &bits, sizeof(bits));
    return true;
  }

  // A length-delimited string of ASCII bytes, viewed in place.
  bool Ascii(absl::string_view* v) {
    uint32_t length = 0;
    if (!in_.ReadVarint32(&length)) return false;
    const int at = in_.CurrentPosition();
    if (!in_.Skip(static_cast<int>(length))) return false;
    *v = absl::string_view(base_ + at, length);
    for (char c : *v) {
      if (static_cast<unsigned char>(c) >= 0x80) return false;  // Protobuf checks UTF-8.
    }
    return true;
  }

  // Enters a length-delimited submessage; Leave() after reading it.
  bool Enter(CodedInputStream::Limit* limit) {
    uint32_t length = 0;
    if (!in_.ReadVarint32(&length) || length > static_cast<uint32_t>(in_.BytesUntilLimit())) {
      return false;
    }
    *limit = in_.PushLimit(static_cast<int>(length));
    return true;
  }
  bool Leave(CodedInputStream::Limit limit) {
    if (!in_.ConsumedEntireMessage()) return false;
    in_.PopLimit(limit);
    return true;
  }

 private:
  const char* base_;
  CodedInputStream in_;
};

bool DecodeTimestamp(Reader& r, ObservationView* o) {
  CodedInputStream::Limit limit;
  if (!r.Enter(&limit)) return false;
  uint32_t seen = 0;
  uint64_t v = 0;
  while (uint32_t tag = r.Tag()) {
    switch (tag) {
      case Tag(1, kVarint):
        if (!Reader::First(&seen, 1) || !r.Varint(&v)) return false;
        o->observed_seconds = static_cast<int64_t>(v);
        break;
      case Tag(2, kVarint):
        if (!Reader::First(&seen, 2) || !r.Varint(&v)) return false;
        o->observed_nanos = static_cast<int32_t>(static_cast<uint32_t>(v));
        break;
      default:
        return false;
    }
  }
  o->has_observed_at = true;
  return r.Leave(limit);
}

bool DecodePrice(Reader& r, ObservationView* o) {
  CodedInputStream::Limit limit;
  if (!r.Enter(&limit)) return false;
  uint32_t seen = 0;
  uint64_t v = 0;
  while (uint32_t tag = r.Tag()) {
    switch (tag) {
      case Tag(1, kVarint):
        if (!Reader::First(&seen, 1) || !r.Varint(&v)) return false;
        o->minor_units = static_cast<int64_t>(v);
        break;
      case Tag(2, kBytes):
        if (!Reader::First(&seen, 2) || !r.Ascii(&o->currency)) return false;
        break;
      case Tag(3, kVarint):
        if (!Reader::First(&seen, 3) || !r.Varint(&v)) return false;
        o->kind = static_cast<int32_t>(static_cast<uint32_t>(v));
        break;
      default:
        return false;
    }
  }
  return r.Leave(limit);
}

bool DecodeCheck(Reader& r, ObservationView* o) {
  CodedInputStream::Limit limit;
  if (!r.Enter(&limit)) return false;
  uint32_t seen = 0;
  uint64_t v = 0;
  while (uint32_t tag = r.Tag()) {
    switch (tag) {
      case Tag(1, kVarint):
        if (!Reader::First(&seen, 1) || !r.Varint(&v)) return false;
        o->passed = v != 0;
        break;
      case Tag(2, kVarint):
        if (!Reader::First(&seen, 2) || !r.Varint(&v)) return false;
        o->critical = v != 0;
        break;
      default:
        return false;
    }
  }
  return r.Leave(limit);
}

bool DecodeObservation(Reader& r, ObservationView* o) {
  CodedInputStream::Limit limit;
  if (!r.Enter(&limit)) return false;
  uint32_t seen = 0;
  // The value is a oneof: a second member (or the same one again) would
  // replace or merge into the first; the fallback decides.
  auto value = [o](v1::Observation::ValueCase c) {
    if (o->value != v1::Observation::VALUE_NOT_SET) return false;
    o->value = c;
    return true;
  };
  while (uint32_t tag = r.Tag()) {
    switch (tag) {
      case Tag(1, kBytes):
        if (!Reader::First(&seen, 1) || !r.Ascii(&o->key)) return false;
        break;
      case Tag(2, kBytes):
        if (!Reader::First(&seen, 2) || !DecodeTimestamp(r, o)) return false;
        break;
      case Tag(3, kBytes):
        if (!value(v1::Observation::kPrice) || !DecodePrice(r, o)) return false;
        break;
      case Tag(4, kFixed64):
        if (!value(v1::Observation::kWaitSeconds) || !r.Double(&o->number)) return false;
        break;
      case Tag(5, kBytes):
        if (!value(v1::Observation::kCheck) || !DecodeCheck(r, o)) return false;
        break;
      case Tag(6, kFixed64):
        if (!value(v1::Observation::kScore) || !r.Double(&o->number)) return false;
        break;
      case Tag(7, kBytes):
        if (!Reader::First(&seen, 7) || !r.Ascii(&o->id)) return false;
        break;
      default:
        return false;
    }
  }
  return r.Leave(limit);
}

}  // namespace

bool ObservationView::operator==(const ObservationView& o) const {
  return key == o.key && id == o.id && has_observed_at == o.has_observed_at &&
         observed_seconds == o.observed_seconds && observed_nanos == o.observed_nanos &&
         value == o.value && minor_units == o.minor_units && currency == o.currency &&
         kind == o.kind &&
         // Bitwise, so a NaN equals itself.
         std::memcmp(&number, &o.number, sizeof(number)) == 0 && passed == o.passed &&
         critical == o.critical;
}

bool BatchView::operator==(const BatchView& o) const {
  return location == o.location && incarnation == o.incarnation &&
         first_sequence == o.first_sequence && observations == o.observations;
}

bool DecodeBatch(absl::string_view bytes, BatchView* out) {
  *out = BatchView();
  if (bytes.size() > static_cast<size_t>(INT32_MAX)) return false;
  Reader r(bytes.data(), static_cast<int>(bytes.size()));
  uint32_t seen = 0;
  uint64_t v = 0;
  while (uint32_t tag = r.Tag()) {
    switch (tag) {
      case Tag(1, kBytes):
        if (!Reader::First(&seen, 1) || !r.Ascii(&out->location)) return false;
        break;
      case Tag(2, kFixed64):
        if (!Reader::First(&seen, 2) || !r.Fixed64(&out->incarnation)) return false;
        break;
      case Tag(3, kVarint):
        if (!Reader::First(&seen, 3) || !r.Varint(&v)) return false;
        out->first_sequence = v;
        break;
      case Tag(4, kBytes):
        if (!DecodeObservation(r, &out->observations.emplace_back())) return false;
        break;
      default:
        return false;
    }
  }
  return r.ConsumedEntireMessage();
}

ObservationView ViewOf(const v1::Observation& obs) {
  ObservationView o;
  o.key = obs.key();
  o.id = obs.id();
  if (obs.has_observed_at()) {
    o.has_observed_at = true;
    o.observed_seconds = obs.observed_at().seconds();
    o.observed_nanos = obs.observed_at().nanos();
  }
  o.value = obs.value_case();
  switch (o.value) {
    case v1::Observation::kPrice:
      o.minor_units = obs.price().minor_units();
      o.currency = obs.price().currency();
      o.kind = obs.price().kind();
      break;
    case v1::Observation::kWaitSeconds:
      o.number = obs.wait_seconds();
      break;
    case v1::Observation::kCheck:
      o.passed = obs.check().passed();
      o.critical = obs.check().critical();
      break;
    case v1::Observation::kScore:
      o.number = obs.score();
      break;
    case v1::Observation::VALUE_NOT_SET:
      break;
  }
  return o;
}

BatchView ViewOf(const v1::Batch& batch) {
  BatchView b;
  b.location = batch.location();
  b.incarnation = batch.incarnation();
  b.first_sequence = batch.first_sequence();
  b.observations.reserve(static_cast<size_t>(batch.observations_size()));
  for (const v1::Observation& obs : batch.observations()) b.observations.push_back(ViewOf(obs));
  return b;
}

}  // namespace constance
