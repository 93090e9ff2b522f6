// constance-agent: one per location; takes observations from the store's
// systems and delivers them to the collector.
//
//   constance-agent run [--config=FILE] [--location=ID] [--collector=HOST:PORT]
//       (--tls_ca=FILE --tls_cert=FILE --tls_key=FILE | --insecure)
//       [--listen=HOST:PORT] [--metrics_listen=HOST:PORT] [--spool_path=FILE]
//       [--ready_file=PATH] ...
//   constance-agent observe [--agent=http://127.0.0.1:8080] FAMILY KEY VALUE
//       [--currency=EUR] [--kind=shelf] [--critical] [--observed_at=RFC3339] [--id=ID]
//   constance-agent import FILE [--agent=...] [--config=FILE] [--format=csv|jsonl]
//       [--records=price|...] [--encoding=...] [--delimiter=;] [--decimal=,] ...
//
// run: flags override the config file; without --config, flags alone must
// suffice. SIGTERM/SIGINT stop local ingest, drain to the collector for at
// most --drain_timeout and exit 0. SIGHUP reloads the config file: inputs
// (drop directory and its mappings) and tunables take effect, fields that
// cannot change at runtime are logged as needing a restart, and a bad file
// is refused with its error while the old configuration stays.
//
// import: the file is read with the mapping of --config's drop_directory
// whose pattern matches its name (or a mapping from flags alone), and sent
// to the running agent (--observed_at: the time of rows without their
// own); exit 0 only when every record is durable in its spool, errors
// printed as FILE:LINE: reason.
//
// Exit codes: 0 success; 1 failure (could not start, or observe/import: the
// agent refused something or could not be reached); 2 usage or
// configuration error.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/agent.h"
#include "agent/config.h"
#include "agent/import.h"
#include "agent/input_config.h"
#include "agent/input_values.h"
#include "agent/observe.h"
#include "constance/version.h"
#include "constance/log.h"
#include "google/protobuf/util/json_util.h"

// run
ABSL_FLAG(std::string, config, "", "run: YAML config file (optional; flags override it)");
ABSL_FLAG(std::optional<std::string>, location, std::nullopt,
          "run: this location's id, e.g. fr-paris-0042");
ABSL_FLAG(std::optional<std::string>, collector, std::nullopt,
          "run: the collector's gRPC address, HOST:PORT");
ABSL_FLAG(bool, insecure, false,
          "run: plaintext to the collector (demo, tests); the default is mTLS with --tls_*");
ABSL_FLAG(std::optional<std::string>, tls_ca, std::nullopt,
          "run: CA bundle the collector's certificate chains to (config: tls.ca)");
ABSL_FLAG(std::optional<std::string>, tls_cert, std::nullopt,
          "run: this location's certificate (config: tls.cert)");
ABSL_FLAG(std::optional<std::string>, tls_key, std::nullopt,
          "run: this location's private key (config: tls.key)");
ABSL_FLAG(std::optional<std::string>, tls_server_name, std::nullopt,
          "run: name expected in the collector's certificate if not the host dialled");
ABSL_FLAG(std::optional<absl::Duration>, tls_refresh_interval, std::nullopt,
          "run: how often certificate files are checked for changes (default 1m)");
ABSL_FLAG(std::optional<std::string>, listen, std::nullopt,
          "run: local HTTP ingest address, HOST:PORT (default 127.0.0.1:8080; port 0 = any)");
ABSL_FLAG(std::optional<std::string>, metrics_listen, std::nullopt,
          "run: /metrics address, HOST:PORT (default 127.0.0.1:9465; port 0 = any)");
ABSL_FLAG(std::optional<absl::Duration>, flush_interval, std::nullopt,
          "run: how long to gather a batch (default 100ms)");
ABSL_FLAG(std::optional<absl::Duration>, backoff_initial, std::nullopt,
          "run: first reconnect delay (default 1s; x1.6 per failure, +-20% jitter)");
ABSL_FLAG(std::optional<absl::Duration>, backoff_max, std::nullopt,
          "run: longest reconnect delay (default 120s)");
ABSL_FLAG(std::optional<absl::Duration>, heartbeat_interval, std::nullopt,
          "run: heartbeat period (default 30s)");
ABSL_FLAG(std::optional<absl::Duration>, drain_timeout, std::nullopt,
          "run: on SIGTERM/SIGINT, how long to keep delivering before exiting (default 5s)");
ABSL_FLAG(std::optional<std::string>, spool_path, std::nullopt,
          "run: durable spool file (SQLite), e.g. /var/lib/constance-agent/spool.db "
          "(default: in memory, lost on exit)");
ABSL_FLAG(std::string, ready_file, "",
          "run: once serving, write http=HOST:PORT and metrics=HOST:PORT lines here "
          "(atomically)");
ABSL_FLAG(std::string, log_level, "info", "run: trace, debug, info, warn or error");
// observe
ABSL_FLAG(std::string, agent, "http://127.0.0.1:8080", "observe: the agent's local ingest URL");
ABSL_FLAG(std::string, currency, "",
          "observe: ISO 4217 currency of a price, e.g. EUR (required for price); VALUE is in its "
          "decimals: 4.49 EUR, 450 JPY, 1.250 KWD");
ABSL_FLAG(std::string, kind, "", "observe: price kind: shelf (default), pos, list, promo");
ABSL_FLAG(bool, critical, false, "observe: a compliance check whose failure fails the location");
ABSL_FLAG(std::string, observed_at, "",
          "observe: event time, RFC 3339 (default: when the agent receives it); import: the "
          "time of rows without an observed_at column (default: the file name's, else now)");
ABSL_FLAG(std::string, id, "", "observe: optional idempotency key");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(10),
          "observe, import: how long to wait for the agent");
// import (each overrides the mapping found in --config)
ABSL_FLAG(std::string, format, "", "import: csv or jsonl");
ABSL_FLAG(std::string, records, "",
          "import: what a record is: price, price_check, wait, compliance, score, ticket, "
          "observation, checklist");
ABSL_FLAG(std::string, encoding, "", "import: utf-8, windows-1250 or latin-1");
ABSL_FLAG(std::string, delimiter, "", "import: CSV field delimiter (one character, or tab)");
ABSL_FLAG(std::string, decimal, "", "import: decimal separator, . or ,");
ABSL_FLAG(std::string, thousands, "", "import: thousands separator: none, space, '.', ',', \"'\"");
ABSL_FLAG(std::optional<bool>, header, std::nullopt, "import: the CSV has a header row");
ABSL_FLAG(std::string, key_column, "", "import: the column of the key (item, service, check)");
ABSL_FLAG(std::string, value_column, "", "import: the column of the value");
ABSL_FLAG(std::string, shelf_column, "", "import: price_check: the shelf price's column");
ABSL_FLAG(std::string, pos_column, "", "import: price_check: the till's price column");
ABSL_FLAG(std::string, list_column, "", "import: price_check: the list price's column");
ABSL_FLAG(std::string, currency_column, "", "import: the column of each price's currency");
ABSL_FLAG(std::string, observed_at_column, "",
          "import: the column of each record's time (see --time_format)");
ABSL_FLAG(std::string, time_format, "",
          "import: how --observed_at_column is written: empty RFC 3339, unix, or an "
          "absl::ParseTime format read as UTC");
ABSL_FLAG(std::string, critical_column, "",
          "import: compliance: the column saying whether a check is critical");
ABSL_FLAG(std::string, id_column, "", "import: the column of each record's idempotency id");
ABSL_FLAG(std::string, location_column, "",
          "import: the column naming each row's location (rows of others are skipped)");
ABSL_FLAG(std::string, ticket_column, "", "import: ticket: the ticket number's column");
ABSL_FLAG(std::string, event_column, "", "import: ticket: the event's column");
ABSL_FLAG(std::string, key_prefix, "", "import: a prefix put before every key");
ABSL_FLAG(std::string, max_lateness, "",
          "import: how old a record may be, e.g. 400d (default: the mapping's, else 7 days); the "
          "agent accepts up to the largest max_lateness of its own drop_directory.files");

namespace constance::agent {
namespace {

constexpr char kUsage[] =
    "constance-agent run [--config=FILE] [--location=ID] [--collector=HOST:PORT]\n"
    "      (--tls_ca=FILE --tls_cert=FILE --tls_key=FILE [--tls_server_name=NAME] | --insecure)\n"
    "      [--listen=HOST:PORT] [--metrics_listen=HOST:PORT] [--ready_file=PATH]\n"
    "      [--flush_interval=100ms] [--backoff_initial=1s] [--backoff_max=120s]\n"
    "      [--heartbeat_interval=30s] [--drain_timeout=5s] [--spool_path=FILE]\n"
    "      [--log_level=info]\n"
    "  constance-agent observe [--agent=http://127.0.0.1:8080] FAMILY KEY VALUE\n"
    "      [--currency=EUR] [--kind=shelf] [--critical] [--observed_at=RFC3339] [--id=ID]\n"
    "      FAMILY is price|wait|compliance|score; a price VALUE has its currency's\n"
    "      decimals (4.49 EUR, 450 JPY, 1.250 KWD), a wait VALUE is seconds, a compliance\n"
    "      VALUE is pass|fail.\n"
    "  constance-agent import FILE [--agent=http://127.0.0.1:8080] [--config=FILE]\n"
    "      [--location=ID] [--format=csv|jsonl] [--records=price|price_check|wait|compliance|\n"
    "      score|ticket|observation|checklist] [--encoding=utf-8|windows-1250|latin-1]\n"
    "      [--delimiter=,] [--decimal=.] [--thousands=none] [--header=true]\n"
    "      [--key_column=NAME] [--value_column=NAME] [--currency=EUR] [--kind=shelf]\n"
    "      [--observed_at_column=NAME [--time_format=FMT]] [--critical_column=NAME]\n"
    "      [--max_lateness=400d] [--observed_at=RFC3339]\n"
    "      (and every other column of a drop_directory.files mapping: --shelf_column,\n"
    "      --pos_column, --list_column, --currency_column, --id_column, --location_column,\n"
    "      --ticket_column, --event_column, --key_prefix)";

int UsageError(absl::string_view why) {
  std::cerr << "constance-agent: " << why << "\nusage: " << kUsage << "\n";
  return 2;
}

// absl::ParseCommandLine exits with status 1 on an unknown flag or a bad
// value; this checks both first so that usage errors exit 2 as documented.
bool CheckFlags(int argc, char** argv, std::string* error) {
  // absl's own flags (help and friends) are left to absl.
  static const char* const kBuiltin[] = {"help",     "helpfull", "helpshort",  "helppackage",
                                         "version",  "helpon",   "helpmatch",  "only_check_args",
                                         "flagfile", "fromenv",  "tryfromenv", "undefok"};
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg.size() < 2 || arg[0] != '-') continue;
    arg.remove_prefix(arg[1] == '-' ? 2 : 1);
    const size_t eq = arg.find('=');
    const absl::string_view name = arg.substr(0, eq);
    bool builtin = false;
    for (const char* b : kBuiltin) builtin = builtin || name == b;
    if (builtin) continue;
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && absl::StartsWith(name, "no")) {
      absl::CommandLineFlag* negated = absl::FindCommandLineFlag(name.substr(2));
      if (negated != nullptr && negated->IsOfType<bool>() && eq == absl::string_view::npos) {
        continue;
      }
    }
    if (flag == nullptr) {
      *error = absl::StrCat("unknown flag --", name);
      return false;
    }
    std::string value;
    if (eq != absl::string_view::npos) {
      value = std::string(arg.substr(eq + 1));
    } else if (flag->IsOfType<bool>()) {
      continue;
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      *error = absl::StrCat("flag --", name, " needs a value");
      return false;
    }
    // Parsing sets the flag; ParseCommandLine sets the same value again.
    std::string why;
    if (!flag->ParseFrom(value, &why)) {
      *error = absl::StrCat("--", name, "=", value, ": ", why);
      return false;
    }
  }
  return true;
}

ConfigOverrides OverridesFromFlags() {
  ConfigOverrides o;
  o.location = absl::GetFlag(FLAGS_location);
  o.collector = absl::GetFlag(FLAGS_collector);
  o.listen = absl::GetFlag(FLAGS_listen);
  o.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  o.insecure = absl::GetFlag(FLAGS_insecure);
  o.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  o.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  o.tls_key = absl::GetFlag(FLAGS_tls_key);
  o.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  o.tls_refresh_interval = absl::GetFlag(FLAGS_tls_refresh_interval);
  o.flush_interval = absl::GetFlag(FLAGS_flush_interval);
  o.backoff_initial = absl::GetFlag(FLAGS_backoff_initial);
  o.backoff_max = absl::GetFlag(FLAGS_backoff_max);
  o.heartbeat_interval = absl::GetFlag(FLAGS_heartbeat_interval);
  o.drain_timeout = absl::GetFlag(FLAGS_drain_timeout);
  o.spool_path = absl::GetFlag(FLAGS_spool_path);
  return o;
}

// SIGHUP: the config file read again, the command-line flags applied on
// top as at start, then handed to the agent. A bad file changes nothing.
void Reload(const std::string& config_path, Agent& agent) {
  if (config_path.empty()) {
    spdlog::warn("SIGHUP: no --config file to reload; nothing changed");
    return;
  }
  absl::StatusOr<AgentConfig> loaded = LoadAgentConfig(config_path);
  absl::Status s = loaded.status();
  if (s.ok()) s = ApplyOverrides(OverridesFromFlags(), &*loaded);
  if (s.ok()) s = FinishAgentConfig(*loaded);
  if (!s.ok()) {
    spdlog::error("SIGHUP: config not reloaded, the old one stays: {}", std::string(s.message()));
    return;
  }
  absl::StatusOr<std::vector<std::string>> restart = agent.Reload(*loaded);
  if (!restart.ok()) {
    spdlog::error("SIGHUP: config not reloaded, the old one stays: {}",
                  std::string(restart.status().message()));
  }
}

int Run(const sigset_t& signals) {
  InitLogging("constance-agent", absl::GetFlag(FLAGS_log_level));
  AgentConfig config;
  const std::string config_path = absl::GetFlag(FLAGS_config);
  if (!config_path.empty()) {
    absl::StatusOr<AgentConfig> loaded = LoadAgentConfig(config_path);
    if (!loaded.ok()) {
      spdlog::error("{}", std::string(loaded.status().message()));
      return 2;
    }
    config = *std::move(loaded);
  }
  absl::Status s = ApplyOverrides(OverridesFromFlags(), &config);
  if (s.ok()) s = FinishAgentConfig(config);
  if (!s.ok()) {
    spdlog::error("{}", std::string(s.message()));
    return 2;
  }

  absl::StatusOr<std::unique_ptr<Agent>> agent = Agent::Start(config);
  if (!agent.ok()) {
    spdlog::error("cannot start: {}", std::string(agent.status().message()));
    return 1;
  }
  const std::string ready_file = absl::GetFlag(FLAGS_ready_file);
  if (!ready_file.empty()) {
    s = WriteReadyFile(
        ready_file, {{"http", (*agent)->http_address()}, {"metrics", (*agent)->metrics_address()}});
    if (!s.ok()) {
      spdlog::error("{}", std::string(s.message()));
      return 1;
    }
  }

  // The one place signals are taken: every thread has them blocked.
  int sig = 0;
  for (;;) {
    if (sigwait(&signals, &sig) != 0) continue;
    if (sig != SIGHUP) break;
    Reload(config_path, **agent);
  }
  spdlog::info("{}: shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  (*agent)->Shutdown();
  agent->reset();
  if (!ready_file.empty()) std::remove(ready_file.c_str());
  spdlog::info("stopped");
  return 0;
}

int Observe(const std::vector<char*>& args) {
  // args: program, "observe", FAMILY, KEY, VALUE.
  if (args.size() != 5) return UsageError("observe needs FAMILY KEY VALUE");
  ObserveRequest request;
  request.family = args[2];
  request.key = args[3];
  request.value = args[4];
  request.currency = absl::GetFlag(FLAGS_currency);
  request.kind = absl::GetFlag(FLAGS_kind);
  request.critical = absl::GetFlag(FLAGS_critical);
  request.observed_at = absl::GetFlag(FLAGS_observed_at);
  request.id = absl::GetFlag(FLAGS_id);
  absl::StatusOr<v1::Observation> obs = BuildObservation(request);
  if (!obs.ok()) return UsageError(obs.status().message());
  absl::StatusOr<HostPort> agent = ParseAgentUrl(absl::GetFlag(FLAGS_agent));
  if (!agent.ok()) return UsageError(agent.status().message());

  std::string body;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(*obs, &body, options);
  absl::StatusOr<HttpResponse> response =
      PostJson(*agent, "/v1/observations", body, absl::GetFlag(FLAGS_timeout));
  if (!response.ok()) {
    std::cerr << "constance-agent observe: " << response.status().message() << "\n";
    return 1;
  }
  if (response->status != 200) {
    std::cerr << "constance-agent observe: the agent refused the observation: "
              << DescribeRefusal(*response) << "\n";
    return 1;
  }
  return 0;
}

int Import(const std::vector<char*>& args) {
  // args: program, "import", FILE.
  if (args.size() != 3) return UsageError("import needs one FILE");
  const std::string file = args[2];
  InitLogging("constance-agent", "warn");
  ImportOptions options;
  options.file = file;
  const std::string config_path = absl::GetFlag(FLAGS_config);
  if (!config_path.empty()) {
    absl::StatusOr<AgentConfig> config = LoadAgentConfig(config_path);
    if (!config.ok()) return UsageError(config.status().message());
    absl::StatusOr<InputMapping> mapping = MappingForFile(config->drop_directory, file);
    if (mapping.ok()) {
      options.mapping = *mapping;
    } else if (absl::GetFlag(FLAGS_records).empty()) {
      return UsageError(
          absl::StrCat(mapping.status().message(), "; or give --records and the columns"));
    }
    options.location = config->location;
  }
  if (std::optional<std::string> location = absl::GetFlag(FLAGS_location)) {
    options.location = *location;
  }
  InputMapping& m = options.mapping;
  absl::Status s;
  // Each flag is set by the rule of the drop_directory.files key of its name.
  const struct {
    const char* name;
    const absl::Flag<std::string>& flag;
  } kMappingFlags[] = {
      {"format", FLAGS_format},
      {"records", FLAGS_records},
      {"encoding", FLAGS_encoding},
      {"delimiter", FLAGS_delimiter},
      {"decimal", FLAGS_decimal},
      {"thousands", FLAGS_thousands},
      {"key_column", FLAGS_key_column},
      {"value_column", FLAGS_value_column},
      {"shelf_column", FLAGS_shelf_column},
      {"pos_column", FLAGS_pos_column},
      {"list_column", FLAGS_list_column},
      {"currency_column", FLAGS_currency_column},
      {"observed_at_column", FLAGS_observed_at_column},
      {"time_format", FLAGS_time_format},
      {"critical_column", FLAGS_critical_column},
      {"id_column", FLAGS_id_column},
      {"location_column", FLAGS_location_column},
      {"ticket_column", FLAGS_ticket_column},
      {"event_column", FLAGS_event_column},
      {"key_prefix", FLAGS_key_prefix},
      {"currency", FLAGS_currency},
      {"kind", FLAGS_kind},
      {"max_lateness", FLAGS_max_lateness},
  };
  for (const auto& f : kMappingFlags) {
    const std::string v = absl::GetFlag(f.flag);
    if (!v.empty() && s.ok()) s = SetMappingFlag(f.name, v, &m);
  }
  if (std::optional<bool> header = absl::GetFlag(FLAGS_header)) m.header = *header;
  if (s.ok()) s = ValidateInputMapping(m);
  if (!s.ok()) return UsageError(absl::StrCat("import: ", s.message()));
  if (const std::string v = absl::GetFlag(FLAGS_observed_at); !v.empty()) {
    absl::StatusOr<absl::Time> at = ParseInputTime(v, "");
    if (!at.ok()) {
      return UsageError(absl::StrCat("import: --observed_at: ", at.status().message(),
                                     " (write e.g. 2026-01-22T07:15:00+01:00)"));
    }
    options.observed_at = *at;
  }
  absl::StatusOr<HostPort> agent = ParseAgentUrl(absl::GetFlag(FLAGS_agent));
  if (!agent.ok()) return UsageError(agent.status().message());
  options.agent = *agent;
  options.timeout = absl::GetFlag(FLAGS_timeout);

  absl::StatusOr<ImportReport> report = ImportFile(options);
  if (!report.ok()) {
    std::cerr << "constance-agent import: " << report.status().message() << "\n";
    return 1;
  }
  for (const std::string& e : report->errors) std::cerr << e << "\n";
  if (!report->file_location.empty() && !options.location.empty() &&
      report->file_location != options.location) {
    std::cerr << "constance-agent import: " << file << " is for location "
              << report->file_location << " (from its name), not " << options.location
              << ": its records are skipped\n";
  }
  std::cerr << "constance-agent import: " << file << ": " << report->records << " records; "
            << report->observations << " observations and " << report->ticket_events
            << " queue events stored; " << report->errors.size() << " refused";
  if (report->other_location > 0) {
    std::cerr << "; " << report->other_location << " for other locations skipped";
  }
  std::cerr << "\n";
  return report->errors.empty() ? 0 : 1;
}

}  // namespace
}  // namespace constance::agent

int main(int argc, char** argv) {
  constance::SetVersionFlag("constance-agent");
  absl::SetProgramUsageMessage(constance::agent::kUsage);
  std::string error;
  if (!constance::agent::CheckFlags(argc, argv, &error)) {
    return constance::agent::UsageError(error);
  }
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  const std::string command = args.size() > 1 ? args[1] : "";
  if (command == "run") {
    if (args.size() != 2) return constance::agent::UsageError("run takes no positional arguments");
    // Blocked before any thread starts, so every thread inherits the mask
    // and the signals reach only the sigwait in Run.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    // A writer that hangs up must not kill the agent.
    signal(SIGPIPE, SIG_IGN);
    return constance::agent::Run(signals);
  }
  if (command == "observe") return constance::agent::Observe(args);
  if (command == "import") return constance::agent::Import(args);
  return constance::agent::UsageError(
      command.empty() ? "missing command" : absl::StrCat("unknown command '", command, "'"));
}
