// Fuzz target: the drop directory's file parser (agent/file_input.h) on a
// store export, CSV or JSONL, read in two pieces as a growing file is.
//
// Input layout: byte 0 picks one of the mappings below ('0'.. for the
// seeds), byte 1 where the file is cut for the first read (in tenths of
// its length), the rest is the file. Nothing may crash; the parser must
// consume whole records only, report records in order within what it
// consumed, and consume everything once told the file is complete.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/config.h"
#include "agent/file_input.h"
#include "constance/validate.h"
#include "tests/fuzz/small_stack.h"

namespace {

using constance::agent::InputMapping;

std::vector<InputMapping> Mappings() {
  std::vector<InputMapping> all;
  InputMapping m;
  // 0: a Czech POS export (tests/data/agent/prices-cp1250.csv).
  m.encoding = InputMapping::Encoding::kWindows1250;
  m.records = InputMapping::Records::kPriceCheck;
  m.delimiter = ';';
  m.decimal = ',';
  m.thousands = " ";
  m.key_column = "K\xC3\xB3" "d zbo\xC5\xBE\xC3\xAD";
  m.shelf_column = "Cena reg\xC3\xA1l";
  m.pos_column = "Cena pokladna";
  m.list_column = "Cen\xC3\xADk";
  m.currency_column = "M\xC4\x9Bna";
  m.observed_at_column = "Datum";
  all.push_back(m);
  // 1: shelf prices, one per row, with a location column.
  m = InputMapping{};
  m.records = InputMapping::Records::kPrice;
  m.key_column = "sku";
  m.value_column = "price";
  m.currency = "EUR";
  m.kind = "promo";
  m.location_column = "store";
  m.id_column = "id";
  m.key_prefix = "sku-";
  all.push_back(m);
  // 2: hygiene checks.
  m = InputMapping{};
  m.records = InputMapping::Records::kCompliance;
  m.key_column = "check";
  m.value_column = "result";
  m.critical_column = "critical";
  all.push_back(m);
  // 3: waits without a header, epoch seconds, tab-separated.
  m = InputMapping{};
  m.records = InputMapping::Records::kWait;
  m.header = false;
  m.delimiter = '\t';
  m.key_column = "1";
  m.value_column = "2";
  m.observed_at_column = "3";
  m.time_format = "unix";
  all.push_back(m);
  // 4: queue events as CSV rows.
  m = InputMapping{};
  m.records = InputMapping::Records::kTicket;
  m.ticket_column = "ticket";
  m.event_column = "event";
  m.key_column = "service";
  m.observed_at_column = "at";
  all.push_back(m);
  // 5: scores in Latin-1 with a local time format and a constant key.
  m = InputMapping{};
  m.encoding = InputMapping::Encoding::kLatin1;
  m.records = InputMapping::Records::kScore;
  m.key = "inspection";
  m.value_column = "SCORE";
  m.observed_at_column = "DATE";
  m.time_format = "%d.%m.%Y %H:%M";
  m.decimal = ',';
  m.thousands = ".";
  m.max_lateness = absl::Hours(24 * 365 * 10);
  all.push_back(m);
  // 6-9: JSONL lines shaped like the HTTP endpoints' items.
  for (InputMapping::Records r :
       {InputMapping::Records::kObservation, InputMapping::Records::kTicket,
        InputMapping::Records::kChecklist, InputMapping::Records::kPriceCheck}) {
    m = InputMapping{};
    m.format = InputMapping::Format::kJsonl;
    m.records = r;
    all.push_back(m);
  }
  return all;
}

}  // namespace

namespace {

// Parses `file` in two pieces (cut at `cut`) as the drop directory does.
void OneInput(const InputMapping& mapping, absl::string_view file, size_t cut) {
  const absl::Time now = absl::FromUnixSeconds(1'795'305'600);  // 2026-11-22T00:00:00Z

  constance::agent::FileParser parser(mapping, constance::Limits{});
  std::vector<constance::agent::InputRecord> records;
  const size_t first = parser.Parse(file.substr(0, cut), 1, /*at_end=*/false, now, 0, &records);
  if (first > cut) std::abort();
  int64_t line = 1;
  size_t offset = 0;
  for (const constance::agent::InputRecord& r : records) {
    if (r.end_offset < offset || r.end_offset > first || r.next_line < r.line) std::abort();
    offset = r.end_offset;
    line = r.next_line;
    if (!r.error.empty() && (!r.observations.empty() || !r.tickets.empty())) std::abort();
  }
  // The rest of the file, now complete: everything is consumed.
  records.clear();
  const absl::string_view rest = file.substr(first);
  const size_t second = parser.Parse(rest, line, /*at_end=*/true, now, 0, &records);
  if (second != rest.size()) std::abort();
  offset = 0;
  for (const constance::agent::InputRecord& r : records) {
    if (r.end_offset < offset || r.end_offset > second) std::abort();
    offset = r.end_offset;
  }
}

}  // namespace

// Each input runs on a thread with an HTTP worker's stack (small_stack.h):
// the same parsers serve the HTTP endpoints' items.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<InputMapping> mappings = Mappings();
  if (size < 2) return -1;
  const InputMapping& mapping = mappings[static_cast<uint8_t>(data[0] - '0') % mappings.size()];
  const absl::string_view file(reinterpret_cast<const char*>(data) + 2, size - 2);
  const size_t cut = file.size() * (static_cast<uint8_t>(data[1] - '0') % 11) / 10;
  constance::testing::RunOnSmallStack([&] { OneInput(mapping, file, cut); });
  return 0;
}
