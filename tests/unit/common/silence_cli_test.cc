#include <string>

#include "absl/strings/str_cat.h"
#include "collector/cli/silence.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"

namespace constance::cli {
namespace {

using google::protobuf::util::TimeUtil;
using ::testing::HasSubstr;

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

TEST(SilenceCliTest, BuildsTheRequestFromFlags) {
  SilenceArgs a;
  a.location = "store-17";
  a.key = "price:coffee-250g";
  a.finding = "outlier";
  a.for_duration = absl::Hours(72);
  a.owner = "anna";
  a.comment = "price test";
  absl::StatusOr<v1::AddSilenceRequest> r = BuildSilence(a, kNow);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->match().location(), "store-17");
  EXPECT_EQ(r->match().family(), v1::FAMILY_PRICE);
  EXPECT_EQ(r->match().key(), "coffee-250g");
  EXPECT_EQ(r->match().kind(), v1::OUTLIER);
  EXPECT_EQ(TimeUtil::TimestampToSeconds(r->ends_at()), absl::ToUnixSeconds(kNow) + 72 * 3600);
  EXPECT_EQ(r->owner(), "anna");
}

TEST(SilenceCliTest, SeriesMatcherIsParsedOneWayForSilencesAndHistory) {
  static const struct {
    const char* key;
    const char* finding;
    v1::Family family;
    const char* want_key;
    v1::FindingKind kind;
    const char* error;  // Empty: parses.
  } kCases[] = {
      {"", "", v1::FAMILY_UNSPECIFIED, "", v1::FINDING_KIND_UNSPECIFIED, ""},
      {"price:coffee-250g", "", v1::FAMILY_PRICE, "coffee-250g", v1::FINDING_KIND_UNSPECIFIED, ""},
      {"price:a:b", "split", v1::FAMILY_PRICE, "a:b", v1::SPLIT, ""},
      {"", "silent", v1::FAMILY_UNSPECIFIED, "", v1::SILENT, ""},
      {"coffee", "", v1::FAMILY_UNSPECIFIED, "", v1::FINDING_KIND_UNSPECIFIED,
       "--key: 'coffee' is not FAMILY:KEY"},
      {"prices:coffee", "", v1::FAMILY_UNSPECIFIED, "", v1::FINDING_KIND_UNSPECIFIED, "--key: "},
      {"", "outlyer", v1::FAMILY_UNSPECIFIED, "", v1::FINDING_KIND_UNSPECIFIED,
       "--finding: 'outlyer' is not one of outlier"},
  };
  for (const auto& c : kCases) {
    SCOPED_TRACE(absl::StrCat(c.key, " ", c.finding));
    absl::StatusOr<SeriesMatcher> m = ParseSeriesMatcher(c.key, c.finding);
    if (*c.error != '\0') {
      EXPECT_THAT(std::string(m.status().message()), HasSubstr(c.error));
      continue;
    }
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->family, c.family);
    EXPECT_EQ(m->key, c.want_key);
    EXPECT_EQ(m->kind, c.kind);
  }
}

TEST(SilenceCliTest, UntilTakesRfc3339) {
  SilenceArgs a;
  a.region = "north";
  a.until = "2027-01-02T03:04:05Z";
  absl::StatusOr<v1::AddSilenceRequest> r = BuildSilence(a, kNow);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(TimeUtil::ToString(r->ends_at()), "2027-01-02T03:04:05Z");
}

TEST(SilenceCliTest, MalformedFlagsAreNamed) {
  SilenceArgs both;
  both.for_duration = absl::Hours(1);
  both.until = "2027-01-02T03:04:05Z";
  EXPECT_THAT(std::string(BuildSilence(both, kNow).status().message()), HasSubstr("--for/--until"));
  EXPECT_THAT(std::string(BuildSilence(SilenceArgs{}, kNow).status().message()),
              HasSubstr("exactly one"));
  SilenceArgs bad_key;
  bad_key.for_duration = absl::Hours(1);
  bad_key.key = "coffee";
  EXPECT_THAT(std::string(BuildSilence(bad_key, kNow).status().message()), HasSubstr("FAMILY:KEY"));
  SilenceArgs bad_family = bad_key;
  bad_family.key = "prices:coffee";
  EXPECT_THAT(std::string(BuildSilence(bad_family, kNow).status().message()), HasSubstr("--key"));
  SilenceArgs bad_kind = bad_key;
  bad_kind.key.clear();
  bad_kind.finding = "outlyer";
  EXPECT_THAT(std::string(BuildSilence(bad_kind, kNow).status().message()),
              HasSubstr("not one of outlier, split"));
  SilenceArgs bad_until;
  bad_until.until = "tomorrow";
  EXPECT_THAT(std::string(BuildSilence(bad_until, kNow).status().message()), HasSubstr("RFC 3339"));
}

TEST(SilenceCliTest, ListShowsMatchersOwnerAndEnded) {
  v1::ListSilencesResponse list;
  v1::Silence* s = list.add_silences();
  s->set_id("4");
  s->mutable_match()->set_location("store-17");
  s->mutable_match()->set_family(v1::FAMILY_PRICE);
  s->mutable_match()->set_key("coffee-250g");
  *s->mutable_ends_at() = TimeUtil::SecondsToTimestamp(absl::ToUnixSeconds(kNow) - 1);
  s->set_owner("anna");
  s->set_author("ops-anna");
  s->set_comment("price test");
  const std::string text = RenderSilences(list, kNow);
  EXPECT_THAT(text, HasSubstr("4  location=store-17 key=price:coffee-250g"));
  EXPECT_THAT(text, HasSubstr("(ended)"));
  EXPECT_THAT(text, HasSubstr("owner anna (added by ops-anna)"));
  EXPECT_EQ(RenderSilences(v1::ListSilencesResponse(), kNow), "No silences.\n");
}

v1::Silence Rule(const std::string& id, int64_t starts) {
  v1::Silence s;
  s.set_id(id);
  s.mutable_match()->set_region("north");
  *s.mutable_starts_at() = TimeUtil::SecondsToTimestamp(starts);
  *s.mutable_ends_at() = TimeUtil::SecondsToTimestamp(absl::ToUnixSeconds(kNow) + 3600);
  s.set_owner("anna");
  s.set_comment("refit");
  return s;
}

TEST(SilenceCliTest, ShardListsMergeWithCopiesOfOneRuleTogether) {
  v1::ListSilencesResponse north, south;
  *north.add_silences() = Rule("1", 100);
  *north.add_silences() = Rule("2", 300);
  *south.add_silences() = Rule("1", 200);  // Another rule that happens to be 1 there.
  *south.add_silences() = Rule("2", 300);  // The copy of north's 2.
  south.mutable_silences(0)->set_comment("other");
  const std::vector<ShardSilence> merged =
      MergeSilenceLists({"north:7070", "south:7070"}, {north, south});
  ASSERT_EQ(merged.size(), 4u);
  EXPECT_EQ(merged[0].shard, "north:7070");
  EXPECT_EQ(merged[1].shard, "south:7070");
  EXPECT_EQ(merged[1].silence.comment(), "other");
  EXPECT_EQ(merged[2].shard, "north:7070");
  EXPECT_EQ(merged[3].shard, "south:7070");
  EXPECT_TRUE(SameRule(merged[2].silence, merged[3].silence));
  EXPECT_FALSE(SameRule(merged[0].silence, merged[1].silence));
  const std::string text = RenderShardSilences(merged, kNow);
  EXPECT_THAT(text, HasSubstr("north:7070  1  region=north  until "));
  EXPECT_THAT(text, HasSubstr("south:7070  2  region=north"));
  EXPECT_THAT(ShardSilencesJson(merged), HasSubstr("\"shard\": \"south:7070\""));
  EXPECT_EQ(RenderShardSilences({}, kNow), "No silences.\n");
}

TEST(SilenceCliTest, ShardResultsSayWhichShardFailed) {
  std::vector<ShardResult> results = {{"north:7070", "", Rule("3", 100)},
                                      {"south:7070", "connection refused (code 14)", {}}};
  const std::string text = RenderShardResults(results, "added");
  EXPECT_THAT(text, HasSubstr("north:7070  added silence 3\n"));
  EXPECT_THAT(text, HasSubstr("south:7070  FAILED: connection refused (code 14)\n"));
  const std::string json = ShardResultsJson(results);
  EXPECT_THAT(json, HasSubstr("\"error\": \"connection refused (code 14)\""));
  EXPECT_THAT(json, HasSubstr("\"id\": \"3\""));
}

}  // namespace
}  // namespace constance::cli
