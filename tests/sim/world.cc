#include "world.h"

#include <algorithm>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include "base/log.h"
#include "raft/raw_node.h"
#include "sim_rng.h"
#include "workload.h"

namespace haven::sim {
namespace {

namespace rpb = haven::raft::pb;

// Every limit the simulator keeps so that a misbehaving core cannot make a seed run forever.
constexpr uint64_t kMaxEvents = 5'000'000;
constexpr size_t kMaxQueuedEvents = 2'000'000;
constexpr size_t kMaxNodes = 16;  // nodes ever created: each membership cycle adds one

// What a node's disk holds. `boot_conf` is written when the node is created: the initial voters
// of a new cluster, or nothing for a node that joins later.
struct DiskState {
  rpb::HardState hard_state;
  std::optional<rpb::Snapshot> snapshot;
  std::vector<rpb::Entry> entries;  // contiguous, after the snapshot
  rpb::ConfState boot_conf;
};

struct DiskWrite {
  std::optional<rpb::HardState> hard_state;
  std::optional<rpb::Snapshot> snapshot;
  std::vector<rpb::Entry> entries;
};

uint64_t SnapIndex(const DiskState& d) { return d.snapshot ? d.snapshot->meta().index() : 0; }

uint64_t LastIndex(const DiskState& d) {
  return d.entries.empty() ? SnapIndex(d) : d.entries.back().index();
}

// Applies one write as the Ready contract says; returns an error text when the write cannot be
// applied (a gap in the log), which is a core bug.
std::string ApplyWrite(DiskState& d, const DiskWrite& w) {
  if (w.hard_state) d.hard_state = *w.hard_state;
  // A compaction may already have put a newer snapshot on disk.
  if (w.snapshot && w.snapshot->meta().index() > SnapIndex(d)) {
    const auto& meta = w.snapshot->meta();
    // Keep the suffix only if the log agrees with the snapshot at its index (Raft 7.3).
    auto it = std::find_if(d.entries.begin(), d.entries.end(),
                           [&](const rpb::Entry& e) { return e.index() == meta.index(); });
    if (it != d.entries.end() && it->term() == meta.term()) {
      d.entries.erase(d.entries.begin(), it + 1);
    } else {
      d.entries.clear();
    }
    d.snapshot = *w.snapshot;
  }
  if (w.entries.empty()) return "";
  uint64_t first = w.entries.front().index();
  uint64_t snap = SnapIndex(d);
  if (first > LastIndex(d) + 1) {
    return "persist: entries start at " + std::to_string(first) + " but the log ends at " +
           std::to_string(LastIndex(d));
  }
  while (!d.entries.empty() && d.entries.back().index() >= first) d.entries.pop_back();
  for (const auto& e : w.entries) {
    if (e.index() > snap) d.entries.push_back(e);
  }
  return "";
}

// A disk whose unsynced writes may be lost on a crash (any prefix of them survives).
struct Disk {
  DiskState synced;
  std::vector<DiskWrite> pending;

  std::string Sync() {
    std::string err;
    for (const auto& w : pending) {
      std::string e = ApplyWrite(synced, w);
      if (err.empty()) err = e;
    }
    pending.clear();
    return err;
  }
  void Crash(Rng& rng) {
    size_t keep = static_cast<size_t>(rng.Range(0, static_cast<int64_t>(pending.size())));
    pending.resize(keep);
    Sync();
  }
  DiskState View() const {
    DiskState v = synced;
    for (const auto& w : pending) ApplyWrite(v, w);
    return v;
  }
};

struct Node {
  uint64_t id = 0;
  bool up = false;
  uint64_t incarnation = 0;  // bumped by crash/wipe: events of an older life are ignored
  std::unique_ptr<raft::RawNode> raft;
  Disk disk;
  uint64_t applied = 0, applied_term = 0;
  bool syncing = false;
  raft::Ready inflight;
  int64_t tick_us = 10'000;
  bool parked = false;  // not running on purpose: removed for good, or added but not started yet
  raft::Role role = raft::Role::kFollower;
};

struct CommittedEntry {
  uint64_t term = 0;
  rpb::EntryType type = rpb::ENTRY_NORMAL;
  std::string data;
  std::string fingerprint;  // the replica's state right after applying it (Workload::Fingerprint)
  uint64_t first_node = 0;
  // The term of the first node that applied it, when it did: the leader that committed the entry
  // had this term or an older one. Leaders of later terms must hold it (Leader Completeness);
  // a leader of an older term, elected late by a delayed vote, need not.
  uint64_t seen_in_term = 0;
};

// The membership cycle: remove a voter and retire it, add a fresh node as a learner, promote it.
// The fresh node gets a new id: an emptied node under its old id could vote again in terms it
// already voted in and, counted by a stale leader's old configuration, elect it.
enum class MemberPhase { kIdle, kRemoving, kAdding, kPromoting };

class World : public Cluster {
 public:
  World(const SimOptions& o, std::ostream* trace)
      : o_(o),
        f_(o.faults),
        rng_(o.seed * 0x2545f4914f6cdd1dULL + 17),
        trace_(o.trace ? trace : nullptr) {
    w_ = o.workload == WorkloadKind::kQueues ? MakeQueueWorkload(*this)
                                             : MakeRegistryWorkload(*this);
  }

  SimResult Run();

  // ---- what the workload sees (Cluster) ----
  const SimOptions& options() const override { return o_; }
  SimStats& stats() override { return result_.stats; }
  Rng& rng() override { return rng_; }
  int64_t Now() const override { return now_; }
  bool ok() const override { return result_.ok; }
  bool Tracing() const override { return trace_ != nullptr; }
  void TraceLine(const std::string& text) override { Trace(text); }
  size_t NodeCount() const override { return nodes_.size(); }
  bool Up(uint64_t id) const override { return Valid(id) && nodes_[id - 1].up; }
  uint64_t Incarnation(uint64_t id) const override {
    return Valid(id) ? nodes_[id - 1].incarnation : 0;
  }
  uint64_t Applied(uint64_t id) const override { return Valid(id) ? nodes_[id - 1].applied : 0; }
  Result<raft::ProposalId> Propose(uint64_t id, const std::string& data) override {
    if (!Up(id)) return Status::Unavailable("node " + std::to_string(id) + " is down");
    return N(id).raft->Propose(data);
  }
  void Pump(uint64_t id) override {
    if (Up(id)) Pump(N(id));
  }
  void ReadIndex(uint64_t id, const std::string& context) override {
    if (!Up(id)) return;
    N(id).raft->ReadIndex(context);
    Pump(N(id));
  }

  // ---- events ----
  void At(int64_t t, std::function<void()> fn) override {
    if (queue_.size() >= kMaxQueuedEvents) {
      Fail("sim: event queue over " + std::to_string(kMaxQueuedEvents));
      return;
    }
    queue_.emplace(std::make_pair(t, seq_++), std::move(fn));
  }
  template <typename... A>
  void Trace(const A&... parts) {
    if (!trace_) return;
    std::ostringstream line;
    line << "t=" << now_ << ' ';
    (line << ... << parts);
    *trace_ << line.str() << '\n';
  }
  void Fail(const std::string& reason) override {
    if (!result_.ok) return;
    result_.ok = false;
    result_.reason = reason;
    Trace("VIOLATION ", reason);
  }
  bool Faulty() const { return now_ < o_.duration_us; }

  // ---- nodes ----
  void CreateNodes();
  Node& N(uint64_t id) { return nodes_[id - 1]; }
  bool Valid(uint64_t id) const { return id >= 1 && id <= nodes_.size(); }
  uint64_t RandomNode() {
    return static_cast<uint64_t>(rng_.Range(1, static_cast<int64_t>(nodes_.size())));
  }
  raft::Config MakeConfig(const Node& n) const;
  void Start(Node& n);
  void Crash(Node& n, const char* why);
  void ReportGoneLater(uint64_t gone, uint64_t inc);
  void Retire(Node& n);
  uint64_t AddNode();
  void ScheduleTick(Node& n, int64_t delay);
  void Pump(Node& n);
  void Process(Node& n, raft::Ready ready);
  void Finish(Node& n, const raft::Ready& ready);
  void InstallSnapshot(Node& n, const rpb::Snapshot& snap);
  void ApplyEntry(Node& n, const rpb::Entry& e);
  void CheckPersistedEntries(const Node& n, const std::vector<rpb::Entry>& entries);
  void CheckLeaderCompleteness(const Node& n, uint64_t term);
  void NoteRole(Node& n, const raft::SoftState& s);
  uint64_t Leader() override;

  // ---- network ----
  void Send(const rpb::Message& m);
  void Deliver(const rpb::Message& m);
  bool Blocked(uint64_t from, uint64_t to) const { return blocked_.count({from, to}) > 0; }

  // ---- faults ----
  void FaultStep();
  void Partition();
  void IsolateOutbound(uint64_t id);
  bool CrashAndRestart(uint64_t id, const char* why);
  void Compact(Node& n);
  void MembershipStep();
  void Heal();

  // ---- final checks ----
  void CheckEnd();
  void CheckLogMatching();
  void PeriodicCheck() {
    CheckLogMatching();
    At(now_ + 1'000'000, [this] { PeriodicCheck(); });
  }

  SimOptions o_;
  FaultProfile f_;
  Rng rng_;
  std::ostream* trace_;
  SimResult result_;
  int64_t now_ = 0;
  int64_t leader_crashed_at_ = -1;  // a leader crashed and no election was won since
  uint64_t seq_ = 0;
  std::map<std::pair<int64_t, uint64_t>, std::function<void()>> queue_;
  std::deque<Node> nodes_;  // a deque: adding a node keeps references to the others valid
  std::unique_ptr<Workload> w_;
  std::map<std::pair<uint64_t, uint64_t>, int64_t> blocked_;  // (from, to) -> heal time
  std::map<uint64_t, uint64_t> leader_of_term_;
  std::map<uint64_t, CommittedEntry> committed_;
  MemberPhase member_phase_ = MemberPhase::kIdle;
  uint64_t member_victim_ = 0, member_joiner_ = 0;
  int64_t member_next_ = 0;
  uint64_t max_msg_bytes_ = 1 << 20;
  size_t max_inflight_ = 256;
  uint64_t chunk_bytes_ = 1 << 20;
};

// ---------------------------------------------------------------------------------------------
// Nodes

void World::CreateNodes() {
  rpb::ConfState boot;
  for (int i = 1; i <= o_.nodes; ++i) boot.add_voters(static_cast<uint64_t>(i));
  nodes_.resize(static_cast<size_t>(o_.nodes));
  for (int i = 0; i < o_.nodes; ++i) {
    Node& n = nodes_[static_cast<size_t>(i)];
    n.id = static_cast<uint64_t>(i + 1);
    n.disk.synced.boot_conf = boot;
    double drift = (rng_.Uniform() * 2 - 1) * f_.max_drift;
    n.tick_us = static_cast<int64_t>(static_cast<double>(o_.tick_us) * (1 + drift));
    Start(n);
  }
}

raft::Config World::MakeConfig(const Node& n) const {
  raft::Config c;
  c.id = n.id;
  c.group = 1;
  c.election_tick = 10;
  c.heartbeat_tick = 1;
  c.max_inflight_msgs = max_inflight_;
  c.max_msg_bytes = max_msg_bytes_;
  c.snapshot_chunk_bytes = chunk_bytes_;
  c.seed = o_.seed * 1000003 + n.id * 7919 + n.incarnation;
  c.unsafe_commit_old_terms = o_.unsafe_commit_old_terms;
  return c;
}

void World::Start(Node& n) {
  const DiskState& d = n.disk.synced;
  raft::InitialState init;
  init.hard_state = d.hard_state;
  init.conf = d.snapshot ? d.snapshot->meta().conf() : d.boot_conf;
  if (d.snapshot) init.snapshot = d.snapshot->meta();
  init.entries = d.entries;
  init.applied = SnapIndex(d);
  // The commit index may not have been synced with the snapshot that covers it.
  if (init.hard_state.commit() < SnapIndex(d)) init.hard_state.set_commit(SnapIndex(d));
  auto created = raft::RawNode::Create(MakeConfig(n), init);
  if (!created.ok()) {
    Fail("core: restart of node " + std::to_string(n.id) +
         " failed: " + created.status().ToString());
    return;
  }
  n.raft = std::move(created).value();
  n.up = true;
  n.syncing = false;
  n.role = raft::Role::kFollower;
  w_->OnNodeStarted(n.id);
  n.applied = SnapIndex(d);
  n.applied_term = d.snapshot ? d.snapshot->meta().term() : 0;
  Status rs = w_->ResetReplica(n.id, d.snapshot ? &d.snapshot->data() : nullptr);
  if (!rs.ok()) Fail("node " + std::to_string(n.id) + " cannot restore: " + rs.ToString());
  // InitialState carries only the snapshot's metadata: hand the core the whole snapshot again so
  // that, as a leader, it can send it to followers behind its log (without this a restarted
  // leader leaves such a follower behind for good: --strict-core shows it).
  if (d.snapshot && o_.core_workarounds) {
    Status cs = n.raft->Compact(*d.snapshot);
    if (!cs.ok())
      Fail("core: node " + std::to_string(n.id) + " refuses its own snapshot: " + cs.ToString());
  }
  Trace("start node=", n.id, " inc=", n.incarnation, " snap=", SnapIndex(d), " last=", LastIndex(d),
        " term=", d.hard_state.term(), " commit=", d.hard_state.commit());
  ScheduleTick(n, rng_.Range(1, n.tick_us));
  Pump(n);
}

void World::Crash(Node& n, const char* why) {
  if (!n.up) return;
  if (n.role == raft::Role::kLeader) {
    result_.stats.leader_crashes++;
    if (leader_crashed_at_ < 0) leader_crashed_at_ = now_;
  }
  if (f_.detect_leader_death) ReportGoneLater(n.id, n.incarnation + 1);
  w_->OnNodeLost(n.id);
  n.up = false;
  n.raft.reset();
  n.syncing = false;
  n.incarnation++;
  size_t before = n.disk.pending.size();
  n.disk.Crash(rng_);
  result_.stats.crashes++;
  Trace("crash node=", n.id, " why=", why, " unsynced_writes=", before);
}

// What the shell's probe does: each live node learns, a little later, that `gone` refuses
// connections, if it is still down (in life `inc`, the one that starts with this crash).
void World::ReportGoneLater(uint64_t gone, uint64_t inc) {
  for (auto& m : nodes_) {
    if (m.id == gone || !m.up) continue;
    uint64_t id = m.id, minc = m.incarnation;
    At(now_ + rng_.Range(f_.min_detect_us, f_.max_detect_us), [this, id, minc, gone, inc] {
      Node& x = N(id);
      if (!x.up || x.incarnation != minc || N(gone).up || N(gone).incarnation != inc) return;
      result_.stats.unreachable_reports++;
      Trace("leader-unreachable node=", id, " gone=", gone);
      x.raft->LeaderUnreachable(gone);
      Pump(x);
    });
  }
}

void World::Retire(Node& n) {
  Crash(n, "removed");
  n.parked = true;
  n.incarnation++;  // no scheduled restart brings it back
}

// A node joining the existing cluster: empty, with an empty conf (RawNode's contract).
uint64_t World::AddNode() {
  if (nodes_.size() >= kMaxNodes) return 0;
  Node& n = nodes_.emplace_back();
  n.id = nodes_.size();
  n.parked = true;
  double drift = (rng_.Uniform() * 2 - 1) * f_.max_drift;
  n.tick_us = static_cast<int64_t>(static_cast<double>(o_.tick_us) * (1 + drift));
  Trace("add-node node=", n.id);
  return n.id;
}

void World::ScheduleTick(Node& n, int64_t delay) {
  uint64_t id = n.id, inc = n.incarnation;
  At(now_ + delay, [this, id, inc] {
    Node& m = N(id);
    if (!m.up || m.incarnation != inc) return;
    m.raft->Tick();
    Pump(m);
    ScheduleTick(m, m.tick_us);
  });
}

void World::Pump(Node& n) {
  while (result_.ok && n.up && !n.syncing && n.raft->HasReady()) Process(n, n.raft->GetReady());
}

void World::NoteRole(Node& n, const raft::SoftState& s) {
  if (s.role == n.role && s.role != raft::Role::kLeader) return;
  bool was_leader = n.role == raft::Role::kLeader;
  n.role = s.role;
  if (s.role != raft::Role::kLeader || was_leader) return;
  uint64_t term = n.raft->status().term;
  auto [it, fresh] = leader_of_term_.emplace(term, n.id);
  if (!fresh && it->second != n.id) {
    Fail("two leaders in term " + std::to_string(term) + ": nodes " + std::to_string(it->second) +
         " and " + std::to_string(n.id));
  }
  result_.stats.elections++;
  if (leader_crashed_at_ >= 0) {
    int64_t took = now_ - leader_crashed_at_;
    result_.stats.failovers++;
    result_.stats.failover_us_total += took;
    result_.stats.failover_us_max = std::max(result_.stats.failover_us_max, took);
    leader_crashed_at_ = -1;
  }
  Trace("elected node=", n.id, " term=", term);
  CheckLeaderCompleteness(n, term);
  if (Faulty() && rng_.Chance(f_.p_isolate_new_leader)) IsolateOutbound(n.id);
  if (Faulty() && rng_.Chance(f_.p_crash_new_leader)) {
    uint64_t id = n.id, inc = n.incarnation;
    At(now_ + rng_.Range(0, f_.new_leader_crash_max_us), [this, id, inc] {
      Node& m = N(id);
      if (m.up && m.incarnation == inc && m.role == raft::Role::kLeader)
        CrashAndRestart(id, "new-leader");
    });
  }
}

void World::Process(Node& n, raft::Ready ready) {
  for (const auto& m : ready.messages_before_persist) Send(m);
  CheckPersistedEntries(n, ready.entries);
  DiskWrite w{ready.hard_state, ready.snapshot, ready.entries};
  bool writes = w.hard_state || w.snapshot || !w.entries.empty();
  if (writes) n.disk.pending.push_back(std::move(w));
  // After queuing the write, so that the disk's view holds the new leader's whole log.
  if (ready.soft_state) NoteRole(n, *ready.soft_state);
  if (!ready.must_sync) {
    Finish(n, ready);
    return;
  }
  int64_t delay = rng_.Chance(f_.slow_fsync) ? rng_.Range(f_.max_fsync_us, f_.slow_fsync_us)
                                             : rng_.Range(f_.min_fsync_us, f_.max_fsync_us);
  n.syncing = true;
  n.inflight = std::move(ready);
  uint64_t id = n.id, inc = n.incarnation;
  At(now_ + delay, [this, id, inc] {
    Node& m = N(id);
    if (!m.up || m.incarnation != inc) return;
    std::string err = m.disk.Sync();
    if (!err.empty()) Fail("core: node " + std::to_string(id) + " " + err);
    m.syncing = false;
    raft::Ready r = std::move(m.inflight);
    m.inflight = raft::Ready{};
    Finish(m, r);
    Pump(m);
  });
}

void World::Finish(Node& n, const raft::Ready& ready) {
  for (const auto& m : ready.messages) Send(m);
  if (ready.snapshot) InstallSnapshot(n, *ready.snapshot);
  for (const auto& e : ready.committed) {
    if (!result_.ok) return;
    ApplyEntry(n, e);
  }
  for (const auto& rs : ready.read_states) w_->OnReadState(n.id, rs);
  n.raft->Advance(ready);
  if (!ready.committed.empty() && n.role == raft::Role::kLeader && Faulty() &&
      rng_.Chance(f_.p_crash_after_commit)) {
    uint64_t id = n.id;
    At(now_, [this, id] { CrashAndRestart(id, "after-commit"); });
  }
  w_->OnReadyDone(n.id);
}

void World::InstallSnapshot(Node& n, const rpb::Snapshot& snap) {
  Status restored = w_->InstallSnapshot(n.id, snap.data());
  if (!restored.ok()) {
    Fail("core: node " + std::to_string(n.id) + " got a bad snapshot: " + restored.ToString());
    return;
  }
  uint64_t index = snap.meta().index();
  if (index < n.applied) {
    Fail("core: node " + std::to_string(n.id) + " installs snapshot " + std::to_string(index) +
         " behind its applied " + std::to_string(n.applied));
    return;
  }
  n.applied = index;
  n.applied_term = snap.meta().term();
  result_.stats.snapshots_installed++;
  Trace("install-snapshot node=", n.id, " index=", index, " term=", snap.meta().term());
  auto it = committed_.find(index);
  if (it != committed_.end() && it->second.term != snap.meta().term()) {
    Fail("snapshot at index " + std::to_string(index) + " has term " +
         std::to_string(snap.meta().term()) + " but the entry committed there has term " +
         std::to_string(it->second.term));
  } else if (it != committed_.end() && it->second.fingerprint != w_->Fingerprint(n.id)) {
    Fail("snapshot at index " + std::to_string(index) + " on node " + std::to_string(n.id) +
         " differs from the state applied there");
  }
  w_->OnSnapshotInstalled(n.id, index);
}

void World::ApplyEntry(Node& n, const rpb::Entry& e) {
  if (e.index() != n.applied + 1) {
    Fail("core: node " + std::to_string(n.id) + " applies index " + std::to_string(e.index()) +
         " after " + std::to_string(n.applied));
    return;
  }
  if (e.type() == rpb::ENTRY_NORMAL && !e.data().empty()) {
    std::string err = w_->Apply(n.id, e.index(), e.data());
    if (!err.empty()) {
      Fail("node " + std::to_string(n.id) + " cannot apply the entry at " +
           std::to_string(e.index()) + ": " + err);
      return;
    }
  }
  n.applied = e.index();
  n.applied_term = e.term();
  std::string fp = w_->Fingerprint(n.id);
  auto [it, fresh] = committed_.emplace(
      e.index(), CommittedEntry{e.term(), e.type(), e.data(), fp, n.id, n.raft->status().term});
  if (fresh) {
    result_.stats.committed++;
    w_->OnCommitted(n.id, e.index());
    Trace("commit index=", e.index(), " term=", e.term(), " type=", rpb::EntryType_Name(e.type()),
          " by=", n.id, " state=", fp);
  } else if (it->second.term != e.term() || it->second.data != e.data() ||
             it->second.type != e.type()) {
    Fail("committed entry changed: index " + std::to_string(e.index()) + " applied by node " +
         std::to_string(it->second.first_node) + " with term " + std::to_string(it->second.term) +
         ", by node " + std::to_string(n.id) + " with term " + std::to_string(e.term()));
    return;
  } else if (it->second.fingerprint != fp) {
    Fail("state machines diverge at index " + std::to_string(e.index()) + ": node " +
         std::to_string(n.id) + " has " + fp + ", node " + std::to_string(it->second.first_node) +
         " had " + it->second.fingerprint);
    return;
  }
  if (e.type() == rpb::ENTRY_CONF_CHANGE) {
    rpb::ConfChange cc;
    cc.ParseFromString(e.data());
    if (fresh) result_.stats.conf_changes++;
    Trace("conf-change node=", n.id, " index=", e.index(), " ", rpb::ConfChangeType_Name(cc.type()),
          " ", cc.node_id());
  }
  w_->OnApplied(n.id, e.index(), e.term());
}

// A node never rewrites what it already applied: that entry was committed.
void World::CheckPersistedEntries(const Node& n, const std::vector<rpb::Entry>& entries) {
  for (const auto& e : entries) {
    if (e.index() > n.applied) break;
    auto it = committed_.find(e.index());
    if (it == committed_.end() || it->second.term == e.term()) continue;
    Fail("committed entry lost: node " + std::to_string(n.id) + " rewrites its applied index " +
         std::to_string(e.index()) + " (term " + std::to_string(it->second.term) + ") with term " +
         std::to_string(e.term()));
    return;
  }
}

// Leader completeness: a leader of term T holds every entry committed in a term before T.
void World::CheckLeaderCompleteness(const Node& n, uint64_t term) {
  DiskState log = n.disk.View();
  uint64_t snap = SnapIndex(log);
  for (const auto& [index, c] : committed_) {
    if (index <= snap || c.seen_in_term >= term) continue;
    const rpb::Entry* e = nullptr;
    if (!log.entries.empty() && index >= log.entries.front().index() &&
        index <= log.entries.back().index()) {
      e = &log.entries[index - log.entries.front().index()];
    }
    if (e == nullptr || e->term() != c.term) {
      Fail("leader completeness: node " + std::to_string(n.id) + " leads term " +
           std::to_string(term) + " without the entry committed at index " + std::to_string(index) +
           " (term " + std::to_string(c.term) + "), it has " +
           (e ? "term " + std::to_string(e->term()) : std::string("nothing")));
      return;
    }
  }
}

uint64_t World::Leader() {
  uint64_t best = 0, best_term = 0;
  for (auto& n : nodes_) {
    if (!n.up || n.role != raft::Role::kLeader) continue;
    uint64_t t = n.raft->status().term;
    if (t > best_term) best = n.id, best_term = t;
  }
  return best;
}

// ---------------------------------------------------------------------------------------------
// Network

void World::Send(const rpb::Message& m) {
  result_.stats.messages++;
  if (m.to() == 0 || m.to() > nodes_.size() || Blocked(m.from(), m.to()) ||
      (Faulty() && rng_.Chance(f_.msg_drop))) {
    result_.stats.dropped++;
    if (trace_) {
      Trace("drop ", m.from(), "->", m.to(), " ", rpb::MessageType_Name(m.type()),
            " term=", m.term());
    }
    return;
  }
  int copies = Faulty() && rng_.Chance(f_.msg_duplicate) ? 2 : 1;
  for (int i = 0; i < copies; ++i) {
    int64_t delay = rng_.Chance(f_.slow_msg) ? rng_.Range(f_.max_latency_us, f_.slow_latency_us)
                                             : rng_.Range(f_.min_latency_us, f_.max_latency_us);
    At(now_ + delay, [this, m] { Deliver(m); });
  }
}

void World::Deliver(const rpb::Message& m) {
  Node& n = N(m.to());
  if (!n.up || Blocked(m.from(), m.to())) {
    result_.stats.dropped++;
    return;
  }
  if (trace_) {
    Trace("deliver ", m.from(), "->", m.to(), " ", rpb::MessageType_Name(m.type()),
          " term=", m.term(), " logterm=", m.log_term(), " index=", m.index(),
          " n=", m.entries_size(), " commit=", m.commit(), m.reject() ? " reject" : "");
    if (m.type() == rpb::MSG_SNAP) {
      Trace("  snap index=", m.snapshot_meta().index(), " term=", m.snapshot_meta().term(),
            " offset=", m.snapshot_offset(), " bytes=", m.snapshot_chunk().size(),
            m.snapshot_done() ? " done" : "");
    }
  }
  n.raft->Step(m);
  Pump(n);
}

// ---------------------------------------------------------------------------------------------
// Faults

void World::FaultStep() {
  if (!Faulty() || !result_.ok) return;
  At(now_ + f_.fault_every_us, [this] { FaultStep(); });
  int max_down = f_.max_down >= 0 ? f_.max_down : o_.nodes / 2;
  int down = 0;
  std::vector<uint64_t> live;
  for (auto& n : nodes_) {
    if (n.up)
      live.push_back(n.id);
    else if (!n.parked)
      down++;
  }
  auto crash = [&](uint64_t id, const char* why) {
    if (down < max_down && CrashAndRestart(id, why)) down++;
  };
  if (!live.empty() && rng_.Chance(f_.p_crash)) crash(rng_.Pick(live), "random");
  if (rng_.Chance(f_.p_crash_leader)) crash(Leader(), "leader");
  if (rng_.Chance(f_.p_partition)) Partition();
  if (f_.p_false_unreachable > 0 && rng_.Chance(f_.p_false_unreachable)) {
    Node& n = N(RandomNode());
    uint64_t lead = n.up ? n.raft->status().leader : 0;
    if (lead != 0 && lead != n.id) {
      result_.stats.unreachable_reports++;
      Trace("leader-unreachable node=", n.id, " gone=", lead, " (wrong: it is alive)");
      n.raft->LeaderUnreachable(lead);
      Pump(n);
    }
  }
  if (rng_.Chance(f_.p_compact)) {
    Node& n = N(RandomNode());
    if (n.up && !n.syncing) Compact(n);
  }
  if (rng_.Chance(f_.p_transfer)) {
    uint64_t l = Leader();
    if (l) {
      auto conf = N(l).raft->status().conf;
      if (conf.voters_size() > 1) {
        uint64_t to = conf.voters(static_cast<int>(rng_.Range(0, conf.voters_size() - 1)));
        if (to != l) {
          Trace("transfer-leadership from=", l, " to=", to);
          N(l).raft->TransferLeadership(to);
          Pump(N(l));
        }
      }
    }
  }
  if (member_phase_ == MemberPhase::kIdle && rng_.Chance(f_.p_membership) &&
      nodes_.size() < kMaxNodes && Leader() != 0) {
    auto voters = N(Leader()).raft->status().conf.voters();
    member_victim_ = voters[static_cast<int>(rng_.Range(0, voters.size() - 1))];
    member_phase_ = MemberPhase::kRemoving;
    Trace("membership start victim=", member_victim_);
  }
}

bool World::CrashAndRestart(uint64_t id, const char* why) {
  if (id == 0) return false;
  Node& n = N(id);
  if (!n.up) return false;
  Crash(n, why);
  uint64_t inc = n.incarnation;
  At(now_ + rng_.Range(f_.min_down_us, f_.max_down_us), [this, id, inc] {
    Node& m = N(id);
    if (!m.up && m.incarnation == inc) Start(m);
  });
  return true;
}

void World::IsolateOutbound(uint64_t id) {
  int64_t from = now_ + rng_.Range(0, 3'000);
  int64_t until = from + rng_.Range(1'000, f_.new_leader_crash_max_us);
  At(from, [this, id, until] {
    std::vector<std::pair<uint64_t, uint64_t>> cut;
    for (uint64_t b = 1; b <= nodes_.size(); ++b) {
      if (b != id) cut.push_back({id, b});
    }
    for (auto& link : cut) blocked_[link] = std::max(blocked_[link], until);
    Trace("partition leader-outbound ", id, " until=", until);
    At(until, [this, cut] {
      for (auto& link : cut) {
        auto it = blocked_.find(link);
        if (it != blocked_.end() && it->second <= now_) blocked_.erase(it);
      }
    });
  });
}

void World::Partition() {
  int64_t until = now_ + rng_.Range(f_.min_partition_us, f_.max_partition_us);
  uint64_t a = RandomNode();
  std::vector<std::pair<uint64_t, uint64_t>> cut;
  int kind = static_cast<int>(rng_.Range(0, 2));
  if (kind == 0) {  // isolate a
    for (uint64_t b = 1; b <= nodes_.size(); ++b) {
      if (b != a) cut.push_back({a, b}), cut.push_back({b, a});
    }
  } else {  // one-way (kind 1) or symmetric (kind 2) cut of one link
    uint64_t b = RandomNode();
    if (b == a) b = a % nodes_.size() + 1;
    cut.push_back({a, b});
    if (kind == 2) cut.push_back({b, a});
  }
  for (auto& link : cut) {
    auto& t = blocked_[link];
    t = std::max(t, until);
  }
  result_.stats.partitions++;
  Trace("partition ",
        kind == 0   ? "isolate "
        : kind == 1 ? "one-way "
                    : "link ",
        a, " links=", cut.size(), " until=", until);
  At(until, [this, cut] {
    for (auto& link : cut) {
      auto it = blocked_.find(link);
      if (it != blocked_.end() && it->second <= now_) blocked_.erase(it);
    }
    Trace("heal-partition links=", cut.size());
  });
}

void World::Compact(Node& n) {
  if (n.applied <= SnapIndex(n.disk.synced) + 5) return;
  rpb::Snapshot snap;
  snap.mutable_meta()->set_index(n.applied);
  snap.mutable_meta()->set_term(n.applied_term);
  *snap.mutable_meta()->mutable_conf() = n.raft->status().conf;
  snap.set_data(w_->TakeSnapshot(n.id));
  Status s = n.raft->Compact(snap);
  Trace("compact node=", n.id, " index=", n.applied, " ", s.ok() ? "ok" : s.ToString());
  if (!s.ok()) return;
  // A snapshot file is written and synced whole, then the log before it is dropped.
  DiskState& d = n.disk.synced;
  uint64_t index = n.applied;
  d.entries.erase(std::remove_if(d.entries.begin(), d.entries.end(),
                                 [index](const rpb::Entry& e) { return e.index() <= index; }),
                  d.entries.end());
  d.snapshot = std::move(snap);
  result_.stats.compactions++;
  Pump(n);
}

// One step of remove -> retire -> add a fresh learner -> promote, driven by the leader's applied
// configuration (the truth), retried until each change shows there.
void World::MembershipStep() {
  At(now_ + 100'000, [this] { MembershipStep(); });
  if (member_phase_ == MemberPhase::kIdle || !result_.ok) return;
  uint64_t l = Leader();
  if (l == 0) return;
  Node& leader = N(l);
  raft::NodeStatus st = leader.raft->status();
  auto in = [](const google::protobuf::RepeatedField<uint64_t>& ids, uint64_t id) {
    return std::find(ids.begin(), ids.end(), id) != ids.end();
  };
  auto propose = [&](rpb::ConfChangeType type, uint64_t id) {
    rpb::ConfChange cc;
    cc.set_type(type);
    cc.set_node_id(id);
    auto r = leader.raft->ProposeConfChange(cc);
    Trace("propose-conf leader=", l, " ", rpb::ConfChangeType_Name(type), " ", id, " ",
          r.ok() ? "ok" : r.status().ToString());
    Pump(leader);
  };
  uint64_t victim = member_victim_, joiner = member_joiner_;
  switch (member_phase_) {
    case MemberPhase::kRemoving:
      if (l == victim) {
        for (uint64_t to : st.conf.voters()) {
          if (to != l) {
            leader.raft->TransferLeadership(to);
            Pump(leader);
            break;
          }
        }
      } else if (in(st.conf.voters(), victim) || in(st.conf.learners(), victim)) {
        propose(rpb::CONF_REMOVE, victim);
      } else {
        Retire(N(victim));
        member_joiner_ = AddNode();
        member_phase_ = member_joiner_ ? MemberPhase::kAdding : MemberPhase::kIdle;
        member_next_ = now_ + rng_.Range(100'000, 500'000);
      }
      break;
    case MemberPhase::kAdding:
      if (now_ < member_next_) break;
      if (!in(st.conf.voters(), joiner) && !in(st.conf.learners(), joiner)) {
        propose(rpb::CONF_ADD_LEARNER, joiner);
      } else {
        N(joiner).parked = false;
        Start(N(joiner));
        member_phase_ = MemberPhase::kPromoting;
      }
      break;
    case MemberPhase::kPromoting:
      if (in(st.conf.voters(), joiner)) {
        member_phase_ = MemberPhase::kIdle;
        Trace("membership done removed=", victim, " added=", joiner);
        break;
      }
      for (const auto& p : st.progress) {
        if (p.id == joiner && p.learner && p.match + 5 >= st.commit) {
          propose(rpb::CONF_ADD_VOTER, joiner);
        }
      }
      break;
    case MemberPhase::kIdle:
      break;
  }
}

void World::Heal() {
  Trace("heal: partitions cleared, crashed nodes restarted, faults stop");
  blocked_.clear();
  for (auto& n : nodes_) {
    if (!n.up && !n.parked) Start(n);
  }
  w_->OnHeal();
}

// ---------------------------------------------------------------------------------------------
// End-of-run checks

void World::CheckLogMatching() {
  std::vector<std::pair<uint64_t, DiskState>> logs;
  for (auto& n : nodes_) logs.emplace_back(n.id, n.disk.View());
  for (auto& [id, d] : logs) {
    for (const auto& e : d.entries) {
      if (e.index() > d.hard_state.commit()) break;
      auto it = committed_.find(e.index());
      if (it != committed_.end() && it->second.term != e.term()) {
        Fail("committed entry lost: node " + std::to_string(id) + " has committed term " +
             std::to_string(e.term()) + " at index " + std::to_string(e.index()) + ", term " +
             std::to_string(it->second.term) + " was committed");
        return;
      }
    }
  }
  for (size_t a = 0; a < logs.size(); ++a) {
    for (size_t b = a + 1; b < logs.size(); ++b) {
      std::map<uint64_t, const rpb::Entry*> other;
      for (const auto& e : logs[b].second.entries) other[e.index()] = &e;
      // Scanning down from the top: once two logs agree at an index, all before must agree.
      bool matched = false;
      for (auto it = logs[a].second.entries.rbegin(); it != logs[a].second.entries.rend(); ++it) {
        auto o = other.find(it->index());
        if (o == other.end()) continue;
        bool same = o->second->term() == it->term();
        if (same && o->second->data() != it->data()) {
          Fail("log matching: nodes " + std::to_string(logs[a].first) + " and " +
               std::to_string(logs[b].first) + " hold different entries of term " +
               std::to_string(it->term()) + " at index " + std::to_string(it->index()));
          return;
        }
        if (matched && !same) {
          Fail("log matching: nodes " + std::to_string(logs[a].first) + " and " +
               std::to_string(logs[b].first) + " agree above index " + std::to_string(it->index()) +
               " but differ there");
          return;
        }
        matched = matched || same;
      }
    }
  }
}

void World::CheckEnd() {
  CheckLogMatching();
  if (!result_.ok) return;
  uint64_t l = Leader();
  if (l == 0) {
    Fail("liveness: no leader " + std::to_string(o_.heal_us / 1000) + " ms after healing");
    return;
  }
  raft::NodeStatus st = N(l).raft->status();
  for (uint64_t id : st.conf.voters()) {
    if (id == 0 || id > nodes_.size()) continue;
    Node& n = N(id);
    if (!n.up || n.applied + 1 < st.commit) {
      Fail("liveness: voter " + std::to_string(id) + " applied " + std::to_string(n.applied) +
           " of leader " + std::to_string(l) + "'s commit " + std::to_string(st.commit) +
           " after healing");
      return;
    }
  }
  w_->CheckEnd();
}

SimResult World::Run() {
  // Per-seed shapes of the core's flow control: one entry per append, small snapshot chunks.
  if (rng_.Chance(0.5)) max_msg_bytes_ = 1;
  if (rng_.Chance(0.3)) max_inflight_ = static_cast<size_t>(rng_.Range(1, 4));
  chunk_bytes_ = rng_.Chance(0.5) ? static_cast<uint64_t>(rng_.Range(16, 512)) : 1 << 20;
  Trace("seed=", o_.seed, " nodes=", o_.nodes, " max_msg_bytes=", max_msg_bytes_,
        " max_inflight=", max_inflight_, " chunk=", chunk_bytes_,
        " unsafe=", o_.unsafe_commit_old_terms ? 1 : 0);
  CreateNodes();
  w_->Begin();
  At(f_.fault_every_us, [this] { FaultStep(); });
  At(100'000, [this] { MembershipStep(); });
  At(o_.duration_us, [this] { Heal(); });
  At(1'000'000, [this] { PeriodicCheck(); });
  int64_t end = o_.duration_us + o_.heal_us;
  while (result_.ok && !queue_.empty()) {
    auto it = queue_.begin();
    if (it->first.first > end) break;
    now_ = it->first.first;
    auto fn = std::move(it->second);
    queue_.erase(it);
    fn();
    if (++result_.stats.events > kMaxEvents)
      Fail("sim: over " + std::to_string(kMaxEvents) + " events");
  }
  now_ = std::max(now_, end);
  if (result_.ok) w_->Finish();
  if (result_.ok) CheckEnd();
  result_.stats.sim_time_us = now_;
  return result_;
}

}  // namespace

SimResult RunSeed(const SimOptions& options, std::ostream* trace) {
  // The core logs with wall-clock timestamps; the simulation's own trace is what replays.
  static const bool silenced = log::SetLevel("off");
  (void)silenced;
  SimOptions o = options;
  o.nodes = std::clamp(o.nodes, 1, 7);
  o.clients = std::clamp(o.clients, 1, 16);
  o.keys = std::clamp(o.keys, 1, 16);
  World world(o, trace);
  return world.Run();
}

SimOptions OptionsForSeed(uint64_t seed) {
  SimOptions o;
  o.seed = seed;
  o.nodes = seed % 2 ? 3 : 5;
  if (seed % 5 == 0) o.faults = Figure8Faults();
  return o;
}

FaultProfile Figure8Faults() {
  FaultProfile f;
  f.p_crash = 0.03;
  f.p_crash_leader = 0.15;
  f.p_partition = 0.10;
  f.p_compact = 0.02;
  f.p_transfer = 0.02;
  f.p_membership = 0;
  f.msg_drop = 0.05;
  f.min_down_us = 20'000;
  f.max_down_us = 400'000;
  f.max_partition_us = 600'000;
  f.max_down = 2;
  f.p_crash_new_leader = 1.0;
  f.p_isolate_new_leader = 0.5;
  f.p_crash_after_commit = 0.1;
  return f;
}

}  // namespace haven::sim
