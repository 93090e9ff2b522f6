#include "agent/tickets.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/bounded_json.h"
#include "agent/input_values.h"
#include "google/protobuf/util/time_util.h"
#include "nlohmann/json.hpp"

namespace constance::agent {
namespace {

using nlohmann::json;
using Type = TicketEvent::Type;

constexpr char kStatePrefix[] = "ticket/";

// The service is part of the hash: two queues may number tickets alike.
std::string StateKey(const TicketEvent& e) {
  const std::string material = absl::StrCat(e.service, std::string(1, '\0'), e.ticket);
  return absl::StrCat(kStatePrefix, absl::Hex(StableHash(material), absl::kZeroPad16),
                      absl::Hex(StableHash(material, 0x84222325cbf29ce4ULL), absl::kZeroPad16));
}

google::protobuf::Timestamp Stamp(absl::Time t) {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

}  // namespace

absl::StatusOr<TicketEvent::Type> ParseTicketEventType(absl::string_view name) {
  if (name == "created") return Type::kCreated;
  if (name == "called") return Type::kCalled;
  if (name == "served") return Type::kServed;
  if (name == "abandoned") return Type::kAbandoned;
  return absl::InvalidArgumentError(
      absl::StrCat("event '", name, "' is not one of: created, called, served, abandoned"));
}

absl::Status ValidateTicketEvent(const TicketEvent& e) {
  if (e.ticket.empty() || e.ticket.size() > 128) {
    return absl::InvalidArgumentError("ticket: must be 1..128 characters");
  }
  for (char c : e.ticket) {
    if (c < 0x20 || c > 0x7e) return absl::InvalidArgumentError("ticket: non-printable character");
  }
  if (absl::Status s = ValidateKey(ServedKey(e.service)); !s.ok() || e.service.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "service: '", e.service, "' must be a key ([A-Za-z0-9._:/-], 1..121 characters)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<TicketEvent> ParseTicketJson(absl::string_view object, absl::Time now) {
  absl::StatusOr<json> parsed = ParseBoundedJson(object);
  if (!parsed.ok()) return parsed.status();
  const json& obj = *parsed;
  if (!obj.is_object()) return absl::InvalidArgumentError("expected a JSON object");
  TicketEvent e;
  e.at = now;
  std::string event;
  for (const auto& [name, value] : obj.items()) {
    std::string* out = nullptr;
    std::string at;
    if (name == "ticket") {
      out = &e.ticket;
    } else if (name == "service") {
      out = &e.service;
    } else if (name == "event") {
      out = &event;
    } else if (name == "at") {
      out = &at;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown field '", name, "' (known: ticket, service, event, at)"));
    }
    if (value.is_number_integer() && name == "ticket") {
      *out = value.dump();  // Queue systems often number tickets.
    } else if (!value.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": expected a string"));
    } else {
      *out = value.get<std::string>();
    }
    if (name == "at") {
      absl::StatusOr<absl::Time> t = ParseInputTime(at, "");
      if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat("at: ", t.status().message()));
      e.at = *t;
    }
  }
  if (event.empty()) return absl::InvalidArgumentError("event: missing");
  absl::StatusOr<Type> type = ParseTicketEventType(event);
  if (!type.ok()) return type.status();
  e.type = *type;
  if (absl::Status s = ValidateTicketEvent(e); !s.ok()) return s;
  return e;
}

std::string ServedKey(absl::string_view service) { return absl::StrCat(service, ".served"); }

TicketTracker::TicketTracker(Spool* spool, TicketOptions options)
    : spool_(spool), options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<TicketTracker>> TicketTracker::Open(Spool* spool,
                                                                   TicketOptions options) {
  std::unique_ptr<TicketTracker> t(new TicketTracker(spool, std::move(options)));
  absl::StatusOr<std::map<std::string, std::string>> state = spool->ReadState(kStatePrefix);
  if (!state.ok()) return state.status();
  absl::MutexLock lock(&t->mu_);
  for (const auto& [key, value] : *state) {
    std::pair<std::string, std::string> parts = absl::StrSplit(value, ' ');
    OpenTicket o;
    if (!absl::SimpleAtoi(parts.first, &o.created_nanos)) continue;  // Unreadable: forgotten.
    o.called = parts.second == "1";
    t->open_[key] = o;
  }
  return t;
}

size_t TicketTracker::open_tickets() const {
  absl::MutexLock lock(&mu_);
  return open_.size();
}

void TicketTracker::SetTtl(absl::Duration ttl) {
  absl::MutexLock lock(&mu_);
  options_.ttl = ttl;
}

// One Apply's changes to the open tickets and what its events produce.
// The changes are made on a copy (`changed`: a ticket's new state,
// nullopt when it closes) and kept only once committed.
struct TicketTracker::Applying {
  Applying(const std::map<std::string, OpenTicket>& open_tickets, absl::Time at_now,
           const Limits& limits_in, std::vector<v1::Observation> extra)
      : open(open_tickets), now(at_now), limits(limits_in), observations(std::move(extra)) {}

  // The ticket under `key` as the changes so far leave it.
  std::optional<OpenTicket> Find(const std::string& key) const {
    auto c = changed.find(key);
    if (c != changed.end()) return c->second;
    auto it = open.find(key);
    if (it == open.end()) return std::nullopt;
    return it->second;
  }
  // Closes the tickets created before `before_nanos` (counted expired).
  void Expire(int64_t before_nanos) {
    for (const auto& [key, o] : open) {
      if (o.created_nanos < before_nanos) {
        changed[key] = std::nullopt;
        ++outcome.expired;
      }
    }
    open_count = open.size() - outcome.expired;
  }
  void Event(const TicketEvent& e, size_t max_open);
  void Create(const std::string& key, const TicketEvent& e, size_t max_open);
  // Forgets the oldest tenth of the open tickets at once, so a flood
  // costs O(log n) per ticket rather than a scan each.
  void EvictOldest(size_t max_open);
  // The wait and served check of a ticket called or served for the first
  // time (nothing, and a problem, when that is before its creation).
  void Reached(const TicketEvent& e, const OpenTicket& o);
  // Adds `o` unless the limits refuse it (a problem).
  void Add(v1::Observation o, const TicketEvent& e);
  // The state writes of the changes, appended to *writes.
  void Writes(std::vector<StateWrite>* writes) const;

  const std::map<std::string, OpenTicket>& open;
  const absl::Time now;
  const Limits limits;
  std::vector<v1::Observation> observations;
  std::map<std::string, std::optional<OpenTicket>> changed;
  size_t open_count = 0;  // Open tickets, the changes counted.
  TicketOutcome outcome;
};

void TicketTracker::Applying::Event(const TicketEvent& e, size_t max_open) {
  if (e.at > now + limits.max_future_skew) {
    outcome.problems.push_back(absl::StrCat(
        "ticket event of ", e.service, " at ", absl::FormatTime(e.at), " is more than ",
        absl::FormatDuration(limits.max_future_skew), " ahead of the agent's clock; refused"));
    return;
  }
  const std::string key = StateKey(e);
  std::optional<OpenTicket> open_ticket = Find(key);
  if (e.type == Type::kCreated) {
    if (open_ticket) {
      ++outcome.ignored;
      return;
    }
    Create(key, e, max_open);
    return;
  }
  if (!open_ticket) {
    ++outcome.ignored;
    return;
  }
  const bool reached = e.type == Type::kCalled || e.type == Type::kServed;
  if (reached && !open_ticket->called) {
    Reached(e, *open_ticket);
  } else if (e.type == Type::kAbandoned && !open_ticket->called) {
    v1::Observation lost;
    lost.set_key(ServedKey(e.service));
    lost.mutable_check()->set_passed(false);
    *lost.mutable_observed_at() = Stamp(e.at);
    Add(std::move(lost), e);
  } else if (e.type == Type::kCalled) {
    ++outcome.ignored;  // Called again.
    return;
  }
  if (e.type == Type::kCalled) {
    open_ticket->called = true;
    changed[key] = open_ticket;
  } else {
    changed[key] = std::nullopt;
    --open_count;
  }
}

void TicketTracker::Applying::Create(const std::string& key, const TicketEvent& e,
                                     size_t max_open) {
  if (open_count >= max_open) EvictOldest(max_open);
  ++open_count;
  changed[key] = OpenTicket{absl::ToUnixNanos(e.at), false};
}

void TicketTracker::Applying::EvictOldest(size_t max_open) {
  std::vector<std::pair<int64_t, std::string>> live;
  for (const auto& [k, o] : open) {
    if (changed.count(k) == 0) live.push_back({o.created_nanos, k});
  }
  for (const auto& [k, o] : changed) {
    if (o) live.push_back({o->created_nanos, k});
  }
  const size_t n = std::min(live.size(), std::max<size_t>(1, max_open / 10));
  std::partial_sort(live.begin(), live.begin() + n, live.end());
  for (size_t i = 0; i < n; ++i) changed[live[i].second] = std::nullopt;
  outcome.evicted += n;
  open_count -= n;
}

void TicketTracker::Applying::Reached(const TicketEvent& e, const OpenTicket& o) {
  const absl::Duration wait = e.at - absl::FromUnixNanos(o.created_nanos);
  if (wait < absl::ZeroDuration()) {
    outcome.problems.push_back(absl::StrCat("ticket of ", e.service, " ",
                                            e.type == Type::kCalled ? "called" : "served",
                                            " before it was created; no wait recorded"));
    return;
  }
  v1::Observation w;
  w.set_key(e.service);
  w.set_wait_seconds(absl::ToDoubleSeconds(wait));
  *w.mutable_observed_at() = Stamp(e.at);
  Add(std::move(w), e);
  v1::Observation served;
  served.set_key(ServedKey(e.service));
  served.mutable_check()->set_passed(true);
  *served.mutable_observed_at() = Stamp(e.at);
  Add(std::move(served), e);
}

void TicketTracker::Applying::Add(v1::Observation o, const TicketEvent& e) {
  if (absl::Status s = ValidateObservation(o, now, limits); !s.ok()) {
    outcome.problems.push_back(absl::StrCat("ticket event ", e.service, " at ",
                                            absl::FormatTime(e.at), ": ", s.message()));
    return;
  }
  observations.push_back(std::move(o));
}

void TicketTracker::Applying::Writes(std::vector<StateWrite>* writes) const {
  for (const auto& [key, o] : changed) {
    if (o) {
      writes->push_back({key, absl::StrCat(o->created_nanos, " ", o->called ? "1" : "0")});
    } else {
      writes->push_back({key, std::nullopt});
    }
  }
}

absl::StatusOr<TicketOutcome> TicketTracker::Apply(const std::vector<TicketEvent>& events,
                                                   absl::Time now,
                                                   std::vector<v1::Observation> observations,
                                                   std::vector<StateWrite> writes) {
  absl::MutexLock lock(&mu_);
  Applying a(open_, now, options_.limits, std::move(observations));
  a.Expire(absl::ToUnixNanos(now - options_.ttl));
  for (const TicketEvent& e : events) a.Event(e, options_.max_open);
  a.Writes(&writes);
  absl::StatusOr<AppendResult> appended =
      spool_->AppendWithState(std::move(a.observations), writes);
  if (!appended.ok()) return appended.status();
  a.outcome.append = *appended;
  for (const auto& [key, o] : a.changed) {
    if (o) {
      open_[key] = *o;
    } else {
      open_.erase(key);
    }
  }
  return std::move(a.outcome);
}

}  // namespace constance::agent
