// Real public data replayed through the engine, checked against an
// independent computation written here: exact medians and MADs over the
// same rows, the same grouping, the same outlier rule.
//
//   Wake County restaurant inspections: compliance scores, chain = NAME.
//   CMS Hospital Compare OP_20: door-to-diagnostic minutes, group = State.
// Sources: tests/data/README.md.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "collector/engine.h"
#include "csv.h"
#include "gtest/gtest.h"

namespace constance::collector {
namespace {

using Row = std::vector<std::string>;

// Every record of a CSV file (quoted fields with line breaks included).
std::vector<Row> ReadCsv(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string text = buf.str();
  struct State {
    std::vector<Row> rows;
    Row row;
  } state;
  csv_parser parser;
  csv_init(&parser, CSV_APPEND_NULL);
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

std::string DataPath(const std::string& name) {
  return std::string(CONSTANCE_SOURCE_DIR) + "/tests/data/" + name;
}

// The independent side: exact statistics over a vector of values.
struct Exact {
  double n, mean, stddev, median, mad, min, max;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

Exact Compute(const std::vector<double>& v) {
  Exact e{};
  e.n = v.size();
  long double sum = 0;
  for (double x : v) sum += x;
  e.mean = static_cast<double>(sum / v.size());
  long double sq = 0;
  for (double x : v) sq += (x - e.mean) * (x - e.mean);
  e.stddev = std::sqrt(static_cast<double>(sq / v.size()));
  e.median = Median(v);
  std::vector<double> dev;
  for (double x : v) dev.push_back(std::fabs(x - e.median));
  e.mad = Median(dev);
  e.min = *std::min_element(v.begin(), v.end());
  e.max = *std::max_element(v.begin(), v.end());
  return e;
}

// The outlier rule as docs/design.md ("Outlier") states it, written out independently.
std::set<std::string> ExactOutliers(const std::map<std::string, double>& values, double floor_ratio,
                                    bool above, bool below) {
  std::vector<double> v;
  for (const auto& [loc, x] : values) v.push_back(x);
  const Exact e = Compute(v);
  std::set<std::string> out;
  if (values.size() < 5) return out;
  const double floor = floor_ratio * std::fabs(e.median);
  for (const auto& [loc, x] : values) {
    const double dev = x - e.median;
    if (std::fabs(dev) <= floor) continue;
    if ((dev > 0 && !above) || (dev < 0 && !below)) continue;
    if (e.mad > 0 && 0.6745 * std::fabs(dev) / e.mad <= 3.5) continue;
    if (e.mad == 0) {
      double mean_ad = 0;
      for (double y : v) mean_ad += std::fabs(y - e.median);
      if (mean_ad == 0) continue;
    }
    out.insert(loc);
  }
  return out;
}

double Relative(double a, double b) {
  return a == b ? 0 : std::fabs(a - b) / std::max(std::fabs(a), std::fabs(b));
}

// Replays (location, value, time) facts through an engine and returns its
// statistics per group.
class Replay {
 public:
  Replay(Catalog catalog, absl::Time now) : now_(now) {
    catalog.Index();
    Engine::Options options;
    options.catalog = std::make_shared<const Catalog>(std::move(catalog));
    options.limits.max_lateness = absl::Hours(24 * 365 * 30);
    options.clock = [this] { return now_; };
    engine_ = std::make_unique<Engine>(std::move(options));
  }
  void Send(const std::string& location, v1::Observation o) {
    v1::Batch b;
    b.set_location(location);
    b.set_incarnation(1);
    b.set_first_sequence(++seq_[location]);
    *b.add_observations() = std::move(o);
    absl::StatusOr<v1::Ack> ack = engine_->ApplyBatch(b);
    ASSERT_TRUE(ack.ok()) << ack.status();
    ASSERT_EQ(ack->rejections_size(), 0) << location << ": " << ack->rejections(0).reason();
  }
  std::map<std::string, const SeriesStats*> Groups() {
    engine_->Recompute();
    snapshot_ = engine_->snapshot();
    std::map<std::string, const SeriesStats*> out;
    for (const auto& s : snapshot_->series) out[s->group] = s.get();
    return out;
  }

 private:
  absl::Time now_;
  std::unique_ptr<Engine> engine_;
  std::map<std::string, uint64_t> seq_;
  std::shared_ptr<const Snapshot> snapshot_;
};

void ExpectSame(const std::string& group, const SeriesStats& got, const std::vector<double>& values,
                const std::set<std::string>& outliers) {
  SCOPED_TRACE(group);
  const Exact e = Compute(values);
  EXPECT_EQ(got.summary.n, values.size());
  EXPECT_LT(Relative(got.summary.mean, e.mean), 1e-9);
  EXPECT_LT(Relative(got.summary.stddev, e.stddev), 1e-9);
  EXPECT_LT(Relative(got.summary.median, e.median), 1e-9);
  EXPECT_LT(Relative(got.summary.mad, e.mad), 1e-9);
  EXPECT_EQ(got.summary.min, e.min);
  EXPECT_EQ(got.summary.max, e.max);
  std::set<std::string> engine_outliers(got.outlier_locations.begin(), got.outlier_locations.end());
  EXPECT_EQ(engine_outliers, outliers);
}

TEST(RealDataTest, WakeCountyInspectionScoresByChain) {
  std::vector<Row> rows = ReadCsv(DataPath("wake-county-restaurant-inspections.csv"));
  ASSERT_GT(rows.size(), 3000u);
  ASSERT_EQ(rows[0][1], "HSISID");
  // location -> (chain, scores with their dates)
  std::map<std::string, std::string> chain_of;
  std::map<std::string, std::vector<std::pair<double, absl::Time>>> scores;
  absl::Time latest = absl::InfinitePast();
  for (size_t i = 1; i < rows.size(); ++i) {
    const Row& r = rows[i];
    ASSERT_EQ(r.size(), 12u) << "record " << i;
    double score;
    absl::Time t;
    std::string err;
    if (!absl::SimpleAtod(r[2], &score) || !absl::ParseTime(absl::RFC3339_full, r[3], &t, &err)) {
      continue;
    }
    const std::string location = absl::AsciiStrToLower(r[1]);
    chain_of[location] = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(r[8]));
    scores[location].push_back({score, t});
    latest = std::max(latest, t);
  }
  // The catalog: each restaurant labelled with its chain; scores compared
  // within a chain (NAME "NA" is not a chain), every inspection in the window.
  Catalog catalog = DefaultCatalog();
  catalog.score.window = catalog.score.ttl = absl::Hours(24 * 365 * 30);
  catalog.score.bin = absl::Hours(24);
  catalog.peer_groups.push_back({"chain", "chain", {v1::FAMILY_SCORE}, {}, 0});
  for (const auto& [location, chain] : chain_of) {
    LocationEntry e;
    e.id = location;
    if (chain != "NA") e.labels["chain"] = chain;
    catalog.locations.push_back(e);
  }
  Replay replay(catalog, latest + absl::Hours(1));
  for (const auto& [location, list] : scores) {
    for (const auto& [score, t] : list) {
      v1::Observation o;
      o.set_key("inspection");
      o.set_score(score);
      o.mutable_observed_at()->set_seconds(absl::ToUnixSeconds(t));
      replay.Send(location, o);
    }
  }
  // Independent side: mean score per restaurant, grouped by chain; chains
  // with fewer than 5 restaurants fall back to the whole county, where
  // only they are judged.
  std::map<std::string, std::map<std::string, double>> groups;
  std::set<std::string> fallback;
  std::map<std::string, int> chain_size;
  for (const auto& [location, chain] : chain_of) ++chain_size[chain];
  for (const auto& [location, list] : scores) {
    double sum = 0;
    for (const auto& s : list) sum += s.first;
    const std::string& chain = chain_of[location];
    const bool own = chain != "NA" && chain_size[chain] >= 5;
    if (own) groups["chain=" + chain][location] = sum / list.size();
    if (!own) fallback.insert(location);
    groups["chain"][location] = sum / list.size();
  }
  EXPECT_EQ(chain_size["WENDY'S"], 13);
  EXPECT_EQ(chain_size["SUBWAY"], 9);

  auto got = replay.Groups();
  ASSERT_EQ(got.size(), groups.size());
  for (const auto& [group, values] : groups) {
    ASSERT_TRUE(got.count(group)) << group;
    std::vector<double> v;
    for (const auto& [loc, x] : values) v.push_back(x);
    std::set<std::string> outliers = ExactOutliers(values, 0.05, true, true);
    if (group == "chain") {
      std::set<std::string> judged;
      for (const std::string& loc : outliers) {
        if (fallback.count(loc)) judged.insert(loc);
      }
      outliers = judged;
    }
    ExpectSame(group, *got[group], v, outliers);
  }
  EXPECT_EQ(got["chain"]->summary.n, scores.size());
  ASSERT_TRUE(got.count("chain=WENDY'S"));
  EXPECT_EQ(got["chain=WENDY'S"]->summary.n, 13u);
}

TEST(RealDataTest, HospitalDoorToDiagnosticMinutesByState) {
  std::vector<Row> rows = ReadCsv(DataPath("cms-ed-door-to-diagnostic.csv"));
  ASSERT_GT(rows.size(), 4000u);
  ASSERT_EQ(rows[0][11], "Score");
  Catalog catalog = DefaultCatalog();
  catalog.wait.min_samples = 1;
  catalog.wait.window = catalog.wait.ttl = absl::Hours(24 * 365 * 30);
  catalog.peer_groups.push_back({"state", "state", {v1::FAMILY_WAIT}, {}, 0});
  const absl::Time measured = absl::FromCivil(absl::CivilDay(2014, 3, 31), absl::UTCTimeZone());
  std::map<std::string, std::string> state_of;
  std::map<std::string, double> seconds;
  int not_available = 0;
  for (size_t i = 1; i < rows.size(); ++i) {
    const Row& r = rows[i];
    ASSERT_EQ(r.size(), 17u) << "record " << i;
    double minutes;
    if (!absl::SimpleAtod(r[11], &minutes)) {
      ++not_available;  // "Not Available": no value, never a zero.
      continue;
    }
    const std::string location = absl::AsciiStrToLower(r[0]);
    state_of[location] = r[4];
    seconds[location] = minutes * 60;
  }
  EXPECT_EQ(seconds.size(), 3364u);
  EXPECT_EQ(not_available, 4122 - 3364);
  for (const auto& [location, state] : state_of) {
    LocationEntry e;
    e.id = location;
    e.labels["state"] = state;
    catalog.locations.push_back(e);
  }
  Replay replay(catalog, measured + absl::Hours(1));
  for (const auto& [location, s] : seconds) {
    v1::Observation o;
    o.set_key("door-to-diagnostic");
    o.set_wait_seconds(s);
    o.mutable_observed_at()->set_seconds(absl::ToUnixSeconds(measured));
    replay.Send(location, o);
  }
  std::map<std::string, int> state_size;
  for (const auto& [location, s] : seconds) ++state_size[state_of[location]];
  std::map<std::string, std::map<std::string, double>> groups;
  for (const auto& [location, s] : seconds) {
    const std::string& state = state_of[location];
    groups[state_size[state] >= 5 ? "state=" + state : std::string("chain")][location] = s;
  }
  auto got = replay.Groups();
  ASSERT_EQ(got.size(), groups.size());
  int outliers = 0;
  for (const auto& [group, values] : groups) {
    ASSERT_TRUE(got.count(group)) << group;
    std::vector<double> v;
    for (const auto& [loc, x] : values) v.push_back(x);
    // A single wait per hospital: the sketch returns it exactly (min = max).
    const std::set<std::string> expected = ExactOutliers(values, 0.10, true, false);
    outliers += expected.size();
    ExpectSame(group, *got[group], v, expected);
  }
  // Slow emergency departments exist in this data: the check is not vacuous.
  EXPECT_GT(outliers, 10);
}

}  // namespace
}  // namespace constance::collector
