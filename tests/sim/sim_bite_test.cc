// The checkers bite: with the core's Figure 8 bug switched on (committing old-term entries by
// counting replicas), the simulator finds a violation; with it off, the same seeds pass.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <iostream>

#include "world.h"

namespace haven::sim {
namespace {

constexpr uint64_t kMaxSeeds = 2000;
constexpr uint64_t kMinSafeSeeds = 300;

SimOptions Figure8(uint64_t seed) {
  SimOptions o = OptionsForSeed(seed);
  o.faults = Figure8Faults();
  return o;
}

// The first seed in 1..kMaxSeeds whose run with the bug finds a violation (0: none).
uint64_t FirstCaught(const std::function<SimOptions(uint64_t)>& options, std::string* reason) {
  for (uint64_t seed = 1; seed <= kMaxSeeds; ++seed) {
    SimOptions o = options(seed);
    o.unsafe_commit_old_terms = true;
    SimResult r = RunSeed(o, nullptr);
    if (!r.ok) {
      *reason = r.reason;
      return seed;
    }
  }
  return 0;
}

void ExpectSafeSeedsPass(const std::function<SimOptions(uint64_t)>& options, uint64_t upto) {
  for (uint64_t seed = 1; seed <= upto; ++seed) {
    SimResult r = RunSeed(options(seed), nullptr);
    ASSERT_TRUE(r.ok) << "seed " << seed << " fails without the bug: " << r.reason;
  }
}

TEST(Bite, Figure8FaultsCatchUnsafeCommitOfOldTerms) {
  std::string reason;
  uint64_t found = FirstCaught(Figure8, &reason);
  ASSERT_NE(found, 0u) << "no violation in " << kMaxSeeds << " seeds with the bug switched on";
  std::cout << "bug found at seed " << found << ": " << reason
            << "\nreplay: build/haven-sim --seed " << found << " --trace --figure8"
            << " --unsafe-commit-old-terms\n";
  ExpectSafeSeedsPass(Figure8, std::max(found, kMinSafeSeeds));
}

TEST(Bite, DefaultSeedMixCatchesUnsafeCommitOfOldTerms) {
  std::string reason;
  uint64_t found = FirstCaught(OptionsForSeed, &reason);
  ASSERT_NE(found, 0u) << "no violation in " << kMaxSeeds << " seeds with the bug switched on";
  std::cout << "bug found at seed " << found << ": " << reason
            << "\nreplay: build/haven-sim --seed " << found
            << " --trace --unsafe-commit-old-terms\n";
  ExpectSafeSeedsPass(OptionsForSeed, found);
}

}  // namespace
}  // namespace haven::sim
