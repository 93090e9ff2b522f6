#include "constance/validate.h"

#include <array>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "constance/money.h"

namespace constance {
namespace {

bool IsLowerAlnum(char c) { return absl::ascii_isdigit(c) || (c >= 'a' && c <= 'z'); }

// A key's characters, [A-Za-z0-9._:/-], as a table: one load per
// character on the ingest path, where every observation's key is checked.
constexpr std::array<bool, 256> KeyCharacters() {
  std::array<bool, 256> allowed{};
  for (int c = 0; c < 256; ++c) {
    allowed[c] = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == ':' || c == '/' || c == '-';
  }
  return allowed;
}
constexpr std::array<bool, 256> kKeyCharacters = KeyCharacters();

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

}  // namespace

absl::Status ValidateLocationId(absl::string_view id) {
  if (id.empty()) return Invalid("location", "must not be empty");
  if (id.size() > 63) return Invalid("location", "longer than 63 characters");
  if (!IsLowerAlnum(id[0])) {
    return Invalid("location", "must start with a lower-case letter or digit");
  }
  for (char c : id) {
    if (!IsLowerAlnum(c) && c != '.' && c != '_' && c != '-') {
      return Invalid("location", absl::StrCat("character '", absl::CHexEscape(std::string(1, c)),
                                              "' not allowed (use [a-z0-9._-])"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateKey(absl::string_view key) {
  if (key.empty()) return Invalid("key", "must not be empty");
  if (key.size() > 128) return Invalid("key", "longer than 128 characters");
  for (char c : key) {
    if (!kKeyCharacters[static_cast<unsigned char>(c)]) {
      return Invalid("key", absl::StrCat("character '", absl::CHexEscape(std::string(1, c)),
                                         "' not allowed (use [A-Za-z0-9._:/-])"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateCurrency(absl::string_view currency) {
  if (currency.size() != 3 || !absl::ascii_isupper(currency[0]) ||
      !absl::ascii_isupper(currency[1]) || !absl::ascii_isupper(currency[2])) {
    return Invalid("price.currency", "must be three upper-case letters, e.g. EUR");
  }
  if (!CurrencyExponent(currency).ok()) {
    return Invalid("price.currency",
                   absl::StrCat("'", currency, "' is not an ISO 4217 currency code"));
  }
  return absl::OkStatus();
}

absl::Status ValidateLabel(absl::string_view name, absl::string_view value) {
  bool ok = !name.empty() && name.size() <= 63 && absl::ascii_islower(name[0]);
  for (char c : name) ok = ok && (absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '_');
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("label name '", absl::CHexEscape(name.substr(0, 64)),
                     "' must match [a-z][a-z0-9_]{0,62}"));
  }
  if (value.size() > 128) {
    return absl::InvalidArgumentError(absl::StrCat("label '", name, "' longer than 128 bytes"));
  }
  for (char c : value) {
    if (!absl::ascii_isprint(c)) {
      return absl::InvalidArgumentError(
          absl::StrCat("label '", name, "' has a non-printable character"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateLabels(const std::map<std::string, std::string>& labels) {
  if (labels.size() > kMaxLabels) {
    return absl::InvalidArgumentError(
        absl::StrCat(labels.size(), " labels: at most ", kMaxLabels, " are allowed"));
  }
  for (const auto& [name, value] : labels) {
    if (absl::Status s = ValidateLabel(name, value); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status ValidateObservationId(absl::string_view id) {
  if (id.size() > 128) return Invalid("id", "longer than 128 characters");
  for (char c : id) {
    if (c < ' ' || c > '~') {
      return Invalid("id", absl::StrCat("character '", absl::CHexEscape(std::string(1, c)),
                                        "' not allowed (printable ASCII only)"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateIncarnation(uint64_t incarnation, absl::string_view field) {
  if (incarnation != 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": 0 is not an incarnation; choose a random non-zero 64-bit id when "
                          "the client's spool is created and keep it with the spool"));
}

absl::Status ValidateBatchShape(const v1::Batch& batch, const Limits& limits) {
  return ValidateBatchShape(ViewOf(batch), limits);
}

absl::Status ValidateBatchShape(const BatchView& batch, const Limits& limits) {
  if (batch.skipped_from != 0 && batch.skipped_from >= batch.first_sequence) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch.skipped_from: ", batch.skipped_from, " is not below first_sequence ",
                     batch.first_sequence, " (declare the dropped range skipped_from .. "
                     "first_sequence - 1, or leave it 0)"));
  }
  return ValidateBatchShape(batch.location, batch.first_sequence, batch.observations.size(),
                            limits);
}

absl::Status ValidateBatchShape(absl::string_view location, uint64_t first_sequence,
                                uint64_t count, const Limits& limits) {
  if (absl::Status s = ValidateLocationId(location); !s.ok()) return s;
  if (first_sequence == 0) {
    return absl::InvalidArgumentError("batch.first_sequence: sequences start at 1");
  }
  if (first_sequence > UINT64_MAX - count) {
    return absl::InvalidArgumentError("batch.first_sequence: sequence range overflows");
  }
  if (limits.max_batch_observations > 0 && count > limits.max_batch_observations) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch.observations: ", count, " observations, more than the limit of ",
                     limits.max_batch_observations, " (--max_batch_observations)"));
  }
  return absl::OkStatus();
}

absl::Status ValidateObservation(const v1::Observation& obs, absl::Time now, const Limits& limits) {
  return ValidateObservation(ViewOf(obs), now, limits);
}

absl::Status ValidateObservation(const ObservationView& obs, absl::Time now,
                                 const Limits& limits) {
  return ObservationValidator(now, limits).Check(obs);
}

ObservationValidator::ObservationValidator(absl::Time now, const Limits& limits)
    : limits_(limits),
      earliest_(now - limits.max_lateness),
      latest_(now + limits.max_future_skew),
      earliest_seconds_(absl::ToUnixSeconds(earliest_)),
      latest_seconds_(absl::ToUnixSeconds(latest_)) {}

absl::Status ObservationValidator::Check(const ObservationView& obs) const {
  const Limits& limits = limits_;
  if (absl::Status s = ValidateKey(obs.key); !s.ok()) return s;
  if (absl::Status s = ValidateObservationId(obs.id); !s.ok()) return s;
  switch (obs.value) {
    case v1::Observation::kPrice: {
      if (obs.minor_units < 0) return Invalid("price.minor_units", "must not be negative");
      if (obs.minor_units >= limits.max_price_minor_units) {
        return Invalid("price.minor_units",
                       absl::StrCat("must be below ", limits.max_price_minor_units));
      }
      if (absl::Status s = ValidateCurrency(obs.currency); !s.ok()) return s;
      if (!v1::PriceKind_IsValid(obs.kind)) return Invalid("price.kind", "unknown kind");
      break;
    }
    case v1::Observation::kWaitSeconds: {
      const double w = obs.number;
      if (!std::isfinite(w)) return Invalid("wait_seconds", "must be a finite number");
      if (w < 0) return Invalid("wait_seconds", "must not be negative");
      if (w > limits.max_wait_seconds) {
        return Invalid("wait_seconds", absl::StrCat("must be at most ", limits.max_wait_seconds));
      }
      break;
    }
    case v1::Observation::kCheck:
      break;
    case v1::Observation::kScore: {
      const double v = obs.number;
      if (!std::isfinite(v)) return Invalid("score", "must be a finite number");
      if (std::fabs(v) > limits.max_abs_score) {
        return Invalid("score", absl::StrCat("magnitude must be at most ", limits.max_abs_score));
      }
      break;
    }
    case v1::Observation::VALUE_NOT_SET:
      return Invalid("value", "one of price, wait_seconds, check or score must be set");
  }
  if (obs.has_observed_at) return CheckObservedAt(obs.observed_seconds, obs.observed_nanos);
  return absl::OkStatus();
}

absl::Status ObservationValidator::CheckObservedAt(int64_t seconds, int32_t nanos) const {
  // The range protobuf's JSON mapping accepts: 0001-01-01 .. 9999-12-31.
  if (seconds < -62135596800 || seconds > 253402300799 || nanos < 0 || nanos > 999999999) {
    return Invalid("observed_at", "not a valid timestamp");
  }
  // t >= seconds >= earliest_seconds_ + 1 > earliest_, and
  // t < seconds + 1 <= latest_seconds_ <= latest_: inside both bounds.
  if (seconds > earliest_seconds_ && seconds < latest_seconds_) return absl::OkStatus();
  const absl::Time t = absl::FromUnixSeconds(seconds) + absl::Nanoseconds(nanos);
  if (t > latest_) {
    return Invalid("observed_at",
                   absl::StrCat("more than ", absl::FormatDuration(limits_.max_future_skew),
                                " in the future (check the store clock)"));
  }
  if (t < earliest_) {
    return Invalid("observed_at", absl::StrCat("older than the lateness bound of ",
                                               absl::FormatDuration(limits_.max_lateness)));
  }
  return absl::OkStatus();
}

v1::Family FamilyOf(const v1::Observation& obs) { return FamilyOf(obs.value_case()); }

v1::Family FamilyOf(const ObservationView& obs) { return FamilyOf(obs.value); }

v1::Family FamilyOf(v1::Observation::ValueCase value) {
  switch (value) {
    case v1::Observation::kPrice:
      return v1::FAMILY_PRICE;
    case v1::Observation::kWaitSeconds:
      return v1::FAMILY_WAIT;
    case v1::Observation::kCheck:
      return v1::FAMILY_COMPLIANCE;
    case v1::Observation::kScore:
      return v1::FAMILY_SCORE;
    case v1::Observation::VALUE_NOT_SET:
      break;
  }
  return v1::FAMILY_UNSPECIFIED;
}

absl::string_view FamilyName(v1::Family family) {
  switch (family) {
    case v1::FAMILY_PRICE:
      return "price";
    case v1::FAMILY_WAIT:
      return "wait";
    case v1::FAMILY_COMPLIANCE:
      return "compliance";
    case v1::FAMILY_SCORE:
      return "score";
    default:
      return "unspecified";
  }
}

absl::Status ParseFamily(absl::string_view name, v1::Family* family) {
  for (v1::Family f :
       {v1::FAMILY_PRICE, v1::FAMILY_WAIT, v1::FAMILY_COMPLIANCE, v1::FAMILY_SCORE}) {
    if (name == FamilyName(f)) {
      *family = f;
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("family: '", name, "' is not one of price, wait, compliance, score"));
}

}  // namespace constance
