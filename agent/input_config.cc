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

using yaml::Field;
using yaml::Key;
using yaml::Reader;
using M = InputMapping;

// A single character: the delimiter or quote of a CSV file.
absl::Status ReadChar(const Reader& r, const Field& f, char* out) {
  std::string s;
  if (absl::Status st = r.Text(f, &s); !st.ok()) return st;
  if (s == "tab" || s == "\\t") {
    *out = '\t';
    return absl::OkStatus();
  }
  if (s.size() != 1 || static_cast<unsigned char>(s[0]) >= 0x80) {
    return r.Error(f, absl::StrCat("'", s, "' must be one ASCII character (or 'tab')"));
  }
  *out = s[0];
  return absl::OkStatus();
}

Key<M> TextKey(const char* name, std::string M::*member) {
  return {name, [=](const Reader& r, const Field& f, M* m) { return r.Text(f, &(m->*member)); }};
}

// A name turned into an enum by one of the Parse*Name functions below.
template <typename E>
Key<M> NameKey(const char* name, E M::*member, absl::Status (*parse)(absl::string_view, E*)) {
  return {name, [=](const Reader& r, const Field& f, M* m) {
            std::string text;
            return r.Checked(
                f, [&](absl::string_view t) { return parse(t, &(m->*member)); }, &text);
          }};
}

absl::Status CheckDecimal(absl::string_view s) {
  if (s == "." || s == ",") return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("'", s, "' must be '.' or ','"));
}

absl::Status CheckThousands(absl::string_view s) {
  if (s == "" || s == "none" || s == "space" || s == " " || s == "." || s == "," || s == "'") {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("'", s, "' must be one of: none, space, '.', ',', \"'\" (apostrophe)"));
}

// The keys of one `files:` entry.
const std::vector<Key<M>>& MappingKeys() {
  static const std::vector<Key<M>> kKeys = [] {
    std::vector<Key<M>> keys = {
        TextKey("pattern", &M::pattern),
        TextKey("key_column", &M::key_column),
        TextKey("value_column", &M::value_column),
        TextKey("shelf_column", &M::shelf_column),
        TextKey("pos_column", &M::pos_column),
        TextKey("list_column", &M::list_column),
        TextKey("currency_column", &M::currency_column),
        TextKey("observed_at_column", &M::observed_at_column),
        TextKey("critical_column", &M::critical_column),
        TextKey("id_column", &M::id_column),
        TextKey("ticket_column", &M::ticket_column),
        TextKey("event_column", &M::event_column),
        TextKey("location_column", &M::location_column),
        TextKey("key", &M::key),
        TextKey("currency", &M::currency),
        TextKey("kind", &M::kind),
        TextKey("key_prefix", &M::key_prefix),
        TextKey("time_format", &M::time_format),
        TextKey("name_regex", &M::name_regex),
        TextKey("name_time_format", &M::name_time_format),
        TextKey("location_prefix", &M::location_prefix),
        NameKey("format", &M::format, ParseFormatName),
        NameKey("encoding", &M::encoding, ParseEncodingName),
        NameKey("records", &M::records, ParseRecordsName),
        {"delimiter", [](const Reader& r, const Field& f, M* m) {
           return ReadChar(r, f, &m->delimiter);
         }},
        {"quote", [](const Reader& r, const Field& f, M* m) { return ReadChar(r, f, &m->quote); }},
        {"decimal",
         [](const Reader& r, const Field& f, M* m) {
           std::string s;
           if (absl::Status st = r.Checked(f, CheckDecimal, &s); !st.ok()) return st;
           m->decimal = s[0];
           return absl::OkStatus();
         }},
        {"thousands",
         [](const Reader& r, const Field& f, M* m) {
           std::string s;
           if (absl::Status st = r.Checked(f, CheckThousands, &s); !st.ok()) return st;
           m->thousands = s == "none" ? "" : s == "space" ? " " : s;
           return absl::OkStatus();
         }},
        {"header", [](const Reader& r, const Field& f, M* m) { return r.Bool(f, &m->header); }},
        {"max_lateness",
         [](const Reader& r, const Field& f, M* m) {
           return r.Duration(f, {.allow_zero = true, .days = true}, &m->max_lateness);
         }},
        {"cadence",
         [](const Reader& r, const Field& f, M* m) {
           return r.Duration(f, {.days = true}, &m->cadence);
         }},
        // `values: [{column: Price, kind: shelf}, {column: PromoPrice, kind: promo}]`.
        {"values",
         [](const Reader& r, const Field& f, M* m) {
           using V = M::ValueColumn;
           static const std::vector<Key<V>> kValueKeys = {
               {"column", [](const Reader& r, const Field& f, V* v) { return r.Text(f, &v->column); },
                "the price column"},
               {"kind", [](const Reader& r, const Field& f, V* v) { return r.Text(f, &v->kind); },
                "shelf, pos, list or promo"},
           };
           if (!f.node.IsSequence() || f.node.size() == 0) {
             return r.Error(f, "expected a list like [{column: Price, kind: shelf}, "
                               "{column: PromoPrice, kind: promo}]");
           }
           m->values.clear();
           return r.List(f, kValueKeys, &m->values);
         }},
    };
    return keys;
  }();
  return kKeys;
}

// One `files:` entry, read and then checked as a whole.
absl::Status ReadMapping(const Reader& r, const Field& item, std::vector<InputMapping>* out) {
  InputMapping m;
  if (!item.node.IsMap()) return r.Error(item, "expected a mapping (pattern: ..., records: ...)");
  if (absl::Status s = r.Map(item, MappingKeys(), &m); !s.ok()) return s;
  if (item.node["kind"] && !m.values.empty()) {
    return r.Error(item, "field 'kind' and 'values' both given: give each column's kind in values");
  }
  if (absl::Status s = ValidateInputMapping(m); !s.ok()) return r.Error(item, s.message());
  out->push_back(std::move(m));
  return absl::OkStatus();
}

absl::Status CheckProcessed(absl::string_view s) {
  if (s == "move" || s == "keep") return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("'", s, "' is not move or keep"));
}

// The keys of the `drop_directory:` section.
const std::vector<Key<DropDirectoryConfig>>& DropDirectoryKeys() {
  using D = DropDirectoryConfig;
  static const std::vector<Key<D>> kKeys = {
      {"path", [](const Reader& r, const Field& f, D* d) { return r.Text(f, &d->path); }},
      {"poll_interval",
       [](const Reader& r, const Field& f, D* d) { return r.Duration(f, {}, &d->poll_interval); }},
      {"settle_time",
       [](const Reader& r, const Field& f, D* d) { return r.Duration(f, {}, &d->settle_time); }},
      {"processed",
       [](const Reader& r, const Field& f, D* d) {
         std::string s;
         if (absl::Status st = r.Checked(f, CheckProcessed, &s); !st.ok()) return st;
         d->keep_processed = s == "keep";
         return absl::OkStatus();
       }},
      {"processed_dir",
       [](const Reader& r, const Field& f, D* d) { return r.Text(f, &d->processed_dir); }},
      {"quarantine_dir",
       [](const Reader& r, const Field& f, D* d) { return r.Text(f, &d->quarantine_dir); }},
      {"max_records_per_commit",
       [](const Reader& r, const Field& f, D* d) {
         int64_t n = 0;
         if (absl::Status s = r.Integer(f, 1, 100'000, &n); !s.ok()) return s;
         d->max_records_per_commit = static_cast<size_t>(n);
         return absl::OkStatus();
       }},
      {"max_line_bytes",
       [](const Reader& r, const Field& f, D* d) {
         int64_t n = 0;
         if (absl::Status s = r.Integer(f, 1024, static_cast<int64_t>(kMaxMaxLineBytes), &n); !s.ok()) return s;
         d->max_line_bytes = static_cast<size_t>(n);
         return absl::OkStatus();
       }},
      {"files",
       [](const Reader& r, const Field& f, D* d) {
         if (!f.node.IsSequence()) return r.Error(f, "expected a list of file mappings");
         return r.EachItem(f, [&](const Field& item) { return ReadMapping(r, item, &d->files); });
       }},
  };
  return kKeys;
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

absl::Status SetMappingFlag(absl::string_view name, const std::string& value,
                            InputMapping* mapping) {
  for (const Key<M>& key : MappingKeys()) {
    if (key.name == name) return key.read(Reader::Flags(), Reader::FlagField(name, value), mapping);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--", name, ": not a field of drop_directory.files"));
}

absl::Status ParseDropDirectorySection(const yaml::Reader& reader, const yaml::Field& section,
                                       DropDirectoryConfig* out) {
  *out = DropDirectoryConfig{};
  if (absl::Status s = reader.Map(section, DropDirectoryKeys(), out); !s.ok()) return s;
  if (!out->path.empty() && out->files.empty()) {
    return reader.Error(section,
                        "'path' is set but 'files' is empty: say how the dropped files are read");
  }
  return absl::OkStatus();
}

}  // namespace constance::agent
