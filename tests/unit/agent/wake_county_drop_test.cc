// The Wake County inspections file (tests/data/README.md) through the drop
// directory: read with a mapping, split per location by its HSISID column
// as one agent per restaurant would keep it, the observations must be
// exactly those of a direct read of the CSV, and replayed into the
// collector's engine they must give the same statistics per chain as a
// replay of the direct read (tests/unit/collector/real_data_test.cc).
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "agent/drop_dir.h"
#include "agent/file_input.h"
#include "collector/engine.h"
#include "csv.h"
#include "gtest/gtest.h"

namespace constance::agent {
namespace {

using Row = std::vector<std::string>;
// (score, observed_at seconds), sorted.
using Facts = std::vector<std::pair<double, int64_t>>;

const std::string kWake =
    std::string(CONSTANCE_SOURCE_DIR) + "/tests/data/wake-county-restaurant-inspections.csv";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

// The direct side: libcsv over the whole file, as real_data_test reads it.
std::vector<Row> ReadCsv(const std::string& text) {
  struct State {
    std::vector<Row> rows;
    Row row;
  } state;
  csv_parser parser;
  csv_init(&parser, 0);
  auto field = [](void* data, size_t len, void* s) {
    static_cast<State*>(s)->row.emplace_back(static_cast<char*>(data), len);
  };
  auto record = [](int, void* s) {
    auto* st = static_cast<State*>(s);
    st->rows.push_back(std::move(st->row));
    st->row.clear();
  };
  csv_parse(&parser, text.data(), text.size(), field, record, &state);
  csv_fini(&parser, field, record, &state);
  csv_free(&parser);
  return state.rows;
}

InputMapping WakeMapping() {
  InputMapping m;
  m.pattern = "wake-*.csv";
  m.records = InputMapping::Records::kScore;
  m.key = "inspection";
  m.value_column = "SCORE";
  m.observed_at_column = "DATE_";
  m.location_column = "HSISID";
  m.max_lateness = absl::Hours(24 * 365 * 30);  // A backfill of old inspections.
  return m;
}

struct Direct {
  std::map<std::string, Facts> facts;  // location -> facts
  std::map<std::string, std::string> chain;
  size_t skipped = 0;
};

Direct ReadDirect(const std::string& text) {
  Direct d;
  std::vector<Row> rows = ReadCsv(text);
  for (size_t i = 1; i < rows.size(); ++i) {
    const Row& r = rows[i];
    double score;
    absl::Time t;
    std::string err;
    if (r.size() != 12 || !absl::SimpleAtod(r[2], &score) ||
        !absl::ParseTime(absl::RFC3339_full, r[3], &t, &err)) {
      ++d.skipped;
      continue;
    }
    const std::string location = absl::AsciiStrToLower(r[1]);
    d.facts[location].push_back({score, absl::ToUnixSeconds(t)});
    d.chain[location] = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(r[8]));
  }
  for (auto& [loc, f] : d.facts) std::sort(f.begin(), f.end());
  return d;
}

void AddFact(const v1::Observation& o, Facts* f) {
  f->push_back({o.score(), o.observed_at().seconds()});
}

// The collector's engine fed (location, facts), statistics per group.
class EngineReplay {
 public:
  EngineReplay(const std::map<std::string, std::string>& chain, absl::Time now) : now_(now) {
    collector::Catalog catalog = collector::DefaultCatalog();
    catalog.score.window = catalog.score.ttl = absl::Hours(24 * 365 * 30);
    catalog.score.bin = absl::Hours(24);
    catalog.peer_groups.push_back({"chain", "chain", {v1::FAMILY_SCORE}, {}, 0});
    for (const auto& [location, name] : chain) {
      collector::LocationEntry e;
      e.id = location;
      if (name != "NA") e.labels["chain"] = name;
      catalog.locations.push_back(e);
    }
    catalog.Index();
    collector::Engine::Options options;
    options.catalog = std::make_shared<const collector::Catalog>(std::move(catalog));
    options.limits.max_lateness = absl::Hours(24 * 365 * 30);
    options.clock = [this] { return now_; };
    engine_ = std::make_unique<collector::Engine>(std::move(options));
  }
  void Send(const std::string& location, const Facts& facts) {
    for (const auto& [score, seconds] : facts) {
      v1::Batch b;
      b.set_location(location);
      b.set_incarnation(1);
      b.set_first_sequence(++seq_[location]);
      v1::Observation* o = b.add_observations();
      o->set_key("inspection");
      o->set_score(score);
      o->mutable_observed_at()->set_seconds(seconds);
      absl::StatusOr<v1::Ack> ack = engine_->ApplyBatch(b);
      ASSERT_TRUE(ack.ok()) << ack.status();
      ASSERT_EQ(ack->rejections_size(), 0) << location;
    }
  }
  // group -> (n, mean, median, mad, min, max)
  std::map<std::string, std::vector<double>> Stats() {
    engine_->Recompute();
    std::shared_ptr<const collector::Snapshot> snap = engine_->snapshot();
    std::map<std::string, std::vector<double>> out;
    for (const auto& s : snap->series) {
      const auto& m = s->summary;
      out[s->group] = {static_cast<double>(m.n), m.mean, m.median, m.mad, m.min, m.max, m.stddev};
    }
    return out;
  }

 private:
  absl::Time now_;
  std::unique_ptr<collector::Engine> engine_;
  std::map<std::string, uint64_t> seq_;
};

TEST(WakeCountyDropTest, ParsedPerLocationAsReadDirectly) {
  const std::string text = ReadFile(kWake);
  ASSERT_GT(text.size(), 100'000u);
  const Direct direct = ReadDirect(text);
  ASSERT_GT(direct.facts.size(), 1000u);

  // The drop-directory path: the same parser and mapping, fed in pieces of
  // at most 500 records as the drop directory commits them.
  const absl::Time now = absl::Now();
  FileParser parser(WakeMapping(), Limits{});
  std::map<std::string, Facts> dropped;
  size_t rejected = 0;
  size_t offset = 0;
  int64_t line = 1;
  while (offset < text.size()) {
    std::vector<InputRecord> records;
    const size_t used = parser.Parse(absl::string_view(text).substr(offset), line,
                                     /*at_end=*/true, now, 500, &records);
    ASSERT_GT(used, 0u);
    offset += used;
    if (!records.empty()) line = records.back().next_line;
    for (const InputRecord& r : records) {
      if (r.header) continue;
      if (!r.error.empty()) {
        ++rejected;
        continue;
      }
      for (const v1::Observation& o : r.observations) {
        EXPECT_EQ(o.key(), "inspection");
        AddFact(o, &dropped[r.location]);
      }
    }
  }
  for (auto& [loc, f] : dropped) std::sort(f.begin(), f.end());
  EXPECT_EQ(rejected, direct.skipped);
  ASSERT_EQ(dropped.size(), direct.facts.size());
  size_t n = 0;
  for (const auto& [location, facts] : direct.facts) {
    ASSERT_TRUE(dropped.count(location)) << location;
    EXPECT_EQ(dropped[location], facts) << location;
    n += facts.size();
  }
  EXPECT_GT(n, 3000u);

  // The same statistics per chain from the collector's engine.
  absl::Time latest = absl::InfinitePast();
  for (const auto& [loc, facts] : direct.facts) {
    for (const auto& f : facts) latest = std::max(latest, absl::FromUnixSeconds(f.second));
  }
  EngineReplay from_direct(direct.chain, latest + absl::Hours(1));
  EngineReplay from_drop(direct.chain, latest + absl::Hours(1));
  for (const auto& [loc, facts] : direct.facts) from_direct.Send(loc, facts);
  for (const auto& [loc, facts] : dropped) from_drop.Send(loc, facts);
  const auto want = from_direct.Stats();
  const auto got = from_drop.Stats();
  ASSERT_FALSE(want.empty());
  EXPECT_EQ(got, want);
  ASSERT_TRUE(got.count("chain=WENDY'S"));
  EXPECT_EQ(got.at("chain=WENDY'S")[0], 13);
}

TEST(WakeCountyDropTest, OneDropDirectoryPerLocationKeepsItsOwnRows) {
  const std::string text = ReadFile(kWake);
  const Direct direct = ReadDirect(text);
  // Three restaurants of one chain, each with its own agent's drop folder.
  std::vector<std::string> locations;
  for (const auto& [loc, chain] : direct.chain) {
    if (chain == "WENDY'S" && locations.size() < 3) locations.push_back(loc);
  }
  ASSERT_EQ(locations.size(), 3u);
  const char* base = getenv("TMPDIR");
  std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/wake_drop.XXXXXX";
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  for (const std::string& location : locations) {
    const std::string folder = tmpl + "/" + location;
    ASSERT_EQ(mkdir(folder.c_str(), 0750), 0);
    std::filesystem::copy_file(kWake, folder + "/wake-county.csv");
    MemorySpool spool{SpoolOptions{}};
    DropDirectoryConfig config;
    config.path = folder;
    config.files = {WakeMapping()};
    config.settle_time = absl::Seconds(1);
    DropDirectoryDeps deps;
    deps.spool = &spool;
    deps.location = location;
    deps.now = [] { return absl::Now() + absl::Hours(1); };
    auto dd = DropDirectory::Create(config, deps);
    ASSERT_TRUE(dd.ok()) << dd.status();
    absl::StatusOr<ScanStats> stats = (*dd)->ScanOnce();
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(stats->files_done, 1u);
    Facts facts;
    auto all = spool.Read(1, 100'000);
    ASSERT_TRUE(all.ok());
    for (const SpoolEntry& e : *all) AddFact(e.observation, &facts);
    std::sort(facts.begin(), facts.end());
    EXPECT_EQ(facts, direct.facts.at(location)) << location;
    EXPECT_TRUE(std::filesystem::exists(folder + "/processed/wake-county.csv"));
  }
  std::filesystem::remove_all(tmpl);
}

}  // namespace
}  // namespace constance::agent
