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

TEST(InputConfigTest, ErrorsNameFileLineAndField) {
  static const struct {
    const char* yaml;
    const char* error;
  } cases[] = {
      {"drop_directory:\n  path: /x\n  files:\n    - pattern: a\n      encoding: cp1252\n",
       "agent.yaml:2: field 'drop_directory': files[0] (line 5): field 'encoding': 'cp1252' is "
       "not one of"},
      {"drop_directory:\n  path: /x\n", "'files' is empty"},
      {"drop_directory:\n  files:\n    - records: price\n      key_column: k\n      value_column: "
       "v\n",
       "needs field 'currency' or 'currency_column'"},
      {"drop_directory:\n  files:\n    - records: checklist\n", "jsonl only"},
      {"drop_directory:\n  files:\n    - records: wait\n      key_column: k\n", "value_column"},
      {"drop_directory:\n  files:\n    - records: score\n      key: k\n      value_column: v\n"
       "      decimal: ','\n      thousands: ','\n",
       "must differ"},
      {"drop_directory:\n  polling: 2s\n", "unknown field"},
      {"drop_directory:\n  processed: delete\n", "not move or keep"},
      {"open_ticket_ttl: 0s\n", "positive"},
  };
  for (const auto& c : cases) {
    absl::StatusOr<AgentConfig> got = ParseAgentConfig(c.yaml, "agent.yaml");
    ASSERT_FALSE(got.ok()) << c.yaml;
    EXPECT_THAT(std::string(got.status().message()), HasSubstr(c.error)) << c.yaml;
  }
}

}  // namespace
}  // namespace constance::agent
