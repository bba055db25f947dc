// Tests of the Raft core through RawNode: a tiny in-test network of N nodes that persists each
// Ready in memory, delivers messages (with hooks to drop, rewrite and partition) and ticks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>

#include "raft/raw_node.h"

namespace haven::raft {
namespace {

// What one node has persisted, and its state machine (the data of applied normal entries).
struct Disk {
  pb::HardState hs;
  pb::HardState synced_hs;  // what survives a crash when the last Readies did not ask for sync
  pb::ConfState bootstrap;
  bool conf_in_log = true;  // false: a hand-made log without conf entries, pass `bootstrap`
  std::optional<pb::Snapshot> snap;
  std::vector<pb::Entry> entries;  // after the snapshot
  uint64_t applied = 0;
  std::vector<std::string> state;
};

std::string Join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += x + "\n";
  return s;
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> v;
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\n') {
      v.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return v;
}

pb::ConfState Voters(std::vector<uint64_t> ids) {
  pb::ConfState c;
  for (uint64_t id : ids) c.add_voters(id);
  return c;
}

class Net {
 public:
  explicit Net(std::vector<uint64_t> ids, Config base = Config{}) : base_(base) {
    for (uint64_t id : ids) {
      disks_[id].bootstrap = Voters(ids);
      Start(id);
    }
  }

  Config ConfigFor(uint64_t id) const {
    Config c = base_;
    c.id = id;
    c.group = 7;
    return c;
  }

  // Starts (or restarts) a node from its disk.
  void Start(uint64_t id) {
    Disk& d = disks_[id];
    InitialState st;
    st.hard_state = d.hs;
    // As the node layer does: the conf of the snapshot, the bootstrap voters for a brand-new
    // node, otherwise nothing (the log holds it).
    bool fresh = d.hs.term() == 0 && d.entries.empty();
    if (d.snap) {
      st.conf = d.snap->meta().conf();
    } else if (fresh || !d.conf_in_log) {
      st.conf = d.bootstrap;
    }
    if (d.snap) st.snapshot = d.snap->meta();
    // Alternately: the snapshot's data in InitialState, or handed over by Compact afterwards.
    bool data_in_state = restarts_++ % 2 == 0;
    if (d.snap && data_in_state) st.snapshot_data = d.snap->data();
    st.entries = d.entries;
    st.applied = d.applied;
    auto r = RawNode::Create(ConfigFor(id), st);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    nodes_[id] = std::move(r.value());
    // After a restart the snapshot's data is handed back so it can be sent to followers.
    if (d.snap && !data_in_state) {
      ASSERT_TRUE(nodes_[id]->Compact(*d.snap).ok());
    }
    down_.erase(id);
  }

  // A new empty node joining an existing cluster (empty conf).
  void AddEmpty(uint64_t id) {
    disks_[id] = Disk{};
    Start(id);
  }

  // A crash that also loses what was written without sync (only commit-only hard states).
  void CrashLosingUnsynced(uint64_t id) {
    disks_[id].hs = disks_[id].synced_hs;
    Crash(id);
  }

  // A crash in the middle of a Ready: the leader's early messages went out, nothing persisted.
  void CrashMidReady(uint64_t id) {
    if (up(id) && node(id).HasReady()) {
      Ready rd = node(id).GetReady();
      for (auto& m : rd.messages_before_persist) Queue(id, std::move(m), true);
    }
    Crash(id);
  }

  void Crash(uint64_t id) {
    down_.insert(id);
    nodes_.erase(id);
  }

  RawNode& node(uint64_t id) { return *nodes_.at(id); }
  Disk& disk(uint64_t id) { return disks_[id]; }
  bool up(uint64_t id) const { return nodes_.count(id) > 0; }

  void Isolate(uint64_t id) {
    for (auto& [other, n] : disks_) {
      if (other == id) continue;
      cut_.insert({id, other});
      cut_.insert({other, id});
    }
  }
  void Cut(uint64_t a, uint64_t b) {
    cut_.insert({a, b});
    cut_.insert({b, a});
  }
  void Heal() { cut_.clear(); }

  // Handles every pending Ready of one node: persist, queue messages, apply, Advance.
  void Process(uint64_t id) {
    RawNode& n = node(id);
    while (n.HasReady()) {
      Ready rd = n.GetReady();
      for (auto& m : rd.messages_before_persist) Queue(id, std::move(m), true);
      Persist(id, rd);
      for (auto& m : rd.messages) Queue(id, std::move(m), false);
      Apply(id, rd);
      for (auto& rs : rd.read_states) reads[id].push_back(rs);
      n.Advance(rd);
    }
  }

  void Stabilize(int max_rounds = 10000) {
    for (int round = 0; round < max_rounds; ++round) {
      for (auto& [id, n] : nodes_) Process(id);
      if (queue_.empty()) return;
      std::deque<pb::Message> batch;
      batch.swap(queue_);
      if (round > max_rounds - 3) {
        for (auto& m : batch) ADD_FAILURE() << m.ShortDebugString();
      }
      for (auto& m : batch) Deliver(std::move(m));
    }
    ADD_FAILURE() << "network did not stabilize";
  }

  void Tick(int n = 1) {
    for (int i = 0; i < n; ++i) {
      for (auto& [id, node] : nodes_) node->Tick();
      Stabilize();
    }
  }

  // Ticks until `pred` holds, at most `limit` ticks; returns whether it held.
  bool TickUntil(const std::function<bool()>& pred, int limit = 500) {
    for (int i = 0; i < limit; ++i) {
      if (pred()) return true;
      Tick();
    }
    return pred();
  }

  uint64_t Leader() {
    uint64_t best = 0;
    uint64_t term = 0;
    for (auto& [id, n] : nodes_) {
      NodeStatus s = n->status();
      if (s.role == Role::kLeader && s.term >= term) {
        best = id;
        term = s.term;
      }
    }
    return best;
  }

  int CountLeaders() {
    std::map<uint64_t, int> per_term;
    int leaders = 0;
    for (auto& [id, n] : nodes_) {
      NodeStatus s = n->status();
      if (s.role == Role::kLeader) {
        ++leaders;
        EXPECT_EQ(++per_term[s.term], 1) << "two leaders in term " << s.term;
      }
    }
    return leaders;
  }

  uint64_t ElectLeader() {
    EXPECT_TRUE(TickUntil([&] { return Leader() != 0; }));
    return Leader();
  }

  ProposalId MustPropose(uint64_t id, const std::string& data) {
    auto r = node(id).Propose(data);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    Stabilize();
    return r.ok() ? r.value() : ProposalId{};
  }

  // Takes a snapshot of the node's state machine at its applied index and compacts (its data
  // followed by `stream`'s bytes when given).
  Status CompactAt(uint64_t id, std::shared_ptr<SnapshotSource> stream = nullptr) {
    Disk& d = disks_[id];
    pb::Snapshot s;
    s.mutable_meta()->set_index(d.applied);
    *s.mutable_meta()->mutable_conf() = node(id).status().conf;
    s.set_data(Join(d.state));
    uint64_t snap_index = d.snap ? d.snap->meta().index() : 0;
    if (d.applied == snap_index) return Status::Ok();
    s.mutable_meta()->set_term(TermAt(id));
    Status st = node(id).Compact(s, std::move(stream));
    if (!st.ok()) return st;
    d.entries.erase(d.entries.begin(), d.entries.begin() + (d.applied - snap_index));
    d.snap = s;
    return st;
  }

  // Checks that every two nodes' applied sequences agree (one is a prefix of the other).
  void CheckApplied() {
    for (auto& [a, da] : disks_) {
      for (auto& [b, db] : disks_) {
        size_t n = std::min(da.state.size(), db.state.size());
        for (size_t i = 0; i < n; ++i) {
          ASSERT_EQ(da.state[i], db.state[i]) << "nodes " << a << " and " << b << " at " << i;
        }
      }
    }
  }

  std::function<bool(pb::Message&)> filter;  // false drops; may rewrite
  std::vector<pb::Message> sent;             // everything put on the wire
  bool record_sent = true;
  // Every entry any node applied, by index: a committed entry never changes.
  std::map<uint64_t, std::pair<uint64_t, std::string>> applied_everywhere;
  std::map<uint64_t, std::vector<ReadState>> reads;
  int ready_count = 0;

 private:
  uint64_t TermAt(uint64_t id) {
    Disk& d = disks_[id];
    for (auto& e : d.entries) {
      if (e.index() == d.applied) return e.term();
    }
    return 0;
  }

  void Queue(uint64_t from, pb::Message m, bool before_persist) {
    EXPECT_EQ(m.from(), from);
    EXPECT_EQ(m.group(), 7u);
    if (before_persist) {
      EXPECT_TRUE(m.type() == pb::MSG_APP || m.type() == pb::MSG_HEARTBEAT ||
                  m.type() == pb::MSG_SNAP)
          << "type " << m.type();
    } else {
      CheckPersistedFor(from, m);
    }
    if (record_sent) sent.push_back(m);
    queue_.push_back(std::move(m));
  }

  // What a message after persistence promises must already be on disk.
  void CheckPersistedFor(uint64_t from, const pb::Message& m) {
    const Disk& d = disks_[from];
    // A message of an older term may still go out after the node moved on: its persisted
    // term is then higher, which is as safe.
    if (m.type() != pb::MSG_PRE_VOTE && m.type() != pb::MSG_PRE_VOTE_RESP) {
      EXPECT_GE(d.hs.term(), m.term());
    }
    if (m.type() == pb::MSG_VOTE_RESP && !m.reject() && d.hs.term() == m.term()) {
      EXPECT_EQ(d.hs.vote(), m.to()) << "vote not persisted before its response";
    }
    if (m.type() == pb::MSG_VOTE && d.hs.term() == m.term()) {
      EXPECT_EQ(d.hs.vote(), from);
    }
    if (m.type() == pb::MSG_APP_RESP && !m.reject() && m.term() == d.hs.term()) {
      uint64_t last = d.snap ? d.snap->meta().index() : 0;
      if (!d.entries.empty()) last = d.entries.back().index();
      EXPECT_LE(m.index(), last) << "acknowledged entries not persisted";
    }
  }

  void Deliver(pb::Message m) {
    if (!up(m.to()) || cut_.count({m.from(), m.to()})) return;
    if (filter && !filter(m)) return;
    node(m.to()).Step(m);
  }

  void Persist(uint64_t id, const Ready& rd) {
    ++ready_count;
    Disk& d = disks_[id];
    if (rd.hard_state) d.hs = *rd.hard_state;
    if (rd.must_sync) d.synced_hs = d.hs;
    if (rd.snapshot) {
      d.snap = *rd.snapshot;
      d.entries.clear();
    }
    if (!rd.entries.empty()) {
      uint64_t first = rd.entries.front().index();
      while (!d.entries.empty() && d.entries.back().index() >= first) d.entries.pop_back();
      if (!d.entries.empty()) {
        EXPECT_EQ(d.entries.back().index() + 1, first);
      }
      d.entries.insert(d.entries.end(), rd.entries.begin(), rd.entries.end());
    }
  }

  void Apply(uint64_t id, const Ready& rd) {
    Disk& d = disks_[id];
    if (rd.snapshot) {
      d.state = Split(rd.snapshot->data());
      d.applied = rd.snapshot->meta().index();
    }
    for (const pb::Entry& e : rd.committed) {
      EXPECT_EQ(e.index(), d.applied + 1) << "node " << id << " applies out of order";
      d.applied = e.index();
      if (e.type() == pb::ENTRY_NORMAL) d.state.push_back(e.data());
      auto [it, fresh] = applied_everywhere.emplace(e.index(), std::make_pair(e.term(), e.data()));
      EXPECT_TRUE(fresh || it->second == std::make_pair(e.term(), e.data()))
          << "node " << id << " applied a different entry at " << e.index();
    }
  }

  friend class Fuzz;
  Config base_;
  std::map<uint64_t, Disk> disks_;
  std::map<uint64_t, std::unique_ptr<RawNode>> nodes_;
  std::set<uint64_t> down_;
  std::set<std::pair<uint64_t, uint64_t>> cut_;
  std::deque<pb::Message> queue_;
  int restarts_ = 0;
};

pb::Entry E(uint64_t index, uint64_t term, std::string data = "") {
  pb::Entry e;
  e.set_index(index);
  e.set_term(term);
  e.set_data(std::move(data));
  return e;
}

pb::ConfChange CC(pb::ConfChangeType type, uint64_t id) {
  pb::ConfChange cc;
  cc.set_type(type);
  cc.set_node_id(id);
  return cc;
}

size_t CountSent(const Net& net, pb::MessageType type) {
  return std::count_if(net.sent.begin(), net.sent.end(),
                       [&](const pb::Message& m) { return m.type() == type; });
}

// ---------------------------------------------------------------------------------------------

TEST(RaftNode, CreateRejectsBadInput) {
  Config c;
  InitialState st;
  EXPECT_FALSE(RawNode::Create(c, st).ok());  // id 0
  c.id = 1;
  c.heartbeat_tick = 10;
  EXPECT_FALSE(RawNode::Create(c, st).ok());  // heartbeat >= election
  c.heartbeat_tick = 1;
  c.unreachable_campaign_ticks = 0;
  EXPECT_FALSE(RawNode::Create(c, st).ok());  // campaign delay after LeaderUnreachable < 1
  c.unreachable_campaign_ticks = c.election_tick + 1;
  EXPECT_FALSE(RawNode::Create(c, st).ok());  // ... or beyond the election timeout
  c.unreachable_campaign_ticks = 3;
  st.entries = {E(2, 1)};
  EXPECT_FALSE(RawNode::Create(c, st).ok());  // does not follow the (empty) snapshot
  st.entries = {E(1, 1)};
  st.hard_state.set_term(1);
  st.hard_state.set_commit(2);
  EXPECT_FALSE(RawNode::Create(c, st).ok());  // commit beyond the log
  st.hard_state.set_commit(1);
  auto r = RawNode::Create(c, st);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.value()->status().commit, 1u);
}

TEST(RaftNode, SingleNodeElectsItselfAndCommits) {
  Net net({1});
  net.node(1).Campaign();
  net.Stabilize();
  EXPECT_EQ(net.node(1).status().role, Role::kLeader);
  auto p = net.MustPropose(1, "x");
  EXPECT_EQ(net.node(1).status().commit, p.index);
  EXPECT_EQ(net.disk(1).state, std::vector<std::string>{"x"});
  // A single voter also becomes leader by ticking.
  Net ticked({1});
  EXPECT_NE(ticked.ElectLeader(), 0u);
}

TEST(RaftNode, ThreeNodesElectExactlyOneLeader) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    Config c;
    c.seed = seed;
    Net net({1, 2, 3}, c);
    uint64_t leader = net.ElectLeader();
    ASSERT_NE(leader, 0u);
    EXPECT_EQ(net.CountLeaders(), 1);
    net.Tick(30);
    EXPECT_EQ(net.Leader(), leader) << "a stable cluster keeps its leader";
    for (uint64_t id : {1, 2, 3}) EXPECT_EQ(net.node(id).status().leader, leader);
  }
  Net five({1, 2, 3, 4, 5});
  ASSERT_NE(five.ElectLeader(), 0u);
  EXPECT_EQ(five.CountLeaders(), 1);
}

TEST(RaftNode, ReplicatesAndAppliesEverywhere) {
  Net net({1, 2, 3});
  uint64_t l = net.ElectLeader();
  for (int i = 0; i < 50; ++i) net.MustPropose(l, "v" + std::to_string(i));
  for (uint64_t id : {1, 2, 3}) {
    EXPECT_EQ(net.disk(id).state.size(), 50u) << id;
    EXPECT_EQ(net.node(id).status().commit, net.node(l).status().last_index);
  }
  net.CheckApplied();
  uint64_t f = l == 1 ? 2 : 1;
  auto r = net.node(f).Propose("nope");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnavailable);
  EXPECT_EQ(r.status().message(), "not leader; leader=" + std::to_string(l));
}

// Raft paper Figure 7: whatever a follower's log looks like, the leader makes it its own.
TEST(RaftNode, Figure7FollowerLogsAreRepaired) {
  std::vector<uint64_t> leader_terms = {1, 1, 1, 4, 4, 5, 5, 6, 6, 6};
  std::vector<std::vector<uint64_t>> cases = {
      {1, 1, 1, 4, 4, 5, 5, 6, 6},           // (a) missing one
      {1, 1, 1, 4},                          // (b) missing many
      {1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6},     // (c) one extra
      {1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7},  // (d) extra of a newer term
      {1, 1, 1, 4, 4, 4, 4},                 // (e) missing and conflicting
      {1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3},     // (f) a whole different suffix
  };
  for (size_t c = 0; c < cases.size(); ++c) {
    Net net({1, 2, 3});
    auto init = [&](uint64_t id, const std::vector<uint64_t>& terms) {
      Disk& d = net.disk(id);
      d.entries.clear();
      for (size_t i = 0; i < terms.size(); ++i) d.entries.push_back(E(i + 1, terms[i], "x"));
      d.hs.set_term(7);
      d.conf_in_log = false;
      net.Start(id);
    };
    init(1, leader_terms);
    init(2, cases[c]);
    init(3, leader_terms);
    net.node(1).Campaign();
    net.Stabilize();
    ASSERT_EQ(net.node(1).status().role, Role::kLeader) << "case " << c;
    // Fast backtracking: one rejection (with a hint) per conflicting term at most.
    size_t rejects = std::count_if(net.sent.begin(), net.sent.end(), [](const pb::Message& m) {
      return m.type() == pb::MSG_APP_RESP && m.reject() && m.from() == 2;
    });
    EXPECT_LE(rejects, 3u) << "case " << c;
    net.MustPropose(1, "new");
    const auto& want = net.disk(1).entries;
    const auto& got = net.disk(2).entries;
    ASSERT_EQ(got.size(), want.size()) << "case " << c;
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(got[i].term(), want[i].term()) << "case " << c << " index " << i + 1;
    }
    EXPECT_EQ(net.node(2).status().commit, want.size());
  }
}

// Raft paper Figure 8: an entry of an older term on a majority is not committed by counting.
void Figure8(bool unsafe, uint64_t want_commit) {
  Config c;
  c.unsafe_commit_old_terms = unsafe;
  Net net({1, 2, 3, 4, 5}, c);
  std::vector<pb::Entry> base = {E(1, 1, "a"), E(2, 2, "b")};
  for (uint64_t id : {1, 2, 3}) {
    net.disk(id).entries = base;
    net.disk(id).hs.set_term(3);
    net.disk(id).hs.set_commit(1);
    net.disk(id).conf_in_log = false;
    net.Start(id);
  }
  net.disk(4).entries = {E(1, 1, "a")};
  net.disk(4).hs.set_term(3);
  net.disk(4).conf_in_log = false;
  net.Start(4);
  net.disk(5).entries = {E(1, 1, "a"), E(2, 3, "c")};
  net.disk(5).hs.set_term(3);
  net.disk(5).conf_in_log = false;
  net.Start(5);
  // Nothing of term 4 reaches anyone: followers only learn the leader's matching prefix.
  net.filter = [](pb::Message& m) {
    if (m.type() != pb::MSG_APP) return true;
    auto* ents = m.mutable_entries();
    while (!ents->empty() && ents->rbegin()->term() == 4) ents->RemoveLast();
    return true;
  };
  net.Cut(1, 5);
  net.node(1).Campaign();
  net.Stabilize();
  ASSERT_EQ(net.node(1).status().role, Role::kLeader);
  ASSERT_EQ(net.node(1).status().term, 4u);
  net.Tick(3);
  EXPECT_EQ(net.node(1).status().commit, want_commit);
}

TEST(RaftNode, Figure8OldTermEntryNotCommittedByCounting) { Figure8(false, 1); }

TEST(RaftNode, Figure8UnsafeSwitchCommitsOldTermEntry) { Figure8(true, 2); }

TEST(RaftNode, PreVoteKeepsPartitionedNodeFromRaisingTerm) {
  Net net({1, 2, 3});
  uint64_t l = net.ElectLeader();
  uint64_t f = l == 3 ? 2 : 3;
  uint64_t term = net.node(l).status().term;
  net.Isolate(f);
  net.Tick(100);
  EXPECT_EQ(net.node(f).status().term, term) << "pre-vote failed, so no term inflation";
  EXPECT_EQ(net.node(f).status().role, Role::kPreCandidate);
  net.Heal();
  net.Tick(20);
  EXPECT_EQ(net.Leader(), l);
  EXPECT_EQ(net.node(l).status().term, term);
  EXPECT_EQ(net.node(f).status().leader, l);
}

TEST(RaftNode, WithoutPreVoteARejoiningNodeDisruptsTheTerm) {
  Config c;
  c.pre_vote = false;
  c.check_quorum = false;
  Net net({1, 2, 3}, c);
  uint64_t l = net.ElectLeader();
  uint64_t f = l == 3 ? 2 : 3;
  uint64_t term = net.node(l).status().term;
  net.Isolate(f);
  net.Tick(100);
  EXPECT_GT(net.node(f).status().term, term + 2);
  net.Heal();
  net.Tick(50);
  EXPECT_NE(net.Leader(), 0u);
  EXPECT_GT(net.node(net.Leader()).status().term, term);
}

// Ticks until a node other than `old` leads, at most `limit`; -1 if none did.
int TicksToNewLeader(Net& net, uint64_t old, int limit) {
  for (int t = 0; t <= limit; ++t) {
    uint64_t l = net.Leader();
    if (l != 0 && l != old) return t;
    net.Tick();
  }
  return -1;
}

TEST(RaftNode, LeaderUnreachableElectsWithinAFewTicks) {
  // Both followers see the crash at the same tick (the worst case for a split vote): a new
  // leader comes within a few ticks for every seed, against an election timeout (10-19 ticks)
  // without the report.
  int worst = 0;
  int without_best = 1 << 20;
  for (uint64_t seed = 1; seed <= 40; ++seed) {
    for (bool report : {true, false}) {
      Config c;
      c.seed = seed;
      Net net({1, 2, 3}, c);
      uint64_t l = net.ElectLeader();
      net.Tick(3);
      net.Crash(l);
      if (report) {
        for (uint64_t id : {1, 2, 3}) {
          if (id != l) net.node(id).LeaderUnreachable(l);
        }
      }
      int ticks = TicksToNewLeader(net, l, 100);
      ASSERT_GE(ticks, 0) << "seed " << seed;
      EXPECT_EQ(net.CountLeaders(), 1);
      if (report) {
        worst = std::max(worst, ticks);
      } else {
        without_best = std::min(without_best, ticks);
      }
    }
  }
  EXPECT_LE(worst, 3 * Config{}.unreachable_campaign_ticks + 2);
  EXPECT_GE(without_best, Config{}.election_tick);
}

TEST(RaftNode, LeaderUnreachableIsIgnoredUnlessFollowingThatLeader) {
  Net net({1, 2, 3});
  uint64_t l = net.ElectLeader();
  uint64_t f = l == 1 ? 2 : 1;
  uint64_t other = 6 - l - f;
  net.node(f).LeaderUnreachable(other);  // not its leader
  net.node(l).LeaderUnreachable(l);      // a leader about itself
  EXPECT_EQ(net.node(f).status().leader, l);
  EXPECT_EQ(net.node(l).status().role, Role::kLeader);
  net.node(f).LeaderUnreachable(l);
  EXPECT_EQ(net.node(f).status().leader, 0u) << "the lease is dropped at once";
  net.Tick();
  EXPECT_EQ(net.node(f).status().leader, l) << "the next heartbeat restores it";
}

TEST(RaftNode, WrongLeaderUnreachableCannotDeposeALiveLeader) {
  // f is cut off from a live leader and told it is gone: it campaigns at once, but the other
  // follower still hears the leader and refuses, so the term and the leader stay.
  for (uint64_t seed = 1; seed <= 10; ++seed) {
    Config c;
    c.seed = seed;
    Net net({1, 2, 3}, c);
    uint64_t l = net.ElectLeader();
    uint64_t f = l == 3 ? 2 : 3;
    uint64_t term = net.node(l).status().term;
    net.Cut(l, f);
    net.node(f).LeaderUnreachable(l);
    net.Tick(8);  // under an election timeout: the others' leases hold
    EXPECT_NE(net.node(f).status().role, Role::kFollower) << "it campaigned early";
    EXPECT_EQ(net.node(f).status().term, term) << "pre-vote refused: no term change";
    EXPECT_EQ(net.Leader(), l);
    net.Heal();
    net.Tick(5);
    EXPECT_EQ(net.Leader(), l);
    EXPECT_EQ(net.node(l).status().term, term);
    EXPECT_EQ(net.node(f).status().leader, l);
    EXPECT_EQ(net.node(f).status().role, Role::kFollower);
  }
}

TEST(RaftNode, CheckQuorumLeaderStepsDownWhenCutOff) {
  Net net({1, 2, 3});
  uint64_t l = net.ElectLeader();
  net.Isolate(l);
  int ticks = 0;
  while (net.node(l).status().role == Role::kLeader && ticks < 100) {
    net.Tick();
    ++ticks;
  }
  EXPECT_LE(ticks, 2 * 10);
  EXPECT_NE(net.node(l).status().role, Role::kLeader);
  EXPECT_TRUE(net.TickUntil([&] { return net.Leader() != 0 && net.Leader() != l; }));
  uint64_t nl = net.Leader();
  net.Heal();
  net.MustPropose(nl, "after");
  net.Tick(5);
  EXPECT_EQ(net.node(l).status().leader, nl);
  EXPECT_EQ(net.disk(l).state.back(), "after");
}

TEST(RaftNode, StaleLeaderStepsDownOnHigherTermAnswer) {
  Config c;
  c.check_quorum = false;
  Net net({1, 2, 3}, c);
  uint64_t l = net.ElectLeader();
  net.Isolate(l);
  ASSERT_TRUE(net.TickUntil([&] {
    for (uint64_t id : {1, 2, 3}) {
      if (id != l && net.node(id).status().role == Role::kLeader) return true;
    }
    return false;
  }));
  EXPECT_EQ(net.node(l).status().role, Role::kLeader) << "no check-quorum: still thinks so";
  net.Heal();
  net.Tick(3);
  EXPECT_NE(net.node(l).status().role, Role::kLeader);
  EXPECT_EQ(net.CountLeaders(), 1);
}

TEST(RaftNode, VotesArePersistedBeforeTheirResponses) {
  // The harness checks this on every message; here the Ready shapes are checked directly.
  auto make = [](uint64_t id) {
    Config c;
    c.id = id;
    c.group = 7;
    InitialState st;
    st.conf = Voters({1, 2, 3});
    return std::move(RawNode::Create(c, st).value());
  };
  auto n1 = make(1);
  auto n2 = make(2);
  for (auto* n : {n1.get(), n2.get()}) {
    // A fresh node's first Ready persists the bootstrap conf entries.
    Ready boot = n->GetReady();
    EXPECT_EQ(boot.entries.size(), 3u);
    EXPECT_EQ(boot.committed.size(), 3u);
    EXPECT_EQ(boot.committed[0].type(), pb::ENTRY_CONF_CHANGE);
    ASSERT_TRUE(boot.hard_state.has_value());
    EXPECT_EQ(boot.hard_state->term(), 1u);
    EXPECT_EQ(boot.hard_state->commit(), 3u);
    n->Advance(boot);
  }
  n1->Campaign();
  Ready r1 = n1->GetReady();
  EXPECT_FALSE(r1.hard_state.has_value()) << "a pre-vote changes no persistent state";
  ASSERT_FALSE(r1.messages.empty());
  EXPECT_EQ(r1.messages[0].type(), pb::MSG_PRE_VOTE);
  EXPECT_TRUE(r1.messages_before_persist.empty());
  n1->Advance(r1);
  n2->Step(r1.messages[0]);
  Ready r2 = n2->GetReady();
  ASSERT_EQ(r2.messages.size(), 1u);
  EXPECT_EQ(r2.messages[0].type(), pb::MSG_PRE_VOTE_RESP);
  EXPECT_FALSE(r2.messages[0].reject());
  EXPECT_EQ(n2->status().term, 1u);
  n2->Advance(r2);
  n1->Step(r2.messages[0]);
  Ready r3 = n1->GetReady();
  ASSERT_TRUE(r3.hard_state.has_value());
  EXPECT_EQ(r3.hard_state->term(), 2u);
  EXPECT_EQ(r3.hard_state->vote(), 1u);
  EXPECT_TRUE(r3.must_sync);
  ASSERT_FALSE(r3.messages.empty());
  EXPECT_EQ(r3.messages[0].type(), pb::MSG_VOTE);
  n1->Advance(r3);
  n2->Step(r3.messages[0]);
  Ready r4 = n2->GetReady();
  ASSERT_TRUE(r4.hard_state.has_value());
  EXPECT_EQ(r4.hard_state->vote(), 1u);
  EXPECT_TRUE(r4.must_sync);
  EXPECT_TRUE(r4.messages_before_persist.empty());
  ASSERT_EQ(r4.messages.size(), 1u);
  EXPECT_EQ(r4.messages[0].type(), pb::MSG_VOTE_RESP);
  EXPECT_FALSE(r4.messages[0].reject());
}

TEST(RaftNode, ReadIndexOnLeaderAndViaFollower) {
  Net net({1, 2, 3});
  uint64_t l = net.ElectLeader();
  net.MustPropose(l, "x");
  uint64_t commit = net.node(l).status().commit;
  net.node(l).ReadIndex("r1");
  net.Stabilize();
  ASSERT_EQ(net.reads[l].size(), 1u);
  EXPECT_EQ(net.reads[l][0].index, commit);
  EXPECT_EQ(net.reads[l][0].context, "r1");
  uint64_t f = l == 1 ? 2 : 1;
  net.node(f).ReadIndex("r2");
  net.Stabilize();
  ASSERT_EQ(net.reads[f].size(), 1u);
  EXPECT_EQ(net.reads[f][0].index, commit);
  EXPECT_EQ(net.reads[f][0].context, "r2");
  // A leader cut off from the quorum cannot confirm its leadership: no answer.
  net.Isolate(l);
  net.node(l).ReadIndex("r3");
  net.Stabilize();
  EXPECT_EQ(net.reads[l].size(), 1u);
}

TEST(RaftNode, ReadIndexRefusedBeforeLeaderCommitsInItsTerm) {
  Net net({1, 2, 3});
  bool block = true;
  net.filter = [&](pb::Message& m) { return !(block && m.type() == pb::MSG_APP); };
  net.node(1).Campaign();
  net.Stabilize();
  ASSERT_EQ(net.node(1).status().role, Role::kLeader);
  net.node(1).ReadIndex("early");
  net.node(2).ReadIndex("early-f");
  net.Stabilize();
  EXPECT_TRUE(net.reads[1].empty());
  EXPECT_TRUE(net.reads[2].empty());
  block = false;
  net.Tick(2);
  ASSERT_EQ(net.node(1).status().commit, net.node(1).status().last_index);
  net.node(1).ReadIndex("late");
  net.Stabilize();
  ASSERT_EQ(net.reads[1].size(), 1u);
  EXPECT_EQ(net.reads[1][0].context, "late");
}

TEST(RaftNode, ReadIndexSingleVoterAnswersAtOnce) {
  Net net({1});
  net.node(1).Campaign();
  net.Stabilize();
  net.node(1).ReadIndex("q");
  Ready rd = net.node(1).GetReady();
  ASSERT_EQ(rd.read_states.size(), 1u);
  EXPECT_EQ(rd.read_states[0].index, net.node(1).status().commit);
  net.node(1).Advance(rd);
}

TEST(RaftNode, TransferToCaughtUpFollower) {
  Net net({1, 2, 3});
  uint64_t l = net.ElectLeader();
  uint64_t t = l == 2 ? 3 : 2;
  net.MustPropose(l, "a");
  net.node(l).TransferLeadership(t);
  net.Stabilize();
  EXPECT_EQ(net.node(t).status().role, Role::kLeader);
  EXPECT_EQ(net.CountLeaders(), 1);
  net.MustPropose(t, "b");
  net.Tick(3);
  for (uint64_t id : {1, 2, 3}) EXPECT_EQ(net.disk(id).state.back(), "b");
}

TEST(RaftNode, TransferToLaggingFollowerCatchesItUpFirst) {
  Net net({1, 2, 3});
  uint64_t l = net.ElectLeader();
  uint64_t t = l == 3 ? 2 : 3;
  net.Isolate(t);
  for (int i = 0; i < 5; ++i) net.MustPropose(l, "v" + std::to_string(i));
  net.Heal();
  net.node(l).TransferLeadership(t);
  EXPECT_EQ(net.node(l).status().transferee, t);
  auto busy = net.node(l).Propose("during");
  ASSERT_FALSE(busy.ok());
  EXPECT_NE(busy.status().message().find("busy"), std::string::npos);
  net.Stabilize();
  EXPECT_EQ(net.node(t).status().role, Role::kLeader);
  EXPECT_EQ(net.disk(t).state.size(), 5u);
}

TEST(RaftNode, TransferAbortsAfterElectionTimeout) {
  Net net({1, 2, 3});
  uint64_t l = net.ElectLeader();
  uint64_t t = l == 3 ? 2 : 3;
  net.Isolate(t);
  net.MustPropose(l, "a");
  net.node(l).TransferLeadership(t);
  EXPECT_FALSE(net.node(l).Propose("b").ok());
  net.Tick(10);
  EXPECT_EQ(net.node(l).status().transferee, 0u);
  EXPECT_EQ(net.Leader(), l);
  EXPECT_TRUE(net.node(l).Propose("c").ok());
}

TEST(RaftNode, FollowerAsksLeaderToTransfer) {
  Net net({1, 2, 3});
  uint64_t l = net.ElectLeader();
  uint64_t f = l == 1 ? 2 : 1;
  net.node(f).TransferLeadership(f);
  net.Stabilize();
  EXPECT_EQ(net.Leader(), f);
}

TEST(RaftNode, SnapshotSentInChunksToFollowerBehindCompactedLog) {
  Config c;
  c.snapshot_chunk_bytes = 16;
  Net net({1, 2, 3}, c);
  uint64_t l = net.ElectLeader();
  uint64_t f = l == 3 ? 2 : 3;
  net.Isolate(f);
  for (int i = 0; i < 20; ++i) net.MustPropose(l, "value-" + std::to_string(i));
  ASSERT_TRUE(net.CompactAt(l).ok());
  EXPECT_GT(net.node(l).status().first_index, 20u);
  net.Heal();
  net.Tick(3);
  EXPECT_GT(CountSent(net, pb::MSG_SNAP), 5u);
  ASSERT_TRUE(net.disk(f).snap.has_value());
  EXPECT_EQ(net.disk(f).state.size(), 20u);
  EXPECT_EQ(net.node(f).status().conf.voters_size(), 3);
  net.MustPropose(l, "after");
  EXPECT_EQ(net.disk(f).state.back(), "after");
  net.CheckApplied();
  // Restart the follower from its disk (snapshot + log) and keep going.
  net.Crash(f);
  net.Start(f);
  EXPECT_EQ(net.node(f).status().first_index, net.disk(f).snap->meta().index() + 1);
  net.MustPropose(l, "after-restart");
  net.Tick(2);
  EXPECT_EQ(net.disk(f).state.back(), "after-restart");
  net.CheckApplied();
}

TEST(RaftNode, SnapshotTransferSurvivesALostChunk) {
  Config c;
  c.snapshot_chunk_bytes = 8;
  Net net({1, 2, 3}, c);
  uint64_t l = net.ElectLeader();
  uint64_t f = l == 3 ? 2 : 3;
  net.Isolate(f);
  for (int i = 0; i < 10; ++i) net.MustPropose(l, "value-" + std::to_string(i));
  ASSERT_TRUE(net.CompactAt(l).ok());
  int dropped = 0;
  net.filter = [&](pb::Message& m) {
    if (m.type() == pb::MSG_SNAP && m.snapshot_offset() == 16 && dropped == 0) {
      ++dropped;
      return false;
    }
    return true;
  };
  net.Heal();
  ASSERT_TRUE(net.TickUntil([&] { return net.disk(f).state.size() == 10; }, 100));
  EXPECT_EQ(dropped, 1);
  net.CheckApplied();
}

// A stream held in memory; reads can be made to fail.
class MemSource final : public SnapshotSource {
 public:
  explicit MemSource(std::string bytes) : bytes_(std::move(bytes)) {}
  Result<SnapshotPiece> ReadAt(uint64_t offset, uint64_t max_bytes) override {
    ++reads;
    if (fail) return Status::IoError("injected read failure");
    if (offset > bytes_.size()) return Status::InvalidArgument("beyond the end");
    SnapshotPiece p;
    p.data = bytes_.substr(offset, max_bytes);
    p.last = offset + p.data.size() == bytes_.size();
    return p;
  }
  bool fail = false;
  int reads = 0;

 private:
  std::string bytes_;
};

// Collects what a follower receives; every transfer begins afresh.
class MemSink final : public SnapshotSink {
 public:
  Status Begin(const pb::SnapshotMeta& meta) override {
    ++begins;
    index = meta.index();
    bytes.clear();
    finished = false;
    return Status::Ok();
  }
  Status Write(const pb::SnapshotMeta& meta, uint64_t offset, std::string_view b) override {
    EXPECT_EQ(meta.index(), index);
    EXPECT_EQ(offset, bytes.size()) << "stream bytes out of order";
    if (refuse_writes) return Status::IoError("injected write failure");
    bytes.append(b);
    return Status::Ok();
  }
  Status Finish(const pb::SnapshotMeta& meta) override {
    EXPECT_EQ(meta.index(), index);
    finished = true;
    finished_bytes = bytes;
    return Status::Ok();
  }
  void Abort() override { ++aborts; }
  int begins = 0, aborts = 0;
  uint64_t index = 0;
  bool finished = false, refuse_writes = false;
  std::string bytes, finished_bytes;
};

std::string StreamBytes(char c, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s.push_back(static_cast<char>(c + i % 7));
  return s;
}

// Three nodes whose follower `f` was cut off while the leader `l` took proposals and compacted
// them into a snapshot with a stream: where every streamed-snapshot test starts.
struct LaggingFollower {
  LaggingFollower(uint64_t chunk_bytes, bool with_sink)
      : sink(with_sink ? std::make_shared<MemSink>() : nullptr),
        net({1, 2, 3}, WithSink(chunk_bytes, sink)),
        l(net.ElectLeader()),
        f(l == 3 ? 2 : 3) {}

  static Config WithSink(uint64_t chunk_bytes, std::shared_ptr<MemSink> sink) {
    Config c;
    c.snapshot_chunk_bytes = chunk_bytes;
    c.snapshot_sink = std::move(sink);
    return c;
  }

  // Cuts `f` off, has the leader take `prefix`0..`prefix`(count-1) and compact them into a
  // snapshot streaming `source`.
  Status Lag(int count, const std::string& prefix, std::shared_ptr<MemSource> source) {
    net.Isolate(f);
    for (int i = 0; i < count; ++i) net.MustPropose(l, prefix + std::to_string(i));
    return net.CompactAt(l, std::move(source));
  }

  std::shared_ptr<MemSink> sink;
  Net net;
  uint64_t l, f;
};

TEST(RaftNode, StreamedSnapshotGoesToTheSinkAfterItsData) {
  LaggingFollower lf(16, /*with_sink=*/true);
  auto& [sink, net, l, f] = lf;
  const std::string stream = StreamBytes('a', 300);
  ASSERT_TRUE(lf.Lag(12, "value-", std::make_shared<MemSource>(stream)).ok());
  net.Heal();
  ASSERT_TRUE(net.TickUntil([&] { return net.disk(f).state.size() == 12; }, 100));
  EXPECT_TRUE(sink->finished);
  EXPECT_EQ(sink->finished_bytes, stream);
  EXPECT_EQ(sink->begins, 1);
  // The in-memory part is what the follower installs (and persists); the stream went to the sink.
  EXPECT_EQ(net.disk(f).state.back(), "value-11");
  // Chunks never straddle the data and the stream.
  for (const pb::Message& m : net.sent) {
    if (m.type() != pb::MSG_SNAP) continue;
    EXPECT_TRUE(m.snapshot_streamed());
    uint64_t inline_bytes = m.snapshot_inline_bytes();
    if (m.snapshot_offset() < inline_bytes) {
      EXPECT_LE(m.snapshot_offset() + m.snapshot_chunk().size(), inline_bytes);
    }
  }
  net.MustPropose(l, "after");
  EXPECT_EQ(net.disk(f).state.back(), "after");
  net.CheckApplied();
}

TEST(RaftNode, StreamedSnapshotTransferRestartsOnANewerSnapshot) {
  LaggingFollower lf(16, /*with_sink=*/true);
  auto& [sink, net, l, f] = lf;
  ASSERT_TRUE(lf.Lag(5, "old-", std::make_shared<MemSource>(StreamBytes('a', 400))).ok());
  // Let a few stream chunks through, then lose the rest: the transfer stalls half way.
  int snaps = 0;
  net.filter = [&](pb::Message& m) { return m.type() != pb::MSG_SNAP || ++snaps <= 8; };
  net.Heal();
  net.Tick(2);
  ASSERT_GT(sink->bytes.size(), 0u);
  ASSERT_FALSE(sink->finished);
  // A newer snapshot replaces it (its records may be gone from the leader's disk): the follower
  // gets the new one from its start.
  const std::string newer = StreamBytes('k', 250);
  ASSERT_TRUE(lf.Lag(5, "new-", std::make_shared<MemSource>(newer)).ok());
  net.filter = nullptr;
  net.Heal();
  ASSERT_TRUE(net.TickUntil([&] { return net.disk(f).state.size() == 10; }, 200));
  EXPECT_EQ(sink->begins, 2);
  EXPECT_EQ(sink->finished_bytes, newer);
  net.CheckApplied();
}

TEST(RaftNode, StreamedSnapshotStartsOverWhenTheFollowerRestartsMidTransfer) {
  LaggingFollower lf(16, /*with_sink=*/true);
  auto& [sink, net, l, f] = lf;
  const std::string stream = StreamBytes('a', 320);
  ASSERT_TRUE(lf.Lag(5, "v", std::make_shared<MemSource>(stream)).ok());
  int snaps = 0;
  net.filter = [&](pb::Message& m) { return m.type() != pb::MSG_SNAP || ++snaps <= 10; };
  net.Heal();
  net.Tick(2);
  ASSERT_GT(sink->bytes.size(), 0u);
  ASSERT_FALSE(sink->finished);
  // The follower restarts with no partial copy; the leader's next chunk is past its start.
  net.Crash(f);
  net.Start(f);
  net.filter = nullptr;
  ASSERT_TRUE(net.TickUntil([&] { return net.disk(f).state.size() == 5; }, 200));
  EXPECT_EQ(sink->begins, 2);
  EXPECT_EQ(sink->finished_bytes, stream);
  net.CheckApplied();
}

TEST(RaftNode, StreamedSnapshotSurvivesLostChunksAndAFailedRead) {
  LaggingFollower lf(8, /*with_sink=*/true);
  auto& [sink, net, l, f] = lf;
  const std::string stream = StreamBytes('a', 120);
  auto source = std::make_shared<MemSource>(stream);
  source->fail = true;
  ASSERT_TRUE(lf.Lag(6, "v", source).ok());
  int dropped = 0;
  net.filter = [&](pb::Message& m) {
    bool in_stream = m.type() == pb::MSG_SNAP && m.snapshot_offset() >= m.snapshot_inline_bytes();
    if (in_stream && (m.snapshot_offset() - m.snapshot_inline_bytes()) % 24 == 8 && dropped < 3) {
      ++dropped;
      return false;
    }
    return true;
  };
  net.Heal();
  net.Tick(3);
  EXPECT_GT(source->reads, 0);
  EXPECT_FALSE(sink->finished) << "a source that cannot be read sends nothing";
  source->fail = false;  // the disk is back: the next attempt goes through
  ASSERT_TRUE(net.TickUntil([&] { return net.disk(f).state.size() == 6; }, 300));
  EXPECT_EQ(sink->finished_bytes, stream);
  EXPECT_GT(dropped, 0);
  net.CheckApplied();
}

TEST(RaftNode, StreamedSnapshotIsRefusedWithoutASinkAndNotResentWithoutItsStream) {
  LaggingFollower lf(16, /*with_sink=*/false);
  auto& [sink, net, l, f] = lf;
  ASSERT_TRUE(lf.Lag(4, "v", std::make_shared<MemSource>(StreamBytes('a', 40))).ok());
  net.Heal();
  net.Tick(5);
  EXPECT_TRUE(net.disk(f).state.empty()) << "installed a snapshot whose stream went nowhere";
  size_t rejects = 0;
  for (const pb::Message& m : net.sent) rejects += m.type() == pb::MSG_SNAP_RESP && m.reject();
  EXPECT_GT(rejects, 0u);
}

TEST(RaftNode, InstalledStreamedSnapshotIsSentOnlyOnceTheShellGivesItsStream) {
  LaggingFollower lf(16, /*with_sink=*/true);
  auto& [sink, net, l, f] = lf;
  const std::string stream = StreamBytes('a', 64);
  ASSERT_TRUE(lf.Lag(4, "v", std::make_shared<MemSource>(stream)).ok());
  net.Heal();
  ASSERT_TRUE(net.TickUntil([&] { return net.disk(f).state.size() == 4; }, 100));
  const uint64_t index = net.disk(f).snap->meta().index();
  // f leads now, and the third node has to catch up from f's snapshot.
  uint64_t third = 6 - l - f;
  net.Isolate(third);
  net.node(f).TransferLeadership(f);
  net.Stabilize();
  ASSERT_EQ(net.Leader(), f);
  net.Crash(third);
  net.disk(third) = Disk{};  // lost its disk: needs a snapshot
  net.disk(third).bootstrap = Voters({1, 2, 3});
  net.disk(third).conf_in_log = false;
  net.Start(third);
  net.Heal();
  net.sent.clear();
  net.Tick(5);
  EXPECT_EQ(CountSent(net, pb::MSG_SNAP), 0u) << "sent a snapshot without its stream";
  sink->finished = false;
  net.node(f).SetSnapshotStream(index, std::make_shared<MemSource>(stream));
  ASSERT_TRUE(net.TickUntil([&] { return sink->finished; }, 100));
  EXPECT_EQ(sink->finished_bytes, stream);
}

TEST(RaftNode, RestartReemitsCommittedEntriesAfterApplied) {
  Config c;
  c.id = 1;
  c.group = 7;
  InitialState st;
  st.conf = Voters({1, 2, 3});
  st.entries = {E(1, 1, "a"), E(2, 1, "b"), E(3, 1, "c"), E(4, 1, "d")};
  st.hard_state.set_term(1);
  st.hard_state.set_commit(3);
  st.applied = 1;
  auto n = std::move(RawNode::Create(c, st).value());
  ASSERT_TRUE(n->HasReady());
  Ready rd = n->GetReady();
  ASSERT_EQ(rd.committed.size(), 2u);
  EXPECT_EQ(rd.committed[0].data(), "b");
  EXPECT_EQ(rd.committed[1].data(), "c");
  EXPECT_TRUE(rd.entries.empty()) << "already persisted";
  n->Advance(rd);
  EXPECT_EQ(n->status().applied, 3u);
  EXPECT_FALSE(n->HasReady());
}

TEST(RaftNode, RestartWithUnsyncedCommitBehindApplied) {
  // The commit index is not synced on its own; the state machine may have applied further.
  Config c;
  c.id = 1;
  InitialState st;
  st.conf = Voters({1, 2, 3});
  st.entries = {E(1, 1, "a"), E(2, 1, "b"), E(3, 1, "c")};
  st.hard_state.set_term(1);
  st.hard_state.set_commit(1);
  st.applied = 2;
  auto r = RawNode::Create(c, st);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r.value()->status().commit, 2u);
  EXPECT_FALSE(r.value()->GetReady().committed.size() > 0);
  st.applied = 4;
  EXPECT_FALSE(RawNode::Create(c, st).ok()) << "applied beyond the log";
}

TEST(RaftNode, RestartLearnsConfFromBootstrapEntries) {
  Net net({1, 2, 3});
  uint64_t l = net.ElectLeader();
  net.MustPropose(l, "x");
  uint64_t f = l == 1 ? 2 : 1;
  net.Crash(f);
  net.Start(f);  // no snapshot: InitialState.conf is empty
  EXPECT_EQ(net.node(f).status().conf.voters_size(), 3);
  net.Crash(l);
  net.Start(l);
  EXPECT_EQ(net.node(l).status().conf.voters_size(), 3);
  EXPECT_NE(net.ElectLeader(), 0u);
}

TEST(RaftNode, RestartFromSnapshotState) {
  Config c;
  c.id = 2;
  c.group = 7;
  InitialState st;
  pb::SnapshotMeta meta;
  meta.set_index(10);
  meta.set_term(3);
  *meta.mutable_conf() = Voters({1, 2, 3});
  st.snapshot = meta;
  st.conf = meta.conf();
  st.entries = {E(11, 3, "k"), E(12, 4, "l")};
  st.hard_state.set_term(4);
  st.hard_state.set_commit(12);
  st.applied = 10;
  auto n = std::move(RawNode::Create(c, st).value());
  NodeStatus s = n->status();
  EXPECT_EQ(s.first_index, 11u);
  EXPECT_EQ(s.last_index, 12u);
  EXPECT_EQ(s.applied, 10u);
  Ready rd = n->GetReady();
  ASSERT_EQ(rd.committed.size(), 2u);
  EXPECT_EQ(rd.committed[0].index(), 11u);
  // Entries not following the snapshot are refused.
  st.entries = {E(12, 4)};
  EXPECT_FALSE(RawNode::Create(c, st).ok());
}

TEST(RaftNode, AddLearnerCatchUpAndPromote) {
  Net net({1, 2, 3});
  uint64_t l = net.ElectLeader();
  for (int i = 0; i < 5; ++i) net.MustPropose(l, "v" + std::to_string(i));
  net.AddEmpty(4);
  ASSERT_TRUE(net.node(l).ProposeConfChange(CC(pb::CONF_ADD_LEARNER, 4)).ok());
  net.Stabilize();
  net.Tick(3);
  NodeStatus s = net.node(l).status();
  ASSERT_EQ(s.conf.learners_size(), 1);
  EXPECT_EQ(s.conf.learners(0), 4u);
  bool found = false;
  for (const auto& p : s.progress) {
    if (p.id != 4) continue;
    found = true;
    EXPECT_TRUE(p.learner);
    EXPECT_EQ(p.match, s.last_index);
  }
  EXPECT_TRUE(found);
  EXPECT_EQ(net.disk(4).state.size(), 5u);
  EXPECT_EQ(net.node(4).status().conf.voters_size(), 3) << "learned the conf from the log";
  // A learner never campaigns.
  net.Isolate(4);
  net.Tick(50);
  EXPECT_EQ(net.node(4).status().role, Role::kFollower);
  net.Heal();
  net.Tick(3);
  ASSERT_TRUE(net.node(l).ProposeConfChange(CC(pb::CONF_ADD_VOTER, 4)).ok());
  net.Stabilize();
  net.Tick(2);
  s = net.node(l).status();
  EXPECT_EQ(s.conf.voters_size(), 4);
  EXPECT_EQ(s.conf.learners_size(), 0);
  // Four voters need three: with two cut off nothing commits.
  uint64_t others[2];
  int k = 0;
  for (uint64_t id : {1, 2, 3, 4}) {
    if (id != l && k < 2) others[k++] = id;
  }
  net.Isolate(others[0]);
  net.Isolate(others[1]);
  uint64_t before = net.node(l).status().commit;
  ASSERT_TRUE(net.node(l).Propose("stuck").ok());
  net.Stabilize();
  EXPECT_EQ(net.node(l).status().commit, before);
}

TEST(RaftNode, SecondConfChangeConflictsUntilApplied) {
  Net net({1, 2, 3});
  uint64_t l = net.ElectLeader();
  net.Isolate(l == 2 ? 1 : 2);
  net.Isolate(l == 3 ? 1 : 3);
  net.AddEmpty(4);
  ASSERT_TRUE(net.node(l).ProposeConfChange(CC(pb::CONF_ADD_LEARNER, 4)).ok());
  auto second = net.node(l).ProposeConfChange(CC(pb::CONF_ADD_LEARNER, 5));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kConflict);
  net.Heal();
  net.Tick(3);
  EXPECT_TRUE(net.node(l).ProposeConfChange(CC(pb::CONF_ADD_LEARNER, 5)).ok());
  EXPECT_FALSE(net.node(l).ProposeConfChange(CC(pb::CONF_REMOVE, 0)).ok());
}

TEST(RaftNode, RemoveFollower) {
  Net net({1, 2, 3});
  uint64_t l = net.ElectLeader();
  uint64_t f = l == 3 ? 2 : 3;
  ASSERT_TRUE(net.node(l).ProposeConfChange(CC(pb::CONF_REMOVE, f)).ok());
  net.Stabilize();
  net.Tick(2);
  EXPECT_EQ(net.node(l).status().conf.voters_size(), 2);
  net.Crash(f);
  net.MustPropose(l, "two");
  net.Tick(2);
  EXPECT_EQ(net.disk(l).state.back(), "two");
  // Messages from the removed node are ignored.
  pb::Message vote;
  vote.set_group(7);
  vote.set_type(pb::MSG_VOTE);
  vote.set_from(f);
  vote.set_to(l);
  vote.set_term(100);
  vote.set_index(1000);
  vote.set_log_term(100);
  vote.set_context("transfer");
  net.node(l).Step(vote);
  EXPECT_EQ(net.node(l).status().role, Role::kLeader);
  EXPECT_LT(net.node(l).status().term, 100u);
}

TEST(RaftNode, RemoveLeaderStepsDownAndOthersElect) {
  Net net({1, 2, 3});
  uint64_t l = net.ElectLeader();
  ASSERT_TRUE(net.node(l).ProposeConfChange(CC(pb::CONF_REMOVE, l)).ok());
  // Nothing may follow its own removal in the leader's log.
  auto after = net.node(l).Propose("x");
  ASSERT_FALSE(after.ok());
  EXPECT_NE(after.status().message().find("busy"), std::string::npos);
  net.Stabilize();
  EXPECT_NE(net.node(l).status().role, Role::kLeader);
  net.Crash(l);
  ASSERT_TRUE(net.TickUntil([&] { return net.Leader() != 0; }));
  uint64_t nl = net.Leader();
  EXPECT_EQ(net.node(nl).status().conf.voters_size(), 2);
  net.MustPropose(nl, "without-old-leader");
  net.CheckApplied();
}

TEST(RaftNode, InflightWindowCapsMessagesInFlight) {
  Config c;
  c.max_inflight_msgs = 2;
  c.max_msg_bytes = 1;  // one entry per MsgApp
  Net net({1, 2, 3}, c);
  uint64_t l = net.ElectLeader();
  net.MustPropose(l, "warm");  // followers reach the replicate state
  uint64_t f = l == 3 ? 2 : 3;
  net.filter = [&](pb::Message& m) { return !(m.from() == f && m.type() == pb::MSG_APP_RESP); };
  net.sent.clear();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(net.node(l).Propose("p" + std::to_string(i)).ok());
  net.Stabilize();
  size_t to_f = std::count_if(net.sent.begin(), net.sent.end(), [&](const pb::Message& m) {
    return m.type() == pb::MSG_APP && m.to() == f && m.entries_size() > 0;
  });
  EXPECT_EQ(to_f, 2u);
  net.filter = nullptr;
  net.Tick(15);
  EXPECT_EQ(net.disk(f).state.size(), 11u);
}

TEST(RaftNode, InflightBytesCapMessagesInFlight) {
  Config c;
  c.max_inflight_bytes = 100;
  c.max_msg_bytes = 1;
  Net net({1, 2}, c);
  uint64_t l = net.ElectLeader();
  net.MustPropose(l, "warm");
  uint64_t f = l == 1 ? 2 : 1;
  net.filter = [&](pb::Message& m) { return !(m.from() == f && m.type() == pb::MSG_APP_RESP); };
  net.sent.clear();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(net.node(l).Propose(std::string(60, 'x')).ok());
  net.Stabilize();
  size_t to_f = std::count_if(net.sent.begin(), net.sent.end(), [&](const pb::Message& m) {
    return m.type() == pb::MSG_APP && m.to() == f && m.entries_size() > 0;
  });
  EXPECT_EQ(to_f, 2u);  // 76 bytes then 152 >= 100
}

TEST(RaftNode, BatchesByMaxMsgBytes) {
  Config c;
  c.max_msg_bytes = 1 << 20;
  Net net({1, 2}, c);
  uint64_t l = net.ElectLeader();
  uint64_t f = l == 1 ? 2 : 1;
  net.Isolate(f);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(net.node(l).Propose("b").ok());
  net.Stabilize();
  net.Heal();
  net.sent.clear();
  net.Tick(2);
  size_t max_batch = 0;
  for (const auto& m : net.sent) {
    if (m.type() == pb::MSG_APP) max_batch = std::max<size_t>(max_batch, m.entries_size());
  }
  EXPECT_GE(max_batch, 20u);
  EXPECT_EQ(net.disk(f).state.size(), 20u);
}

TEST(RaftNode, UncommittedBytesBoundProposals) {
  Config c;
  c.max_uncommitted_bytes = 100;
  Net net({1, 2, 3}, c);
  uint64_t l = net.ElectLeader();
  net.Isolate(l);
  ASSERT_TRUE(net.node(l).Propose(std::string(60, 'a')).ok());
  auto r = net.node(l).Propose(std::string(60, 'b'));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnavailable);
  EXPECT_NE(r.status().message().find("busy"), std::string::npos);
  auto big = net.node(l).Propose(std::string(101, 'c'));
  EXPECT_EQ(big.status().code(), Code::kTooLarge);
}

TEST(RaftNode, ForeignGroupAndMisaddressedMessagesDropped) {
  Net net({1, 2, 3});
  uint64_t l = net.ElectLeader();
  uint64_t f = l == 1 ? 2 : 1;
  uint64_t term = net.node(f).status().term;
  pb::Message m;
  m.set_group(8);
  m.set_type(pb::MSG_APP);
  m.set_from(9);
  m.set_to(f);
  m.set_term(term + 5);
  net.node(f).Step(m);
  EXPECT_EQ(net.node(f).status().term, term) << "other group";
  m.set_group(7);
  m.set_to(f == 1 ? 3 : 1);
  net.node(f).Step(m);
  EXPECT_EQ(net.node(f).status().term, term) << "addressed to another node";
  m.set_to(f);
  m.set_type(pb::MSG_PRE_VOTE);
  net.node(f).Step(m);
  EXPECT_FALSE(net.node(f).HasReady()) << "a stranger's pre-vote under the lease: no answer";
  // Garbage entries in an append are dropped, not applied.
  pb::Message bad;
  bad.set_group(7);
  bad.set_type(pb::MSG_APP);
  bad.set_from(l);
  bad.set_to(f);
  bad.set_term(term);
  bad.set_index(net.node(f).status().last_index);
  bad.set_log_term(term);
  *bad.add_entries() = E(1, term);  // wrong index
  uint64_t last = net.node(f).status().last_index;
  net.node(f).Step(bad);
  EXPECT_EQ(net.node(f).status().last_index, last);
}

TEST(RaftNode, CrashRestartKeepsCommittedEntries) {
  Net net({1, 2, 3});
  uint64_t l = net.ElectLeader();
  for (int i = 0; i < 10; ++i) net.MustPropose(l, "c" + std::to_string(i));
  for (uint64_t id : {1, 2, 3}) {
    net.Crash(id);
    net.Start(id);
  }
  uint64_t nl = net.ElectLeader();
  ASSERT_NE(nl, 0u);
  net.MustPropose(nl, "later");
  net.Tick(2);
  for (uint64_t id : {1, 2, 3}) {
    ASSERT_EQ(net.disk(id).state.size(), 11u) << id;
    EXPECT_EQ(net.disk(id).state.back(), "later");
  }
  net.CheckApplied();
}

// Random faults against the safety properties: one leader per term, committed entries never
// change, every node applies the same sequence; and the cluster recovers once faults stop.
class Fuzz {
 public:
  explicit Fuzz(uint64_t seed) : rng_(seed) {
    Config c;
    c.seed = seed;
    const uint64_t chunks[] = {16, 64, 1 << 20};
    const uint64_t msg_bytes[] = {1, 256, 1 << 20};
    const size_t inflight[] = {1, 4, 256};
    c.snapshot_chunk_bytes = chunks[(seed / 4) % 3];
    c.max_msg_bytes = msg_bytes[(seed / 12) % 3];
    c.max_inflight_msgs = inflight[(seed / 36) % 3];
    c.heartbeat_tick = 1 + (seed / 108) % 2;
    c.election_tick = (seed / 216) % 2 ? 5 : 10;
    c.pre_vote = seed % 4 != 1;
    c.check_quorum = seed % 4 != 2;
    net_ = std::make_unique<Net>(std::vector<uint64_t>{1, 2, 3}, c);
    net_->record_sent = false;
    net_->AddEmpty(4);
    net_->AddEmpty(5);
  }

  void Run(int steps) {
    for (int i = 0; i < steps && !::testing::Test::HasFailure(); ++i) {
      OneStep();
      CheckLeaders();
    }
    Recover();
  }

 private:
  uint64_t Pick() { return 1 + rng_() % 5; }
  bool Chance(int pct) { return static_cast<int>(rng_() % 100) < pct; }

  void ProcessAll() {
    for (auto& [id, n] : net_->nodes_) net_->Process(id);
  }

  void DeliverSome() {
    ProcessAll();
    auto& q = net_->queue_;
    size_t k = std::min<size_t>(q.size(), 1 + rng_() % 8);
    for (size_t i = 0; i < k && !q.empty(); ++i) {
      size_t at = rng_() % q.size();
      pb::Message m = q[at];
      q.erase(q.begin() + at);
      if (Chance(10)) continue;       // lost
      if (Chance(5)) q.push_back(m);  // duplicated
      net_->Deliver(std::move(m));
    }
  }

  uint64_t AnyLeader() {
    for (auto& [id, n] : net_->nodes_) {
      if (n->status().role == Role::kLeader) return id;
    }
    return 0;
  }

  void OneStep() {
    int r = rng_() % 100;
    uint64_t id = Pick();
    uint64_t l = AnyLeader();
    if (r < 40) {
      DeliverSome();
    } else if (r < 65) {
      if (net_->up(id)) net_->node(id).Tick();
    } else if (r < 75) {
      if (l) (void)net_->node(l).Propose("d" + std::to_string(next_++));
    } else if (r < 77) {
      int how = rng_() % 3;
      if (!net_->up(id)) {
      } else if (how == 0) {
        net_->Crash(id);
      } else if (how == 1) {
        net_->CrashLosingUnsynced(id);
      } else {
        net_->CrashMidReady(id);
      }
    } else if (r < 80) {
      if (!net_->up(id)) net_->Start(id);
    } else if (r < 82) {
      net_->Isolate(id);
    } else if (r < 84) {
      net_->Heal();
    } else if (r < 86) {
      if (net_->up(id)) {
        Status st = net_->CompactAt(id);
        EXPECT_TRUE(st.ok()) << st.ToString() << "\n" << Dump();
      }
    } else if (r < 88) {
      if (l) {
        auto type = static_cast<pb::ConfChangeType>(rng_() % 3);
        (void)net_->node(l).ProposeConfChange(CC(type, id));
      }
    } else if (r < 90) {
      if (l) net_->node(l).TransferLeadership(id);
    } else if (r < 92) {
      if (net_->up(id)) net_->node(id).ReadIndex("r" + std::to_string(next_++));
    } else {
      for (int i = 0; i < 5; ++i) DeliverSome();
    }
    if (Chance(70)) ProcessAll();  // otherwise a crash may hit a node with a Ready pending
  }

  std::string Dump() {
    std::string out;
    for (auto& [id, n] : net_->nodes_) {
      NodeStatus s = n->status();
      out += "node " + std::to_string(id) + " role=" + RoleName(s.role) +
             " term=" + std::to_string(s.term) + " lead=" + std::to_string(s.leader) +
             " commit=" + std::to_string(s.commit) + " applied=" + std::to_string(s.applied) +
             " first=" + std::to_string(s.first_index) + " last=" + std::to_string(s.last_index) +
             " conf=" + s.conf.ShortDebugString() + "\n";
      for (const auto& p : s.progress) {
        out += "   progress " + std::to_string(p.id) + " match=" + std::to_string(p.match) +
               " next=" + std::to_string(p.next) + " " + p.state + "\n";
      }
      if (net_->disk(id).snap) {
        out += "   disk snap=" + std::to_string(net_->disk(id).snap->meta().index()) + "\n";
      }
      const auto& ents = net_->disk(id).entries;
      for (size_t i = ents.size() > 4 ? ents.size() - 4 : 0; i < ents.size(); ++i) {
        pb::ConfChange cc;
        if (ents[i].type() == pb::ENTRY_CONF_CHANGE) cc.ParseFromString(ents[i].data());
        out += "   " + std::to_string(ents[i].index()) + "@" + std::to_string(ents[i].term()) +
               " type=" + std::to_string(ents[i].type()) + " " + cc.ShortDebugString() + "\n";
      }
    }
    return out;
  }

  void CheckLeaders() {
    for (auto& [id, n] : net_->nodes_) {
      NodeStatus s = n->status();
      if (s.role != Role::kLeader) continue;
      auto [it, fresh] = leaders_.emplace(s.term, id);
      ASSERT_TRUE(fresh || it->second == id) << "two leaders in term " << s.term;
      EXPECT_LE(s.commit, s.last_index);
      EXPECT_LE(s.applied, s.commit);
    }
  }

  // No more faults: everyone up and connected; a leader of the final conf commits a write that
  // every voter applies.
  void Recover() {
    net_->Heal();
    for (uint64_t id = 1; id <= 5; ++id) {
      if (!net_->up(id)) net_->Start(id);
    }
    ASSERT_TRUE(net_->TickUntil([&] { return AnyLeader() != 0; }, 1000)) << "no leader\n" << Dump();
    // Propose (again, if a leader change lost it) until a write commits on every voter.
    std::optional<ProposalId> p;
    auto done = [&] {
      uint64_t l = AnyLeader();
      if (l == 0) return false;
      if (p) {
        auto it = net_->applied_everywhere.find(p->index);
        bool lost = it != net_->applied_everywhere.end() && it->second.first != p->term;
        if (lost || net_->node(l).status().term != p->term) p.reset();
      }
      if (!p) {
        auto r = net_->node(l).Propose("final");
        if (r.ok()) p = r.value();
        last_error_ = r.status().ToString();
        return false;
      }
      NodeStatus st = net_->node(l).status();
      for (uint64_t v : st.conf.voters()) {
        if (net_->disk(v).applied < p->index) return false;
      }
      return true;
    };
    if (!net_->TickUntil(done, 2000) && std::getenv("RAFT_FUZZ_TRACE")) {
      net_->record_sent = true;
      net_->sent.clear();
      net_->Tick(12);
      for (auto& m : net_->sent) {
        if (m.type() != pb::MSG_HEARTBEAT && m.type() != pb::MSG_HEARTBEAT_RESP) {
          printf("%s\n", m.ShortDebugString().substr(0, 300).c_str());
        }
      }
    }
    ASSERT_TRUE(net_->TickUntil(done, 1)) << "no write reaches every voter: " << last_error_ << "\n"
                                          << Dump();
    net_->CheckApplied();
  }

  std::mt19937_64 rng_;
  std::unique_ptr<Net> net_;
  std::map<uint64_t, uint64_t> leaders_;
  uint64_t next_ = 0;
  std::string last_error_;
};

// RAFT_FUZZ_SEEDS=N RAFT_FUZZ_FROM=S run a longer soak; a failure names its seed.
uint64_t EnvOr(const char* name, uint64_t def) {
  const char* v = std::getenv(name);
  return v ? std::strtoull(v, nullptr, 10) : def;
}

TEST(RaftFuzz, SafetyUnderRandomFaults) {
  uint64_t from = EnvOr("RAFT_FUZZ_FROM", 1);
  uint64_t n = EnvOr("RAFT_FUZZ_SEEDS", 60);
  for (uint64_t seed = from; seed < from + n && !HasFailure(); ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    Fuzz(seed).Run(3000);
  }
}

}  // namespace
}  // namespace haven::raft
