#include "agent/ingest_json.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/bounded_json.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "nlohmann/json.hpp"

namespace constance::agent {
namespace {

using nlohmann::json;

// Maps one JSON object to an observation and validates it; the reason on
// failure names the field (protobuf's mapping and ValidateObservation both
// do).
absl::Status MapItem(const json& item, absl::Time now, const Limits& limits, v1::Observation* obs) {
  if (!item.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected a JSON object, got ", item.type_name()));
  }
  google::protobuf::util::JsonParseOptions options;
  // A misspelt field must be refused, not dropped: "wait_second" would
  // otherwise become an observation without a value.
  options.ignore_unknown_fields = false;
  auto mapped = google::protobuf::util::JsonStringToMessage(item.dump(), obs, options);
  if (!mapped.ok()) return absl::InvalidArgumentError(std::string(mapped.message()));
  if (absl::Status s = ValidateObservation(*obs, now, limits); !s.ok()) return s;
  if (!obs->has_observed_at()) {
    *obs->mutable_observed_at() =
        google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(now));
  }
  return absl::OkStatus();
}

}  // namespace

namespace {

// Frames `body`: one object, or an array of items. Items nested deeper
// than kMaxJsonDepth are refused alone, by index, before anything recurses
// over them; a lone object that deep refuses the body.
struct Framed {
  json doc;
  std::vector<bool> too_deep;  // By item index, for an array.
};
absl::StatusOr<Framed> Frame(absl::string_view body) {
  const JsonNesting nesting = MeasureJsonNesting(body);
  absl::StatusOr<json> doc = ParseBoundedJsonArrayOrObject(body, nesting);
  if (!doc.ok()) return doc.status();
  Framed out;
  out.doc = *std::move(doc);
  if (!out.doc.is_object() && !out.doc.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected a JSON object or an array of objects, got ", out.doc.type_name()));
  }
  if (out.doc.is_array()) {
    out.too_deep.resize(out.doc.size(), false);
    for (size_t i = 0; i < out.too_deep.size() && i < nesting.item_depths.size(); ++i) {
      out.too_deep[i] = nesting.item_depths[i] > kMaxJsonDepth;
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<ParsedObservations> ParseObservations(absl::string_view body, absl::Time now,
                                                     const Limits& limits) {
  absl::StatusOr<Framed> framed = Frame(body);
  if (!framed.ok()) return framed.status();
  const json& doc = framed->doc;
  ParsedObservations out;
  auto take = [&](const json& item, size_t index) {
    v1::Observation obs;
    absl::Status s = MapItem(item, now, limits, &obs);
    if (s.ok()) {
      out.accepted.push_back(std::move(obs));
    } else {
      out.rejected.push_back(ItemRejection{index, std::string(s.message())});
    }
  };
  if (doc.is_object()) {
    take(doc, 0);
  } else {
    out.accepted.reserve(doc.size());
    for (size_t i = 0; i < doc.size(); ++i) {
      if (framed->too_deep[i]) {
        out.rejected.push_back(ItemRejection{i, std::string(TooDeepError().message())});
      } else {
        take(doc[i], i);
      }
    }
  }
  out.items_accepted = out.accepted.size();
  return out;
}

absl::StatusOr<ParsedObservations> ParseItems(absl::string_view body, const ItemMapper& map_item) {
  absl::StatusOr<Framed> framed = Frame(body);
  if (!framed.ok()) return framed.status();
  const json& doc = framed->doc;
  ParsedObservations out;
  auto take = [&](const json& item, size_t index) {
    std::vector<v1::Observation> produced;
    absl::Status s = item.is_object() ? map_item(item.dump(), &produced)
                                      : absl::InvalidArgumentError(absl::StrCat(
                                            "expected a JSON object, got ", item.type_name()));
    if (!s.ok()) {
      out.rejected.push_back(ItemRejection{index, std::string(s.message())});
      return;
    }
    ++out.items_accepted;
    for (v1::Observation& o : produced) out.accepted.push_back(std::move(o));
  };
  if (doc.is_object()) {
    take(doc, 0);
  } else {
    for (size_t i = 0; i < doc.size(); ++i) {
      if (framed->too_deep[i]) {
        out.rejected.push_back(ItemRejection{i, std::string(TooDeepError().message())});
      } else {
        take(doc[i], i);
      }
    }
  }
  return out;
}

std::string RenderIngestAnswer(size_t accepted, const std::vector<ItemRejection>& rejected) {
  json answer = {{"accepted", accepted}, {"rejected", json::array()}};
  for (const ItemRejection& r : rejected) {
    answer["rejected"].push_back({{"index", r.index}, {"reason", r.reason}});
  }
  // Replacement instead of throwing on invalid UTF-8 that a protobuf error
  // might echo from the request.
  return answer.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string RenderIngestError(absl::string_view error) {
  json answer = {{"error", std::string(error)}};
  return answer.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace constance::agent
