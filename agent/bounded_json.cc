#include "agent/bounded_json.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace constance::agent {

// Written by hand: nlohmann_json's parser has no depth limit and no way to
// stop at one (its callback can only discard a value), and this scan is
// the whole of what is needed.
JsonNesting MeasureJsonNesting(absl::string_view text) {
  JsonNesting out;
  int depth = 0;
  bool first = true;       // No value seen yet.
  bool top_array = false;  // The text is an array: its items are measured too.
  bool in_item = false;    // Inside an item of the top-level array.
  int item_depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
    if (first) {
      first = false;
      top_array = c == '[';
    }
    if (top_array && depth == 1 && !in_item && c != ',' && c != ']') {
      in_item = true;
      item_depth = 0;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '[':
      case '{':
        ++depth;
        out.depth = std::max(out.depth, depth);
        if (in_item) item_depth = std::max(item_depth, depth - 1);
        break;
      case ']':
      case '}':
        if (depth > 0) --depth;
        if (in_item && depth == 0) {
          out.item_depths.push_back(item_depth);
          in_item = false;
        }
        break;
      case ',':
        if (in_item && depth == 1) {
          out.item_depths.push_back(item_depth);
          in_item = false;
        }
        break;
      default:
        break;
    }
  }
  if (in_item) out.item_depths.push_back(item_depth);
  return out;
}

absl::Status TooDeepError() {
  return absl::InvalidArgumentError(
      absl::StrCat("nested deeper than ", kMaxJsonDepth, " levels of objects and arrays"));
}

namespace {

absl::StatusOr<nlohmann::json> Parse(absl::string_view text) {
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    // nlohmann's what() names the position and what it expected there.
    return absl::InvalidArgumentError(absl::StrCat("malformed JSON: ", e.what()));
  }
}

}  // namespace

absl::StatusOr<nlohmann::json> ParseBoundedJson(absl::string_view text) {
  if (MeasureJsonNesting(text).depth > kMaxJsonDepth) return TooDeepError();
  return Parse(text);
}

absl::StatusOr<nlohmann::json> ParseBoundedJsonArrayOrObject(absl::string_view text,
                                                             const JsonNesting& nesting) {
  // nlohmann_json parses and frees iteratively: an array holding a too-deep
  // item is safe to parse as long as nothing recurses over that item.
  if (nesting.item_depths.empty() && nesting.depth > kMaxJsonDepth) return TooDeepError();
  return Parse(text);
}

}  // namespace constance::agent
