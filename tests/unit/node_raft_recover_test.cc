// RecoverMembership on an in-memory store: a log with a snapshot and entries after it; the
// removal of 2 of 3 voters (and a learner), address updates and promotion, the validation errors,
// a dry run that writes nothing, and the Raft core restarting from the result as a cluster of one.
#include "node/raft_recover.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "node/node.pb.h"
#include "node/raft_storage.h"
#include "storage/mem_log_store.h"

namespace haven::node {
namespace {

using Members = std::map<uint64_t, std::string>;

const Members kPeers = {{1, "10.0.0.1:8301"}, {2, "10.0.0.2:8301"}, {3, "10.0.0.3:8301"}};
constexpr uint64_t kSnapIndex = 10;
constexpr uint64_t kLastIndex = 20;
constexpr uint64_t kLearner = 4;
constexpr char kLearnerAddress[] = "10.0.0.4:8301";

storage::LogEntry Stored(uint64_t index, uint64_t term, raft::pb::EntryType type,
                         std::string data) {
  raft::pb::Entry e;
  e.set_index(index);
  e.set_term(term);
  e.set_type(type);
  e.set_data(std::move(data));
  return {index, term, e.SerializeAsString()};
}

std::string Change(raft::pb::ConfChangeType type, uint64_t id, std::string address = {}) {
  raft::pb::ConfChange cc;
  cc.set_type(type);
  cc.set_node_id(id);
  cc.set_context(std::move(address));
  return cc.SerializeAsString();
}

// Snapshot at 10 (term 2) under voters 1..3 with their addresses; entries 11..20 (terms 2 and 3)
// with learner 4 added at 15; hard state term 3, commit 18 (19 and 20 not known committed).
void FillWithSnapshot(storage::MemLogStore& store) {
  raft::pb::ConfState conf;
  pb::SnapshotData data;
  for (const auto& [id, address] : kPeers) {
    conf.add_voters(id);
    (*data.mutable_peers())[id] = address;
  }
  data.set_state("state-machine-bytes");
  pb::StoredSnapshot stored;
  stored.set_conf(conf.SerializeAsString());
  stored.set_data(data.SerializeAsString());
  ASSERT_TRUE(store.SaveSnapshot({kSnapIndex, 2, stored.SerializeAsString()}).ok());
  std::vector<storage::LogEntry> entries;
  for (uint64_t i = kSnapIndex + 1; i <= kLastIndex; ++i) {
    uint64_t term = i <= 16 ? 2 : 3;
    if (i == 15) {
      entries.push_back(Stored(i, term, raft::pb::ENTRY_CONF_CHANGE,
                               Change(raft::pb::CONF_ADD_LEARNER, kLearner, kLearnerAddress)));
    } else {
      pb::Proposal p;
      p.set_origin(1);
      p.set_seq(i);
      p.set_data("cmd-" + std::to_string(i));
      entries.push_back(Stored(i, term, raft::pb::ENTRY_NORMAL, p.SerializeAsString()));
    }
  }
  ASSERT_TRUE(store.Append(entries, true).ok());
  ASSERT_TRUE(store.SaveHardState({3, 2, 18}).ok());
}

// What a restarted server's Raft core makes of the store.
raft::NodeStatus RestartCore(const storage::LogStore& store, uint64_t self) {
  auto loaded = LoadRaftState(store, {});
  EXPECT_TRUE(loaded.ok()) << loaded.status().ToString();
  if (!loaded.ok()) return {};
  raft::Config cfg;
  cfg.id = self;
  auto node = raft::RawNode::Create(cfg, loaded->initial);
  EXPECT_TRUE(node.ok()) << node.status().ToString();
  if (!node.ok()) return {};
  (*node)->Campaign();
  return (*node)->status();
}

std::vector<uint64_t> Ids(const google::protobuf::RepeatedField<uint64_t>& ids) {
  return {ids.begin(), ids.end()};
}

TEST(RaftRecover, SummaryReadsSnapshotAndLog) {
  storage::MemLogStore store;
  FillWithSnapshot(store);
  auto s = SummarizeRaftStore(store);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->first_index, kSnapIndex + 1);
  EXPECT_EQ(s->last_index, kLastIndex);
  EXPECT_EQ(s->last_term, 3u);
  EXPECT_EQ(s->snapshot_index, kSnapIndex);
  EXPECT_EQ(s->snapshot_term, 2u);
  EXPECT_EQ(s->term, 3u);
  EXPECT_EQ(s->vote, 2u);
  EXPECT_EQ(s->commit, 18u);
  EXPECT_EQ(s->voters, kPeers);
  EXPECT_EQ(s->learners, (Members{{kLearner, kLearnerAddress}}));
}

TEST(RaftRecover, RemovesTheLostMembersAndCommitsTheWholeLog) {
  storage::MemLogStore store;
  FillWithSnapshot(store);
  auto r = RecoverMembership(store, 1, {{1, kPeers.at(1)}}, false);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->dry_run);
  EXPECT_EQ(r->new_term, 4u);
  ASSERT_EQ(r->changes.size(), 4u);  // voter 1, remove 2, 3 and learner 4
  EXPECT_EQ(r->changes[0].type(), raft::pb::CONF_ADD_VOTER);
  EXPECT_EQ(r->changes[0].context(), kPeers.at(1));
  for (size_t i = 1; i < 4; ++i) EXPECT_EQ(r->changes[i].type(), raft::pb::CONF_REMOVE);

  EXPECT_EQ(store.LastIndex(), kLastIndex + 4);
  EXPECT_EQ(store.Term(kLastIndex + 1).value(), 4u);
  storage::HardState hs = store.LoadHardState();
  EXPECT_EQ(hs.term, 4u);
  EXPECT_EQ(hs.vote, 1u);
  EXPECT_EQ(hs.commit, kLastIndex + 4);
  EXPECT_EQ(r->after.voters, (Members{{1, kPeers.at(1)}}));
  EXPECT_TRUE(r->after.learners.empty());
  EXPECT_EQ(r->after.last_index, kLastIndex + 4);

  // The core restarts with the new membership, everything committed, and elects itself.
  raft::NodeStatus st = RestartCore(store, 1);
  EXPECT_EQ(Ids(st.conf.voters()), std::vector<uint64_t>{1});
  EXPECT_TRUE(st.conf.learners().empty());
  EXPECT_EQ(st.commit, kLastIndex + 4);
  EXPECT_EQ(st.role, raft::Role::kLeader);
  EXPECT_GT(st.term, 4u);
}

TEST(RaftRecover, UpdatesAnAddressAndPromotesALearner) {
  storage::MemLogStore store;
  FillWithSnapshot(store);
  Members keep = {{1, "192.168.1.1:9000"}, {kLearner, kLearnerAddress}};
  auto r = RecoverMembership(store, 1, keep, false);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->after.voters, keep);
  EXPECT_TRUE(r->after.learners.empty());
  raft::NodeStatus st = RestartCore(store, 1);
  EXPECT_EQ(Ids(st.conf.voters()), (std::vector<uint64_t>{1, kLearner}));
}

TEST(RaftRecover, KeepsTwoOfThree) {
  storage::MemLogStore store;
  FillWithSnapshot(store);
  Members keep = {{1, kPeers.at(1)}, {2, kPeers.at(2)}};
  auto r = RecoverMembership(store, 2, keep, false);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->after.voters, keep);
  EXPECT_EQ(store.LoadHardState().vote, 2u);
  raft::NodeStatus st = RestartCore(store, 2);
  EXPECT_EQ(Ids(st.conf.voters()), (std::vector<uint64_t>{1, 2}));
  EXPECT_NE(st.role, raft::Role::kLeader);  // needs node 1's vote
}

TEST(RaftRecover, RunTwiceMovesToAHigherTermAgain) {
  storage::MemLogStore store;
  FillWithSnapshot(store);
  ASSERT_TRUE(RecoverMembership(store, 1, {{1, kPeers.at(1)}}, false).ok());
  auto r = RecoverMembership(store, 1, {{1, kPeers.at(1)}}, false);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->new_term, 5u);
  EXPECT_EQ(r->changes.size(), 1u);  // only the re-add: nothing left to remove
  EXPECT_EQ(Ids(RestartCore(store, 1).conf.voters()), std::vector<uint64_t>{1});
}

TEST(RaftRecover, LogWithoutSnapshotHasBootstrapVotersWithoutAddresses) {
  storage::MemLogStore store;
  std::vector<storage::LogEntry> entries;
  for (uint64_t id = 1; id <= 3; ++id) {
    entries.push_back(
        Stored(id, 1, raft::pb::ENTRY_CONF_CHANGE, Change(raft::pb::CONF_ADD_VOTER, id)));
  }
  entries.push_back(Stored(4, 2, raft::pb::ENTRY_NOOP, ""));
  ASSERT_TRUE(store.Append(entries, true).ok());
  ASSERT_TRUE(store.SaveHardState({2, 3, 4}).ok());
  auto s = SummarizeRaftStore(store);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->voters, (Members{{1, ""}, {2, ""}, {3, ""}}));
  auto r = RecoverMembership(store, 3, {{3, "127.0.0.1:7003"}}, false);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->after.voters, (Members{{3, "127.0.0.1:7003"}}));
  EXPECT_EQ(RestartCore(store, 3).role, raft::Role::kLeader);
}

TEST(RaftRecover, RejectsBadMembersAndWritesNothing) {
  storage::MemLogStore store;
  FillWithSnapshot(store);
  struct Case {
    uint64_t self;
    Members members;
    std::string says;
  };
  Members eight;
  for (uint64_t id = 1; id <= 8; ++id) eight[id] = "h:1";
  const std::vector<Case> cases = {
      {1, {}, "at least one"},
      {1, {{2, kPeers.at(2)}}, "must include"},
      {1, {{1, kPeers.at(1)}, {9, "10.0.0.9:1"}}, "9 is not a member"},
      {1, eight, "at most 7"},
      {1, {{1, "10.0.0.1"}}, "bad address"},
      {1, {{1, "10.0.0.1:0"}}, "bad address"},
      {1, {{1, "10.0.0.1:65536"}}, "bad address"},
      {1, {{1, ":8301"}}, "bad address"},
      {1, {{1, "10.0.0.1:83x1"}}, "bad address"},
      {0, {{1, kPeers.at(1)}}, "--node-id"},
  };
  for (const auto& c : cases) {
    for (bool dry_run : {false, true}) {
      if (dry_run && c.members.empty()) continue;  // a summary: see DryRunPlansButChangesNothing
      auto r = RecoverMembership(store, c.self, c.members, dry_run);
      ASSERT_FALSE(r.ok()) << c.says;
      EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << c.says;
      EXPECT_NE(r.status().message().find(c.says), std::string::npos) << r.status().message();
    }
  }
  EXPECT_EQ(store.LastIndex(), kLastIndex);
  EXPECT_EQ(store.LoadHardState().term, 3u);
  EXPECT_EQ(store.LoadHardState().commit, 18u);
}

TEST(RaftRecover, DryRunPlansButChangesNothing) {
  storage::MemLogStore store;
  FillWithSnapshot(store);
  const uint64_t syncs = store.sync_count();
  auto r = RecoverMembership(store, 1, {{1, kPeers.at(1)}}, true);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->dry_run);
  EXPECT_EQ(r->new_term, 4u);
  EXPECT_EQ(r->changes.size(), 4u);
  EXPECT_EQ(r->after.last_index, kLastIndex);
  EXPECT_EQ(r->after.voters, kPeers);
  EXPECT_EQ(store.sync_count(), syncs);
  EXPECT_EQ(store.LastIndex(), kLastIndex);
  storage::HardState hs = store.LoadHardState();
  EXPECT_EQ(hs.term, 3u);
  EXPECT_EQ(hs.vote, 2u);
  EXPECT_EQ(hs.commit, 18u);

  // Without members a dry run is a summary only.
  auto summary = RecoverMembership(store, 0, {}, true);
  ASSERT_TRUE(summary.ok()) << summary.status().ToString();
  EXPECT_TRUE(summary->changes.empty());
  EXPECT_EQ(summary->before.last_index, kLastIndex);
}

TEST(RaftRecover, EmptyStoreIsNotFound) {
  storage::MemLogStore store;
  auto r = RecoverMembership(store, 1, {{1, "127.0.0.1:1"}}, false);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_EQ(store.LastIndex(), 0u);
}

TEST(RaftRecover, CorruptEntryIsAnIoError) {
  storage::MemLogStore store;
  ASSERT_TRUE(store.Append({{1, 1, "\xff\xff not an entry"}}, true).ok());
  auto r = RecoverMembership(store, 1, {{1, "127.0.0.1:1"}}, false);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIoError);
}

}  // namespace
}  // namespace haven::node
