#include "agent/config.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "agent/input_config.h"
#include "constance/validate.h"
#include "yaml-cpp/yaml.h"

namespace constance::agent {
namespace {

// Field checks return the bare reason; callers prefix where the value came
// from (file:line: field 'x' or --x), so file and flags share one rule.

absl::Status CheckLocation(const std::string& value) {
  absl::Status s = ValidateLocationId(value);
  if (s.ok()) return s;
  // ValidateLocationId names the field itself; the caller names it again.
  return absl::InvalidArgumentError(absl::StripPrefix(s.message(), "location: "));
}

absl::Status CheckPort(absl::string_view port_text) {
  int port = 0;
  if (port_text.empty() || !absl::SimpleAtoi(port_text, &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("port '", port_text, "' is not a number in 0..65535"));
  }
  return absl::OkStatus();
}

absl::Status CheckCollector(const std::string& value) {
  if (value.empty()) return absl::InvalidArgumentError("must not be empty (HOST:PORT)");
  // gRPC target URIs (dns:///..., unix:...) are passed through as they are.
  if (absl::StrContains(value, ":/") || absl::StartsWith(value, "unix:")) {
    return absl::OkStatus();
  }
  size_t colon = value.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("'", value, "' is not HOST:PORT"));
  }
  absl::string_view port = absl::string_view(value).substr(colon + 1);
  if (port == "0") return absl::InvalidArgumentError("port 0 is not a collector address");
  return CheckPort(port);
}

absl::Status CheckPositive(absl::Duration d) {
  if (d <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("must be a positive duration, got ", absl::FormatDuration(d)));
  }
  return absl::OkStatus();
}

absl::Status CheckNotNegative(absl::Duration d) {
  if (d < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("must not be negative, got ", absl::FormatDuration(d)));
  }
  return absl::OkStatus();
}

// Reading one YAML value. yaml-cpp throws on conversions; these helpers
// turn every throw into a Status with the reason only.

absl::StatusOr<std::string> ReadScalar(const YAML::Node& node) {
  if (node.IsNull()) return absl::InvalidArgumentError("has no value");
  if (!node.IsScalar())
    return absl::InvalidArgumentError("must be a single value, not a list or map");
  return node.Scalar();
}

absl::StatusOr<bool> ReadBool(const YAML::Node& node) {
  absl::StatusOr<std::string> text = ReadScalar(node);
  if (!text.ok()) return text.status();
  bool value = false;
  if (!YAML::convert<bool>::decode(node, value)) {
    return absl::InvalidArgumentError(absl::StrCat("'", *text, "' is not true or false"));
  }
  return value;
}

absl::StatusOr<absl::Duration> ReadDuration(const YAML::Node& node) {
  absl::StatusOr<std::string> text = ReadScalar(node);
  if (!text.ok()) return text.status();
  absl::Duration d;
  if (!absl::ParseDuration(*text, &d)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", *text, "' is not a duration (e.g. 50ms, 1.5s, 2m)"));
  }
  return d;
}

absl::StatusOr<uint64_t> ReadCount(const YAML::Node& node, uint64_t min, uint64_t max) {
  absl::StatusOr<std::string> text = ReadScalar(node);
  if (!text.ok()) return text.status();
  uint64_t value = 0;
  if (!absl::SimpleAtoi(*text, &value) || absl::StartsWith(*text, "-") || value < min ||
      value > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", *text, "' is not a whole number in ", min, "..", max));
  }
  return value;
}

// One settable key of the file. `set` reads `node` into `config` and
// returns the reason on failure.
struct Field {
  const char* name;
  absl::Status (*set)(const YAML::Node& node, AgentConfig* config);
};

template <typename T>
absl::Status Assign(absl::StatusOr<T> value, T* out, absl::Status (*check)(T) = nullptr) {
  if (!value.ok()) return value.status();
  if (check != nullptr) {
    if (absl::Status s = check(*value); !s.ok()) return s;
  }
  *out = *std::move(value);
  return absl::OkStatus();
}

absl::Status AssignString(const YAML::Node& node, std::string* out,
                          absl::Status (*check)(const std::string&)) {
  absl::StatusOr<std::string> value = ReadScalar(node);
  if (!value.ok()) return value.status();
  if (absl::Status s = check(*value); !s.ok()) return s;
  *out = *std::move(value);
  return absl::OkStatus();
}

absl::Status CheckListen(const std::string& value) { return ValidateListenAddress(value); }

absl::Status CheckSpoolPath(const std::string& value) {
  // SQLite would read these as a URI or a private temporary database.
  if (value == ":memory:" || absl::StartsWith(value, "file:")) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", value, "' is not a file path (leave it empty for an in-memory spool)"));
  }
  return absl::OkStatus();
}

absl::Status SetLabels(const YAML::Node& node, AgentConfig* config) {
  if (node.IsNull()) {
    config->labels.clear();
    return absl::OkStatus();
  }
  if (!node.IsMap()) return absl::InvalidArgumentError("must be a map of name: value");
  std::map<std::string, std::string> labels;
  for (const auto& kv : node) {
    if (!kv.first.IsScalar() || !kv.second.IsScalar()) {
      return absl::InvalidArgumentError("every label must be name: value");
    }
    const std::string& name = kv.first.Scalar();
    const std::string& value = kv.second.Scalar();
    if (absl::Status s = ValidateLabel(name, value); !s.ok()) return s;
    if (!labels.emplace(name, value).second) {
      return absl::InvalidArgumentError(absl::StrCat("label '", name, "' given twice"));
    }
  }
  if (absl::Status s = ValidateLabels(labels); !s.ok()) return s;
  config->labels = std::move(labels);
  return absl::OkStatus();
}

absl::Status CheckPath(const std::string& value) {
  if (value.empty()) return absl::InvalidArgumentError("must not be empty (a file path)");
  return absl::OkStatus();
}

// The `tls:` block: ca, cert, key, server_name, refresh_interval.
absl::Status SetTls(const YAML::Node& node, AgentConfig* config) {
  if (!node.IsMap()) {
    return absl::InvalidArgumentError(
        "must be a map with ca, cert, key (and optionally server_name, refresh_interval)");
  }
  AgentConfig::Tls tls;
  for (const auto& kv : node) {
    const std::string key = kv.first.IsScalar() ? kv.first.Scalar() : "";
    absl::Status s;
    if (key == "ca") {
      s = AssignString(kv.second, &tls.ca, CheckPath);
    } else if (key == "cert") {
      s = AssignString(kv.second, &tls.cert, CheckPath);
    } else if (key == "key") {
      s = AssignString(kv.second, &tls.key, CheckPath);
    } else if (key == "server_name") {
      s = AssignString(kv.second, &tls.server_name, CheckPath);
    } else if (key == "refresh_interval") {
      s = Assign(ReadDuration(kv.second), &tls.refresh_interval, CheckPositive);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown key '", key, "' (known: ca, cert, key, server_name, refresh_interval)"));
    }
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(key, ": ", s.message()));
  }
  config->tls = std::move(tls);
  return absl::OkStatus();
}

// `http_allowed_hosts:`, a list of host names (no port, no scheme).
absl::Status SetAllowedHosts(const YAML::Node& node, AgentConfig* config) {
  if (!node.IsSequence()) {
    return absl::InvalidArgumentError("must be a list of host names, e.g. [store-12.local]");
  }
  std::vector<std::string> hosts;
  for (const YAML::Node& item : node) {
    const std::string name = item.IsScalar() ? item.Scalar() : "";
    if (name.empty() || name.find_first_of(":/ ") != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", name, "' is not a host name (write it without scheme or port: store-12.local)"));
    }
    hosts.push_back(absl::AsciiStrToLower(name));
  }
  config->http_allowed_hosts = std::move(hosts);
  return absl::OkStatus();
}

template <size_t AgentConfig::*member, uint64_t kMin, uint64_t kMax>
absl::Status SetSize(const YAML::Node& node, AgentConfig* config) {
  absl::StatusOr<uint64_t> value = ReadCount(node, kMin, kMax);
  if (!value.ok()) return value.status();
  config->*member = static_cast<size_t>(*value);
  return absl::OkStatus();
}

const Field kFields[] = {
    {"location", [](const YAML::Node& n,
                    AgentConfig* c) { return AssignString(n, &c->location, CheckLocation); }},
    {"labels", SetLabels},
    {"collector", [](const YAML::Node& n,
                     AgentConfig* c) { return AssignString(n, &c->collector, CheckCollector); }},
    {"insecure",
     [](const YAML::Node& n, AgentConfig* c) { return Assign(ReadBool(n), &c->insecure); }},
    {"listen",
     [](const YAML::Node& n, AgentConfig* c) { return AssignString(n, &c->listen, CheckListen); }},
    {"metrics_listen",
     [](const YAML::Node& n, AgentConfig* c) {
       return AssignString(n, &c->metrics_listen, CheckListen);
     }},
    {"flush_interval",
     [](const YAML::Node& n, AgentConfig* c) {
       return Assign(ReadDuration(n), &c->flush_interval, CheckPositive);
     }},
    {"max_batch", SetSize<&AgentConfig::max_batch, 1, 10'000>},
    {"max_in_flight_batches", SetSize<&AgentConfig::max_in_flight_batches, 1, 1'000>},
    {"backoff_initial",
     [](const YAML::Node& n, AgentConfig* c) {
       return Assign(ReadDuration(n), &c->backoff_initial, CheckPositive);
     }},
    {"backoff_max",
     [](const YAML::Node& n, AgentConfig* c) {
       return Assign(ReadDuration(n), &c->backoff_max, CheckPositive);
     }},
    {"heartbeat_interval",
     [](const YAML::Node& n, AgentConfig* c) {
       return Assign(ReadDuration(n), &c->heartbeat_interval, CheckPositive);
     }},
    {"drain_timeout",
     [](const YAML::Node& n, AgentConfig* c) {
       return Assign(ReadDuration(n), &c->drain_timeout, CheckNotNegative);
     }},
    {"spool_max_observations",
     [](const YAML::Node& n, AgentConfig* c) {
       return Assign(ReadCount(n, 1, uint64_t{1} << 40), &c->spool_max_observations);
     }},
    {"spool_max_bytes",
     [](const YAML::Node& n, AgentConfig* c) {
       return Assign(ReadCount(n, 1024, uint64_t{1} << 50), &c->spool_max_bytes);
     }},
    {"spool_when_full",
     [](const YAML::Node& n, AgentConfig* c) {
       absl::StatusOr<std::string> text = ReadScalar(n);
       if (!text.ok()) return text.status();
       return Assign(ParseSpoolWhenFull(*text), &c->spool_when_full);
     }},
    {"spool_path", [](const YAML::Node& n,
                      AgentConfig* c) { return AssignString(n, &c->spool_path, CheckSpoolPath); }},
    {"idempotency_window",
     [](const YAML::Node& n, AgentConfig* c) {
       return Assign(ReadDuration(n), &c->idempotency_window, CheckPositive);
     }},
    {"max_body_bytes", SetSize<&AgentConfig::max_body_bytes, 1024, size_t{1} << 30>},
    {"http_request_timeout",
     [](const YAML::Node& n, AgentConfig* c) {
       return Assign(ReadDuration(n), &c->http_request_timeout, CheckPositive);
     }},
    {"http_threads",
     [](const YAML::Node& n, AgentConfig* c) {
       absl::StatusOr<uint64_t> v = ReadCount(n, 2, 1024);
       if (v.ok()) c->http_threads = static_cast<int>(*v);
       return v.status();
     }},
    {"http_allowed_hosts", SetAllowedHosts},
    {"allow_non_loopback_listen",
     [](const YAML::Node& n, AgentConfig* c) {
       return Assign(ReadBool(n), &c->allow_non_loopback_listen);
     }},
    // Inputs (input_config.cc reads the section and names its own lines).
    {"drop_directory",
     [](const YAML::Node& n, AgentConfig* c) {
       return ParseDropDirectorySection(n, &c->drop_directory);
     }},
    {"open_ticket_ttl",
     [](const YAML::Node& n, AgentConfig* c) {
       return Assign(ReadDuration(n), &c->open_ticket_ttl, CheckPositive);
     }},
    {"max_open_tickets", SetSize<&AgentConfig::max_open_tickets, 1, 10'000'000>},
    {"tls", SetTls},
};

std::string KnownKeys() {
  std::string out;
  for (const Field& f : kFields) absl::StrAppend(&out, out.empty() ? "" : ", ", f.name);
  return out;
}

absl::Status AtLine(absl::string_view filename, const YAML::Mark& mark, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(filename, ":", mark.line + 1, ": ", what));
}

absl::Status ParseInto(const YAML::Node& root, absl::string_view filename, AgentConfig* config) {
  // An empty file is a valid config with every default.
  if (root.IsNull()) return absl::OkStatus();
  if (!root.IsMap()) {
    return AtLine(filename, root.Mark(), "expected a map of settings (key: value)");
  }
  std::map<std::string, int> seen;  // key -> line, to report duplicates.
  for (const auto& kv : root) {
    const YAML::Mark mark = kv.first.Mark();
    if (!kv.first.IsScalar()) return AtLine(filename, mark, "expected a key name");
    const std::string& key = kv.first.Scalar();
    const Field* field = nullptr;
    for (const Field& f : kFields) {
      if (key == f.name) field = &f;
    }
    if (field == nullptr) {
      return AtLine(filename, mark,
                    absl::StrCat("unknown field '", key, "' (known: ", KnownKeys(), ")"));
    }
    auto [it, inserted] = seen.emplace(key, mark.line + 1);
    if (!inserted) {
      return AtLine(filename, mark,
                    absl::StrCat("field '", key, "' given twice (first on line ", it->second, ")"));
    }
    absl::Status s = field->set(kv.second, config);
    if (!s.ok()) {
      // A missing value has no position of its own; the key's line is the
      // one a reader looks for.
      const YAML::Mark value_mark = kv.second.IsNull() ? mark : kv.second.Mark();
      return AtLine(filename, value_mark, absl::StrCat("field '", key, "': ", s.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status FlagError(absl::string_view flag, const absl::Status& reason) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", reason.message()));
}

}  // namespace

bool IsLoopbackListen(absl::string_view address) {
  const absl::string_view host = address.substr(0, address.rfind(':'));
  return absl::EqualsIgnoreCase(host, "localhost") || host == "[::1]" ||
         absl::StartsWith(host, "127.");
}

absl::Status ValidateListenAddress(absl::string_view address) {
  size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", address, "' is not HOST:PORT (e.g. 127.0.0.1:8080)"));
  }
  return CheckPort(address.substr(colon + 1));
}

absl::Duration ExpectedCadence(const AgentConfig& config) {
  absl::Duration longest = absl::ZeroDuration();
  for (const InputMapping& m : config.drop_directory.files) longest = std::max(longest, m.cadence);
  return longest;
}

absl::StatusOr<AgentConfig> ParseAgentConfig(absl::string_view yaml, absl::string_view filename) {
  AgentConfig config;
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::ParserException& e) {
    return AtLine(filename, e.mark, absl::StrCat("YAML syntax error: ", e.msg));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(filename, ": ", e.what()));
  }
  absl::Status s;
  try {
    s = ParseInto(root, filename, &config);
  } catch (const YAML::Exception& e) {
    // Conversions are checked before they can throw; this is a backstop so
    // that nothing yaml-cpp throws crosses our API.
    s = AtLine(filename, e.mark, e.msg);
  }
  if (!s.ok()) return s;
  return config;
}

absl::StatusOr<AgentConfig> LoadAgentConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    int err = errno;
    std::string why = absl::StrCat("cannot read config file ", path, ": ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(why) : absl::FailedPreconditionError(why);
  }
  std::stringstream text;
  text << in.rdbuf();
  return ParseAgentConfig(text.str(), path);
}

absl::Status ApplyOverrides(const ConfigOverrides& o, AgentConfig* config) {
  if (o.location) {
    if (absl::Status s = CheckLocation(*o.location); !s.ok()) return FlagError("location", s);
    config->location = *o.location;
  }
  if (o.collector) {
    if (absl::Status s = CheckCollector(*o.collector); !s.ok()) return FlagError("collector", s);
    config->collector = *o.collector;
  }
  if (o.listen) {
    if (absl::Status s = ValidateListenAddress(*o.listen); !s.ok()) return FlagError("listen", s);
    config->listen = *o.listen;
  }
  if (o.metrics_listen) {
    if (absl::Status s = ValidateListenAddress(*o.metrics_listen); !s.ok()) {
      return FlagError("metrics_listen", s);
    }
    config->metrics_listen = *o.metrics_listen;
  }
  if (o.insecure) config->insecure = true;
  const struct {
    const char* flag;
    const std::optional<std::string>& value;
    std::string* out;
  } tls_paths[] = {
      {"tls_ca", o.tls_ca, &config->tls.ca},
      {"tls_cert", o.tls_cert, &config->tls.cert},
      {"tls_key", o.tls_key, &config->tls.key},
      {"tls_server_name", o.tls_server_name, &config->tls.server_name},
  };
  for (const auto& t : tls_paths) {
    if (!t.value) continue;
    if (absl::Status s = CheckPath(*t.value); !s.ok()) return FlagError(t.flag, s);
    *t.out = *t.value;
  }
  if (o.tls_refresh_interval) {
    if (absl::Status s = CheckPositive(*o.tls_refresh_interval); !s.ok()) {
      return FlagError("tls_refresh_interval", s);
    }
    config->tls.refresh_interval = *o.tls_refresh_interval;
  }
  if (o.spool_path) {
    if (absl::Status s = CheckSpoolPath(*o.spool_path); !s.ok()) return FlagError("spool_path", s);
    config->spool_path = *o.spool_path;
  }
  const struct {
    const char* flag;
    const std::optional<absl::Duration>& value;
    absl::Duration* out;
    absl::Status (*check)(absl::Duration);
  } durations[] = {
      {"flush_interval", o.flush_interval, &config->flush_interval, CheckPositive},
      {"backoff_initial", o.backoff_initial, &config->backoff_initial, CheckPositive},
      {"backoff_max", o.backoff_max, &config->backoff_max, CheckPositive},
      {"heartbeat_interval", o.heartbeat_interval, &config->heartbeat_interval, CheckPositive},
      {"drain_timeout", o.drain_timeout, &config->drain_timeout, CheckNotNegative},
  };
  for (const auto& d : durations) {
    if (!d.value) continue;
    if (absl::Status s = d.check(*d.value); !s.ok()) return FlagError(d.flag, s);
    *d.out = *d.value;
  }
  return absl::OkStatus();
}

absl::Status FinishAgentConfig(const AgentConfig& config) {
  if (config.location.empty()) {
    return absl::InvalidArgumentError(
        "no location: set 'location:' in the config file or pass --location");
  }
  if (config.collector.empty()) {
    return absl::InvalidArgumentError(
        "no collector: set 'collector:' in the config file or pass --collector=HOST:PORT");
  }
  if (config.backoff_initial > config.backoff_max) {
    return absl::InvalidArgumentError(
        absl::StrCat("backoff_initial (", absl::FormatDuration(config.backoff_initial),
                     ") is above backoff_max (", absl::FormatDuration(config.backoff_max), ")"));
  }
  if (!config.allow_non_loopback_listen && !IsLoopbackListen(config.listen)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "listen ", config.listen,
        " is not a loopback address: systems on other machines could post observations. Use "
        "127.0.0.1:PORT, or set 'allow_non_loopback_listen: true' if that is meant"));
  }
  if (!config.insecure) {
    const struct {
      const char* name;
      const std::string& value;
    } required[] = {{"ca", config.tls.ca}, {"cert", config.tls.cert}, {"key", config.tls.key}};
    for (const auto& r : required) {
      if (r.value.empty()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "no tls.", r.name, ": TLS to the collector is the default; set the 'tls:' block "
            "(ca, cert, key) in the config file or pass --tls_ca, --tls_cert, --tls_key (see "
            "README, \"Certificates\"), or allow plaintext explicitly with --insecure"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace constance::agent
