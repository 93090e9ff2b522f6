// `constance replay` on two days of a synthetic 120-store chain's exports
// (synthetic_chain.h): the binary is run as a user runs it, with --json,
// and its output must name exactly what the chain holds: the overcharger's
// outlier, the undeclared zone, no irregular change (a rollout and a
// convergence are not), no silent store (daily files are not silence);
// and once the zone is declared as a peer group, the outlier still.
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/civil_time.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/harness.h"
#include "tests/integration/synthetic_chain.h"

namespace constance::testing {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAreArray;

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

struct ReplayRun {
  int exit_code = -1;
  std::vector<json> events;  // opened / closed lines.
  json report;               // The final ChainSummaryResponse.
  std::string err;
};

ReplayRun RunReplay(const TempDir& tmp, const std::string& args) {
  const std::string err_path = tmp.File("stderr.txt");
  CommandResult r =
      RunCommand(absl::StrCat(BinDir(), "/constance replay --json ", args, " 2>", err_path), "");
  ReplayRun run;
  run.exit_code = r.exit_code;
  run.err = ReadFile(err_path);
  for (absl::string_view line : absl::StrSplit(r.output, '\n', absl::SkipEmpty())) {
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_TRUE(j.is_object()) << "not a JSON line: " << line;
    if (!j.is_object()) continue;
    if (j.value("event", "") == "report") {
      run.report = j["report"];
    } else {
      run.events.push_back(j);
    }
  }
  return run;
}

// kind -> subjects ("location key" or the sorted location list) of the
// findings active at the end.
std::multimap<std::string, std::string> Active(const json& report) {
  std::multimap<std::string, std::string> out;
  if (!report.contains("findings")) return out;
  for (const json& f : report["findings"]) {
    std::string subject = f.value("location", "");
    if (f.contains("series")) absl::StrAppend(&subject, " ", f["series"].value("key", ""));
    out.emplace(f.value("kind", ""), subject);
  }
  return out;
}

std::set<std::string> KindsOpened(const ReplayRun& run) {
  std::set<std::string> kinds;
  for (const json& e : run.events) {
    if (e.value("event", "") == "opened") kinds.insert(e["finding"].value("kind", ""));
  }
  return kinds;
}

class ReplayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    exports_ = tmp_.File("exports");
    ASSERT_EQ(RunCommand("mkdir " + exports_, "").exit_code, 0);
    absl::StatusOr<SyntheticChain> chain = WriteSyntheticChain(exports_, {});
    ASSERT_TRUE(chain.ok()) << chain.status();
    chain_ = *chain;
    WriteFile(tmp_.File("agent.yaml"), SyntheticAgentYaml());
  }

  TempDir tmp_;
  std::string exports_;
  SyntheticChain chain_;
};

TEST_F(ReplayTest, FindsTheOutlierAndTheUndeclaredZoneAndNothingElse) {
  WriteFile(tmp_.File("catalog.yaml"), SyntheticCatalogYaml(chain_, ZoneDeclaration::kNone));
  ReplayRun run =
      RunReplay(tmp_, absl::StrCat("--config=", tmp_.File("agent.yaml"),
                                   " --catalog=", tmp_.File("catalog.yaml"), " '", exports_, "'"));
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.err, HasSubstr(absl::StrCat(chain_.files, " files")));
  EXPECT_THAT(run.err, HasSubstr("(0 bad)")) << run.err;
  EXPECT_THAT(run.err, HasSubstr("location_ttl raised")) << run.err;

  // Every row applied: the store missing from the catalog's too.
  EXPECT_EQ(run.report.value("observations_applied", ""), absl::StrCat(chain_.rows));
  EXPECT_EQ(run.report.value("locations", ""), absl::StrCat(chain_.locations.size()));
  const std::multimap<std::string, std::string> active = Active(run.report);
  // Exactly one outlier: the overcharged item at its store.
  ASSERT_EQ(active.count("OUTLIER"), 1u) << run.report.dump(1);
  EXPECT_EQ(active.find("OUTLIER")->second,
            absl::StrCat(chain_.overcharger, " ", chain_.overcharged_key));
  // One zone, of exactly the zone's stores and keys.
  ASSERT_EQ(active.count("ZONE"), 1u) << run.report.dump(1);
  for (const json& f : run.report["findings"]) {
    if (f.value("kind", "") != "ZONE") continue;
    EXPECT_THAT(f["locations"].get<std::vector<std::string>>(),
                UnorderedElementsAreArray(chain_.zone_locations));
    std::vector<std::string> keys;
    for (const std::string& k : chain_.zone_keys)
      keys.push_back(absl::StrCat("price ", k, " EUR/shelf"));
    EXPECT_THAT(f["keys"].get<std::vector<std::string>>(), UnorderedElementsAreArray(keys));
  }
  // No split outside the zone's keys (the chain holds none), no irregular
  // change (rollout, convergence), no silent store, at the end or ever.
  EXPECT_EQ(active.count("SPLIT"), 0u) << run.report.dump(1);
  const std::set<std::string> opened = KindsOpened(run);
  EXPECT_EQ(opened, (std::set<std::string>{"OUTLIER", "ZONE"}));
  EXPECT_EQ(active.size(), 2u) << run.report.dump(1);
  // Every finding is printed when it opens, with its event time.
  for (const json& e : run.events) {
    EXPECT_THAT(e.value("at", ""), HasSubstr("2026-01-2")) << e.dump();
  }
}

TEST_F(ReplayTest, StillFindsTheOutlierWithTheZoneDeclared) {
  // As the zone finding suggests (its members labelled, the others falling
  // back to the whole chain), and with every store labelled.
  for (ZoneDeclaration declaration :
       {ZoneDeclaration::kZoneMembers, ZoneDeclaration::kEveryStore}) {
    SCOPED_TRACE(static_cast<int>(declaration));
    WriteFile(tmp_.File("catalog.yaml"), SyntheticCatalogYaml(chain_, declaration));
    ReplayRun run = RunReplay(
        tmp_, absl::StrCat("--config=", tmp_.File("agent.yaml"),
                           " --catalog=", tmp_.File("catalog.yaml"), " '", exports_, "'"));
    ASSERT_EQ(run.exit_code, 0) << run.err;
    const std::multimap<std::string, std::string> active = Active(run.report);
    ASSERT_EQ(active.count("OUTLIER"), 1u) << run.report.dump(1);
    EXPECT_EQ(active.find("OUTLIER")->second,
              absl::StrCat(chain_.overcharger, " ", chain_.overcharged_key));
    EXPECT_EQ(active.count("ZONE"), 0u) << run.report.dump(1);
    EXPECT_EQ(active.count("SPLIT"), 0u) << run.report.dump(1);
    EXPECT_EQ(KindsOpened(run), (std::set<std::string>{"OUTLIER"}));
  }
}

TEST_F(ReplayTest, PrintsAFindingWhenItClosesWithTheTimeItClosed) {
  // Three days; the overcharge is corrected on the third.
  const std::string dir = tmp_.File("corrected");
  ASSERT_EQ(RunCommand("mkdir " + dir, "").exit_code, 0);
  SyntheticChainOptions options;
  options.days = 3;
  options.corrected_on_day = 2;
  ASSERT_TRUE(WriteSyntheticChain(dir, options).ok());
  ReplayRun run =
      RunReplay(tmp_, absl::StrCat("--config=", tmp_.File("agent.yaml"), " '", dir, "'"));
  ASSERT_EQ(run.exit_code, 0) << run.err;
  std::string opened_at, closed_at;
  for (const json& e : run.events) {
    if (e["finding"].value("kind", "") != "OUTLIER") continue;
    EXPECT_EQ(e["finding"].value("location", ""), chain_.overcharger) << e.dump();
    if (e.value("event", "") == "opened") opened_at = e.value("at", "");
    if (e.value("event", "") == "closed") {
      closed_at = e.value("at", "");
      EXPECT_TRUE(e["finding"].contains("ended_at")) << e.dump();
    }
  }
  EXPECT_THAT(opened_at, HasSubstr("2026-01-22T"));
  EXPECT_THAT(closed_at, HasSubstr("2026-01-24T"));
  EXPECT_EQ(Active(run.report).count("OUTLIER"), 0u) << run.report.dump(1);
  // The correction is convergence, not an irregular change.
  EXPECT_EQ(KindsOpened(run).count("IRREGULAR_CHANGE"), 0u);
}

TEST_F(ReplayTest, BadRowsAreReportedByLineAndBadInputsStopTheRun) {
  WriteFile(absl::StrCat(exports_, "/Supermarket 999_Prices_22.01.2026_7.00h.csv"),
            "\x8Aifra;Naziv;Cijena\r\n"
            "art-00001;Kruh;1,2,3\r\n");
  // A name the pattern matches and name_regex cannot read: skipped, said.
  WriteFile(absl::StrCat(exports_, "/Supermarket 998_Prices_32.01.2026_7.00h.csv"),
            "\x8Aifra;Naziv;Cijena\r\nart-00001;Kruh;1,20\r\n");
  ReplayRun run =
      RunReplay(tmp_, absl::StrCat("--config=", tmp_.File("agent.yaml"), " '", exports_, "'"));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.err, HasSubstr("Supermarket 999_Prices_22.01.2026_7.00h.csv:2: column 'Cijena'"));
  EXPECT_THAT(run.err, HasSubstr("(1 bad)"));
  EXPECT_THAT(run.err, HasSubstr("Supermarket 998_Prices_32.01.2026_7.00h.csv: "));
  EXPECT_THAT(run.err, HasSubstr("1 skipped: name not readable"));

  run = RunReplay(
      tmp_, absl::StrCat("--config=", tmp_.File("agent.yaml"), " ", tmp_.File("no-such-dir")));
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, HasSubstr("no-such-dir: no such file or directory"));
  run = RunReplay(tmp_, exports_);
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, HasSubstr("--config=agent.yaml"));
  // A named file no pattern matches, and a mapping that says no location.
  WriteFile(tmp_.File("prices.csv"), "x\n");
  run = RunReplay(tmp_,
                  absl::StrCat("--config=", tmp_.File("agent.yaml"), " ", tmp_.File("prices.csv")));
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, HasSubstr("no drop_directory.files pattern matches 'prices.csv'"));
  WriteFile(tmp_.File("nameless.yaml"),
            "drop_directory:\n  files:\n    - {pattern: '*.csv', key_column: a, value_column: b, "
            "currency: EUR, observed_at_column: c}\n");
  run = RunReplay(
      tmp_, absl::StrCat("--config=", tmp_.File("nameless.yaml"), " ", tmp_.File("prices.csv")));
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, HasSubstr("gives no location: set location_column"));
}

}  // namespace
// Not replay, but the same binary: an unknown finding kind is refused with
// every kind the collector can raise, read from the enum itself.
// A synthetic city's food inspections, shaped like the public data sets:
// 300 licences in 10 brands, one to three routine inspections a year over
// three years (2023-2025), a re-inspection 14 days after every fail. 30
// licences fail once and pass their re-inspection; two fail again and
// again (every routine inspection and its first re-inspection, passing the
// second). Written as one CSV (licence, time, result) with the catalog
// that judges the inspection by rate over a year with its cadence.
struct InspectionCity {
  std::vector<std::string> repeat_failers;
  std::vector<std::string> failed_once;
  uint64_t rows = 0;
};

InspectionCity WriteInspectionCity(const TempDir& tmp, const std::string& dir) {
  InspectionCity city;
  std::mt19937 rng(18);
  std::string csv = "licence,inspected,result\n";
  auto row = [&](int licence, absl::CivilDay day, bool passed) {
    absl::StrAppend(&csv, absl::StrFormat("lic-%03d", licence), ",",
                    absl::FormatCivilTime(absl::CivilSecond(day) + 10 * 3600), ",",
                    passed ? "Pass" : "Fail", "\n");
    ++city.rows;
  };
  const std::set<int> repeat = {17, 123};
  std::set<int> once;
  while (once.size() < 30) {
    const int l = static_cast<int>(rng() % 300);
    if (!repeat.count(l)) once.insert(l);
  }
  for (int l : repeat) city.repeat_failers.push_back(absl::StrFormat("lic-%03d", l));
  for (int l : once) city.failed_once.push_back(absl::StrFormat("lic-%03d", l));
  std::string catalog =
      "families:\n  compliance: {min_samples: 1}\n"
      "peer_groups:\n  - {name: brand, label: brand}\n"
      "judging:\n  - {key: inspection, mode: rate, expected_every: 365d}\n"
      "promises:\n  checks:\n    - {key: inspection, min_pass_rate: 1.0}\n"
      "locations:\n";
  for (int l = 0; l < 300; ++l) {
    absl::StrAppend(&catalog, absl::StrFormat("  - {id: lic-%03d, labels: {brand: brand-%d}}\n",
                                              l, l % 10));
    // The same day of each year, 1 to 3 routine inspections evenly spread
    // from it: never a year between two.
    const int anchor = static_cast<int>(rng() % 120);
    // Which routine inspection (of the first two years) the once-failer fails.
    const int fail_at = static_cast<int>(rng() % 2);
    int routine = 0;
    for (int year = 2023; year <= 2025; ++year) {
      const int k = repeat.count(l) ? 3 : 1 + static_cast<int>(rng() % 3);
      for (int j = 0; j < k; ++j) {
        const absl::CivilDay day = absl::CivilDay(year, 1, 1) + anchor + j * 365 / k;
        if (repeat.count(l)) {
          row(l, day, false);
          row(l, day + 14, false);
          row(l, day + 28, true);
        } else if (once.count(l) && year == 2023 && routine == fail_at) {
          row(l, day, false);
          row(l, day + 14, true);
        } else {
          row(l, day, true);
        }
        ++routine;
      }
    }
  }
  WriteFile(absl::StrCat(dir, "/inspections.csv"), csv);
  WriteFile(tmp.File("city-catalog.yaml"), catalog);
  WriteFile(tmp.File("city-agent.yaml"), R"(location: replay-test
collector: 127.0.0.1:7070
insecure: true
drop_directory:
  files:
    - pattern: "inspections.csv"
      records: compliance
      key: inspection
      location_column: licence
      observed_at_column: inspected
      time_format: "%Y-%m-%dT%H:%M:%S"
      value_column: result
      cadence: 8760h
)");
  return city;
}

// Issue 18's acceptance: replayed in event time, exactly the two licences
// failing again and again are outliers within their brands (and break the
// inspection promise); a licence that failed once and passed its
// re-inspection has no open finding; nobody is silent or stale.
TEST(InspectionReplayTest, OnlyTheRepeatFailersStandOut) {
  TempDir tmp;
  const std::string dir = tmp.File("inspections");
  ASSERT_EQ(RunCommand("mkdir " + dir, "").exit_code, 0);
  const InspectionCity city = WriteInspectionCity(tmp, dir);
  ReplayRun run = RunReplay(
      tmp, absl::StrCat("--every=24h --config=", tmp.File("city-agent.yaml"),
                        " --catalog=", tmp.File("city-catalog.yaml"), " '", dir, "'"));
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.report.value("observations_applied", ""), absl::StrCat(city.rows)) << run.err;

  std::set<std::string> flagged;
  for (const json& f : run.report["findings"]) {
    flagged.insert(f.value("location", ""));
    bool outlier = false;
    for (const json& r : f["reasons"]) outlier = outlier || r.value("kind", "") == "OUTLIER";
    EXPECT_TRUE(outlier) << f.dump(1);
    EXPECT_THAT(f.value("group", ""), HasSubstr("brand=brand-")) << f.dump(1);
    EXPECT_NE(f.value("severity", ""), "CRITICAL") << f.dump(1);
  }
  EXPECT_EQ(flagged, std::set<std::string>(city.repeat_failers.begin(), city.repeat_failers.end()))
      << run.report.dump(1);
  for (const std::string& l : city.failed_once) EXPECT_EQ(flagged.count(l), 0u) << l;
  const std::set<std::string> opened = KindsOpened(run);
  EXPECT_EQ(opened.count("SILENT"), 0u) << run.err;
  EXPECT_EQ(opened.count("STALE"), 0u) << run.err;
  EXPECT_EQ(opened.count("DRIFT"), 0u) << run.err;
  // A first inspection failed is a broken promise until the re-inspection
  // passes: those that opened closed again, with the re-inspection's date.
  const std::set<std::string> once(city.failed_once.begin(), city.failed_once.end());
  int cured = 0;
  for (const json& e : run.events) {
    if (e.value("event", "") != "closed") continue;
    EXPECT_TRUE(once.count(e["finding"].value("location", ""))) << e.dump();
    ++cured;
  }
  EXPECT_GT(cured, 0);
}

TEST(CliTest, AnUnknownFindingKindListsEveryKind) {
  TempDir tmp;
  const std::string err_path = tmp.File("stderr.txt");
  CommandResult r =
      RunCommand(absl::StrCat(BinDir(), "/constance findings --finding=bogus 2>", err_path), "");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(ReadFile(err_path),
              HasSubstr("'bogus' is not one of outlier, split, zone, broken_promise, "
                        "unkeepable_promise, irregular_change, drift, silent, stale\n"));
}

}  // namespace constance::testing
