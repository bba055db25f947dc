// RaftLog: a cluster of one (group commit, shutdown), and three nodes on loopback, each with its
// own in-memory store and executor. Proposals made on any node commit everywhere in the same order;
// the proposer's DoneFn runs after its own apply; the group survives the loss of its leader; a node
// restarted from its store catches up; proposals in flight when the leader dies follow the new
// leader and apply once (with a RequestDedupe, as NodeLog does), or are answered within a bound.
#include "node/raft_log.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "node_test_util.h"
#include "storage/mem_log_store.h"

namespace haven::node {
namespace {

using testutil::FreeAddress;
using testutil::WaitUntil;

// A loopback port free right now (bound, read, closed).
// One member: its store survives Stop/Start (a restart), its applied log is what it committed.
struct Member {
  uint64_t id;
  std::string address;
  storage::MemLogStore store;
  std::unique_ptr<net::IoRuntime> executor;
  std::unique_ptr<RaftLog> log;
  std::mutex mu;
  std::vector<std::pair<uint64_t, std::string>> applied;  // duplicates left out
  int duplicates = 0;                                     // copies the dedupe table refused
  RequestDedupe dedupe;                                   // on the executor

  void Start(const std::map<uint64_t, std::string>& peers) {
    executor = std::make_unique<net::IoRuntime>(1);
    executor->Start();
    {
      std::lock_guard lock(mu);
      applied.clear();  // re-applied from the log on start
      duplicates = 0;
    }
    dedupe.Clear();
    RaftLogOptions o;
    o.node_id = id;
    o.listen = address;
    o.peers = peers;
    o.tick_ms = 20;
    o.proposal_timeout_ms = 3000;
    RaftLogCallbacks cb;
    cb.on_commit = [this](const CommittedEntry& e) {
      std::lock_guard lock(mu);
      if (dedupe.Check(e.id).verdict != RequestDedupe::Verdict::kNew) {
        ++duplicates;
        return Status::Ok();
      }
      dedupe.Record(e.index, e.id, "");
      applied.emplace_back(e.index, e.data);
      return Status::Ok();
    };
    cb.on_restore = [](uint64_t, const std::string&) {};
    log = std::make_unique<RaftLog>(store, *executor, std::move(cb), o);
    Status s = log->Start();
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  void Stop() {
    log->Stop();
    executor->Stop();
    log.reset();
    executor.reset();
  }
  std::vector<std::string> Commands() {
    std::lock_guard lock(mu);
    std::vector<std::string> out;
    for (const auto& [i, d] : applied) out.push_back(d);
    return out;
  }
  // Proposes and waits for the answer.
  Status ProposeAndWait(const std::string& data) {
    std::promise<Status> p;
    log->Propose(Machine::kRegistry, data, [&](Status s, uint64_t) { p.set_value(s); });
    return p.get_future().get();
  }
};

class RaftLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (uint64_t id = 1; id <= 3; ++id) {
      auto m = std::make_unique<Member>();
      m->id = id;
      m->address = FreeAddress();
      peers_[id] = m->address;
      members_.push_back(std::move(m));
    }
    for (auto& m : members_) m->Start(peers_);
  }
  void TearDown() override {
    for (auto& m : members_) {
      if (m->log) m->Stop();
    }
  }
  uint64_t Leader() {
    for (auto& m : members_) {
      if (!m->log) continue;
      auto st = m->log->status();
      if (st.node.role == raft::Role::kLeader) return st.node.id;
    }
    return 0;
  }
  Member& Get(uint64_t id) { return *members_[id - 1]; }

  std::map<uint64_t, std::string> peers_;
  std::vector<std::unique_ptr<Member>> members_;
};

TEST_F(RaftLogTest, ProposalsOnAnyNodeCommitEverywhereInOneOrder) {
  ASSERT_TRUE(WaitUntil([&] { return Leader() != 0; })) << "no leader elected";
  for (int i = 0; i < 30; ++i) {
    Member& m = *members_[i % 3];
    Status s = m.ProposeAndWait("cmd" + std::to_string(i));
    ASSERT_TRUE(s.ok()) << "node " << m.id << ": " << s.ToString();
    // Done runs after the proposer applied its own entry.
    auto cmds = m.Commands();
    ASSERT_FALSE(cmds.empty());
    EXPECT_NE(std::find(cmds.begin(), cmds.end(), "cmd" + std::to_string(i)), cmds.end());
  }
  ASSERT_TRUE(WaitUntil([&] {
    return Get(1).Commands().size() == 30 && Get(2).Commands().size() == 30 &&
           Get(3).Commands().size() == 30;
  }));
  EXPECT_EQ(Get(1).Commands(), Get(2).Commands());
  EXPECT_EQ(Get(1).Commands(), Get(3).Commands());
}

TEST_F(RaftLogTest, SurvivesTheLossOfTheLeaderAndARestartedNodeCatchesUp) {
  ASSERT_TRUE(WaitUntil([&] { return Leader() != 0; }));
  uint64_t old_leader = Leader();
  ASSERT_TRUE(Get(old_leader).ProposeAndWait("before").ok());
  Get(old_leader).Stop();
  Get(old_leader).store.Crash();  // what was not synced is gone
  uint64_t survivor = old_leader % 3 + 1;
  ASSERT_TRUE(WaitUntil([&] { return Leader() != 0 && Leader() != old_leader; }))
      << "no new leader";
  Status s = Get(survivor).ProposeAndWait("after");
  ASSERT_TRUE(s.ok()) << s.ToString();
  Get(old_leader).Start(peers_);
  ASSERT_TRUE(WaitUntil([&] {
    auto cmds = Get(old_leader).Commands();
    return std::find(cmds.begin(), cmds.end(), "after") != cmds.end();
  })) << "the restarted node did not catch up";
  auto cmds = Get(old_leader).Commands();
  EXPECT_NE(std::find(cmds.begin(), cmds.end(), "before"), cmds.end());
}

// Proposals in flight on a follower when the leader stops: each is sent again to the new leader
// and succeeds (before re-forwarding they all failed with "outcome unknown"); a copy the old leader
// had replicated may commit too, and the dedupe table applies each exactly once.
TEST_F(RaftLogTest, InFlightProposalsFollowTheNewLeaderAndApplyOnce) {
  ASSERT_TRUE(WaitUntil([&] { return Leader() != 0; }));
  const uint64_t leader = Leader();
  const uint64_t follower = leader % 3 + 1, other = 6 - leader - follower;
  ASSERT_TRUE(WaitUntil([&] { return Get(follower).log->status().node.leader == leader; }));
  constexpr int kProposals = 40;
  std::vector<std::promise<Status>> results(kProposals);
  for (int i = 0; i < kProposals; ++i) {
    Get(follower).log->Propose(Machine::kRegistry, "rf" + std::to_string(i),
                               [&results, i](Status s, uint64_t) { results[i].set_value(s); });
  }
  Get(leader).Stop();
  for (int i = 0; i < kProposals; ++i) {
    auto f = results[i].get_future();
    ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready) << i;
    Status s = f.get();
    EXPECT_TRUE(s.ok()) << "rf" << i << ": " << s.ToString();
  }
  for (uint64_t id : {follower, other}) {
    ASSERT_TRUE(WaitUntil([&] {
      auto cmds = Get(id).Commands();
      return std::count_if(cmds.begin(), cmds.end(), [](const std::string& c) {
               return c.rfind("rf", 0) == 0;
             }) >= kProposals;
    })) << "node "
        << id;
    auto cmds = Get(id).Commands();
    for (int i = 0; i < kProposals; ++i) {
      EXPECT_EQ(std::count(cmds.begin(), cmds.end(), "rf" + std::to_string(i)), 1)
          << "node " << id << " rf" << i;
    }
  }
  std::lock_guard lock(Get(follower).mu);
  std::cout << "[raft_log] duplicates refused on the proposer: " << Get(follower).duplicates
            << "\n";
}

// With no leader left to reach, a proposal that went to the dead leader is answered well before
// the proposal timeout, with an error that says the outcome is unknown and how to retry.
TEST_F(RaftLogTest, AProposalToADeadLeaderIsAnsweredWithinTheLeaderlessBound) {
  ASSERT_TRUE(WaitUntil([&] { return Leader() != 0; }));
  const uint64_t leader = Leader();
  const uint64_t follower = leader % 3 + 1, other = 6 - leader - follower;
  ASSERT_TRUE(WaitUntil([&] { return Get(follower).log->status().node.leader == leader; }));
  Get(other).Stop();  // no quorum without the leader
  ASSERT_TRUE(Get(leader).ProposeAndWait("warm").ok());
  Get(leader).Stop();
  auto start = std::chrono::steady_clock::now();
  std::promise<Status> result;
  Get(follower).log->Propose(Machine::kRegistry, "lost",
                             [&](Status s, uint64_t) { result.set_value(s); });
  auto f = result.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  Status s = f.get();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  start)
                .count();
  std::cout << "[raft_log] answered after " << ms << " ms: " << s.ToString() << "\n";
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_NE(s.message().find("may or may not"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("request id"), std::string::npos) << s.message();
  // The leaderless bound (700 ms after the last word from the leader) answers, not the 3 s
  // proposal timeout.
  EXPECT_LT(ms, 2000);
}

// A MemLogStore whose fsync takes time, as a disk's does: what makes batching matter.
class SlowSyncStore final : public storage::LogStore {
 public:
  explicit SlowSyncStore(std::chrono::milliseconds fsync) : fsync_(fsync) {}
  Status Append(const std::vector<storage::LogEntry>& e, bool sync) override {
    if (sync) std::this_thread::sleep_for(fsync_);
    return mem.Append(e, sync);
  }
  Result<std::vector<storage::LogEntry>> Entries(uint64_t lo, uint64_t hi,
                                                 uint64_t max) const override {
    return mem.Entries(lo, hi, max);
  }
  uint64_t FirstIndex() const override { return mem.FirstIndex(); }
  uint64_t LastIndex() const override { return mem.LastIndex(); }
  Result<uint64_t> Term(uint64_t i) const override { return mem.Term(i); }
  Status TruncateSuffix(uint64_t from) override { return mem.TruncateSuffix(from); }
  Status SaveHardState(const storage::HardState& hs) override {
    std::this_thread::sleep_for(fsync_);
    return mem.SaveHardState(hs);
  }
  Status SaveHardStateUnsynced(const storage::HardState& hs) override {
    return mem.SaveHardStateUnsynced(hs);
  }
  storage::HardState LoadHardState() const override { return mem.LoadHardState(); }
  Status SaveSnapshot(const storage::Snapshot& s) override { return mem.SaveSnapshot(s); }
  std::optional<storage::Snapshot> LoadSnapshot() const override { return mem.LoadSnapshot(); }

  storage::MemLogStore mem;

 private:
  std::chrono::milliseconds fsync_;
};

RaftLogOptions SingleNode() {
  RaftLogOptions o;
  o.node_id = 1;
  o.peers = {{1, "127.0.0.1:0"}};
  return o;
}

// A cluster of one is the default server: proposals from many threads share fsyncs (group
// commit through Raft's Ready batching), commit in log order, and survive a crash once acked.
TEST(RaftLogSingleNodeTest, ConcurrentProposalsShareFsyncsAndCommitInLogOrder) {
  constexpr int kThreads = 8, kPerThread = 50, kTotal = kThreads * kPerThread;
  SlowSyncStore store(std::chrono::milliseconds(2));
  net::IoRuntime io(1);
  io.Start();
  std::vector<uint64_t> committed;  // only touched on the executor
  RaftLogCallbacks cb;
  cb.on_commit = [&](const CommittedEntry& e) {
    committed.push_back(e.index);
    return Status::Ok();
  };
  cb.on_restore = [](uint64_t, const std::string&) {};
  RaftLog log(store, io, std::move(cb), SingleNode());
  ASSERT_TRUE(log.Start().ok());

  std::atomic<int> ok{0}, done{0};
  std::promise<void> all_done;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        log.Propose(Machine::kRegistry, "t" + std::to_string(t) + "-" + std::to_string(i),
                    [&](Status s, uint64_t) {
                      if (s.ok()) ok++;
                      if (++done == kTotal) all_done.set_value();
                    });
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(all_done.get_future().wait_for(std::chrono::seconds(20)), std::future_status::ready);
  log.Stop();
  io.Stop();

  EXPECT_EQ(ok.load(), kTotal);
  ASSERT_EQ(committed.size(), static_cast<size_t>(kTotal));
  for (size_t i = 1; i < committed.size(); ++i) EXPECT_LT(committed[i - 1], committed[i]);
  // 400 proposals from 8 threads against a 2 ms fsync: they must have shared fsyncs.
  EXPECT_LT(store.mem.sync_count(), static_cast<uint64_t>(kTotal) / 4)
      << "fsyncs=" << store.mem.sync_count();
  // Everything acknowledged was synced: a crash loses none of it.
  uint64_t last = store.LastIndex();
  EXPECT_GE(last, committed.back());
  store.mem.Crash();
  EXPECT_GE(store.LastIndex(), committed.back());
}

TEST(RaftLogSingleNodeTest, ProposalsAfterStopFailUnavailable) {
  storage::MemLogStore store;
  net::IoRuntime io(1);
  io.Start();
  RaftLogCallbacks cb;
  cb.on_commit = [](const CommittedEntry&) { return Status::Ok(); };
  cb.on_restore = [](uint64_t, const std::string&) {};
  RaftLog log(store, io, std::move(cb), SingleNode());
  ASSERT_TRUE(log.Start().ok());
  log.Stop();
  uint64_t last = store.LastIndex();
  std::promise<Status> result;
  log.Propose(Machine::kRegistry, "late", [&](Status s, uint64_t) { result.set_value(s); });
  auto f = result.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(f.get().code(), Code::kUnavailable);
  io.Stop();
  EXPECT_EQ(store.LastIndex(), last);
}

// --- membership changes and leadership transfer (ChangeMembership, TransferLeadershipAndWait) ---

Status ChangeAndWait(RaftLog& log, raft::pb::ConfChangeType type, uint64_t id,
                     const std::string& address) {
  raft::pb::ConfChange cc;
  cc.set_type(type);
  cc.set_node_id(id);
  cc.set_context(address);
  std::promise<Status> p;
  log.ChangeMembership(cc, [&](Status s) { p.set_value(s); });
  auto f = p.get_future();
  if (f.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    return Status::Internal("no answer");
  }
  return f.get();
}

Status TransferAndWait(RaftLog& log, uint64_t to, int64_t timeout_ms) {
  std::promise<Status> p;
  log.TransferLeadershipAndWait(to, timeout_ms, [&](Status s) { p.set_value(s); });
  auto f = p.get_future();
  if (f.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
    return Status::Internal("no answer");
  }
  return f.get();
}

bool HasVoter(const RaftLogStatus& st, uint64_t id) {
  const auto& v = st.node.conf.voters();
  return std::find(v.begin(), v.end(), id) != v.end();
}

bool HasLearner(const RaftLogStatus& st, uint64_t id) {
  const auto& l = st.node.conf.learners();
  return std::find(l.begin(), l.end(), id) != l.end();
}

bool Applied(Member& m, const std::string& cmd) {
  auto cmds = m.Commands();
  return std::find(cmds.begin(), cmds.end(), cmd) != cmds.end();
}

// A fourth node started with no peers (joining) is added as a learner, catches up with what was
// written before, is promoted to voter, and takes later writes.
TEST_F(RaftLogTest, AJoiningNodeIsAddedAsLearnerThenPromotedAndReplicates) {
  ASSERT_TRUE(WaitUntil([&] { return Leader() != 0; }));
  Member& leader = Get(Leader());
  ASSERT_TRUE(leader.ProposeAndWait("before-join").ok());

  auto joiner = std::make_unique<Member>();
  joiner->id = 4;
  joiner->address = FreeAddress();
  joiner->Start({});  // empty: no bootstrap voters, it learns the conf from the leader
  EXPECT_EQ(joiner->log->status().node.role, raft::Role::kFollower);

  Status s = ChangeAndWait(*leader.log, raft::pb::CONF_ADD_LEARNER, 4, joiner->address);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(HasLearner(leader.log->status(), 4));
  ASSERT_TRUE(WaitUntil([&] { return Applied(*joiner, "before-join"); }))
      << "the learner did not catch up";

  s = ChangeAndWait(*leader.log, raft::pb::CONF_ADD_VOTER, 4, joiner->address);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(HasVoter(leader.log->status(), 4));
  EXPECT_FALSE(HasLearner(leader.log->status(), 4));
  ASSERT_TRUE(leader.ProposeAndWait("after-promote").ok());
  ASSERT_TRUE(WaitUntil([&] { return Applied(*joiner, "after-promote"); }));
  ASSERT_TRUE(WaitUntil([&] { return HasVoter(joiner->log->status(), 4); }));
  joiner->Stop();
}

TEST_F(RaftLogTest, ChangeMembershipOnAFollowerNamesTheLeader) {
  ASSERT_TRUE(WaitUntil([&] { return Leader() != 0; }));
  uint64_t leader = Leader();
  uint64_t follower = leader % 3 + 1;
  ASSERT_TRUE(WaitUntil([&] { return Get(follower).log->status().node.leader == leader; }));
  Status s = ChangeAndWait(*Get(follower).log, raft::pb::CONF_REMOVE, leader, "");
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_NE(s.message().find("leader is " + std::to_string(leader) + " at " + peers_[leader]),
            std::string::npos)
      << s.message();
}

// A removed voter leaves the conf; the remaining two still commit.
TEST_F(RaftLogTest, RemovingAMemberLeavesTwoThatStillCommit) {
  ASSERT_TRUE(WaitUntil([&] { return Leader() != 0; }));
  uint64_t leader = Leader();
  uint64_t gone = leader % 3 + 1;
  Status s = ChangeAndWait(*Get(leader).log, raft::pb::CONF_REMOVE, gone, "");
  ASSERT_TRUE(s.ok()) << s.ToString();
  auto st = Get(leader).log->status();
  EXPECT_FALSE(HasVoter(st, gone));
  EXPECT_EQ(st.node.conf.voters_size(), 2);
  Get(gone).Stop();
  ASSERT_TRUE(Get(leader).ProposeAndWait("after-remove").ok());
  uint64_t other = 6 - leader - gone;
  ASSERT_TRUE(WaitUntil([&] { return Applied(Get(other), "after-remove"); }));
}

TEST_F(RaftLogTest, TransferLeadershipAndWaitMovesLeadership) {
  ASSERT_TRUE(WaitUntil([&] { return Leader() != 0; }));
  uint64_t leader = Leader();
  uint64_t target = leader % 3 + 1;
  ASSERT_TRUE(Get(leader).ProposeAndWait("x").ok());
  Status s = TransferAndWait(*Get(leader).log, target, 5'000);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_TRUE(WaitUntil([&] { return Leader() == target; })) << "leader=" << Leader();
  // Then to "any" (0): leadership moves off the new leader.
  s = TransferAndWait(*Get(target).log, 0, 5'000);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_TRUE(WaitUntil([&] { return Leader() != 0 && Leader() != target; }));
  // Bad input gets a clear error.
  uint64_t now_leader = Leader();
  EXPECT_EQ(TransferAndWait(*Get(now_leader).log, 9, 1'000).code(), Code::kInvalidArgument);
  EXPECT_EQ(TransferAndWait(*Get(now_leader).log, 1, 0).code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace haven::node
