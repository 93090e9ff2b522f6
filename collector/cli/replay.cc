#include "collector/cli/replay.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agent/file_input.h"
#include "agent/file_name.h"
#include "agent/import.h"
#include "agent/input_config.h"
#include "collector/cli/report.h"
#include "collector/engine.h"
#include "collector/services.h"
#include "constance/validate.h"

namespace constance::cli {
namespace {

namespace fs = std::filesystem;

// Observations per batch, as an agent sends them (its max_batch default).
constexpr size_t kBatch = 1000;
// Records parsed at a time, so a large file's records are never all held.
constexpr size_t kParseChunk = 10'000;

struct Input {
  std::string path;
  agent::InputMapping mapping;
  agent::FileNameFacts name;  // What the file's name says (name_regex).
};

// One observation with where it came from.
struct Row {
  int64_t at_ns = 0;
  uint32_t location = 0;
  uint32_t file = 0;
  int64_t line = 0;
  v1::Observation obs;
};

// Everything read from the files, before replay.
struct Loaded {
  std::vector<Input> inputs;
  std::vector<std::string> locations;  // By index.
  std::vector<Row> rows;               // Sorted by event time.
};

std::string Stamp(absl::Time t) {
  return absl::FormatTime("%Y-%m-%d %H:%M", t, absl::UTCTimeZone());
}

std::string Rfc3339(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

std::string Count(uint64_t n) {
  std::string digits = absl::StrCat(n);
  for (int i = static_cast<int>(digits.size()) - 3; i > 0; i -= 3) digits.insert(i, ",");
  return digits;
}

// At most one line per interval of wall time.
class Progress {
 public:
  Progress(std::ostream& err, absl::Duration interval) : err_(err), interval_(interval) {}
  template <typename F>
  void Maybe(F line) {
    const absl::Time now = absl::Now();
    if (now - last_ < interval_) return;
    last_ = now;
    err_ << "replay: " << line() << "\n";
  }

 private:
  std::ostream& err_;
  const absl::Duration interval_;
  absl::Time last_ = absl::Now();
};

// Whether a file's rows say where they come from and when: through
// columns of `m`, or through what the file's name says.
absl::Status CheckSources(const agent::InputMapping& m, const agent::FileNameFacts& name,
                          const std::string& path) {
  const std::string where =
      absl::StrCat(path, ": the drop_directory.files mapping with pattern '", m.pattern, "'");
  if (m.records == agent::InputMapping::Records::kTicket ||
      m.records == agent::InputMapping::Records::kChecklist) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, " reads ", agent::RecordsName(m.records),
        " records, which replay does not read yet; replay price, price_check, wait, compliance "
        "or score files"));
  }
  if (m.location_column.empty() && name.location.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where,
                     " gives no location: set location_column to the column that names the store, "
                     "or name_regex with a (?P<location>...) group when only the file name does"));
  }
  if (m.observed_at_column.empty() && name.observed_at == absl::InfinitePast() &&
      m.format == agent::InputMapping::Format::kCsv) {
    return absl::InvalidArgumentError(
        absl::StrCat(where,
                     " gives no observation time: set observed_at_column (and time_format), or "
                     "name_regex with a (?P<observed_at>...) group and name_time_format"));
  }
  return absl::OkStatus();
}

// Adds `path` with its mapping to `out`. A file in a directory that no
// pattern matches is skipped; a name the mapping's name_regex cannot read
// is reported and skipped, as the drop directory does.
absl::Status AddFile(const ReplayOptions& o, const std::string& path, bool named,
                     ReplayStats* stats, std::ostream& err, std::vector<Input>* out) {
  absl::StatusOr<agent::InputMapping> m = agent::MappingForFile(o.drop, path);
  if (!m.ok()) {
    if (!named) {
      ++stats->skipped_files;
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", m.status().message(),
                     "; add a mapping for it to the drop_directory section of --config"));
  }
  absl::StatusOr<agent::FileNameFacts> name =
      agent::ReadFileName(*m, fs::path(path).filename().string());
  if (!name.ok()) {
    ++stats->bad_files;
    err << path << ": " << name.status().message() << "; file skipped\n";
    return absl::OkStatus();
  }
  if (absl::Status s = CheckSources(*m, *name, path); !s.ok()) return s;
  out->push_back({path, *std::move(m), *std::move(name)});
  return absl::OkStatus();
}

// The files to read, in name order, each with its mapping.
absl::StatusOr<std::vector<Input>> ListInputs(const ReplayOptions& o, ReplayStats* stats,
                                              std::ostream& err) {
  std::vector<Input> inputs;
  for (const std::string& input : o.inputs) {
    std::error_code ec;
    const fs::file_status st = fs::status(input, ec);
    if (ec || !fs::exists(st)) {
      return absl::NotFoundError(absl::StrCat(input, ": no such file or directory"));
    }
    if (!fs::is_directory(st)) {
      if (absl::Status s = AddFile(o, input, true, stats, err, &inputs); !s.ok()) return s;
      continue;
    }
    std::vector<std::string> files;
    for (fs::recursive_directory_iterator it(input, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->is_regular_file(ec)) files.push_back(it->path().string());
    }
    if (ec) return absl::NotFoundError(absl::StrCat(input, ": cannot list: ", ec.message()));
    std::sort(files.begin(), files.end());
    for (const std::string& f : files) {
      if (absl::Status s = AddFile(o, f, false, stats, err, &inputs); !s.ok()) return s;
    }
  }
  if (inputs.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("no file to replay: ", stats->skipped_files,
                     " files matched no drop_directory.files pattern of --config, ",
                     stats->bad_files, " had names their mapping's name_regex cannot read"));
  }
  return inputs;
}

absl::StatusOr<std::string> ReadWhole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot read"));
  std::string data;
  in.seekg(0, std::ios::end);
  data.resize(static_cast<size_t>(std::max<std::streamoff>(0, in.tellg())));
  in.seekg(0);
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  if (!in) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return data;
}

// Reads every file into `loaded->rows` (unsorted); bad rows go to `err`.
class FileReader {
 public:
  FileReader(const ReplayOptions& o, std::ostream& err, ReplayStats* stats, Loaded* loaded)
      : o_(o), err_(err), stats_(stats), loaded_(loaded), progress_(err, o.progress_interval) {}

  absl::Status ReadAll() {
    const absl::Time start = absl::Now();
    for (uint32_t i = 0; i < loaded_->inputs.size(); ++i) {
      if (absl::Status s = ReadFile(i); !s.ok()) return s;
      ++stats_->files;
    }
    stats_->read_time = absl::Now() - start;
    return absl::OkStatus();
  }

 private:
  absl::Status ReadFile(uint32_t file) {
    const Input& input = loaded_->inputs[file];
    absl::StatusOr<std::string> data = ReadWhole(input.path);
    if (!data.ok()) return data.status();
    agent::InputMapping mapping = input.mapping;
    mapping.max_lateness = absl::ZeroDuration();
    // Event time is checked by the engine against its event-time clock.
    Limits limits;
    limits.max_lateness = absl::InfiniteDuration();
    limits.max_future_skew = absl::InfiniteDuration();
    agent::FileParser parser(mapping, limits, input.name);
    std::vector<agent::InputRecord> records;
    int64_t line = 1;
    int errors = 0;
    for (size_t offset = 0; offset < data->size();) {
      records.clear();
      const size_t used = parser.Parse(absl::string_view(*data).substr(offset), line,
                                       /*at_end=*/true, absl::UnixEpoch(), kParseChunk, &records);
      if (used == 0 || records.empty()) break;
      offset += used;
      line = records.back().next_line;
      for (agent::InputRecord& r : records) Take(file, r, &errors);
      progress_.Maybe([&] { return Rate(); });
    }
    if (errors > o_.max_errors_per_file) {
      err_ << input.path << ": " << errors - o_.max_errors_per_file << " more bad rows not shown\n";
    }
    return absl::OkStatus();
  }

  void Bad(uint32_t file, int64_t line, const std::string& why, int* errors) {
    ++stats_->bad_rows;
    if (++*errors <= o_.max_errors_per_file) {
      err_ << loaded_->inputs[file].path << ":" << line << ": " << why << "\n";
    }
  }

  void Take(uint32_t file, agent::InputRecord& r, int* errors) {
    if (r.header) return;
    ++stats_->rows;
    if (!r.error.empty()) return Bad(file, r.line, r.error, errors);
    auto [it, fresh] = location_index_.try_emplace(r.location, -1);
    if (fresh) {
      if (ValidateLocationId(r.location).ok()) {
        it->second = static_cast<int32_t>(loaded_->locations.size());
        loaded_->locations.push_back(r.location);
      }
    }
    if (it->second < 0) {
      // A file name's location is checked by ReadFileName: this is a column's.
      const std::string column = loaded_->inputs[file].mapping.location_column;
      return Bad(file, r.line,
                 absl::StrCat("column '", column, "': '", r.location,
                              "' is not a location id (lower-case letters, digits, '.', '_', "
                              "'-'; up to 63 characters)"),
                 errors);
    }
    for (v1::Observation& obs : r.observations) {
      Row row;
      row.at_ns = obs.observed_at().seconds() * 1'000'000'000 + obs.observed_at().nanos();
      row.location = static_cast<uint32_t>(it->second);
      row.file = file;
      row.line = r.line;
      row.obs = std::move(obs);
      loaded_->rows.push_back(std::move(row));
    }
  }

  std::string Rate() const {
    const double seconds = std::max(1e-3, absl::ToDoubleSeconds(absl::Now() - start_));
    return absl::StrCat("read ", Count(stats_->files), " of ", Count(loaded_->inputs.size()),
                        " files, ", Count(stats_->rows), " rows (",
                        Count(static_cast<uint64_t>(static_cast<double>(stats_->rows) / seconds)),
                        " rows/s)");
  }

  const ReplayOptions& o_;
  std::ostream& err_;
  ReplayStats* stats_;
  Loaded* loaded_;
  Progress progress_;
  const absl::Time start_ = absl::Now();
  absl::flat_hash_map<std::string, int32_t> location_index_;
};

// The usual gap between a location's observation times: the median over
// locations of each one's median gap (zero when no location has two).
absl::Duration Cadence(const Loaded& loaded) {
  std::vector<std::vector<int64_t>> times(loaded.locations.size());
  for (const Row& r : loaded.rows) {
    std::vector<int64_t>& t = times[r.location];
    if (t.empty() || t.back() != r.at_ns) t.push_back(r.at_ns);
  }
  std::vector<int64_t> medians;
  for (const std::vector<int64_t>& t : times) {
    if (t.size() < 2) continue;
    std::vector<int64_t> gaps;
    for (size_t i = 1; i < t.size(); ++i) gaps.push_back(t[i] - t[i - 1]);
    std::nth_element(gaps.begin(), gaps.begin() + gaps.size() / 2, gaps.end());
    medians.push_back(gaps[gaps.size() / 2]);
  }
  if (medians.empty()) return absl::ZeroDuration();
  std::nth_element(medians.begin(), medians.begin() + medians.size() / 2, medians.end());
  return absl::Nanoseconds(medians[medians.size() / 2]);
}

absl::Time CeilTo(absl::Time t, absl::Duration every) {
  return absl::UnixEpoch() + absl::Ceil(t - absl::UnixEpoch(), every);
}

std::string Json(const google::protobuf::Message& m) { return ToJson(m); }

// Feeds the sorted rows to an engine on an event-time clock, evaluating
// at each boundary and printing the findings that open and close.
class EventReplay {
 public:
  EventReplay(const ReplayOptions& o, collector::Catalog catalog, Loaded* loaded, std::ostream& out,
              std::ostream& err, ReplayStats* stats)
      : o_(o),
        loaded_(loaded),
        out_(out),
        err_(err),
        stats_(stats),
        progress_(err, o.progress_interval),
        pending_(loaded->locations.size()),
        pending_at_(loaded->locations.size()),
        next_seq_(loaded->locations.size(), 1) {
    clock_ = absl::FromUnixNanos(loaded->rows.front().at_ns);
    collector::Engine::Options options;
    options.catalog = std::make_shared<const collector::Catalog>(std::move(catalog));
    options.clock = [this] { return clock_; };
    engine_ = std::make_unique<collector::Engine>(std::move(options));
  }

  // Replays every row, then evaluates until `until`.
  void Run(absl::Time until) {
    if (!o_.json) {
      out_ << "Findings as they open and close (event time, evaluated every "
           << absl::FormatDuration(o_.every) << "):\n"
           << absl::StrFormat("%-16s  %-6s  %-16s  %-8s  %-16s  %-28s  %s\n", "AT", "EVENT", "KIND",
                              "SEV", "SUBJECT", "SERIES", "WHY");
    }
    std::vector<Row>& rows = loaded_->rows;
    absl::Time boundary = CeilTo(clock_, o_.every);
    for (size_t i = 0; i < rows.size(); ++i) {
      while (rows[i].at_ns > absl::ToUnixNanos(boundary)) {
        EvaluateAt(boundary);
        boundary += o_.every;
      }
      Add(&rows[i]);
      progress_.Maybe([&] {
        return absl::StrCat("replayed ", Count(i + 1), " of ", Count(rows.size()),
                            " observations, at ", Stamp(clock_));
      });
    }
    for (; boundary <= until; boundary += o_.every) EvaluateAt(boundary);
    std::shared_ptr<const collector::Snapshot> snapshot = engine_->snapshot();
    stats_->active = snapshot->findings->active.size();
    v1::ChainSummaryResponse summary;
    collector::FillChainSummary(*snapshot, &summary);
    if (o_.json) {
      out_ << "{\"event\":\"report\",\"at\":\"" << Rfc3339(clock_)
           << "\",\"report\":" << Json(summary) << "}\n";
    } else {
      out_ << "\nChain report at " << Stamp(clock_) << " (event time):\n"
           << RenderChainSummary(summary, o_.max_series);
    }
  }

 private:
  void Add(Row* row) {
    v1::Batch& batch = pending_[row->location];
    *batch.add_observations() = std::move(row->obs);
    origins_[row->location].push_back({row->file, row->line});
    pending_at_[row->location] = absl::FromUnixNanos(row->at_ns);
    if (static_cast<size_t>(batch.observations_size()) >= kBatch) Flush(row->location);
  }

  void Flush(uint32_t loc) {
    v1::Batch& batch = pending_[loc];
    const int n = batch.observations_size();
    if (n == 0) return;
    batch.set_location(loaded_->locations[loc]);
    batch.set_incarnation(1);
    batch.set_first_sequence(next_seq_[loc]);
    next_seq_[loc] += static_cast<uint64_t>(n);
    // Received when its last row was observed: the engine's lateness and
    // future-skew checks, and the location's last report, in event time.
    clock_ = std::max(clock_, pending_at_[loc]);
    absl::StatusOr<v1::Ack> ack = engine_->ApplyBatch(batch, pending_at_[loc]);
    std::vector<std::pair<uint32_t, int64_t>>& origin = origins_[loc];
    if (!ack.ok()) {
      stats_->rejected += static_cast<uint64_t>(n);
      if (refused_.insert(loc).second) {
        err_ << "replay: every row of location '" << loaded_->locations[loc]
             << "' refused: " << ack.status().message() << "\n";
      }
    } else {
      stats_->applied += static_cast<uint64_t>(n - ack->rejections_size()) - ack->duplicates();
      stats_->rejected += static_cast<uint64_t>(ack->rejections_size());
      for (const v1::Rejection& r : ack->rejections()) {
        if (++rejections_shown_ > kMaxRejectionsShown) continue;
        const auto& [file, line] = origin[r.sequence() - batch.first_sequence()];
        err_ << loaded_->inputs[file].path << ":" << line << ": " << r.reason() << "\n";
      }
    }
    batch.Clear();
    origin.clear();
  }

  void EvaluateAt(absl::Time t) {
    for (uint32_t loc = 0; loc < pending_.size(); ++loc) Flush(loc);
    clock_ = t;
    engine_->Evaluate();
    ++stats_->evaluations;
    stats_->evaluated_until = t;
    const std::shared_ptr<const collector::FindingsView> view = engine_->snapshot()->findings;
    std::map<std::string, v1::Finding> now;
    for (const v1::Finding& f : view->active) now.emplace(f.id(), f);
    for (const auto& [id, f] : now) {
      if (active_.count(id) == 0) Print(t, "opened", f), ++stats_->opened;
    }
    for (const auto& [id, f] : active_) {
      if (now.count(id) > 0) continue;
      ++stats_->closed;
      const std::string& closed_id = id;  // A structured binding cannot be captured in C++17.
      auto closed = std::find_if(view->closed.rbegin(), view->closed.rend(),
                                 [&](const v1::Finding& c) { return c.id() == closed_id; });
      Print(t, "closed", closed != view->closed.rend() ? *closed : f);
    }
    active_ = std::move(now);
  }

  void Print(absl::Time t, const char* event, const v1::Finding& f) {
    if (o_.json) {
      out_ << "{\"event\":\"" << event << "\",\"at\":\"" << Rfc3339(t)
           << "\",\"finding\":" << Json(f) << "}\n";
      return;
    }
    out_ << absl::StrFormat(
        "%-16s  %-6s  %-16s  %-8s  %-16s  %-28s  %s\n", Stamp(t), event,
        absl::AsciiStrToLower(v1::FindingKind_Name(f.kind())),
        absl::AsciiStrToLower(v1::Severity_Name(f.severity())), FindingSubject(f),
        f.has_series() ? FormatSeries(f.series()) : absl::StrCat(f.keys_size(), " keys"),
        f.reasons_size() > 0 ? f.reasons(0).detail() : "");
  }

  static constexpr uint64_t kMaxRejectionsShown = 100;

  const ReplayOptions& o_;
  Loaded* loaded_;
  std::ostream& out_;
  std::ostream& err_;
  ReplayStats* stats_;
  Progress progress_;
  absl::Time clock_;
  std::unique_ptr<collector::Engine> engine_;
  std::vector<v1::Batch> pending_;
  std::vector<absl::Time> pending_at_;
  std::vector<uint64_t> next_seq_;
  // Each pending observation's file and line, by location.
  absl::flat_hash_map<uint32_t, std::vector<std::pair<uint32_t, int64_t>>> origins_;
  absl::flat_hash_set<uint32_t> refused_;
  uint64_t rejections_shown_ = 0;
  std::map<std::string, v1::Finding> active_;
};

// The catalog's silent rule in the files' terms (see replay.h), with a
// note on `err` for each threshold changed.
collector::Catalog AdjustForCadence(collector::Catalog catalog, const Loaded& loaded,
                                    absl::Duration every, std::ostream& err) {
  // The mappings' `cadence` says how often files arrive; without it, the
  // files show it.
  absl::Duration cadence = absl::ZeroDuration();
  for (const Input& input : loaded.inputs) cadence = std::max(cadence, input.mapping.cadence);
  const bool declared = cadence > absl::ZeroDuration();
  if (!declared) cadence = Cadence(loaded);
  collector::Thresholds& th = catalog.thresholds;
  if (cadence > th.location_ttl) {
    const absl::Duration ttl = cadence + every;
    err << "replay: a location's rows come every " << absl::FormatDuration(cadence)
        << (declared ? " (the mappings' cadence)" : " (median gap; a mapping's `cadence:` sets it)")
        << "; location_ttl raised from " << absl::FormatDuration(th.location_ttl) << " to "
        << absl::FormatDuration(ttl)
        << ", so 'silent' means a missing file, not the time between two\n";
    th.location_ttl = ttl;
  }
  if (th.restart_grace < th.location_ttl) {
    err << "replay: restart_grace raised from " << absl::FormatDuration(th.restart_grace) << " to "
        << absl::FormatDuration(th.location_ttl)
        << ": at the start a location's first rows may come one location_ttl late\n";
    th.restart_grace = th.location_ttl;
  }
  return catalog;
}

}  // namespace

absl::StatusOr<ReplayStats> Replay(const ReplayOptions& o, std::ostream& out, std::ostream& err) {
  if (o.every <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--every must be positive, e.g. --every=1h");
  }
  ReplayStats stats;
  Loaded loaded;
  absl::StatusOr<std::vector<Input>> inputs = ListInputs(o, &stats, err);
  if (!inputs.ok()) return inputs.status();
  loaded.inputs = *std::move(inputs);
  FileReader reader(o, err, &stats, &loaded);
  if (absl::Status s = reader.ReadAll(); !s.ok()) return s;
  if (loaded.rows.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("no observation in ", stats.files, " files (", stats.bad_rows,
                     " bad rows): check the mappings of --config against the files' columns"));
  }
  std::stable_sort(loaded.rows.begin(), loaded.rows.end(),
                   [](const Row& a, const Row& b) { return a.at_ns < b.at_ns; });
  stats.first = absl::FromUnixNanos(loaded.rows.front().at_ns);
  stats.last = absl::FromUnixNanos(loaded.rows.back().at_ns);
  err << "replay: " << Count(stats.files) << " files (" << Count(stats.skipped_files)
      << " skipped: no pattern matches; " << Count(stats.bad_files)
      << " skipped: name not readable), " << Count(stats.rows) << " rows, "
      << loaded.locations.size() << " locations, " << Stamp(stats.first) << " to "
      << Stamp(stats.last) << " UTC; read in "
      << absl::FormatDuration(absl::Trunc(stats.read_time, absl::Milliseconds(1))) << "\n";

  collector::Catalog catalog = AdjustForCadence(o.catalog, loaded, o.every, err);
  const collector::Thresholds& th = catalog.thresholds;
  stats.location_ttl = th.location_ttl;
  // What the last rows show needs `persistence` evaluations to open, and a
  // price change irregular_settle of age to be judged.
  const absl::Duration extra = std::max(1, th.persistence) * o.every - o.every;
  const absl::Time until = std::max(CeilTo(stats.last, o.every) + extra,
                                    CeilTo(stats.last + th.irregular_settle, o.every) + extra);
  err << "replay: evaluating every " << absl::FormatDuration(o.every) << " until " << Stamp(until)
      << ": a finding opens after " << th.persistence
      << " consecutive evaluations, a price change is judged once "
      << absl::FormatDuration(th.irregular_settle) << " old\n";
  EventReplay replay(o, std::move(catalog), &loaded, out, err, &stats);
  replay.Run(until);
  err << "replay: done: " << Count(stats.files) << " files, " << Count(stats.rows) << " rows ("
      << Count(stats.bad_rows) << " bad), " << Count(stats.applied) << " observations applied, "
      << Count(stats.rejected) << " rejected; " << stats.evaluations << " evaluations; "
      << stats.opened << " findings opened, " << stats.closed << " closed, " << stats.active
      << " active at the end\n";
  return stats;
}

}  // namespace constance::cli
