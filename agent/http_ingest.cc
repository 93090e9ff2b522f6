#include "agent/http_ingest.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "agent/checklists.h"
#include "agent/config.h"
#include "agent/input_values.h"
#include "agent/ingest_json.h"
#include "agent/price_check.h"
#include "agent/tickets.h"
#include "civetweb.h"
#include "constance/http_server.h"
#include "constance/yaml_reader.h"
#include "constance/log.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace constance::agent {

struct HttpIngest::Impl {
  HttpIngestOptions options;
  Spool* spool = nullptr;
  AgentMetrics* metrics = nullptr;
  AppendedCallback on_appended;
  std::atomic<size_t> max_body_bytes{0};
  int port = 0;
  // HOST:PORT values (lower case) accepted in Host and after http:// in
  // Origin; set at start.
  std::set<std::string> hosts;
  absl::Mutex mu;
  std::unique_ptr<HttpServer> server ABSL_GUARDED_BY(mu);
  bool closed ABSL_GUARDED_BY(mu) = false;
  // Requests admitted to the append path and not finished.
  int appending ABSL_GUARDED_BY(mu) = 0;

  bool NoneAppending() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return appending == 0; }
};

namespace {

constexpr size_t kMaxIdempotencyKeyBytes = 255;
// The one media type of POST bodies.
constexpr char kJsonType[] = "application/json";
// Characters of a refused header value echoed in the answer.
constexpr size_t kEchoedBytes = 100;

// An outside header value fit to quote in an answer.
std::string Echo(absl::string_view value) {
  return EscapeForLog(value.substr(0, kEchoedBytes));
}

int Reply(mg_connection* conn, int status, const std::string& body, const char* allow = nullptr,
          bool replayed = false) {
  mg_response_header_start(conn, status);
  mg_response_header_add(conn, "Content-Type", "application/json", -1);
  mg_response_header_add(conn, "Content-Length", std::to_string(body.size()).c_str(), -1);
  mg_response_header_add(conn, "Cache-Control", "no-store", -1);
  if (allow != nullptr) mg_response_header_add(conn, "Allow", allow, -1);
  if (replayed) mg_response_header_add(conn, "Idempotent-Replayed", "true", -1);
  mg_response_header_send(conn);
  mg_write(conn, body.data(), body.size());
  return status;
}

// Reads the request body; false (and *too_large) when it exceeds `limit`.
bool ReadBody(mg_connection* conn, size_t limit, std::string* body, bool* too_large) {
  const mg_request_info* ri = mg_get_request_info(conn);
  *too_large = false;
  // Refuse before reading when the client announced the size.
  if (ri->content_length > 0 && static_cast<unsigned long long>(ri->content_length) > limit) {
    *too_large = true;
    return false;
  }
  char buf[16384];
  for (;;) {
    int n = mg_read(conn, buf, sizeof(buf));
    if (n < 0) return false;
    if (n == 0) return true;
    if (body->size() + static_cast<size_t>(n) > limit) {
      *too_large = true;
      return false;
    }
    body->append(buf, static_cast<size_t>(n));
  }
}

// The answer remembered for an Idempotency-Key, sent again as it was when
// the request is the same (`fingerprint`: endpoint and body hash); 422 when
// the key was used for another request, whose data would otherwise be
// dropped without a word.
int Replay(mg_connection* conn, const RequestAnswer& answer, const std::string& fingerprint) {
  if (!answer.fingerprint.empty() && answer.fingerprint != fingerprint) {
    const char* key = mg_get_header(conn, "Idempotency-Key");
    return Reply(conn, 422,
                 RenderIngestError(absl::StrCat(
                     "Idempotency-Key '", Echo(key == nullptr ? "" : key),
                     "' was already used for another request (another body or endpoint); "
                     "nothing was stored: send new data under a new key")));
  }
  return Reply(conn, answer.status, answer.body, nullptr, /*replayed=*/true);
}

// A spool failure as an HTTP status: full (bound or disk) is 507, an I/O
// error or a locked file 503, anything else 500.
int SpoolErrorStatus(const absl::Status& s) {
  if (absl::IsResourceExhausted(s)) return 507;
  if (absl::IsUnavailable(s)) return 503;
  return 500;
}

// Checks an Idempotency-Key header value: 1..255 printable ASCII bytes.
bool ValidIdempotencyKey(absl::string_view key) {
  if (key.empty() || key.size() > kMaxIdempotencyKeyBytes) return false;
  for (char c : key) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

// 403 for a request addressed to another name than the agent's (Host) or
// sent by a web page of another origin (Origin); 0 when it may go on.
int RefuseForeign(mg_connection* conn, const HttpIngest::Impl& impl) {
  const std::string names = absl::StrJoin(impl.hosts, ", ");
  if (const char* host = mg_get_header(conn, "Host");
      host != nullptr && impl.hosts.count(absl::AsciiStrToLower(host)) == 0) {
    return Reply(conn, 403,
                 RenderIngestError(absl::StrCat(
                     "Host '", Echo(host), "' is not this agent; address it as one of ", names,
                     " (or list the name in http_allowed_hosts)")));
  }
  if (const char* origin = mg_get_header(conn, "Origin"); origin != nullptr) {
    absl::string_view rest = origin;
    if (!absl::ConsumePrefix(&rest, "http://") ||
        impl.hosts.count(absl::AsciiStrToLower(rest)) == 0) {
      return Reply(conn, 403,
                   RenderIngestError(absl::StrCat(
                       "Origin '", Echo(origin),
                       "' is not this agent: requests from web pages of other sites are refused; "
                       "post from the store system itself, without an Origin header")));
    }
  }
  return 0;
}

// 415 unless the body is declared JSON; 0 when it is.
int RefuseContentType(mg_connection* conn) {
  const char* type = mg_get_header(conn, "Content-Type");
  absl::string_view media = type == nullptr ? "" : type;
  media = absl::StripAsciiWhitespace(media.substr(0, media.find(';')));
  if (absl::EqualsIgnoreCase(media, kJsonType)) return 0;
  return Reply(conn, 415,
               RenderIngestError(absl::StrCat("Content-Type must be ", kJsonType, " (got '",
                                              type == nullptr ? "none" : Echo(type), "')")));
}

// The POST endpoints: what their items are.
enum class Endpoint { kObservations, kChecklists, kPriceChecks, kTickets };

const char* EndpointPath(Endpoint e) {
  switch (e) {
    case Endpoint::kObservations:
      return "/v1/observations";
    case Endpoint::kChecklists:
      return "/v1/checklists";
    case Endpoint::kPriceChecks:
      return "/v1/price_checks";
    case Endpoint::kTickets:
      return "/v1/tickets";
  }
  return "";
}

// Parses a request body of `endpoint` into observations (and, for tickets,
// events in `*events`).
absl::StatusOr<ParsedObservations> ParseBody(Endpoint endpoint, const std::string& body,
                                             absl::Time now, const Limits& limits,
                                             std::vector<TicketEvent>* events) {
  switch (endpoint) {
    case Endpoint::kObservations:
      return ParseObservations(body, now, limits);
    case Endpoint::kChecklists:
      return ParseItems(body, [&](absl::string_view item, std::vector<v1::Observation>* out) {
        absl::StatusOr<ChecklistSubmission> sub = ParseChecklistJson(item);
        if (!sub.ok()) return sub.status();
        absl::StatusOr<std::vector<v1::Observation>> obs = ChecklistObservations(*sub, now, limits);
        if (!obs.ok()) return obs.status();
        *out = *std::move(obs);
        return absl::OkStatus();
      });
    case Endpoint::kPriceChecks:
      return ParseItems(body, [&](absl::string_view item, std::vector<v1::Observation>* out) {
        absl::StatusOr<PriceCheck> check = ParsePriceCheckJson(item);
        if (!check.ok()) return check.status();
        absl::StatusOr<std::vector<v1::Observation>> obs =
            PriceCheckObservations(*check, now, limits);
        if (!obs.ok()) return obs.status();
        *out = *std::move(obs);
        return absl::OkStatus();
      });
    case Endpoint::kTickets:
      return ParseItems(body, [&](absl::string_view item, std::vector<v1::Observation>*) {
        absl::StatusOr<TicketEvent> e = ParseTicketJson(item, now);
        if (!e.ok()) return e.status();
        events->push_back(*std::move(e));
        return absl::OkStatus();
      });
  }
  return absl::InternalError("unknown endpoint");
}

// A retry of a request already answered gets the same answer and stores
// nothing. Only answers given after the append are remembered: a refusal
// (bad JSON, spool full, shutting down) leaves the key free for a retry.
// Returns the status sent (a replay, 422, or an error), or 0 with
// `*remember` set when the request carries a new key.
int CheckIdempotencyKey(mg_connection* conn, const HttpIngest::Impl& impl,
                        const std::string& fingerprint, std::optional<RememberRequest>* remember) {
  const char* key_header = mg_get_header(conn, "Idempotency-Key");
  if (key_header == nullptr) return 0;
  if (!ValidIdempotencyKey(key_header)) {
    return Reply(conn, 400,
                 RenderIngestError(absl::StrCat("Idempotency-Key must be 1..",
                                                kMaxIdempotencyKeyBytes,
                                                " printable ASCII characters")));
  }
  absl::StatusOr<std::optional<RequestAnswer>> earlier = impl.spool->LookupRequest(key_header);
  if (!earlier.ok()) {
    spdlog::warn("ingest: {}", std::string(earlier.status().message()));
    return Reply(conn, SpoolErrorStatus(earlier.status()),
                 RenderIngestError(earlier.status().message()));
  }
  if (earlier->has_value()) return Replay(conn, **earlier, fingerprint);
  remember->emplace();
  (*remember)->key = key_header;
  return 0;
}

// The request's limits: the agent's, with the lateness a Max-Lateness
// header asks for, up to what the agent allows files (max_requested_lateness).
absl::StatusOr<Limits> RequestLimits(mg_connection* conn, const HttpIngestOptions& options) {
  Limits limits = options.limits;
  const char* header = mg_get_header(conn, "Max-Lateness");
  if (header == nullptr) return limits;
  absl::Duration asked;
  if (absl::Status s = yaml::ParseDurationText(header, {.days = true}, &asked); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("header Max-Lateness: ", s.message()));
  }
  const absl::Duration allowed = std::max(options.max_requested_lateness, limits.max_lateness);
  if (asked > allowed) {
    return absl::InvalidArgumentError(absl::StrCat(
        "header Max-Lateness: ", header, " is above what this agent accepts (",
        absl::FormatDuration(allowed),
        "); raise max_lateness of a drop_directory.files mapping in the agent's config"));
  }
  limits.max_lateness = asked;
  return limits;
}

int HandleIngest(mg_connection* conn, HttpIngest::Impl* impl, Endpoint endpoint) {
  if (int refused = RefuseForeign(conn, *impl); refused != 0) return refused;
  const mg_request_info* ri = mg_get_request_info(conn);
  const char* path = EndpointPath(endpoint);
  if (std::strcmp(ri->local_uri, path) != 0) {
    return Reply(conn, 404, RenderIngestError(absl::StrCat("no such path: ", ri->local_uri)));
  }
  if (std::strcmp(ri->request_method, "POST") != 0) {
    return Reply(
        conn, 405,
        RenderIngestError(absl::StrCat(ri->request_method, " not allowed on ", path, "; use POST")),
        "POST");
  }
  if (int refused = RefuseContentType(conn); refused != 0) return refused;
  if (endpoint == Endpoint::kTickets && impl->options.tickets == nullptr) {
    return Reply(conn, 404, RenderIngestError("this agent takes no queue events"));
  }
  bool closed;
  {
    absl::MutexLock lock(&impl->mu);
    closed = impl->closed;
    if (!closed) ++impl->appending;
  }
  if (closed) {
    return Reply(conn, 503, RenderIngestError("the agent is shutting down; nothing was stored"));
  }
  struct Done {
    HttpIngest::Impl* impl;
    ~Done() {
      absl::MutexLock lock(&impl->mu);
      --impl->appending;
    }
  } done{impl};

  std::string body;
  bool too_large = false;
  const size_t max_body_bytes = impl->max_body_bytes.load();
  if (!ReadBody(conn, max_body_bytes, &body, &too_large)) {
    if (too_large) {
      // The rest of the body is not read, so the connection cannot be reused.
      mg_disable_keep_alive(conn);
      return Reply(conn, 413,
                   RenderIngestError(absl::StrCat("request body over the limit of ", max_body_bytes,
                                                  " bytes; send smaller arrays")));
    }
    return Reply(conn, 400, RenderIngestError("could not read the request body"));
  }

  const std::string fingerprint = absl::StrCat(path, " ", StableHash(body));
  std::optional<RememberRequest> remember;
  if (endpoint != Endpoint::kTickets) {
    if (int answered = CheckIdempotencyKey(conn, *impl, fingerprint, &remember); answered != 0) {
      return answered;
    }
  }

  absl::StatusOr<Limits> limits = RequestLimits(conn, impl->options);
  if (!limits.ok()) return Reply(conn, 400, RenderIngestError(limits.status().message()));
  std::vector<TicketEvent> events;
  const absl::Time now = absl::Now();
  absl::StatusOr<ParsedObservations> parsed = ParseBody(endpoint, body, now, *limits, &events);
  if (!parsed.ok()) return Reply(conn, 400, RenderIngestError(parsed.status().message()));

  // Duplicates (an item id already spooled or recently delivered) count as
  // accepted: the writer's retry is acknowledged again.
  const size_t valid = parsed->accepted.size();
  const int status = parsed->rejected.empty() ? 200 : 400;
  const std::string answer = RenderIngestAnswer(parsed->items_accepted, parsed->rejected);
  impl->metrics->AddRejectedInvalid(parsed->rejected.size());
  if (endpoint == Endpoint::kTickets) {
    if (!events.empty()) {
      absl::StatusOr<TicketOutcome> outcome = impl->options.tickets->Apply(events, now);
      if (!outcome.ok()) {
        const int code = SpoolErrorStatus(outcome.status());
        spdlog::warn("ingest: {} queue events not applied: {}", events.size(),
                     std::string(outcome.status().message()));
        return Reply(conn, code, RenderIngestError(outcome.status().message()));
      }
      for (const std::string& p : outcome->problems) spdlog::warn("ingest: {}", p);
      impl->metrics->AddTicketEventsIgnored(outcome->ignored);
      impl->metrics->AddTicketsEvicted(outcome->evicted);
      impl->metrics->AddAccepted(outcome->append.stored);
      if (outcome->append.stored > 0 && impl->on_appended) {
        impl->on_appended(outcome->append.first_sequence + outcome->append.stored - 1);
      }
    }
    return Reply(conn, status, answer);
  }
  if (valid > 0 || remember) {
    if (remember) remember->answer = RequestAnswer{status, answer, fingerprint};
    absl::StatusOr<AppendResult> appended =
        impl->spool->AppendBatch(std::move(parsed->accepted), remember ? &*remember : nullptr);
    if (!appended.ok()) {
      const int code = SpoolErrorStatus(appended.status());
      if (code == 507) impl->metrics->AddRejectedSpoolFull(valid);
      spdlog::warn("ingest: {} observations not stored: {}", valid,
                   std::string(appended.status().message()));
      return Reply(conn, code, RenderIngestError(appended.status().message()));
    }
    // A concurrent request with the same key was answered first.
    if (appended->earlier_answer) return Replay(conn, *appended->earlier_answer, fingerprint);
    impl->metrics->AddAccepted(appended->stored);
    if (appended->duplicates > 0) {
      spdlog::debug("ingest: {} observations already spooled or delivered (same id)",
                    appended->duplicates);
    }
    if (appended->stored > 0 && impl->on_appended) {
      impl->on_appended(appended->first_sequence + appended->stored - 1);
    }
  }
  for (const ItemRejection& r : parsed->rejected) {
    spdlog::debug("ingest: item {} refused: {}", r.index, r.reason);
  }
  return Reply(conn, status, answer);
}

int HandleObservations(mg_connection* conn, void* cbdata) {
  return HandleIngest(conn, static_cast<HttpIngest::Impl*>(cbdata), Endpoint::kObservations);
}
int HandleChecklists(mg_connection* conn, void* cbdata) {
  return HandleIngest(conn, static_cast<HttpIngest::Impl*>(cbdata), Endpoint::kChecklists);
}
int HandlePriceChecks(mg_connection* conn, void* cbdata) {
  return HandleIngest(conn, static_cast<HttpIngest::Impl*>(cbdata), Endpoint::kPriceChecks);
}
int HandleTickets(mg_connection* conn, void* cbdata) {
  return HandleIngest(conn, static_cast<HttpIngest::Impl*>(cbdata), Endpoint::kTickets);
}

int HandleHealth(mg_connection* conn, void* cbdata) {
  auto* impl = static_cast<HttpIngest::Impl*>(cbdata);
  if (int refused = RefuseForeign(conn, *impl); refused != 0) return refused;
  const mg_request_info* ri = mg_get_request_info(conn);
  if (std::strcmp(ri->local_uri, "/healthz") != 0) {
    return Reply(conn, 404, RenderIngestError(absl::StrCat("no such path: ", ri->local_uri)));
  }
  if (std::strcmp(ri->request_method, "GET") != 0) {
    return Reply(conn, 405, RenderIngestError("use GET on /healthz"), "GET");
  }
  nlohmann::json answer = {{"status", "ok"},
                           {"location", impl->options.location},
                           {"spool_depth", impl->spool->Depth()}};
  return Reply(conn, 200, answer.dump());
}

int HandleUnknown(mg_connection* conn, void* cbdata) {
  if (int refused = RefuseForeign(conn, *static_cast<HttpIngest::Impl*>(cbdata)); refused != 0) {
    return refused;
  }
  const mg_request_info* ri = mg_get_request_info(conn);
  return Reply(conn, 404,
               RenderIngestError(absl::StrCat("no such path: ", ri->local_uri,
                                              " (POST /v1/observations, /v1/checklists, "
                                              "/v1/price_checks, /v1/tickets; GET /healthz)")));
}

}  // namespace

HttpIngest::HttpIngest(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpIngest::~HttpIngest() { Stop(); }

absl::StatusOr<std::unique_ptr<HttpIngest>> HttpIngest::Start(HttpIngestOptions options,
                                                              Spool* spool, AgentMetrics* metrics,
                                                              AppendedCallback on_appended) {
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->spool = spool;
  impl->metrics = metrics;
  impl->on_appended = std::move(on_appended);
  impl->max_body_bytes = impl->options.max_body_bytes;

  if (!IsLoopbackListen(impl->options.listen)) {
    spdlog::warn(
        "http: listening on {}, not loopback: systems on other machines can post observations",
        impl->options.listen);
  }
  HttpServerOptions server_options;
  server_options.listen = impl->options.listen;
  server_options.threads = impl->options.threads;
  server_options.request_timeout = impl->options.request_timeout;
  server_options.log_name = "http";
  absl::StatusOr<std::unique_ptr<HttpServer>> server = HttpServer::Start(server_options);
  if (!server.ok()) {
    return absl::Status(server.status().code(), absl::StrCat("http: ", server.status().message()));
  }
  impl->port = (*server)->port();
  std::vector<std::string> names = {"localhost", "127.0.0.1", "[::1]"};
  names.push_back(impl->options.listen.substr(0, impl->options.listen.rfind(':')));
  for (const std::string& name : impl->options.allowed_hosts) names.push_back(name);
  for (const std::string& name : names) {
    impl->hosts.insert(absl::StrCat(absl::AsciiStrToLower(name), ":", impl->port));
  }
  // Handlers once `hosts` is complete: they read it without a lock.
  (*server)->Handle("/v1/observations", HandleObservations, impl.get());
  (*server)->Handle("/v1/checklists", HandleChecklists, impl.get());
  (*server)->Handle("/v1/price_checks", HandlePriceChecks, impl.get());
  (*server)->Handle("/v1/tickets", HandleTickets, impl.get());
  (*server)->Handle("/healthz", HandleHealth, impl.get());
  (*server)->Handle("**", HandleUnknown, impl.get());

  {
    absl::MutexLock lock(&impl->mu);
    impl->server = *std::move(server);
  }
  return std::unique_ptr<HttpIngest>(new HttpIngest(std::move(impl)));
}

int HttpIngest::port() const { return impl_->port; }

void HttpIngest::SetMaxBodyBytes(size_t max_body_bytes) { impl_->max_body_bytes = max_body_bytes; }

void HttpIngest::Close() {
  absl::MutexLock lock(&impl_->mu);
  impl_->closed = true;
  impl_->mu.Await(absl::Condition(impl_.get(), &Impl::NoneAppending));
}

void HttpIngest::Stop() {
  Close();
  std::unique_ptr<HttpServer> server;
  {
    absl::MutexLock lock(&impl_->mu);
    server = std::move(impl_->server);
  }
  // Stopping waits for handlers in progress; not under the lock, since they
  // do not need it but a concurrent Stop() should not wait on civetweb.
  server.reset();
}

}  // namespace constance::agent
