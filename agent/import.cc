#include "agent/import.h"

#include <fnmatch.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/file_input.h"
#include "agent/file_name.h"
#include "agent/input_config.h"
#include "agent/input_values.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"

namespace constance::agent {
namespace {

using nlohmann::json;

const char* EventName(TicketEvent::Type t) {
  switch (t) {
    case TicketEvent::Type::kCreated:
      return "created";
    case TicketEvent::Type::kCalled:
      return "called";
    case TicketEvent::Type::kServed:
      return "served";
    case TicketEvent::Type::kAbandoned:
      return "abandoned";
  }
  return "";
}

// Posts `body`; the rejected item indexes and reasons of a 200/400 answer.
absl::StatusOr<std::vector<std::pair<size_t, std::string>>> Send(const ImportOptions& o,
                                                                 const std::string& path,
                                                                 const std::string& body,
                                                                 const std::string& key) {
  HttpRequest request;
  request.method = "POST";
  request.path = path;
  request.body = body;
  request.headers = {{"Idempotency-Key", key}};
  // The agent checks lateness too: the mapping's, not its default.
  if (o.mapping.max_lateness > absl::ZeroDuration()) {
    request.headers.push_back({"Max-Lateness", absl::FormatDuration(o.mapping.max_lateness)});
  }
  absl::StatusOr<HttpResponse> r = HttpFetch(o.agent.host, o.agent.port, request, o.timeout);
  if (!r.ok()) return r.status();
  if (r->status != 200 && r->status != 400) {
    return absl::UnavailableError(absl::StrCat("the agent refused the request (HTTP ", r->status,
                                               "): ", DescribeRefusal(*r)));
  }
  json answer = json::parse(r->body, nullptr, /*allow_exceptions=*/false);
  std::vector<std::pair<size_t, std::string>> rejected;
  if (answer.is_object() && answer.contains("rejected") && answer["rejected"].is_array()) {
    for (const json& item : answer["rejected"]) {
      if (!item.is_object()) continue;
      rejected.emplace_back(item.value("index", size_t{0}), item.value("reason", std::string()));
    }
  } else if (r->status == 400) {
    return absl::InvalidArgumentError(
        absl::StrCat("the agent refused the request: ", DescribeRefusal(*r)));
  }
  return rejected;
}

// The same file read with the same mapping gives the same keys, so a
// repeated import is replayed; another mapping of it is another import.
std::string ImportId(const std::string& data, const InputMapping& m, const FileNameFacts& facts) {
  const std::string mapping_id = absl::StrJoin(
      std::vector<std::string>{std::string(RecordsName(m.records)), m.key_column, m.key,
                               m.value_column, m.shelf_column, m.pos_column, m.list_column,
                               m.currency_column, m.currency, m.kind, m.key_prefix,
                               m.observed_at_column, m.time_format, m.id_column,
                               std::string(1, m.decimal), m.thousands, std::string(1, m.delimiter),
                               m.header ? "h" : "-", std::to_string(static_cast<int>(m.encoding))},
      "\x1f");
  // What later versions added counts only when used, so an import of an
  // earlier version, run again, keeps its keys.
  std::string added;
  for (const InputMapping::ValueColumn& v : m.values) {
    absl::StrAppend(&added, "\x1f", v.column, "=", v.kind);
  }
  if (!m.critical_column.empty()) absl::StrAppend(&added, "\x1f!", m.critical_column);
  if (m.max_lateness > absl::ZeroDuration()) {
    absl::StrAppend(&added, "\x1f~", absl::FormatDuration(m.max_lateness));
  }
  if (facts.observed_at != absl::InfinitePast() || !facts.location.empty()) {
    absl::StrAppend(&added, "\x1f", facts.location, "@", absl::ToUnixNanos(facts.observed_at));
  }
  return absl::StrCat(absl::Hex(StableHash(data), absl::kZeroPad16),
                      absl::Hex(StableHash(absl::StrCat(mapping_id, added)), absl::kZeroPad16));
}

std::string BaseName(const std::string& file) {
  const size_t slash = file.rfind('/');
  return slash == std::string::npos ? file : file.substr(slash + 1);
}

}  // namespace

absl::StatusOr<InputMapping> MappingForFile(const DropDirectoryConfig& config,
                                            const std::string& file) {
  const std::string base = BaseName(file);
  std::vector<std::string> patterns;
  for (const InputMapping& m : config.files) {
    if (fnmatch(m.pattern.c_str(), base.c_str(), 0) == 0) return m;
    patterns.push_back(m.pattern);
  }
  return absl::NotFoundError(absl::StrCat("no drop_directory.files pattern matches '", base,
                                          "' (patterns: ", absl::StrJoin(patterns, ", "), ")"));
}

absl::StatusOr<ImportReport> ImportFile(const ImportOptions& o) {
  std::ifstream in(o.file, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", o.file));
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string data = buf.str();

  absl::StatusOr<FileNameFacts> facts = ReadFileName(o.mapping, BaseName(o.file));
  if (!facts.ok()) return facts.status();
  if (o.observed_at != absl::InfinitePast()) facts->observed_at = o.observed_at;
  FileParser parser(o.mapping, o.limits, *facts);
  std::vector<InputRecord> records;
  const absl::Time now = absl::Now();
  // Parse stops early only after a record given up (an unclosed quote):
  // the rest is parsed from the line after it.
  for (size_t offset = 0, used = 0; offset < data.size(); offset += used) {
    const size_t before = records.size();
    used = parser.Parse(absl::string_view(data).substr(offset),
                        records.empty() ? 1 : records.back().next_line, /*at_end=*/true, now, 0,
                        &records);
    if (used == 0 || records.size() == before) break;
  }

  ImportReport report;
  report.file_location = facts->location;
  // What to send, each with the line it came from.
  std::vector<std::pair<int64_t, v1::Observation>> observations;
  std::vector<std::pair<int64_t, TicketEvent>> events;
  for (InputRecord& r : records) {
    if (r.header) continue;
    ++report.records;
    if (!o.location.empty() && !r.location.empty() && r.location != o.location) {
      ++report.other_location;
      continue;
    }
    if (!r.error.empty()) {
      report.errors.push_back(absl::StrCat(o.file, ":", r.line, ": ", r.error));
      continue;
    }
    for (v1::Observation& obs : r.observations) observations.emplace_back(r.line, std::move(obs));
    for (TicketEvent& e : r.tickets) events.emplace_back(r.line, std::move(e));
  }

  const std::string file_id = ImportId(data, o.mapping, *facts);
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  const size_t chunk = std::max<size_t>(o.chunk, 1);
  for (size_t start = 0, n = 0; start < observations.size(); start += chunk, ++n) {
    const size_t end = std::min(observations.size(), start + chunk);
    std::string body = "[";
    for (size_t i = start; i < end; ++i) {
      std::string item;
      (void)google::protobuf::util::MessageToJsonString(observations[i].second, &item, print);
      absl::StrAppend(&body, i == start ? "" : ",", item);
    }
    body += "]";
    absl::StatusOr<std::vector<std::pair<size_t, std::string>>> rejected =
        Send(o, "/v1/observations", body, absl::StrCat("import-", file_id, "-", n));
    if (!rejected.ok()) return rejected.status();
    report.observations += (end - start) - rejected->size();
    for (const auto& [index, reason] : *rejected) {
      const int64_t line = start + index < end ? observations[start + index].first : 0;
      report.errors.push_back(absl::StrCat(o.file, ":", line, ": ", reason));
    }
  }
  for (size_t start = 0; start < events.size(); start += chunk) {
    const size_t end = std::min(events.size(), start + chunk);
    json body = json::array();
    for (size_t i = start; i < end; ++i) {
      const TicketEvent& e = events[i].second;
      body.push_back({{"ticket", e.ticket},
                      {"service", e.service},
                      {"event", EventName(e.type)},
                      {"at", absl::FormatTime(absl::RFC3339_full, e.at, absl::UTCTimeZone())}});
    }
    absl::StatusOr<std::vector<std::pair<size_t, std::string>>> rejected =
        Send(o, "/v1/tickets", body.dump(), "");
    if (!rejected.ok()) return rejected.status();
    report.ticket_events += (end - start) - rejected->size();
    for (const auto& [index, reason] : *rejected) {
      const int64_t line = start + index < end ? events[start + index].first : 0;
      report.errors.push_back(absl::StrCat(o.file, ":", line, ": ", reason));
    }
  }
  return report;
}

}  // namespace constance::agent
