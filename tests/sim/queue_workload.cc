// The queue workload: every node runs mq::BrokerState; publishers publish unique bodies through
// the leader, consumers hosted on various nodes consume with credit, ack, requeue, cancel and
// resubscribe, and lose their subscriptions when their node crashes (DropOwner cleans up). The
// checkers: no confirmed message lost, no message delivered again after its ack, replicas equal
// at every index, redeliveries flagged. As the node does, the commands a node proposes in one
// executor turn go to the log as one Batch entry, and each caller gets its own command's result.
#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "mq/broker_state.h"
#include "mq/mq.pb.h"
#include "workload.h"

namespace haven::sim {
namespace {

namespace qpb = haven::mq::pb;

constexpr int kConsumersPerQueue = 2;
constexpr uint32_t kMaxCredit = 8;
constexpr size_t kMaxCalls = 10'000;        // calls in flight at once (a runaway guard)
constexpr uint64_t kMaxPublishes = 20'000;  // per run
// A publisher waits this long between confirmed publishes: ~14 publishes/s each, enough to keep
// every queue busy while a seed stays cheap (a commit costs every replica an apply and a digest).
constexpr int64_t kMinThinkUs = 20'000, kMaxThinkUs = 120'000;
constexpr int64_t kJanitorBackstopUs = 1'500'000;  // a dead node's owners are dropped by then
constexpr int64_t kMaxBatchCommands = 16;          // per seed 2..this, as max_batch_commands
constexpr int64_t kMaxTurnUs = 8'000;              // an executor turn, per seed 0 or 1 ms..this
constexpr int64_t kMaxBurst = 4;                   // publishes a publisher pipelines at once

// FNV-1a: a stable digest of a replica's state, the same on every platform.
uint64_t Digest(const std::string& bytes, uint64_t h = 0xcbf29ce484222325ULL) {
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

std::string Hex(uint64_t v) {
  static const char* digits = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[static_cast<size_t>(i)] = digits[v & 15];
  return s;
}

// Whether `owner` is `prefix` or below it ("3.1/c2s4" is under "3.1"): DropOwner's contract.
bool Under(const std::string& owner, const std::string& prefix) {
  return owner == prefix ||
         (owner.size() > prefix.size() && owner.compare(0, prefix.size(), prefix) == 0 &&
          owner[prefix.size()] == '/');
}

// What a command decided (deliveries, routes, error), as text to compare; a batch's per command.
std::string ResultText(const mq::ApplyResult& r) {
  std::string bytes = std::to_string(r.error.reply_code) + ";";
  for (const auto& d : r.deliveries) {
    bytes += d.consumer_id + "," + d.queue + "," + std::to_string(d.message_id) + "," +
             (d.redelivered ? "r" : "-") + std::to_string(d.delivery_count) + ";";
  }
  for (size_t i = 0; i < r.routed_queues.size() && i < r.message_ids.size(); ++i)
    bytes += r.routed_queues[i] + "=" + std::to_string(r.message_ids[i]) + ";";
  if (r.dispatch_pending) bytes += "pending;";
  for (const auto& part : r.batch) bytes += "[" + ResultText(part) + "]";
  return bytes;
}

// Calls fn(command, its result) for an entry's command, or for each command of a batch that was
// applied (a batch refused as a whole applied none).
template <typename Fn>
void ForEachCommand(const qpb::Command& cmd, const mq::ApplyResult& r, Fn fn) {
  if (!cmd.has_batch()) return fn(cmd, r);
  int n = std::min(cmd.batch().commands_size(), static_cast<int>(r.batch.size()));
  for (int i = 0; i < n; ++i) fn(cmd.batch().commands(i), r.batch[static_cast<size_t>(i)]);
}

// The outcome of a command as its proposer sees it.
enum class Outcome {
  kApplied,  // the proposer's node applied it (result attached)
  kUnknown,  // the proposer's node crashed, a snapshot jumped over it, or the timeout passed
};
using Done = std::function<void(Outcome, const mq::ApplyResult*)>;

// One command on its way into the log: proposed on a node, following "not leader" hints, retried
// while it is certainly not applied.
struct Call {
  std::string data;
  std::string what;  // for the trace
  Done done;
  int consumer = -1;  // the consumer whose session it belongs to (-1: none); ends with it
  uint64_t attempt = 0;
  bool proposed = false;  // accepted by a leader, outcome pending
  uint64_t node = 0, incarnation = 0;
  raft::ProposalId pid;
  bool queued = false;  // waiting for the end of its node's turn (not proposed yet)
  // Its place in the entry proposed: the command alone (slots 1) or one of a Batch.
  size_t slot = 0, slots = 1;
};

// A node's commands waiting for the end of its executor turn, proposed then as one entry.
struct Turn {
  std::vector<uint64_t> calls;
  uint64_t generation = 0;  // bumped per flush: a stale end-of-turn timer does nothing
};

// How the nodes batch in this seed (BrokerNodeOptions::max_batch_commands and how long a turn
// gathers commands), and how often the state machine stops dispatching (Dispatch then).
struct Batching {
  size_t max_commands = 1;
  int64_t turn_us = 0;
  size_t max_deliveries_per_apply = 1'000;
};

struct Publisher {
  int id = 0;
  uint64_t sent = 0;         // bodies so far
  int64_t burst = 1;         // publishes sent together last time
  uint64_t outstanding = 0;  // of them, not confirmed yet
};

enum class ConsumerPhase { kIdle, kSubscribing, kActive, kCancelling };

// A consumer client connected to node `node` (incarnation `incarnation`): its deliveries come
// from that node's applies; its commands go through the leader.
struct Consumer {
  int id = 0;
  std::string queue;
  ConsumerPhase phase = ConsumerPhase::kIdle;
  uint64_t session = 0;  // bumped per subscription: stale timers and calls are ignored
  uint64_t node = 0, incarnation = 0;
  std::string owner, cid;
  std::set<uint64_t> held;      // delivered to this subscription, not yet acked or nacked
  std::set<uint64_t> inflight;  // in the ack or nack on its way
  std::set<uint64_t> limbo;     // acked or nacked with an unknown outcome: never sent again
  int busy = 0;                 // commands in flight (an ack and a requeue may go together)
};

// What the log says happened, replayed once per committed index in index order: the checkers'
// own model, independent of the state machine's internals.
struct Model {
  std::map<std::string, std::string> live;   // consumer id -> owner, while subscribed
  std::map<uint64_t, std::string> holder;    // message id -> consumer holding it unacked
  std::set<uint64_t> delivered;              // ever
  std::map<uint64_t, uint64_t> acked;        // message id -> index of its ack
  std::map<uint64_t, std::string> queue_of;  // message id -> queue
};

class QueueWorkload : public Workload {
 public:
  explicit QueueWorkload(Cluster& w) : w_(w) {
    for (int k = 0; k < w_.options().keys; ++k) queues_.push_back("q" + std::to_string(k));
    ChooseBatching();
  }

  void Begin() override;
  Status ResetReplica(uint64_t node, const std::string* snapshot) override;
  Status InstallSnapshot(uint64_t node, const std::string& snapshot) override;
  std::string TakeSnapshot(uint64_t node) override {
    return Replica(node).TakeSnapshot().SerializeAsString();
  }
  std::string Apply(uint64_t node, uint64_t index, const std::string& data) override;
  std::string Fingerprint(uint64_t node) override;
  void OnCommitted(uint64_t node, uint64_t index) override;
  void OnApplied(uint64_t node, uint64_t index, uint64_t term) override;
  void OnSnapshotInstalled(uint64_t node, uint64_t index) override;
  void OnNodeStarted(uint64_t node) override;
  void OnNodeLost(uint64_t node) override;
  void Finish() override {}
  void CheckEnd() override;

 private:
  struct Applied {  // a node's last applied command and what the state machine made of it
    uint64_t index = 0;
    qpb::Command cmd;
    mq::ApplyResult result;
  };

  void ChooseBatching();
  mq::BrokerOptions BrokerOptionsForSeed() const {
    mq::BrokerOptions o;
    o.max_deliveries_per_apply = batching_.max_deliveries_per_apply;
    return o;
  }
  mq::BrokerState& Replica(uint64_t node) {
    auto it = replicas_.find(node);
    if (it == replicas_.end()) it = replicas_.try_emplace(node, BrokerOptionsForSeed()).first;
    return it->second;
  }
  std::string FingerprintOf(const mq::BrokerState& b) const;
  bool Quiet() const { return w_.Now() >= w_.options().duration_us; }
  uint64_t RandomNode() {
    return static_cast<uint64_t>(w_.rng().Range(1, static_cast<int64_t>(w_.NodeCount())));
  }
  uint64_t RandomUpNode();
  std::string Encode(qpb::Command cmd) {
    cmd.set_now_unix_ms(1'700'000'000'000 + w_.Now() / 1000);
    return cmd.SerializeAsString();
  }
  qpb::Command Mutate(const qpb::Command& cmd) const;

  // ---- calls ----
  // Proposes `data` first on `first_node` (0: the leader, or any node when there is none).
  void StartCall(std::string data, std::string what, uint64_t first_node, Done done,
                 int consumer = -1);
  // Proposes again after every unknown outcome (for idempotent commands) until applied.
  void Reliable(std::string data, std::string what, uint64_t first_node,
                std::function<void(const mq::ApplyResult&)> applied, int consumer = -1);
  void ArmDeadline(uint64_t call);
  void EndCalls(int consumer);
  void Attempt(uint64_t call, uint64_t node);
  void Enqueue(uint64_t call, uint64_t node);
  void EndTurn(uint64_t node);
  std::string BatchOf(const std::vector<uint64_t>& calls);
  void ProposeTurn(uint64_t node, const std::vector<uint64_t>& calls);
  void Retry(uint64_t call, uint64_t hint);
  void Resolve(uint64_t call, Outcome outcome, const mq::ApplyResult* r);

  // ---- clients ----
  void Declare(size_t next);
  void Publish(Publisher& p, const std::string& queue, const std::string& body);
  void PublishNowhere(Publisher& p);
  void NextPublish(int id, int64_t delay);
  void Subscribe(int id);
  void Resubscribe(Consumer& c, int64_t delay);
  void Work(int id, uint64_t session);
  void WorkSoon(Consumer& c);
  void Settle(Consumer& c, bool ack, std::vector<uint64_t> ids);
  void CancelConsumer(Consumer& c);
  void Deliver(uint64_t node, const mq::Delivery& d);
  void DropOwner(const std::string& owner);
  void MaybeDispatch();

  // ---- checkers ----
  void ModelCommand(uint64_t index, const qpb::Command& cmd, const mq::ApplyResult& r);
  void ModelRelease(const std::string& cid);
  void ModelDelivery(uint64_t index, const mq::Delivery& d);
  void CheckResultDigest(uint64_t node, uint64_t index, const mq::ApplyResult& r);
  void CheckAgainstSingles(uint64_t node, uint64_t index, const Applied& a);

  Cluster& w_;
  std::vector<std::string> queues_;
  std::map<uint64_t, mq::BrokerState> replicas_;  // node -> replica
  std::map<uint64_t, Applied> last_;              // node -> its last applied command
  std::map<uint64_t, uint64_t> result_digest_;    // index -> digest of what Apply decided
  std::map<uint64_t, std::string> fingerprint_;   // node -> of its state after its last apply
  std::map<uint64_t, Call> calls_;
  Batching batching_;
  std::map<uint64_t, Turn> turns_;  // node -> the commands of its current turn
  bool dispatching_ = false;        // a Dispatch in flight (or a wait for a leader to propose it)
  // The log's commands applied one by one, every command of a batch as its own entry: a batch
  // must decide what its commands decide alone.
  mq::BrokerState singles_;
  uint64_t singles_index_ = 0;
  uint64_t next_call_ = 1;
  std::vector<Publisher> publishers_;
  std::vector<Consumer> consumers_;
  std::map<uint64_t, std::vector<std::string>> drop_on_restart_;       // node -> dead owners
  std::map<uint64_t, std::pair<std::string, std::string>> confirmed_;  // id -> (queue, body)
  Model model_;
};

// ---------------------------------------------------------------------------------------------
// Replicas

// A quarter of the seeds propose every command alone; the others batch what a node proposes
// within a turn of 0 or 1-8 ms, up to 2-16 commands. A third of the seeds let one command deliver
// at most 1-3 messages, so the leader proposes Dispatch for the rest (as the node does).
void QueueWorkload::ChooseBatching() {
  Rng& rng = w_.rng();
  if (!rng.Chance(0.25)) {
    batching_.max_commands = static_cast<size_t>(rng.Range(2, kMaxBatchCommands));
    batching_.turn_us = rng.Chance(0.3) ? 0 : rng.Range(1'000, kMaxTurnUs);
  }
  if (rng.Chance(0.33)) batching_.max_deliveries_per_apply = static_cast<size_t>(rng.Range(1, 3));
  singles_ = mq::BrokerState(BrokerOptionsForSeed());
  w_.Trace("q-batching max_commands=", batching_.max_commands, " turn_us=", batching_.turn_us,
           " max_deliveries_per_apply=", batching_.max_deliveries_per_apply);
}

Status QueueWorkload::ResetReplica(uint64_t node, const std::string* snapshot) {
  replicas_.erase(node);
  Replica(node);
  last_.erase(node);
  if (snapshot == nullptr) return Status::Ok();
  return InstallSnapshot(node, *snapshot);
}

Status QueueWorkload::InstallSnapshot(uint64_t node, const std::string& snapshot) {
  qpb::Snapshot s;
  if (!s.ParseFromString(snapshot)) return Status::InvalidArgument("unparseable snapshot");
  return Replica(node).Restore(s);
}

// The test-only breakage (QueueBug), the same on every replica.
qpb::Command QueueWorkload::Mutate(const qpb::Command& cmd) const {
  if (cmd.has_batch()) {
    qpb::Command out = cmd;
    auto* parts = out.mutable_batch()->mutable_commands();
    for (auto& part : *parts) part = Mutate(part);
    if (w_.options().queue_bug == QueueBug::kBatchReversed)
      std::reverse(parts->begin(), parts->end());
    return out;
  }
  qpb::Command out = cmd;
  switch (w_.options().queue_bug) {
    case QueueBug::kAckKeepsMessage:
      if (cmd.has_ack()) out.mutable_dispatch();  // the oneof: the ack is gone
      break;
    case QueueBug::kRequeueDrops:
      if (cmd.has_nack() && cmd.nack().requeue()) out.mutable_nack()->set_requeue(false);
      break;
    case QueueBug::kBatchReversed:  // above
    case QueueBug::kNone:
      break;
  }
  return out;
}

std::string QueueWorkload::Apply(uint64_t node, uint64_t index, const std::string& data) {
  Applied& a = last_[node];
  if (!a.cmd.ParseFromString(data)) return "unparseable entry";
  a.index = index;
  a.result = Replica(node).Apply(index, Mutate(a.cmd));
  CheckResultDigest(node, index, a.result);
  // Deliveries reach the consumers connected to this node, a batch's in its commands' order.
  ForEachCommand(a.cmd, a.result, [&](const qpb::Command&, const mq::ApplyResult& r) {
    for (const auto& d : r.deliveries) Deliver(node, d);
  });
  if (a.result.dispatch_pending) w_.At(w_.Now(), [this] { MaybeDispatch(); });
  return "";
}

// A digest of the replica's queues (messages ready and unacked by id, consumers, counters), cheap
// enough for every index; CheckEnd compares whole snapshots.
std::string QueueWorkload::Fingerprint(uint64_t node) {
  std::string fp = FingerprintOf(Replica(node));
  fingerprint_[node] = fp;
  return fp;
}

std::string QueueWorkload::FingerprintOf(const mq::BrokerState& b) const {
  std::string bytes = std::to_string(b.next_message_id()) + ";";
  auto num = [&bytes](uint64_t v) { bytes.append(reinterpret_cast<const char*>(&v), sizeof v); };
  for (const auto& st : b.AllStats()) {
    bytes += st.name + ":";
    for (uint64_t v : {st.ready, st.unacked, st.consumers, st.ready_bytes, st.unacked_bytes,
                       st.counters.published(), st.counters.delivered(), st.counters.acked(),
                       st.counters.redelivered(), st.counters.dropped()})
      num(v);
    for (uint64_t m : b.ReadyIds(st.name)) num(m);
    for (const auto& cid : b.ConsumerIds(st.name)) {
      bytes += cid + "=";
      for (uint64_t m : b.UnackedIds(cid)) num(m);
    }
  }
  return Hex(Digest(bytes));
}

// Every replica must decide the same deliveries, routes and errors at an index.
void QueueWorkload::CheckResultDigest(uint64_t node, uint64_t index, const mq::ApplyResult& r) {
  std::string bytes = ResultText(r);
  uint64_t digest = Digest(bytes);
  auto [it, fresh] = result_digest_.emplace(index, digest);
  if (!fresh && it->second != digest) {
    w_.Fail("queue replicas diverge: node " + std::to_string(node) +
            " decides differently at index " + std::to_string(index) + " (" + bytes + ")");
  }
}

// ---------------------------------------------------------------------------------------------
// Calls

void QueueWorkload::StartCall(std::string data, std::string what, uint64_t first_node, Done done,
                              int consumer) {
  if (calls_.size() >= kMaxCalls) {
    w_.Fail("sim: over " + std::to_string(kMaxCalls) + " queue commands in flight");
    return;
  }
  uint64_t id = next_call_++;
  Call& c = calls_[id];
  c.data = std::move(data);
  c.what = std::move(what);
  c.done = std::move(done);
  c.consumer = consumer;
  ArmDeadline(id);
  uint64_t node = first_node ? first_node : w_.Leader();
  if (node == 0) node = RandomNode();
  // Never inside the apply that triggered it: the node may be in the middle of a Ready.
  w_.At(w_.Now(), [this, id, node] { Attempt(id, node); });
}

void QueueWorkload::Reliable(std::string data, std::string what, uint64_t first_node,
                             std::function<void(const mq::ApplyResult&)> applied, int consumer) {
  StartCall(
      data, what, first_node,
      [this, data, what, first_node, applied, consumer](Outcome o, const mq::ApplyResult* r) {
        if (o == Outcome::kApplied) return applied(*r);
        Reliable(data, what, first_node, applied, consumer);
      },
      consumer);
}

// An accepted command whose outcome is still open at the timeout has an unknown one; one never
// accepted yet goes on trying.
void QueueWorkload::ArmDeadline(uint64_t id) {
  w_.At(w_.Now() + w_.options().op_timeout_us, [this, id] {
    auto it = calls_.find(id);
    if (it == calls_.end()) return;
    if (it->second.proposed) return Resolve(id, Outcome::kUnknown, nullptr);
    ArmDeadline(id);
  });
}

// A consumer's session ended: its commands are not sent again (one already in a log may still
// commit; the DropOwner that follows a crash comes after it in the log).
void QueueWorkload::EndCalls(int consumer) {
  for (auto it = calls_.begin(); it != calls_.end();) {
    it = it->second.consumer == consumer ? calls_.erase(it) : std::next(it);
  }
}

void QueueWorkload::Attempt(uint64_t id, uint64_t node) {
  auto it = calls_.find(id);
  if (it == calls_.end()) return;
  Call& c = it->second;
  c.attempt++;
  if (!w_.ok()) return;
  if (!w_.Up(node)) return Retry(id, 0);
  Enqueue(id, node);
}

// The node gathers what is proposed in one turn of its executor: a full turn goes at once (the
// node flushes before it would exceed max_batch_commands), the rest at the end of the turn.
void QueueWorkload::Enqueue(uint64_t id, uint64_t node) {
  Call& c = calls_.at(id);
  c.queued = true;
  c.node = node;
  c.incarnation = w_.Incarnation(node);
  Turn& turn = turns_[node];
  turn.calls.push_back(id);
  if (turn.calls.size() >= batching_.max_commands) return EndTurn(node);
  if (turn.calls.size() > 1) return;
  uint64_t generation = turn.generation;
  w_.At(w_.Now() + batching_.turn_us, [this, node, generation] {
    if (turns_[node].generation == generation) EndTurn(node);
  });
}

void QueueWorkload::EndTurn(uint64_t node) {
  Turn& turn = turns_[node];
  std::vector<uint64_t> ids = std::move(turn.calls);
  turn.calls.clear();
  turn.generation++;
  std::vector<uint64_t> live;  // a consumer's session may have ended meanwhile
  for (uint64_t id : ids) {
    auto it = calls_.find(id);
    if (it == calls_.end() || !it->second.queued || it->second.node != node) continue;
    it->second.queued = false;
    live.push_back(id);
  }
  if (!live.empty()) ProposeTurn(node, live);
}

// One command alone, more as a Batch whose time is its last command's (as BrokerNode does).
std::string QueueWorkload::BatchOf(const std::vector<uint64_t>& ids) {
  if (ids.size() == 1) return calls_.at(ids[0]).data;
  qpb::Command cmd;
  for (uint64_t id : ids) {
    qpb::Command* part = cmd.mutable_batch()->add_commands();
    if (!part->ParseFromString(calls_.at(id).data)) w_.Fail("sim: unparseable queue command");
    cmd.set_now_unix_ms(part->now_unix_ms());
  }
  return cmd.SerializeAsString();
}

// Each command learns the entry's fate: refused (retried where the hint says), or proposed at
// the entry's index with its slot in it.
void QueueWorkload::ProposeTurn(uint64_t node, const std::vector<uint64_t>& ids) {
  if (!w_.Up(node)) {
    for (uint64_t id : ids) Retry(id, 0);
    return;
  }
  auto r = w_.Propose(node, BatchOf(ids));
  if (!r.ok()) {
    uint64_t hint = LeaderHint(r.status());
    for (uint64_t id : ids) Retry(id, hint);
    return;
  }
  for (size_t k = 0; k < ids.size(); ++k) {
    Call& c = calls_.at(ids[k]);
    c.proposed = true;
    c.pid = *r;
    c.slot = k;
    c.slots = ids.size();
    w_.Trace("q-propose ", c.what, " node=", node, " index=", r->index, " term=", r->term,
             ids.size() > 1 ? " batch=" + std::to_string(k + 1) + "/" + std::to_string(ids.size())
                            : std::string());
  }
  w_.Pump(node);
}

void QueueWorkload::Retry(uint64_t id, uint64_t hint) {
  auto it = calls_.find(id);
  if (it == calls_.end()) return;
  it->second.proposed = false;
  uint64_t attempt = it->second.attempt;
  uint64_t next = hint && hint <= w_.NodeCount() ? hint : RandomNode();
  w_.At(w_.Now() + w_.rng().Range(2'000, 20'000), [this, id, attempt, next] {
    auto c = calls_.find(id);
    if (c != calls_.end() && c->second.attempt == attempt && !c->second.proposed) Attempt(id, next);
  });
}

void QueueWorkload::Resolve(uint64_t id, Outcome outcome, const mq::ApplyResult* r) {
  auto it = calls_.find(id);
  if (it == calls_.end()) return;
  Done done = std::move(it->second.done);
  w_.Trace("q-", outcome == Outcome::kApplied ? "applied " : "unknown ", it->second.what);
  calls_.erase(it);
  if (outcome == Outcome::kApplied)
    w_.stats().ops_ok++;
  else
    w_.stats().ops_unknown++;
  done(outcome, r);
}

void QueueWorkload::OnApplied(uint64_t node, uint64_t index, uint64_t term) {
  std::vector<std::pair<uint64_t, bool>> hits;  // call -> applied (else replaced)
  for (auto& [id, c] : calls_) {
    if (c.proposed && c.node == node && c.pid.index == index)
      hits.push_back({id, c.pid.term == term});
  }
  for (auto [id, applied] : hits) {
    auto a = last_.find(node);
    if (applied && a != last_.end() && a->second.index == index) {
      // Each command of a batch gets its own result; a batch refused whole, the batch's error.
      auto found = calls_.find(id);  // an earlier caller's callback may have ended this one
      if (found == calls_.end()) continue;
      const Call& c = found->second;
      const mq::ApplyResult& whole = a->second.result;
      if (c.slots == 1) {
        Resolve(id, Outcome::kApplied, &whole);
      } else if (c.slot < whole.batch.size()) {
        mq::ApplyResult part = whole.batch[c.slot];
        Resolve(id, Outcome::kApplied, &part);
      } else {
        mq::ApplyResult refused;
        refused.error = whole.error;
        Resolve(id, Outcome::kApplied, &refused);
      }
    } else {
      Retry(id, 0);  // another entry took its place: it never will be applied
    }
  }
}

void QueueWorkload::OnSnapshotInstalled(uint64_t node, uint64_t index) {
  std::vector<uint64_t> jumped;
  for (auto& [id, c] : calls_) {
    if (c.proposed && c.node == node && c.pid.index <= index) jumped.push_back(id);
  }
  for (uint64_t id : jumped) Resolve(id, Outcome::kUnknown, nullptr);
  // The consumers connected here missed the deliveries the snapshot jumped over: they take what
  // the state says they hold (what the node layer must do too).
  for (auto& c : consumers_) {
    if (c.phase == ConsumerPhase::kIdle || c.node != node) continue;
    std::set<uint64_t> held;
    for (uint64_t m : Replica(node).UnackedIds(c.cid)) {
      if (!c.limbo.contains(m) && !c.inflight.contains(m)) held.insert(m);
    }
    c.held = std::move(held);
    WorkSoon(c);
  }
}

// ---------------------------------------------------------------------------------------------
// Clients

uint64_t QueueWorkload::RandomUpNode() {
  std::vector<uint64_t> up;
  for (uint64_t n = 1; n <= w_.NodeCount(); ++n) {
    if (w_.Up(n)) up.push_back(n);
  }
  return up.empty() ? 0 : w_.rng().Pick(up);
}

void QueueWorkload::Begin() {
  publishers_.resize(static_cast<size_t>(w_.options().clients));
  for (size_t i = 0; i < publishers_.size(); ++i) publishers_[i].id = static_cast<int>(i);
  consumers_.resize(queues_.size() * kConsumersPerQueue);
  for (size_t i = 0; i < consumers_.size(); ++i) {
    consumers_[i].id = static_cast<int>(i);
    consumers_[i].queue = queues_[i % queues_.size()];
  }
  w_.At(w_.rng().Range(0, 50'000), [this] { Declare(0); });
}

// The queues are declared one after another (redeclaring is harmless), then clients start.
void QueueWorkload::Declare(size_t next) {
  if (next == queues_.size()) {
    for (auto& p : publishers_) NextPublish(p.id, w_.rng().Range(0, 50'000));
    for (auto& c : consumers_) Resubscribe(c, w_.rng().Range(0, 50'000));
    return;
  }
  qpb::Command cmd;
  cmd.mutable_declare_queue()->set_name(queues_[next]);
  cmd.mutable_declare_queue()->set_durable(true);
  StartCall(
      Encode(cmd), "declare " + queues_[next], 0,
      [this, next](Outcome o, const mq::ApplyResult* r) {
        if (o == Outcome::kApplied && !r->error.ok())
          return w_.Fail("queue.declare " + queues_[next] + " refused: " + r->error.reply_text);
        Declare(o == Outcome::kApplied ? next + 1 : next);
      });
}

void QueueWorkload::NextPublish(int id, int64_t delay) {
  w_.At(w_.Now() + delay, [this, id] {
    Publisher& p = publishers_[static_cast<size_t>(id)];
    // Publishing stops with the faults: the quiet period is for draining.
    if (Quiet() || p.sent >= kMaxPublishes) return;
    // Now and then a burst of pipelined publishes (a client in confirm mode does not wait for
    // each confirm): they reach the leader in one turn and share a batch.
    p.burst = w_.rng().Chance(0.3) ? w_.rng().Range(2, kMaxBurst) : 1;
    p.outstanding = static_cast<uint64_t>(p.burst);
    for (uint64_t k = 0; k < p.outstanding; ++k) {
      std::string body = "p" + std::to_string(p.id) + "." + std::to_string(++p.sent);
      Publish(p, w_.rng().Pick(queues_), body);
    }
    if (w_.rng().Chance(0.1)) PublishNowhere(p);
  });
}

// A publish to an exchange that does not exist: refused with 404 (a client would lose its
// channel), and in a batch it must change nothing and stop nothing.
void QueueWorkload::PublishNowhere(Publisher& p) {
  qpb::Command cmd;
  cmd.mutable_publish()->set_exchange("missing");
  cmd.mutable_publish()->set_routing_key(queues_[0]);
  cmd.mutable_publish()->set_body("p" + std::to_string(p.id) + ".nowhere");
  StartCall(Encode(cmd), "publish-nowhere p" + std::to_string(p.id), 0,
            [this](Outcome o, const mq::ApplyResult* r) {
              if (o == Outcome::kApplied && r->error.reply_code != mq::BrokerError::kNotFound)
                w_.Fail("a publish to a missing exchange was not refused with 404");
            });
}

// A publish is confirmed when its proposer applied it; an unknown outcome is published again
// (at least once, as a client without a confirm would), so a body may be stored twice.
void QueueWorkload::Publish(Publisher& p, const std::string& queue, const std::string& body) {
  qpb::Command cmd;
  cmd.mutable_publish()->set_routing_key(queue);
  cmd.mutable_publish()->set_body(body);
  int id = p.id;
  StartCall(Encode(cmd), "publish " + queue + " " + body, 0,
            [this, id, queue, body](Outcome o, const mq::ApplyResult* r) {
              Publisher& pub = publishers_[static_cast<size_t>(id)];
              if (o == Outcome::kUnknown) {
                if (!Quiet()) Publish(pub, queue, body);
                return;
              }
              if (!r->error.ok() || r->routed_queues != std::vector<std::string>{queue} ||
                  r->message_ids.size() != 1) {
                return w_.Fail("publish " + body + " to " + queue +
                               " not stored: " + r->error.reply_text);
              }
              confirmed_[r->message_ids[0]] = {queue, body};
              w_.stats().confirmed++;
              // After a burst of k the publisher thinks k times as long: the same rate.
              if (pub.outstanding > 0 && --pub.outstanding == 0)
                NextPublish(id, pub.burst * w_.rng().Range(kMinThinkUs, kMaxThinkUs));
            });
}

void QueueWorkload::Resubscribe(Consumer& c, int64_t delay) {
  EndCalls(c.id);
  c.phase = ConsumerPhase::kIdle;
  c.held.clear();
  c.inflight.clear();
  c.limbo.clear();
  c.busy = 0;
  uint64_t session = ++c.session;
  int id = c.id;
  w_.At(w_.Now() + delay, [this, id, session] {
    if (consumers_[static_cast<size_t>(id)].session == session) Subscribe(id);
  });
}

// Connects to a live node and subscribes with a fresh consumer id owned by that node's
// incarnation; an unknown outcome is subscribed again with the same id (a second Consume with it
// is refused, so there is never more than one).
void QueueWorkload::Subscribe(int id) {
  Consumer& c = consumers_[static_cast<size_t>(id)];
  uint64_t node = RandomUpNode();
  if (node == 0) return Resubscribe(c, 20'000);
  uint64_t session = c.session;
  c.node = node;
  c.incarnation = w_.Incarnation(node);
  c.owner = std::to_string(node) + "." + std::to_string(c.incarnation) + "/c" +
            std::to_string(c.id) + "s" + std::to_string(session);
  c.cid = c.owner + "/1/t";
  c.phase = ConsumerPhase::kSubscribing;
  qpb::Command cmd;
  auto* consume = cmd.mutable_consume();
  consume->set_queue(c.queue);
  consume->set_consumer_id(c.cid);
  consume->set_owner(c.owner);
  consume->set_credit(static_cast<uint32_t>(w_.rng().Range(1, kMaxCredit)));
  Reliable(
      Encode(cmd), "consume " + c.cid, node,
      [this, id, session](const mq::ApplyResult& r) {
        Consumer& cc = consumers_[static_cast<size_t>(id)];
        if (cc.session != session) return;
        if (!r.error.ok() && r.error.reply_code != mq::BrokerError::kNotAllowed) {
          return w_.Fail("consume " + cc.cid + " refused: " + r.error.reply_text);
        }
        cc.phase = ConsumerPhase::kActive;  // kNotAllowed: an earlier attempt subscribed it
        WorkSoon(cc);
      },
      id);
}

void QueueWorkload::Deliver(uint64_t node, const mq::Delivery& d) {
  for (auto& c : consumers_) {
    if (c.phase == ConsumerPhase::kIdle || c.node != node || c.cid != d.consumer_id) continue;
    if (w_.Incarnation(node) != c.incarnation) continue;
    c.held.insert(d.message_id);
    WorkSoon(c);
  }
}

void QueueWorkload::WorkSoon(Consumer& c) {
  if (c.busy > 0) return;
  uint64_t session = c.session;
  int id = c.id;
  w_.At(w_.Now() + w_.rng().Range(1'000, 15'000), [this, id, session] { Work(id, session); });
}

// One decision about what the consumer holds: in the faulty phase mostly acks, some requeues,
// now and then a cancel; in the quiet period everything is acked.
void QueueWorkload::Work(int id, uint64_t session) {
  Consumer& c = consumers_[static_cast<size_t>(id)];
  if (c.session != session || c.busy > 0 || c.phase != ConsumerPhase::kActive) return;
  if (!Quiet() && w_.rng().Chance(0.03)) return CancelConsumer(c);
  if (c.held.empty()) {
    // Messages whose ack outcome is unknown may still be held by the broker: a cancel returns
    // them, so the queue drains (a real client would basic.recover).
    if (Quiet() && !c.limbo.empty()) CancelConsumer(c);
    return;
  }
  std::vector<uint64_t> ids;
  size_t n = Quiet() ? c.held.size()
                     : static_cast<size_t>(w_.rng().Range(1, static_cast<int64_t>(c.held.size())));
  for (uint64_t m : c.held) {
    if (ids.size() == n) break;
    ids.push_back(m);
  }
  bool ack = Quiet() || w_.rng().Chance(0.8);
  // Now and then acks and requeues in the same turn (they may share a batch).
  if (ack && !Quiet() && ids.size() >= 2 && w_.rng().Chance(0.25)) {
    size_t cut = static_cast<size_t>(w_.rng().Range(1, static_cast<int64_t>(ids.size()) - 1));
    std::vector<uint64_t> requeue(ids.begin() + static_cast<std::ptrdiff_t>(cut), ids.end());
    ids.resize(cut);
    Settle(c, false, std::move(requeue));
  }
  Settle(c, ack, std::move(ids));
}

void QueueWorkload::Settle(Consumer& c, bool ack, std::vector<uint64_t> ids) {
  qpb::Command cmd;
  std::string what = (ack ? "ack " : "requeue ") + c.cid;
  if (ack) {
    cmd.mutable_ack()->set_consumer_id(c.cid);
    for (uint64_t m : ids) cmd.mutable_ack()->add_message_ids(m);
  } else {
    cmd.mutable_nack()->set_consumer_id(c.cid);
    cmd.mutable_nack()->set_requeue(true);
    for (uint64_t m : ids) cmd.mutable_nack()->add_message_ids(m);
  }
  for (uint64_t m : ids) {
    c.held.erase(m);
    c.inflight.insert(m);
    what += " " + std::to_string(m);
  }
  c.busy++;
  uint64_t session = c.session;
  int id = c.id;
  StartCall(
      Encode(cmd), what, c.node,
      [this, id, session, ids](Outcome o, const mq::ApplyResult*) {
        Consumer& cc = consumers_[static_cast<size_t>(id)];
        if (cc.session != session) return;
        cc.busy--;
        for (uint64_t m : ids) cc.inflight.erase(m);
        // Not sent again: a late duplicate would be a double ack.
        if (o == Outcome::kUnknown) cc.limbo.insert(ids.begin(), ids.end());
        WorkSoon(cc);
      },
      id);
}

// Cancels the subscription (retried until applied: a cancel is idempotent), then subscribes again.
void QueueWorkload::CancelConsumer(Consumer& c) {
  c.phase = ConsumerPhase::kCancelling;
  c.busy++;
  qpb::Command cmd;
  cmd.mutable_cancel()->set_consumer_id(c.cid);
  uint64_t session = c.session;
  int id = c.id;
  Reliable(
      Encode(cmd), "cancel " + c.cid, c.node,
      [this, id, session](const mq::ApplyResult&) {
        Consumer& cc = consumers_[static_cast<size_t>(id)];
        if (cc.session == session) Resubscribe(cc, w_.rng().Range(5'000, 50'000));
      },
      id);
}

// A dead node's consumers: the leader drops their owner (after it noticed, or when the node comes
// back and asks), retrying until applied (a DropOwner is idempotent).
void QueueWorkload::DropOwner(const std::string& owner) {
  qpb::Command cmd;
  cmd.mutable_drop_owner()->set_owner(owner);
  Reliable(Encode(cmd), "drop-owner " + owner, 0, [](const mq::ApplyResult&) {});
}

// The leader proposes Dispatch while the state has deliveries left over (one command delivers at
// most max_deliveries_per_apply), one at a time, as BrokerNode::MaybeProposeDispatch; without a
// leader it looks again later, so a pending dispatch is never forgotten.
void QueueWorkload::MaybeDispatch() {
  if (dispatching_ || !w_.ok()) return;
  uint64_t leader = w_.Leader();
  if (leader != 0 && !Replica(leader).dispatch_pending()) return;
  dispatching_ = true;
  if (leader == 0) {
    w_.At(w_.Now() + 50'000, [this] {
      dispatching_ = false;
      MaybeDispatch();
    });
    return;
  }
  qpb::Command cmd;
  cmd.mutable_dispatch();
  StartCall(Encode(cmd), "dispatch", leader, [this](Outcome, const mq::ApplyResult*) {
    dispatching_ = false;
    w_.At(w_.Now() + w_.rng().Range(1'000, 5'000), [this] { MaybeDispatch(); });
  });
}

void QueueWorkload::OnNodeLost(uint64_t node) {
  // Commands proposed there: the proposer is gone, the outcome unknown.
  std::vector<uint64_t> lost;
  for (auto& [id, c] : calls_) {
    if (c.proposed && c.node == node) lost.push_back(id);
  }
  for (uint64_t id : lost) Resolve(id, Outcome::kUnknown, nullptr);
  // Commands still waiting for the end of its turn were never proposed: the node layer fails
  // them ("broker stopped") and their clients send them again.
  Turn& turn = turns_[node];
  std::vector<uint64_t> unsent = std::move(turn.calls);
  turn.calls.clear();
  turn.generation++;
  for (uint64_t id : unsent) {
    auto it = calls_.find(id);
    if (it == calls_.end() || !it->second.queued || it->second.node != node) continue;
    it->second.queued = false;
    Retry(id, 0);
  }
  // Its consumers are cancelled (the connection died); they subscribe again elsewhere.
  bool hosted = false;
  for (auto& c : consumers_) {
    if (c.phase == ConsumerPhase::kIdle || c.node != node) continue;
    if (c.incarnation != w_.Incarnation(node)) continue;
    hosted = true;
    w_.Trace("q-consumer-lost ", c.cid);
    Resubscribe(c, w_.rng().Range(20'000, 100'000));
  }
  if (!hosted) return;
  std::string owner = std::to_string(node) + "." + std::to_string(w_.Incarnation(node));
  if (w_.rng().Chance(0.5)) {
    w_.At(w_.Now() + w_.rng().Range(50'000, 300'000), [this, owner] { DropOwner(owner); });
  } else {
    drop_on_restart_[node].push_back(owner);
    // A node that never comes back (retired) is dropped by the leader all the same.
    w_.At(w_.Now() + kJanitorBackstopUs, [this, node, owner] {
      auto& owners = drop_on_restart_[node];
      auto it = std::find(owners.begin(), owners.end(), owner);
      if (it == owners.end()) return;
      owners.erase(it);
      DropOwner(owner);
    });
  }
}

void QueueWorkload::OnNodeStarted(uint64_t node) {
  auto it = drop_on_restart_.find(node);
  if (it == drop_on_restart_.end()) return;
  for (const auto& owner : it->second) {
    w_.At(w_.Now() + 1'000, [this, owner] { DropOwner(owner); });
  }
  drop_on_restart_.erase(it);
}

// ---------------------------------------------------------------------------------------------
// Checkers

void QueueWorkload::OnCommitted(uint64_t node, uint64_t index) {
  auto it = last_.find(node);
  if (it == last_.end() || it->second.index != index) return;  // a no-op or conf change
  const Applied& a = it->second;
  if (a.cmd.has_batch()) {
    w_.stats().batches++;
    w_.stats().batched_commands += static_cast<uint64_t>(a.cmd.batch().commands_size());
  }
  CheckAgainstSingles(node, index, a);
  ForEachCommand(a.cmd, a.result, [&](const qpb::Command& cmd, const mq::ApplyResult& r) {
    if (!w_.ok()) return;
    ModelCommand(index, cmd, r);
    for (const auto& d : r.deliveries) {
      if (!w_.ok()) return;
      ModelDelivery(index, d);
    }
  });
}

// The committed log applied one command per entry (a batch's commands one after another) must
// decide, command for command, what the batch decided, and reach the same state after it.
void QueueWorkload::CheckAgainstSingles(uint64_t node, uint64_t index, const Applied& a) {
  if (a.cmd.has_batch() && a.result.batch.empty()) return;  // refused whole: nothing applied
  int k = 0;
  ForEachCommand(a.cmd, a.result, [&](const qpb::Command& cmd, const mq::ApplyResult& r) {
    ++k;
    if (!w_.ok()) return;
    mq::ApplyResult alone = singles_.Apply(++singles_index_, Mutate(cmd));
    if (!a.cmd.has_batch()) return;  // the same call on the same state: nothing to compare
    std::string batched = ResultText(r), single = ResultText(alone);
    if (batched != single) {
      w_.Fail("batch at index " + std::to_string(index) + ": command " + std::to_string(k) +
              " decided (" + batched + ") but alone (" + single + ")");
    }
  });
  if (!w_.ok() || !a.cmd.has_batch()) return;
  if (FingerprintOf(singles_) != fingerprint_[node]) {
    w_.Fail("batch at index " + std::to_string(index) +
            ": the state differs from its commands applied one by one");
  }
}

void QueueWorkload::ModelRelease(const std::string& cid) {
  model_.live.erase(cid);
  for (auto it = model_.holder.begin(); it != model_.holder.end();) {
    it = it->second == cid ? model_.holder.erase(it) : std::next(it);
  }
}

// The effect a command must have, by the contract in broker_state.h, before its deliveries.
void QueueWorkload::ModelCommand(uint64_t index, const qpb::Command& cmd,
                                 const mq::ApplyResult& r) {
  auto settle = [&](const std::string& cid, const auto& ids, bool ack) {
    bool valid = model_.live.contains(cid) && !ids.empty();
    std::set<uint64_t> distinct;
    for (uint64_t m : ids) {
      auto h = model_.holder.find(m);
      valid = valid && h != model_.holder.end() && h->second == cid && distinct.insert(m).second;
    }
    if (model_.live.contains(cid) && valid != r.error.ok()) {
      return w_.Fail(std::string(ack ? "ack" : "nack") + " by " + cid + " at index " +
                     std::to_string(index) +
                     (valid ? " of held messages refused: " + r.error.reply_text
                            : " of messages it does not hold accepted"));
    }
    if (!valid) return;
    for (uint64_t m : ids) {
      model_.holder.erase(m);
      if (ack) {
        model_.acked[m] = index;
        w_.stats().acks++;
      }
    }
  };
  switch (cmd.op_case()) {
    case qpb::Command::kConsume:
      if (r.error.ok()) model_.live[cmd.consume().consumer_id()] = cmd.consume().owner();
      break;
    case qpb::Command::kAck:
      settle(cmd.ack().consumer_id(), cmd.ack().message_ids(), true);
      break;
    case qpb::Command::kNack:
      settle(cmd.nack().consumer_id(), cmd.nack().message_ids(), false);
      break;
    case qpb::Command::kCancel:
      ModelRelease(cmd.cancel().consumer_id());
      break;
    case qpb::Command::kDropOwner: {
      std::vector<std::string> dropped;
      for (const auto& [cid, owner] : model_.live) {
        if (Under(owner, cmd.drop_owner().owner())) dropped.push_back(cid);
      }
      for (const auto& cid : dropped) ModelRelease(cid);
      break;
    }
    case qpb::Command::kPublish:
      for (size_t i = 0; i < r.routed_queues.size() && i < r.message_ids.size(); ++i)
        model_.queue_of[r.message_ids[i]] = r.routed_queues[i];
      break;
    default:
      break;
  }
}

void QueueWorkload::ModelDelivery(uint64_t index, const mq::Delivery& d) {
  uint64_t m = d.message_id;
  std::string what = "message " + d.queue + "/" + std::to_string(m) + " delivered to " +
                     d.consumer_id + " at index " + std::to_string(index);
  w_.stats().deliveries++;
  if (d.redelivered) w_.stats().redeliveries++;
  if (auto a = model_.acked.find(m); a != model_.acked.end())
    return w_.Fail(what + " after its ack at index " + std::to_string(a->second));
  if (auto h = model_.holder.find(m); h != model_.holder.end())
    return w_.Fail(what + " while " + h->second + " holds it");
  if (!model_.live.contains(d.consumer_id)) return w_.Fail(what + ", a consumer that is gone");
  bool again = model_.delivered.contains(m);
  if (again != d.redelivered) {
    return w_.Fail(what + (again ? " again without redelivered" : " first with redelivered"));
  }
  model_.holder[m] = d.consumer_id;
  model_.delivered.insert(m);
}

void QueueWorkload::CheckEnd() {
  uint64_t l = w_.Leader();
  if (l == 0) return w_.Fail("queues: no leader at the end");
  mq::BrokerState& state = Replica(l);
  std::set<uint64_t> present;
  for (const auto& q : state.QueueNames()) {
    for (uint64_t m : state.ReadyIds(q)) present.insert(m);
    for (const auto& cid : state.ConsumerIds(q)) {
      for (uint64_t m : state.UnackedIds(cid)) present.insert(m);
    }
  }
  for (const auto& [m, qb] : confirmed_) {
    std::string what =
        "confirmed message " + qb.first + "/" + std::to_string(m) + " (" + qb.second + ")";
    if (!model_.delivered.contains(m)) return w_.Fail(what + " was never delivered");
    if (!model_.acked.contains(m) && !present.contains(m))
      return w_.Fail(what + " is lost: neither acked nor in its queue");
  }
  for (const auto& [m, index] : model_.acked) {
    if (present.contains(m)) {
      return w_.Fail("message " + std::to_string(m) + " acked at index " + std::to_string(index) +
                     " is still in its queue");
    }
  }
  // Replicas at the same applied index hold the same state, byte for byte.
  std::map<uint64_t, std::pair<uint64_t, std::string>> by_index;  // applied -> (node, snapshot)
  for (uint64_t n = 1; n <= w_.NodeCount(); ++n) {
    if (!w_.Up(n)) continue;
    std::string snap = TakeSnapshot(n);
    auto [it, fresh] = by_index.emplace(w_.Applied(n), std::make_pair(n, snap));
    if (!fresh && it->second.second != snap) {
      return w_.Fail("queue replicas " + std::to_string(it->second.first) + " and " +
                     std::to_string(n) + " differ at applied index " + std::to_string(it->first));
    }
  }
}

}  // namespace

std::unique_ptr<Workload> MakeQueueWorkload(Cluster& cluster) {
  return std::make_unique<QueueWorkload>(cluster);
}

}  // namespace haven::sim
