#include "collector/board.h"

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "collector/public_board.h"
#include "collector/services.h"
#include "constance/validate.h"
#include "google/protobuf/util/time_util.h"
#include "spdlog/spdlog.h"

namespace constance::collector {

using google::protobuf::util::TimeUtil;

BoardRecorder::BoardRecorder(const Engine* engine, PriceDropFeed* drops, PromiseRecordStore* record,
                             absl::Duration poll)
    : engine_(engine), drops_(drops), record_(record), poll_(poll) {
  thread_ = std::thread([this] { Run(); });
}

BoardRecorder::~BoardRecorder() { Stop(); }

void BoardRecorder::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

void BoardRecorder::Run() {
  // Each store remembers the evaluation it last recorded: the promise
  // record counts evaluations, so one must never be added twice.
  absl::Time drops_at = absl::InfinitePast();
  absl::Time promises_at = absl::InfinitePast();
  do {
    std::shared_ptr<const Snapshot> snap = engine_->snapshot();
    if (snap == nullptr || snap->findings == nullptr) continue;
    const FindingsView& view = *snap->findings;
    if (view.evaluated_at == absl::InfinitePast()) continue;  // Nothing evaluated yet.
    if (view.evaluated_at != drops_at) {
      if (absl::Status s = drops_->Record(view.price_drops, absl::Now()); s.ok()) {
        drops_at = view.evaluated_at;
      } else {
        spdlog::error("price-drop feed: {}", std::string(s.message()));
      }
    }
    if (view.evaluated_at != promises_at) {
      if (absl::Status s = record_->Record(view.promises, view.evaluated_at); s.ok()) {
        promises_at = view.evaluated_at;
      } else {
        spdlog::error("promise record: {}", std::string(s.message()));
      }
    }
  } while (!stop_.WaitForNotificationWithTimeout(poll_));
}

BoardPublisher::BoardPublisher(const Engine* engine, const PromiseRecordStore* record,
                               std::string dir, absl::Duration every)
    : engine_(engine), record_(record), dir_(std::move(dir)), every_(every) {
  thread_ = std::thread([this] {
    do {
      std::shared_ptr<const Catalog> catalog = engine_->snapshot()->catalog;
      if (catalog == nullptr) continue;
      const absl::Time now = engine_->now();
      absl::StatusOr<int> pages = PublishBoard(
          *catalog,
          [&](const std::string& location) {
            return LocationRecordOf(*engine_, *record_, location, now);
          },
          dir_, now);
      if (!pages.ok()) spdlog::error("board: {}", std::string(pages.status().message()));
    } while (!stop_.WaitForNotificationWithTimeout(every_));
  });
}

BoardPublisher::~BoardPublisher() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<v1::LocationRecord> LocationRecordOf(const Engine& engine,
                                                    const PromiseRecordStore& record,
                                                    const std::string& location, absl::Time now) {
  if (absl::Status s = ValidateLocationId(location); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("location: ", s.message()));
  }
  std::shared_ptr<const Snapshot> snap = engine.snapshot();
  const Catalog* catalog = snap->catalog.get();
  const LocationEntry* entry = catalog != nullptr ? catalog->FindLocation(location) : nullptr;
  auto state = std::find_if(snap->location_states.begin(), snap->location_states.end(),
                            [&](const LocationState& s) { return s.location == location; });
  if (entry == nullptr && state == snap->location_states.end()) {
    return absl::NotFoundError(
        absl::StrCat("location '", location, "' has never reported and is not in the catalog"));
  }
  v1::LocationRecord out;
  out.set_location(location);
  out.set_timezone(entry != nullptr ? entry->timezone : "UTC");
  out.set_closed_for_good(entry != nullptr && entry->closed);
  out.set_open_now(entry == nullptr || catalog->ExpectedOpen(location, now));
  for (const v1::Finding& f : snap->findings->active) {
    if (f.kind() == v1::SILENT && f.location() == location) out.set_silent(true);
  }
  if (state != snap->location_states.end() && state->last_report != absl::InfinitePast()) {
    *out.mutable_last_report() =
        TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(state->last_report));
  }
  for (v1::PromiseRecord& p : record.Read(location, now)) *out.add_promises() = std::move(p);
  for (const CurrentWait& w : engine.CurrentWaits(location)) {
    v1::ServiceWait* sw = out.add_waits();
    sw->set_service(w.service);
    sw->set_median_seconds(w.median_seconds);
    sw->set_p90_seconds(w.p90_seconds);
    sw->set_tickets(w.samples);
    *sw->mutable_updated_at() = TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(w.updated));
  }
  *out.mutable_generated_at() = TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(now));
  return out;
}

namespace {

// Writes the feed a page at a time: one outstanding write, the next page
// read when the last one's write is done.
class DropWriter : public grpc::ServerWriteReactor<v1::PriceDrop> {
 public:
  DropWriter(const PriceDropFeed* feed, const v1::PriceDropsRequest& request)
      : feed_(feed),
        since_(request.has_since()
                   ? absl::FromUnixNanos(TimeUtil::TimestampToNanoseconds(request.since()))
                   : absl::InfinitePast()),
        location_(request.location()) {
    Next();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the reader went away"));
      return;
    }
    Next();
  }
  void OnDone() override { delete this; }

 private:
  void Next() {
    if (next_ == page_.size()) {
      page_ = feed_->Read(since_, location_, kPage, &cursor_);
      next_ = 0;
      if (page_.empty()) {
        Finish(grpc::Status::OK);
        return;
      }
    }
    StartWrite(&page_[next_++]);
  }

  static constexpr size_t kPage = 256;
  const PriceDropFeed* const feed_;
  const absl::Time since_;
  const std::string location_;
  PriceDropFeed::Cursor cursor_;
  std::vector<v1::PriceDrop> page_;
  size_t next_ = 0;
};

// For a refused call: finishes at once.
class Refused : public grpc::ServerWriteReactor<v1::PriceDrop> {
 public:
  explicit Refused(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::ServerWriteReactor<v1::PriceDrop>* BoardService::PriceDrops(
    grpc::CallbackServerContext* context, const v1::PriceDropsRequest* request) {
  absl::StatusOr<std::string> who =
      OperatorName(*context, require_operator_, refusals_, "read the price-drop feed");
  if (!who.ok()) return new Refused(ToGrpcStatus(who.status()));
  return new DropWriter(drops_, *request);
}

grpc::ServerUnaryReactor* BoardService::Record(grpc::CallbackServerContext* context,
                                               const v1::RecordRequest* request,
                                               v1::LocationRecord* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> who =
      OperatorName(*context, require_operator_, refusals_, "read a promise record");
  if (!who.ok()) {
    reactor->Finish(ToGrpcStatus(who.status()));
    return reactor;
  }
  absl::StatusOr<v1::LocationRecord> record =
      LocationRecordOf(*engine_, *record_, request->location(), engine_->now());
  if (record.ok()) *response = *std::move(record);
  reactor->Finish(ToGrpcStatus(record.status()));
  return reactor;
}

}  // namespace constance::collector
