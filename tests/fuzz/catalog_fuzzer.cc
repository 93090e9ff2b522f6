// Fuzz target: the collector's catalog YAML (ParseCatalog). A catalog that
// parses is then used by an Engine: a small fixed batch from two locations
// is applied and the statistics and findings evaluated, since groups,
// promises and thresholds all come from the catalog. Nothing may crash or
// throw; a refusal names what was wrong.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "collector/catalog.h"
#include "collector/engine.h"
#include "constance/v1/ingest.pb.h"

namespace {

const absl::Time kNow = absl::FromUnixSeconds(1'700'000'000);

constance::v1::Batch SmallBatch(const std::string& location, int64_t price) {
  constance::v1::Batch batch;
  batch.set_location(location);
  batch.set_incarnation(1);
  batch.set_first_sequence(1);
  constance::v1::Observation* p = batch.add_observations();
  p->set_key("coffee-250g");
  p->mutable_price()->set_minor_units(price);
  p->mutable_price()->set_currency("EUR");
  p->mutable_observed_at()->set_seconds(absl::ToUnixSeconds(kNow));
  constance::v1::Observation* w = batch.add_observations();
  w->set_key("checkout");
  w->set_wait_seconds(static_cast<double>(price % 600));
  w->mutable_observed_at()->set_seconds(absl::ToUnixSeconds(kNow));
  return batch;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view yaml(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<constance::collector::Catalog> catalog =
      constance::collector::ParseCatalog(yaml, "fuzz.yaml");
  if (!catalog.ok()) {
    if (catalog.status().message().empty()) std::abort();
    return 0;
  }
  constance::collector::Engine::Options options;
  options.catalog = std::make_shared<const constance::collector::Catalog>(*std::move(catalog));
  options.clock = [] { return kNow; };
  constance::collector::Engine engine(options);
  // Locations the catalog may or may not declare; PermissionDenied is fine.
  (void)engine.ApplyBatch(SmallBatch("store-001", 499));
  (void)engine.ApplyBatch(SmallBatch("store-002", 529));
  engine.Recompute();
  engine.Evaluate();
  return 0;
}
