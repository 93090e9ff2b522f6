#include "agent/file_input.h"

#include <iconv.h>

#include <cerrno>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/bounded_json.h"
#include "agent/checklists.h"
#include "agent/ingest_json.h"
#include "agent/input_config.h"
#include "agent/input_values.h"
#include "agent/price_check.h"
#include "constance/money.h"
#include "csv.h"
#include "google/protobuf/util/time_util.h"
#include "nlohmann/json.hpp"

namespace constance::agent {

using Records = InputMapping::Records;

// Converts one line to UTF-8 with glibc's iconv (no hand-written code
// pages). Bytes the code page does not define become U+FFFD and are reported.
struct FileParser::Converter {
  explicit Converter(InputMapping::Encoding encoding) {
    const char* from =
        encoding == InputMapping::Encoding::kWindows1250 ? "WINDOWS-1250" : "ISO-8859-1";
    if (encoding != InputMapping::Encoding::kUtf8) cd = iconv_open("UTF-8", from);
  }
  ~Converter() {
    if (cd != reinterpret_cast<iconv_t>(-1)) iconv_close(cd);
  }
  // Appends `in` converted to `*out`; false (with the first bad byte in
  // *why) when a byte could not be converted.
  bool Convert(absl::string_view in, std::string* out, std::string* why) {
    if (cd == reinterpret_cast<iconv_t>(-1)) {
      out->append(in.data(), in.size());
      return true;
    }
    bool ok = true;
    char* src = const_cast<char*>(in.data());
    size_t left = in.size();
    char buf[4096];
    while (left > 0) {
      char* dst = buf;
      size_t room = sizeof(buf);
      size_t rc = iconv(cd, &src, &left, &dst, &room);
      out->append(buf, static_cast<size_t>(dst - buf));
      if (rc == static_cast<size_t>(-1) && errno == EILSEQ) {
        if (ok) {
          *why = absl::StrCat(
              "byte 0x", absl::Hex(static_cast<unsigned char>(*src), absl::kZeroPad2),
              " at column ", in.size() - left + 1, " is not valid in the file's encoding");
        }
        ok = false;
        out->append("\xEF\xBF\xBD");
        ++src;
        --left;
      } else if (rc == static_cast<size_t>(-1) && errno != E2BIG) {
        break;  // EINVAL: an incomplete sequence cannot happen in single-byte code pages.
      }
    }
    iconv(cd, nullptr, nullptr, nullptr, nullptr);
    return ok;
  }
  iconv_t cd = reinterpret_cast<iconv_t>(-1);
};

namespace {

// What libcsv's callbacks build.
struct CsvRows {
  std::vector<std::string> fields;
  std::vector<std::vector<std::string>> rows;
};

void OnField(void* data, size_t len, void* state) {
  static_cast<CsvRows*>(state)->fields.emplace_back(static_cast<const char*>(data), len);
}

void OnRecord(int, void* state) {
  auto* s = static_cast<CsvRows*>(state);
  s->rows.push_back(std::move(s->fields));
  s->fields.clear();
}

google::protobuf::Timestamp Stamp(absl::Time t) {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

std::string Trimmed(absl::string_view s) { return std::string(absl::StripAsciiWhitespace(s)); }

}  // namespace

FileParser::FileParser(InputMapping mapping, Limits limits, FileNameFacts file,
                       size_t max_line_bytes)
    : mapping_(std::move(mapping)),
      limits_(limits),
      file_(std::move(file)),
      max_line_bytes_(max_line_bytes),
      converter_(std::make_unique<Converter>(mapping_.encoding)) {
  if (mapping_.max_lateness > absl::ZeroDuration()) limits_.max_lateness = mapping_.max_lateness;
  // JSONL lines carry their own field names: no header row.
  if (mapping_.format == InputMapping::Format::kJsonl) header_read_ = true;
}

FileParser::~FileParser() = default;

bool FileParser::LineTooLong(absl::string_view data) const {
  return data.size() > max_line_bytes_ &&
         data.substr(0, max_line_bytes_ + 1).find('\n') == absl::string_view::npos;
}

std::string LineTooLongReason(size_t max_line_bytes) {
  return absl::StrCat("line over max_line_bytes (", max_line_bytes,
                      " bytes); skipped to its newline (raise drop_directory.max_line_bytes for "
                      "longer records)");
}

int FileParser::Column(const std::string& name, std::string* why) const {
  if (!mapping_.header) {
    int n = 0;
    if (!absl::SimpleAtoi(name, &n) || n < 1) {
      *why = absl::StrCat("column '", name, "' must be a number (the file has no header row)");
      return -1;
    }
    return n - 1;
  }
  auto it = header_.find(name);
  if (it == header_.end()) {
    *why = absl::StrCat("no column '", name, "' in the header (",
                        absl::StrJoin(header_names_, ", "), ")");
    return -1;
  }
  return it->second;
}

// One Parse call: where it is in `data`, the CSV record pending, what it
// emitted. Fed one line at a time.
struct FileParser::Pass {
  Pass(FileParser* p, absl::string_view d, int64_t first_line, absl::Time at_now,
       size_t max_records_in, std::vector<InputRecord>* out_records)
      : parser(*p),
        data(d),
        now(at_now),
        max_records(max_records_in),
        out(out_records),
        csv(p->mapping_.format == InputMapping::Format::kCsv),
        line(first_line),
        record_line(first_line) {
    if (first_line == 1 && data.substr(0, 3) == "\xEF\xBB\xBF") pos = 3;
    consumed = pos;
    record_start = pos;
    if (csv) StartCsv();
  }
  ~Pass() {
    if (csv) csv_free(&csv_state);
  }
  Pass(const Pass&) = delete;
  Pass& operator=(const Pass&) = delete;

  bool Room() const { return max_records == 0 || emitted < max_records; }
  void StartCsv() {
    csv_init(&csv_state, 0);
    csv_set_delim(&csv_state, static_cast<unsigned char>(parser.mapping_.delimiter));
    csv_set_quote(&csv_state, static_cast<unsigned char>(parser.mapping_.quote));
  }
  void Emit(InputRecord r) {
    // Whatever the record is (even bad), it belongs to the file's location
    // unless a location column says otherwise.
    if (r.location.empty()) r.location = parser.file_.location;
    ++emitted;
    out->push_back(std::move(r));
  }
  // The line ending at `end` is too long to parse: reported at the line
  // where its record began (a CSV record pending from earlier lines goes
  // with it).
  void SkipLongLine(size_t end);
  // One JSONL line, ending at `end`, converted to `text`.
  void JsonLine(const std::string& text, size_t end);
  // One CSV line, ending at `end` (without a newline when not
  // `complete_line`), converted to `text`. False when an unclosed quote
  // ends the pass.
  bool CsvLine(const std::string& text, size_t end, bool complete_line);
  // At the end of a complete file, the unterminated last record as it is.
  void FinishCsv(bool at_end);

  FileParser& parser;
  const absl::string_view data;
  const absl::Time now;
  const size_t max_records;
  std::vector<InputRecord>* const out;
  const bool csv;
  csv_parser csv_state;
  CsvRows rows;
  size_t pos = 0;
  int64_t line;
  size_t consumed = 0;
  size_t record_start = 0;     // Offset where the pending record began.
  int64_t record_line;         // Its first line.
  std::string record_problem;  // An encoding problem on one of its lines.
  size_t emitted = 0;
};

void FileParser::Pass::SkipLongLine(size_t end) {
  InputRecord r;
  r.line = csv ? record_line : line;
  r.next_line = line + 1;
  r.end_offset = end;
  r.error = LineTooLongReason(parser.max_line_bytes_);
  Emit(std::move(r));
  if (csv) {
    csv_free(&csv_state);
    StartCsv();
    rows.rows.clear();
    record_line = line + 1;
    record_start = end;
  }
  record_problem.clear();
  consumed = end;
  pos = end;
  ++line;
}

void FileParser::Pass::JsonLine(const std::string& text, size_t end) {
  InputRecord r;
  r.line = line;
  r.next_line = line + 1;
  r.end_offset = end;
  absl::string_view body = absl::StripAsciiWhitespace(text);
  if (!record_problem.empty()) {
    r.error = record_problem;
    Emit(std::move(r));
  } else if (!body.empty()) {
    parser.MapJsonLine(body, now, &r);
    Emit(std::move(r));
  }
  record_problem.clear();
  consumed = end;
  pos = end;
  ++line;
}

bool FileParser::Pass::CsvLine(const std::string& text, size_t end, bool complete_line) {
  // libcsv does not say where in the input a record ended; fed one line
  // at a time, a record completed by this feed ends with this line, which
  // is what a checkpoint needs.
  csv_parse(&csv_state, text.data(), text.size(), OnField, OnRecord, &rows);
  if (!complete_line) csv_fini(&csv_state, OnField, OnRecord, &rows);
  pos = end;
  for (std::vector<std::string>& fields : rows.rows) {
    Emit(parser.TakeRow(fields, record_line, line + 1, end, record_problem, now));
    record_problem.clear();
    record_line = line + 1;
    record_start = end;
    consumed = end;
  }
  rows.rows.clear();
  ++line;
  if (pos - record_start <= kMaxRecordBytes) return true;
  // An unclosed quote: report it at its first line and go on after that
  // line (the caller parses again from there).
  InputRecord r;
  r.line = record_line;
  r.next_line = record_line + 1;
  const size_t first_nl = data.find('\n', record_start);
  r.end_offset = first_nl == absl::string_view::npos ? data.size() : first_nl + 1;
  r.error =
      absl::StrCat("unterminated quoted field: the record is over ", kMaxRecordBytes, " bytes");
  consumed = r.end_offset;
  Emit(std::move(r));
  return false;
}

void FileParser::Pass::FinishCsv(bool at_end) {
  if (at_end && pos == data.size() && consumed < data.size() && Room()) {
    // The file is complete: an unterminated last record is taken as it is.
    csv_fini(&csv_state, OnField, OnRecord, &rows);
    for (std::vector<std::string>& fields : rows.rows) {
      Emit(parser.TakeRow(fields, record_line, line, data.size(), "", now));
    }
    consumed = data.size();
  }
}

size_t FileParser::Parse(absl::string_view data, int64_t first_line, bool at_end, absl::Time now,
                         size_t max_records, std::vector<InputRecord>* out) {
  Pass p(this, data, first_line, now, max_records, out);
  while (p.pos < data.size() && p.Room()) {
    size_t nl = data.find('\n', p.pos);
    const bool complete_line = nl != absl::string_view::npos;
    if (!complete_line && !at_end) break;  // A line still being written waits.
    const size_t end = complete_line ? nl + 1 : data.size();
    if ((complete_line ? nl : end) - p.pos > max_line_bytes_) {
      p.SkipLongLine(end);
      continue;
    }
    const absl::string_view raw = data.substr(p.pos, end - p.pos);
    std::string text;
    std::string why;
    if (!converter_->Convert(raw, &text, &why) && p.record_problem.empty()) {
      p.record_problem = absl::StrCat(why);
    }
    if (!p.csv) {
      p.JsonLine(text, end);
    } else if (!p.CsvLine(text, end, complete_line)) {
      break;
    }
  }
  if (p.csv) p.FinishCsv(at_end);
  return p.consumed;
}

InputRecord FileParser::TakeRow(const std::vector<std::string>& fields, int64_t line,
                                int64_t next_line, size_t end_offset, const std::string& problem,
                                absl::Time now) {
  InputRecord r;
  r.line = line;
  r.next_line = next_line;
  r.end_offset = end_offset;
  if (!problem.empty()) {
    r.error = problem;
  } else if (!header_read_) {
    r.header = true;
    header_read_ = true;
    header_.clear();
    header_names_.clear();
    for (size_t i = 0; i < fields.size(); ++i) {
      std::string name = Trimmed(fields[i]);
      header_names_.push_back(name);
      header_.emplace(std::move(name), static_cast<int>(i));
    }
  } else if (fields.size() == 1 && Trimmed(fields[0]).empty()) {
    r.header = true;  // A blank line: consumed, nothing to say.
  } else {
    MapRow(fields, now, &r);
  }
  return r;
}

void FileParser::MapJsonLine(absl::string_view line, absl::Time now, InputRecord* r) {
  switch (mapping_.records) {
    case Records::kObservation: {
      absl::StatusOr<ParsedObservations> parsed = ParseObservations(line, now, limits_);
      if (!parsed.ok()) {
        r->error = std::string(parsed.status().message());
      } else if (!parsed->rejected.empty()) {
        r->error = parsed->rejected.front().reason;
      } else {
        r->observations = std::move(parsed->accepted);
      }
      return;
    }
    case Records::kTicket: {
      absl::StatusOr<TicketEvent> e = ParseTicketJson(line, now);
      if (!e.ok()) {
        r->error = std::string(e.status().message());
      } else {
        r->tickets.push_back(*std::move(e));
      }
      return;
    }
    case Records::kChecklist: {
      absl::StatusOr<ChecklistSubmission> sub = ParseChecklistJson(line);
      absl::StatusOr<std::vector<v1::Observation>> obs =
          sub.ok() ? ChecklistObservations(*sub, now, limits_) : sub.status();
      if (!obs.ok()) {
        r->error = std::string(obs.status().message());
      } else {
        r->observations = *std::move(obs);
      }
      return;
    }
    case Records::kPriceCheck: {
      absl::StatusOr<PriceCheck> check = ParsePriceCheckJson(line);
      absl::StatusOr<std::vector<v1::Observation>> obs =
          check.ok() ? PriceCheckObservations(*check, now, limits_) : check.status();
      if (!obs.ok()) {
        r->error = std::string(obs.status().message());
      } else {
        r->observations = *std::move(obs);
      }
      return;
    }
    default:
      break;
  }
  // Column-mapped: the object's fields are the columns.
  absl::StatusOr<nlohmann::json> parsed = ParseBoundedJson(line);
  if (!parsed.ok()) {
    r->error = std::string(parsed.status().message());
    return;
  }
  const nlohmann::json& obj = *parsed;
  if (!obj.is_object()) {
    r->error = "not a JSON object";
    return;
  }
  header_.clear();
  header_names_.clear();
  std::vector<std::string> fields;
  for (const auto& [name, value] : obj.items()) {
    header_.emplace(name, static_cast<int>(fields.size()));
    header_names_.push_back(name);
    fields.push_back(value.is_string() ? value.get<std::string>()
                                       : (value.is_null() ? "" : value.dump()));
  }
  MapRow(fields, now, r);
}

bool FileParser::Cell(const std::vector<std::string>& fields, const std::string& column,
                      std::string* value, InputRecord* r) const {
  if (column.empty()) {
    value->clear();
    return true;
  }
  std::string why;
  const int index = Column(column, &why);
  if (index < 0) {
    r->error = why;
    return false;
  }
  if (static_cast<size_t>(index) >= fields.size()) {
    r->error =
        absl::StrCat("no column '", column, "' in this row (it has ", fields.size(), " fields)");
    return false;
  }
  *value = Trimmed(fields[static_cast<size_t>(index)]);
  return true;
}

void FileParser::MapRow(const std::vector<std::string>& fields, absl::Time now,
                        InputRecord* r) const {
  const InputMapping& m = mapping_;
  // Reads a column's text; empty optional column -> "".
  auto get = [&](const std::string& column, std::string* value) {
    return Cell(fields, column, value, r);
  };
  auto fail = [&](absl::string_view column, const absl::Status& s) {
    r->error = absl::StrCat("column '", column, "': ", s.message());
  };
  std::string key, location, at_text, id, currency;
  if (!get(m.key_column, &key) || !get(m.location_column, &location) ||
      !get(m.observed_at_column, &at_text) || !get(m.id_column, &id) ||
      !get(m.currency_column, &currency)) {
    return;
  }
  r->location = absl::AsciiStrToLower(location);
  if (m.key_column.empty()) key = m.key;
  if (key.empty()) {
    r->error = absl::StrCat("column '", m.key_column, "' is empty (no key)");
    return;
  }
  key = absl::StrCat(m.key_prefix, key);
  absl::Time at = file_.observed_at == absl::InfinitePast() ? now : file_.observed_at;
  if (!m.observed_at_column.empty()) {
    absl::StatusOr<absl::Time> t = ParseInputTime(at_text, m.time_format);
    if (!t.ok()) return fail(m.observed_at_column, t.status());
    at = *t;
  }
  if (currency.empty()) currency = m.currency;
  currency = absl::AsciiStrToUpper(currency);

  if (m.records == Records::kTicket) {
    TicketEvent e;
    e.service = key;
    e.at = at;
    std::string event;
    if (!get(m.ticket_column, &e.ticket) || !get(m.event_column, &event)) return;
    absl::StatusOr<TicketEvent::Type> type = ParseTicketEventType(absl::AsciiStrToLower(event));
    if (!type.ok()) return fail(m.event_column, type.status());
    e.type = *type;
    if (absl::Status s = ValidateTicketEvent(e); !s.ok()) {
      r->error = std::string(s.message());
      return;
    }
    r->tickets.push_back(std::move(e));
    return;
  }
  if (m.records == Records::kPriceCheck) {
    PriceCheck check;
    check.item = key;
    check.currency = currency;
    check.observed_at = at;
    check.id = id;
    const struct {
      const std::string& column;
      std::optional<int64_t>* out;
    } kPrices[] = {
        {m.shelf_column, &check.shelf}, {m.pos_column, &check.pos}, {m.list_column, &check.list}};
    for (const auto& p : kPrices) {
      std::string text;
      if (!get(p.column, &text)) return;
      if (text.empty()) continue;
      absl::StatusOr<int64_t> minor = ParseMoney(text, currency, m.decimal, m.thousands);
      if (!minor.ok()) return fail(p.column, minor.status());
      *p.out = *minor;
    }
    absl::StatusOr<std::vector<v1::Observation>> obs = PriceCheckObservations(check, now, limits_);
    if (!obs.ok()) {
      r->error = std::string(obs.status().message());
      return;
    }
    r->observations = *std::move(obs);
    return;
  }

  if (m.values.empty()) {
    MapValue(fields, {m.value_column, m.kind}, key, at, id, currency, now, r);
    return;
  }
  // Several prices per row: each listed column with a value gives one, all
  // or nothing.
  for (const InputMapping::ValueColumn& column : m.values) {
    if (!MapValue(fields, column, key, at, id, currency, now, r)) {
      r->observations.clear();
      return;
    }
  }
  if (r->observations.empty()) {
    std::vector<std::string> names;
    for (const InputMapping::ValueColumn& column : m.values) names.push_back(column.column);
    r->error = absl::StrCat("no price: columns '", absl::StrJoin(names, "', '"), "' are all empty");
  }
}

bool FileParser::MapValue(const std::vector<std::string>& fields,
                          const InputMapping::ValueColumn& column, const std::string& key,
                          absl::Time at, const std::string& id, const std::string& currency,
                          absl::Time now, InputRecord* r) const {
  const InputMapping& m = mapping_;
  auto get = [&](const std::string& name, std::string* value) {
    return Cell(fields, name, value, r);
  };
  auto fail = [&](absl::string_view name, const absl::Status& s) {
    r->error = absl::StrCat("column '", name, "': ", s.message());
    return false;
  };
  std::string value;
  if (!get(column.column, &value)) return false;
  // A listed column left empty: this row has no such price (no promotion).
  if (value.empty() && !m.values.empty()) return true;
  v1::Observation o;
  o.set_key(key);
  *o.mutable_observed_at() = Stamp(at);
  // One id per observation: a row of several prices gives each its kind.
  if (!id.empty()) o.set_id(m.values.size() > 1 ? absl::StrCat(id, ".", column.kind) : id);
  switch (m.records) {
    case Records::kPrice: {
      absl::StatusOr<int64_t> minor = ParseMoney(value, currency, m.decimal, m.thousands);
      if (!minor.ok()) return fail(column.column, minor.status());
      o.mutable_price()->set_minor_units(*minor);
      o.mutable_price()->set_currency(currency);
      v1::PriceKind kind = v1::SHELF;
      if (column.kind == "pos") kind = v1::POS;
      if (column.kind == "list") kind = v1::LIST;
      if (column.kind == "promo") kind = v1::PROMO;
      o.mutable_price()->set_kind(kind);
      break;
    }
    case Records::kWait:
    case Records::kScore: {
      absl::StatusOr<double> v = ParseDecimalNumber(value, m.decimal, m.thousands);
      if (!v.ok()) return fail(column.column, v.status());
      if (m.records == Records::kWait) {
        o.set_wait_seconds(*v);
      } else {
        o.set_score(*v);
      }
      break;
    }
    case Records::kCompliance: {
      absl::StatusOr<std::optional<bool>> passed = ParsePassFail(value);
      if (!passed.ok()) return fail(column.column, passed.status());
      if (!passed->has_value()) return true;  // Not applicable: nothing.
      std::string critical_text;
      if (!get(m.critical_column, &critical_text)) return false;
      absl::StatusOr<std::optional<bool>> critical = ParsePassFail(critical_text);
      if (!critical.ok()) return fail(m.critical_column, critical.status());
      o.mutable_check()->set_passed(**passed);
      o.mutable_check()->set_critical(critical->value_or(false));
      break;
    }
    default:
      r->error = absl::StrCat("records '", RecordsName(m.records), "' cannot be read from ",
                              m.format == InputMapping::Format::kCsv ? "CSV" : "these lines");
      return false;
  }
  if (absl::Status s = ValidateObservation(o, now, limits_); !s.ok()) {
    r->error = std::string(s.message());
    return false;
  }
  r->observations.push_back(std::move(o));
  return true;
}

}  // namespace constance::agent
