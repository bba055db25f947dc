#include "registry/health_tracker.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace haven::registry {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using Kind = HealthAction::Kind;

const CheckKey kKey{"n1", "c1"};

pb::Check TtlCheck(int64_t ttl_ms, const std::string& status = "critical") {
  pb::Check c;
  c.set_id("c1");
  c.set_node("n1");
  c.set_service_id("web-1");
  c.set_status(status);
  c.mutable_definition()->set_ttl_ms(ttl_ms);
  return c;
}

pb::Check HttpCheck(int64_t interval_ms, const std::string& status = "critical") {
  pb::Check c = TtlCheck(0, status);
  c.mutable_definition()->set_http("http://127.0.0.1:1/health");
  c.mutable_definition()->set_interval_ms(interval_ms);
  return c;
}

// Feeds one result and returns the action's status, "" for no action.
std::string ResultStatus(HealthTracker& t, const std::string& status, MonoMs now) {
  auto r = t.OnResult(kKey, status, "out", now);
  EXPECT_TRUE(r.ok()) << r.status().message();
  if (!r.ok() || !r->has_value()) return "";
  EXPECT_EQ((*r)->kind, Kind::kSetStatus);
  return (*r)->status;
}

class HealthTrackerTest : public ::testing::Test {
 protected:
  HealthTracker t_;
  MonoMs now_ = 1'000'000;
};

TEST_F(HealthTrackerTest, TtlPassThenExpiryExactlyAfterTtl) {
  t_.OnCheckChanged(kKey, nullptr, now_);
  EXPECT_EQ(t_.tracked_checks(), 0u);
  pb::Check c = TtlCheck(10'000);
  t_.OnCheckChanged(kKey, &c, now_);
  EXPECT_EQ(t_.tracked_checks(), 1u);
  EXPECT_EQ(t_.NextDeadline(), now_ + 10'000);

  EXPECT_EQ(ResultStatus(t_, "passing", now_ + 1'000), "passing");
  c.set_status("passing");  // the proposal committed
  t_.OnCheckChanged(kKey, &c, now_ + 1'100);
  EXPECT_EQ(t_.NextDeadline(), now_ + 11'000);

  EXPECT_THAT(t_.Tick(now_ + 10'999), IsEmpty());
  auto actions = t_.Tick(now_ + 11'000);
  ASSERT_EQ(actions.size(), 1u);
  EXPECT_EQ(actions[0].kind, Kind::kSetStatus);
  EXPECT_EQ(actions[0].node, "n1");
  EXPECT_EQ(actions[0].check_id, "c1");
  EXPECT_EQ(actions[0].status, "critical");
  EXPECT_EQ(actions[0].output, "TTL expired");
  EXPECT_THAT(t_.Tick(now_ + 50'000), IsEmpty());  // once
  EXPECT_EQ(t_.NextDeadline(), std::nullopt);
}

TEST_F(HealthTrackerTest, NewTrackerGivesFullTtlGrace) {
  pb::Check c = TtlCheck(5'000, "passing");
  t_.OnCheckChanged(kKey, &c, now_);
  EXPECT_THAT(t_.Tick(now_ + 4'999), IsEmpty());
  EXPECT_EQ(t_.Tick(now_ + 5'000).size(), 1u);
}

// A follower tracks checks without heartbeats (they go to the leader); when it becomes leader,
// a TTL that would expire soon after (registered shortly before) must get a full TTL of grace.
TEST_F(HealthTrackerTest, NewLeaderGivesFullTtlToRecentlyRegisteredCheck) {
  pb::Check c = TtlCheck(10'000, "passing");
  t_.OnCheckChanged(kKey, &c, now_);  // registered as a follower
  const MonoMs elected = now_ + 4'000;
  t_.OnCheckChanged(kKey, &c, elected);  // TrackEverything on leadership
  t_.RestartTtls(elected);
  EXPECT_THAT(t_.Tick(now_ + 10'000), IsEmpty());  // the follower's old deadline
  EXPECT_THAT(t_.Tick(elected + 9'999), IsEmpty());
  auto actions = t_.Tick(elected + 10'000);
  ASSERT_EQ(actions.size(), 1u);
  EXPECT_EQ(actions[0].status, "critical");
}

// A follower's TTL timer fires (its action is dropped: only a leader proposes); as the new leader
// the check must still expire one TTL later if no heartbeat comes, and a heartbeat keeps it.
TEST_F(HealthTrackerTest, NewLeaderExpiresTtlAFollowerSawExpire) {
  pb::Check c = TtlCheck(10'000, "passing");
  t_.OnCheckChanged(kKey, &c, now_);
  EXPECT_EQ(t_.Tick(now_ + 10'000).size(), 1u);  // as a follower: dropped
  const MonoMs elected = now_ + 60'000;
  t_.OnCheckChanged(kKey, &c, elected);  // committed status is still passing
  t_.RestartTtls(elected);
  EXPECT_THAT(t_.Tick(elected + 9'999), IsEmpty());
  auto actions = t_.Tick(elected + 10'000);
  ASSERT_EQ(actions.size(), 1u);
  EXPECT_EQ(actions[0].status, "critical");
  EXPECT_EQ(actions[0].output, "TTL expired");

  // Heartbeats keep it passing from then on.
  c.set_status("critical");
  t_.OnCheckChanged(kKey, &c, elected + 10'001);
  EXPECT_EQ(ResultStatus(t_, "passing", elected + 11'000), "passing");
  EXPECT_THAT(t_.Tick(elected + 20'999), IsEmpty());
}

TEST_F(HealthTrackerTest, NewLeaderRevivesSessionsAFollowerSawExpire) {
  pb::Session s;
  s.set_id("s1");
  s.set_ttl_ms(10'000);
  t_.OnSessionChanged("s1", &s, now_);
  EXPECT_EQ(t_.Tick(now_ + 10'000).size(), 1u);  // as a follower: the destroy is not proposed
  const MonoMs elected = now_ + 30'000;
  t_.OnSessionChanged("s1", &s, elected);
  t_.RestartTtls(elected);
  EXPECT_TRUE(t_.RenewSession("s1", elected + 1'000));
  EXPECT_THAT(t_.Tick(elected + 10'999), IsEmpty());
  auto actions = t_.Tick(elected + 11'000);
  ASSERT_EQ(actions.size(), 1u);
  EXPECT_EQ(actions[0].kind, Kind::kDestroySession);
}

TEST_F(HealthTrackerTest, NewLeaderDeregistersWhatAFollowerTimerDropped) {
  pb::Check c = TtlCheck(10'000, "critical");
  c.mutable_definition()->set_deregister_critical_after_ms(5'000);
  t_.OnCheckChanged(kKey, &c, now_);
  auto as_follower = t_.Tick(now_ + 5'000);  // dropped: only a leader proposes
  ASSERT_EQ(as_follower.size(), 1u);
  EXPECT_EQ(as_follower[0].kind, Kind::kDeregisterService);
  const MonoMs elected = now_ + 20'000;
  t_.OnCheckChanged(kKey, &c, elected);
  t_.RestartTtls(elected);
  auto actions = t_.Tick(elected);
  ASSERT_EQ(actions.size(), 1u);
  EXPECT_EQ(actions[0].kind, Kind::kDeregisterService);
  EXPECT_EQ(actions[0].service_id, "web-1");
}

TEST_F(HealthTrackerTest, HeartbeatOnPassingReturnsNoAction) {
  pb::Check c = TtlCheck(10'000, "passing");
  c.set_output("out");  // the heartbeats repeat the committed output: nothing to write
  t_.OnCheckChanged(kKey, &c, now_);
  for (int i = 1; i <= 5; ++i) {
    EXPECT_EQ(ResultStatus(t_, "passing", now_ + i * 5'000), "");
  }
  EXPECT_THAT(t_.Tick(now_ + 34'999), IsEmpty());  // each heartbeat pushed the deadline
  EXPECT_EQ(ResultStatus(t_, "warning", now_ + 35'000), "warning");
  EXPECT_EQ(ResultStatus(t_, "warning", now_ + 36'000), "");  // already proposed
}

TEST_F(HealthTrackerTest, UntrackedAndInvalidResults) {
  auto r = t_.OnResult(kKey, "passing", "", now_);
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  pb::Check c = TtlCheck(10'000);
  t_.OnCheckChanged(kKey, &c, now_);
  r = t_.OnResult(kKey, "bogus", "", now_);
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  pb::Check plain = TtlCheck(0);  // no TTL, no probe, no deregister: nothing to track
  t_.OnCheckChanged(kKey, &plain, now_);
  EXPECT_EQ(t_.tracked_checks(), 0u);
  EXPECT_EQ(t_.Definition(kKey), nullptr);
}

TEST_F(HealthTrackerTest, FlapDampingCountsConsecutiveResults) {
  pb::Check c = HttpCheck(1'000);
  c.mutable_definition()->set_success_before_passing(3);
  c.mutable_definition()->set_failures_before_critical(2);
  c.set_output("out");  // same output as the results: only the status damping is under test
  t_.OnCheckChanged(kKey, &c, now_);
  EXPECT_EQ(ResultStatus(t_, "passing", now_), "");
  EXPECT_EQ(ResultStatus(t_, "passing", now_), "");
  EXPECT_EQ(ResultStatus(t_, "critical", now_), "");  // resets the success streak
  EXPECT_EQ(ResultStatus(t_, "passing", now_), "");
  EXPECT_EQ(ResultStatus(t_, "passing", now_), "");
  EXPECT_EQ(ResultStatus(t_, "passing", now_), "passing");
  EXPECT_EQ(ResultStatus(t_, "critical", now_), "");
  EXPECT_EQ(ResultStatus(t_, "critical", now_), "critical");
  EXPECT_EQ(ResultStatus(t_, "warning", now_), "warning");  // immediate
}

TEST_F(HealthTrackerTest, DeregisterAfterCriticalForOnce) {
  pb::Check c = TtlCheck(1'000, "passing");
  c.mutable_definition()->set_deregister_critical_after_ms(30'000);
  t_.OnCheckChanged(kKey, &c, now_);
  auto actions = t_.Tick(now_ + 1'000);  // TTL expired: critical since now_+1000
  ASSERT_EQ(actions.size(), 1u);
  EXPECT_EQ(actions[0].status, "critical");
  EXPECT_THAT(t_.Tick(now_ + 30'999), IsEmpty());
  actions = t_.Tick(now_ + 31'000);
  ASSERT_EQ(actions.size(), 1u);
  EXPECT_EQ(actions[0].kind, Kind::kDeregisterService);
  EXPECT_EQ(actions[0].node, "n1");
  EXPECT_EQ(actions[0].service_id, "web-1");
  EXPECT_THAT(t_.Tick(now_ + 100'000), IsEmpty());
}

TEST_F(HealthTrackerTest, RecoveryCancelsDeregister) {
  pb::Check c = TtlCheck(60'000, "critical");
  c.mutable_definition()->set_deregister_critical_after_ms(10'000);
  t_.OnCheckChanged(kKey, &c, now_);
  EXPECT_EQ(ResultStatus(t_, "passing", now_ + 5'000), "passing");
  EXPECT_THAT(t_.Tick(now_ + 20'000), IsEmpty());
}

TEST_F(HealthTrackerTest, SessionTtl) {
  pb::Session s;
  s.set_id("s1");
  s.set_ttl_ms(10'000);
  EXPECT_FALSE(t_.RenewSession("s1", now_));
  t_.OnSessionChanged("s1", &s, now_);
  EXPECT_TRUE(t_.RenewSession("s1", now_ + 5'000));
  EXPECT_THAT(t_.Tick(now_ + 14'999), IsEmpty());
  auto actions = t_.Tick(now_ + 15'000);
  ASSERT_EQ(actions.size(), 1u);
  EXPECT_EQ(actions[0].kind, Kind::kDestroySession);
  EXPECT_EQ(actions[0].session_id, "s1");
  EXPECT_THAT(t_.Tick(now_ + 100'000), IsEmpty());
  EXPECT_FALSE(t_.RenewSession("s1", now_ + 100'000));  // destroy already proposed

  pb::Session forever;
  forever.set_id("s2");
  t_.OnSessionChanged("s2", &forever, now_);
  EXPECT_TRUE(t_.RenewSession("s2", now_));
  t_.OnSessionChanged("s2", nullptr, now_);
  EXPECT_FALSE(t_.RenewSession("s2", now_));
}

TEST_F(HealthTrackerTest, DueProbesFollowIntervals) {
  pb::Check c = HttpCheck(1'000);
  t_.OnCheckChanged(kKey, &c, now_);
  ASSERT_NE(t_.Definition(kKey), nullptr);
  EXPECT_EQ(t_.Definition(kKey)->http(), "http://127.0.0.1:1/health");
  EXPECT_EQ(t_.NextDeadline(), now_);
  EXPECT_THAT(t_.DueProbes(now_), ElementsAre(kKey));  // first probe at once
  EXPECT_THAT(t_.DueProbes(now_ + 999), IsEmpty());
  EXPECT_EQ(t_.NextDeadline(), now_ + 1'000);
  EXPECT_THAT(t_.DueProbes(now_ + 1'000), ElementsAre(kKey));
  EXPECT_THAT(t_.DueProbes(now_ + 1'500), IsEmpty());
  t_.OnCheckChanged(kKey, nullptr, now_ + 1'500);
  EXPECT_THAT(t_.DueProbes(now_ + 10'000), IsEmpty());
  EXPECT_EQ(t_.NextDeadline(), std::nullopt);
}

TEST_F(HealthTrackerTest, ProbeIntervalIsClamped) {
  pb::Check c = HttpCheck(1);
  t_.OnCheckChanged(kKey, &c, now_);
  EXPECT_EQ(t_.DueProbes(now_).size(), 1u);
  EXPECT_EQ(t_.NextDeadline(), now_ + kMinProbeIntervalMs);
}

TEST_F(HealthTrackerTest, NextDeadlineIsEarliestOfTimersAndProbes) {
  EXPECT_EQ(t_.NextDeadline(), std::nullopt);
  pb::Check ttl = TtlCheck(3'000);
  t_.OnCheckChanged(kKey, &ttl, now_);
  pb::Check probe = HttpCheck(5'000);
  probe.set_id("c2");
  CheckKey k2{"n1", "c2"};
  t_.OnCheckChanged(k2, &probe, now_);
  t_.DueProbes(now_);
  EXPECT_EQ(t_.NextDeadline(), now_ + 3'000);
  t_.OnCheckChanged(kKey, nullptr, now_);
  EXPECT_EQ(t_.NextDeadline(), now_ + 5'000);
}

TEST_F(HealthTrackerTest, ManyChecksAndHeartbeatsStayBounded) {
  constexpr int kChecks = 10'000;
  for (int i = 0; i < kChecks; ++i) {
    pb::Check c = TtlCheck(10'000, "passing");
    c.set_id("c" + std::to_string(i));
    t_.OnCheckChanged({"n1", c.id()}, &c, now_);
  }
  for (int round = 1; round <= 20; ++round) {
    for (int i = 0; i < kChecks; ++i) {
      auto r = t_.OnResult({"n1", "c" + std::to_string(i)}, "passing", "", now_ + round * 1'000);
      ASSERT_TRUE(r.ok());
      ASSERT_FALSE(r->has_value());
    }
  }
  EXPECT_THAT(t_.Tick(now_ + 29'999), IsEmpty());
  EXPECT_EQ(t_.Tick(now_ + 30'000).size(), static_cast<size_t>(kChecks));
}

}  // namespace
}  // namespace haven::registry

namespace haven::registry {
namespace {

TEST_F(HealthTrackerTest, OutputAloneIsWrittenFirstThenAtMostOncePerInterval) {
  pb::Check c = HttpCheck(1'000);  // starts critical with no output
  t_.OnCheckChanged(kKey, &c, now_);
  auto first = t_.OnResult(kKey, "critical", "connection refused", now_);
  ASSERT_TRUE(first.ok() && first->has_value());  // the first output is written at once
  EXPECT_EQ((*first)->status, "critical");
  EXPECT_EQ((*first)->output, "connection refused");
  c.set_output("connection refused");
  t_.OnCheckChanged(kKey, &c, now_ + 10);

  auto same = t_.OnResult(kKey, "critical", "connection refused", now_ + 1'000);
  ASSERT_TRUE(same.ok());
  EXPECT_FALSE(same->has_value());  // nothing new: no write
  auto soon = t_.OnResult(kKey, "critical", "timeout", now_ + 2'000);
  ASSERT_TRUE(soon.ok());
  EXPECT_FALSE(soon->has_value());  // new output, but the last write is recent
  auto later = t_.OnResult(kKey, "critical", "timeout", now_ + kOutputSyncIntervalMs);
  ASSERT_TRUE(later.ok() && later->has_value());
  EXPECT_EQ((*later)->output, "timeout");
}

}  // namespace
}  // namespace haven::registry
