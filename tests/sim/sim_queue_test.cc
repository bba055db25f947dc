// The queue workload under the simulator: seeds pass and replay byte for byte, commands travel in
// batches of every kind, and its checkers bite: a state machine whose ack keeps the message, whose
// requeue drops it, or that applies a batch out of order, is caught.
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

// The nodes batch: most seeds commit Batch entries, holding commands of every kind the clients
// and the leader send, and some seeds propose every command alone.
TEST(QueueWorld, BatchesCarryEveryKindOfCommand) {
  uint64_t batches = 0, batched = 0, seeds_without = 0;
  for (uint64_t seed = 1; seed <= 12; ++seed) {
    SimResult r = RunSeed(Queues(seed), nullptr);
    ASSERT_TRUE(r.ok) << "seed " << seed << ": " << r.reason;
    batches += r.stats.batches;
    batched += r.stats.batched_commands;
    if (r.stats.confirmed > 0 && r.stats.batches == 0) seeds_without++;
  }
  EXPECT_GT(batches, 1000u);
  EXPECT_GE(batched, 2 * batches);  // a batch holds 2 commands at least
  EXPECT_GT(seeds_without, 0u);     // commands alone are still exercised
  // Seed 2 batches up to 8 commands, and one command delivers one message (then Dispatch).
  std::string trace = TraceOf(Queues(2));
  EXPECT_NE(trace.find("max_deliveries_per_apply=1\n"), std::string::npos);
  for (const char* kind :
       {"publish", "ack", "requeue", "consume", "cancel", "dispatch", "drop-owner"}) {
    std::string word = std::string("q-propose ") + kind + " ";
    bool in_batch = false;
    for (size_t at = trace.find(word); at != std::string::npos && !in_batch;
         at = trace.find(word, at + 1)) {
      std::string line = trace.substr(at, trace.find('\n', at) - at);
      in_batch = line.find(" batch=") != std::string::npos;
    }
    EXPECT_TRUE(in_batch) << kind << " never proposed in a batch";
  }
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

TEST(QueueBite, BatchAppliedOutOfOrderIsCaught) {
  // Caught at the first batch whose commands decide something else than they would alone.
  ExpectCaught(QueueBug::kBatchReversed, "--queue-bug batch-reversed", {"alone", "one by one"});
}

TEST(QueueBite, RequeueThatDropsTheMessageIsCaught) {
  // Caught at the end: a confirmed message neither acked nor in its queue.
  ExpectCaught(QueueBug::kRequeueDrops, "--queue-bug requeue-drops", {"is lost"});
}

}  // namespace
}  // namespace haven::sim
