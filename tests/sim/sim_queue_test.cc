// The queue workload under the simulator: seeds pass and replay byte for byte, and its checkers
// bite: a state machine whose ack keeps the message, or whose requeue drops it, is caught.
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "world.h"

namespace haven::sim {
namespace {

constexpr uint64_t kMaxSeeds = 200;

SimOptions Queues(uint64_t seed, QueueBug bug = QueueBug::kNone) {
  SimOptions o = OptionsForSeed(seed);
  o.workload = WorkloadKind::kQueues;
  o.queue_bug = bug;
  return o;
}

std::string TraceOf(const SimOptions& o) {
  std::ostringstream out;
  SimOptions traced = o;
  traced.trace = true;
  RunSeed(traced, &out);
  return out.str();
}

TEST(QueueWorld, SeedsPassAndMessagesFlow) {
  uint64_t confirmed = 0, redeliveries = 0;
  for (uint64_t seed = 1; seed <= 12; ++seed) {
    SimOptions o = Queues(seed);
    SimResult r = RunSeed(o, nullptr);
    ASSERT_TRUE(r.ok) << "seed " << seed << ": " << r.reason << "\nreplay: build/haven-sim --seed "
                      << seed << " --trace --nodes " << o.nodes << " --workload queues";
    confirmed += r.stats.confirmed;
    redeliveries += r.stats.redeliveries;
    if (r.stats.confirmed > 0) {
      EXPECT_GE(r.stats.acks, r.stats.confirmed) << "seed " << seed;
    }
  }
  EXPECT_GT(confirmed, 1000u);
  EXPECT_GT(redeliveries, 100u);  // requeues, cancels and crashes did return messages
}

TEST(QueueWorld, SameSeedGivesByteIdenticalTrace) {
  SimOptions o = Queues(42);
  std::string a = TraceOf(o), b = TraceOf(o);
  for (const char* word : {"q-propose publish", "q-applied ack", "q-propose drop-owner", "crash "})
    EXPECT_NE(a.find(word), std::string::npos) << word;
  EXPECT_EQ(a, b);
  EXPECT_NE(TraceOf(Queues(43)), a);
}

// The first seed whose run with `bug` finds a violation (0: none in kMaxSeeds); the seeds before
// it pass with the bug, so they must pass without it too.
uint64_t FirstCaught(QueueBug bug, std::string* reason) {
  for (uint64_t seed = 1; seed <= kMaxSeeds; ++seed) {
    SimResult r = RunSeed(Queues(seed, bug), nullptr);
    if (!r.ok) {
      *reason = r.reason;
      return seed;
    }
  }
  return 0;
}

// `bug` is caught, by a checker whose report says one of `words`.
void ExpectCaught(QueueBug bug, const char* flag, std::vector<std::string> words) {
  std::string reason;
  uint64_t found = FirstCaught(bug, &reason);
  ASSERT_NE(found, 0u) << "no violation in " << kMaxSeeds << " seeds with " << flag;
  EXPECT_TRUE(std::any_of(words.begin(), words.end(), [&](const std::string& w) {
    return reason.find(w) != reason.npos;
  })) << reason;
  std::cout << flag << " caught at seed " << found << ": " << reason
            << "\nreplay: build/haven-sim --seed " << found << " --trace --workload queues " << flag
            << "\n";
  SimResult r = RunSeed(Queues(found), nullptr);
  EXPECT_TRUE(r.ok) << "seed " << found << " fails without the bug too: " << r.reason;
}

TEST(QueueBite, AckThatKeepsTheMessageIsCaught) {
  // Caught when a cancel or a dropped owner returns the "acked" message and it is delivered again
  // (or, failing that, when it is still in its queue at the end).
  ExpectCaught(QueueBug::kAckKeepsMessage, "--queue-bug ack-keeps",
               {"after its ack", "still in its queue"});
}

TEST(QueueBite, RequeueThatDropsTheMessageIsCaught) {
  // Caught at the end: a confirmed message neither acked nor in its queue.
  ExpectCaught(QueueBug::kRequeueDrops, "--queue-bug requeue-drops", {"is lost"});
}

}  // namespace
}  // namespace haven::sim
