// `constance-agent observe`: one observation from the command line, posted to
// a running agent's local HTTP ingest.
//
// The pieces are separate so each can be tested alone: BuildObservation
// turns the command's arguments into a v1::Observation (a price with its
// currency's decimals, by ParseMoney: "4.49" EUR is 449, "450" JPY is 450),
// and PostJson / GetUrl call the shared HTTP client (constance/http_client.h)
// for the agent's loopback address.
//
// Example:
//   ObserveRequest req;
//   req.family = "price"; req.key = "coffee-250g"; req.value = "4.49"; req.currency = "EUR";
//   absl::StatusOr<v1::Observation> obs = BuildObservation(req);
//   absl::StatusOr<HttpResponse> r = PostJson({"127.0.0.1", 8080}, "/v1/observations", json,
//                                             absl::Seconds(10));
//
// Pure functions except PostJson (network I/O); all thread-safe.
#ifndef CONSTANCE_AGENT_OBSERVE_H_
#define CONSTANCE_AGENT_OBSERVE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "constance/http_client.h"
#include "constance/v1/observation.pb.h"

namespace constance::agent {

// The arguments of `observe FAMILY KEY VALUE [flags]`.
struct ObserveRequest {
  std::string family;  // price | wait | compliance | score
  std::string key;
  std::string value;        // price: 4.49 / 450 JPY; wait: seconds; compliance: pass|fail; ...
  std::string currency;     // price only, required: ISO 4217, whose decimals `value` has
  std::string kind;         // price only: shelf (default) | pos | list | promo
  bool critical = false;    // compliance only
  std::string observed_at;  // RFC 3339; empty means "when the agent receives it"
  std::string id;           // optional idempotency key
};

// InvalidArgument (a usage error) naming the argument at fault. The
// observation is not validated against Limits here: the agent does that
// and answers with its reason.
absl::StatusOr<v1::Observation> BuildObservation(const ObserveRequest& request);

struct HostPort {
  std::string host;
  int port = 0;
};

// "http://127.0.0.1:8080", "http://127.0.0.1:8080/" or "127.0.0.1:8080".
absl::StatusOr<HostPort> ParseAgentUrl(absl::string_view url);

// The shared client's answer (constance/http_client.h).
using HttpResponse = ::constance::HttpResponse;

// POSTs `body` as application/json and reads the whole answer. Unavailable
// when the agent cannot be reached or does not answer within `timeout`.
// A non-empty `idempotency_key` is sent as the Idempotency-Key header.
absl::StatusOr<HttpResponse> PostJson(const HostPort& to, const std::string& path,
                                      const std::string& body, absl::Duration timeout,
                                      const std::string& idempotency_key = "");

// GETs `path`; same contract as PostJson.
absl::StatusOr<HttpResponse> GetUrl(const HostPort& to, const std::string& path,
                                    absl::Duration timeout);

// One line saying why the agent refused a request, from its JSON answer
// ({"error":...} or the reasons in "rejected"), for the command's stderr.
std::string DescribeRefusal(const HttpResponse& response);

}  // namespace constance::agent

#endif  // CONSTANCE_AGENT_OBSERVE_H_
