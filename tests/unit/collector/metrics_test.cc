// The collector's exposition: the text format written directly, bounded
// cardinality under many findings, and its HTTP server.
#include "collector/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "collector/exposition.h"
#include "collector/metrics_server.h"
#include "gtest/gtest.h"

namespace constance::collector {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1'767'225'600);

std::string Value(double v) {
  std::string s;
  TextExposition::AppendValue(&s, v);
  return s;
}

TEST(TextExpositionTest, ValuesReadBackExactly) {
  EXPECT_EQ(Value(0), "0");
  EXPECT_EQ(Value(-0.0), "0");
  EXPECT_EQ(Value(1'000'000), "1000000");
  EXPECT_EQ(Value(1'767'225'600), "1767225600");
  EXPECT_EQ(Value(-42), "-42");
  EXPECT_EQ(Value(0.1), "0.1");
  EXPECT_EQ(Value(149.5), "149.5");
  EXPECT_EQ(Value(std::numeric_limits<double>::quiet_NaN()), "NaN");
  EXPECT_EQ(Value(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(Value(-std::numeric_limits<double>::infinity()), "-Inf");
  // Every finite double reads back as itself, integers or not, large or tiny.
  for (double v :
       {1e15, 1e300, -2.5e-300, 1.0 / 3, 0.30000000000000004, 1767225600.123456, 9007199254740993.0,
        std::numeric_limits<double>::denorm_min(), std::numeric_limits<double>::max()}) {
    double back = 0;
    ASSERT_TRUE(absl::SimpleAtod(Value(v), &back)) << Value(v);
    EXPECT_EQ(back, v) << Value(v);
  }
}

TEST(TextExpositionTest, LabelValuesAndHelpAreEscaped) {
  std::string text;
  TextExposition out(&text);
  out.Family("m", "a \\ help\nline with \"quotes\"", "gauge");
  LabelSet labels;
  labels.Add("key", "say \"hi\"\\\n").Add("group", "");
  out.Sample("m", labels, 1);
  out.Sample("m", 2);
  out.Sample("m_bucket", labels, "le", "+Inf", 3);
  out.Sample("m_bucket", LabelSet(), "le", "0.5", 4);
  out.Finish();
  EXPECT_EQ(text,
            "# HELP m a \\\\ help\\nline with \"quotes\"\n"
            "# TYPE m gauge\n"
            "m{key=\"say \\\"hi\\\"\\\\\\n\",group=\"\"} 1\n"
            "m 2\n"
            "m_bucket{key=\"say \\\"hi\\\"\\\\\\n\",group=\"\",le=\"+Inf\"} 3\n"
            "m_bucket{le=\"0.5\"} 4\n");
}

TEST(LabelTableTest, RowsAreBuiltCopiedAndReadBack) {
  LabelTable table(1, 8);  // Too small on purpose: rows outgrow the reservation.
  EXPECT_EQ(table.StartRow(), 0u);
  table.Add("key", "a\"b").Add("group", "north");
  EXPECT_EQ(table.StartRow(), 1u);  // An empty row.
  EXPECT_EQ(table.StartRow(0), 2u);
  table.Add("location", "store-1");
  EXPECT_EQ(table.StartRow(2), 3u);  // A copy of a copy, across a reallocation.
  ASSERT_EQ(table.size(), 4u);
  EXPECT_EQ(table.Row(0), "key=\"a\\\"b\",group=\"north\"");
  EXPECT_EQ(table.Row(1), "");
  EXPECT_EQ(table.Row(2), "key=\"a\\\"b\",group=\"north\",location=\"store-1\"");
  EXPECT_EQ(table.Row(3), table.Row(2));
  std::string text;
  TextExposition out(&text);
  out.Sample("m", table.Row(1), 1);
  out.Sample("m", table.Row(0), "le", "+Inf", 2);
  out.Finish();
  EXPECT_EQ(text, "m 1\nm{key=\"a\\\"b\",group=\"north\",le=\"+Inf\"} 2\n");
}

// The samples of one metric name in an exposition: label text -> value.
std::map<std::string, double> Samples(const std::string& text, const std::string& name) {
  std::map<std::string, double> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    if (!absl::StartsWith(line, name)) continue;
    absl::string_view rest = line.substr(name.size());
    if (rest.empty() || (rest[0] != '{' && rest[0] != ' ')) continue;
    const size_t space = rest.rfind(' ');
    double v = 0;
    EXPECT_TRUE(absl::SimpleAtod(rest.substr(space + 1), &v)) << line;
    out[std::string(rest.substr(0, space))] = v;
  }
  return out;
}

TEST(CollectorMetricsTest, FindingSeriesAreCappedAndTheRestCounted) {
  static const struct {
    uint64_t cap;
    size_t exported;
    double suppressed;
  } kCases[] = {{1000, 12, 0}, {5, 5, 7}, {0, 0, 12}};
  for (const auto& c : kCases) {
    Catalog catalog = DefaultCatalog();
    catalog.thresholds.finding_cap = c.cap;
    Engine::Options options;
    options.catalog = std::make_shared<const Catalog>(catalog);
    options.clock = [] { return kNow; };
    Engine engine(options);
    // 12 stores, each overcharging on its own item among 100 honest ones.
    for (int i = 0; i < 112; ++i) {
      v1::Batch b;
      b.set_location(absl::StrCat("store-", i));
      b.set_incarnation(1);
      b.set_first_sequence(1);
      for (int k = 0; k < 12; ++k) {
        v1::Observation* o = b.add_observations();
        o->set_key(absl::StrCat("sku-", k));
        o->mutable_price()->set_minor_units(i == 100 + k ? 199 : 149);
        o->mutable_price()->set_currency("EUR");
      }
      ASSERT_TRUE(engine.ApplyBatch(b).ok());
    }
    engine.Evaluate();
    engine.Evaluate();
    ASSERT_EQ(engine.snapshot()->findings->active.size(), 12u);
    IngestService ingest(&engine, IngestOptions{});
    CollectorMetrics metrics(&engine, &ingest);
    const std::string text = metrics.Render();
    EXPECT_EQ(Samples(text, "constance_finding").size(), c.exported) << "cap " << c.cap;
    EXPECT_EQ(Samples(text, "constance_finding_value").size(), c.exported) << "cap " << c.cap;
    EXPECT_EQ(Samples(text, "constance_findings_suppressed")[""], c.suppressed);
    // Counts by kind are never capped.
    double total = 0;
    for (const auto& [labels, n] : Samples(text, "constance_findings_active")) total += n;
    EXPECT_EQ(total, 12);
    // Every series' statistics, one sample per (key, group): 12 keys, one group.
    const auto means = Samples(text, "constance_series_mean");
    ASSERT_EQ(means.size(), 12u);
    EXPECT_DOUBLE_EQ(
        means.at("{family=\"price\",key=\"sku-0\",currency=\"EUR\",price_kind=\"shelf\","
                 "group=\"chain\"}"),
        (149.0 * 111 + 199) / 112);
    // The outlier, with its direction and value.
    EXPECT_EQ(Samples(text, "constance_outlier_value")
                  .at("{family=\"price\",key=\"sku-3\",currency=\"EUR\",price_kind=\"shelf\","
                      "group=\"chain\",location=\"store-103\",direction=\"above\"}"),
              199);
  }
}


// GET /metrics on 127.0.0.1:`port`, reading at most `limit` bytes of the
// answer (then hanging up) or all of it. The raw bytes: status line,
// headers and chunked body.
std::string RawGet(int port, size_t limit) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const std::string request =
      "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  EXPECT_EQ(send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
  std::string out;
  char buf[65536];
  while (out.size() < limit) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return out;
}

// The body of a chunked answer; empty unless it ends with the last chunk.
std::string Dechunk(const std::string& raw) {
  size_t at = raw.find("\r\n\r\n");
  if (at == std::string::npos) return "";
  at += 4;
  std::string body;
  for (;;) {
    const size_t eol = raw.find("\r\n", at);
    if (eol == std::string::npos) return "";
    const size_t size = std::stoul(raw.substr(at, eol - at), nullptr, 16);
    at = eol + 2;
    if (size == 0) return body;
    if (at + size + 2 > raw.size()) return "";
    body.append(raw, at, size);
    at += size + 2;
  }
}

// The answer is rendered on one thread while another sends it: it arrives
// whole and in order, and scrapers that hang up midway leave nothing
// stuck (the server has two request threads).
TEST(MetricsServerTest, AScrapeArrivesWholeAndHangingUpMidwayLeavesNothingStuck) {
  Engine::Options options;
  options.catalog = std::make_shared<const Catalog>(DefaultCatalog());
  options.clock = [] { return kNow; };
  Engine engine(options);
  constexpr int kKeys = 3000;  // About 6 MB of exposition: many chunks.
  for (int i = 0; i < 12; ++i) {
    v1::Batch b;
    b.set_location(absl::StrCat("store-", i));
    b.set_incarnation(1);
    b.set_first_sequence(1);
    for (int k = 0; k < kKeys; ++k) {
      v1::Observation* o = b.add_observations();
      o->set_key(absl::StrCat("sku-", k));
      o->mutable_price()->set_minor_units(100 + i);
      o->mutable_price()->set_currency("EUR");
    }
    ASSERT_TRUE(engine.ApplyBatch(b).ok());
  }
  engine.Recompute();
  IngestService ingest(&engine, IngestOptions{});
  CollectorMetrics metrics(&engine, &ingest);
  const std::string expected = metrics.Render();
  ASSERT_GT(expected.size(), 4u << 20);
  auto server = MetricsServer::Start("127.0.0.1:0", &metrics);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();

  auto check_whole = [&] {
    const std::string raw = RawGet(port, std::numeric_limits<size_t>::max());
    ASSERT_TRUE(absl::StartsWith(raw, "HTTP/1.1 200")) << raw.substr(0, 200);
    const std::string body = Dechunk(raw);
    // The same text as rendered in one piece (nothing in it moves: the
    // clock is fixed and no batch arrives).
    EXPECT_EQ(body.size(), expected.size());
    EXPECT_TRUE(body == expected);
    EXPECT_EQ(Samples(body, "constance_series_mean").size(), static_cast<size_t>(kKeys));
  };
  check_whole();
  for (int i = 0; i < 4; ++i) {
    const std::string part = RawGet(port, 100'000);
    EXPECT_TRUE(absl::StartsWith(part, "HTTP/1.1 200"));
  }
  check_whole();
}

}  // namespace
}  // namespace constance::collector
