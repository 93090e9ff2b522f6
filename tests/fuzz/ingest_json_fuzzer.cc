// Fuzz target: a request body of the agent's local HTTP ingest
// (POST /v1/observations), parsed, mapped and validated item by item, and
// the answer rendered. Nothing may crash; every item of an accepted body is
// either accepted or rejected with a reason, and the answer is valid JSON.
// Each input runs on a thread with an HTTP worker's stack (small_stack.h),
// where the agent really parses it: a deep nesting that the main thread's
// 8 MB would absorb crashes there.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/ingest_json.h"
#include "constance/validate.h"
#include "tests/fuzz/small_stack.h"

namespace {

void OneInput(absl::string_view body) {
  const absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  absl::StatusOr<constance::agent::ParsedObservations> parsed =
      constance::agent::ParseObservations(body, now, constance::Limits{});
  if (!parsed.ok()) {
    if (parsed.status().message().empty()) std::abort();  // A refusal must say why.
    (void)constance::agent::RenderIngestError(parsed.status().message());
    return;
  }
  for (const constance::agent::ItemRejection& r : parsed->rejected) {
    if (r.reason.empty()) std::abort();
  }
  for (const constance::v1::Observation& obs : parsed->accepted) {
    if (!obs.has_observed_at()) std::abort();  // Accepted items are stamped.
  }
  (void)constance::agent::RenderIngestAnswer(parsed->accepted.size(), parsed->rejected);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view body(reinterpret_cast<const char*>(data), size);
  constance::testing::RunOnSmallStack([&] { OneInput(body); });
  return 0;
}
