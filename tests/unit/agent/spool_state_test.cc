// Input state kept in the spool (Spool::AppendWithState / ReadState): in the
// same transaction as the observations, for both spools, and durable in
// the SQLite one.
#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>

#include "agent/spool.h"
#include "agent/sqlite_spool.h"
#include "gtest/gtest.h"

namespace constance::agent {
namespace {

v1::Observation Score(const std::string& key) {
  v1::Observation o;
  o.set_key(key);
  o.set_score(1);
  return o;
}

class SpoolStateTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    const char* base = getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/state_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    Open();
  }
  void TearDown() override {
    spool_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Open() {
    spool_.reset();
    SpoolOptions options;
    options.max_observations = 3;
    if (!GetParam()) {
      spool_ = std::make_unique<MemorySpool>(options);
      return;
    }
    auto s = SqliteSpool::Open(dir_ + "/spool.db", options);
    ASSERT_TRUE(s.ok()) << s.status();
    spool_ = *std::move(s);
  }
  std::string dir_;
  std::unique_ptr<Spool> spool_;
};

TEST_P(SpoolStateTest, StateGoesWithTheObservationsOrNotAtAll) {
  auto r = spool_->AppendWithState({Score("a"), Score("b")},
                                   {{"drop/1", "10"}, {"drop/2", "20"}, {"ticket/x", "1"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stored, 2u);
  // Too many for the bound: neither the observations nor the state change.
  r = spool_->AppendWithState({Score("c"), Score("d")}, {{"drop/1", "99"}});
  EXPECT_TRUE(absl::IsResourceExhausted(r.status())) << r.status();
  // State alone, with a delete.
  r = spool_->AppendWithState({}, {{"drop/2", std::nullopt}, {"drop/3", "30"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stored, 0u);
  auto state = spool_->ReadState("drop/");
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(*state, (std::map<std::string, std::string>{{"drop/1", "10"}, {"drop/3", "30"}}));
  EXPECT_EQ(spool_->Depth(), 2u);
  if (!GetParam()) return;
  Open();  // The durable spool keeps it across a restart.
  state = spool_->ReadState("");
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->size(), 3u);
  EXPECT_EQ(state->at("ticket/x"), "1");
  EXPECT_EQ(spool_->Depth(), 2u);
}

INSTANTIATE_TEST_SUITE_P(Spools, SpoolStateTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Sqlite" : "Memory";
                         });

}  // namespace
}  // namespace constance::agent
