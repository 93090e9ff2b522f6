#include "constance/batch_view.h"

#include <cstring>

namespace constance {
namespace {

// The wire types used here, and a one-byte tag. Field numbers are the
// generated k...FieldNumber constants; batch_view_test pins each field's
// number and type to what released agents send.
constexpr int kVarint = 0;
constexpr int kFixed64 = 1;
constexpr int kBytes = 2;
constexpr uint8_t Tag(int field, int wire_type) {
  // One byte: fields 1 to 15 only.
  return field >= 1 && field <= 15 ? static_cast<uint8_t>((field << 3) | wire_type) : 0xff;
}

// Reads the wire format over [p, end). CodedInputStream did this first;
// its limits (PushLimit, PopLimit) and multi-byte varints are calls out of
// line, and with them decoding cost as much as protobuf's parse. These few
// reads are the wire format's own rules as protobuf 3.21's parser applies
// them: a varint of at most 10 bytes (bits past 64 dropped); a length of
// at most 5 bytes whose fifth is below 8 (31 bits: ReadSizeFallback
// refuses the rest) that fits in what is left. Every other case goes to
// the fallback.
class Reader {
 public:
  Reader(const char* p, const char* end) : p_(p), end_(end) {}

  bool done() const { return p_ == end_; }

  // The next tag; only the one-byte tags of the fields decoded here are
  // ever valid, so a longer one reads as 0 (no such field).
  uint8_t Tag() {
    const uint8_t t = static_cast<uint8_t>(*p_++);
    return t < 0x80 ? t : 0;
  }

  // Marks field `bit` of a message seen; false if it already was (protobuf
  // would merge or overwrite: the fallback decides).
  static bool First(uint32_t* seen, int bit) {
    if ((*seen & (1u << bit)) != 0) return false;
    *seen |= 1u << bit;
    return true;
  }

  bool Varint(uint64_t* v) {
    uint64_t result = 0;
    for (int i = 0; i < 10 && p_ != end_; ++i) {
      const uint8_t b = static_cast<uint8_t>(*p_++);
      result |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
      if (b < 0x80) {
        *v = result;
        return true;
      }
    }
    return false;
  }

  bool Fixed64(uint64_t* v) {
    if (end_ - p_ < 8) return false;
    uint64_t value = 0;
    for (int i = 7; i >= 0; --i) value = (value << 8) | static_cast<uint8_t>(p_[i]);
    *v = value;
    p_ += 8;
    return true;
  }
  bool Double(double* v) {
    uint64_t bits = 0;
    if (!Fixed64(&bits)) return false;
    std::memcpy(v, &bits, sizeof(bits));
    return true;
  }

  // A length-delimited field's bytes.
  bool Bytes(absl::string_view* v) {
    uint32_t length = 0;
    for (int i = 0;; ++i) {
      if (i == 5 || p_ == end_) return false;
      const uint8_t b = static_cast<uint8_t>(*p_++);
      if (i == 4 && b >= 8) return false;
      length |= static_cast<uint32_t>(b & 0x7f) << (7 * i);
      if (b < 0x80) break;
    }
    if (length > static_cast<size_t>(end_ - p_)) return false;
    *v = absl::string_view(p_, length);
    p_ += length;
    return true;
  }

  // A string of ASCII bytes (protobuf checks UTF-8: anything else is the
  // fallback's).
  bool Ascii(absl::string_view* v) {
    if (!Bytes(v)) return false;
    for (char c : *v) {
      if (static_cast<unsigned char>(c) >= 0x80) return false;
    }
    return true;
  }

  // A submessage: a reader over its bytes.
  bool Enter(Reader* sub) {
    absl::string_view bytes;
    if (!Bytes(&bytes)) return false;
    *sub = Reader(bytes.data(), bytes.data() + bytes.size());
    return true;
  }

 private:
  const char* p_;
  const char* end_;
};

// A submessage of two varint fields, 1 and 2: a Timestamp (seconds,
// nanos) or a Check (passed, critical). An absent field reads 0.
constexpr int kFirst = 1, kSecond = 2;
static_assert(google::protobuf::Timestamp::kSecondsFieldNumber == kFirst &&
                  google::protobuf::Timestamp::kNanosFieldNumber == kSecond &&
                  v1::Check::kPassedFieldNumber == kFirst &&
                  v1::Check::kCriticalFieldNumber == kSecond,
              "DecodeVarintPair reads Timestamp and Check as fields 1 and 2");
bool DecodeVarintPair(Reader& outer, uint64_t* first, uint64_t* second) {
  Reader r(nullptr, nullptr);
  if (!outer.Enter(&r)) return false;
  uint32_t seen = 0;
  *first = *second = 0;
  while (!r.done()) {
    switch (r.Tag()) {
      case Tag(kFirst, kVarint):
        if (!Reader::First(&seen, kFirst) || !r.Varint(first)) return false;
        break;
      case Tag(kSecond, kVarint):
        if (!Reader::First(&seen, kSecond) || !r.Varint(second)) return false;
        break;
      default:
        return false;
    }
  }
  return true;
}

bool DecodePrice(Reader& outer, ObservationView* o) {
  Reader r(nullptr, nullptr);
  if (!outer.Enter(&r)) return false;
  uint32_t seen = 0;
  uint64_t v = 0;
  while (!r.done()) {
    switch (r.Tag()) {
      case Tag(v1::Price::kMinorUnitsFieldNumber, kVarint):
        if (!Reader::First(&seen, v1::Price::kMinorUnitsFieldNumber) || !r.Varint(&v)) return false;
        o->minor_units = static_cast<int64_t>(v);
        break;
      case Tag(v1::Price::kCurrencyFieldNumber, kBytes):
        if (!Reader::First(&seen, v1::Price::kCurrencyFieldNumber) || !r.Ascii(&o->currency))
          return false;
        break;
      case Tag(v1::Price::kKindFieldNumber, kVarint):
        if (!Reader::First(&seen, v1::Price::kKindFieldNumber) || !r.Varint(&v)) return false;
        o->kind = static_cast<int32_t>(static_cast<uint32_t>(v));
        break;
      default:
        return false;
    }
  }
  return true;
}

using O = v1::Observation;
using B = v1::Batch;

bool DecodeObservation(Reader& outer, ObservationView* o) {
  Reader r(nullptr, nullptr);
  if (!outer.Enter(&r)) return false;
  uint32_t seen = 0;
  uint64_t a = 0, b = 0;
  // The value is a oneof: a second member (or the same one again) would
  // replace or merge into the first; the fallback decides.
  auto value = [o](v1::Observation::ValueCase c) {
    if (o->value != v1::Observation::VALUE_NOT_SET) return false;
    o->value = c;
    return true;
  };
  while (!r.done()) {
    switch (r.Tag()) {
      case Tag(O::kKeyFieldNumber, kBytes):
        if (!Reader::First(&seen, O::kKeyFieldNumber) || !r.Ascii(&o->key)) return false;
        break;
      case Tag(O::kObservedAtFieldNumber, kBytes):
        if (!Reader::First(&seen, O::kObservedAtFieldNumber) || !DecodeVarintPair(r, &a, &b))
          return false;
        o->has_observed_at = true;
        o->observed_seconds = static_cast<int64_t>(a);
        o->observed_nanos = static_cast<int32_t>(static_cast<uint32_t>(b));  // As protobuf's int32.
        break;
      case Tag(O::kPriceFieldNumber, kBytes):
        if (!value(v1::Observation::kPrice) || !DecodePrice(r, o)) return false;
        break;
      case Tag(O::kWaitSecondsFieldNumber, kFixed64):
        if (!value(v1::Observation::kWaitSeconds) || !r.Double(&o->number)) return false;
        break;
      case Tag(O::kCheckFieldNumber, kBytes):
        if (!value(v1::Observation::kCheck) || !DecodeVarintPair(r, &a, &b)) return false;
        o->passed = a != 0;
        o->critical = b != 0;
        break;
      case Tag(O::kScoreFieldNumber, kFixed64):
        if (!value(v1::Observation::kScore) || !r.Double(&o->number)) return false;
        break;
      case Tag(O::kIdFieldNumber, kBytes):
        if (!Reader::First(&seen, O::kIdFieldNumber) || !r.Ascii(&o->id)) return false;
        break;
      default:
        return false;
    }
  }
  return true;
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
         first_sequence == o.first_sequence && skipped_from == o.skipped_from &&
         observations == o.observations;
}

bool DecodeBatch(absl::string_view bytes, BatchView* out) {
  *out = BatchView();
  const char* const end = bytes.data() + bytes.size();
  // First the observations are counted, to hold them without growing.
  size_t count = 0;
  for (Reader r(bytes.data(), end); !r.done();) {
    absl::string_view skipped;
    uint64_t v = 0;
    switch (r.Tag()) {
      case Tag(B::kLocationFieldNumber, kBytes):
        if (!r.Bytes(&skipped)) return false;
        break;
      case Tag(B::kIncarnationFieldNumber, kFixed64):
        if (!r.Fixed64(&v)) return false;
        break;
      case Tag(B::kFirstSequenceFieldNumber, kVarint):
      case Tag(B::kSkippedFromFieldNumber, kVarint):
        if (!r.Varint(&v)) return false;
        break;
      case Tag(B::kObservationsFieldNumber, kBytes):
        if (!r.Bytes(&skipped)) return false;
        ++count;
        break;
      default:
        return false;
    }
  }
  out->observations.reserve(count);
  uint32_t seen = 0;
  uint64_t v = 0;
  for (Reader r(bytes.data(), end); !r.done();) {
    switch (r.Tag()) {
      case Tag(B::kLocationFieldNumber, kBytes):
        if (!Reader::First(&seen, B::kLocationFieldNumber) || !r.Ascii(&out->location))
          return false;
        break;
      case Tag(B::kIncarnationFieldNumber, kFixed64):
        if (!Reader::First(&seen, B::kIncarnationFieldNumber) || !r.Fixed64(&out->incarnation))
          return false;
        break;
      case Tag(B::kFirstSequenceFieldNumber, kVarint):
        if (!Reader::First(&seen, B::kFirstSequenceFieldNumber) || !r.Varint(&v)) return false;
        out->first_sequence = v;
        break;
      case Tag(B::kSkippedFromFieldNumber, kVarint):
        if (!Reader::First(&seen, B::kSkippedFromFieldNumber) || !r.Varint(&v)) return false;
        out->skipped_from = v;
        break;
      case Tag(B::kObservationsFieldNumber, kBytes):
        if (!DecodeObservation(r, &out->observations.emplace_back())) return false;
        break;
      default:
        return false;
    }
  }
  return true;
}

bool DecodeAgentBatch(absl::string_view message, absl::string_view* batch_bytes, BatchView* out) {
  // AgentMessage.batch: field 1, length-delimited.
  Reader r(message.data(), message.data() + message.size());
  absl::string_view bytes;
  if (r.done() || r.Tag() != Tag(v1::AgentMessage::kBatchFieldNumber, kBytes) || !r.Bytes(&bytes) ||
      !r.done())
    return false;
  if (!DecodeBatch(bytes, out)) return false;
  *batch_bytes = bytes;
  return true;
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
  b.skipped_from = batch.skipped_from();
  b.observations.reserve(static_cast<size_t>(batch.observations_size()));
  for (const v1::Observation& obs : batch.observations()) b.observations.push_back(ViewOf(obs));
  return b;
}

}  // namespace constance
