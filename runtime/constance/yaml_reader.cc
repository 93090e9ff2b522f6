#include "constance/yaml_reader.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <exception>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"

namespace constance::yaml {
namespace {

// Whole days: "365d" (a cadence of inspections reads better in days).
bool ParseDays(absl::string_view text, absl::Duration* out) {
  if (text.size() < 2 || text.back() != 'd') return false;
  int64_t days = 0;
  text.remove_suffix(1);
  for (char c : text) {
    if (!absl::ascii_isdigit(c)) return false;
  }
  if (!absl::SimpleAtoi(text, &days) || days > 100 * 366) return false;
  *out = absl::Hours(24 * days);
  return true;
}

// A maximum that is only the member's type's limit is left unsaid.
bool IsTypeLimit(int64_t max) {
  return max == std::numeric_limits<int64_t>::max() ||
         max == std::numeric_limits<int32_t>::max() ||
         max == std::numeric_limits<uint32_t>::max();
}

// "in 1..10000", or ">= 1" where the top is only the type's limit.
std::string DescribeWhole(int64_t min, int64_t max) {
  if (IsTypeLimit(max)) return absl::StrCat(">= ", min);
  return absl::StrCat("in ", min, "..", max);
}

}  // namespace

int LineOf(const YAML::Node& node, int fallback) {
  const int line = node.Mark().line;
  return line < 0 ? fallback : line + 1;
}

std::string Child(absl::string_view path, absl::string_view key) {
  return path.empty() ? std::string(key) : absl::StrCat(path, ".", key);
}

bool InRange(double v, const Range& r) {
  return (r.lo_open ? v > r.lo : v >= r.lo) && (r.hi_open ? v < r.hi : v <= r.hi);
}

std::string Describe(const Range& r) {
  if (r.hi == kInf) return absl::StrCat(r.lo_open ? "> " : ">= ", r.lo);
  return absl::StrCat("in ", r.lo_open ? "(" : "[", r.lo, ", ", r.hi, r.hi_open ? ")" : "]");
}

absl::Status CheckDuration(absl::Duration d, DurationRule rule) {
  if (d < absl::ZeroDuration() || (!rule.allow_zero && d == absl::ZeroDuration())) {
    return absl::InvalidArgumentError(absl::StrCat(
        rule.allow_zero ? "must not be negative" : "must be positive", ", got ",
        absl::FormatDuration(d)));
  }
  return absl::OkStatus();
}

absl::Status ParseDurationText(absl::string_view text, DurationRule rule, absl::Duration* out) {
  absl::Duration d;
  if (!(rule.days && ParseDays(text, &d)) &&
      (!absl::ParseDuration(text, &d) || d == absl::InfiniteDuration() ||
       d == -absl::InfiniteDuration())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text, "' is not a duration (e.g. 90s, 1h30m, 168h", rule.days ? ", 365d)" : ")"));
  }
  if (absl::Status s = CheckDuration(d, rule); !s.ok()) return s;
  *out = d;
  return absl::OkStatus();
}

absl::Status Reader::Error(int line, absl::string_view path, absl::string_view what) const {
  if (filename_.empty()) return absl::InvalidArgumentError(absl::StrCat("--", path, ": ", what));
  if (path.empty()) path = root_name_;
  return absl::InvalidArgumentError(absl::StrCat(filename_, ":", line, ": ", path, ": ", what));
}

absl::Status Reader::Text(const Field& f, std::string* out) const {
  if (f.node.IsNull()) return Error(f, "has no value");
  if (!f.node.IsScalar()) return Error(f, "expected a single value, not a list or mapping");
  *out = f.node.Scalar();
  return absl::OkStatus();
}

absl::Status Reader::Checked(const Field& f,
                             const std::function<absl::Status(absl::string_view)>& check,
                             std::string* out) const {
  if (absl::Status s = Text(f, out); !s.ok()) return s;
  if (absl::Status s = check(*out); !s.ok()) return Error(f, s.message());
  return absl::OkStatus();
}

absl::Status Reader::Validated(const Field& f, absl::Status (*validate)(absl::string_view),
                               std::string* out) const {
  if (absl::Status s = Text(f, out); !s.ok()) return s;
  if (validate == nullptr) return absl::OkStatus();
  absl::Status s = validate(*out);
  if (s.ok()) return s;
  absl::string_view why = s.message();
  if (size_t colon = why.find(": "); colon != why.npos) why.remove_prefix(colon + 2);
  return Error(f, absl::StrCat("'", *out, "': ", why));
}

absl::Status Reader::Number(const Field& f, const Range& r, double* out) const {
  std::string text;
  if (absl::Status s = Text(f, &text); !s.ok()) return s;
  double v = 0;
  if (f.node.Tag() == "!" || !absl::SimpleAtod(text, &v) || !std::isfinite(v)) {
    return Error(f, absl::StrCat("expected a number ", Describe(r), ", got '", text, "'"));
  }
  if (!InRange(v, r)) return Error(f, absl::StrCat("must be ", Describe(r), ", got ", text));
  *out = v;
  return absl::OkStatus();
}

absl::Status Reader::Integer(const Field& f, int64_t min, int64_t max, int64_t* out) const {
  std::string text;
  if (absl::Status s = Text(f, &text); !s.ok()) return s;
  int64_t v = 0;
  if (f.node.Tag() == "!" || !absl::SimpleAtoi(text, &v)) {
    return Error(f,
                 absl::StrCat("expected a whole number ", DescribeWhole(min, max), ", got '", text,
                              "'"));
  }
  if (v > max && IsTypeLimit(max)) return Error(f, absl::StrCat("must be <= ", max, ", got ", text));
  if (v < min || v > max) {
    return Error(f, absl::StrCat("must be ", DescribeWhole(min, max), ", got ", text));
  }
  *out = v;
  return absl::OkStatus();
}

absl::Status Reader::Bool(const Field& f, bool* out) const {
  std::string text;
  if (absl::Status s = Text(f, &text); !s.ok()) return s;
  if (f.node.Tag() == "!" || !YAML::convert<bool>::decode(f.node, *out)) {
    return Error(f, absl::StrCat("expected true or false, got '", text, "'"));
  }
  return absl::OkStatus();
}

absl::Status Reader::Duration(const Field& f, DurationRule rule, absl::Duration* out) const {
  std::string text;
  if (absl::Status s = Text(f, &text); !s.ok()) return s;
  if (absl::Status s = ParseDurationText(text, rule, out); !s.ok()) return Error(f, s.message());
  return absl::OkStatus();
}

absl::Status Reader::EachItem(const Field& f,
                              const std::function<absl::Status(const Field&)>& each) const {
  if (f.node.IsNull()) return absl::OkStatus();
  if (!f.node.IsSequence()) return Error(f, "expected a list");
  for (size_t i = 0; i < f.node.size(); ++i) {
    const YAML::Node item = f.node[i];
    if (absl::Status s = each({item, absl::StrCat(f.path, "[", i, "]"), LineOf(item, f.line)});
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status Reader::EachKey(
    const Field& f,
    const std::function<absl::Status(const std::string&, const Field&)>& each) const {
  if (f.node.IsNull()) return absl::OkStatus();
  if (!f.node.IsMap()) return Error(f, "expected a mapping (key: value)");
  absl::flat_hash_map<std::string, int> seen;
  for (const auto& kv : f.node) {
    const int key_line = LineOf(kv.first, f.line);
    if (!kv.first.IsScalar()) return Error(key_line, f.path, "expected a key name");
    const std::string& name = kv.first.Scalar();
    const std::string path = Child(f.path, name);
    auto [it, inserted] = seen.emplace(name, key_line);
    if (!inserted) {
      return Error(key_line, path, absl::StrCat("duplicate key (first at line ", it->second, ")"));
    }
    const int line = kv.second.IsNull() ? key_line : LineOf(kv.second, key_line);
    if (absl::Status s = each(name, Field{kv.second, path, line}); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status Reader::UnknownKey(const Field& f, const std::vector<std::string>& allowed) const {
  return Error(f.line, f.path,
               absl::StrCat("unknown key (allowed: ", absl::StrJoin(allowed, ", "), ")"));
}

absl::Status ParseDocument(absl::string_view text, const Reader& reader,
                           const std::function<absl::Status(const Field& root)>& read) {
  // yaml-cpp reports syntax errors by throwing; values are checked before
  // any conversion that could throw, so the later handlers are a backstop
  // that keeps every exception inside.
  try {
    const YAML::Node root = YAML::Load(std::string(text));
    if (!root.IsNull() && !root.IsMap()) {
      return reader.Error(LineOf(root, 1), "",
                          "expected a mapping of settings (key: value), not a list or value");
    }
    return read(Field{root, "", 1});
  } catch (const YAML::ParserException& e) {
    return reader.Error(e.mark.line + 1, "syntax error", e.msg);
  } catch (const YAML::Exception& e) {
    return reader.Error(std::max(e.mark.line + 1, 1), "yaml", e.msg);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(reader.filename(), ": ", e.what()));
  }
}

absl::StatusOr<std::string> ReadConfigFile(const std::string& path) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"), std::fclose);
  if (file == nullptr) {
    const int error = errno;
    return absl::ErrnoToStatus(error, absl::StrCat("cannot open ", path));
  }
  std::string text;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), file.get())) > 0) text.append(buf, n);
  if (std::ferror(file.get())) {
    const int error = errno;  // EISDIR for a directory.
    return absl::ErrnoToStatus(error, absl::StrCat("cannot read ", path));
  }
  return text;
}

}  // namespace constance::yaml
