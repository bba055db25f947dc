// RequestDedupe: a committed entry whose identity (or client request id) was applied before is a
// duplicate with the first outcome; the table forgets by count and by log distance, refuses what
// it can no longer tell from a forgotten original, and survives a snapshot round trip unchanged.
#include "node/request_dedupe.h"

#include <gtest/gtest.h>

namespace haven::node {
namespace {

using Verdict = RequestDedupe::Verdict;

ProposalIdentity Id(uint64_t origin, uint64_t seq, std::string client = "", uint64_t base = 0) {
  return ProposalIdentity{origin, /*boot=*/7, seq, std::move(client), base};
}

TEST(RequestDedupeTest, ACopyOfAnAppliedProposalIsADuplicateWithTheFirstOutcome) {
  RequestDedupe t;
  EXPECT_EQ(t.Check(Id(1, 1, "a")).verdict, Verdict::kNew);
  t.Record(10, Id(1, 1, "a"), "first");
  auto d = t.Check(Id(1, 1, "a"));
  EXPECT_EQ(d.verdict, Verdict::kDuplicate);
  EXPECT_EQ(d.first_index, 10u);
  EXPECT_EQ(d.result, "first");
  // Recording a duplicate keeps the first outcome.
  t.Record(11, Id(1, 1, "a"), "second");
  EXPECT_EQ(t.Check(Id(1, 1, "a")).result, "first");
  EXPECT_EQ(t.size(), 1u);
}

TEST(RequestDedupeTest, ACopyOfAProposalWithoutClientIdIsADuplicateOfItsProposer) {
  RequestDedupe t;
  EXPECT_EQ(t.Check(Id(1, 1)).verdict, Verdict::kNew);
  t.Record(10, Id(1, 1), "");
  EXPECT_EQ(t.Check(Id(1, 1)).verdict, Verdict::kDuplicate);
  // Another seq, origin or boot is another proposal.
  EXPECT_EQ(t.Check(Id(1, 2)).verdict, Verdict::kNew);
  EXPECT_EQ(t.Check(Id(2, 1)).verdict, Verdict::kNew);
  ProposalIdentity other_boot = Id(1, 1);
  other_boot.boot = 8;
  EXPECT_EQ(t.Check(other_boot).verdict, Verdict::kNew);
  EXPECT_EQ(t.size(), 0u);  // no per-proposal entry: one window
  EXPECT_EQ(t.proposers(), 1u);
}

TEST(RequestDedupeTest, TheProposerWindowSlidesAndRefusesWhatFellBelowIt) {
  RequestDedupe t;
  t.Record(1, Id(1, 5), "");
  t.Record(2, Id(1, 7), "");
  EXPECT_EQ(t.Check(Id(1, 6)).verdict, Verdict::kNew);  // out of order, never applied
  // A seq far ahead slides the window past 5 and 7.
  t.Record(3, Id(1, 5 + kDedupeWindowSeqs + 100), "");
  EXPECT_EQ(t.Check(Id(1, 5)).verdict, Verdict::kTooOld);
  EXPECT_EQ(t.Check(Id(1, 6)).verdict, Verdict::kTooOld);
  EXPECT_EQ(t.Check(Id(1, 5 + kDedupeWindowSeqs + 100)).verdict, Verdict::kDuplicate);
  EXPECT_EQ(t.Check(Id(1, 5 + kDedupeWindowSeqs + 99)).verdict, Verdict::kNew);
  EXPECT_EQ(t.Check(Id(1, 5 + 3 * kDedupeWindowSeqs)).verdict, Verdict::kNew);
}

TEST(RequestDedupeTest, ForgottenProposersMakeTheirOldCopiesTooOld) {
  RequestDedupe t(DedupeLimits{/*max_entries=*/100, /*max_age_entries=*/1000,
                               /*max_proposers=*/2});
  t.Record(10, Id(1, 1), "");
  t.Record(20, Id(2, 1), "");
  t.Record(30, Id(3, 1), "");  // forgets proposer 1 (applied last at 10)
  EXPECT_EQ(t.proposers(), 2u);
  EXPECT_EQ(t.Check(Id(1, 1, "", 9)).verdict, Verdict::kTooOld);
  EXPECT_EQ(t.Check(Id(1, 2, "", 10)).verdict, Verdict::kNew);
  EXPECT_EQ(t.Check(Id(2, 1)).verdict, Verdict::kDuplicate);
  // And by age: proposer 2 and 3 are more than 1000 indexes behind at 1280.
  t.Advance(1280);
  EXPECT_EQ(t.proposers(), 0u);
  EXPECT_EQ(t.Check(Id(3, 1, "", 29)).verdict, Verdict::kTooOld);
}

TEST(RequestDedupeTest, AClientRetryThroughAnotherNodeIsADuplicate) {
  RequestDedupe t;
  t.Record(5, Id(1, 9, "req-42"), "true");
  // The retry is a new proposal (node 3, its own seq) with the same client id.
  auto d = t.Check(Id(3, 1, "req-42", 5));
  EXPECT_EQ(d.verdict, Verdict::kDuplicate);
  EXPECT_EQ(d.result, "true");
  EXPECT_EQ(t.Check(Id(3, 2, "req-43", 5)).verdict, Verdict::kNew);
}

TEST(RequestDedupeTest, EntriesWithoutIdentityAreAlwaysNewAndNotRemembered) {
  RequestDedupe t;
  ProposalIdentity legacy;  // boot 0: from a log written before identities
  t.Record(1, legacy, "x");
  EXPECT_EQ(t.size(), 0u);
  EXPECT_EQ(t.Check(legacy).verdict, Verdict::kNew);
}

TEST(RequestDedupeTest, ForgetsTheOldestBeyondTheCountAndRefusesWhatItCannotTell) {
  RequestDedupe t(DedupeLimits{/*max_entries=*/3, /*max_age_entries=*/1000});
  auto c = [](uint64_t i) { return "c" + std::to_string(i); };
  for (uint64_t i = 1; i <= 5; ++i) t.Record(i, Id(1, i, c(i), i - 1), "r");
  EXPECT_EQ(t.size(), 3u);
  EXPECT_EQ(t.floor_index(), 2u);
  // c1 and c2 (indexes 1, 2) are forgotten: a retry proposed on base 0 or 1 may be one of them.
  EXPECT_EQ(t.Check(Id(2, 1, c(1), 0)).verdict, Verdict::kTooOld);
  EXPECT_EQ(t.Check(Id(2, 2, c(2), 1)).verdict, Verdict::kTooOld);
  EXPECT_EQ(t.Check(Id(2, 3, c(3), 2)).verdict, Verdict::kDuplicate);
  // A new request proposed on a base at or above the floor cannot be a forgotten one.
  EXPECT_EQ(t.Check(Id(2, 1, "new", 2)).verdict, Verdict::kNew);
  EXPECT_EQ(t.Check(Id(2, 1, "new", 1)).verdict, Verdict::kTooOld);
}

TEST(RequestDedupeTest, ForgetsWhatTheLogLeftBehindByAge) {
  RequestDedupe t(DedupeLimits{/*max_entries=*/100, /*max_age_entries=*/10});
  t.Record(1, Id(1, 1, "a"), "r");
  t.Record(5, Id(1, 2, "b"), "r");
  t.Advance(11);  // index 1 is exactly 10 behind: kept
  EXPECT_EQ(t.size(), 2u);
  t.Advance(12);  // now more than 10 behind
  EXPECT_EQ(t.size(), 1u);
  EXPECT_EQ(t.floor_index(), 1u);
  EXPECT_EQ(t.Check(Id(2, 1, "b", 4)).verdict, Verdict::kDuplicate);
  t.Advance(16);
  EXPECT_EQ(t.size(), 0u);
  EXPECT_EQ(t.floor_index(), 5u);
}

TEST(RequestDedupeTest, ASnapshotRoundTripDecidesTheSame) {
  RequestDedupe t(DedupeLimits{/*max_entries=*/4, /*max_age_entries=*/1000});
  for (uint64_t i = 1; i <= 6; ++i)
    t.Record(i * 2, Id(1, i, i % 2 ? "c" + std::to_string(i) : ""), "r" + std::to_string(i));
  RequestDedupe restored(DedupeLimits{4, 1000});
  restored.Record(100, Id(9, 9), "stale state, replaced");
  ASSERT_TRUE(restored.Parse(t.Serialize()).ok());
  EXPECT_EQ(restored.size(), t.size());
  EXPECT_EQ(restored.floor_index(), t.floor_index());
  EXPECT_EQ(restored.Serialize(), t.Serialize());
  for (uint64_t i = 1; i <= 6; ++i) {
    auto id = Id(1, i, i % 2 ? "c" + std::to_string(i) : "", 0);
    auto a = t.Check(id), b = restored.Check(id);
    EXPECT_EQ(a.verdict, b.verdict) << i;
    EXPECT_EQ(a.result, b.result) << i;
  }
  EXPECT_EQ(restored.Check(Id(9, 9, "", 50)).verdict, Verdict::kNew);
  EXPECT_EQ(restored.proposers(), t.proposers());
  EXPECT_EQ(restored.Check(Id(1, 2)).verdict, Verdict::kDuplicate);  // from the window
  // Both forget the same next.
  t.Record(20, Id(2, 1), "x");
  restored.Record(20, Id(2, 1), "x");
  EXPECT_EQ(restored.Serialize(), t.Serialize());
}

TEST(RequestDedupeTest, AnEmptySnapshotIsAnEmptyTableAndGarbageIsRefused) {
  RequestDedupe t;
  t.Record(3, Id(1, 1), "r");
  ASSERT_TRUE(t.Parse("").ok());
  EXPECT_EQ(t.size(), 0u);
  EXPECT_EQ(t.floor_index(), 0u);
  EXPECT_FALSE(t.Parse(std::string("\xff\xff\xff", 3)).ok());
  EXPECT_EQ(t.size(), 0u);
}

}  // namespace
}  // namespace haven::node
