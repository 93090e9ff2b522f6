// The `drop_directory:` and `open_ticket_ttl` keys of the agent's YAML
// config (input_config.h through config.h's ParseAgentConfig).
#include "agent/input_config.h"

#include <string>

#include "agent/config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace constance::agent {
namespace {

using ::testing::HasSubstr;

TEST(InputConfigTest, FullSection) {
  absl::StatusOr<AgentConfig> c = ParseAgentConfig(R"(
location: store-1
open_ticket_ttl: 4h
drop_directory:
  path: /var/spool/constance/drop
  poll_interval: 5s
  settle_time: 1m
  processed: keep
  max_records_per_commit: 200
  files:
    - pattern: "ceny-*.csv"
      records: price_check
      encoding: windows-1250
      delimiter: ";"
      decimal: ","
      thousands: space
      key_column: Kód zboží
      shelf_column: Cena regál
      pos_column: Cena pokladna
      currency: CZK
    - pattern: "*.jsonl"
      format: jsonl
      records: ticket
)",
                                                   "agent.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->open_ticket_ttl, absl::Hours(4));
  const DropDirectoryConfig& d = c->drop_directory;
  EXPECT_EQ(d.path, "/var/spool/constance/drop");
  EXPECT_EQ(d.poll_interval, absl::Seconds(5));
  EXPECT_TRUE(d.keep_processed);
  EXPECT_EQ(d.max_records_per_commit, 200u);
  ASSERT_EQ(d.files.size(), 2u);
  EXPECT_EQ(d.files[0].encoding, InputMapping::Encoding::kWindows1250);
  EXPECT_EQ(d.files[0].delimiter, ';');
  EXPECT_EQ(d.files[0].decimal, ',');
  EXPECT_EQ(d.files[0].thousands, " ");
  EXPECT_EQ(d.files[0].key_column, "Kód zboží");
  EXPECT_EQ(d.files[1].records, InputMapping::Records::kTicket);
}

TEST(InputConfigTest, FileNameCapturesSeveralPricesAndCadence) {
  absl::StatusOr<AgentConfig> c = ParseAgentConfig(R"(
location: store-269
drop_directory:
  path: /srv/drop
  files:
    - pattern: "Supermarket *.csv"
      name_regex: '^Supermarket (?P<location>\d+)_.*_(?P<observed_at>\d{2}\.\d{2}\.\d{4}_\d{1,2}\.\d{2})h\.csv$'
      name_time_format: '%d.%m.%Y_%H.%M'
      location_prefix: store-
      cadence: 24h
      key_column: Barkod
      values: [{column: Price, kind: shelf}, {column: PromoPrice, kind: promo}]
      currency: EUR
    - pattern: "waits-*.csv"
      records: wait
      key_column: service
      value_column: seconds
      cadence: 15m
)",
                                                   "agent.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  const InputMapping& m = c->drop_directory.files[0];
  EXPECT_EQ(m.name_time_format, "%d.%m.%Y_%H.%M");
  EXPECT_EQ(m.location_prefix, "store-");
  EXPECT_EQ(m.cadence, absl::Hours(24));
  ASSERT_EQ(m.values.size(), 2u);
  EXPECT_EQ(m.values[1].column, "PromoPrice");
  EXPECT_EQ(m.values[1].kind, "promo");
  EXPECT_EQ(c->drop_directory.files[1].cadence, absl::Minutes(15));
  EXPECT_EQ(ExpectedCadence(*c), absl::Hours(24));

  AgentConfig none;
  EXPECT_EQ(ExpectedCadence(none), absl::ZeroDuration());
}

TEST(InputConfigTest, ErrorsNameFileLineAndField) {
  static const struct {
    const char* yaml;
    const char* error;
  } cases[] = {
      {"drop_directory:\n  path: /x\n  files:\n    - pattern: a\n      encoding: cp1252\n",
       "agent.yaml:5: drop_directory.files[0].encoding: 'cp1252' is not one of"},
      {"drop_directory:\n  path: /x\n", "agent.yaml:2: drop_directory: 'path' is set but 'files' is empty"},
      {"drop_directory:\n  files:\n    - records: price\n      key_column: k\n      value_column: "
       "v\n",
       "needs field 'currency' or 'currency_column'"},
      {"drop_directory:\n  files:\n    - records: checklist\n", "jsonl only"},
      {"drop_directory:\n  files:\n    - records: wait\n      key_column: k\n", "value_column"},
      {"drop_directory:\n  files:\n    - records: score\n      key: k\n      value_column: v\n"
       "      decimal: ','\n      thousands: ','\n",
       "must differ"},
      {"drop_directory:\n  polling: 2s\n", "agent.yaml:2: drop_directory.polling: unknown key (allowed: path,"},
      {"drop_directory:\n  processed: delete\n", "not move or keep"},
      {"open_ticket_ttl: 0s\n", "agent.yaml:1: open_ticket_ttl: must be positive"},
      // File-name captures.
      {"drop_directory:\n  files:\n    - key: k\n      value_column: v\n      records: score\n"
       "      name_regex: '(?P<location>[0-9+)'\n",
       "agent.yaml:3: drop_directory.files[0]: field 'name_regex': '(?P<location>[0-9+)' is not a "
       "valid RE2 regex"},
      {"drop_directory:\n  files:\n    - key: k\n      value_column: v\n      records: score\n"
       "      name_regex: '(?P<store>\\d+)\\.csv'\n",
       "unknown group 'store'"},
      {"drop_directory:\n  files:\n    - key: k\n      value_column: v\n      records: score\n"
       "      name_regex: '(?P<observed_at>\\d+)\\.csv'\n",
       "give its format in 'name_time_format'"},
      {"drop_directory:\n  files:\n    - key: k\n      value_column: v\n      records: score\n"
       "      name_regex: '(?P<location>\\d+)\\.csv'\n      name_time_format: '%Y'\n",
       "'name_time_format' needs a group (?P<observed_at>...)"},
      {"drop_directory:\n  files:\n    - key: k\n      value_column: v\n      records: score\n"
       "      location_prefix: store-\n",
       "need a 'name_regex'"},
      // Several prices per row.
      {"drop_directory:\n  files:\n    - key: k\n      currency: EUR\n      value_column: Price\n"
       "      values: [{column: Price, kind: shelf}]\n",
       "'value_column' and 'values' both given"},
      {"drop_directory:\n  files:\n    - key: k\n      currency: EUR\n      kind: promo\n"
       "      values: [{column: Price, kind: shelf}]\n",
       "field 'kind' and 'values' both given"},
      {"drop_directory:\n  files:\n    - key: k\n      currency: EUR\n"
       "      values: [{column: Price, kind: sale}]\n",
       "field 'values' [0] kind: 'sale' is not one of: shelf, pos, list, promo"},
      {"drop_directory:\n  files:\n    - key: k\n      currency: EUR\n"
       "      values: [{column: A, kind: shelf}, {column: B, kind: shelf}]\n",
       "'shelf' is listed twice"},
      {"drop_directory:\n  files:\n    - key: k\n      currency: EUR\n"
       "      values: [{column: A}]\n",
       "agent.yaml:5: drop_directory.files[0].values[0].kind: required (shelf, pos, list or promo)"},
      {"drop_directory:\n  files:\n    - key: k\n      records: wait\n"
       "      values: [{column: A, kind: shelf}]\n",
       "for records 'price' only"},
      // Cadence.
      {"drop_directory:\n  files:\n    - key: k\n      value_column: v\n      records: score\n"
       "      cadence: 0s\n",
       "agent.yaml:6: drop_directory.files[0].cadence: must be positive, got 0"},
      {"drop_directory:\n  files:\n    - key: k\n      value_column: v\n      records: score\n"
       "      cadence: daily\n",
       "agent.yaml:6: drop_directory.files[0].cadence: 'daily' is not a duration"},
  };
  for (const auto& c : cases) {
    absl::StatusOr<AgentConfig> got = ParseAgentConfig(c.yaml, "agent.yaml");
    ASSERT_FALSE(got.ok()) << c.yaml;
    EXPECT_THAT(std::string(got.status().message()), HasSubstr(c.error)) << c.yaml;
  }
}

}  // namespace
}  // namespace constance::agent
