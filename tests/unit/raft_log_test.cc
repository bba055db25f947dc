// Unit tests of the Raft log (stable/unstable tracking, conflicts, slicing) and flow control.
#include <gtest/gtest.h>

#include "raft/progress.h"
#include "raft/raft_log.h"

namespace haven::raft {
namespace {

pb::Entry E(uint64_t index, uint64_t term, std::string data = "") {
  pb::Entry e;
  e.set_index(index);
  e.set_term(term);
  e.set_data(std::move(data));
  return e;
}

google::protobuf::RepeatedPtrField<pb::Entry> Ents(std::vector<pb::Entry> v) {
  google::protobuf::RepeatedPtrField<pb::Entry> r;
  for (auto& e : v) *r.Add() = std::move(e);
  return r;
}

TEST(RaftLog, TermsAndBounds) {
  RaftLog log;
  log.Reset(5, 2, {E(6, 2), E(7, 3)});
  EXPECT_EQ(log.first_index(), 6u);
  EXPECT_EQ(log.last_index(), 7u);
  EXPECT_EQ(log.last_term(), 3u);
  EXPECT_EQ(log.Term(5), 2u);
  EXPECT_EQ(log.Term(7), 3u);
  EXPECT_FALSE(log.Term(4).has_value());
  EXPECT_FALSE(log.Term(8).has_value());
  EXPECT_TRUE(log.IsUpToDate(7, 3));
  EXPECT_TRUE(log.IsUpToDate(1, 4));
  EXPECT_FALSE(log.IsUpToDate(8, 2));
  EXPECT_FALSE(log.HasUnsent());
}

TEST(RaftLog, ConflictTruncatesSuffixAndResendsFromIt) {
  RaftLog log;
  log.Reset(0, 0, {E(1, 1), E(2, 1), E(3, 1)});
  bool ok = true;
  auto last = log.MaybeAppend(1, 1, Ents({E(2, 1), E(3, 2), E(4, 2)}), &ok);
  ASSERT_TRUE(ok);
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(*last, 4u);
  EXPECT_EQ(log.stable(), 2u);  // entry 3 was replaced
  auto unsent = log.TakeUnsent();
  ASSERT_EQ(unsent.size(), 2u);
  EXPECT_EQ(unsent[0].index(), 3u);
  EXPECT_EQ(unsent[0].term(), 2u);
  log.StableTo(4, 2);
  EXPECT_EQ(log.stable(), 4u);
}

TEST(RaftLog, MismatchAndCommittedConflict) {
  RaftLog log;
  log.Reset(0, 0, {E(1, 1), E(2, 1)});
  bool ok = true;
  EXPECT_FALSE(log.MaybeAppend(2, 2, Ents({E(3, 2)}), &ok).has_value());
  EXPECT_TRUE(ok);
  log.CommitTo(2);
  EXPECT_FALSE(log.MaybeAppend(0, 0, Ents({E(1, 1), E(2, 3)}), &ok).has_value());
  EXPECT_FALSE(ok);  // would replace a committed entry: refused
  EXPECT_EQ(log.Term(2), 1u);
}

TEST(RaftLog, StableToIgnoresReplacedEntries) {
  RaftLog log;
  log.Reset(0, 0, {});
  bool ok = true;
  log.MaybeAppend(0, 0, Ents({E(1, 1), E(2, 1)}), &ok);
  auto first = log.TakeUnsent();
  ASSERT_EQ(first.size(), 2u);
  log.MaybeAppend(1, 1, Ents({E(2, 2)}), &ok);  // replaced before the shell persisted it
  log.StableTo(2, 1);
  EXPECT_EQ(log.stable(), 0u);
  auto second = log.TakeUnsent();
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].term(), 2u);
}

TEST(RaftLog, FindConflictByTerm) {
  RaftLog log;
  log.Reset(0, 0, {E(1, 1), E(2, 1), E(3, 3), E(4, 3), E(5, 5)});
  EXPECT_EQ(log.FindConflictByTerm(5, 4), 4u);
  EXPECT_EQ(log.FindConflictByTerm(5, 2), 2u);
  EXPECT_EQ(log.FindConflictByTerm(5, 0), 0u);
  EXPECT_EQ(log.FindConflictByTerm(9, 9), 5u);
}

TEST(RaftLog, SliceRespectsBytesButReturnsOne) {
  RaftLog log;
  log.Reset(0, 0, {E(1, 1, std::string(100, 'a')), E(2, 1, std::string(100, 'b')), E(3, 1)});
  std::vector<pb::Entry> out;
  ASSERT_TRUE(log.Slice(1, 4, 10, &out));
  EXPECT_EQ(out.size(), 1u);
  ASSERT_TRUE(log.Slice(1, 4, 1000, &out));
  EXPECT_EQ(out.size(), 3u);
  log.CommitTo(3);
  log.AppliedTo(3);
  log.CompactTo(2);
  EXPECT_FALSE(log.Slice(2, 4, 1000, &out));
  EXPECT_EQ(log.first_index(), 3u);
  EXPECT_EQ(log.Term(2), 1u);
}

TEST(Inflights, WindowByCountAndBytes) {
  Inflights in(2, 1000);
  in.Add(1, 10);
  EXPECT_FALSE(in.Full());
  in.Add(2, 10);
  EXPECT_TRUE(in.Full());
  in.FreeLE(1);
  EXPECT_FALSE(in.Full());
  in.Add(3, 2000);
  EXPECT_TRUE(in.Full());
  in.FreeLE(3);
  EXPECT_EQ(in.count(), 0u);
  EXPECT_EQ(in.bytes(), 0u);
}

TEST(Progress, ProbeBacktracksWithHint) {
  Progress pr(4, 1000);
  pr.next = 10;
  pr.probe_sent = true;
  EXPECT_FALSE(pr.MaybeDecrTo(5, 3));  // not the outstanding probe
  EXPECT_TRUE(pr.MaybeDecrTo(9, 3));
  EXPECT_EQ(pr.next, 4u);
  EXPECT_FALSE(pr.probe_sent);
  EXPECT_TRUE(pr.MaybeUpdate(6));
  pr.BecomeReplicate();
  EXPECT_EQ(pr.next, 7u);
  EXPECT_FALSE(pr.MaybeDecrTo(6, 0));  // stale rejection
}

}  // namespace
}  // namespace haven::raft
