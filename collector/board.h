// The collector's side of the board (proto/constance/v1/board.proto): the
// recorder that feeds the price-drop feed and the promise record from the
// engine's evaluations, and the Board service that reads them.
//
// BoardRecorder polls the engine's snapshot every `poll` (1 s in the
// collector) and, once per new evaluation, records its price drops
// (PriceDropFeed) and promise standings (PromiseRecordStore). A store that
// fails to write is tried again at the next poll with that evaluation.
//
// LocationRecordOf assembles Board.Record's answer: the promise record,
// the engine's current waits (Engine::CurrentWaits) and whether the
// location is open, closed for good or silent, from the catalog and the
// findings. `constance publish` renders the public board from it.
//
// Thread-safety: BoardRecorder owns its thread; the service's calls may
// run concurrently.
#ifndef CONSTANCE_COLLECTOR_BOARD_H_
#define CONSTANCE_COLLECTOR_BOARD_H_

#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "collector/auth.h"
#include "collector/engine.h"
#include "collector/price_drops.h"
#include "collector/promise_record.h"
#include "constance/v1/board.grpc.pb.h"

namespace constance::collector {

class BoardRecorder {
 public:
  // Starts the thread. Every pointer must outlive the recorder.
  BoardRecorder(const Engine* engine, PriceDropFeed* drops, PromiseRecordStore* record,
                absl::Duration poll);
  ~BoardRecorder();
  BoardRecorder(const BoardRecorder&) = delete;
  BoardRecorder& operator=(const BoardRecorder&) = delete;
  void Stop();

 private:
  void Run();
  const Engine* const engine_;
  PriceDropFeed* const drops_;
  PromiseRecordStore* const record_;
  const absl::Duration poll_;
  absl::Notification stop_;
  std::thread thread_;
};

// `location`'s record at `now`. InvalidArgument for a malformed id,
// NotFound for a location that never reported and is not in the catalog.
absl::StatusOr<v1::LocationRecord> LocationRecordOf(const Engine& engine,
                                                    const PromiseRecordStore& record,
                                                    const std::string& location, absl::Time now);

// Writes the public board (public_board.h) into `dir` every `every` from
// the engine's catalog and records, on a thread of its own, the first time
// at start. Failures are logged and tried again next time.
class BoardPublisher {
 public:
  BoardPublisher(const Engine* engine, const PromiseRecordStore* record, std::string dir,
                 absl::Duration every);
  ~BoardPublisher();
  BoardPublisher(const BoardPublisher&) = delete;
  BoardPublisher& operator=(const BoardPublisher&) = delete;

 private:
  const Engine* const engine_;
  const PromiseRecordStore* const record_;
  const std::string dir_;
  const absl::Duration every_;
  absl::Notification stop_;
  std::thread thread_;
};

class BoardService final : public v1::Board::CallbackService {
 public:
  BoardService(const Engine* engine, const PriceDropFeed* drops, const PromiseRecordStore* record,
               bool require_operator, RefusalCounter* refusals)
      : engine_(engine),
        drops_(drops),
        record_(record),
        require_operator_(require_operator),
        refusals_(refusals) {}
  // Streams the feed page by page, one write outstanding.
  grpc::ServerWriteReactor<v1::PriceDrop>* PriceDrops(
      grpc::CallbackServerContext* context, const v1::PriceDropsRequest* request) override;
  grpc::ServerUnaryReactor* Record(grpc::CallbackServerContext* context,
                                   const v1::RecordRequest* request,
                                   v1::LocationRecord* response) override;

 private:
  const Engine* const engine_;
  const PriceDropFeed* const drops_;
  const PromiseRecordStore* const record_;
  const bool require_operator_;
  RefusalCounter* const refusals_;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_BOARD_H_
