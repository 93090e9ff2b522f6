// Checklist submissions (an opening checklist, a hygiene round) turned into
// compliance observations, one per checked item.
//
// A submission names its template and lists items, each passed, failed or
// not applicable, some flagged critical. Every passed or failed item
// becomes a compliance observation on key `<template>.<item>` with the
// submission's time; items not applicable produce nothing (they are neither
// kept nor broken); a critical item carries Check.critical, so a failed
// critical item fails the location for that check outright.
//
// Example:
//   absl::StatusOr<ChecklistSubmission> sub = ParseChecklistJson(R"({"template":"opening",
//       "items":[{"item":"fridge-temp","result":"fail","critical":true}]})");
//   absl::StatusOr<std::vector<v1::Observation>> obs =
//       ChecklistObservations(*sub, absl::Now(), Limits{});
//
// Pure functions; thread-safe.
#ifndef CONSTANCE_AGENT_CHECKLISTS_H_
#define CONSTANCE_AGENT_CHECKLISTS_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "constance/v1/observation.pb.h"
#include "constance/validate.h"

namespace constance::agent {

struct ChecklistItem {
  std::string item;
  // Passed / failed; nullopt: not applicable.
  std::optional<bool> passed;
  bool critical = false;
};

struct ChecklistSubmission {
  std::string template_id;
  // Optional idempotency id of the submission; item observations get
  // `<id>/<item>`, so a resent submission is stored once.
  std::string id;
  // Unset (InfinitePast): when the agent receives it.
  absl::Time submitted_at = absl::InfinitePast();
  std::vector<ChecklistItem> items;
};

// One JSON object: {"template":"opening", "id":"...", "submitted_at":"RFC
// 3339", "items":[{"item":"...", "result":"pass|fail|na", "critical":bool}]}.
// InvalidArgument naming the field (items by index).
absl::StatusOr<ChecklistSubmission> ParseChecklistJson(absl::string_view object);

// One observation per passed or failed item, validated against `limits`
// (`now` the clock, and the time when submitted_at is unset).
// InvalidArgument naming the item when one is invalid (nothing is kept of
// that submission then: it is resent whole once fixed).
absl::StatusOr<std::vector<v1::Observation>> ChecklistObservations(
    const ChecklistSubmission& submission, absl::Time now, const Limits& limits);

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_CHECKLISTS_H_
