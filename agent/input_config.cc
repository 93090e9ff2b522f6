#include "agent/input_config.h"

#include <map>
#include <set>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "agent/file_name.h"
#include "yaml-cpp/yaml.h"

namespace constance::agent {
namespace {

using Records = InputMapping::Records;
using Format = InputMapping::Format;
using Encoding = InputMapping::Encoding;

const struct {
  Records value;
  const char* name;
} kRecordNames[] = {
    {Records::kObservation, "observation"}, {Records::kPrice, "price"},
    {Records::kPriceCheck, "price_check"},  {Records::kWait, "wait"},
    {Records::kCompliance, "compliance"},   {Records::kScore, "score"},
    {Records::kTicket, "ticket"},           {Records::kChecklist, "checklist"},
};

absl::StatusOr<std::string> Scalar(const YAML::Node& node) {
  if (node.IsNull()) return absl::InvalidArgumentError("has no value");
  if (!node.IsScalar()) return absl::InvalidArgumentError("must be a single value");
  return node.Scalar();
}

absl::StatusOr<char> OneChar(const YAML::Node& node) {
  absl::StatusOr<std::string> s = Scalar(node);
  if (!s.ok()) return s.status();
  if (*s == "tab" || *s == "\\t") return '\t';
  if (s->size() != 1 || static_cast<unsigned char>((*s)[0]) >= 0x80) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", *s, "' must be one ASCII character (or 'tab')"));
  }
  return (*s)[0];
}

absl::StatusOr<bool> Bool(const YAML::Node& node) {
  absl::StatusOr<std::string> s = Scalar(node);
  if (!s.ok()) return s.status();
  bool b = false;
  if (!YAML::convert<bool>::decode(node, b)) {
    return absl::InvalidArgumentError(absl::StrCat("'", *s, "' is not true or false"));
  }
  return b;
}

absl::StatusOr<absl::Duration> Duration(const YAML::Node& node, bool allow_zero) {
  absl::StatusOr<std::string> s = Scalar(node);
  if (!s.ok()) return s.status();
  absl::Duration d;
  if (!absl::ParseDuration(*s, &d) || d < absl::ZeroDuration() ||
      (!allow_zero && d == absl::ZeroDuration())) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", *s, "' is not a positive duration (e.g. 500ms, 2s, 1h)"));
  }
  return d;
}

// One item of `values`: {column: NAME, kind: KIND}.
absl::StatusOr<InputMapping::ValueColumn> ValueColumnAt(const YAML::Node& item) {
  if (!item.IsMap()) return absl::InvalidArgumentError("must be a map {column: NAME, kind: KIND}");
  InputMapping::ValueColumn v;
  for (const auto& kv : item) {
    const std::string key = kv.first.IsScalar() ? kv.first.Scalar() : "";
    if (key != "column" && key != "kind") {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown key '", key, "' (known: column, kind)"));
    }
    absl::StatusOr<std::string> text = Scalar(kv.second);
    if (!text.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("'", key, "' ", text.status().message()));
    }
    (key == "column" ? v.column : v.kind) = *text;
  }
  if (v.column.empty() || v.kind.empty()) {
    return absl::InvalidArgumentError("needs both 'column' and 'kind'");
  }
  return v;
}

// `values: [{column: Price, kind: shelf}, {column: PromoPrice, kind: promo}]`.
absl::Status SetValueColumns(const YAML::Node& node, InputMapping* m) {
  if (!node.IsSequence() || node.size() == 0) {
    return absl::InvalidArgumentError(
        "must be a list like [{column: Price, kind: shelf}, {column: PromoPrice, kind: promo}]");
  }
  m->values.clear();
  for (size_t i = 0; i < node.size(); ++i) {
    absl::StatusOr<InputMapping::ValueColumn> v = ValueColumnAt(node[i]);
    if (!v.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("[", i, "]: ", v.status().message()));
    }
    m->values.push_back(*std::move(v));
  }
  return absl::OkStatus();
}

// Sets one field of a mapping; the reason on failure.
absl::Status SetMappingField(const std::string& name, const YAML::Node& value, InputMapping* m) {
  const struct {
    const char* name;
    std::string* out;
  } kStrings[] = {
      {"pattern", &m->pattern},
      {"key_column", &m->key_column},
      {"value_column", &m->value_column},
      {"shelf_column", &m->shelf_column},
      {"pos_column", &m->pos_column},
      {"list_column", &m->list_column},
      {"currency_column", &m->currency_column},
      {"observed_at_column", &m->observed_at_column},
      {"critical_column", &m->critical_column},
      {"id_column", &m->id_column},
      {"ticket_column", &m->ticket_column},
      {"event_column", &m->event_column},
      {"location_column", &m->location_column},
      {"key", &m->key},
      {"currency", &m->currency},
      {"kind", &m->kind},
      {"key_prefix", &m->key_prefix},
      {"time_format", &m->time_format},
      {"name_regex", &m->name_regex},
      {"name_time_format", &m->name_time_format},
      {"location_prefix", &m->location_prefix},
  };
  for (const auto& f : kStrings) {
    if (name != f.name) continue;
    absl::StatusOr<std::string> s = Scalar(value);
    if (!s.ok()) return s.status();
    *f.out = *s;
    return absl::OkStatus();
  }
  if (name == "format") {
    absl::StatusOr<std::string> s = Scalar(value);
    if (!s.ok()) return s.status();
    return ParseFormatName(*s, &m->format);
  }
  if (name == "encoding") {
    absl::StatusOr<std::string> s = Scalar(value);
    if (!s.ok()) return s.status();
    return ParseEncodingName(*s, &m->encoding);
  }
  if (name == "records") {
    absl::StatusOr<std::string> s = Scalar(value);
    if (!s.ok()) return s.status();
    return ParseRecordsName(*s, &m->records);
  }
  if (name == "delimiter" || name == "quote") {
    absl::StatusOr<char> c = OneChar(value);
    if (!c.ok()) return c.status();
    (name == "delimiter" ? m->delimiter : m->quote) = *c;
    return absl::OkStatus();
  }
  if (name == "decimal") {
    absl::StatusOr<std::string> s = Scalar(value);
    if (!s.ok()) return s.status();
    if (*s != "." && *s != ",") {
      return absl::InvalidArgumentError(absl::StrCat("'", *s, "' must be '.' or ','"));
    }
    m->decimal = (*s)[0];
    return absl::OkStatus();
  }
  if (name == "thousands") {
    absl::StatusOr<std::string> s = Scalar(value);
    if (!s.ok()) return s.status();
    if (*s == "space") *s = " ";
    if (*s != "" && *s != "none" && *s != " " && *s != "." && *s != "," && *s != "'") {
      return absl::InvalidArgumentError(
          absl::StrCat("'", *s, "' must be one of: none, space, '.', ',', \"'\" (apostrophe)"));
    }
    m->thousands = *s == "none" ? "" : *s;
    return absl::OkStatus();
  }
  if (name == "header") {
    absl::StatusOr<bool> b = Bool(value);
    if (!b.ok()) return b.status();
    m->header = *b;
    return absl::OkStatus();
  }
  if (name == "max_lateness" || name == "cadence") {
    absl::StatusOr<absl::Duration> d = Duration(value, /*allow_zero=*/name == "max_lateness");
    if (!d.ok()) return d.status();
    (name == "cadence" ? m->cadence : m->max_lateness) = *d;
    return absl::OkStatus();
  }
  if (name == "values") return SetValueColumns(value, m);
  std::string known;
  for (const auto& f : kStrings) absl::StrAppend(&known, f.name, ", ");
  absl::StrAppend(&known,
                  "format, encoding, records, delimiter, quote, decimal, thousands, header, "
                  "max_lateness, cadence, values");
  return absl::InvalidArgumentError(absl::StrCat("unknown field (known: ", known, ")"));
}

absl::Status CheckPriceKind(const std::string& kind, absl::string_view field) {
  if (kind == "shelf" || kind == "pos" || kind == "list" || kind == "promo") {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": '", kind, "' is not one of: shelf, pos, list, promo"));
}

// `values` lists price columns; the one-column form is value_column + kind.
absl::Status ValidateValueColumns(const InputMapping& m) {
  if (m.values.empty()) return absl::OkStatus();
  if (m.records != Records::kPrice) {
    return absl::InvalidArgumentError(
        absl::StrCat("field 'values' is for records 'price' only (records '",
                     RecordsName(m.records), "' take 'value_column')"));
  }
  if (!m.value_column.empty()) {
    return absl::InvalidArgumentError(
        "fields 'value_column' and 'values' both given: write one column as value_column + "
        "kind, or every column in values");
  }
  std::set<std::string> kinds;
  for (size_t i = 0; i < m.values.size(); ++i) {
    const std::string field = absl::StrCat("field 'values' [", i, "] kind");
    if (absl::Status s = CheckPriceKind(m.values[i].kind, field); !s.ok()) return s;
    if (!kinds.insert(m.values[i].kind).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": '", m.values[i].kind, "' is listed twice (one column per kind)"));
    }
  }
  return absl::OkStatus();
}

std::string Where(const YAML::Node& node) { return absl::StrCat("line ", node.Mark().line + 1); }

}  // namespace

absl::string_view RecordsName(Records records) {
  for (const auto& r : kRecordNames) {
    if (r.value == records) return r.name;
  }
  return "unknown";
}

absl::Status ParseRecordsName(absl::string_view name, Records* out) {
  std::string known;
  for (const auto& r : kRecordNames) {
    if (name == r.name) {
      *out = r.value;
      return absl::OkStatus();
    }
    absl::StrAppend(&known, known.empty() ? "" : ", ", r.name);
  }
  return absl::InvalidArgumentError(absl::StrCat("'", name, "' is not one of: ", known));
}

absl::Status ParseFormatName(absl::string_view name, Format* out) {
  if (name == "csv") {
    *out = Format::kCsv;
  } else if (name == "jsonl") {
    *out = Format::kJsonl;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("'", name, "' is not csv or jsonl"));
  }
  return absl::OkStatus();
}

absl::Status ParseEncodingName(absl::string_view name, Encoding* out) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "utf-8" || n == "utf8") {
    *out = Encoding::kUtf8;
  } else if (n == "windows-1250" || n == "cp1250") {
    *out = Encoding::kWindows1250;
  } else if (n == "latin-1" || n == "latin1" || n == "iso-8859-1") {
    *out = Encoding::kLatin1;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("'", name, "' is not one of: utf-8, windows-1250, latin-1"));
  }
  return absl::OkStatus();
}

absl::Status ValidateInputMapping(const InputMapping& m) {
  auto need = [](const std::string& value, const char* field, absl::string_view records) {
    if (!value.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("records '", records, "' needs field '", field, "'"));
  };
  const absl::string_view records = RecordsName(m.records);
  const bool whole_json = m.records == Records::kObservation || m.records == Records::kChecklist ||
                          (m.format == Format::kJsonl &&
                           (m.records == Records::kTicket || m.records == Records::kPriceCheck));
  if ((m.records == Records::kObservation || m.records == Records::kChecklist) &&
      m.format != Format::kJsonl) {
    return absl::InvalidArgumentError(
        absl::StrCat("records '", records, "' are read from format jsonl only"));
  }
  if (m.pattern.empty()) return absl::InvalidArgumentError("field 'pattern' must not be empty");
  if (m.decimal != '.' && m.decimal != ',') {
    return absl::InvalidArgumentError("field 'decimal' must be '.' or ','");
  }
  if (!m.thousands.empty() && m.thousands[0] == m.decimal) {
    return absl::InvalidArgumentError("fields 'thousands' and 'decimal' must differ");
  }
  if (m.format == Format::kCsv && (m.delimiter == m.quote || m.delimiter == '\n')) {
    return absl::InvalidArgumentError("field 'delimiter' must differ from 'quote' and newline");
  }
  if (absl::Status s = CheckPriceKind(m.kind, "field 'kind'"); !s.ok()) return s;
  if (absl::Status s = ValidateValueColumns(m); !s.ok()) return s;
  if (absl::Status s = ValidateFileNameRules(m); !s.ok()) return s;
  if (m.cadence < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("field 'cadence' must be a positive duration (e.g. 24h)");
  }
  if (whole_json) return absl::OkStatus();
  if (m.key_column.empty() && m.key.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("records '", records, "' needs field 'key_column' (or a constant 'key')"));
  }
  switch (m.records) {
    case Records::kPrice:
    case Records::kWait:
    case Records::kCompliance:
    case Records::kScore:
      if (!m.values.empty()) break;
      if (absl::Status s = need(m.value_column, "value_column", records); !s.ok()) return s;
      break;
    case Records::kPriceCheck:
      if (m.shelf_column.empty() && m.pos_column.empty() && m.list_column.empty()) {
        return absl::InvalidArgumentError(
            "records 'price_check' needs at least one of shelf_column, pos_column, list_column");
      }
      break;
    case Records::kTicket:
      if (absl::Status s = need(m.ticket_column, "ticket_column", records); !s.ok()) return s;
      if (absl::Status s = need(m.event_column, "event_column", records); !s.ok()) return s;
      if (absl::Status s = need(m.observed_at_column, "observed_at_column", records); !s.ok()) {
        return s;
      }
      break;
    default:
      break;
  }
  if ((m.records == Records::kPrice || m.records == Records::kPriceCheck) && m.currency.empty() &&
      m.currency_column.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("records '", records, "' needs field 'currency' or 'currency_column'"));
  }
  return absl::OkStatus();
}

absl::Status ParseDropDirectorySection(const YAML::Node& node, DropDirectoryConfig* out) {
  *out = DropDirectoryConfig{};
  if (node.IsNull()) return absl::OkStatus();
  if (!node.IsMap()) return absl::InvalidArgumentError("must be a map of settings");
  for (const auto& kv : node) {
    const std::string key = kv.first.IsScalar() ? kv.first.Scalar() : "";
    const YAML::Node& v = kv.second;
    absl::Status s;
    if (key == "path" || key == "processed_dir" || key == "quarantine_dir") {
      absl::StatusOr<std::string> text = Scalar(v);
      s = text.status();
      if (text.ok()) {
        (key == "path" ? out->path : key == "processed_dir" ? out->processed_dir
                                                            : out->quarantine_dir) = *text;
      }
    } else if (key == "poll_interval" || key == "settle_time") {
      absl::StatusOr<absl::Duration> d = Duration(v, /*allow_zero=*/false);
      s = d.status();
      if (d.ok()) (key == "poll_interval" ? out->poll_interval : out->settle_time) = *d;
    } else if (key == "processed") {
      absl::StatusOr<std::string> text = Scalar(v);
      s = text.status();
      if (text.ok() && *text != "move" && *text != "keep") {
        s = absl::InvalidArgumentError(absl::StrCat("'", *text, "' is not move or keep"));
      }
      if (s.ok()) out->keep_processed = *text == "keep";
    } else if (key == "max_records_per_commit") {
      absl::StatusOr<std::string> text = Scalar(v);
      s = text.status();
      uint64_t n = 0;
      if (s.ok() && (!absl::SimpleAtoi(*text, &n) || n < 1 || n > 100'000)) {
        s = absl::InvalidArgumentError(absl::StrCat("'", *text, "' is not a number in 1..100000"));
      }
      if (s.ok()) out->max_records_per_commit = static_cast<size_t>(n);
    } else if (key == "max_line_bytes") {
      absl::StatusOr<std::string> text = Scalar(v);
      s = text.status();
      uint64_t n = 0;
      if (s.ok() && (!absl::SimpleAtoi(*text, &n) || n < 1024 || n > kMaxMaxLineBytes)) {
        s = absl::InvalidArgumentError(absl::StrCat(
            "'", *text, "' is not a number of bytes in 1024..", kMaxMaxLineBytes, " (default ",
            kDefaultMaxLineBytes, ")"));
      }
      if (s.ok()) out->max_line_bytes = static_cast<size_t>(n);
    } else if (key == "files") {
      if (!v.IsSequence()) {
        s = absl::InvalidArgumentError("must be a list of file mappings");
      } else {
        for (size_t i = 0; i < v.size() && s.ok(); ++i) {
          const YAML::Node& entry = v[i];
          const std::string where = absl::StrCat("files[", i, "] (", Where(entry), ")");
          if (!entry.IsMap()) {
            return absl::InvalidArgumentError(absl::StrCat(where, ": must be a map"));
          }
          InputMapping m;
          for (const auto& f : entry) {
            const std::string name = f.first.IsScalar() ? f.first.Scalar() : "";
            if (absl::Status fs = SetMappingField(name, f.second, &m); !fs.ok()) {
              return absl::InvalidArgumentError(absl::StrCat(
                  "files[", i, "] (", Where(f.first), "): field '", name, "': ", fs.message()));
            }
          }
          if (entry["kind"] && !m.values.empty()) {
            return absl::InvalidArgumentError(
                absl::StrCat(where,
                             ": field 'kind' and 'values' both given: give each "
                             "column's kind in values"));
          }
          if (absl::Status ms = ValidateInputMapping(m); !ms.ok()) {
            return absl::InvalidArgumentError(absl::StrCat(where, ": ", ms.message()));
          }
          out->files.push_back(std::move(m));
        }
      }
    } else {
      s = absl::InvalidArgumentError(
          "unknown field (known: path, poll_interval, settle_time, processed, processed_dir, "
          "quarantine_dir, max_records_per_commit, max_line_bytes, files)");
    }
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(Where(kv.first), ": field '", key, "': ", s.message()));
    }
  }
  if (!out->path.empty() && out->files.empty()) {
    return absl::InvalidArgumentError(
        "'path' is set but 'files' is empty: say how the dropped files are read");
  }
  return absl::OkStatus();
}

}  // namespace constance::agent
