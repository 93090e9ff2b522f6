// Reading constance's YAML files: the agent config, its drop-directory
// section and the collector's catalog all go through this one layer, so a
// duration, a whole number, a yes/no or an unknown key is read by the same
// rule and reported in the same words everywhere.
//
// yaml-cpp builds the tree; what is here is the part no library does: each
// mapping is read through a table of its keys, so an unknown key, a
// duplicate key, a wrong type or a value out of range is reported as
//
//   FILE:LINE: dotted.field[0].path: what is wrong and what to write instead
//
// and nothing silently falls back to a default. No exception crosses this
// API: yaml-cpp's throws become InvalidArgument statuses.
//
// Example:
//
//   struct Settings { absl::Duration poll = absl::Seconds(1); };
//   std::vector<yaml::Key<Settings>> keys = {
//       {"poll", [](const yaml::Reader& r, const yaml::Field& f, Settings* s) {
//          return r.Duration(f, {}, &s->poll);
//        }}};
//   Settings s;
//   absl::Status status = yaml::Parse(text, "agent.yaml", "settings", keys, &s);
//   // "agent.yaml:3: poll: 'soon' is not a duration (e.g. 90s, 1h30m, 168h)"
//
// Thread-safety: a Reader is immutable after construction; key tables are
// plain values. Neither holds state between calls.
#ifndef CONSTANCE_YAML_READER_H_
#define CONSTANCE_YAML_READER_H_

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "yaml-cpp/yaml.h"

namespace constance::yaml {

// A node with its dotted field path and the line to blame. An empty value
// is blamed on its key's line: yaml-cpp marks it at the next token.
struct Field {
  YAML::Node node;
  std::string path;
  int line = 0;
};

// The 1-based line of `node`, or `fallback` where yaml-cpp has none.
int LineOf(const YAML::Node& node, int fallback);

// "a.b" for a child `b` of `a`; `b` at the top level.
std::string Child(absl::string_view path, absl::string_view key);

// Numeric ranges, with their wording for messages.
struct Range {
  double lo, hi;
  bool lo_open, hi_open;
};
inline constexpr double kInf = std::numeric_limits<double>::infinity();
inline constexpr Range kRatio{0, 1, false, false};
inline constexpr Range kPositive{0, kInf, true, true};
inline constexpr Range kNonNegative{0, kInf, false, true};
bool InRange(double v, const Range& r);
std::string Describe(const Range& r);  // "> 0", "in [0, 1]".

// How a duration may be written. Negative durations are never valid.
struct DurationRule {
  bool allow_zero = false;
  bool days = false;  // Whole days ("365d") too, for cadences counted in days.
};

// The one check of a duration's value, for file fields and flags alike:
// the bare reason ("must be positive, got 0s") or OK.
absl::Status CheckDuration(absl::Duration d, DurationRule rule);

// Parses a duration as the config files write it: absl::ParseDuration's
// units ("90s", "1h30m"), and whole days with rule.days. The reason only on
// failure; the value's range is checked too.
absl::Status ParseDurationText(absl::string_view text, DurationRule rule, absl::Duration* out);

class Reader;
template <typename T>
using ReadFn = std::function<absl::Status(const Reader&, const Field&, T*)>;

// One key of a mapping. `required`, when set, says why the key may not be
// left out; it ends up in the message.
template <typename T>
struct Key {
  std::string name;
  ReadFn<T> read;
  const char* required = nullptr;
};

// Reads values out of one file; every error names the file and the line.
class Reader {
 public:
  // `root_name` names the top-level mapping in messages ("catalog").
  Reader(absl::string_view filename, absl::string_view root_name)
      : filename_(filename), root_name_(root_name) {}

  // A reader of command-line flags read by a key table's rules (a flag
  // `--decimal=,` set by the same reader as the file's `decimal: ','`):
  // errors read "--decimal: reason". Flags() fields come from FlagField().
  static Reader Flags() { return Reader("", ""); }
  static Field FlagField(absl::string_view name, const std::string& value) {
    return Field{YAML::Node(value), std::string(name), 0};
  }

  const std::string& filename() const { return filename_; }

  // "FILE:LINE: PATH: WHAT" (for Flags(), "--PATH: WHAT") as InvalidArgument.
  absl::Status Error(int line, absl::string_view path, absl::string_view what) const;
  absl::Status Error(const Field& f, absl::string_view what) const {
    return Error(f.line, f.path, what);
  }

  // A scalar, quoted or not. "" is a value; an empty `key:` is not.
  absl::Status Text(const Field& f, std::string* out) const;

  // Text passed through `check`, which returns the bare reason on failure
  // (the message is FILE:LINE: PATH: reason).
  absl::Status Checked(const Field& f, const std::function<absl::Status(absl::string_view)>& check,
                       std::string* out) const;

  // Text passed through one of constance's validators, whose messages start
  // with their own field name: that is dropped (the path is more precise)
  // and the value is quoted instead ("'Paris': must start with ...").
  absl::Status Validated(const Field& f, absl::Status (*validate)(absl::string_view),
                         std::string* out) const;

  // Numbers must be plain scalars: a quoted "3.5" is a string in YAML.
  absl::Status Number(const Field& f, const Range& r, double* out) const;

  // A whole number in [min, max]; the message gives the range.
  absl::Status Integer(const Field& f, int64_t min, int64_t max, int64_t* out) const;

  absl::Status Bool(const Field& f, bool* out) const;

  absl::Status Duration(const Field& f, DurationRule rule, absl::Duration* out) const;

  // Calls `each` for every item of list `f` (an empty value is an empty list).
  absl::Status EachItem(const Field& f, const std::function<absl::Status(const Field&)>& each) const;

  // Calls `each` for every key of mapping `f`, rejecting duplicate keys
  // (yaml-cpp keeps both, and which one wins would be a guess). An empty
  // value is an empty mapping.
  absl::Status EachKey(const Field& f,
                       const std::function<absl::Status(const std::string&, const Field&)>& each)
      const;

  // Reads a mapping through its key table, in table order (so a value that
  // others depend on, a time zone, is read first). Unknown keys are errors
  // that list the allowed ones; a missing `required` key says why it is.
  template <typename T>
  absl::Status Map(const Field& f, const std::vector<Key<T>>& keys, T* out) const {
    absl::flat_hash_map<std::string, Field> present;
    absl::Status s = EachKey(f, [&](const std::string& name, const Field& value) {
      const bool known =
          std::any_of(keys.begin(), keys.end(), [&](const Key<T>& k) { return k.name == name; });
      if (!known) return UnknownKey(value, KeyNames(keys));
      present.emplace(name, value);
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    for (const Key<T>& k : keys) {
      auto it = present.find(k.name);
      if (it == present.end()) {
        if (k.required == nullptr) continue;
        return Error(f.line, Child(f.path, k.name), absl::StrCat("required (", k.required, ")"));
      }
      if (absl::Status s = k.read(*this, it->second, out); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // A list of mappings, each read through `keys` into a new T. `made`, when
  // given, sees each item before it is read (to note its line).
  template <typename T>
  absl::Status List(const Field& f, const std::vector<Key<T>>& keys, std::vector<T>* out,
                    const std::function<void(const Field&, T*)>& made = nullptr) const {
    return EachItem(f, [&](const Field& item) {
      T value;
      if (made) made(item, &value);
      if (absl::Status s = Map(item, keys, &value); !s.ok()) return s;
      out->push_back(std::move(value));
      return absl::OkStatus();
    });
  }

 private:
  template <typename T>
  static std::vector<std::string> KeyNames(const std::vector<Key<T>>& keys) {
    std::vector<std::string> names;
    for (const Key<T>& k : keys) names.push_back(k.name);
    return names;
  }
  absl::Status UnknownKey(const Field& f, const std::vector<std::string>& allowed) const;

  std::string filename_;
  std::string root_name_;
};

// Runs `read` on the document `text` with a Reader for `filename`: syntax
// errors become "FILE:LINE: syntax error: ...", anything else yaml-cpp
// throws is caught. An empty document is valid (every default); anything
// but a mapping at the top is an error.
absl::Status ParseDocument(absl::string_view text, const Reader& reader,
                           const std::function<absl::Status(const Field& root)>& read);

// ParseDocument with the top-level mapping read through `keys` into `out`.
template <typename T>
absl::Status Parse(absl::string_view text, const Reader& reader, const std::vector<Key<T>>& keys,
                   T* out) {
  return ParseDocument(text, reader,
                       [&](const Field& root) { return reader.Map(root, keys, out); });
}

// The whole file at `path`: NotFound / FailedPrecondition naming the path
// and the system's reason when it cannot be read.
absl::StatusOr<std::string> ReadConfigFile(const std::string& path);

}  // namespace constance::yaml

#endif  // CONSTANCE_YAML_READER_H_
