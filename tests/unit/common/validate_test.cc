// Every validation rule with a case that passes and one that fails.
#include "constance/validate.h"

#include <cmath>
#include <limits>
#include <string>

#include "absl/time/clock.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"

namespace constance {
namespace {

TEST(ValidateLocationIdTest, Table) {
  static const struct {
    const char* id;
    bool ok;
  } kCases[] = {
      {"fr-paris-0042", true},
      {"0", true},
      {"a.b_c-d", true},
      {"", false},
      {"-leading-dash", false},
      {"Upper", false},
      {"space inside", false},
      {"semi;colon", false},
      {"a123456789012345678901234567890123456789012345678901234567890ab", true},   // 63
      {"a123456789012345678901234567890123456789012345678901234567890abc", false}, // 64
  };
  for (const auto& c : kCases) {
    EXPECT_EQ(ValidateLocationId(c.id).ok(), c.ok) << "'" << c.id << "'";
  }
}

TEST(ValidateObservationTest, Table) {
  const absl::Time now = absl::FromUnixSeconds(1'700'000'000);  // 2023-11-14T22:13:20Z
  static const struct {
    const char* text;  // Observation in protobuf text format.
    const char* error; // Expected substring of the error, nullptr when valid.
  } kCases[] = {
      {R"(key: "sku-1" price { minor_units: 139 currency: "EUR" })", nullptr},
      {R"(key: "sku-1" price { minor_units: 0 currency: "EUR" kind: PROMO })", nullptr},
      {R"(key: "sku-1" price { minor_units: -1 currency: "EUR" })", "must not be negative"},
      {R"(key: "sku-1" price { minor_units: 100000000 currency: "EUR" })", "must be below"},
      {R"(key: "sku-1" price { minor_units: 139 currency: "eur" })", "three upper-case"},
      {R"(key: "sku-1" price { minor_units: 139 currency: "EURO" })", "three upper-case"},
      {R"(key: "sku-1" price { minor_units: 139 currency: "EUE" })", "not an ISO 4217"},
      {R"(key: "sku-1" price { minor_units: 139 currency: "CZK" kind: LIST })", nullptr},
      {R"(key: "sku-1" price { minor_units: 139 currency: "EUR" kind: 9 })", "unknown kind"},
      {R"(key: "checkout" wait_seconds: 0)", nullptr},
      {R"(key: "checkout" wait_seconds: 182.5)", nullptr},
      {R"(key: "checkout" wait_seconds: -1)", "must not be negative"},
      {R"(key: "checkout" wait_seconds: 86401)", "at most"},
      {R"(key: "checkout" wait_seconds: nan)", "finite"},
      {R"(key: "checkout" wait_seconds: inf)", "finite"},
      {R"(key: "fridge" check { passed: false critical: true })", nullptr},
      {R"(key: "inspection" score: 96.5)", nullptr},
      {R"(key: "inspection" score: -inf)", "finite"},
      {R"(key: "inspection" score: 1e10)", "magnitude"},
      {R"(key: "no-value")", "one of price"},
      {R"(key: "" score: 1)", "key: must not be empty"},
      {R"(key: "bad key" score: 1)", "not allowed"},
      {R"(key: "ean:4006381333931/x.y_z" score: 1)", nullptr},
      // Event time: now + 4 min is fine, now + 6 min is a wrong clock,
      // 6 days late still counts, 8 days late does not.
      {R"(key: "k" score: 1 observed_at { seconds: 1700000240 })", nullptr},
      {R"(key: "k" score: 1 observed_at { seconds: 1700000360 })", "in the future"},
      {R"(key: "k" score: 1 observed_at { seconds: 1699481600 })", nullptr},
      {R"(key: "k" score: 1 observed_at { seconds: 1699308800 })", "lateness"},
      {R"(key: "k" score: 1 observed_at { seconds: 1 nanos: -5 })", "not a valid timestamp"},
  };
  Limits limits;
  for (const auto& c : kCases) {
    v1::Observation obs;
    ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(c.text, &obs)) << c.text;
    absl::Status s = ValidateObservation(obs, now, limits);
    if (c.error == nullptr) {
      EXPECT_TRUE(s.ok()) << c.text << ": " << s;
    } else {
      EXPECT_FALSE(s.ok()) << c.text;
      EXPECT_NE(std::string(s.message()).find(c.error), std::string::npos)
          << c.text << ": got '" << s.message() << "', want '" << c.error << "'";
    }
  }
}

// The bounds on observed_at are inclusive, to the nanosecond, whatever
// the clock's fraction of a second (ObservationValidator skips the exact
// comparison for whole seconds strictly inside them).
TEST(ValidateObservationTest, ObservedAtBoundsExactToTheNanosecond) {
  const absl::Time clocks[] = {
      absl::FromUnixSeconds(1700000000),
      absl::FromUnixNanos(1700000000'999999999),
      absl::FromUnixNanos(1700000000'000000001),
      absl::FromUnixSeconds(1700000000) + absl::Nanoseconds(0.25),  // Below a nanosecond.
      absl::FromUnixSeconds(-86400 * 3) + absl::Milliseconds(500),  // Before 1970.
  };
  const absl::Duration skews[] = {absl::Minutes(5), absl::Nanoseconds(1), absl::ZeroDuration(),
                                  absl::Milliseconds(1500), absl::Nanoseconds(700.75)};
  Limits limits;
  for (const absl::Time now : clocks) {
    for (const absl::Duration skew : skews) {
      limits.max_future_skew = skew;
      limits.max_lateness = skew * 3 + absl::Seconds(2);
      const absl::Time latest = now + limits.max_future_skew;
      const absl::Time earliest = now - limits.max_lateness;
      const ObservationValidator validator(now, limits);
      for (const absl::Time bound : {latest, earliest}) {
        for (int64_t step_ns = -2'000'000'001; step_ns <= 2'000'000'001; step_ns += 250'000'000) {
          for (int64_t near = -2; near <= 2; ++near) {
            // Whole nanoseconds around the bound, as an observation carries.
            const int64_t at_ns = absl::ToUnixNanos(bound) + step_ns + near;
            const absl::Time at = absl::FromUnixNanos(at_ns);
            ObservationView obs;
            obs.key = "k";
            obs.value = v1::Observation::kScore;
            obs.number = 1;
            obs.has_observed_at = true;
            obs.observed_seconds = absl::ToUnixSeconds(at);
            obs.observed_nanos = static_cast<int32_t>(
                absl::ToInt64Nanoseconds(at - absl::FromUnixSeconds(obs.observed_seconds)));
            const bool inside = at >= earliest && at <= latest;
            const absl::Status s = validator.Check(obs);
            EXPECT_EQ(s.ok(), inside)
                << "now " << now << " skew " << skew << " at " << at << ": " << s;
            EXPECT_EQ(ValidateObservation(obs, now, limits).ok(), inside);
          }
        }
      }
    }
  }
}

// Every byte, alone and inside a key: exactly [A-Za-z0-9._:/-] pass.
TEST(ValidateKeyTest, EveryByte) {
  const std::string allowed = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/-";
  int passed = 0;
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    const bool want = allowed.find(c) != std::string::npos;
    EXPECT_EQ(ValidateKey(std::string(1, c)).ok(), want) << "byte " << b;
    EXPECT_EQ(ValidateKey(std::string("sku") + c + "42").ok(), want) << "byte " << b;
    passed += want;
  }
  EXPECT_EQ(passed, static_cast<int>(allowed.size()));
}

TEST(ValidateObservationTest, LongIdempotencyKeyRejected) {
  v1::Observation obs;
  obs.set_key("k");
  obs.set_score(1);
  obs.set_id(std::string(128, 'x'));
  EXPECT_TRUE(ValidateObservation(obs, absl::Now(), Limits()).ok());
  obs.set_id(std::string(129, 'x'));
  EXPECT_FALSE(ValidateObservation(obs, absl::Now(), Limits()).ok());
}

TEST(ValidateCurrencyTest, ClosedIso4217List) {
  static const struct {
    const char* code;
    bool ok;
  } kCases[] = {
      {"EUR", true}, {"USD", true}, {"CZK", true}, {"XXX", true}, {"AED", true}, {"ZWL", true},
      {"EUE", false}, {"ABC", false}, {"eur", false}, {"EU", false}, {"", false},
  };
  for (const auto& c : kCases) {
    EXPECT_EQ(ValidateCurrency(c.code).ok(), c.ok) << "'" << c.code << "'";
  }
}

TEST(ValidateObservationIdTest, PrintableAsciiUpTo128) {
  static const struct {
    std::string id;
    bool ok;
  } kCases[] = {
      {"", true},
      {"pos-7/receipt 42#3", true},
      {std::string(128, '~'), true},
      {std::string(129, 'x'), false},
      {"line\nbreak", false},
      {std::string("nul\0inside", 10), false},
      {"caf\xc3\xa9", false},  // Not ASCII.
  };
  for (const auto& c : kCases) {
    EXPECT_EQ(ValidateObservationId(c.id).ok(), c.ok) << "'" << c.id << "'";
  }
  v1::Observation obs;
  obs.set_key("k");
  obs.set_score(1);
  obs.set_id("tab\there");
  EXPECT_NE(std::string(ValidateObservation(obs, absl::Now(), Limits()).message()).find("id:"),
            std::string::npos);
}

TEST(ValidateBatchShapeTest, Table) {
  Limits limits;
  limits.max_batch_observations = 3;
  auto batch = [](const char* location, uint64_t first, int n) {
    v1::Batch b;
    b.set_location(location);
    b.set_first_sequence(first);
    for (int i = 0; i < n; ++i) b.add_observations()->set_key("k");
    return b;
  };
  static const struct {
    const char* location;
    uint64_t first;
    int n;
    const char* error;  // nullptr when valid.
  } kCases[] = {
      {"store-a", 1, 3, nullptr},
      {"store-a", 1, 0, nullptr},
      {"store-a", 1, 4, "--max_batch_observations"},
      {"store-a", 0, 1, "sequences start at 1"},
      {"store-a", UINT64_MAX, 2, "overflows"},
      {"Store A", 1, 1, "location"},
      {"", 1, 1, "location"},
  };
  for (const auto& c : kCases) {
    absl::Status s = ValidateBatchShape(batch(c.location, c.first, c.n), limits);
    if (c.error == nullptr) {
      EXPECT_TRUE(s.ok()) << c.location << " " << c.n << ": " << s;
    } else {
      EXPECT_NE(std::string(s.message()).find(c.error), std::string::npos)
          << c.location << " " << c.n << ": got '" << s.message() << "'";
    }
  }
}

TEST(FamilyTest, NamesRoundTripAndOneofDecides) {
  for (v1::Family f : {v1::FAMILY_PRICE, v1::FAMILY_WAIT, v1::FAMILY_COMPLIANCE, v1::FAMILY_SCORE}) {
    v1::Family parsed = v1::FAMILY_UNSPECIFIED;
    ASSERT_TRUE(ParseFamily(FamilyName(f), &parsed).ok());
    EXPECT_EQ(parsed, f);
  }
  v1::Family unused;
  EXPECT_FALSE(ParseFamily("prices", &unused).ok());
  v1::Observation obs;
  EXPECT_EQ(FamilyOf(obs), v1::FAMILY_UNSPECIFIED);
  obs.set_wait_seconds(1);
  EXPECT_EQ(FamilyOf(obs), v1::FAMILY_WAIT);
  obs.mutable_check()->set_passed(true);  // The oneof holds one value only.
  EXPECT_EQ(FamilyOf(obs), v1::FAMILY_COMPLIANCE);
}

}  // namespace
}  // namespace constance
