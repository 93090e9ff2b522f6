// Loading and validating the catalog (catalog.h).
//
// Each mapping is read through a table of its keys with the shared YAML
// layer (constance/yaml_reader.h), so an unknown key, a wrong type or a
// value out of range is reported with the file, the line and the field
// path, in the same words as the agent's config, and nothing silently falls
// back to a default. What is here is the catalog's own: its key tables,
// opening hours, intervals and the checks across fields.
#include "collector/catalog.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <exception>
#include <functional>
#include <limits>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/civil_time.h"
#include "constance/money.h"
#include "constance/validate.h"
#include "constance/yaml_reader.h"

namespace constance::collector {
namespace {

constexpr int kMinutesPerDay = 24 * 60;

using yaml::Child;
using yaml::Field;
using yaml::Key;
using yaml::kNonNegative;
using yaml::kPositive;
using yaml::kRatio;
using yaml::Range;
using Parser = yaml::Reader;
template <typename T>
using Reader = yaml::ReadFn<T>;

// Ranges only the catalog uses.
constexpr Range kShare{0, 1, true, false};
constexpr Range kOpenUnit{0, 1, true, true};
constexpr Range kAccuracy{0, 0.5, true, true};

// List items remember their line for the engine's messages; intervals do not.
template <typename T>
absl::Status ListOf(const Parser& p, const Field& f, const std::vector<Key<T>>& keys,
                    std::vector<T>* out) {
  return p.List<T>(f, keys, out, [](const Field& item, T* value) {
    if constexpr (!std::is_same_v<T, Interval>) value->line = item.line;
  });
}

// A date (local midnight in `tz`) or an RFC 3339 time.
absl::Status ReadWhen(const Parser& p, const Field& f, absl::TimeZone tz, absl::Time* out) {
  std::string text;
  if (absl::Status s = p.Text(f, &text); !s.ok()) return s;
  absl::CivilDay day;
  // The round trip rejects dates absl would normalise (2026-02-30).
  if (absl::ParseCivilTime(text, &day) && absl::FormatCivilTime(day) == text) {
    *out = absl::FromCivil(day, tz);
    return absl::OkStatus();
  }
  std::string err;
  if (absl::ParseTime(absl::RFC3339_full, text, out, &err)) return absl::OkStatus();
  return p.Error(f, absl::StrCat("'", text,
                                 "' is not a date (2026-12-25) or an RFC 3339 time "
                                 "(2026-11-30T02:00:00Z)"));
}

// A mapping of names to text (labels, a price zone).
absl::Status ReadLabels(const Parser& p, const Field& f, std::map<std::string, std::string>* out) {
  return p.EachKey(f, [&](const std::string& name, const Field& value) {
    if (name.empty()) return p.Error(value, "label names must not be empty");
    return p.Text(value, &(*out)[name]);
  });
}

// Readers of one member, for the key tables.

template <typename T>
Reader<T> NumberAt(double T::*member, Range range) {
  return
      [=](const Parser& p, const Field& f, T* out) { return p.Number(f, range, &(out->*member)); };
}

template <typename T, typename Int>
Reader<T> IntegerAt(Int T::*member, int64_t min) {
  return [=](const Parser& p, const Field& f, T* out) {
    int64_t v = 0;
    const auto max = static_cast<int64_t>(
        std::min<uint64_t>(std::numeric_limits<Int>::max(), std::numeric_limits<int64_t>::max()));
    if (absl::Status s = p.Integer(f, min, max, &v); !s.ok()) return s;
    out->*member = static_cast<Int>(v);
    return absl::OkStatus();
  };
}

template <typename T>
Reader<T> DurationAt(absl::Duration T::*member, bool allow_zero = false) {
  return [=](const Parser& p, const Field& f, T* out) {
    return p.Duration(f, {allow_zero}, &(out->*member));
  };
}

template <typename T>
Reader<T> BoolAt(bool T::*member) {
  return [=](const Parser& p, const Field& f, T* out) { return p.Bool(f, &(out->*member)); };
}

template <typename T>
Reader<T> TextAt(std::string T::*member, absl::Status (*check)(absl::string_view) = nullptr) {
  return
      [=](const Parser& p, const Field& f, T* out) { return p.Validated(f, check, &(out->*member)); };
}

absl::Status NotEmpty(absl::string_view text) {
  return text.empty() ? absl::InvalidArgumentError("value: must not be empty") : absl::OkStatus();
}

// A peer group's key pattern: a key, or a key prefix ending in '*'.
absl::Status CheckKeyPattern(absl::string_view pattern) {
  if (pattern.empty() || pattern.back() != '*') return ValidateKey(pattern);
  pattern.remove_suffix(1);
  return pattern.empty() ? absl::OkStatus() : ValidateKey(pattern);
}

absl::Status CheckFamily(absl::string_view name) {
  v1::Family family;
  return ParseFamily(name, &family);
}

v1::Family FamilyFromName(absl::string_view name) {
  v1::Family family = v1::FAMILY_UNSPECIFIED;
  ParseFamily(name, &family).IgnoreError();  // Checked by CheckFamily first.
  return family;
}

// Opening hours.

// "08:00" -> 480. "24:00" only as a closing time.
bool ParseClock(absl::string_view text, bool closing, int* minutes) {
  std::pair<absl::string_view, absl::string_view> hm =
      absl::StrSplit(text, absl::MaxSplits(':', 1));
  if (hm.first.empty() || hm.first.size() > 2 || hm.second.size() != 2) return false;
  for (char c : absl::StrCat(hm.first, hm.second)) {
    if (!absl::ascii_isdigit(c)) return false;
  }
  int h = 0, m = 0;
  if (!absl::SimpleAtoi(hm.first, &h) || !absl::SimpleAtoi(hm.second, &m)) return false;
  if (m > 59 || h > 24 || (h == 24 && (m != 0 || !closing))) return false;
  *minutes = h * 60 + m;
  return true;
}

absl::Status ReadDay(const Parser& p, const Field& f, std::vector<std::pair<int, int>>* ranges) {
  std::string text;
  if (absl::Status s = p.Text(f, &text); !s.ok()) return s;
  ranges->clear();
  if (text == "closed") return absl::OkStatus();
  if (text == "24h") {
    ranges->push_back({0, kMinutesPerDay});
    return absl::OkStatus();
  }
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    part = absl::StripAsciiWhitespace(part);
    std::pair<absl::string_view, absl::string_view> oc =
        absl::StrSplit(part, absl::MaxSplits('-', 1));
    int open = 0, close = 0;
    if (!ParseClock(oc.first, false, &open) || !ParseClock(oc.second, true, &close)) {
      return p.Error(f, absl::StrCat("'", part,
                                     "' is not a range like 08:00-21:00 (a list: "
                                     "08:00-12:00,14:00-19:00; across midnight: 22:00-02:00; "
                                     "or 24h, closed)"));
    }
    if (close == open) {
      return p.Error(f,
                     absl::StrCat("'", part, "': close must differ from open (24h for all day)"));
    }
    // An earlier close is the next morning's: the night stays on this day.
    if (close < open) close += kMinutesPerDay;
    ranges->push_back({open, close});
  }
  std::sort(ranges->begin(), ranges->end());
  for (size_t i = 1; i < ranges->size(); ++i) {
    if ((*ranges)[i].first < (*ranges)[i - 1].second) {
      return p.Error(f, absl::StrCat("ranges of '", text, "' overlap"));
    }
  }
  return absl::OkStatus();
}

std::vector<Key<OpeningHours>> HoursKeys() {
  static constexpr const char* kDays[] = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"};
  std::vector<Key<OpeningHours>> keys;
  for (size_t d = 0; d < 7; ++d) {
    keys.push_back({kDays[d], [d](const Parser& p, const Field& f, OpeningHours* h) {
                      return ReadDay(p, f, &h->days[d]);
                    }});
  }
  return keys;
}

std::vector<Key<Interval>> IntervalKeys(absl::TimeZone tz) {
  return {
      {"from",
       [tz](const Parser& p, const Field& f, Interval* i) { return ReadWhen(p, f, tz, &i->from); },
       "an interval needs a start"},
      {"to",
       [tz](const Parser& p, const Field& f, Interval* i) {
         if (absl::Status s = ReadWhen(p, f, tz, &i->to); !s.ok()) return s;
         return i->to > i->from ? absl::OkStatus() : p.Error(f, "must be after from");
       },
       "an interval needs an end (closed: true closes for good)"},
      {"reason", TextAt(&Interval::reason)},
  };
}

std::vector<Key<LocationEntry>> LocationKeys() {
  using L = LocationEntry;
  return {
      {"id", TextAt(&L::id, ValidateLocationId), "every location needs an id"},
      {"labels", [](const Parser& p, const Field& f, L* l) { return ReadLabels(p, f, &l->labels); }},
      {"timezone",
       [](const Parser& p, const Field& f, L* l) {
         if (absl::Status s = p.Text(f, &l->timezone); !s.ok()) return s;
         if (l->timezone.empty() || !absl::LoadTimeZone(l->timezone, &l->tz)) {
           return p.Error(f, absl::StrCat("unknown time zone '", l->timezone,
                                          "' (expected an IANA name such as Europe/Paris)"));
         }
         return absl::OkStatus();
       }},
      {"hours",
       [](const Parser& p, const Field& f, L* l) {
         l->hours.always_open = false;  // Days not listed are closed.
         return p.Map(f, HoursKeys(), &l->hours);
       }},
      {"closures", [](const Parser& p, const Field& f,
                      L* l) { return ListOf(p, f, IntervalKeys(l->tz), &l->closures); }},
      {"maintenance", [](const Parser& p, const Field& f,
                         L* l) { return ListOf(p, f, IntervalKeys(l->tz), &l->maintenance); }},
      {"opened",
       [](const Parser& p, const Field& f, L* l) { return ReadWhen(p, f, l->tz, &l->opened); }},
      {"closed", BoolAt(&L::closed)},
      {"cadence", DurationAt(&L::cadence)},
      {"name", TextAt(&L::name)},
      {"publish", BoolAt(&L::publish)},
  };
}

absl::Status ReadLocations(const Parser& p, const Field& f, Catalog* c) {
  if (absl::Status s = ListOf(p, f, LocationKeys(), &c->locations); !s.ok()) return s;
  absl::flat_hash_map<std::string, size_t> first;
  for (size_t i = 0; i < c->locations.size(); ++i) {
    const LocationEntry& l = c->locations[i];
    auto [it, inserted] = first.emplace(l.id, i);
    if (!inserted) {
      return p.Error(l.line, absl::StrCat(f.path, "[", i, "].id"),
                     absl::StrCat("duplicate location id '", l.id, "' (first declared at line ",
                                  c->locations[it->second].line, ")"));
    }
  }
  c->Index();
  return absl::OkStatus();
}

std::vector<Key<PeerGroupRule>> PeerGroupKeys() {
  using G = PeerGroupRule;
  return {
      {"name", TextAt(&G::name, NotEmpty), "findings name the group"},
      {"label", TextAt(&G::label, NotEmpty), "locations sharing this label's value are peers"},
      {"families",
       [](const Parser& p, const Field& f, G* g) {
         return p.EachItem(f, [&](const Field& item) {
           std::string name;
           if (absl::Status s = p.Validated(item, CheckFamily, &name); !s.ok()) return s;
           g->families.push_back(FamilyFromName(name));
           return absl::OkStatus();
         });
       }},
      {"keys",
       [](const Parser& p, const Field& f, G* g) {
         return p.EachItem(f, [&](const Field& item) {
           return p.Validated(item, CheckKeyPattern, &g->keys.emplace_back());
         });
       }},
  };
}

absl::Status ReadPeerGroups(const Parser& p, const Field& f, Catalog* c) {
  if (absl::Status s = ListOf(p, f, PeerGroupKeys(), &c->peer_groups); !s.ok()) return s;
  absl::flat_hash_map<std::string, int> first;
  for (size_t i = 0; i < c->peer_groups.size(); ++i) {
    const PeerGroupRule& g = c->peer_groups[i];
    auto [it, inserted] = first.emplace(g.name, g.line);
    if (!inserted) {
      return p.Error(g.line, absl::StrCat(f.path, "[", i, "].name"),
                     absl::StrCat("duplicate peer group '", g.name, "' (first declared at line ",
                                  it->second, ")"));
    }
  }
  return absl::OkStatus();
}

std::vector<Key<PricePromise>> PricePromiseKeys() {
  using P = PricePromise;
  return {
      {"key", TextAt(&P::key, ValidateKey), "the item the price is for"},
      {"currency", TextAt(&P::currency, ValidateCurrency),
       "prices are only compared within one currency"},
      {"kind",
       [](const Parser& p, const Field& f, P* out) {
         static const std::pair<const char*, v1::PriceKind> kKinds[] = {
             {"shelf", v1::SHELF}, {"pos", v1::POS}, {"list", v1::LIST}, {"promo", v1::PROMO}};
         std::string text;
         if (absl::Status s = p.Text(f, &text); !s.ok()) return s;
         for (const auto& [name, kind] : kKinds) {
           if (text == name) {
             out->kind = kind;
             return absl::OkStatus();
           }
         }
         return p.Error(
             f, absl::StrCat("unknown kind '", text, "' (allowed: shelf, pos, list, promo)"));
       }},
      {"list",
       [](const Parser& p, const Field& f, P* out) {
         std::string text;
         if (absl::Status s = p.Text(f, &text); !s.ok()) return s;
         // `currency` is read first (table order) and is required.
         absl::StatusOr<int64_t> minor = ParseMoney(text, out->currency);
         if (!minor.ok()) return p.Error(f, minor.status().message());
         const int64_t max = Limits().max_price_minor_units;
         if (*minor >= max) {
           return p.Error(f, absl::StrCat("'", text, "' is not below ",
                                          FormatMoney(max, out->currency)));
         }
         out->list_minor_units = *minor;
         return absl::OkStatus();
       },
       "the promised price"},
      {"where", [](const Parser& p, const Field& f, P* out) { return ReadLabels(p, f, &out->where); }},
      {"effective", [](const Parser& p, const Field& f,
                       P* out) { return ReadWhen(p, f, absl::UTCTimeZone(), &out->effective); }},
      {"publish", BoolAt(&P::publish)},
  };
}

std::vector<Key<WaitPromise>> WaitPromiseKeys() {
  using W = WaitPromise;
  return {
      {"key", TextAt(&W::key, ValidateKey), "the service the promise is for"},
      {"within_seconds", NumberAt(&W::within_seconds, kPositive), "the promised wait"},
      {"share", NumberAt(&W::share, kShare)},
      {"publish", BoolAt(&W::publish)},
  };
}

std::vector<Key<CheckPromise>> CheckPromiseKeys() {
  using C = CheckPromise;
  return {
      {"key", TextAt(&C::key, ValidateKey), "the check the promise is for"},
      {"critical", BoolAt(&C::critical)},
      {"min_pass_rate", NumberAt(&C::min_pass_rate, kRatio)},
      {"publish", BoolAt(&C::publish)},
  };
}

std::vector<Key<Catalog>> PromiseKeys() {
  return {
      {"prices", [](const Parser& p, const Field& f,
                    Catalog* c) { return ListOf(p, f, PricePromiseKeys(), &c->price_promises); }},
      {"waits", [](const Parser& p, const Field& f,
                   Catalog* c) { return ListOf(p, f, WaitPromiseKeys(), &c->wait_promises); }},
      {"checks", [](const Parser& p, const Field& f,
                    Catalog* c) { return ListOf(p, f, CheckPromiseKeys(), &c->check_promises); }},
  };
}

std::vector<Key<Exception>> ExceptionKeys(const Catalog& catalog) {
  using E = Exception;
  return {
      {"location", TextAt(&E::location, ValidateLocationId), "the location allowed to deviate"},
      {"family",
       [](const Parser& p, const Field& f, E* e) {
         std::string name;
         if (absl::Status s = p.Validated(f, CheckFamily, &name); !s.ok()) return s;
         e->family = FamilyFromName(name);
         return absl::OkStatus();
       },
       "price, wait, compliance or score"},
      {"key", TextAt(&E::key, ValidateKey), "the key allowed to deviate"},
      {"owner", TextAt(&E::owner, NotEmpty), "someone must answer for the deviation"},
      {"reason", TextAt(&E::reason)},
      {"expires",
       [&catalog](const Parser& p, const Field& f, E* e) {
         // A date is midnight where the location is, when it is declared.
         const LocationEntry* l = catalog.FindLocation(e->location);
         return ReadWhen(p, f, l != nullptr ? l->tz : absl::UTCTimeZone(), &e->expires);
       },
       "an approved deviation must expire"},
  };
}

std::vector<Key<KeyJudging>> JudgingKeys() {
  using J = KeyJudging;
  return {
      {"key", TextAt(&J::key, CheckKeyPattern), "the compliance key (or key prefix*) judged"},
      {"mode",
       [](const Parser& p, const Field& f, J* out) {
         std::string text;
         if (absl::Status s = p.Text(f, &text); !s.ok()) return s;
         if (text == "rate") {
           out->mode = JudgingMode::kRate;
         } else if (text == "latest") {
           out->mode = JudgingMode::kLatest;
         } else {
           return p.Error(f, absl::StrCat("unknown mode '", text,
                                          "' (allowed: rate, the share passed over the window; "
                                          "latest, the most recent result decides)"));
         }
         return absl::OkStatus();
       }},
      {"expected_every",
       [](const Parser& p, const Field& f, J* out) {
         return p.Duration(f, {.allow_zero = false, .days = true}, &out->expected_every);
       }},
  };
}

std::vector<Key<Thresholds>> ThresholdKeys() {
  using T = Thresholds;
  return {
      {"z_threshold", NumberAt(&T::z_threshold, kPositive)},
      {"min_group", IntegerAt(&T::min_group, 2)},
      {"min_level", IntegerAt(&T::min_level, 2)},
      {"persistence", IntegerAt(&T::persistence, 1)},
      {"hysteresis", NumberAt(&T::hysteresis, kRatio)},
      {"zone_min_keys", IntegerAt(&T::zone_min_keys, 1)},
      {"rollout_grace", DurationAt(&T::rollout_grace, /*allow_zero=*/true)},
      {"unkeepable_share", NumberAt(&T::unkeepable_share, kRatio)},
      {"irregular_window", DurationAt(&T::irregular_window)},
      {"irregular_settle", DurationAt(&T::irregular_settle, /*allow_zero=*/true)},
      {"irregular_peer_share", NumberAt(&T::irregular_peer_share, kRatio)},
      {"flip_changes", IntegerAt(&T::flip_changes, 2)},  // One change is not a flip.
      {"flip_window", DurationAt(&T::flip_window)},
      {"finding_cap", IntegerAt(&T::finding_cap, 1)},
      {"location_ttl", DurationAt(&T::location_ttl)},
      {"restart_grace", DurationAt(&T::restart_grace, /*allow_zero=*/true)},
      {"stats_interval", DurationAt(&T::stats_interval)},
      {"evaluation_interval", DurationAt(&T::evaluation_interval)},
      {"retention",
       [](const Parser& p, const Field& f, T* out) {
         return p.Duration(f, {.allow_zero = true, .days = true}, &out->retention);
       }},
      {"location_retention",
       [](const Parser& p, const Field& f, T* out) {
         return p.Duration(f, {.allow_zero = false, .days = true}, &out->location_retention);
       }},
  };
}

// The wait family also carries its sketch's keys.
struct WaitFamily : FamilyPolicy {
  WaitPolicy sketch;
};

// T is FamilyPolicy or WaitFamily; the explicit <T> converts the base's
// member pointers.
template <typename T>
std::vector<Key<T>> FamilyKeys() {
  return {
      {"floor_ratio", NumberAt<T>(&T::floor_ratio, kRatio)},
      {"floor_absolute", NumberAt<T>(&T::floor_absolute, kNonNegative)},
      {"ttl", DurationAt<T>(&T::ttl)},
      {"window", DurationAt<T>(&T::window)},
      {"bin", DurationAt<T>(&T::bin)},
      {"min_samples", IntegerAt<T, uint64_t>(&T::min_samples, 1)},
  };
}

absl::Status CheckBins(const Parser& p, const Field& f, const FamilyPolicy& policy) {
  if (policy.bin <= policy.window) return absl::OkStatus();
  return p.Error(
      f.line, Child(f.path, "bin"),
      absl::StrCat("must not exceed window (", absl::FormatDuration(policy.window), ")"));
}

absl::Status ReadFamily(const Parser& p, const Field& f, FamilyPolicy* policy) {
  if (absl::Status s = p.Map(f, FamilyKeys<FamilyPolicy>(), policy); !s.ok()) return s;
  return CheckBins(p, f, *policy);
}

std::vector<Key<Catalog>> FamiliesKeys() {
  return {
      {"price",
       [](const Parser& p, const Field& f, Catalog* c) { return ReadFamily(p, f, &c->price); }},
      {"wait",
       [](const Parser& p, const Field& f, Catalog* c) {
         std::vector<Key<WaitFamily>> keys = FamilyKeys<WaitFamily>();
         keys.push_back({"compared_quantile", [](const Parser& p, const Field& f, WaitFamily* w) {
                           return p.Number(f, kOpenUnit, &w->sketch.compared_quantile);
                         }});
         keys.push_back({"relative_accuracy", [](const Parser& p, const Field& f, WaitFamily* w) {
                           return p.Number(f, kAccuracy, &w->sketch.relative_accuracy);
                         }});
         keys.push_back({"hour_of_week", [](const Parser& p, const Field& f, WaitFamily* w) {
                           return p.Bool(f, &w->sketch.hour_of_week);
                         }});
         WaitFamily wait{{c->wait}, c->wait_sketch};
         if (absl::Status s = p.Map(f, keys, &wait); !s.ok()) return s;
         c->wait = wait;  // Slices off the sketch, stored apart.
         c->wait_sketch = wait.sketch;
         return CheckBins(p, f, c->wait);
       }},
      {"compliance", [](const Parser& p, const Field& f,
                        Catalog* c) { return ReadFamily(p, f, &c->compliance); }},
      {"score",
       [](const Parser& p, const Field& f, Catalog* c) { return ReadFamily(p, f, &c->score); }},
  };
}

std::vector<Key<DriftPolicy>> DriftKeys() {
  using D = DriftPolicy;
  return {
      {"bin", DurationAt(&D::bin)},
      {"ewma_lambda", NumberAt(&D::ewma_lambda, kShare)},
      {"ewma_limit", NumberAt(&D::ewma_limit, kPositive)},
      {"cusum_k", NumberAt(&D::cusum_k, kNonNegative)},
      {"cusum_h", NumberAt(&D::cusum_h, kPositive)},
      {"baseline_bins", IntegerAt(&D::baseline_bins, 1)},
  };
}

std::vector<Key<TrustPolicy>> TrustKeys() {
  using T = TrustPolicy;
  return {
      {"deposit", NumberAt(&T::deposit, kNonNegative)},
      {"withdrawal", NumberAt(&T::withdrawal, kNonNegative)},
      {"half_life", DurationAt(&T::half_life)},
  };
}

template <typename Section>
Reader<Catalog> SectionAt(Section Catalog::*member, std::vector<Key<Section>> (*keys)()) {
  return
      [=](const Parser& p, const Field& f, Catalog* c) { return p.Map(f, keys(), &(c->*member)); };
}

// Locations come before exceptions, whose dates use a location's zone.
std::vector<Key<Catalog>> CatalogKeys() {
  return {
      {"auto_register", BoolAt(&Catalog::auto_register)},
      {"thresholds", SectionAt(&Catalog::thresholds, ThresholdKeys)},
      {"families",
       [](const Parser& p, const Field& f, Catalog* c) { return p.Map(f, FamiliesKeys(), c); }},
      {"drift", SectionAt(&Catalog::drift, DriftKeys)},
      {"trust", SectionAt(&Catalog::trust, TrustKeys)},
      {"locations", ReadLocations},
      {"peer_groups", ReadPeerGroups},
      {"promises",
       [](const Parser& p, const Field& f, Catalog* c) { return p.Map(f, PromiseKeys(), c); }},
      {"exceptions", [](const Parser& p, const Field& f,
                        Catalog* c) { return ListOf(p, f, ExceptionKeys(*c), &c->exceptions); }},
      {"judging", [](const Parser& p, const Field& f,
                     Catalog* c) { return ListOf(p, f, JudgingKeys(), &c->judging); }},
  };
}

// Whether `minute` of a day whose ranges are `today`, after a day whose
// ranges are `yesterday`, is inside a range (yesterday's may run past 24:00).
bool InsideHours(const std::vector<std::pair<int, int>>& today,
                 const std::vector<std::pair<int, int>>& yesterday, int minute) {
  for (const auto& [open, close] : today) {
    if (open <= minute && minute < close) return true;
  }
  for (const auto& [open, close] : yesterday) {
    if (minute + kMinutesPerDay < close) return true;
  }
  return false;
}

}  // namespace

FamilyPolicy FamilyDefaults(v1::Family family) {
  // floor_ratio, floor_absolute, ttl, window, bin, min_samples.
  switch (family) {
    case v1::FAMILY_PRICE:  // Window and bin unused: a price is its latest value.
      return {0.01, 1, absl::Hours(720), absl::Hours(1), absl::Minutes(15), 1};
    case v1::FAMILY_WAIT:
      return {0.10, 0, absl::Hours(2), absl::Hours(1), absl::Minutes(15), 30};
    case v1::FAMILY_COMPLIANCE:
      return {0, 0.05, absl::Hours(336), absl::Hours(168), absl::Hours(24), 5};
    case v1::FAMILY_SCORE:
      return {0.05, 0, absl::Hours(2160), absl::Hours(720), absl::Hours(24), 1};
    default:
      return {};
  }
}

Catalog DefaultCatalog() {
  Catalog c;
  c.price = FamilyDefaults(v1::FAMILY_PRICE);
  c.wait = FamilyDefaults(v1::FAMILY_WAIT);
  c.compliance = FamilyDefaults(v1::FAMILY_COMPLIANCE);
  c.score = FamilyDefaults(v1::FAMILY_SCORE);
  return c;
}

void Catalog::Index() {
  location_index.clear();
  for (size_t i = 0; i < locations.size(); ++i) location_index.emplace(locations[i].id, i);
  price_promises_by_key.clear();
  for (size_t i = 0; i < price_promises.size(); ++i) {
    price_promises_by_key[price_promises[i].key].push_back(static_cast<uint32_t>(i));
  }
  indexed_price_promises = price_promises.size();
  exceptions_by_key.clear();
  for (size_t i = 0; i < exceptions.size(); ++i) {
    exceptions_by_key[exceptions[i].key].push_back(static_cast<uint32_t>(i));
  }
  indexed_exceptions = exceptions.size();
  std::vector<absl::flat_hash_map<std::string, uint32_t>> group_index(peer_groups.size());
  peer_group_names.assign(peer_groups.size(), {kChainGroup});
  for (auto& index : group_index) index.emplace(kChainGroup, 0);
  for (LocationEntry& l : locations) {
    l.groups.clear();
    for (size_t r = 0; r < peer_groups.size(); ++r) {
      std::vector<std::string>& names = peer_group_names[r];
      std::string name = PeerGroupOf(peer_groups[r], l);
      auto [it, added] = group_index[r].try_emplace(name, static_cast<uint32_t>(names.size()));
      if (added) names.push_back(std::move(name));
      l.groups.push_back(it->second);
    }
  }
}

std::string PeerGroupOf(const PeerGroupRule& rule, const LocationEntry& entry) {
  auto it = entry.labels.find(rule.label);
  if (it == entry.labels.end()) return kChainGroup;
  return absl::StrCat(rule.name, "=", it->second);
}

namespace {

// The entries of `all` that `wanted` takes, in order: those `by_key`
// holds for `key` when it indexes every entry, else (entries added in
// code since Index()) every entry.
template <typename T, typename Wanted>
std::vector<const T*> OfKey(const std::vector<T>& all,
                            const absl::flat_hash_map<std::string, std::vector<uint32_t>>& by_key,
                            size_t indexed, absl::string_view key, Wanted wanted) {
  std::vector<const T*> out;
  if (indexed != all.size()) {
    for (const T& t : all) {
      if (t.key == key && wanted(t)) out.push_back(&t);
    }
    return out;
  }
  const auto it = by_key.find(key);
  if (it == by_key.end()) return out;
  for (uint32_t i : it->second) {
    if (wanted(all[i])) out.push_back(&all[i]);
  }
  return out;
}

}  // namespace

std::vector<const PricePromise*> Catalog::PricePromisesOf(absl::string_view key,
                                                          absl::string_view currency,
                                                          v1::PriceKind kind) const {
  return OfKey(price_promises, price_promises_by_key, indexed_price_promises, key,
               [&](const PricePromise& p) { return p.currency == currency && p.kind == kind; });
}

std::vector<const Exception*> Catalog::ExceptionsOf(v1::Family family,
                                                    absl::string_view key) const {
  return OfKey(exceptions, exceptions_by_key, indexed_exceptions, key,
               [&](const Exception& e) { return e.family == family; });
}

const LocationEntry* Catalog::FindLocation(absl::string_view id) const {
  auto it = location_index.find(id);
  return it == location_index.end() ? nullptr : &locations[it->second];
}

const FamilyPolicy& Catalog::policy(v1::Family family) const {
  switch (family) {
    case v1::FAMILY_PRICE:
      return price;
    case v1::FAMILY_WAIT:
      return wait;
    case v1::FAMILY_COMPLIANCE:
      return compliance;
    case v1::FAMILY_SCORE:
      return score;
    default: {
      // Validated observations always have a family; this only keeps the
      // reference valid.
      static const FamilyPolicy kUnspecified;
      return kUnspecified;
    }
  }
}

bool KeyPatternMatches(absl::string_view pattern, absl::string_view key) {
  if (!pattern.empty() && pattern.back() == '*') {
    return absl::StartsWith(key, pattern.substr(0, pattern.size() - 1));
  }
  return pattern == key;
}

const KeyJudging* Catalog::JudgingFor(absl::string_view key) const {
  for (const KeyJudging& j : judging) {
    if (KeyPatternMatches(j.key, key)) return &j;
  }
  return nullptr;
}

FamilyPolicy Catalog::CompliancePolicy(absl::string_view key) const {
  FamilyPolicy p = compliance;
  const KeyJudging* j = JudgingFor(key);
  if (j == nullptr || j->expected_every <= absl::ZeroDuration()) return p;
  p.ttl = j->expected_every;
  p.window = std::max(p.window, j->expected_every);
  // At that cadence the window holds window / expected_every results: no
  // more are asked for (at least one), or a key inspected once a year
  // would never be compared under the family's min_samples (5). Thin
  // evidence is the rate rule's to weigh (stats.h, RateShortfall).
  const int64_t per_window = std::max<int64_t>(1, p.window / j->expected_every);
  p.min_samples = std::min(p.min_samples, static_cast<uint64_t>(per_window));
  return p;
}

bool Catalog::ExpectedOpen(absl::string_view location, absl::Time t) const {
  const LocationEntry* l = FindLocation(location);
  if (l == nullptr || l->closed || t < l->opened) return false;
  for (const Interval& i : l->closures) {
    if (i.Contains(t)) return false;
  }
  for (const Interval& i : l->maintenance) {
    if (i.Contains(t)) return false;
  }
  if (l->hours.always_open) return true;
  // Hours are wall-clock times: convert in the location's zone so a DST
  // change moves them with the clocks.
  const absl::CivilSecond local = absl::ToCivilSecond(t, l->tz);
  const int day = static_cast<int>(absl::GetWeekday(absl::CivilDay(local)));  // 0 = Monday.
  return InsideHours(l->hours.days[day], l->hours.days[(day + 6) % 7],
                     local.hour() * 60 + local.minute());
}

absl::StatusOr<Catalog> ParseCatalog(absl::string_view yaml, absl::string_view filename) {
  Catalog catalog = DefaultCatalog();
  catalog.path = std::string(filename);
  const Parser parser(filename, "catalog");
  if (absl::Status s = yaml::Parse(yaml, parser, CatalogKeys(), &catalog); !s.ok()) return s;
  catalog.Index();  // Whatever order its sections came in.
  return catalog;
}

absl::StatusOr<Catalog> LoadCatalog(const std::string& path) {
  absl::StatusOr<std::string> yaml = yaml::ReadConfigFile(path);
  if (!yaml.ok()) return yaml.status();
  return ParseCatalog(*yaml, path);
}

}  // namespace constance::collector
