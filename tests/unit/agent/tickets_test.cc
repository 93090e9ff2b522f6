// Queue tickets cannot grow without bound: an event dated far ahead is
// refused, and past max_open the oldest open tickets are forgotten.
#include "agent/tickets.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/spool.h"
#include "gtest/gtest.h"

namespace constance::agent {
namespace {

TicketEvent Event(const std::string& ticket, TicketEvent::Type type, absl::Time at) {
  TicketEvent e;
  e.ticket = ticket;
  e.service = "checkout";
  e.type = type;
  e.at = at;
  return e;
}

TEST(TicketTrackerTest, AnEventFarAheadIsRefused) {
  MemorySpool spool{SpoolOptions()};
  auto tracker = TicketTracker::Open(&spool, TicketOptions());
  ASSERT_TRUE(tracker.ok()) << tracker.status();
  const absl::Time now = absl::FromUnixSeconds(1'796'000'000);
  auto out =
      (*tracker)->Apply({Event("A1", TicketEvent::Type::kCreated,
                               absl::FromCivil(absl::CivilSecond(9999, 1, 1), absl::UTCTimeZone())),
                         Event("A2", TicketEvent::Type::kCreated, now + absl::Minutes(4))},
                        now);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->problems.size(), 1u);
  EXPECT_NE(out->problems[0].find("ahead of the agent's clock"), std::string::npos)
      << out->problems[0];
  EXPECT_EQ((*tracker)->open_tickets(), 1u) << "only the ticket within the skew is open";
}

TEST(TicketTrackerTest, PastMaxOpenTheOldestAreForgotten) {
  MemorySpool spool{SpoolOptions()};
  TicketOptions options;
  options.max_open = 100;
  auto tracker = TicketTracker::Open(&spool, options);
  ASSERT_TRUE(tracker.ok()) << tracker.status();
  const absl::Time start = absl::FromUnixSeconds(1'796'000'000);
  std::vector<TicketEvent> created;
  for (int i = 0; i < 250; ++i) {
    created.push_back(
        Event(absl::StrCat("T", i), TicketEvent::Type::kCreated, start + absl::Seconds(i)));
  }
  auto out = (*tracker)->Apply(created, start + absl::Minutes(5));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_LE((*tracker)->open_tickets(), 100u);
  EXPECT_EQ(out->evicted + (*tracker)->open_tickets(), 250u);
  // The newest is still open (its call gives a wait); the oldest is not.
  out = (*tracker)->Apply({Event("T249", TicketEvent::Type::kCalled, start + absl::Minutes(6)),
                           Event("T0", TicketEvent::Type::kCalled, start + absl::Minutes(6))},
                          start + absl::Minutes(6));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->ignored, 1u) << "T0 was forgotten";
  EXPECT_EQ(out->append.stored, 2u) << "T249's wait and served check";
}

}  // namespace
}  // namespace constance::agent
