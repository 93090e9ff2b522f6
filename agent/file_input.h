// Reading store exports (CSV, JSONL) into observations and queue events with
// an InputMapping (config.h): the parser shared by the drop directory and
// `constance-agent import`.
//
// FileParser reads a file in pieces, as it grows. Each Parse call starts at
// a record boundary and consumes whole records only: a record is complete
// when its line ends with a newline (a CSV record may span lines inside a
// quoted field). A last line without its newline is left for the next call,
// unless the caller says the file is complete (`at_end`). Each record
// reports where it ends, so the caller can checkpoint after any record.
//
// CSV is split by libcsv (quoted fields, doubled quotes, line breaks inside
// quotes); lines are converted to UTF-8 from the mapping's encoding with
// iconv before parsing. A UTF-8 byte order mark at the start of a file is
// skipped. A record that cannot be read or mapped becomes a record with an
// `error` naming what was wrong; its line number is in `line`.
//
// Example:
//   FileParser parser(mapping, limits, file_name_facts);
//   std::vector<InputRecord> records;
//   size_t used = parser.Parse(data, /*first_line=*/1, /*at_end=*/false, absl::Now(), 0,
//                              &records);
//   for (const InputRecord& r : records) if (!r.error.empty()) log(file, r.line, r.error);
//
// Not thread-safe: one parser per file being read.
#ifndef CONSTANCE_AGENT_FILE_INPUT_H_
#define CONSTANCE_AGENT_FILE_INPUT_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/config.h"
#include "agent/file_name.h"
#include "agent/tickets.h"
#include "constance/v1/observation.pb.h"
#include "constance/validate.h"

namespace constance::agent {

// One record (a CSV row, a JSONL line) and what it became.
struct InputRecord {
  // Physical line (1-based) where the record starts, and the one after it.
  int64_t line = 0;
  int64_t next_line = 0;
  // Bytes from the start of the data given to Parse through the end of
  // this record (its newline included).
  size_t end_offset = 0;
  // The header row: consumed, produces nothing.
  bool header = false;
  // The location column's value, lower-cased; when it gives none, the
  // location from the file's name (empty when neither says). Set on bad
  // records too: another location's records are skipped, not judged.
  std::string location;
  std::vector<v1::Observation> observations;
  std::vector<TicketEvent> tickets;
  // Set when the record is bad: why (it produces nothing else).
  std::string error;
};

class FileParser {
 public:
  // `limits` apply to every observation (mapping.max_lateness, if set,
  // replaces limits.max_lateness). `file` is what the file's name says
  // (ReadFileName): its observed_at is the time of column-mapped records
  // without an observed_at column, and its location that of records
  // without a location column. A line longer than `max_line_bytes`
  // (newline excluded) becomes a bad record and is skipped.
  FileParser(InputMapping mapping, Limits limits, FileNameFacts file = {},
             size_t max_line_bytes = kDefaultMaxLineBytes);
  ~FileParser();
  FileParser(const FileParser&) = delete;
  FileParser& operator=(const FileParser&) = delete;

  // Parses records from `data`, which starts at a record boundary on
  // physical line `first_line` (1 at the start of the file), appending them
  // to `*out`; at most `max_records` (0: no limit). Returns the bytes
  // consumed: through the newline of the last complete record, or all of
  // `data` when `at_end` and no limit stopped it. `now` is the clock for
  // validation and the time of records without one (when the file's name
  // gave none). Parsing stops before a line without its newline that is
  // already longer than max_line_bytes (unless `at_end`): its end is not
  // in `data`, and the caller skips it (see LineTooLong).
  size_t Parse(absl::string_view data, int64_t first_line, bool at_end, absl::Time now,
               size_t max_records, std::vector<InputRecord>* out);

  // True when `data` (starting at a record boundary) opens with a line
  // over max_line_bytes whose newline is not in it: Parse consumes none of
  // it, and the caller must skip to the next newline beyond `data`.
  bool LineTooLong(absl::string_view data) const;

  size_t max_line_bytes() const { return max_line_bytes_; }

  // True once a header row was read (or none is expected).
  bool has_header() const { return !mapping_.header || header_read_; }

  const InputMapping& mapping() const { return mapping_; }

 private:
  struct Converter;
  // One Parse call's position and pending CSV record (file_input.cc).
  struct Pass;

  // The record of one CSV row: the header, a blank line, a row refused for
  // `problem` (when not empty), or a mapped row.
  InputRecord TakeRow(const std::vector<std::string>& fields, int64_t line, int64_t next_line,
                      size_t end_offset, const std::string& problem, absl::Time now);
  // Turns one record's fields into observations or ticket events.
  void MapRow(const std::vector<std::string>& fields, absl::Time now, InputRecord* record) const;
  // Adds the observation of one value column of a wait, score, compliance
  // or price record (`kind`: a price's kind); false (and record->error set)
  // when the row is bad. `at`, `key`, `id` and `currency` are the row's.
  bool MapValue(const std::vector<std::string>& fields, const InputMapping::ValueColumn& column,
                const std::string& key, absl::Time at, const std::string& id,
                const std::string& currency, absl::Time now, InputRecord* record) const;
  // A column's trimmed text in `fields`; "" for an unset (empty) column
  // name. False, with record->error saying why, when the column is absent.
  bool Cell(const std::vector<std::string>& fields, const std::string& column, std::string* value,
            InputRecord* record) const;
  void MapJsonLine(absl::string_view line, absl::Time now, InputRecord* record);
  // Finds a column: by header name, or by 1-based number without a header.
  // -1 when absent (and `*why` says so).
  int Column(const std::string& name, std::string* why) const;

  const InputMapping mapping_;
  Limits limits_;
  const FileNameFacts file_;
  const size_t max_line_bytes_;
  std::unique_ptr<Converter> converter_;
  bool header_read_ = false;
  std::map<std::string, int> header_;
  std::vector<std::string> header_names_;
};

// Size over which an incomplete CSV record (an unclosed quote) is given up
// as an error at its first line, so one bad quote cannot stall a file.
inline constexpr size_t kMaxRecordBytes = 1 << 20;

// The error of a line over `max_line_bytes`, the same from every reader.
std::string LineTooLongReason(size_t max_line_bytes);

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_FILE_INPUT_H_
