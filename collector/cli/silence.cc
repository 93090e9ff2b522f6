#include "collector/cli/silence.h"

#include <algorithm>
#include <vector>

#include "nlohmann/json.hpp"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "collector/cli/report.h"
#include "constance/validate.h"
#include "google/protobuf/util/message_differencer.h"
#include "google/protobuf/util/time_util.h"

namespace constance::cli {
namespace {

using google::protobuf::util::TimeUtil;

absl::Status Invalid(absl::string_view flag, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(flag, ": ", why));
}

std::string Matchers(const v1::SilenceMatchers& m) {
  std::vector<std::string> parts;
  if (!m.location().empty()) parts.push_back(absl::StrCat("location=", m.location()));
  if (!m.region().empty()) parts.push_back(absl::StrCat("region=", m.region()));
  if (m.family() != v1::FAMILY_UNSPECIFIED) {
    const std::string family(FamilyName(m.family()));
    parts.push_back(m.key().empty() ? absl::StrCat("family=", family)
                                    : absl::StrCat("key=", family, ":", m.key()));
  }
  if (m.kind() != v1::FINDING_KIND_UNSPECIFIED) {
    parts.push_back(
        absl::StrCat("finding=", absl::AsciiStrToLower(v1::FindingKind_Name(m.kind()))));
  }
  return absl::StrJoin(parts, " ");
}

}  // namespace

absl::StatusOr<v1::FindingKind> ParseFindingKind(absl::string_view name) {
  v1::FindingKind kind;
  if (v1::FindingKind_Parse(absl::AsciiStrToUpper(name), &kind) &&
      kind != v1::FINDING_KIND_UNSPECIFIED) {
    return kind;
  }
  std::vector<std::string> kinds;  // From the enum: a new kind is listed by itself.
  const google::protobuf::EnumDescriptor* d = v1::FindingKind_descriptor();
  for (int i = 0; i < d->value_count(); ++i) {
    if (d->value(i)->number() != 0) kinds.push_back(absl::AsciiStrToLower(d->value(i)->name()));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("'", name, "' is not one of ", absl::StrJoin(kinds, ", ")));
}

absl::StatusOr<SeriesMatcher> ParseSeriesMatcher(absl::string_view key, absl::string_view finding) {
  SeriesMatcher out;
  if (!key.empty()) {
    std::pair<std::string, std::string> fk = absl::StrSplit(key, absl::MaxSplits(':', 1));
    if (fk.second.empty()) {
      return Invalid("--key",
                     absl::StrCat("'", key, "' is not FAMILY:KEY (e.g. price:coffee-250g)"));
    }
    if (absl::Status s = ParseFamily(fk.first, &out.family); !s.ok()) {
      return Invalid("--key", s.message());
    }
    out.key = fk.second;
  }
  if (!finding.empty()) {
    absl::StatusOr<v1::FindingKind> kind = ParseFindingKind(finding);
    if (!kind.ok()) return Invalid("--finding", kind.status().message());
    out.kind = *kind;
  }
  return out;
}

absl::StatusOr<v1::AddSilenceRequest> BuildSilence(const SilenceArgs& args, absl::Time now) {
  v1::AddSilenceRequest request;
  v1::SilenceMatchers* m = request.mutable_match();
  m->set_location(args.location);
  m->set_region(args.region);
  absl::StatusOr<SeriesMatcher> series = ParseSeriesMatcher(args.key, args.finding);
  if (!series.ok()) return series.status();
  m->set_family(series->family);
  m->set_key(series->key);
  m->set_kind(series->kind);
  const bool has_for = args.for_duration != absl::ZeroDuration();
  if (has_for == !args.until.empty()) {
    return Invalid("--for/--until",
                   "give exactly one: how long (--for=72h) or until when "
                   "(--until=2026-12-24T18:00:00Z)");
  }
  if (has_for) {
    if (args.for_duration < absl::ZeroDuration()) return Invalid("--for", "must be positive");
    *request.mutable_ends_at() =
        TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(now + args.for_duration));
  } else if (!TimeUtil::FromString(args.until, request.mutable_ends_at())) {
    return Invalid("--until", absl::StrCat("'", args.until,
                                           "' is not an RFC 3339 time (2026-12-24T18:00:00Z)"));
  }
  request.set_owner(args.owner);
  request.set_comment(args.comment);
  return request;
}

namespace {

// One silence: id, matchers, end, owner, authors; its comment indented on
// the next line.
std::string SilenceLines(const v1::Silence& s, absl::Time now) {
  const absl::Time end = absl::FromUnixNanos(TimeUtil::TimestampToNanoseconds(s.ends_at()));
  return absl::StrCat(s.id(), "  ", Matchers(s.match()), "  until ",
                      TimeUtil::ToString(s.ends_at()), end <= now ? " (ended)" : "", "  owner ",
                      s.owner(), " (added by ", s.author(),
                      s.expired_by().empty() ? "" : absl::StrCat(", expired by ", s.expired_by()),
                      ")\n    ", s.comment(), "\n");
}

}  // namespace

std::string RenderSilences(const v1::ListSilencesResponse& list, absl::Time now) {
  if (list.silences_size() == 0) return "No silences.\n";
  std::string out;
  for (const v1::Silence& s : list.silences()) absl::StrAppend(&out, SilenceLines(s, now));
  return out;
}

std::vector<ShardSilence> MergeSilenceLists(const std::vector<std::string>& shards,
                                            const std::vector<v1::ListSilencesResponse>& lists) {
  std::vector<ShardSilence> out;
  std::vector<size_t> shard_index;
  for (size_t i = 0; i < shards.size() && i < lists.size(); ++i) {
    for (const v1::Silence& s : lists[i].silences()) {
      out.push_back({shards[i], s});
      shard_index.push_back(i);
    }
  }
  std::vector<size_t> order(out.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const auto& sa = out[a].silence.starts_at();
    const auto& sb = out[b].silence.starts_at();
    if (sa != sb) return sa < sb;
    return shard_index[a] < shard_index[b];
  });
  std::vector<ShardSilence> sorted;
  for (size_t i : order) sorted.push_back(std::move(out[i]));
  return sorted;
}

std::string RenderShardSilences(const std::vector<ShardSilence>& silences, absl::Time now) {
  if (silences.empty()) return "No silences.\n";
  size_t width = 0;
  for (const ShardSilence& s : silences) width = std::max(width, s.shard.size());
  std::string out;
  for (const ShardSilence& s : silences) {
    std::string shard = s.shard;
    shard.resize(width + 2, ' ');
    absl::StrAppend(&out, shard, SilenceLines(s.silence, now));
  }
  return out;
}

std::string ShardSilencesJson(const std::vector<ShardSilence>& silences) {
  nlohmann::json list = nlohmann::json::array();
  for (const ShardSilence& s : silences) {
    nlohmann::json one = nlohmann::json::parse(ToJson(s.silence));
    one["shard"] = s.shard;
    list.push_back(std::move(one));
  }
  return nlohmann::json{{"silences", std::move(list)}}.dump(2) + "\n";
}

bool SameRule(const v1::Silence& a, const v1::Silence& b) {
  using google::protobuf::util::MessageDifferencer;
  return MessageDifferencer::Equals(a.match(), b.match()) && a.ends_at() == b.ends_at() &&
         a.owner() == b.owner() && a.comment() == b.comment();
}

std::string RenderShardResults(const std::vector<ShardResult>& results, absl::string_view verb) {
  size_t width = 0;
  for (const ShardResult& r : results) width = std::max(width, r.shard.size());
  std::string out;
  for (const ShardResult& r : results) {
    std::string shard = r.shard;
    shard.resize(width + 2, ' ');
    if (r.error.empty()) {
      absl::StrAppend(&out, shard, verb, " silence ", r.silence.id(), "\n");
    } else {
      absl::StrAppend(&out, shard, "FAILED: ", r.error, "\n");
    }
  }
  return out;
}

std::string ShardResultsJson(const std::vector<ShardResult>& results) {
  nlohmann::json list = nlohmann::json::array();
  for (const ShardResult& r : results) {
    nlohmann::json one = {{"shard", r.shard}};
    if (r.error.empty()) {
      one["silence"] = nlohmann::json::parse(ToJson(r.silence));
    } else {
      one["error"] = r.error;
    }
    list.push_back(std::move(one));
  }
  return nlohmann::json{{"results", std::move(list)}}.dump(2) + "\n";
}

}  // namespace constance::cli
