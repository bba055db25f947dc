// The leader's member-liveness decisions (src/node/member_liveness.h): when a silent member is
// probed, what a probe's answer proves, and which members' consumers are dropped and why.
#include "node/member_liveness.h"

#include <gtest/gtest.h>

namespace haven::node {
namespace {

using Reason = MemberDropPolicy::Reason;

// Leading since 0 with `members` known (first seen then).
void StartLeading(PeerProbeSchedule& s, const std::vector<uint64_t>& members) {
  s.BecomeLeader(0);
  ASSERT_TRUE(s.DueProbes(0, members).empty());
}

PeerProbeSchedule Schedule() {
  return PeerProbeSchedule({/*silence_ms=*/100, /*max_backoff=*/1000});
}

TEST(PeerProbeSchedule, ProbesOnlyAMemberSilentForTheSilenceWindow) {
  PeerProbeSchedule s = Schedule();
  s.BecomeLeader(0);
  EXPECT_TRUE(s.DueProbes(0, {2, 3}).empty()) << "members first seen get the grace";
  s.Heard(2, 50);
  s.Heard(3, 50);
  EXPECT_TRUE(s.DueProbes(149, {2, 3}).empty());
  s.Heard(2, 120);
  EXPECT_EQ(s.DueProbes(150, {2, 3}), std::vector<uint64_t>{3});
  EXPECT_TRUE(s.DueProbes(400, {2, 3}) == std::vector<uint64_t>{2}) << "3 is in flight already";
}

TEST(PeerProbeSchedule, RefusedWithNothingHeardMeansGone) {
  PeerProbeSchedule s = Schedule();
  StartLeading(s, {2});
  ASSERT_EQ(s.DueProbes(100, {2}), std::vector<uint64_t>{2});
  EXPECT_TRUE(s.ProbeDone(2, /*refused=*/true, 101));
  EXPECT_EQ(s.gone(), std::set<uint64_t>{2});
  EXPECT_TRUE(s.DueProbes(500, {2}).empty()) << "a gone member is not probed again";
  s.Heard(2, 600);  // restarted
  EXPECT_TRUE(s.gone().empty());
}

TEST(PeerProbeSchedule, AFrameDuringTheProbeOutweighsARefusal) {
  PeerProbeSchedule s = Schedule();
  StartLeading(s, {2});
  ASSERT_EQ(s.DueProbes(100, {2}), std::vector<uint64_t>{2});
  s.Heard(2, 101);  // e.g. restarted and answering before the refusal came back
  EXPECT_FALSE(s.ProbeDone(2, true, 102));
  EXPECT_TRUE(s.gone().empty());
}

TEST(PeerProbeSchedule, AnAcceptedOrTimedOutProbeProvesNothingAndBacksOff) {
  PeerProbeSchedule s = Schedule();
  StartLeading(s, {2});
  // A paused process (SIGSTOP) accepts: probed again after 100, 200, 400, 800 ms, then every 1 s.
  int64_t now = 100;
  ASSERT_EQ(s.DueProbes(now, {2}), std::vector<uint64_t>{2});
  std::vector<int64_t> gaps;
  for (int i = 0; i < 6; ++i) {
    EXPECT_FALSE(s.ProbeDone(2, /*refused=*/false, now));
    int64_t next = now + 1;
    while (s.DueProbes(next, {2}).empty() && next < now + 5000) ++next;  // starts the next one
    gaps.push_back(next - now);
    now = next;
  }
  EXPECT_EQ(gaps, (std::vector<int64_t>{100, 200, 400, 800, 1000, 1000}));
  EXPECT_TRUE(s.gone().empty());
}

TEST(PeerProbeSchedule, BackoffRestartsOnceHeard) {
  PeerProbeSchedule s = Schedule();
  StartLeading(s, {2});
  ASSERT_EQ(s.DueProbes(100, {2}).size(), 1u);
  s.ProbeDone(2, false, 100);  // next at 200
  ASSERT_EQ(s.DueProbes(200, {2}).size(), 1u);
  s.ProbeDone(2, false, 200);  // next at 400
  s.Heard(2, 250);
  EXPECT_TRUE(s.DueProbes(349, {2}).empty());
  EXPECT_EQ(s.DueProbes(350, {2}).size(), 1u) << "silent again for the window: no backoff left";
}

TEST(PeerProbeSchedule, ANewLeaderChecksAMemberFoundGoneAtOnceAndOthersAfterTheGrace) {
  PeerProbeSchedule s = Schedule();
  // As a follower: the leader (1) fell silent and refused the connect.
  s.Heard(1, 0);
  s.Heard(3, 0);
  s.Started(1);
  EXPECT_TRUE(s.ProbeDone(1, true, 200));
  // Elected at 400: 1 is checked again at once (it may have restarted), 3 gets the grace.
  s.BecomeLeader(400);
  EXPECT_TRUE(s.gone().empty());
  EXPECT_EQ(s.DueProbes(400, {1, 3}), std::vector<uint64_t>{1});
  EXPECT_TRUE(s.ProbeDone(1, true, 401));
  EXPECT_EQ(s.gone(), std::set<uint64_t>{1});
  EXPECT_TRUE(s.DueProbes(499, {1, 3}).empty());
  EXPECT_EQ(s.DueProbes(500, {1, 3}), std::vector<uint64_t>{3});
}

TEST(PeerProbeSchedule, MembersThatLeftAreForgotten) {
  PeerProbeSchedule s = Schedule();
  StartLeading(s, {2});
  ASSERT_EQ(s.DueProbes(100, {2}).size(), 1u);
  ASSERT_TRUE(s.ProbeDone(2, true, 100));
  EXPECT_TRUE(s.DueProbes(200, {3}).empty());
  EXPECT_TRUE(s.gone().empty());
  EXPECT_FALSE(s.ProbeDone(2, true, 201)) << "a late answer about a removed member";
}

TEST(PeerProbeSchedule, FramesFromManySendersAreTrackedUpToALimit) {
  PeerProbeSchedule s = Schedule();
  for (uint64_t id = 1; id <= 10'000; ++id) s.Heard(id, 0);
  s.Started(20'000);
  EXPECT_FALSE(s.ProbeDone(20'000, true, 1)) << "not tracked: no verdict";
  s.BecomeLeader(0);
  EXPECT_EQ(s.DueProbes(100, {2}), std::vector<uint64_t>{2}) << "members are always tracked";
}

std::vector<MemberDropPolicy::Drop> Check(MemberDropPolicy& p, int64_t now,
                                          std::vector<MemberDropPolicy::Member> members,
                                          std::set<uint64_t> holders = {}) {
  return p.Check(now, /*self=*/1, members, holders);
}

TEST(MemberDropPolicy, AGoneMemberIsDroppedAtOnceAndOnce) {
  MemberDropPolicy p(3000);
  auto d = Check(p, 0, {{1, true, false}, {2, true, true}, {3, true, false}});
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].id, 2u);
  EXPECT_EQ(d[0].reason, Reason::kGone);
  EXPECT_STREQ(MemberDropPolicy::ReasonName(d[0].reason), "gone");
  EXPECT_TRUE(Check(p, 10, {{1, true, false}, {2, true, true}}).empty());
  EXPECT_TRUE(Check(p, 5000, {{1, true, false}, {2, false, true}}).empty())
      << "not again as silent";
}

TEST(MemberDropPolicy, ASilentMemberKeepsTheFullTimeout) {
  MemberDropPolicy p(3000);
  EXPECT_TRUE(Check(p, 0, {{1, true, false}, {2, false, false}}).empty());
  EXPECT_TRUE(Check(p, 2999, {{1, true, false}, {2, false, false}}).empty());
  auto d = Check(p, 3000, {{1, true, false}, {2, false, false}});
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].reason, Reason::kSilent);
  EXPECT_TRUE(Check(p, 4000, {{1, true, false}, {2, false, false}}).empty());
}

TEST(MemberDropPolicy, APauseShorterThanTheTimeoutCostsNothing) {
  MemberDropPolicy p(3000);
  EXPECT_TRUE(Check(p, 0, {{2, false, false}}).empty());
  EXPECT_TRUE(Check(p, 2000, {{2, false, false}}).empty());
  EXPECT_TRUE(Check(p, 2500, {{2, true, false}}).empty()) << "resumed";
  EXPECT_TRUE(Check(p, 4000, {{2, false, false}}).empty()) << "silent again: a fresh timeout";
  EXPECT_TRUE(Check(p, 6999, {{2, false, false}}).empty());
  EXPECT_EQ(Check(p, 7000, {{2, false, false}}).size(), 1u);
}

TEST(MemberDropPolicy, AMemberBackIsDroppedAgainWhenItDiesAgain) {
  MemberDropPolicy p(3000);
  ASSERT_EQ(Check(p, 0, {{2, true, true}}).size(), 1u);
  EXPECT_TRUE(Check(p, 100, {{2, true, false}}).empty()) << "restarted and heard";
  auto d = Check(p, 200, {{2, true, true}});
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].reason, Reason::kGone);
}

TEST(MemberDropPolicy, AFailedDropIsDecidedAgain) {
  MemberDropPolicy p(3000);
  ASSERT_EQ(Check(p, 0, {{2, true, true}}).size(), 1u);
  p.DropFailed(2);
  EXPECT_EQ(Check(p, 10, {{2, true, true}}).size(), 1u);
}

TEST(MemberDropPolicy, ANewLeaderGivesTheFullTimeoutButNotToTheGone) {
  MemberDropPolicy p(3000);
  EXPECT_TRUE(Check(p, 0, {{2, false, false}, {3, false, false}}).empty());
  p.Reset();
  EXPECT_TRUE(Check(p, 2500, {{2, false, false}, {3, false, false}}).empty());
  EXPECT_TRUE(Check(p, 5000, {{2, false, false}, {3, false, false}}).empty())
      << "the timeout restarted at 2500";
  auto d = Check(p, 5001, {{2, false, true}, {3, false, false}});
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].id, 2u);
  EXPECT_EQ(d[0].reason, Reason::kGone);
  EXPECT_EQ(Check(p, 5500, {{2, false, true}, {3, false, false}}).front().reason, Reason::kSilent);
}

TEST(MemberDropPolicy, ConsumersOfARemovedMemberAreDropped) {
  MemberDropPolicy p(3000);
  auto d = Check(p, 0, {{1, true, false}, {2, true, false}}, {1, 2, 4});
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].id, 4u);
  EXPECT_EQ(d[0].reason, Reason::kRemoved);
  EXPECT_TRUE(Check(p, 10, {{1, true, false}}, {1, 4}).size() == 0u) << "4 once";
  EXPECT_TRUE(Check(p, 10, {{1, true, false}}, {0}).empty()) << "0: not a raft id";
}

TEST(MemberDropPolicy, ThisNodeIsNeverDropped) {
  MemberDropPolicy p(0);
  EXPECT_TRUE(Check(p, 0, {{1, false, true}}).empty());
  EXPECT_TRUE(Check(p, 100, {{1, false, true}}).empty());
}

}  // namespace
}  // namespace haven::node
