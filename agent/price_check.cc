#include "agent/price_check.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/bounded_json.h"
#include "constance/money.h"
#include "google/protobuf/util/time_util.h"
#include "nlohmann/json.hpp"

namespace constance::agent {
namespace {

using nlohmann::json;

// `name` as a decimal amount in `currency`'s decimals ("4.49" EUR, "450" JPY).
absl::StatusOr<std::optional<int64_t>> PriceField(const json& obj, const char* name,
                                                  const std::string& currency) {
  auto it = obj.find(name);
  if (it == obj.end() || it->is_null()) return std::optional<int64_t>();
  std::string text;
  if (it->is_string()) {
    text = it->get<std::string>();
  } else if (it->is_number()) {
    text = it->dump();
  } else {
    return absl::InvalidArgumentError(absl::StrCat(name, ": expected a price like \"4.49\""));
  }
  absl::StatusOr<int64_t> minor = ParseMoney(text, currency);
  if (!minor.ok())
    return absl::InvalidArgumentError(absl::StrCat(name, ": ", minor.status().message()));
  return std::optional<int64_t>(*minor);
}

absl::StatusOr<std::string> StringField(const json& obj, const char* name, bool required) {
  auto it = obj.find(name);
  if (it == obj.end() || it->is_null()) {
    if (required) return absl::InvalidArgumentError(absl::StrCat(name, ": missing"));
    return std::string();
  }
  if (!it->is_string())
    return absl::InvalidArgumentError(absl::StrCat(name, ": expected a string"));
  return it->get<std::string>();
}

v1::Observation PriceObservation(const PriceCheck& c, int64_t minor, v1::PriceKind kind,
                                 const char* suffix, absl::Time at) {
  v1::Observation o;
  o.set_key(c.item);
  o.mutable_price()->set_minor_units(minor);
  o.mutable_price()->set_currency(c.currency);
  o.mutable_price()->set_kind(kind);
  *o.mutable_observed_at() =
      google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(at));
  if (!c.id.empty()) o.set_id(absl::StrCat(c.id, "/", suffix));
  return o;
}

}  // namespace

std::string PriceMatchKey(absl::string_view item) { return absl::StrCat(item, ".price_match"); }

absl::StatusOr<PriceCheck> ParsePriceCheckJson(absl::string_view object) {
  absl::StatusOr<json> parsed = ParseBoundedJson(object);
  if (!parsed.ok()) return parsed.status();
  const json& obj = *parsed;
  if (!obj.is_object()) return absl::InvalidArgumentError("expected a JSON object");
  static const char* const kKnown[] = {"item", "currency",    "shelf", "pos",
                                       "list", "observed_at", "id"};
  for (const auto& [name, value] : obj.items()) {
    bool known = false;
    for (const char* k : kKnown) known = known || name == k;
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown field '", name, "' (known: item, currency, shelf, pos, list, observed_at, id)"));
    }
  }
  PriceCheck c;
  absl::StatusOr<std::string> s = StringField(obj, "item", true);
  if (!s.ok()) return s.status();
  c.item = *s;
  if (s = StringField(obj, "currency", true); !s.ok()) return s.status();
  c.currency = *s;
  if (s = StringField(obj, "id", false); !s.ok()) return s.status();
  c.id = *s;
  if (s = StringField(obj, "observed_at", false); !s.ok()) return s.status();
  if (!s->empty()) {
    std::string err;
    if (!absl::ParseTime(absl::RFC3339_full, *s, &c.observed_at, &err)) {
      return absl::InvalidArgumentError(absl::StrCat("observed_at: '", *s, "' is not RFC 3339"));
    }
  }
  const struct {
    const char* name;
    std::optional<int64_t>* out;
  } kPrices[] = {{"shelf", &c.shelf}, {"pos", &c.pos}, {"list", &c.list}};
  for (const auto& p : kPrices) {
    absl::StatusOr<std::optional<int64_t>> v = PriceField(obj, p.name, c.currency);
    if (!v.ok()) return v.status();
    *p.out = *v;
  }
  return c;
}

absl::StatusOr<std::vector<v1::Observation>> PriceCheckObservations(const PriceCheck& c,
                                                                    absl::Time now,
                                                                    const Limits& limits) {
  if (!c.shelf && !c.pos && !c.list) {
    return absl::InvalidArgumentError("no price: give at least one of shelf, pos, list");
  }
  const absl::Time at = c.observed_at == absl::InfinitePast() ? now : c.observed_at;
  std::vector<v1::Observation> out;
  if (c.shelf) out.push_back(PriceObservation(c, *c.shelf, v1::SHELF, "shelf", at));
  if (c.pos) out.push_back(PriceObservation(c, *c.pos, v1::POS, "pos", at));
  if (c.list) out.push_back(PriceObservation(c, *c.list, v1::LIST, "list", at));
  if (c.shelf && c.pos) {
    v1::Observation o;
    o.set_key(PriceMatchKey(c.item));
    o.mutable_check()->set_passed(*c.pos == *c.shelf);
    o.mutable_check()->set_critical(*c.pos > *c.shelf);
    *o.mutable_observed_at() = out.front().observed_at();
    if (!c.id.empty()) o.set_id(absl::StrCat(c.id, "/match"));
    out.push_back(std::move(o));
  }
  for (const v1::Observation& o : out) {
    if (absl::Status s = ValidateObservation(o, now, limits); !s.ok()) return s;
  }
  return out;
}

}  // namespace constance::agent
