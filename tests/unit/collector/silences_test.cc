#include "collector/silences.h"

#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"

namespace constance::collector {
namespace {

using google::protobuf::util::TimeUtil;
using ::testing::HasSubstr;

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

google::protobuf::Timestamp At(absl::Time t) {
  return TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

v1::AddSilenceRequest Request(const std::string& location, absl::Duration length) {
  v1::AddSilenceRequest r;
  r.mutable_match()->set_location(location);
  *r.mutable_ends_at() = At(kNow + length);
  r.set_owner("anna");
  r.set_comment("price test OPS-12");
  return r;
}

v1::Finding Outlier(const std::string& location, const std::string& key,
                    const std::string& region) {
  v1::Finding f;
  f.set_id("f-" + location);
  f.set_kind(v1::OUTLIER);
  f.set_location(location);
  f.mutable_series()->set_family(v1::FAMILY_PRICE);
  f.mutable_series()->set_key(key);
  (*f.mutable_labels())["region"] = region;
  return f;
}

TEST(SilenceStoreTest, CoversWhatEveryMatcherNamesWhileActive) {
  SilenceStore store;
  v1::AddSilenceRequest r = Request("store-17", absl::Hours(2));
  r.mutable_match()->set_family(v1::FAMILY_PRICE);
  r.mutable_match()->set_key("coffee");
  absl::StatusOr<v1::Silence> s = store.Add(r, "ops-anna", kNow);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->id(), "1");
  EXPECT_EQ(s->author(), "ops-anna");
  EXPECT_EQ(store.Match(Outlier("store-17", "coffee", "north"), kNow), "1");
  EXPECT_EQ(store.Match(Outlier("store-17", "tea", "north"), kNow), "");     // Other key.
  EXPECT_EQ(store.Match(Outlier("store-18", "coffee", "north"), kNow), "");  // Other store.
  EXPECT_EQ(store.Match(Outlier("store-17", "coffee", "north"), kNow + absl::Hours(2)), "");
  EXPECT_EQ(store.Match(Outlier("store-17", "coffee", "north"), kNow - absl::Seconds(1)), "");
}

TEST(SilenceMatchesTest, MatchesOncePerEvaluationUntilSilencesChange) {
  SilenceStore store;
  SilenceMatches matches(&store);
  auto evaluation = std::make_shared<const std::vector<v1::Finding>>(std::vector<v1::Finding>{
      Outlier("store-17", "coffee", "north"), Outlier("store-18", "coffee", "north")});
  ASSERT_TRUE(store.Add(Request("store-18", absl::Hours(1)), "ops", kNow).ok());
  std::shared_ptr<const std::vector<std::string>> first = matches.For(evaluation, kNow);
  EXPECT_EQ(*first, (std::vector<std::string>{"", "1"}));
  // Scrapes of the same evaluation match nothing.
  for (int i = 1; i <= 3; ++i) matches.For(evaluation, kNow + absl::Minutes(i));
  EXPECT_EQ(matches.matched(), 1u);
  EXPECT_EQ(matches.For(evaluation, kNow + absl::Minutes(4)), first);

  // A new silence, the end of one and a new evaluation each match again.
  ASSERT_TRUE(store.Add(Request("store-17", absl::Hours(2)), "ops", kNow).ok());
  EXPECT_EQ(*matches.For(evaluation, kNow + absl::Minutes(5)),
            (std::vector<std::string>{"2", "1"}));
  EXPECT_EQ(matches.matched(), 2u);
  EXPECT_EQ(*matches.For(evaluation, kNow + absl::Hours(1)), (std::vector<std::string>{"2", ""}));
  EXPECT_EQ(matches.matched(), 3u);
  auto next = std::make_shared<const std::vector<v1::Finding>>(*evaluation);
  EXPECT_EQ(*matches.For(next, kNow + absl::Hours(1)), (std::vector<std::string>{"2", ""}));
  EXPECT_EQ(matches.matched(), 4u);
  // A silence that starts later is seen when it starts.
  v1::AddSilenceRequest later = Request("store-18", absl::Hours(5));
  *later.mutable_starts_at() = At(kNow + absl::Hours(3));
  ASSERT_TRUE(store.Add(later, "ops", kNow + absl::Hours(1)).ok());
  EXPECT_EQ(*matches.For(next, kNow + absl::Hours(1)), (std::vector<std::string>{"2", ""}));
  EXPECT_EQ(*matches.For(next, kNow + absl::Hours(3)), (std::vector<std::string>{"", "3"}));
}

TEST(SilenceStoreTest, RegionAndKindMatchers) {
  SilenceStore store;
  v1::AddSilenceRequest r = Request("", absl::Hours(1));
  r.mutable_match()->set_region("south");
  r.mutable_match()->set_kind(v1::OUTLIER);
  ASSERT_TRUE(store.Add(r, "ops", kNow).ok());
  EXPECT_EQ(store.Match(Outlier("store-1", "k", "south"), kNow), "1");
  EXPECT_EQ(store.Match(Outlier("store-1", "k", "north"), kNow), "");
  v1::Finding silent = Outlier("store-1", "k", "south");
  silent.set_kind(v1::SILENT);
  EXPECT_EQ(store.Match(silent, kNow), "");
}

TEST(SilenceStoreTest, RefusesIncompleteSilencesNamingWhatIsMissing) {
  SilenceStore store;
  v1::AddSilenceRequest none = Request("", absl::Hours(1));
  EXPECT_THAT(std::string(store.Add(none, "ops", kNow).status().message()),
              HasSubstr("at least one matcher"));
  v1::AddSilenceRequest no_owner = Request("s", absl::Hours(1));
  no_owner.clear_owner();
  EXPECT_THAT(std::string(store.Add(no_owner, "ops", kNow).status().message()), HasSubstr("owner"));
  v1::AddSilenceRequest no_comment = Request("s", absl::Hours(1));
  no_comment.clear_comment();
  EXPECT_THAT(std::string(store.Add(no_comment, "ops", kNow).status().message()),
              HasSubstr("comment"));
  EXPECT_THAT(std::string(store.Add(Request("s", -absl::Hours(1)), "ops", kNow).status().message()),
              HasSubstr("past"));
  EXPECT_THAT(
      std::string(store.Add(Request("s", absl::Hours(24 * 400)), "ops", kNow).status().message()),
      HasSubstr("exceptions"));
  v1::AddSilenceRequest key_only = Request("", absl::Hours(1));
  key_only.mutable_match()->set_key("coffee");
  EXPECT_THAT(std::string(store.Add(key_only, "ops", kNow).status().message()),
              HasSubstr("family"));
  EXPECT_TRUE(store.List(true, kNow).empty());  // Nothing half-added.
}

TEST(SilenceStoreTest, ExpireEndsItAndKeepsItListed) {
  SilenceStore store;
  ASSERT_TRUE(store.Add(Request("store-1", absl::Hours(5)), "ops-anna", kNow).ok());
  absl::StatusOr<v1::Silence> e = store.Expire("1", "ops-bob", kNow + absl::Hours(1));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->expired_by(), "ops-bob");
  EXPECT_EQ(store.Match(Outlier("store-1", "k", "r"), kNow + absl::Hours(1)), "");
  EXPECT_TRUE(store.List(false, kNow + absl::Hours(1)).empty());
  EXPECT_EQ(store.List(true, kNow + absl::Hours(1)).size(), 1u);
  EXPECT_TRUE(absl::IsFailedPrecondition(store.Expire("1", "ops", kNow + absl::Hours(2)).status()));
  EXPECT_TRUE(absl::IsNotFound(store.Expire("9", "ops", kNow).status()));
  ASSERT_EQ(store.Audit().size(), 2u);
  EXPECT_EQ(store.Audit()[1].action, "expire");
  EXPECT_EQ(store.Audit()[1].author, "ops-bob");
}

TEST(SilenceStoreTest, MarkKeepsAnExceptionsName) {
  SilenceStore store;
  ASSERT_TRUE(store.Add(Request("store-1", absl::Hours(1)), "ops", kNow).ok());
  google::protobuf::RepeatedPtrField<v1::Finding> findings;
  *findings.Add() = Outlier("store-1", "a", "r");
  *findings.Add() = Outlier("store-1", "b", "r");
  findings[1].set_silenced_by("exception:catalog.yaml:12");
  *findings.Add() = Outlier("store-2", "a", "r");
  store.Mark(&findings, kNow);
  EXPECT_EQ(findings[0].silenced_by(), "1");
  EXPECT_EQ(findings[1].silenced_by(), "exception:catalog.yaml:12");
  EXPECT_EQ(findings[2].silenced_by(), "");
}

class DurableSilencesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/silences-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { (void)std::system(("rm -rf " + dir_).c_str()); }
  std::string dir_;
};

TEST_F(DurableSilencesTest, SilencesAuditAndIdsSurviveReopening) {
  const std::string path = dir_ + "/silences.db";
  {
    absl::StatusOr<std::unique_ptr<SilenceStore>> store = SilenceStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->Add(Request("store-1", absl::Hours(1)), "ops-anna", kNow).ok());
    ASSERT_TRUE((*store)->Add(Request("store-2", absl::Hours(1)), "ops-anna", kNow).ok());
    ASSERT_TRUE((*store)->Expire("2", "ops-bob", kNow).ok());
  }
  absl::StatusOr<std::unique_ptr<SilenceStore>> store = SilenceStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->Match(Outlier("store-1", "k", "r"), kNow), "1");
  EXPECT_EQ((*store)->Match(Outlier("store-2", "k", "r"), kNow), "");
  EXPECT_EQ((*store)->Audit().size(), 3u);
  // Ids are never reused, even once the newest silence is pruned.
  const absl::Time later = kNow + absl::Hours(24 * 40);
  absl::StatusOr<v1::Silence> next =
      (*store)->Add(Request("store-3", absl::Hours(24 * 41)), "ops", later);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->id(), "3");
  EXPECT_EQ((*store)->List(true, later).size(), 1u);  // 1 and 2 pruned.
}

TEST_F(DurableSilencesTest, AnUnwritableStateDirectoryIsNamed) {
  absl::StatusOr<std::unique_ptr<SilenceStore>> store =
      SilenceStore::Open(dir_ + "/missing/silences.db");
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("missing/silences.db"));
}

}  // namespace
}  // namespace constance::collector
