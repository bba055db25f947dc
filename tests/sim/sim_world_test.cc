// The simulated world: seeds pass with the real core, and one seed always gives the same trace.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace haven::sim
