// The registry workload: every node runs registry::StateMachine; clients put unique values and
// read keys, and their history must be linearizable per key.
#include <algorithm>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "linearizability.h"
#include "registry/registry.pb.h"
#include "registry/state_machine.h"
#include "workload.h"

namespace haven::sim {

uint64_t LeaderHint(const Status& refusal) {
  const std::string& msg = refusal.message();
  auto pos = msg.find("leader=");
  return pos == std::string::npos ? 0 : std::strtoull(msg.c_str() + pos + 7, nullptr, 10);
}

namespace {

namespace gpb = haven::registry::pb;

constexpr size_t kMaxHistoryOps = 20'000;

enum class Phase { kIdle, kThinking, kProposed, kReading };

struct Client {
  int id = 0;
  Phase phase = Phase::kIdle;
  Op op;
  uint64_t gen = 0;      // bumped per op, so stale timers are ignored
  uint64_t attempt = 0;  // bumped per attempt
  uint64_t node = 0, node_incarnation = 0;
  raft::ProposalId pid;
  std::string read_ctx;
  uint64_t read_index = 0;
  bool read_confirmed = false;
  bool maybe_applied = false;  // a proposal was accepted and not known lost
  int64_t deadline = 0;
  uint64_t values = 0;
};

class RegistryWorkload : public Workload {
 public:
  explicit RegistryWorkload(Cluster& w) : w_(w) {
    for (int k = 0; k < w_.options().keys; ++k) keys_.push_back("k" + std::to_string(k));
  }

  void Begin() override;
  Status ResetReplica(uint64_t node, const std::string* snapshot) override;
  Status InstallSnapshot(uint64_t node, const std::string& snapshot) override;
  std::string TakeSnapshot(uint64_t node) override {
    return sm_[node].TakeSnapshot().SerializeAsString();
  }
  std::string Apply(uint64_t node, uint64_t index, const std::string& data) override;
  std::string Fingerprint(uint64_t node) override;
  void OnApplied(uint64_t node, uint64_t index, uint64_t term) override;
  void OnSnapshotInstalled(uint64_t node, uint64_t index) override;
  void OnReadState(uint64_t node, const raft::ReadState& rs) override {
    reads_[node].push_back(rs);
  }
  void OnReadyDone(uint64_t node) override { ServeReads(node); }
  void OnNodeStarted(uint64_t node) override { reads_[node].clear(); }
  void OnNodeLost(uint64_t node) override;
  void Finish() override;
  void CheckEnd() override;

 private:
  uint64_t RandomNode() { return static_cast<uint64_t>(w_.rng().Range(1, Nodes())); }
  int64_t Nodes() const { return static_cast<int64_t>(w_.NodeCount()); }
  Client& C(int id) { return clients_[static_cast<size_t>(id)]; }
  void NextOp(Client& c, int64_t delay);
  void StartOp(Client& c);
  void Attempt(Client& c, uint64_t node);
  void RetryElsewhere(Client& c, uint64_t hint);
  void Complete(Client& c, bool unknown);
  void OpDeadline(Client& c, uint64_t gen);
  void ServeReads(uint64_t node);

  Cluster& w_;
  std::map<uint64_t, registry::StateMachine> sm_;           // node -> replica
  std::map<uint64_t, std::vector<raft::ReadState>> reads_;  // node -> read indexes to serve
  std::vector<Client> clients_;
  std::vector<std::string> keys_;
  std::vector<Op> history_;
  std::map<std::string, int> read_waiters_;  // read context -> client
};

// ---- replicas ----

Status RegistryWorkload::ResetReplica(uint64_t node, const std::string* snapshot) {
  sm_[node] = registry::StateMachine();
  if (snapshot == nullptr) return Status::Ok();
  gpb::Snapshot s;
  if (s.ParseFromString(*snapshot)) sm_[node].Restore(s);
  return Status::Ok();
}

Status RegistryWorkload::InstallSnapshot(uint64_t node, const std::string& snapshot) {
  gpb::Snapshot s;
  if (!s.ParseFromString(snapshot)) return Status::InvalidArgument("unparseable snapshot");
  sm_[node].Restore(s);
  return Status::Ok();
}

std::string RegistryWorkload::Apply(uint64_t node, uint64_t index, const std::string& data) {
  gpb::Command cmd;
  if (!cmd.ParseFromString(data)) return "unparseable entry";
  sm_[node].Apply(index, cmd);
  return "";
}

std::string RegistryWorkload::Fingerprint(uint64_t node) {
  std::string fp;
  const registry::StateMachine& sm = sm_[node];
  for (const auto& k : keys_) {
    const gpb::KVEntry* e = sm.GetKV(k);
    fp += e ? e->value() : std::string("-");
    fp += '|';
  }
  return fp;
}

// ---- clients ----

void RegistryWorkload::Begin() {
  clients_.resize(static_cast<size_t>(w_.options().clients));
  for (int i = 0; i < w_.options().clients; ++i) {
    C(i).id = i;
    NextOp(C(i), w_.rng().Range(0, 50'000));
  }
}

void RegistryWorkload::NextOp(Client& c, int64_t delay) {
  c.phase = Phase::kThinking;
  uint64_t gen = ++c.gen;
  int id = c.id;
  w_.At(w_.Now() + delay, [this, id, gen] {
    Client& cl = C(id);
    if (cl.gen == gen) StartOp(cl);
  });
}

void RegistryWorkload::StartOp(Client& c) {
  const SimOptions& o = w_.options();
  // New operations stop early enough for the last ones to finish before the end.
  if (w_.Now() + o.op_timeout_us > o.duration_us + o.heal_us || history_.size() >= kMaxHistoryOps) {
    c.phase = Phase::kIdle;
    return;
  }
  c.op = Op{};
  c.op.client = c.id;
  c.op.key = w_.rng().Pick(keys_);
  c.op.kind = w_.rng().Chance(0.5) ? OpKind::kPut : OpKind::kGet;
  if (c.op.kind == OpKind::kPut)
    c.op.value = "c" + std::to_string(c.id) + "v" + std::to_string(++c.values);
  c.op.call = w_.Now();
  c.maybe_applied = false;
  c.deadline = w_.Now() + o.op_timeout_us;
  uint64_t gen = c.gen;
  int id = c.id;
  w_.At(c.deadline, [this, id, gen] { OpDeadline(C(id), gen); });
  Attempt(c, RandomNode());
}

void RegistryWorkload::Attempt(Client& c, uint64_t node) {
  c.attempt++;
  c.node = node;
  if (!w_.Up(node)) {
    RetryElsewhere(c, 0);
    return;
  }
  c.node_incarnation = w_.Incarnation(node);
  if (c.op.kind == OpKind::kPut) {
    gpb::Command cmd;
    cmd.set_now_unix_ms(1'700'000'000'000 + w_.Now() / 1000);
    cmd.mutable_kv()->set_verb(gpb::KVOp::SET);
    cmd.mutable_kv()->set_key(c.op.key);
    cmd.mutable_kv()->set_value(c.op.value);
    auto r = w_.Propose(node, cmd.SerializeAsString());
    if (!r.ok()) {
      RetryElsewhere(c, LeaderHint(r.status()));
      return;
    }
    c.phase = Phase::kProposed;
    c.pid = *r;
    c.maybe_applied = true;
    w_.Trace("propose client=", c.id, " node=", node, " index=", r->index, " term=", r->term, " ",
             c.op.key, "=", c.op.value);
    w_.Pump(node);
    return;
  }
  c.phase = Phase::kReading;
  c.read_confirmed = false;
  c.read_ctx =
      "r" + std::to_string(c.id) + "." + std::to_string(c.gen) + "." + std::to_string(c.attempt);
  read_waiters_[c.read_ctx] = c.id;
  w_.ReadIndex(node, c.read_ctx);
  // A read that gets no answer is retried elsewhere: reads have no effect, so that is safe.
  uint64_t gen = c.gen, attempt = c.attempt;
  int id = c.id;
  w_.At(w_.Now() + 150'000, [this, id, gen, attempt] {
    Client& cl = C(id);
    if (cl.gen == gen && cl.attempt == attempt && cl.phase == Phase::kReading)
      RetryElsewhere(cl, 0);
  });
}

void RegistryWorkload::RetryElsewhere(Client& c, uint64_t hint) {
  read_waiters_.erase(c.read_ctx);
  c.phase = Phase::kThinking;
  uint64_t next = hint && hint <= w_.NodeCount() ? hint : RandomNode();
  uint64_t gen = c.gen;
  int id = c.id;
  w_.At(w_.Now() + w_.rng().Range(2'000, 20'000), [this, id, gen, next] {
    Client& cl = C(id);
    if (cl.gen == gen && cl.phase == Phase::kThinking) Attempt(cl, next);
  });
}

void RegistryWorkload::Complete(Client& c, bool unknown) {
  read_waiters_.erase(c.read_ctx);
  c.op.unknown = unknown;
  c.op.ret = unknown ? Op::kNever : w_.Now();
  if (unknown && c.op.kind == OpKind::kPut && !c.maybe_applied) {
    // Never accepted by any leader: it certainly had no effect, so it is not history.
  } else {
    history_.push_back(c.op);
  }
  if (unknown)
    w_.stats().ops_unknown++;
  else
    w_.stats().ops_ok++;
  w_.Trace("op-done ", DescribeOp(c.op));
  NextOp(c, w_.rng().Range(0, 30'000));
}

void RegistryWorkload::OpDeadline(Client& c, uint64_t gen) {
  if (c.gen != gen || c.phase == Phase::kIdle) return;
  Complete(c, true);
}

void RegistryWorkload::OnApplied(uint64_t node, uint64_t index, uint64_t term) {
  for (auto& c : clients_) {
    if (c.phase != Phase::kProposed || c.node != node || c.pid.index != index) continue;
    if (c.pid.term == term) {
      Complete(c, false);
    } else {
      c.maybe_applied = false;  // another entry took its place: it never will
      w_.Trace("proposal-lost client=", c.id, " index=", index);
      RetryElsewhere(c, 0);
    }
  }
}

// Proposals the snapshot jumped over: their outcome is not observable here any more.
void RegistryWorkload::OnSnapshotInstalled(uint64_t node, uint64_t index) {
  for (auto& c : clients_) {
    if (c.phase == Phase::kProposed && c.node == node && c.pid.index <= index) Complete(c, true);
  }
}

void RegistryWorkload::ServeReads(uint64_t node) {
  std::vector<raft::ReadState>& reads = reads_[node];
  if (reads.empty()) return;
  std::vector<raft::ReadState> waiting;
  for (const auto& rs : reads) {
    auto it = read_waiters_.find(rs.context);
    if (it == read_waiters_.end()) continue;
    Client& c = C(it->second);
    if (c.phase != Phase::kReading || c.node != node || c.read_ctx != rs.context) continue;
    if (rs.index > w_.Applied(node)) {
      waiting.push_back(rs);
      continue;
    }
    const gpb::KVEntry* e = sm_[node].GetKV(c.op.key);
    if (e) c.op.output = e->value();
    Complete(c, false);
  }
  reads_[node] = std::move(waiting);
}

void RegistryWorkload::OnNodeLost(uint64_t node) {
  for (auto& c : clients_) {
    if (c.node != node) continue;
    if (c.phase == Phase::kProposed)
      Complete(c, true);
    else if (c.phase == Phase::kReading)
      RetryElsewhere(c, 0);
  }
}

// ---- the end ----

void RegistryWorkload::Finish() {
  for (auto& c : clients_) {
    if (!w_.ok()) break;
    if (c.phase == Phase::kProposed || c.phase == Phase::kReading) Complete(c, true);
  }
}

void RegistryWorkload::CheckEnd() {
  CheckResult lin = CheckLinearizable(history_);
  w_.stats().lin_steps = lin.steps;
  if (lin.verdict == Verdict::kNotLinearizable) w_.Fail("linearizability: " + lin.reason);
  // Undecided is not a failure, but say so in the trace.
  if (lin.verdict == Verdict::kUndecided) {
    w_.stats().lin_undecided = true;
    w_.Trace("linearizability undecided: ", lin.reason);
  }
}

}  // namespace

std::unique_ptr<Workload> MakeRegistryWorkload(Cluster& cluster) {
  return std::make_unique<RegistryWorkload>(cluster);
}

}  // namespace haven::sim
