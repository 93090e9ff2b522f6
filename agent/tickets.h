// Queue events (a ticket created, called, served or abandoned for a
// service) turned into wait and abandonment observations on the agent.
//
// TicketTracker matches the events of one ticket by its id and emits, for
// service S:
//   - when the ticket is called (or served without a call): a wait
//     observation on key S, wait_seconds = called - created, observed at
//     the call, and a passed compliance check on key `S.served`;
//   - when it is abandoned before being called: a failed check on key
//     `S.served`. The collector's pass rate of `S.served` is the share of
//     tickets served; its failures are the abandonment count.
// Ticket ids are used for matching only: open tickets are kept in the
// spool's input state under a hash of (service, ticket id), never in an
// observation, so they never leave the store. With a durable spool
// (spool_path) open tickets are durable: the state changes are committed in
// the same transaction as the observations they produce, so an event
// acknowledged with 2xx survives kill -9 and a restart (an in-memory spool
// loses them with the rest of its contents), and a replayed event (a
// retry) changes nothing. Events for unknown tickets
// (their `created` was never seen, or they were closed already) and
// repeated events are ignored. Tickets open longer than the TTL are
// forgotten when the next events are applied.
//
// Example:
//   auto tracker = TicketTracker::Open(spool, TicketOptions{});
//   (*tracker)->Apply({{"A17", "checkout", TicketEvent::Type::kCreated, t0},
//                      {"A17", "checkout", TicketEvent::Type::kCalled, t0 + absl::Seconds(95)}},
//                     absl::Now());
//
// Thread-safe: Apply calls are serialised. `spool` must outlive the tracker.
#ifndef CONSTANCE_AGENT_TICKETS_H_
#define CONSTANCE_AGENT_TICKETS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/spool.h"
#include "constance/validate.h"

namespace constance::agent {

struct TicketEvent {
  enum class Type { kCreated, kCalled, kServed, kAbandoned };
  std::string ticket;
  std::string service;
  Type type = Type::kCreated;
  absl::Time at;
};

// created | called | served | abandoned.
absl::StatusOr<TicketEvent::Type> ParseTicketEventType(absl::string_view name);

// Checks the ticket id (1..128 printable ASCII) and service (a valid key).
absl::Status ValidateTicketEvent(const TicketEvent& event);

// One JSON object: {"ticket":"A17", "service":"checkout", "event":"called",
// "at":"RFC 3339"}; `at` defaults to `now`. InvalidArgument naming the field.
absl::StatusOr<TicketEvent> ParseTicketJson(absl::string_view object, absl::Time now);

// The key of the served/abandoned check of `service`.
std::string ServedKey(absl::string_view service);

struct TicketOptions {
  absl::Duration ttl = absl::Hours(12);
  // Open tickets kept at most; past it the oldest is forgotten (counted in
  // TicketOutcome::evicted), so a flood of creations cannot grow memory
  // and the spool's state without bound.
  size_t max_open = 100'000;
  Limits limits;
};

struct TicketOutcome {
  AppendResult append;
  // Events that changed nothing (unknown ticket, repeated event).
  size_t ignored = 0;
  // Events refused: a call before the creation, a wait over the limits.
  std::vector<std::string> problems;
  // Open tickets dropped because they outlived the TTL.
  size_t expired = 0;
  // Open tickets forgotten to stay within TicketOptions::max_open.
  size_t evicted = 0;
};

class TicketTracker {
 public:
  // Loads the open tickets from `spool`'s input state.
  static absl::StatusOr<std::unique_ptr<TicketTracker>> Open(Spool* spool, TicketOptions options);
  TicketTracker(const TicketTracker&) = delete;
  TicketTracker& operator=(const TicketTracker&) = delete;

  // Applies `events` in order and commits what they produce, together with
  // `extra_observations` and `extra_writes` (a drop-directory checkpoint),
  // in one spool transaction. On error (spool full, I/O) nothing changed.
  // An event dated more than the limits' max_future_skew after `now` is
  // refused (a problem; nothing changes): a ticket "created" in year 9999
  // would otherwise stay open for ever.
  absl::StatusOr<TicketOutcome> Apply(const std::vector<TicketEvent>& events, absl::Time now,
                                      std::vector<v1::Observation> extra_observations = {},
                                      std::vector<StateWrite> extra_writes = {});

  size_t open_tickets() const;
  void SetTtl(absl::Duration ttl);

 private:
  struct OpenTicket {
    int64_t created_nanos = 0;
    bool called = false;
  };
  // One Apply in progress: its changes, made aside, and what its events
  // produce (tickets.cc).
  struct Applying;
  TicketTracker(Spool* spool, TicketOptions options);

  Spool* const spool_;
  mutable absl::Mutex mu_;
  TicketOptions options_ ABSL_GUARDED_BY(mu_);
  // State key (a hash of service and ticket) -> the open ticket.
  std::map<std::string, OpenTicket> open_ ABSL_GUARDED_BY(mu_);
};

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_TICKETS_H_
