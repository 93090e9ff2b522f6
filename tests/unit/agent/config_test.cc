// Agent configuration: a good file, each bad field named with file and line,
// unknown keys, flags over the file, and what running requires.
#include "agent/config.h"

#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace constance::agent {
namespace {

using ::testing::HasSubstr;

constexpr char kGood[] = R"(location: fr-paris-0042          # a comment
labels: {brand: acme, region: idf, district: paris-11, format: city}
collector: collector.example:7070
insecure: true
listen: 127.0.0.1:8080
metrics_listen: 127.0.0.1:9465
flush_interval: 50ms
max_batch: 500
backoff_max: 60s
)";

TEST(AgentConfigTest, GoodFile) {
  absl::StatusOr<AgentConfig> c = ParseAgentConfig(kGood, "agent.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->location, "fr-paris-0042");
  EXPECT_EQ(c->labels.size(), 4u);
  EXPECT_EQ(c->labels.at("district"), "paris-11");
  EXPECT_EQ(c->collector, "collector.example:7070");
  EXPECT_TRUE(c->insecure);
  EXPECT_EQ(c->listen, "127.0.0.1:8080");
  EXPECT_EQ(c->metrics_listen, "127.0.0.1:9465");
  EXPECT_EQ(c->flush_interval, absl::Milliseconds(50));
  EXPECT_EQ(c->max_batch, 500u);
  EXPECT_EQ(c->backoff_max, absl::Seconds(60));
  // Keys not in the file keep their defaults.
  EXPECT_EQ(c->backoff_initial, absl::Seconds(1));
  EXPECT_EQ(c->heartbeat_interval, absl::Seconds(30));
  EXPECT_EQ(c->drain_timeout, absl::Seconds(5));
  EXPECT_TRUE(FinishAgentConfig(*c).ok());
}

TEST(AgentConfigTest, EmptyFileMeansDefaults) {
  absl::StatusOr<AgentConfig> c = ParseAgentConfig("# nothing yet\n", "agent.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "127.0.0.1:8080");
  EXPECT_EQ(c->flush_interval, absl::Milliseconds(100));
  EXPECT_EQ(c->max_batch, 1000u);
}

TEST(AgentConfigTest, BadFilesNameFileLineAndField) {
  static const struct {
    const char* yaml;
    const char* error;  // Expected substring.
  } kCases[] = {
      {"location: Paris\n", "agent.yaml:1: location: must start with a lower-case"},
      {"collector: c:1\ninsecure: true\nlocation: -bad\n",
       "agent.yaml:3: location: must start with"},
      {"location: a b\n", "agent.yaml:1: location: character ' ' not allowed"},
      {"location:\ncollector: c:1\n", "agent.yaml:1: location: has no value"},
      {"location: [a, b]\n", "agent.yaml:1: location: expected a single value"},
      {"collector: collector.example\n",
       "agent.yaml:1: collector: 'collector.example' is not HOST:PORT"},
      {"collector: c:http\n", "agent.yaml:1: collector: port 'http' is not a number"},
      {"insecure: maybe\n", "agent.yaml:1: insecure: expected true or false, got 'maybe'"},
      {"\n\nlisten: localhost\n", "agent.yaml:3: listen: 'localhost' is not HOST:PORT"},
      {"metrics_listen: 127.0.0.1:99999\n", "agent.yaml:1: metrics_listen: port '99999'"},
      {"flush_interval: fast\n", "agent.yaml:1: flush_interval: 'fast' is not a duration"},
      {"flush_interval: 0s\n", "agent.yaml:1: flush_interval: must be positive, got 0"},
      {"backoff_max: -1s\n", "agent.yaml:1: backoff_max: must be positive, got -1s"},
      {"drain_timeout: -1s\n", "agent.yaml:1: drain_timeout: must not be negative"},
      {"max_batch: 0\n", "agent.yaml:1: max_batch: must be in 1..10000, got 0"},
      {"max_batch: -5\n", "agent.yaml:1: max_batch: must be in 1..10000, got -5"},
      {"max_batch: 1.5\n", "agent.yaml:1: max_batch: expected a whole number in 1..10000, got '1.5'"},
      {"labels: [a, b]\n", "agent.yaml:1: labels: expected a mapping"},
      {"http_request_timeout: 0s\n",
       "agent.yaml:1: http_request_timeout: must be positive, got 0"},
      {"http_threads: 1\n", "agent.yaml:1: http_threads: must be in 2..1024, got 1"},
      {"http_allowed_hosts: store.local\n", "agent.yaml:1: http_allowed_hosts: expected a list"},
      {"http_allowed_hosts: [http://store.local]\n",
       "'http://store.local' is not a host name (write it without scheme or port"},
      {"drop_directory:\n  max_line_bytes: 10\n",
       "agent.yaml:2: drop_directory.max_line_bytes: must be in 1024..16777216, got 10"},
      {"labels: {Brand: acme}\n", "agent.yaml:1: labels.Brand: label name 'Brand'"},
      {"labels: {brand: [a]}\n", "agent.yaml:1: labels.brand: expected a single value"},
      // Unknown keys are errors, so that a typo is not ignored.
      {"location: a\nlocaton: b\n", "agent.yaml:2: locaton: unknown key (allowed: location,"},
      {"location: a\nlocation: b\n",
       "agent.yaml:2: location: duplicate key (first at line 1)"},
      // YAML syntax errors give the line.
      {"location: a\n  bad: indent\n", "agent.yaml:2: syntax error"},
      {"location: [a\n", "agent.yaml:2: syntax error"},
      {"- location: a\n", "agent.yaml:1: agent config: expected a mapping of settings"},
  };
  for (const auto& c : kCases) {
    absl::StatusOr<AgentConfig> config = ParseAgentConfig(c.yaml, "agent.yaml");
    ASSERT_FALSE(config.ok()) << c.yaml;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << c.yaml;
    EXPECT_THAT(std::string(config.status().message()), HasSubstr(c.error)) << c.yaml;
  }
}

TEST(AgentConfigTest, LoadNamesThePath) {
  const std::string path = ::testing::TempDir() + "/agent_config_test.yaml";
  std::ofstream(path) << "location: a\nflush_interval: soon\n";
  absl::StatusOr<AgentConfig> c = LoadAgentConfig(path);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(path + ":2: flush_interval: 'soon' is not a duration"));

  c = LoadAgentConfig(::testing::TempDir() + "/no-such-agent.yaml");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("no-such-agent.yaml"));
}

TEST(AgentConfigTest, FlagsOverrideTheFile) {
  absl::StatusOr<AgentConfig> c = ParseAgentConfig(kGood, "agent.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  ConfigOverrides o;
  o.location = "store-b";
  o.listen = "127.0.0.1:0";
  o.flush_interval = absl::Milliseconds(5);
  o.backoff_initial = absl::Milliseconds(100);
  ASSERT_TRUE(ApplyOverrides(o, &*c).ok());
  EXPECT_EQ(c->location, "store-b");
  EXPECT_EQ(c->listen, "127.0.0.1:0");
  EXPECT_EQ(c->flush_interval, absl::Milliseconds(5));
  EXPECT_EQ(c->backoff_initial, absl::Milliseconds(100));
  // What no flag names stays as the file said.
  EXPECT_EQ(c->collector, "collector.example:7070");
  EXPECT_EQ(c->metrics_listen, "127.0.0.1:9465");
  EXPECT_EQ(c->max_batch, 500u);
}

TEST(AgentConfigTest, BadFlagsNameTheFlag) {
  static const struct {
    ConfigOverrides overrides;
    const char* error;
  } kCases[] = {
      {[] {
         ConfigOverrides o;
         o.location = "Store A";
         return o;
       }(),
       "--location: must start with a lower-case"},
      {[] {
         ConfigOverrides o;
         o.collector = "collector";
         return o;
       }(),
       "--collector: 'collector' is not HOST:PORT"},
      {[] {
         ConfigOverrides o;
         o.metrics_listen = "127.0.0.1";
         return o;
       }(),
       "--metrics_listen: '127.0.0.1' is not HOST:PORT"},
      {[] {
         ConfigOverrides o;
         o.flush_interval = absl::ZeroDuration();
         return o;
       }(),
       "--flush_interval: must be positive, got 0"},
  };
  for (const auto& c : kCases) {
    AgentConfig config;
    absl::Status s = ApplyOverrides(c.overrides, &config);
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.error));
  }
}

TEST(AgentConfigTest, FlagsAloneSuffice) {
  // What chain_test passes: no file at all.
  AgentConfig config;
  ConfigOverrides o;
  o.location = "store-a";
  o.collector = "127.0.0.1:7070";
  o.insecure = true;
  o.listen = "127.0.0.1:0";
  o.metrics_listen = "127.0.0.1:0";
  ASSERT_TRUE(ApplyOverrides(o, &config).ok());
  EXPECT_TRUE(FinishAgentConfig(config).ok());
}

// Listening beyond loopback must be meant: refused without
// allow_non_loopback_listen, with the line to write.
TEST(AgentConfigTest, NonLoopbackListenNeedsItsOption) {
  absl::StatusOr<AgentConfig> c = ParseAgentConfig(
      "location: a\ncollector: c:1\ninsecure: true\nlisten: 0.0.0.0:8080\n"
      "http_allowed_hosts: [store-12.local]\nhttp_threads: 16\nhttp_request_timeout: 5s\n",
      "agent.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->http_allowed_hosts, std::vector<std::string>{"store-12.local"});
  EXPECT_EQ(c->http_threads, 16);
  EXPECT_EQ(c->http_request_timeout, absl::Seconds(5));
  absl::Status s = FinishAgentConfig(*c);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("listen 0.0.0.0:8080 is not a loopback address"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("allow_non_loopback_listen: true"));
  c->allow_non_loopback_listen = true;
  EXPECT_TRUE(FinishAgentConfig(*c).ok());
  for (const char* loopback : {"127.0.0.1:0", "localhost:8080", "[::1]:8080", "127.0.0.2:1"}) {
    EXPECT_TRUE(IsLoopbackListen(loopback)) << loopback;
  }
  EXPECT_FALSE(IsLoopbackListen("10.0.0.5:8080"));
  EXPECT_FALSE(IsLoopbackListen("[::]:8080"));
}

TEST(AgentConfigTest, TlsBlock) {
  auto c = ParseAgentConfig(
      "tls:\n  ca: /etc/c/ca.pem\n  cert: /etc/c/a.pem\n  key: /etc/c/a.key\n"
      "  server_name: collector.example\n  refresh_interval: 5s\n",
      "agent.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->tls.ca, "/etc/c/ca.pem");
  EXPECT_EQ(c->tls.cert, "/etc/c/a.pem");
  EXPECT_EQ(c->tls.key, "/etc/c/a.key");
  EXPECT_EQ(c->tls.server_name, "collector.example");
  EXPECT_EQ(c->tls.refresh_interval, absl::Seconds(5));
  auto bad = ParseAgentConfig("tls:\n  cafile: x\n", "agent.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("agent.yaml:2: tls.cafile: unknown key (allowed: ca, cert, key,"));
  bad = ParseAgentConfig("tls: yes\n", "agent.yaml");
  EXPECT_FALSE(bad.ok());
  ConfigOverrides o;
  o.tls_ca = "";
  AgentConfig config;
  EXPECT_THAT(std::string(ApplyOverrides(o, &config).message()), HasSubstr("--tls_ca"));
}

TEST(AgentConfigTest, FinishRequiresWhatRunningNeeds) {
  AgentConfig ok;
  ok.location = "store-a";
  ok.collector = "127.0.0.1:7070";
  ok.insecure = true;
  static const struct {
    void (*edit)(AgentConfig*);
    absl::StatusCode code;
    const char* error;
  } kCases[] = {
      {[](AgentConfig* c) { c->location.clear(); }, absl::StatusCode::kInvalidArgument,
       "no location"},
      {[](AgentConfig* c) { c->collector.clear(); }, absl::StatusCode::kInvalidArgument,
       "no collector"},
      {[](AgentConfig* c) { c->backoff_initial = absl::Minutes(5); },
       absl::StatusCode::kInvalidArgument, "backoff_initial (5m) is above backoff_max"},
      // TLS is the default: without it plaintext must be asked for.
      {[](AgentConfig* c) { c->insecure = false; }, absl::StatusCode::kFailedPrecondition,
       "no tls.ca: TLS to the collector is the default"},
      {[](AgentConfig* c) {
         c->insecure = false;
         c->tls.ca = "ca.pem";
         c->tls.cert = "store.pem";
       },
       absl::StatusCode::kFailedPrecondition, "no tls.key"},
      {[](AgentConfig* c) {
         c->insecure = false;
         c->tls = {"ca.pem", "store.pem", "store.key", "", absl::Minutes(1)};
       },
       absl::StatusCode::kOk, ""},
  };
  for (const auto& c : kCases) {
    AgentConfig config = ok;
    c.edit(&config);
    absl::Status s = FinishAgentConfig(config);
    EXPECT_EQ(s.code(), c.code) << c.error;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.error));
  }
  AgentConfig plain = ok;
  plain.insecure = false;
  EXPECT_THAT(std::string(FinishAgentConfig(plain).message()), HasSubstr("--insecure"));
}

}  // namespace
}  // namespace constance::agent
