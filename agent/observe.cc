#include "agent/observe.h"

#include <cmath>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "constance/http_client.h"
#include "constance/money.h"
#include "constance/validate.h"
#include "google/protobuf/util/time_util.h"
#include "nlohmann/json.hpp"

namespace constance::agent {
namespace {

absl::Status Usage(absl::string_view what) { return absl::InvalidArgumentError(what); }

absl::StatusOr<double> ParseNumber(absl::string_view what, absl::string_view text) {
  double value = 0;
  if (!absl::SimpleAtod(text, &value) || !std::isfinite(value)) {
    return Usage(absl::StrCat(what, " '", text, "' is not a finite number"));
  }
  return value;
}

}  // namespace

absl::StatusOr<v1::Observation> BuildObservation(const ObserveRequest& r) {
  v1::Family family;
  if (!ParseFamily(r.family, &family).ok()) {
    return Usage(
        absl::StrCat("FAMILY '", r.family, "' is not one of price, wait, compliance, score"));
  }
  if (r.key.empty()) return Usage("KEY must not be empty");
  if (family != v1::FAMILY_PRICE && (!r.currency.empty() || !r.kind.empty())) {
    return Usage("--currency and --kind apply to price observations only");
  }
  if (family != v1::FAMILY_COMPLIANCE && r.critical) {
    return Usage("--critical applies to compliance observations only");
  }
  v1::Observation obs;
  obs.set_key(r.key);
  if (!r.id.empty()) obs.set_id(r.id);
  switch (family) {
    case v1::FAMILY_PRICE: {
      if (r.currency.empty()) return Usage("a price needs --currency, e.g. --currency=EUR");
      if (absl::StatusOr<int> e = CurrencyExponent(r.currency); !e.ok()) {
        return Usage(absl::StrCat("--", e.status().message()));
      }
      absl::StatusOr<int64_t> minor = ParseMoney(r.value, r.currency);
      if (!minor.ok()) return Usage(absl::StrCat("price ", minor.status().message()));
      v1::PriceKind kind = v1::SHELF;
      if (!r.kind.empty() && !v1::PriceKind_Parse(absl::AsciiStrToUpper(r.kind), &kind)) {
        return Usage(absl::StrCat("--kind '", r.kind, "' is not one of shelf, pos, list, promo"));
      }
      obs.mutable_price()->set_minor_units(*minor);
      obs.mutable_price()->set_currency(r.currency);
      obs.mutable_price()->set_kind(kind);
      break;
    }
    case v1::FAMILY_WAIT: {
      absl::StatusOr<double> seconds = ParseNumber("wait", r.value);
      if (!seconds.ok()) return seconds.status();
      obs.set_wait_seconds(*seconds);
      break;
    }
    case v1::FAMILY_COMPLIANCE: {
      if (r.value != "pass" && r.value != "fail") {
        return Usage(absl::StrCat("compliance VALUE '", r.value, "' is not pass or fail"));
      }
      obs.mutable_check()->set_passed(r.value == "pass");
      obs.mutable_check()->set_critical(r.critical);
      break;
    }
    case v1::FAMILY_SCORE: {
      absl::StatusOr<double> score = ParseNumber("score", r.value);
      if (!score.ok()) return score.status();
      obs.set_score(*score);
      break;
    }
    default:
      return Usage(
          absl::StrCat("FAMILY '", r.family, "' is not one of price, wait, compliance, score"));
  }
  if (!r.observed_at.empty()) {
    absl::Time t;
    std::string error;
    if (!absl::ParseTime(absl::RFC3339_full, r.observed_at, &t, &error)) {
      return Usage(absl::StrCat("--observed_at '", r.observed_at,
                                "' is not an RFC 3339 time like 2024-05-01T10:00:00Z: ", error));
    }
    *obs.mutable_observed_at() =
        google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
  }
  return obs;
}

absl::StatusOr<HostPort> ParseAgentUrl(absl::string_view url) {
  absl::string_view rest = url;
  if (absl::StartsWith(rest, "https://")) {
    return Usage("--agent: the agent's local ingest speaks plain http on loopback, not https");
  }
  absl::ConsumePrefix(&rest, "http://");
  absl::ConsumeSuffix(&rest, "/");
  size_t colon = rest.rfind(':');
  HostPort out;
  if (colon == absl::string_view::npos || colon == 0 || rest.find('/') != absl::string_view::npos ||
      !absl::SimpleAtoi(rest.substr(colon + 1), &out.port) || out.port <= 0 || out.port > 65535) {
    return Usage(absl::StrCat("--agent '", url, "' is not http://HOST:PORT"));
  }
  absl::string_view host = rest.substr(0, colon);
  absl::ConsumePrefix(&host, "[");
  absl::ConsumeSuffix(&host, "]");
  out.host = std::string(host);
  return out;
}

absl::StatusOr<HttpResponse> PostJson(const HostPort& to, const std::string& path,
                                      const std::string& body, absl::Duration timeout,
                                      const std::string& idempotency_key) {
  HttpRequest request;
  request.method = "POST";
  request.path = path;
  request.body = body;
  if (!idempotency_key.empty()) request.headers.push_back({"Idempotency-Key", idempotency_key});
  return HttpFetch(to.host, to.port, request, timeout);
}

absl::StatusOr<HttpResponse> GetUrl(const HostPort& to, const std::string& path,
                                    absl::Duration timeout) {
  HttpRequest request;
  request.path = path;
  return HttpFetch(to.host, to.port, request, timeout);
}

std::string DescribeRefusal(const HttpResponse& response) {
  using nlohmann::json;
  json answer = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  if (answer.is_object()) {
    auto error = answer.find("error");
    if (error != answer.end() && error->is_string()) return error->get<std::string>();
    auto rejected = answer.find("rejected");
    if (rejected != answer.end() && rejected->is_array() && !rejected->empty()) {
      std::vector<std::string> reasons;
      for (const json& r : *rejected) {
        if (r.is_object() && r.contains("reason") && r["reason"].is_string()) {
          reasons.push_back(r["reason"].get<std::string>());
        }
      }
      if (!reasons.empty()) return absl::StrJoin(reasons, "; ");
    }
  }
  return absl::StrCat("HTTP ", response.status, ": ", response.body);
}

}  // namespace constance::agent
