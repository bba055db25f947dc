// PersistReady: which Readies cost an fsync (the count a confirm waits on under load).
#include "node/raft_storage.h"

#include <gtest/gtest.h>

#include "storage/mem_log_store.h"

namespace haven::node {
namespace {

raft::pb::Entry MakeEntry(uint64_t index, uint64_t term) {
  raft::pb::Entry e;
  e.set_index(index);
  e.set_term(term);
  e.set_type(raft::pb::ENTRY_NORMAL);
  e.set_data("x");
  return e;
}

raft::pb::HardState MakeHardState(uint64_t term, uint64_t vote, uint64_t commit) {
  raft::pb::HardState hs;
  hs.set_term(term);
  hs.set_vote(vote);
  hs.set_commit(commit);
  return hs;
}

TEST(PersistReadyTest, EntriesAndHardStateShareOneFsync) {
  storage::MemLogStore store;
  raft::Ready rd;
  rd.entries = {MakeEntry(1, 1), MakeEntry(2, 1)};
  rd.hard_state = MakeHardState(1, 1, 0);
  rd.must_sync = true;
  ASSERT_TRUE(PersistReady(store, rd).ok());
  EXPECT_EQ(store.sync_count(), 1u);
  store.Crash();
  EXPECT_EQ(store.LastIndex(), 2u);  // synced: a crash keeps them
}

TEST(PersistReadyTest, ACommitOnlyReadyCostsNoFsync) {
  storage::MemLogStore store;
  raft::Ready first;
  first.entries = {MakeEntry(1, 1)};
  first.hard_state = MakeHardState(1, 1, 0);
  first.must_sync = true;
  ASSERT_TRUE(PersistReady(store, first).ok());
  const uint64_t syncs = store.sync_count();

  raft::Ready commit;  // what the core hands out once entry 1 is on a quorum
  commit.hard_state = MakeHardState(1, 1, 1);
  commit.must_sync = false;
  ASSERT_TRUE(PersistReady(store, commit).ok());
  EXPECT_EQ(store.sync_count(), syncs);
  EXPECT_EQ(store.LoadHardState().commit, 1u);
}

TEST(PersistReadyTest, AVoteIsSyncedWithoutEntries) {
  storage::MemLogStore store;
  raft::Ready vote;
  vote.hard_state = MakeHardState(2, 3, 0);
  vote.must_sync = true;
  ASSERT_TRUE(PersistReady(store, vote).ok());
  EXPECT_EQ(store.sync_count(), 1u);
  EXPECT_EQ(store.LoadHardState().vote, 3u);
}

}  // namespace
}  // namespace haven::node
