// RaftLog: the ReplicatedLog of one Raft group. A thread of its own drives a raft::RawNode (ticks,
// messages from the transport, proposals), persists each Ready to the LogStore, sends messages
// through the FramedTransport, and hands committed commands to the node's executor. Any node takes
// proposals: a follower forwards them to the leader, and the proposer recognises its own entry
// (origin, boot, seq) when it commits, so the caller's DoneFn runs where the proposal was made.
// When the leader changes, the proposer sends its pending proposals to the new one (they keep
// their identity, so the on_commit handler can apply a copy that also committed at most once).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "base/status.h"
#include "net/io_runtime.h"
#include "node/replicated_log.h"
#include "node/request_dedupe.h"
#include "raft/raw_node.h"
#include "storage/log_store.h"

namespace haven::node {

struct RaftLogOptions {
  uint64_t node_id = 1;
  uint64_t group = 1;
  std::string listen = "127.0.0.1:0";     // this node's raft address (HOST:PORT, an IP)
  std::map<uint64_t, std::string> peers;  // id -> raft address, this node included; at bootstrap
                                          // these are the voters (empty: join an existing cluster)
  // Timing: a heartbeat every heartbeat_ticks; a follower that hears no leader campaigns after
  // tick_ms * [election_ticks, 2 * election_ticks). `haven server` sets both from --raft-tick and
  // --election-timeout (docs/cluster.md "Failover timing" says how those defaults were chosen).
  int64_t tick_ms = 100;
  int election_ticks = 10;
  int heartbeat_ticks = 1;
  // A follower that has not heard its leader for two heartbeat intervals tries a TCP connect to
  // the leader's raft port; refused means the process is gone, and the follower campaigns within
  // unreachable_campaign_ticks instead of an election timeout (raft::RawNode::LeaderUnreachable).
  bool probe_leader = true;
  int unreachable_campaign_ticks = 3;
  // The leader does the same for a member it has not heard from for two heartbeat intervals
  // (then backing off to once a second while it stays silent): a refused connect reports the
  // member gone (RaftLogStatus::gone, RaftLogCallbacks::on_member_gone) until a frame comes
  // from it. The queues use it to drop a dead node's consumers at once.
  bool probe_members = true;
  int64_t proposal_timeout_ms = 5'000;  // a proposal not committed by then fails (outcome unknown)
  // A pending proposal is answered (outcome unknown, safe to retry with the same request id) once
  // no leader has been heard from for this long: a client learns about a dead leader within about
  // a second, instead of at the proposal timeout. A new leader before then gets it re-forwarded.
  int64_t leaderless_answer_ms = 700;  // + up to a tick: an answer within 1 s of the leader's death
  size_t max_pending_proposals = 100'000;
  // Takes the streamed part of snapshots from the leader (the queues' spilled messages); null:
  // such snapshots are refused.
  std::shared_ptr<raft::SnapshotSink> snapshot_sink;
};

struct RaftLogStatus {
  raft::NodeStatus node;
  std::map<uint64_t, std::string> peers;  // as known now
  uint64_t pending_proposals = 0;
  // Milliseconds since this node last heard from the leader: 0 on the leader, -1 when no leader
  // has been heard from (Consul's X-Consul-LastContact).
  int64_t last_leader_contact_ms = -1;
  // Members whose raft port refused a connect after they fell silent, not heard from since: their
  // process is gone (probed by the leader; see RaftLogOptions::probe_members).
  std::set<uint64_t> gone;
};

// A committed command as the log hands it to the node.
struct CommittedEntry {
  uint64_t index = 0;
  Machine machine = Machine::kRegistry;
  const std::string& data;
  ProposalIdentity id;
};

// What the log calls on the node's executor.
struct RaftLogCallbacks {
  // Every committed command, in log order. Its Status is what the proposer's DoneFn gets (not ok:
  // the entry was refused, e.g. as too old to tell from a duplicate).
  std::function<Status(const CommittedEntry&)> on_commit;
  // Installs a snapshot received from the leader (or loaded at start) in the state machine; runs
  // before any later on_commit.
  std::function<void(uint64_t index, const std::string& state)> on_restore;
  // This node became the leader (true) or stopped being it (false). May be empty.
  std::function<void(bool leader)> on_leadership;
  // On the leader: a request another node made with AskLeader (or this one, while it leads).
  // `reply` may be called later, from the executor, exactly once. May be empty (Unavailable).
  using Reply = std::function<void(Result<std::string>)>;
  std::function<void(const std::string& request, Reply reply)> on_leader_request;
  // On the leader: member `id` was found gone (RaftLogStatus::gone has it by now). May be empty.
  std::function<void(uint64_t id)> on_member_gone;
};

class RaftLog final : public ReplicatedLog {
 public:
  RaftLog(storage::LogStore& store, net::IoRuntime& executor, RaftLogCallbacks callbacks,
          RaftLogOptions opts);
  ~RaftLog() override;  // Stop()s
  RaftLog(const RaftLog&) = delete;
  RaftLog& operator=(const RaftLog&) = delete;

  // Loads the durable state (restoring the snapshot through on_restore and re-applying the
  // committed log through on_commit), binds the transport and starts the thread. A single-voter
  // cluster elects itself at once.
  Status Start();
  // Fails pending proposals with Unavailable and stops the thread and the transport.
  void Stop();

  void Propose(Machine machine, std::string data, DoneFn done) override;
  // The same with the client's request id (at most 128 bytes; "" for none), carried in the entry
  // so that a retry of the request on any node can be recognised.
  void Propose(Machine machine, std::string data, std::string client_id, DoneFn done);
  // Linearizable read barrier (ReadIndex, Raft dissertation 6.4): `done` runs on the executor once
  // this node has applied every entry committed before the call, so a read made then sees every
  // write acknowledged before the call anywhere; or with Unavailable when no leader confirms it
  // within the proposal timeout. Concurrent calls share one round trip to the leader.
  void ReadBarrier(std::function<void(Status)> done);
  // Sends `request` to the leader's on_leader_request (no log write); `done` runs on the executor
  // with its reply, or Unavailable when no leader is known, it changes, or no reply comes within
  // the proposal timeout.
  void AskLeader(std::string request, RaftLogCallbacks::Reply done);
  // The state machine took a snapshot at `index` (applied): it is stored and the log before it
  // compacted; lagging followers receive it, followed by `stream`'s bytes if given (not stored:
  // the shell keeps what it reads).
  void SaveSnapshotAsync(uint64_t index, std::string state,
                         std::shared_ptr<raft::SnapshotSource> stream = nullptr);
  // The stream of the snapshot at `index` this node restored (at start, or installed from the
  // leader), so that it can send that snapshot while it has no newer one.
  void SetSnapshotStream(uint64_t index, std::shared_ptr<raft::SnapshotSource> stream);
  // Graceful leadership transfer (before a planned shutdown); no-op when not leader.
  void TransferLeadership(uint64_t to);

  // Membership change (one server at a time; `cc.context` = the member's raft address for adds).
  // On the leader only: elsewhere Unavailable("not leader; leader is ID at ADDR"). `done` runs on
  // the executor once the change is committed and applied, or with the core's error (Conflict:
  // another change is pending), or Unavailable if it was lost or not committed in time.
  void ChangeMembership(raft::pb::ConfChange cc, std::function<void(Status)> done);
  // Moves leadership to voter `to` (0: the most caught-up other voter); `done` runs on the
  // executor once another node leads, or with Unavailable after `timeout_ms` (at most 60 s).
  void TransferLeadershipAndWait(uint64_t to, int64_t timeout_ms, std::function<void(Status)> done);

  std::string raft_address() const;
  RaftLogStatus status() const;  // thread-safe snapshot of the node's state

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace haven::node
