// The drop directory's parser and mappings (file_input.h, input_values.h)
// on the fixture exports in tests/data/agent/ and on hand-made malformed
// input.
#include "agent/file_input.h"

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/input_values.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace constance::agent {
namespace {

using ::testing::HasSubstr;

std::string Fixture(const std::string& name) {
  std::ifstream in(std::string(CONSTANCE_SOURCE_DIR) + "/tests/data/agent/" + name,
                   std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

absl::Time At(const char* rfc3339) {
  absl::Time t;
  std::string err;
  EXPECT_TRUE(absl::ParseTime(absl::RFC3339_full, rfc3339, &t, &err)) << err;
  return t;
}

// The fixtures were exported on 2026-11-20/21; validation runs at this clock.
const absl::Time kNow = At("2026-11-22T00:00:00Z");

InputMapping CzechPrices() {
  InputMapping m;
  m.pattern = "prices-*.csv";
  m.encoding = InputMapping::Encoding::kWindows1250;
  m.records = InputMapping::Records::kPriceCheck;
  m.delimiter = ';';
  m.decimal = ',';
  m.thousands = " ";
  m.key_column = "Kód zboží";
  m.shelf_column = "Cena regál";
  m.pos_column = "Cena pokladna";
  m.list_column = "Ceník";
  m.currency_column = "Měna";
  m.observed_at_column = "Datum";
  return m;
}

TEST(ParsePassFailTest, Table) {
  static const struct {
    const char* text;
    int want;  // 1 pass, 0 fail, 2 n.a., -1 error
  } cases[] = {{"pass", 1}, {"OK", 1}, {"1", 1},   {"fail", 0},  {"No", 0},
               {"n.a.", 2}, {"", 2},   {"N/A", 2}, {"maybe", -1}};
  for (const auto& c : cases) {
    absl::StatusOr<std::optional<bool>> got = ParsePassFail(c.text);
    if (c.want < 0) {
      EXPECT_FALSE(got.ok()) << c.text;
      continue;
    }
    ASSERT_TRUE(got.ok()) << c.text;
    if (c.want == 2) {
      EXPECT_FALSE(got->has_value()) << c.text;
    } else {
      EXPECT_EQ(**got, c.want == 1) << c.text;
    }
  }
}

TEST(FileParserTest, Windows1250PriceExportWithDecimalCommasAndQuotes) {
  const std::string data = Fixture("prices-cp1250.csv");
  ASSERT_FALSE(data.empty());
  FileParser parser(CzechPrices(), Limits{});
  std::vector<InputRecord> records;
  EXPECT_EQ(parser.Parse(data, 1, /*at_end=*/false, kNow, 0, &records), data.size());
  ASSERT_EQ(records.size(), 7u);  // Header and six rows.
  EXPECT_TRUE(records[0].header);

  // Coffee: all three agree; the price match passes.
  ASSERT_TRUE(records[1].error.empty()) << records[1].error;
  ASSERT_EQ(records[1].observations.size(), 4u);
  EXPECT_EQ(records[1].observations[0].key(), "EAN-8594001234567");
  EXPECT_EQ(records[1].observations[0].price().minor_units(), 14990);
  EXPECT_EQ(records[1].observations[0].price().currency(), "CZK");
  EXPECT_EQ(records[1].observations[0].price().kind(), v1::SHELF);
  EXPECT_EQ(records[1].observations[1].price().kind(), v1::POS);
  EXPECT_EQ(records[1].observations[2].price().kind(), v1::LIST);
  EXPECT_EQ(records[1].observations[3].key(), "EAN-8594001234567.price_match");
  EXPECT_TRUE(records[1].observations[3].check().passed());

  // Chocolate (a ';' inside quotes): the till charges more: overcharge.
  ASSERT_TRUE(records[2].error.empty()) << records[2].error;
  ASSERT_EQ(records[2].observations.size(), 4u);
  EXPECT_FALSE(records[2].observations[3].check().passed());
  EXPECT_TRUE(records[2].observations[3].check().critical());

  // Bread: the till charges less: undercharge, failed but not critical.
  ASSERT_EQ(records[3].observations.size(), 4u);
  EXPECT_FALSE(records[3].observations[3].check().passed());
  EXPECT_FALSE(records[3].observations[3].check().critical());

  // Television: thousands separated by a space, doubled quotes in the name.
  ASSERT_TRUE(records[4].error.empty()) << records[4].error;
  EXPECT_EQ(records[4].observations[0].price().minor_units(), 1299900);
  EXPECT_EQ(records[4].observations[2].price().minor_units(), 1349900);

  // Ham: a shelf price that is not a number: refused with its line.
  EXPECT_EQ(records[5].line, 6);
  EXPECT_THAT(records[5].error, HasSubstr("Cena regál"));
  EXPECT_TRUE(records[5].observations.empty());

  // Beer: no POS price read: shelf and list only, no match check.
  ASSERT_TRUE(records[6].error.empty()) << records[6].error;
  ASSERT_EQ(records[6].observations.size(), 2u);
  EXPECT_EQ(records[6].observations[1].price().kind(), v1::LIST);
}

TEST(FileParserTest, PartialLastLineWaitsUntilTheFileIsComplete) {
  InputMapping m;
  m.records = InputMapping::Records::kPrice;
  m.key_column = "item";
  m.value_column = "price";
  m.currency = "EUR";
  FileParser parser(m, Limits{});
  const std::string data = "item,price\nsku-1,4.49\nsku-2,5.";
  std::vector<InputRecord> records;
  const size_t used = parser.Parse(data, 1, /*at_end=*/false, kNow, 0, &records);
  EXPECT_EQ(used, std::string("item,price\nsku-1,4.49\n").size());
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[1].next_line, 3);

  // The writer finishes the line; parsing resumes at the checkpoint.
  const std::string rest = data.substr(used) + "99\n";
  records.clear();
  EXPECT_EQ(parser.Parse(rest, 3, false, kNow, 0, &records), rest.size());
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].line, 3);
  EXPECT_EQ(records[0].observations[0].price().minor_units(), 599);

  // A complete file's last line without a newline is taken.
  records.clear();
  EXPECT_EQ(parser.Parse("sku-3,1.00", 4, /*at_end=*/true, kNow, 0, &records), 10u);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].observations[0].key(), "sku-3");
}

// A line over max_line_bytes is one bad record, JSONL or CSV, also as the
// last line of a complete file (constance-agent import); the next is read.
TEST(FileParserTest, LineOverMaxLineBytesIsOneBadRecord) {
  InputMapping jsonl;
  jsonl.format = InputMapping::Format::kJsonl;
  jsonl.records = InputMapping::Records::kScore;
  jsonl.key_column = "k";
  jsonl.value_column = "v";
  InputMapping csv;
  csv.records = InputMapping::Records::kScore;
  csv.key_column = "k";
  csv.value_column = "v";
  const std::string long_json = "{\"k\":\"" + std::string(2000, 'x') + "\",\"v\":1}";
  const struct {
    InputMapping mapping;
    std::string data;
    size_t bad_index;
    int64_t bad_line;
  } cases[] = {
      {jsonl, "{\"k\":\"a\",\"v\":1}\n" + long_json + "\n{\"k\":\"b\",\"v\":2}\n", 1, 2},
      {jsonl, "{\"k\":\"a\",\"v\":1}\n" + long_json, 1, 2},
      {csv, "k,v\na,1\nb," + std::string(2000, '1') + "\nc,3\n", 2, 3},
  };
  for (const auto& c : cases) {
    FileParser parser(c.mapping, Limits{}, {}, /*max_line_bytes=*/1024);
    std::vector<InputRecord> records;
    EXPECT_EQ(parser.Parse(c.data, 1, /*at_end=*/true, kNow, 0, &records), c.data.size());
    ASSERT_GT(records.size(), c.bad_index) << c.data.substr(0, 40);
    EXPECT_EQ(records[c.bad_index].line, c.bad_line);
    EXPECT_THAT(records[c.bad_index].error,
                ::testing::HasSubstr("line over max_line_bytes (1024 bytes)"));
    for (size_t i = 0; i < records.size(); ++i) {
      if (i != c.bad_index) {
        EXPECT_EQ(records[i].error, "") << i;
      }
    }
  }
}

TEST(FileParserTest, QuotedLineBreakKeepsTheRecordWhole) {
  InputMapping m;
  m.records = InputMapping::Records::kScore;
  m.key_column = "k";
  m.value_column = "v";
  FileParser parser(m, Limits{});
  const std::string head = "k,note,v\nhygiene,\"line one\nline two";
  std::vector<InputRecord> records;
  // The quoted field is open: only the header is complete.
  EXPECT_EQ(parser.Parse(head, 1, false, kNow, 0, &records), 9u);
  records.clear();
  const std::string rest = "hygiene,\"line one\nline two\",97\nnext,x,5\n";
  EXPECT_EQ(parser.Parse(rest, 2, false, kNow, 0, &records), rest.size());
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].line, 2);
  EXPECT_EQ(records[0].next_line, 4);
  EXPECT_EQ(records[0].observations[0].score(), 97);
  EXPECT_EQ(records[1].line, 4);
}

TEST(FileParserTest, MalformedLinesAreReportedAndTheRestIsRead) {
  InputMapping m;
  m.records = InputMapping::Records::kWait;
  m.key_column = "service";
  m.value_column = "seconds";
  FileParser parser(m, Limits{});
  const std::string data =
      "service,seconds\n"
      "checkout,95\n"
      "checkout\n"          // Too few fields.
      ",30\n"               // No key.
      "checkout,forever\n"  // Not a number.
      "check out,10\n"      // Key charset.
      "checkout,-5\n"       // Negative wait.
      "drive-thru,240.5\n";
  std::vector<InputRecord> records;
  EXPECT_EQ(parser.Parse(data, 1, false, kNow, 0, &records), data.size());
  ASSERT_EQ(records.size(), 8u);
  EXPECT_TRUE(records[1].error.empty());
  for (int i = 2; i <= 6; ++i) {
    EXPECT_FALSE(records[i].error.empty()) << "line " << records[i].line;
    EXPECT_EQ(records[i].line, i + 1);
  }
  EXPECT_THAT(records[2].error, HasSubstr("seconds"));
  EXPECT_THAT(records[4].error, HasSubstr("forever"));
  EXPECT_TRUE(records[7].error.empty()) << records[7].error;
  EXPECT_EQ(records[7].observations[0].wait_seconds(), 240.5);
}

TEST(FileParserTest, MissingHeaderColumnIsNamed) {
  InputMapping m;
  m.records = InputMapping::Records::kScore;
  m.key_column = "Key";
  m.value_column = "Score";
  FileParser parser(m, Limits{});
  std::vector<InputRecord> records;
  parser.Parse("key,score\na,1\n", 1, false, kNow, 0, &records);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_THAT(records[1].error, HasSubstr("no column 'Key'"));
  EXPECT_THAT(records[1].error, HasSubstr("key, score"));
}

TEST(FileParserTest, InvalidWindows1250ByteIsReported) {
  InputMapping m = CzechPrices();
  m.records = InputMapping::Records::kPrice;
  m.value_column = "Cena regál";
  FileParser parser(m, Limits{});
  std::string header = Fixture("prices-cp1250.csv");
  header = header.substr(0, header.find('\n') + 1);
  const std::string bad = "EAN-1;x\x98y;\"1,00\";;;CZK;2026-11-20T08:00:00Z\n";
  std::vector<InputRecord> records;
  parser.Parse(header + bad, 1, false, kNow, 0, &records);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_THAT(records[1].error, HasSubstr("0x98"));
}

TEST(FileParserTest, JsonlQueueLogBecomesTicketEvents) {
  InputMapping m;
  m.format = InputMapping::Format::kJsonl;
  m.records = InputMapping::Records::kTicket;
  FileParser parser(m, Limits{});
  const std::string data = Fixture("queue-log.jsonl");
  std::vector<InputRecord> records;
  EXPECT_EQ(parser.Parse(data, 1, false, kNow, 0, &records), data.size());
  ASSERT_EQ(records.size(), 12u);
  size_t events = 0;
  for (const InputRecord& r : records) events += r.tickets.size();
  EXPECT_EQ(events, 11u);
  EXPECT_EQ(records[10].line, 11);
  EXPECT_THAT(records[10].error, HasSubstr("teleported"));
  EXPECT_EQ(records[0].tickets[0].ticket, "A001");
  EXPECT_EQ(records[0].tickets[0].at, At("2026-11-20T09:00:00Z"));
}

TEST(FileParserTest, JsonlChecklistBatch) {
  InputMapping m;
  m.format = InputMapping::Format::kJsonl;
  m.records = InputMapping::Records::kChecklist;
  FileParser parser(m, Limits{});
  const std::string data = Fixture("checklist-batch.jsonl");
  std::vector<InputRecord> records;
  parser.Parse(data, 1, false, kNow, 0, &records);
  ASSERT_EQ(records.size(), 4u);
  // n.a. items produce nothing.
  ASSERT_EQ(records[0].observations.size(), 2u);
  EXPECT_EQ(records[0].observations[0].key(), "opening.fridge-temp");
  EXPECT_EQ(records[0].observations[0].id(), "sub-2026-11-20-1/fridge-temp");
  ASSERT_EQ(records[1].observations.size(), 3u);
  EXPECT_FALSE(records[1].observations[0].check().passed());
  EXPECT_TRUE(records[1].observations[0].check().critical());
  EXPECT_EQ(records[2].line, 3);
  EXPECT_THAT(records[2].error, HasSubstr("maybe"));
  EXPECT_EQ(records[3].observations.size(), 2u);
}

TEST(FileParserTest, JsonlColumnsAndLocationColumn) {
  InputMapping m;
  m.format = InputMapping::Format::kJsonl;
  m.records = InputMapping::Records::kCompliance;
  m.key_column = "check";
  m.value_column = "result";
  m.critical_column = "critical";
  m.location_column = "store";
  FileParser parser(m, Limits{});
  std::vector<InputRecord> records;
  parser.Parse(
      "{\"store\":\"FR-Paris-0042\",\"check\":\"door\",\"result\":\"fail\",\"critical\":true}\n"
      "{\"store\":\"fr-lyon-0001\",\"check\":\"door\",\"result\":\"na\"}\n"
      "not json\n",
      1, false, kNow, 0, &records);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[0].location, "fr-paris-0042");
  ASSERT_EQ(records[0].observations.size(), 1u);
  EXPECT_TRUE(records[0].observations[0].check().critical());
  EXPECT_TRUE(records[1].observations.empty());
  EXPECT_TRUE(records[1].error.empty());
  EXPECT_FALSE(records[2].error.empty());
}

TEST(FileParserTest, UnclosedQuoteIsGivenUpAtItsLineAndTheRestIsRead) {
  InputMapping m;
  m.records = InputMapping::Records::kScore;
  m.key_column = "k";
  m.value_column = "v";
  FileParser parser(m, Limits{});
  std::string data = "k,v\nbroken,\"1\n";
  const int kRows = 150'000;  // Over kMaxRecordBytes after the open quote.
  for (int i = 0; i < kRows; ++i) absl::StrAppend(&data, "r", i, ",1\n");
  std::vector<InputRecord> records;
  size_t offset = 0;
  int64_t line = 1;
  while (offset < data.size()) {
    const size_t used =
        parser.Parse(absl::string_view(data).substr(offset), line, false, kNow, 0, &records);
    ASSERT_GT(used, 0u);
    offset += used;
    line = records.back().next_line;
  }
  ASSERT_EQ(records.size(), 2u + kRows);
  EXPECT_EQ(records[1].line, 2);
  EXPECT_THAT(records[1].error, HasSubstr("unterminated quoted field"));
  EXPECT_EQ(records[2].line, 3);
  EXPECT_EQ(records[2].observations[0].key(), "r0");
  EXPECT_EQ(records.back().line, 2 + kRows);
}

// A price list with a shelf and a promotion price per row: one observation
// per price present, each with its kind and an id of its own.
TEST(FileParserTest, RowWithShelfAndPromoPricesGivesOneObservationPerPrice) {
  InputMapping m;
  m.records = InputMapping::Records::kPrice;
  m.delimiter = ';';
  m.decimal = ',';
  m.key_column = "Barkod";
  m.id_column = "Id";
  m.values = {{"MPC", "shelf"}, {"Akcija", "promo"}};
  m.currency = "EUR";
  FileParser parser(m, Limits{});
  std::vector<InputRecord> records;
  parser.Parse(
      "Id;Barkod;MPC;Akcija\n"
      "r1;3850001;1,99;1,49\n"  // Both prices.
      "r2;3850002;2,50;\n"      // No promotion.
      "r3;3850003;;\n"          // No price at all.
      "r4;3850004;3,00;x\n",    // A bad promotion price: the row gives nothing.
      1, false, kNow, 0, &records);
  ASSERT_EQ(records.size(), 5u);
  ASSERT_EQ(records[1].error, "");
  ASSERT_EQ(records[1].observations.size(), 2u);
  const v1::Observation& shelf = records[1].observations[0];
  const v1::Observation& promo = records[1].observations[1];
  EXPECT_EQ(shelf.price().kind(), v1::SHELF);
  EXPECT_EQ(shelf.price().minor_units(), 199);
  EXPECT_EQ(shelf.id(), "r1.shelf");
  EXPECT_EQ(promo.price().kind(), v1::PROMO);
  EXPECT_EQ(promo.price().minor_units(), 149);
  EXPECT_EQ(promo.id(), "r1.promo");
  EXPECT_EQ(promo.key(), "3850001");

  ASSERT_EQ(records[2].observations.size(), 1u) << records[2].error;
  EXPECT_EQ(records[2].observations[0].price().kind(), v1::SHELF);
  EXPECT_EQ(records[2].observations[0].id(), "r2.shelf");

  EXPECT_TRUE(records[3].observations.empty());
  EXPECT_THAT(records[3].error, HasSubstr("no price: columns 'MPC', 'Akcija' are all empty"));
  EXPECT_TRUE(records[4].observations.empty());
  EXPECT_THAT(records[4].error, HasSubstr("column 'Akcija'"));
}

// The one-column form is unchanged: its id has no suffix and an empty
// price is an error, as before.
TEST(FileParserTest, OneValueColumnKeepsItsIdAndRefusesAnEmptyPrice) {
  InputMapping m;
  m.records = InputMapping::Records::kPrice;
  m.key_column = "k";
  m.value_column = "v";
  m.id_column = "id";
  m.kind = "list";
  m.currency = "EUR";
  FileParser parser(m, Limits{});
  std::vector<InputRecord> records;
  parser.Parse("id,k,v\na1,x,1.00\na2,y,\n", 1, false, kNow, 0, &records);
  ASSERT_EQ(records.size(), 3u);
  ASSERT_EQ(records[1].observations.size(), 1u) << records[1].error;
  EXPECT_EQ(records[1].observations[0].id(), "a1");
  EXPECT_EQ(records[1].observations[0].price().kind(), v1::LIST);
  EXPECT_TRUE(records[2].observations.empty());
  EXPECT_THAT(records[2].error, HasSubstr("column 'v'"));
}

TEST(FileParserTest, MaxRecordsStopsAtARecordBoundary) {
  InputMapping m;
  m.records = InputMapping::Records::kScore;
  m.key_column = "1";
  m.value_column = "2";
  m.header = false;
  FileParser parser(m, Limits{});
  std::vector<InputRecord> records;
  const std::string data = "a,1\nb,2\nc,3\n";
  EXPECT_EQ(parser.Parse(data, 1, false, kNow, 2, &records), 8u);
  EXPECT_EQ(records.size(), 2u);
}

}  // namespace
}  // namespace constance::agent
