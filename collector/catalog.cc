// Loading and validating the catalog (catalog.h).
//
// yaml-cpp builds the tree; what is written by hand here is the part no
// library does: each mapping is read through a table of its keys, so an
// unknown key, a wrong type or a value out of range is reported with the
// file, the line and the field path, and nothing silently falls back to a
// default.
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
#include "yaml-cpp/yaml.h"

namespace constance::collector {
namespace {

constexpr int kMinutesPerDay = 24 * 60;
constexpr double kInf = std::numeric_limits<double>::infinity();

// A node with its dotted field path and the line to blame. An empty value
// is blamed on its key's line: yaml-cpp marks it at the next token.
struct Field {
  YAML::Node node;
  std::string path;
  int line = 0;
};

int LineOf(const YAML::Node& node, int fallback) {
  const int line = node.Mark().line;
  return line < 0 ? fallback : line + 1;
}

std::string Child(absl::string_view path, absl::string_view key) {
  return path.empty() ? std::string(key) : absl::StrCat(path, ".", key);
}

// Numeric ranges, with their wording for messages.
struct Range {
  double lo, hi;
  bool lo_open, hi_open;
};
constexpr Range kRatio{0, 1, false, false};
constexpr Range kShare{0, 1, true, false};
constexpr Range kOpenUnit{0, 1, true, true};
constexpr Range kAccuracy{0, 0.5, true, true};
constexpr Range kPositive{0, kInf, true, true};
constexpr Range kNonNegative{0, kInf, false, true};

bool InRange(double v, const Range& r) {
  return (r.lo_open ? v > r.lo : v >= r.lo) && (r.hi_open ? v < r.hi : v <= r.hi);
}

std::string Describe(const Range& r) {
  if (r.hi == kInf) return absl::StrCat(r.lo_open ? "> " : ">= ", r.lo);
  return absl::StrCat("in ", r.lo_open ? "(" : "[", r.lo, ", ", r.hi, r.hi_open ? ")" : "]");
}

class Parser;
template <typename T>
using Reader = std::function<absl::Status(const Parser&, const Field&, T*)>;

// One key of a mapping. `required`, when set, says why the key may not be
// left out; it ends up in the message.
// Whole days: "365d" (a cadence of inspections reads better in days).
bool ParseDays(absl::string_view text, absl::Duration* out) {
  if (text.size() < 2 || text.back() != 'd') return false;
  int64_t days = 0;
  text.remove_suffix(1);
  for (char c : text) {
    if (!absl::ascii_isdigit(c)) return false;
  }
  if (!absl::SimpleAtoi(text, &days) || days > 100 * 366) return false;
  *out = absl::Hours(24 * days);
  return true;
}

template <typename T>
struct Key {
  std::string name;
  Reader<T> read;
  const char* required = nullptr;
};

// List items remember their line for the engine's messages; intervals do not.
template <typename T>
void SetLine(int line, T* item) {
  item->line = line;
}
void SetLine(int, Interval*) {}

// Reads values out of one file; every error names `filename_`.
class Parser {
 public:
  Parser(absl::string_view filename, const Catalog* catalog)
      : filename_(filename), catalog_(catalog) {}

  // The catalog being built: exceptions read their location's time zone.
  const Catalog& catalog() const { return *catalog_; }

  absl::Status Error(int line, absl::string_view path, absl::string_view what) const {
    if (path.empty()) path = "catalog";  // The top-level mapping.
    return absl::InvalidArgumentError(absl::StrCat(filename_, ":", line, ": ", path, ": ", what));
  }
  absl::Status Error(const Field& f, absl::string_view what) const {
    return Error(f.line, f.path, what);
  }

  // A scalar, quoted or not. "" is a value; an empty `key:` is not.
  absl::Status Text(const Field& f, std::string* out) const {
    if (f.node.IsNull()) return Error(f, "has no value");
    if (!f.node.IsScalar()) return Error(f, "expected a single value, not a list or mapping");
    *out = f.node.Scalar();
    return absl::OkStatus();
  }

  // Text passed through one of constance's validators, whose messages start
  // with their own field name (dropped: ours is more precise).
  absl::Status Checked(const Field& f, absl::Status (*check)(absl::string_view),
                       std::string* out) const {
    if (absl::Status s = Text(f, out); !s.ok()) return s;
    if (check == nullptr) return absl::OkStatus();
    absl::Status s = check(*out);
    if (s.ok()) return s;
    absl::string_view why = s.message();
    if (size_t colon = why.find(": "); colon != why.npos) why.remove_prefix(colon + 2);
    return Error(f, absl::StrCat("'", *out, "': ", why));
  }

  // Numbers must be plain scalars: a quoted "3.5" is a string in YAML.
  absl::Status Number(const Field& f, const Range& r, double* out) const {
    std::string text;
    if (absl::Status s = Text(f, &text); !s.ok()) return s;
    double v = 0;
    if (f.node.Tag() == "!" || !absl::SimpleAtod(text, &v) || !std::isfinite(v)) {
      return Error(f, absl::StrCat("expected a number ", Describe(r), ", got '", text, "'"));
    }
    if (!InRange(v, r)) return Error(f, absl::StrCat("must be ", Describe(r), ", got ", text));
    *out = v;
    return absl::OkStatus();
  }

  absl::Status Integer(const Field& f, int64_t min, int64_t max, int64_t* out) const {
    std::string text;
    if (absl::Status s = Text(f, &text); !s.ok()) return s;
    int64_t v = 0;
    if (f.node.Tag() == "!" || !absl::SimpleAtoi(text, &v)) {
      return Error(f, absl::StrCat("expected a whole number >= ", min, ", got '", text, "'"));
    }
    if (v < min) return Error(f, absl::StrCat("must be >= ", min, ", got ", text));
    if (v > max) return Error(f, absl::StrCat("must be <= ", max, ", got ", text));
    *out = v;
    return absl::OkStatus();
  }

  absl::Status Bool(const Field& f, bool* out) const {
    std::string text;
    if (absl::Status s = Text(f, &text); !s.ok()) return s;
    if (f.node.Tag() == "!" || !YAML::convert<bool>::decode(f.node, *out)) {
      return Error(f, absl::StrCat("expected true or false, got '", text, "'"));
    }
    return absl::OkStatus();
  }

  // `days`: whole days ("365d") are read too, for cadences counted in days.
  absl::Status Duration(const Field& f, bool allow_zero, absl::Duration* out,
                        bool days = false) const {
    std::string text;
    if (absl::Status s = Text(f, &text); !s.ok()) return s;
    absl::Duration d;
    if (!(days && ParseDays(text, &d)) &&
        (!absl::ParseDuration(text, &d) || d == absl::InfiniteDuration() ||
         d == -absl::InfiniteDuration())) {
      return Error(f, absl::StrCat("'", text, "' is not a duration (e.g. 90s, 1h30m, 168h",
                                   days ? ", 365d)" : ")"));
    }
    if (d < absl::ZeroDuration() || (!allow_zero && d == absl::ZeroDuration())) {
      return Error(f, absl::StrCat(allow_zero ? "must not be negative" : "must be positive",
                                   ", got ", text));
    }
    *out = d;
    return absl::OkStatus();
  }

  // A date (local midnight in `tz`) or an RFC 3339 time.
  absl::Status When(const Field& f, absl::TimeZone tz, absl::Time* out) const {
    std::string text;
    if (absl::Status s = Text(f, &text); !s.ok()) return s;
    absl::CivilDay day;
    // The round trip rejects dates absl would normalise (2026-02-30).
    if (absl::ParseCivilTime(text, &day) && absl::FormatCivilTime(day) == text) {
      *out = absl::FromCivil(day, tz);
      return absl::OkStatus();
    }
    std::string err;
    if (absl::ParseTime(absl::RFC3339_full, text, out, &err)) return absl::OkStatus();
    return Error(f, absl::StrCat("'", text,
                                 "' is not a date (2026-12-25) or an RFC 3339 time "
                                 "(2026-11-30T02:00:00Z)"));
  }

  // A mapping of names to text (labels, a price zone).
  absl::Status Labels(const Field& f, std::map<std::string, std::string>* out) const {
    return EachKey(f, [&](const std::string& name, const Field& value) {
      if (name.empty()) return Error(value, "label names must not be empty");
      return Text(value, &(*out)[name]);
    });
  }

  absl::Status TextList(const Field& f,
                        const std::function<absl::Status(const Field&)>& each) const {
    if (f.node.IsNull()) return absl::OkStatus();
    if (!f.node.IsSequence()) return Error(f, "expected a list");
    for (size_t i = 0; i < f.node.size(); ++i) {
      const YAML::Node item = f.node[i];
      if (absl::Status s = each({item, absl::StrCat(f.path, "[", i, "]"), LineOf(item, f.line)});
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  // Reads a mapping through its key table, in table order (so a location's
  // time zone is known before its closures are read). An empty value is an
  // empty mapping: `thresholds:` with everything commented out is valid.
  template <typename T>
  absl::Status Map(const Field& f, const std::vector<Key<T>>& keys, T* out) const {
    absl::flat_hash_map<std::string, Field> present;
    absl::Status s = EachKey(f, [&](const std::string& name, const Field& value) {
      const bool known =
          std::any_of(keys.begin(), keys.end(), [&](const Key<T>& k) { return k.name == name; });
      if (!known) {
        std::vector<std::string> allowed;
        for (const Key<T>& k : keys) allowed.push_back(k.name);
        return Error(value.line, value.path,
                     absl::StrCat("unknown key (allowed: ", absl::StrJoin(allowed, ", "), ")"));
      }
      present.emplace(name, value);
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    for (const Key<T>& k : keys) {
      auto it = present.find(k.name);
      if (it == present.end()) {
        if (k.required == nullptr) continue;
        return Error(f.line, Child(f.path, k.name), absl::StrCat("required (", k.required, ")"));
      }
      if (absl::Status s = k.read(*this, it->second, out); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  template <typename T>
  absl::Status List(const Field& f, const std::vector<Key<T>>& keys, std::vector<T>* out) const {
    return TextList(f, [&](const Field& item) {
      T value;
      SetLine(item.line, &value);
      if (absl::Status s = Map(item, keys, &value); !s.ok()) return s;
      out->push_back(std::move(value));
      return absl::OkStatus();
    });
  }

 private:
  // Calls `each` for every key of mapping `f`, rejecting duplicate keys
  // (yaml-cpp keeps both, and which one wins would be a guess).
  template <typename Fn>
  absl::Status EachKey(const Field& f, Fn each) const {
    if (f.node.IsNull()) return absl::OkStatus();
    if (!f.node.IsMap()) return Error(f, "expected a mapping (key: value)");
    absl::flat_hash_map<std::string, int> seen;
    for (const auto& kv : f.node) {
      const int key_line = LineOf(kv.first, f.line);
      if (!kv.first.IsScalar()) return Error(key_line, f.path, "expected a key name");
      const std::string& name = kv.first.Scalar();
      const std::string path = Child(f.path, name);
      auto [it, inserted] = seen.emplace(name, key_line);
      if (!inserted) {
        return Error(key_line, path,
                     absl::StrCat("duplicate key (first at line ", it->second, ")"));
      }
      const int line = kv.second.IsNull() ? key_line : LineOf(kv.second, key_line);
      if (absl::Status s = each(name, Field{kv.second, path, line}); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  std::string filename_;
  const Catalog* catalog_;
};

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
    return p.Duration(f, allow_zero, &(out->*member));
  };
}

template <typename T>
Reader<T> BoolAt(bool T::*member) {
  return [=](const Parser& p, const Field& f, T* out) { return p.Bool(f, &(out->*member)); };
}

template <typename T>
Reader<T> TextAt(std::string T::*member, absl::Status (*check)(absl::string_view) = nullptr) {
  return
      [=](const Parser& p, const Field& f, T* out) { return p.Checked(f, check, &(out->*member)); };
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
       [tz](const Parser& p, const Field& f, Interval* i) { return p.When(f, tz, &i->from); },
       "an interval needs a start"},
      {"to",
       [tz](const Parser& p, const Field& f, Interval* i) {
         if (absl::Status s = p.When(f, tz, &i->to); !s.ok()) return s;
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
      {"labels", [](const Parser& p, const Field& f, L* l) { return p.Labels(f, &l->labels); }},
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
                      L* l) { return p.List(f, IntervalKeys(l->tz), &l->closures); }},
      {"maintenance", [](const Parser& p, const Field& f,
                         L* l) { return p.List(f, IntervalKeys(l->tz), &l->maintenance); }},
      {"opened",
       [](const Parser& p, const Field& f, L* l) { return p.When(f, l->tz, &l->opened); }},
      {"closed", BoolAt(&L::closed)},
      {"cadence", DurationAt(&L::cadence)},
      {"name", TextAt(&L::name)},
      {"publish", BoolAt(&L::publish)},
  };
}

absl::Status ReadLocations(const Parser& p, const Field& f, Catalog* c) {
  if (absl::Status s = p.List(f, LocationKeys(), &c->locations); !s.ok()) return s;
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
         return p.TextList(f, [&](const Field& item) {
           std::string name;
           if (absl::Status s = p.Checked(item, CheckFamily, &name); !s.ok()) return s;
           g->families.push_back(FamilyFromName(name));
           return absl::OkStatus();
         });
       }},
      {"keys",
       [](const Parser& p, const Field& f, G* g) {
         return p.TextList(f, [&](const Field& item) {
           return p.Checked(item, CheckKeyPattern, &g->keys.emplace_back());
         });
       }},
  };
}

absl::Status ReadPeerGroups(const Parser& p, const Field& f, Catalog* c) {
  if (absl::Status s = p.List(f, PeerGroupKeys(), &c->peer_groups); !s.ok()) return s;
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
      {"where", [](const Parser& p, const Field& f, P* out) { return p.Labels(f, &out->where); }},
      {"effective", [](const Parser& p, const Field& f,
                       P* out) { return p.When(f, absl::UTCTimeZone(), &out->effective); }},
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
                    Catalog* c) { return p.List(f, PricePromiseKeys(), &c->price_promises); }},
      {"waits", [](const Parser& p, const Field& f,
                   Catalog* c) { return p.List(f, WaitPromiseKeys(), &c->wait_promises); }},
      {"checks", [](const Parser& p, const Field& f,
                    Catalog* c) { return p.List(f, CheckPromiseKeys(), &c->check_promises); }},
  };
}

std::vector<Key<Exception>> ExceptionKeys() {
  using E = Exception;
  return {
      {"location", TextAt(&E::location, ValidateLocationId), "the location allowed to deviate"},
      {"family",
       [](const Parser& p, const Field& f, E* e) {
         std::string name;
         if (absl::Status s = p.Checked(f, CheckFamily, &name); !s.ok()) return s;
         e->family = FamilyFromName(name);
         return absl::OkStatus();
       },
       "price, wait, compliance or score"},
      {"key", TextAt(&E::key, ValidateKey), "the key allowed to deviate"},
      {"owner", TextAt(&E::owner, NotEmpty), "someone must answer for the deviation"},
      {"reason", TextAt(&E::reason)},
      {"expires",
       [](const Parser& p, const Field& f, E* e) {
         // A date is midnight where the location is, when it is declared.
         const LocationEntry* l = p.catalog().FindLocation(e->location);
         return p.When(f, l != nullptr ? l->tz : absl::UTCTimeZone(), &e->expires);
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
         return p.Duration(f, /*allow_zero=*/false, &out->expected_every, /*days=*/true);
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
                        Catalog* c) { return p.List(f, ExceptionKeys(), &c->exceptions); }},
      {"judging", [](const Parser& p, const Field& f,
                     Catalog* c) { return p.List(f, JudgingKeys(), &c->judging); }},
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
  const Parser parser(filename, &catalog);
  absl::Status status;
  // yaml-cpp reports syntax errors by throwing; values are checked before
  // any conversion that could throw, so the second handler is a backstop
  // that keeps every exception inside.
  try {
    const YAML::Node root = YAML::Load(std::string(yaml));
    if (!root.IsNull() && !root.IsMap()) {
      return parser.Error(LineOf(root, 1), "catalog",
                          "expected a mapping of sections (thresholds:, locations:, ...)");
    }
    status = parser.Map(Field{root, "", 1}, CatalogKeys(), &catalog);
  } catch (const YAML::ParserException& e) {
    return parser.Error(e.mark.line + 1, "syntax error", e.msg);
  } catch (const YAML::Exception& e) {
    return parser.Error(std::max(e.mark.line + 1, 1), "yaml", e.msg);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(filename, ": ", e.what()));
  }
  if (!status.ok()) return status;
  return catalog;
}

absl::StatusOr<Catalog> LoadCatalog(const std::string& path) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"), std::fclose);
  if (file == nullptr) {
    const int error = errno;
    return absl::ErrnoToStatus(error, absl::StrCat(path, ": cannot open"));
  }
  std::string yaml;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), file.get())) > 0) yaml.append(buf, n);
  if (std::ferror(file.get())) {
    const int error = errno;  // EISDIR for a directory.
    return absl::ErrnoToStatus(error, absl::StrCat(path, ": cannot read"));
  }
  return ParseCatalog(yaml, path);
}

}  // namespace constance::collector
