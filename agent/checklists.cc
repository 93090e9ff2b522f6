#include "agent/checklists.h"

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/bounded_json.h"
#include "agent/input_values.h"
#include "google/protobuf/util/time_util.h"
#include "nlohmann/json.hpp"

namespace constance::agent {
namespace {

using nlohmann::json;

absl::Status UnknownFields(const json& obj, std::initializer_list<const char*> known,
                           absl::string_view where) {
  for (const auto& [name, value] : obj.items()) {
    bool ok = false;
    std::string list;
    for (const char* k : known) {
      ok = ok || name == k;
      absl::StrAppend(&list, list.empty() ? "" : ", ", k);
    }
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "unknown field '", name, "' (known: ", list, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ChecklistSubmission> ParseChecklistJson(absl::string_view object) {
  absl::StatusOr<json> parsed = ParseBoundedJson(object);
  if (!parsed.ok()) return parsed.status();
  const json& obj = *parsed;
  if (!obj.is_object()) return absl::InvalidArgumentError("expected a JSON object");
  if (absl::Status s = UnknownFields(obj, {"template", "id", "submitted_at", "items"}, "");
      !s.ok()) {
    return s;
  }
  ChecklistSubmission sub;
  auto t = obj.find("template");
  if (t == obj.end() || !t->is_string() || t->get<std::string>().empty()) {
    return absl::InvalidArgumentError("template: missing (a template id string)");
  }
  sub.template_id = t->get<std::string>();
  if (auto id = obj.find("id"); id != obj.end() && !id->is_null()) {
    if (!id->is_string()) return absl::InvalidArgumentError("id: expected a string");
    sub.id = id->get<std::string>();
  }
  if (auto at = obj.find("submitted_at"); at != obj.end() && !at->is_null()) {
    if (!at->is_string()) return absl::InvalidArgumentError("submitted_at: expected RFC 3339");
    absl::StatusOr<absl::Time> time = ParseInputTime(at->get<std::string>(), "");
    if (!time.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("submitted_at: ", time.status().message()));
    }
    sub.submitted_at = *time;
  }
  auto items = obj.find("items");
  if (items == obj.end() || !items->is_array() || items->empty()) {
    return absl::InvalidArgumentError("items: missing or empty (a list of checked items)");
  }
  std::set<std::string> seen;
  for (size_t i = 0; i < items->size(); ++i) {
    const json& it = (*items)[i];
    const std::string where = absl::StrCat("items[", i, "]: ");
    if (!it.is_object())
      return absl::InvalidArgumentError(absl::StrCat(where, "expected an object"));
    if (absl::Status s = UnknownFields(it, {"item", "result", "critical"}, where); !s.ok())
      return s;
    ChecklistItem item;
    auto name = it.find("item");
    if (name == it.end() || !name->is_string() || name->get<std::string>().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, "item: missing (an item id string)"));
    }
    item.item = name->get<std::string>();
    if (!seen.insert(item.item).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "item '", item.item, "' appears twice in the submission"));
    }
    auto result = it.find("result");
    if (result == it.end())
      return absl::InvalidArgumentError(absl::StrCat(where, "result: missing"));
    if (result->is_boolean()) {
      item.passed = result->get<bool>();
    } else if (result->is_string() || result->is_null()) {
      absl::StatusOr<std::optional<bool>> r =
          ParsePassFail(result->is_null() ? "" : result->get<std::string>());
      if (!r.ok())
        return absl::InvalidArgumentError(absl::StrCat(where, "result: ", r.status().message()));
      item.passed = *r;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(where, "result: expected pass, fail or na"));
    }
    if (auto c = it.find("critical"); c != it.end() && !c->is_null()) {
      if (!c->is_boolean()) {
        return absl::InvalidArgumentError(absl::StrCat(where, "critical: expected true or false"));
      }
      item.critical = c->get<bool>();
    }
    sub.items.push_back(std::move(item));
  }
  return sub;
}

absl::StatusOr<std::vector<v1::Observation>> ChecklistObservations(const ChecklistSubmission& sub,
                                                                   absl::Time now,
                                                                   const Limits& limits) {
  const absl::Time at = sub.submitted_at == absl::InfinitePast() ? now : sub.submitted_at;
  std::vector<v1::Observation> out;
  for (size_t i = 0; i < sub.items.size(); ++i) {
    const ChecklistItem& item = sub.items[i];
    if (!item.passed) continue;  // Not applicable: neither kept nor broken.
    v1::Observation o;
    o.set_key(absl::StrCat(sub.template_id, ".", item.item));
    o.mutable_check()->set_passed(*item.passed);
    o.mutable_check()->set_critical(item.critical);
    *o.mutable_observed_at() =
        google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(at));
    if (!sub.id.empty()) o.set_id(absl::StrCat(sub.id, "/", item.item));
    if (absl::Status s = ValidateObservation(o, now, limits); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("items[", i, "] ('", item.item, "'): ", s.message()));
    }
    out.push_back(std::move(o));
  }
  return out;
}

}  // namespace constance::agent
