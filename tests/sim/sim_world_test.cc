// The simulated world: seeds pass with the real core, and one seed always gives the same trace.
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <sstream>

#include "world.h"

namespace haven::sim {
namespace {

std::string TraceOf(const SimOptions& o) {
  std::ostringstream out;
  RunSeed(o, &out);
  return out.str();
}

TEST(World, SameSeedGivesByteIdenticalTrace) {
  for (int nodes : {3, 5}) {
    SimOptions o;
    o.seed = 42;
    o.nodes = nodes;
    o.trace = true;
    std::string a = TraceOf(o), b = TraceOf(o);
    EXPECT_GT(a.size(), 1000u);
    EXPECT_EQ(a, b) << "nodes=" << nodes;
    o.seed = 43;
    EXPECT_NE(TraceOf(o), a);
  }
}

TEST(World, TraceShowsTheFaults) {
  SimOptions o;
  o.seed = 7;
  o.trace = true;
  o.faults = Figure8Faults();
  std::string t = TraceOf(o);
  for (const char* word : {"deliver ", "crash ", "start ", "partition ", "elected ", "commit "}) {
    EXPECT_NE(t.find(word), std::string::npos) << word;
  }
}

TEST(World, SeedsPass) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    SimOptions o;
    o.seed = seed;
    o.nodes = seed % 2 ? 3 : 5;
    SimResult r = RunSeed(o, nullptr);
    ASSERT_TRUE(r.ok) << "seed " << seed << ": " << r.reason << "\nreplay: build/haven-sim --seed "
                      << seed << " --trace --nodes " << o.nodes;
    EXPECT_GT(r.stats.committed, 10u) << "seed " << seed;
    EXPECT_GT(r.stats.ops_ok, 10u) << "seed " << seed;
  }
}

// Only leader crashes (and compactions), so that every election follows a leader's death.
FaultProfile LeaderCrashes(bool detect) {
  FaultProfile f;
  f.p_crash = 0;
  f.p_crash_leader = 0.05;
  f.p_partition = 0;
  f.p_transfer = 0;
  f.p_membership = 0;
  f.detect_leader_death = detect;
  return f;
}

TEST(World, LeaderDeathDetectionShortensFailover) {
  SimStats with, without;
  for (bool detect : {true, false}) {
    SimStats& sum = detect ? with : without;
    for (uint64_t seed = 1; seed <= 10; ++seed) {
      SimOptions o;
      o.seed = seed;
      o.faults = LeaderCrashes(detect);
      SimResult r = RunSeed(o, nullptr);
      ASSERT_TRUE(r.ok) << "seed " << seed << " detect=" << detect << ": " << r.reason;
      sum.failovers += r.stats.failovers;
      sum.failover_us_total += r.stats.failover_us_total;
      sum.failover_us_max = std::max(sum.failover_us_max, r.stats.failover_us_max);
      sum.unreachable_reports += r.stats.unreachable_reports;
    }
  }
  ASSERT_GT(with.failovers, 20u);
  ASSERT_GT(without.failovers, 20u);
  EXPECT_GT(with.unreachable_reports, 0u);
  EXPECT_EQ(without.unreachable_reports, 0u);
  int64_t avg_with = with.failover_us_total / static_cast<int64_t>(with.failovers);
  int64_t avg_without = without.failover_us_total / static_cast<int64_t>(without.failovers);
  std::cout << "[sim] leader crash to next leader (10 ms ticks, election timeout 100-200 ms): "
            << "with detection avg " << avg_with / 1000 << " ms max " << with.failover_us_max / 1000
            << " ms (" << with.failovers << " failovers); without avg " << avg_without / 1000
            << " ms max " << without.failover_us_max / 1000 << " ms\n";
  EXPECT_LT(avg_with * 4, avg_without * 3) << "detection must cut the failover time";
}

TEST(World, WrongLeaderUnreachableReportsStaySafe) {
  // Live leaders reported gone at random, on top of the default fault mix: every checker
  // (linearizability, one leader per term, log matching) must still pass.
  for (uint64_t seed = 1; seed <= 10; ++seed) {
    SimOptions o;
    o.seed = seed;
    o.nodes = seed % 2 ? 3 : 5;
    o.faults.detect_leader_death = true;
    o.faults.p_false_unreachable = 0.3;
    SimResult r = RunSeed(o, nullptr);
    ASSERT_TRUE(r.ok) << "seed " << seed << ": " << r.reason;
    EXPECT_GT(r.stats.unreachable_reports, 0u) << "seed " << seed;
    EXPECT_GT(r.stats.ops_ok, 10u) << "seed " << seed;
  }
}

}  // namespace
}  // namespace haven::sim
