// JSON from outside the agent (request bodies, drop-directory lines),
// parsed with a bound on nesting that holds before anything recurses.
//
// nlohmann_json parses and frees iteratively, but serializing a value
// (dump), copying it and protobuf's JSON mapping recurse once per level,
// and the HTTP workers run on civetweb threads with about 100 KiB of
// stack: a 4 KB body nested 700 deep was enough to crash the agent. So the
// nesting is measured first, by a scan that keeps only a counter, and
// input deeper than kMaxJsonDepth levels is refused with that reason.
//
//   absl::StatusOr<nlohmann::json> doc = ParseBoundedJson(line);
//   if (!doc.ok()) report(doc.status().message());   // "nested deeper than 64 levels"
//
// For a request that is an array of items, MeasureJsonNesting gives each
// item's own depth, so one too-deep item is refused alone, by its index.
//
// Internal to the agent library (its .cc files; tests and fuzzers): the
// library's public headers do not name nlohmann_json. Pure functions;
// thread-safe.
#ifndef CONSTANCE_AGENT_BOUNDED_JSON_H_
#define CONSTANCE_AGENT_BOUNDED_JSON_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace constance::agent {

// Levels of objects and arrays one JSON value may have (a flat object is
// 1). README documents it.
inline constexpr int kMaxJsonDepth = 64;

struct JsonNesting {
  int depth = 0;  // Of the deepest value: 0 for a scalar, 1 for a flat object or array.
  // When the text is an array: each item's own depth, in order.
  std::vector<int> item_depths;
};

// Measures `text` without parsing it: brackets outside strings are
// counted; the text need not be valid JSON (the parser then says why).
JsonNesting MeasureJsonNesting(absl::string_view text);

// The error for a value nested deeper than kMaxJsonDepth.
absl::Status TooDeepError();

// Parses `text` as one JSON value. InvalidArgument "malformed JSON: ..."
// with the parser's reason, or TooDeepError() for more than kMaxJsonDepth
// levels (checked before parsing).
absl::StatusOr<nlohmann::json> ParseBoundedJson(absl::string_view text);

// The same for a request body whose `nesting` was measured: an array may
// hold items up to kMaxJsonDepth deep (its own level on top) and deeper
// ones, which the caller refuses by index (the parser itself does not
// recurse); anything else is bounded as ParseBoundedJson.
absl::StatusOr<nlohmann::json> ParseBoundedJsonArrayOrObject(absl::string_view text,
                                                             const JsonNesting& nesting);

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_BOUNDED_JSON_H_
