// DecodeBatch against protobuf's own parser: the same view for every batch
// an agent writes, and a refusal (so the caller falls back to protobuf)
// for every encoding it does not decode itself; and the numbers and types
// of the fields it reads stay those released agents send.
#include "constance/batch_view.h"

#include <string>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"

namespace constance {
namespace {

v1::Batch FromText(const std::string& text) {
  v1::Batch batch;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &batch)) << text;
  return batch;
}

// Appends field `field` as a varint, to build encodings no serializer
// writes.
void AppendVarintField(std::string* out, int field, uint64_t value) {
  google::protobuf::io::StringOutputStream stream(out);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.WriteTag(static_cast<uint32_t>(field << 3));
  coded.WriteVarint64(value);
}

// A length-delimited field holding `bytes`.
void AppendBytesField(std::string* out, int field, const std::string& bytes) {
  google::protobuf::io::StringOutputStream stream(out);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.WriteTag(static_cast<uint32_t>(field << 3) | 2);
  coded.WriteVarint32(static_cast<uint32_t>(bytes.size()));
  coded.WriteRaw(bytes.data(), static_cast<int>(bytes.size()));
}

TEST(DecodeBatchTest, SameViewAsProtobufForWhatAgentsWrite) {
  static const char* const kBatches[] = {
      "",
      R"(location: "fr-paris-0042" incarnation: 18446744073709551615 first_sequence: 1)",
      R"(location: "s" incarnation: 7 first_sequence: 41
         observations { key: "sku-1" observed_at { seconds: 1700000000 nanos: 250000000 }
                        price { minor_units: 139 currency: "EUR" kind: POS } id: "pos-77" }
         observations { key: "sku-2" price { currency: "EUR" } }
         observations { key: "checkout" wait_seconds: 312.5 }
         observations { key: "fire-exit" check { passed: true critical: true } }
         observations { key: "fire-exit" check { } }
         observations { key: "hygiene" score: -0.0 }
         observations { key: "neg" observed_at { seconds: -5 nanos: -1 }
                        price { minor_units: -139 kind: 99 } }
         observations { }
         observations { observed_at { } })",
  };
  for (const char* text : kBatches) {
    const v1::Batch batch = FromText(text);
    const std::string bytes = batch.SerializeAsString();
    BatchView view;
    ASSERT_TRUE(DecodeBatch(bytes, &view)) << text;
    EXPECT_TRUE(view == ViewOf(batch)) << text;
    EXPECT_EQ(view.observations.size(), static_cast<size_t>(batch.observations_size()));
  }
}

TEST(DecodeBatchTest, ViewsPointIntoTheBytes) {
  const std::string bytes =
      FromText(R"(location: "s" first_sequence: 1
                  observations { key: "sku-1" price { minor_units: 5 currency: "EUR" } })")
          .SerializeAsString();
  BatchView view;
  ASSERT_TRUE(DecodeBatch(bytes, &view));
  ASSERT_EQ(view.observations.size(), 1u);
  const ObservationView& o = view.observations[0];
  EXPECT_EQ(o.value, v1::Observation::kPrice);
  EXPECT_EQ(o.minor_units, 5);
  EXPECT_EQ(o.currency, "EUR");
  EXPECT_GE(o.key.data(), bytes.data());
  EXPECT_LE(o.key.data() + o.key.size(), bytes.data() + bytes.size());
}

// Each case is valid protobuf (or not), but outside what DecodeBatch
// decodes itself; protobuf's verdict and its view are the caller's.
TEST(DecodeBatchTest, RefusesWhatItDoesNotDecodeExactly) {
  const std::string obs =
      FromText(R"(observations { key: "k" price { minor_units: 1 currency: "EUR" } })")
          .SerializeAsString();
  std::string price_twice;  // Protobuf merges the two prices.
  {
    std::string o;
    AppendBytesField(&o, 1, "k");
    v1::Price a;
    a.set_minor_units(1);
    v1::Price b;
    b.set_currency("EUR");
    AppendBytesField(&o, 3, a.SerializeAsString());
    AppendBytesField(&o, 3, b.SerializeAsString());
    AppendBytesField(&price_twice, 4, o);
  }
  std::string two_values;  // Protobuf keeps the last member of the oneof.
  {
    std::string o;
    AppendBytesField(&o, 1, "k");
    AppendBytesField(&o, 3, std::string());
    AppendBytesField(&o, 5, std::string());
    AppendBytesField(&two_values, 4, o);
  }
  std::string unknown_field = obs;  // Kept by protobuf as an unknown field.
  AppendVarintField(&unknown_field, 15, 1);
  std::string sequence_twice = obs;  // Protobuf keeps the last.
  AppendVarintField(&sequence_twice, 3, 1);
  AppendVarintField(&sequence_twice, 3, 2);
  std::string wrong_wire_type;  // first_sequence as a string: unknown to protobuf.
  AppendBytesField(&wrong_wire_type, 3, "1");
  std::string utf8_key;  // Valid UTF-8: protobuf parses, validation rejects.
  {
    std::string o;
    AppendBytesField(&o, 1, "caf\xc3\xa9");
    AppendBytesField(&utf8_key, 4, o);
  }
  std::string bad_utf8_location;  // Protobuf refuses the whole batch.
  AppendBytesField(&bad_utf8_location, 1, "\xff");
  const std::string truncated = obs.substr(0, obs.size() - 1);
  // A length in 5 bytes whose fifth is 8 or more: protobuf refuses it
  // (31 bits at most), even where the low bits would read as 3.
  const std::string long_length("\x0a\x83\x80\x80\x80\x10" "abc" "\x18\x01", 11);
  const std::string long_length_inner("\x22\x80\x80\x80\x80\x10", 6);
  const std::string field_zero("\x00\x01", 2);

  static const struct {
    const char* name;
    const std::string* bytes;
    bool protobuf_parses;
  } kCases[] = {
      {"price twice", &price_twice, true},
      {"two values", &two_values, true},
      {"unknown field", &unknown_field, true},
      {"sequence twice", &sequence_twice, true},
      {"wrong wire type", &wrong_wire_type, true},
      {"utf-8 key", &utf8_key, true},
      {"invalid utf-8 location", &bad_utf8_location, false},
      {"truncated", &truncated, false},
      {"length's fifth byte 0x10", &long_length, false},
      {"observation length's fifth byte 0x10", &long_length_inner, false},
      {"field zero", &field_zero, false},
  };
  for (const auto& c : kCases) {
    BatchView view;
    EXPECT_FALSE(DecodeBatch(*c.bytes, &view)) << c.name;
    v1::Batch parsed;
    EXPECT_EQ(parsed.ParseFromString(*c.bytes), c.protobuf_parses) << c.name;
  }
}

// A byte of 0x80 or more anywhere in a key leaves the batch to protobuf's
// parse (which checks UTF-8).
TEST(DecodeBatchTest, AnyNonAsciiByteOfAKeyIsLeftToProtobuf) {
  const std::string ascii = "abcdefghijklmnopqrstuvw";  // 23: words and a tail.
  auto batch_with_key = [](const std::string& key) {
    std::string o;
    AppendBytesField(&o, 1, key);
    std::string b;
    AppendBytesField(&b, 4, o);
    return b;
  };
  BatchView view;
  const std::string bytes = batch_with_key(ascii);  // The view points into it.
  ASSERT_TRUE(DecodeBatch(bytes, &view));
  ASSERT_EQ(view.observations.size(), 1u);
  EXPECT_EQ(view.observations[0].key, ascii);
  for (size_t i = 0; i < ascii.size(); ++i) {
    for (char c : {'\x80', '\xff'}) {
      std::string key = ascii;
      key[i] = c;
      EXPECT_FALSE(DecodeBatch(batch_with_key(key), &view)) << "byte " << i;
    }
  }
}

// A 5-byte length whose fifth byte is below 8 is what protobuf accepts.
TEST(DecodeBatchTest, TakesLengthsWrittenLongerThanNeeded) {
  const std::string bytes("\x0a\x83\x80\x80\x80\x00" "abc" "\x18\x01", 11);
  BatchView view;
  ASSERT_TRUE(DecodeBatch(bytes, &view));
  v1::Batch parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  EXPECT_TRUE(view == ViewOf(parsed));
  EXPECT_EQ(view.location, "abc");
}

// An AgentMessage is taken only when its batch is all it holds, with a
// one-byte tag and a length protobuf accepts.
TEST(DecodeAgentBatchTest, OnlyASoleBatch) {
  v1::AgentMessage message;
  *message.mutable_batch() = FromText(R"(location: "s" first_sequence: 3
      observations { key: "k" score: 2 })");
  const std::string sole = message.SerializeAsString();
  BatchView view;
  absl::string_view batch_bytes;
  ASSERT_TRUE(DecodeAgentBatch(sole, &batch_bytes, &view));
  EXPECT_EQ(batch_bytes, message.batch().SerializeAsString());
  EXPECT_TRUE(view == ViewOf(message.batch()));

  v1::AgentMessage heartbeat;
  heartbeat.mutable_heartbeat()->set_location("s");
  const std::string batch_then_heartbeat = sole + heartbeat.SerializeAsString();
  static const struct {
    const char* name;
    std::string bytes;
  } kRefused[] = {
      {"heartbeat", heartbeat.SerializeAsString()},
      {"empty", ""},
      {"batch, then a heartbeat", batch_then_heartbeat},
      {"long length", std::string("\x0a\x83\x80\x80\x80\x10\x0a\x01" "a", 9)},
      {"long tag", std::string("\x8a\x80\x80\x80\x80\x00\x03\x0a\x01" "a", 10)},
  };
  for (const auto& c : kRefused) {
    EXPECT_FALSE(DecodeAgentBatch(c.bytes, &batch_bytes, &view)) << c.name;
  }
}

}  // namespace
}  // namespace constance

namespace constance {
namespace {

// The fields the view decodes by hand, with the number and type released
// agents send (tests/data/wire): a .proto edit that renumbers or retypes
// one breaks every agent in the field, and the view with it.
TEST(DecodeBatchTest, TheFieldsItReadsKeepTheirNumbersAndTypes) {
  using FD = google::protobuf::FieldDescriptor;
  static const struct {
    const char* field;
    int number;
    FD::Type type;
  } kFields[] = {
      {"constance.v1.AgentMessage.batch", 1, FD::TYPE_MESSAGE},
      {"constance.v1.Batch.location", 1, FD::TYPE_STRING},
      {"constance.v1.Batch.incarnation", 2, FD::TYPE_FIXED64},
      {"constance.v1.Batch.first_sequence", 3, FD::TYPE_UINT64},
      {"constance.v1.Batch.observations", 4, FD::TYPE_MESSAGE},
      {"constance.v1.Observation.key", 1, FD::TYPE_STRING},
      {"constance.v1.Observation.observed_at", 2, FD::TYPE_MESSAGE},
      {"constance.v1.Observation.price", 3, FD::TYPE_MESSAGE},
      {"constance.v1.Observation.wait_seconds", 4, FD::TYPE_DOUBLE},
      {"constance.v1.Observation.check", 5, FD::TYPE_MESSAGE},
      {"constance.v1.Observation.score", 6, FD::TYPE_DOUBLE},
      {"constance.v1.Observation.id", 7, FD::TYPE_STRING},
      {"constance.v1.Price.minor_units", 1, FD::TYPE_INT64},
      {"constance.v1.Price.currency", 2, FD::TYPE_STRING},
      {"constance.v1.Price.kind", 3, FD::TYPE_ENUM},
      {"constance.v1.Check.passed", 1, FD::TYPE_BOOL},
      {"constance.v1.Check.critical", 2, FD::TYPE_BOOL},
      {"google.protobuf.Timestamp.seconds", 1, FD::TYPE_INT64},
      {"google.protobuf.Timestamp.nanos", 2, FD::TYPE_INT32},
  };
  // Linked in, so the pool knows every message above.
  (void)v1::AgentMessage::descriptor();
  const google::protobuf::DescriptorPool* pool = google::protobuf::DescriptorPool::generated_pool();
  for (const auto& c : kFields) {
    const FD* f = pool->FindFieldByName(c.field);
    ASSERT_NE(f, nullptr) << c.field << " is gone";
    EXPECT_EQ(f->number(), c.number) << c.field;
    EXPECT_EQ(f->type(), c.type) << c.field;
    EXPECT_FALSE(f->is_packed()) << c.field;
  }
}

}  // namespace
}  // namespace constance
