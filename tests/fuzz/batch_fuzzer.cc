// Fuzz target: a constance.v1.Batch as it arrives on the Ingest stream
// (protobuf wire format), decoded as ingest decodes it (DecodeBatch, with
// protobuf's parse as the fallback), validated observation by observation
// and applied to a collector Engine, then the statistics and findings
// recomputed over what was applied. Nothing may crash; whatever DecodeBatch
// accepts, protobuf must accept and view identically; and the Ack must
// account for every observation of the batch exactly once.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "absl/time/time.h"
#include "collector/catalog.h"
#include "collector/engine.h"
#include "constance/batch_view.h"
#include "constance/v1/ingest.pb.h"
#include "constance/validate.h"

namespace {

const absl::Time kNow = absl::FromUnixSeconds(1'700'000'000);

// Compared from the first sample so small inputs reach the statistics.
std::shared_ptr<const constance::collector::Catalog> FuzzCatalog() {
  constance::collector::Catalog catalog = constance::collector::DefaultCatalog();
  catalog.price.min_samples = catalog.wait.min_samples = catalog.compliance.min_samples =
      catalog.score.min_samples = 1;
  return std::make_shared<const constance::collector::Catalog>(std::move(catalog));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::shared_ptr<const constance::collector::Catalog> catalog = FuzzCatalog();
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  // The same bytes read as a whole AgentMessage, as ingest reads one.
  {
    constance::BatchView decoded;
    absl::string_view batch_bytes;
    if (constance::DecodeAgentBatch(bytes, &batch_bytes, &decoded)) {
      constance::v1::AgentMessage message;
      if (!message.ParseFromArray(data, static_cast<int>(size)) || !message.has_batch() ||
          decoded != constance::ViewOf(message.batch())) {
        std::abort();
      }
    }
  }
  constance::BatchView decoded;
  const bool fast = constance::DecodeBatch(bytes, &decoded);
  constance::v1::Batch batch;
  if (!batch.ParseFromArray(data, static_cast<int>(size))) {
    if (fast) std::abort();  // Decoded what protobuf refuses.
    return -1;               // Not a Batch: not kept.
  }
  if (fast && decoded != constance::ViewOf(batch)) std::abort();

  const constance::Limits limits;
  for (const constance::v1::Observation& obs : batch.observations()) {
    (void)constance::ValidateObservation(obs, kNow, limits);
  }

  constance::collector::Engine::Options options;
  options.catalog = catalog;
  options.clock = [] { return kNow; };
  constance::collector::Engine engine(options);
  absl::StatusOr<constance::v1::Ack> ack = engine.ApplyBatch(batch);
  if (ack.ok()) {
    // Every observation is applied, rejected or a duplicate, each once.
    const uint64_t not_applied =
        static_cast<uint64_t>(ack->rejections_size()) + ack->duplicates();
    if (ack->count() != static_cast<uint32_t>(batch.observations_size()) ||
        not_applied > static_cast<uint64_t>(batch.observations_size())) {
      std::abort();
    }
    // A retry of the same batch is all duplicates and changes nothing.
    absl::StatusOr<constance::v1::Ack> again = engine.ApplyBatch(batch);
    if (!again.ok()) std::abort();
  }
  engine.Recompute();
  engine.Evaluate();
  return 0;
}
