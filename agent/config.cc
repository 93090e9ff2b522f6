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
#include "constance/yaml_reader.h"

namespace constance::agent {
namespace {

using yaml::Field;
using yaml::Key;
using yaml::Reader;

// Field checks return the bare reason; callers prefix where the value came
// from (file:line: x or --x), so file and flags share one rule.

absl::Status CheckLocation(absl::string_view value) {
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

absl::Status CheckCollector(absl::string_view value) {
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

absl::Status CheckListen(absl::string_view value) { return ValidateListenAddress(value); }

absl::Status CheckSpoolPath(absl::string_view value) {
  // SQLite would read these as a URI or a private temporary database.
  if (value == ":memory:" || absl::StartsWith(value, "file:")) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", value, "' is not a file path (leave it empty for an in-memory spool)"));
  }
  return absl::OkStatus();
}

absl::Status CheckPath(absl::string_view value) {
  if (value.empty()) return absl::InvalidArgumentError("must not be empty (a file path)");
  return absl::OkStatus();
}

absl::Status CheckSpoolWhenFull(absl::string_view value) {
  return ParseSpoolWhenFull(value).status();
}

// Key-table entries for the common shapes: a member read by one rule.
template <typename T>
Key<T> TextKey(const char* name, std::string T::*member,
               absl::Status (*check)(absl::string_view)) {
  return {name, [=](const Reader& r, const Field& f, T* out) {
            return r.Checked(f, check, &(out->*member));
          }};
}

template <typename T>
Key<T> DurationKey(const char* name, absl::Duration T::*member, yaml::DurationRule rule = {}) {
  return {name, [=](const Reader& r, const Field& f, T* out) {
            return r.Duration(f, rule, &(out->*member));
          }};
}

template <typename T, typename Int>
Key<T> CountKey(const char* name, Int T::*member, int64_t min, int64_t max) {
  return {name, [=](const Reader& r, const Field& f, T* out) {
            int64_t v = 0;
            if (absl::Status s = r.Integer(f, min, max, &v); !s.ok()) return s;
            out->*member = static_cast<Int>(v);
            return absl::OkStatus();
          }};
}

Key<AgentConfig> BoolKey(const char* name, bool AgentConfig::*member) {
  return {name, [=](const Reader& r, const Field& f, AgentConfig* out) {
            return r.Bool(f, &(out->*member));
          }};
}

// `labels:`, a map of name: value, checked as the wire checks them.
absl::Status ReadLabels(const Reader& r, const Field& f, AgentConfig* config) {
  std::map<std::string, std::string> labels;
  absl::Status s = r.EachKey(f, [&](const std::string& name, const Field& value) {
    std::string text;
    if (absl::Status s = r.Text(value, &text); !s.ok()) return s;
    if (absl::Status s = ValidateLabel(name, text); !s.ok()) return r.Error(value, s.message());
    labels.emplace(name, std::move(text));
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  if (absl::Status s = ValidateLabels(labels); !s.ok()) return r.Error(f, s.message());
  config->labels = std::move(labels);
  return absl::OkStatus();
}

// The `tls:` block: ca, cert, key, server_name, refresh_interval.
absl::Status ReadTls(const Reader& r, const Field& f, AgentConfig* config) {
  using T = AgentConfig::Tls;
  static const std::vector<Key<T>> kTlsKeys = {
      TextKey("ca", &T::ca, CheckPath),
      TextKey("cert", &T::cert, CheckPath),
      TextKey("key", &T::key, CheckPath),
      TextKey("server_name", &T::server_name, CheckPath),
      DurationKey("refresh_interval", &T::refresh_interval),
  };
  return r.Map(f, kTlsKeys, &config->tls);
}

// `http_allowed_hosts:`, a list of host names (no port, no scheme).
absl::Status ReadAllowedHosts(const Reader& r, const Field& f, AgentConfig* config) {
  if (!f.node.IsSequence()) {
    return r.Error(f, "expected a list of host names, e.g. [store-12.local]");
  }
  std::vector<std::string> hosts;
  absl::Status s = r.EachItem(f, [&](const Field& item) {
    std::string name;
    if (absl::Status s = r.Text(item, &name); !s.ok()) return s;
    if (name.empty() || name.find_first_of(":/ ") != std::string::npos) {
      return r.Error(item, absl::StrCat("'", name,
                                        "' is not a host name (write it without scheme or port: "
                                        "store-12.local)"));
    }
    hosts.push_back(absl::AsciiStrToLower(name));
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  config->http_allowed_hosts = std::move(hosts);
  return absl::OkStatus();
}

const std::vector<Key<AgentConfig>>& AgentKeys() {
  using C = AgentConfig;
  static const std::vector<Key<C>> kKeys = {
      TextKey("location", &C::location, CheckLocation),
      {"labels", ReadLabels},
      TextKey("collector", &C::collector, CheckCollector),
      BoolKey("insecure", &C::insecure),
      TextKey("listen", &C::listen, CheckListen),
      TextKey("metrics_listen", &C::metrics_listen, CheckListen),
      DurationKey("flush_interval", &C::flush_interval),
      CountKey("max_batch", &C::max_batch, 1, 10'000),
      CountKey("max_in_flight_batches", &C::max_in_flight_batches, 1, 1'000),
      DurationKey("backoff_initial", &C::backoff_initial),
      DurationKey("backoff_max", &C::backoff_max),
      DurationKey("heartbeat_interval", &C::heartbeat_interval),
      DurationKey("drain_timeout", &C::drain_timeout, {.allow_zero = true}),
      CountKey("spool_max_observations", &C::spool_max_observations, 1, int64_t{1} << 40),
      CountKey("spool_max_bytes", &C::spool_max_bytes, 1024, int64_t{1} << 50),
      {"spool_when_full",
       [](const Reader& r, const Field& f, C* c) {
         std::string text;
         if (absl::Status s = r.Checked(f, CheckSpoolWhenFull, &text); !s.ok()) return s;
         c->spool_when_full = *ParseSpoolWhenFull(text);
         return absl::OkStatus();
       }},
      TextKey("spool_path", &C::spool_path, CheckSpoolPath),
      DurationKey("idempotency_window", &C::idempotency_window),
      CountKey("max_body_bytes", &C::max_body_bytes, 1024, int64_t{1} << 30),
      DurationKey("http_request_timeout", &C::http_request_timeout),
      CountKey("http_threads", &C::http_threads, 2, 1024),
      {"http_allowed_hosts", ReadAllowedHosts},
      BoolKey("allow_non_loopback_listen", &C::allow_non_loopback_listen),
      // Inputs (input_config.cc holds the section's own key tables).
      {"drop_directory",
       [](const Reader& r, const Field& f, C* c) {
         return ParseDropDirectorySection(r, f, &c->drop_directory);
       }},
      DurationKey("open_ticket_ttl", &C::open_ticket_ttl),
      CountKey("max_open_tickets", &C::max_open_tickets, 1, 10'000'000),
      {"tls", ReadTls},
  };
  return kKeys;
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
  const Reader reader(filename, "agent config");
  if (absl::Status s = yaml::Parse(yaml, reader, AgentKeys(), &config); !s.ok()) return s;
  return config;
}

absl::StatusOr<AgentConfig> LoadAgentConfig(const std::string& path) {
  absl::StatusOr<std::string> text = yaml::ReadConfigFile(path);
  if (!text.ok()) return text.status();
  return ParseAgentConfig(*text, path);
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
    if (absl::Status s = yaml::CheckDuration(*o.tls_refresh_interval, {}); !s.ok()) {
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
    yaml::DurationRule rule;  // The same rule as the file's key of that name.
  } durations[] = {
      {"flush_interval", o.flush_interval, &config->flush_interval, {}},
      {"backoff_initial", o.backoff_initial, &config->backoff_initial, {}},
      {"backoff_max", o.backoff_max, &config->backoff_max, {}},
      {"heartbeat_interval", o.heartbeat_interval, &config->heartbeat_interval, {}},
      {"drain_timeout", o.drain_timeout, &config->drain_timeout, {.allow_zero = true}},
  };
  for (const auto& d : durations) {
    if (!d.value) continue;
    if (absl::Status s = yaml::CheckDuration(*d.value, d.rule); !s.ok()) return FlagError(d.flag, s);
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
