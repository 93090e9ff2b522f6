// constance: the operator's command line for a running collector.
//
//   constance report [--collector=HOST:PORT] [--json] [--wait_for_observations=N]
//   constance key FAMILY KEY [--currency=EUR] [--kind=shelf] [--group=NAME]
//   constance findings [--finding=KIND] [--location=ID] [--all]
//   constance location ID
//   constance silence add|list|expire (silence.h)
//   constance history [--location=ID] [--key=FAMILY:KEY] [--finding=KIND] [--since=720h] [--csv]
//   constance record LOCATION [--json]
//   constance publish --out=DIR --catalog=catalog.yaml
//   constance price-drops [--since=72h] [--location=ID] [--csv|--json]
//   constance replay --config=agent.yaml [--catalog=catalog.yaml] [--every=1h] [--json]
//                    FILE|DIR...
//
// Every command takes --collector=HOST:PORT; report, findings, history,
// location, key and silence also take several (comma-separated, or
// --shards=FILE) and merge the shards' answers (shards.h; silence add
// writes to every shard, silence.h). A collector with TLS also
// needs an operator certificate: --tls_ca=FILE --tls_cert=FILE --tls_key=FILE
// (deploy/pki/pki.sh issue DIR operator NAME). Without them: plaintext,
// which only a collector started with --insecure accepts.
//
// replay reads exported files itself (no collector): see replay.h.
//
// Exit codes: 0 success, 1 the collector answered with an error or the wait
// timed out, 2 usage error (replay: also an input or configuration it
// cannot use).
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/config.h"
#include "collector/catalog.h"
#include "collector/cli/replay.h"
#include "collector/cli/report.h"
#include "collector/cli/shards.h"
#include "collector/cli/silence.h"
#include "collector/public_board.h"
#include "constance/tls.h"
#include "constance/v1/board.grpc.pb.h"
#include "constance/v1/history.grpc.pb.h"
#include "constance/v1/query.grpc.pb.h"
#include "constance/v1/silence.grpc.pb.h"
#include "constance/validate.h"
#include "constance/version.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/grpcpp.h"

ABSL_FLAG(std::string, collector, "127.0.0.1:7070",
          "Collector gRPC address (HOST:PORT); several, comma-separated, for a sharded chain: "
          "report, findings, history, location, key and silence ask them all and merge the "
          "answers (silence add and expire write to every shard concerned)");
ABSL_FLAG(std::string, shards, "",
          "A file naming a sharded chain's collectors, one HOST:PORT a line (# comments): "
          "instead of --collector");
ABSL_FLAG(std::string, tls_ca, "", "CA bundle the collector's certificate chains to");
ABSL_FLAG(std::string, tls_cert, "",
          "Operator certificate (URI SAN spiffe://constance/operator/NAME, deploy/pki/)");
ABSL_FLAG(std::string, tls_key, "", "The operator certificate's private key");
ABSL_FLAG(std::string, tls_server_name, "",
          "Name expected in the collector's certificate if not the host dialled");
ABSL_FLAG(bool, json, false, "Print the answer as JSON (protobuf JSON mapping) for scripts");
ABSL_FLAG(uint64_t, wait_for_observations, 0,
          "report: wait until the collector's statistics cover at least this many applied "
          "observations (0 = do not wait)");
ABSL_FLAG(bool, wait_for_findings, false,
          "report: also wait until the findings have settled on those observations (enough "
          "consecutive evaluations covered them)");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(30), "How long to wait for the collector");
ABSL_FLAG(int, max_series, 20, "report: series shown in the dispersion table (0 = all)");
ABSL_FLAG(uint32_t, limit, 0,
          "report, findings, location: rows the collector sends per list (0 = its default, "
          "1000); what it leaves out is counted in an '... N more' line");
ABSL_FLAG(std::string, currency, "", "key: currency of a price series, e.g. EUR");
ABSL_FLAG(std::string, kind, "shelf", "key: price kind (shelf, pos, list, promo)");
ABSL_FLAG(std::string, group, "", "key: only this peer group (e.g. zone=north); empty = all");
ABSL_FLAG(std::string, finding, "",
          "findings: only this kind (outlier, split, zone, broken_promise, unkeepable_promise, "
          "irregular_change, drift, silent, stale)");
ABSL_FLAG(std::string, location, "",
          "findings: only those about this location; silence add: silence this location");
ABSL_FLAG(bool, all, false,
          "findings: include recently closed findings; silence list: include ended silences");
ABSL_FLAG(std::string, region, "", "silence add: silence this region (the catalog's label)");
ABSL_FLAG(std::string, key, "", "silence add: silence this series, FAMILY:KEY (price:coffee-250g)");
ABSL_FLAG(absl::Duration, for, absl::ZeroDuration(), "silence add: how long, e.g. 72h");
ABSL_FLAG(std::string, until, "", "silence add: until when, RFC 3339 (2026-12-24T18:00:00Z)");
ABSL_FLAG(std::string, owner, "", "silence add: who answers for the silence (required)");
ABSL_FLAG(std::string, comment, "", "silence add: why (required)");
ABSL_FLAG(absl::Duration, since, absl::ZeroDuration(),
          "history: episodes open at some time in the last DURATION (e.g. 720h; 0 = all kept); "
          "price-drops: drops in the last DURATION");
ABSL_FLAG(bool, csv, false,
          "history, price-drops: print CSV (one row per episode or drop) for spreadsheets");
ABSL_FLAG(std::string, config, "",
          "replay: an agent.yaml whose drop_directory.files mappings read the files");
ABSL_FLAG(std::string, catalog, "",
          "replay: the collector's catalog.yaml (empty: defaults); publish: the catalog whose "
          "`publish: true` locations and promises the board shows");
ABSL_FLAG(std::string, out, "", "publish: the directory the board's pages are written to");
ABSL_FLAG(absl::Duration, every, absl::Hours(1),
          "replay: evaluate the findings at each multiple of this much event time");

namespace constance::cli {
namespace {

constexpr char kUsage[] =
    "constance report [--collector=HOST:PORT] [--json] [--wait_for_observations=N]\n"
    "  constance key FAMILY KEY [--currency=EUR] [--kind=shelf] [--group=NAME] [--json]\n"
    "  constance findings [--finding=KIND] [--location=ID] [--all] [--json]\n"
    "  constance location ID [--json]\n"
    "  constance silence add [--location=ID] [--region=R] [--key=FAMILY:KEY] [--finding=KIND]\n"
    "    --for=72h|--until=RFC3339 --owner=NAME --comment=WHY\n"
    "  constance silence list [--all] [--json]\n"
    "  constance silence expire ID\n"
    "  constance history [--location=ID] [--key=FAMILY:KEY] [--finding=KIND] [--since=720h]\n"
    "    [--json|--csv]\n"
    "  constance price-drops [--since=72h] [--location=ID] [--json|--csv]\n"
    "  constance record LOCATION [--json]\n"
    "  constance publish --out=DIR --catalog=catalog.yaml   (the public board, static files)\n"
    "  constance replay --config=agent.yaml [--catalog=catalog.yaml] [--every=1h] [--json]\n"
    "    FILE|DIR...   (exported files through the collector's engine, in event time)\n"
    "  (every command takes --collector=HOST:PORT; report, findings, history, location, key\n"
    "   and silence take several, comma-separated, or --shards=FILE, and merge the shards'\n"
    "   answers (silence add/expire: on every shard, a line per shard);\n"
    "   for a TLS collector, --tls_ca,\n"
    "   --tls_cert, --tls_key with an operator certificate; without them: plaintext)";

std::string StatusText(const grpc::Status& status) {
  return absl::StrCat(status.error_message(), " (code ", status.error_code(), ")");
}

int Fail(const std::string& what, const grpc::Status& status,
         const std::string& where = absl::GetFlag(FLAGS_collector)) {
  std::cerr << "constance: " << what << " from " << where
            << " failed: " << status.error_message() << " (code " << status.error_code() << ")\n";
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE &&
      absl::GetFlag(FLAGS_tls_cert).empty()) {
    std::cerr << "constance: this was plaintext; a collector with TLS needs --tls_ca, --tls_cert "
                 "and --tls_key (an operator certificate)\n";
  }
  return 1;
}

void PrintJson(const google::protobuf::Message& message) {
  std::cout << ToJson(message, /*pretty=*/true);
}

using QueryStubs = std::vector<std::unique_ptr<v1::Query::Stub>>;

// Every shard's summary, merged (one collector's as it is).
int Report(const QueryStubs& stubs) {
  const uint64_t want = absl::GetFlag(FLAGS_wait_for_observations);
  const absl::Time deadline = absl::Now() + absl::GetFlag(FLAGS_timeout);
  v1::ChainSummaryResponse summary;
  std::vector<std::string> disagreements;
  // Polls because the collector publishes statistics on its own tick; the
  // answer says how many observations the statistics cover.
  for (absl::Duration backoff = absl::Milliseconds(50);;
       backoff = std::min(backoff * 2, absl::Seconds(1))) {
    std::vector<v1::ChainSummaryResponse> shards(stubs.size());
    for (size_t i = 0; i < stubs.size(); ++i) {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(deadline));
      if (want > 0) ctx.set_wait_for_ready(true);
      v1::ChainSummaryRequest request;
      request.set_limit(absl::GetFlag(FLAGS_limit));
      grpc::Status status = stubs[i]->ChainSummary(&ctx, request, &shards[i]);
      if (!status.ok()) return Fail("ChainSummary", status);
    }
    disagreements.clear();
    summary = stubs.size() == 1 ? shards[0] : MergeChainSummaries(shards, &disagreements);
    const bool covered = summary.observations_applied() + summary.observations_rejected() >= want;
    if (covered &&
        (!absl::GetFlag(FLAGS_wait_for_findings) || summary.observations_settled() >= want)) {
      break;
    }
    if (absl::Now() + backoff > deadline) {
      std::cerr << "constance: timed out after "
                << absl::FormatDuration(absl::GetFlag(FLAGS_timeout)) << " waiting for " << want
                << " observations; the collector's statistics cover "
                << summary.observations_applied() << " applied and "
                << summary.observations_rejected() << " rejected, findings "
                << summary.observations_settled() << "\n";
      return 1;
    }
    absl::SleepFor(backoff);
  }
  for (const std::string& d : disagreements) std::cerr << "constance: " << d << "\n";
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(summary);
  } else {
    std::cout << RenderChainSummary(summary, absl::GetFlag(FLAGS_max_series));
    if (stubs.size() > 1) std::cout << RenderChainWide(summary);
  }
  return 0;
}

// The series on every shard that holds it (each location in its own
// shard's peer groups); NOT_FOUND only when no shard holds it.
int Key(const QueryStubs& stubs, const std::vector<std::string>& addresses,
        const std::string& family_name, const std::string& key) {
  v1::KeyDetailRequest request;
  v1::Family family;
  if (absl::Status s = ParseFamily(family_name, &family); !s.ok()) {
    std::cerr << "constance: " << s.message() << "\n";
    return 2;
  }
  v1::SeriesId* series = request.mutable_series();
  series->set_family(family);
  series->set_key(key);
  if (family == v1::FAMILY_PRICE) {
    series->set_currency(absl::GetFlag(FLAGS_currency));
    v1::PriceKind kind;
    if (!v1::PriceKind_Parse(absl::AsciiStrToUpper(absl::GetFlag(FLAGS_kind)), &kind)) {
      std::cerr << "constance: --kind: '" << absl::GetFlag(FLAGS_kind)
                << "' is not one of shelf, pos, list, promo\n";
      return 2;
    }
    series->set_kind(kind);
  }
  request.set_group(absl::GetFlag(FLAGS_group));
  std::vector<v1::KeyDetailResponse> found;
  grpc::Status not_found;
  for (size_t i = 0; i < stubs.size(); ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout)));
    v1::KeyDetailResponse detail;
    grpc::Status status = stubs[i]->KeyDetail(&ctx, request, &detail);
    if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
      not_found = status;
      continue;
    }
    if (!status.ok()) return Fail("KeyDetail", status, addresses[i]);
    found.push_back(std::move(detail));
  }
  if (found.empty()) {
    return Fail("KeyDetail", not_found,
                stubs.size() > 1 ? absl::StrCat("every shard (", addresses.size(), ")")
                                 : addresses[0]);
  }
  std::vector<std::string> notes;
  const v1::KeyDetailResponse detail =
      stubs.size() == 1 ? found[0] : MergeKeyDetails(found, &notes);
  for (const std::string& n : notes) std::cerr << "constance: " << n << "\n";
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(detail);
  } else {
    std::cout << RenderKeyDetail(detail);
  }
  return 0;
}

int Findings(const QueryStubs& stubs) {
  v1::FindingsRequest request;
  if (const std::string kind = absl::GetFlag(FLAGS_finding); !kind.empty()) {
    absl::StatusOr<v1::FindingKind> k = ParseFindingKind(kind);
    if (!k.ok()) {
      std::cerr << "constance: --finding: " << k.status().message() << "\n";
      return 2;
    }
    request.set_kind(*k);
  }
  request.set_location(absl::GetFlag(FLAGS_location));
  request.set_include_closed(absl::GetFlag(FLAGS_all));
  request.set_limit(absl::GetFlag(FLAGS_limit));
  std::vector<v1::FindingsResponse> shards(stubs.size());
  for (size_t i = 0; i < stubs.size(); ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout)));
    grpc::Status status = stubs[i]->Findings(&ctx, request, &shards[i]);
    if (!status.ok()) return Fail("Findings", status);
  }
  const v1::FindingsResponse response = MergeFindings(shards);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(response);
  } else {
    std::cout << "Findings (" << response.findings_size() + response.omitted() << "):\n"
              << RenderFindings(response.findings()) << MoreLine(response.omitted(), "findings");
  }
  return 0;
}

// Each location is answered by its own shard: the first that knows it.
int Location(const QueryStubs& stubs, const std::string& location) {
  v1::LocationScorecardRequest request;
  request.set_location(location);
  request.set_limit(absl::GetFlag(FLAGS_limit));
  v1::LocationScorecardResponse response;
  grpc::Status status;
  for (const auto& stub : stubs) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout)));
    response.Clear();
    status = stub->LocationScorecard(&ctx, request, &response);
    if (status.error_code() != grpc::StatusCode::NOT_FOUND) break;
  }
  if (!status.ok()) return Fail("LocationScorecard", status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(response);
  } else {
    std::cout << RenderScorecard(response);
  }
  return 0;
}

using SilenceStubs = std::vector<std::unique_ptr<v1::Silences::Stub>>;

grpc::ClientContext* Deadline(grpc::ClientContext* ctx) {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout)));
  return ctx;
}

// One collector: the silence as it stands; several: a line per shard.
int PrintSilenceResults(const std::vector<ShardResult>& results, absl::string_view verb) {
  int failed = 0;
  for (const ShardResult& r : results) failed += !r.error.empty();
  if (results.size() == 1 && failed == 0) {
    v1::ListSilencesResponse one;
    *one.add_silences() = results[0].silence;
    if (absl::GetFlag(FLAGS_json)) {
      PrintJson(results[0].silence);
    } else {
      std::cout << RenderSilences(one, absl::Now());
    }
    return 0;
  }
  if (results.size() == 1) {
    std::cerr << "constance: silence " << verb << " at " << results[0].shard
              << " failed: " << results[0].error << "\n";
    return 1;
  }
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << ShardResultsJson(results);
  } else {
    std::cout << RenderShardResults(results, verb);
    if (failed == 0) std::cout << "on all " << results.size() << " shards\n";
  }
  if (failed > 0) {
    std::cerr << "constance: " << failed << " of " << results.size()
              << " shards failed (above); the others hold the change. Repeat it on each failed "
                 "one with --collector=HOST:PORT"
              << (verb == "added" ? " and --until set to the others' end, so they end together"
                                  : "")
              << "\n";
    return 1;
  }
  return 0;
}

// Every shard gets the rule, with one start time, so the copies are one
// rule (SameRule) that `expire` ends together.
int SilenceAdd(const SilenceStubs& stubs, const std::vector<std::string>& addresses) {
  SilenceArgs a{absl::GetFlag(FLAGS_location), absl::GetFlag(FLAGS_region),
                absl::GetFlag(FLAGS_key),      absl::GetFlag(FLAGS_finding),
                absl::GetFlag(FLAGS_for),      absl::GetFlag(FLAGS_until),
                absl::GetFlag(FLAGS_owner),    absl::GetFlag(FLAGS_comment)};
  const absl::Time now = absl::Now();
  absl::StatusOr<v1::AddSilenceRequest> request = BuildSilence(a, now);
  if (!request.ok()) {
    std::cerr << "constance: silence add " << request.status().message() << "\n";
    return 2;
  }
  if (stubs.size() > 1) {
    *request->mutable_starts_at() =
        google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(now));
  }
  std::vector<ShardResult> results;
  for (size_t i = 0; i < stubs.size(); ++i) {
    grpc::ClientContext ctx;
    ShardResult r{addresses[i], "", {}};
    grpc::Status status = stubs[i]->Add(Deadline(&ctx), *request, &r.silence);
    if (!status.ok()) r.error = StatusText(status);
    results.push_back(std::move(r));
  }
  return PrintSilenceResults(results, "added");
}

// Every shard's list; nullopt (after saying which shard failed) on error.
std::optional<std::vector<v1::ListSilencesResponse>> ListEverywhere(
    const SilenceStubs& stubs, const std::vector<std::string>& addresses, bool include_expired) {
  std::vector<v1::ListSilencesResponse> lists(stubs.size());
  for (size_t i = 0; i < stubs.size(); ++i) {
    v1::ListSilencesRequest request;
    request.set_include_expired(include_expired);
    grpc::ClientContext ctx;
    grpc::Status status = stubs[i]->List(Deadline(&ctx), request, &lists[i]);
    if (!status.ok()) {
      Fail("silence list", status, addresses[i]);
      return std::nullopt;
    }
  }
  return lists;
}

int SilenceList(const SilenceStubs& stubs, const std::vector<std::string>& addresses) {
  auto lists = ListEverywhere(stubs, addresses, absl::GetFlag(FLAGS_all));
  if (!lists.has_value()) return 1;
  const bool json = absl::GetFlag(FLAGS_json);
  if (stubs.size() == 1) {
    if (json) {
      PrintJson((*lists)[0]);
    } else {
      std::cout << RenderSilences((*lists)[0], absl::Now());
    }
    return 0;
  }
  const std::vector<ShardSilence> merged = MergeSilenceLists(addresses, *lists);
  std::cout << (json ? ShardSilencesJson(merged) : RenderShardSilences(merged, absl::Now()));
  return 0;
}

// The silence `id` on the shards holding it, and its copies (SameRule)
// under other ids on the others. Refused when the shards' silences `id`
// are different rules: ids are numbered per shard.
int SilenceExpire(const SilenceStubs& stubs, const std::vector<std::string>& addresses,
                  const std::string& id) {
  std::vector<std::pair<size_t, v1::Silence>> targets;
  if (stubs.size() == 1) {
    v1::Silence s;
    s.set_id(id);
    targets.emplace_back(0, s);
  } else {
    auto lists = ListEverywhere(stubs, addresses, /*include_expired=*/false);
    if (!lists.has_value()) return 1;
    std::vector<ShardSilence> holders;
    for (size_t i = 0; i < lists->size(); ++i) {
      for (const v1::Silence& s : (*lists)[i].silences()) {
        if (s.id() == id) holders.push_back({addresses[i], s});
      }
    }
    if (holders.empty()) {
      std::cerr << "constance: silence expire: no shard holds an active silence " << id
                << " (constance silence list)\n";
      return 1;
    }
    for (const ShardSilence& h : holders) {
      if (SameRule(h.silence, holders[0].silence)) continue;
      std::cerr << "constance: silence expire: silence " << id
                << " is a different rule on different shards (ids are numbered per shard):\n"
                << RenderShardSilences(holders, absl::Now())
                << "expire it on one shard with --collector=HOST:PORT\n";
      return 2;
    }
    for (size_t i = 0; i < lists->size(); ++i) {
      for (const v1::Silence& s : (*lists)[i].silences()) {
        if (SameRule(s, holders[0].silence)) targets.emplace_back(i, s);
      }
    }
  }
  std::vector<ShardResult> results;
  for (const auto& [shard, silence] : targets) {
    v1::ExpireSilenceRequest request;
    request.set_id(silence.id());
    grpc::ClientContext ctx;
    ShardResult r{addresses[shard], "", silence};
    grpc::Status status = stubs[shard]->Expire(Deadline(&ctx), request, &r.silence);
    if (!status.ok()) r.error = StatusText(status);
    results.push_back(std::move(r));
  }
  return PrintSilenceResults(results, "expired");
}

int Silence(const SilenceStubs& stubs, const std::vector<std::string>& addresses,
            const std::vector<char*>& args) {
  const std::string verb = args.size() > 2 ? args[2] : "";
  if (verb == "add" && args.size() == 3) return SilenceAdd(stubs, addresses);
  if (verb == "list" && args.size() == 3) return SilenceList(stubs, addresses);
  if (verb == "expire" && args.size() == 4) return SilenceExpire(stubs, addresses, args[3]);
  std::cerr << "usage: " << kUsage << "\n";
  return 2;
}

int History(const std::vector<std::unique_ptr<v1::History::Stub>>& stubs) {
  v1::HistoryRequest request;
  request.set_location(absl::GetFlag(FLAGS_location));
  absl::StatusOr<SeriesMatcher> series =
      ParseSeriesMatcher(absl::GetFlag(FLAGS_key), absl::GetFlag(FLAGS_finding));
  if (!series.ok()) {
    std::cerr << "constance: " << series.status().message() << "\n";
    return 2;
  }
  request.set_family(series->family);
  request.set_key(series->key);
  request.set_kind(series->kind);
  if (const absl::Duration since = absl::GetFlag(FLAGS_since); since > absl::ZeroDuration()) {
    *request.mutable_since() = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
        absl::ToUnixNanos(absl::Now() - since));
  }
  std::vector<v1::HistoryResponse> shards(stubs.size());
  for (size_t i = 0; i < stubs.size(); ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout)));
    grpc::Status status = stubs[i]->Episodes(&ctx, request, &shards[i]);
    if (!status.ok()) return Fail("History", status);
  }
  const v1::HistoryResponse response = MergeHistory(shards, request.limit());
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(response);
  } else if (absl::GetFlag(FLAGS_csv)) {
    std::cout << RenderHistoryCsv(response, absl::Now());
  } else {
    std::cout << "Finding history (" << response.episodes_size() << " episodes):\n"
              << RenderHistory(response, absl::Now());
  }
  return 0;
}

// The feed streams oldest first; --json prints one JSON object per line
// as each arrives, the table and CSV once the stream ends.
int PriceDrops(v1::Board::Stub& stub) {
  v1::PriceDropsRequest request;
  request.set_location(absl::GetFlag(FLAGS_location));
  if (const absl::Duration since = absl::GetFlag(FLAGS_since); since > absl::ZeroDuration()) {
    *request.mutable_since() = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
        absl::ToUnixNanos(absl::Now() - since));
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout)));
  std::unique_ptr<grpc::ClientReader<v1::PriceDrop>> reader = stub.PriceDrops(&ctx, request);
  std::vector<v1::PriceDrop> drops;
  const bool json = absl::GetFlag(FLAGS_json);
  for (v1::PriceDrop drop; reader->Read(&drop);) {
    if (json) {
      std::cout << ToJson(drop) << "\n";
    } else {
      drops.push_back(drop);
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return Fail("PriceDrops", status);
  if (absl::GetFlag(FLAGS_csv)) {
    std::cout << RenderPriceDropsCsv(drops);
  } else if (!json) {
    std::cout << "Price drops (" << drops.size() << "):\n" << RenderPriceDrops(drops);
  }
  return 0;
}

int Record(v1::Board::Stub& stub, const std::string& location) {
  v1::RecordRequest request;
  request.set_location(location);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout)));
  v1::LocationRecord record;
  grpc::Status status = stub.Record(&ctx, request, &record);
  if (!status.ok()) return Fail("Record", status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(record);
  } else {
    std::cout << RenderRecord(record);
  }
  return 0;
}

int Publish(v1::Board::Stub& stub) {
  const std::string dir = absl::GetFlag(FLAGS_out);
  const std::string path = absl::GetFlag(FLAGS_catalog);
  if (dir.empty() || path.empty()) {
    std::cerr << "constance: publish needs --out=DIR (where the pages go) and "
                 "--catalog=catalog.yaml (which locations and promises are public)\n";
    return 2;
  }
  absl::StatusOr<collector::Catalog> catalog = collector::LoadCatalog(path);
  if (!catalog.ok()) {
    std::cerr << "constance: --catalog: " << catalog.status().message() << "\n";
    return 2;
  }
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    std::cerr << "constance: --out=" << dir << ": " << error.message() << "\n";
    return 2;
  }
  auto record_of = [&](const std::string& location) -> absl::StatusOr<v1::LocationRecord> {
    v1::RecordRequest request;
    request.set_location(location);
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout)));
    v1::LocationRecord record;
    grpc::Status status = stub.Record(&ctx, request, &record);
    if (!status.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          status.error_message());
    }
    return record;
  };
  absl::StatusOr<int> pages = collector::PublishBoard(*catalog, record_of, dir, absl::Now());
  if (!pages.ok()) {
    std::cerr << "constance: publish: " << pages.status().message() << "\n";
    return 1;
  }
  std::cout << "published " << *pages << " locations: " << dir << "/index.html\n";
  return 0;
}

int Replay(const std::vector<char*>& args) {
  ReplayOptions options;
  options.inputs.assign(args.begin() + 2, args.end());
  const std::string config_path = absl::GetFlag(FLAGS_config);
  if (config_path.empty()) {
    std::cerr << "constance: replay needs --config=agent.yaml: its drop_directory.files "
                 "mappings say how to read the files\n";
    return 2;
  }
  absl::StatusOr<agent::AgentConfig> config = agent::LoadAgentConfig(config_path);
  if (!config.ok()) {
    std::cerr << "constance: --config: " << config.status().message() << "\n";
    return 2;
  }
  options.drop = config->drop_directory;
  if (options.drop.files.empty()) {
    std::cerr << "constance: --config: " << config_path
              << " has no drop_directory.files mappings; add one per kind of exported file\n";
    return 2;
  }
  if (const std::string path = absl::GetFlag(FLAGS_catalog); !path.empty()) {
    absl::StatusOr<collector::Catalog> catalog = collector::LoadCatalog(path);
    if (!catalog.ok()) {
      std::cerr << "constance: --catalog: " << catalog.status().message() << "\n";
      return 2;
    }
    options.catalog = *std::move(catalog);
  }
  options.every = absl::GetFlag(FLAGS_every);
  options.json = absl::GetFlag(FLAGS_json);
  options.max_series = absl::GetFlag(FLAGS_max_series);
  absl::StatusOr<ReplayStats> stats = cli::Replay(options, std::cout, std::cerr);
  if (!stats.ok()) {
    std::cerr << "constance: replay: " << stats.status().message() << "\n";
    return 2;
  }
  return 0;
}

int Main(int argc, char** argv) {
  constance::SetVersionFlag("constance");
  absl::SetProgramUsageMessage(kUsage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) {
    std::cerr << "usage: " << kUsage << "\n";
    return 2;
  }
  if (std::string(args[1]) == "replay") {
    if (args.size() < 3) {
      std::cerr << "constance: replay needs at least one FILE or DIR\nusage: " << kUsage << "\n";
      return 2;
    }
    return Replay(args);
  }
  ChannelSecurity security = InsecureChannelSecurity();
  // Plaintext only reaches a collector started with --insecure; it carries
  // no credential, so nothing is given away by trying it.
  if (!absl::GetFlag(FLAGS_tls_ca).empty() || !absl::GetFlag(FLAGS_tls_cert).empty() ||
      !absl::GetFlag(FLAGS_tls_key).empty()) {
    TlsFiles files;
    files.ca = absl::GetFlag(FLAGS_tls_ca);
    files.cert = absl::GetFlag(FLAGS_tls_cert);
    files.key = absl::GetFlag(FLAGS_tls_key);
    files.server_name = absl::GetFlag(FLAGS_tls_server_name);
    absl::Status s = CheckTlsFiles(files, /*need_identity=*/true, "--tls_");
    absl::StatusOr<ChannelSecurity> tls =
        s.ok() ? MakeChannelSecurity(files) : absl::StatusOr<ChannelSecurity>(s);
    if (!tls.ok()) {
      std::cerr << "constance: " << tls.status().message()
                << " (the Query API of a TLS collector needs --tls_ca, --tls_cert and --tls_key "
                   "of an operator certificate)\n";
      return 2;
    }
    security = *std::move(tls);
  }
  absl::StatusOr<std::vector<std::string>> addresses =
      CollectorAddresses(absl::GetFlag(FLAGS_collector), absl::GetFlag(FLAGS_shards));
  if (!addresses.ok()) {
    std::cerr << "constance: " << addresses.status().message() << "\n";
    return 2;
  }
  grpc::ChannelArguments channel_args;
  security.Apply(&channel_args);
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  QueryStubs stubs;
  std::vector<std::unique_ptr<v1::History::Stub>> histories;
  for (const std::string& address : *addresses) {
    channels.push_back(grpc::CreateCustomChannel(address, security.credentials, channel_args));
    stubs.push_back(v1::Query::NewStub(channels.back()));
    histories.push_back(v1::History::NewStub(channels.back()));
  }
  const std::string command = args[1];
  if (command == "report" && args.size() == 2) return Report(stubs);
  if (command == "findings" && args.size() == 2) return Findings(stubs);
  if (command == "location" && args.size() == 3) return Location(stubs, args[2]);
  if (command == "history" && args.size() == 2) return History(histories);
  if (command == "key" && args.size() == 4) return Key(stubs, *addresses, args[2], args[3]);
  if (command == "silence") {
    SilenceStubs silences;
    for (const auto& channel : channels) silences.push_back(v1::Silences::NewStub(channel));
    return Silence(silences, *addresses, args);
  }
  const bool one_collector =
      command == "price-drops" || command == "record" || command == "publish";
  if (one_collector && channels.size() > 1) {
    std::cerr << "constance: " << command
              << " talks to one collector: give --collector the shard that holds the location\n";
    return 2;
  }
  if (command == "price-drops" && args.size() == 2) {
    auto board = v1::Board::NewStub(channels[0]);
    return PriceDrops(*board);
  }
  if (command == "record" && args.size() == 3) {
    auto board = v1::Board::NewStub(channels[0]);
    return Record(*board, args[2]);
  }
  if (command == "publish" && args.size() == 2) {
    auto board = v1::Board::NewStub(channels[0]);
    return Publish(*board);
  }
  std::cerr << "usage: " << kUsage << "\n";
  return 2;
}

}  // namespace
}  // namespace constance::cli

int main(int argc, char** argv) { return constance::cli::Main(argc, argv); }
