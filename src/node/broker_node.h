// BrokerNode: the queues as a running service on the node's replicated log. It applies committed
// mq commands to its BrokerState replica (every node holds one), answers the proposer, and hands
// each delivery to the AMQP connection on this node that hosts its consumer. Everything runs on the
// node's executor thread, like RegistryNode, so the state needs no locks.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/status.h"
#include "mq/broker_state.h"
#include "net/io_runtime.h"
#include "node/member_liveness.h"
#include "node/replicated_log.h"
#include "node/spill_stream.h"
#include "raft/raw_node.h"
#include "storage/spill_store.h"

namespace haven::node {

struct BrokerNodeOptions {
  uint64_t raft_id = 1;  // this node's raft id: the first part of every owner id made here
  mq::BrokerOptions broker;
  int64_t expire_check_ms = 1'000;  // the leader proposes Expire at most this often while due
  // A member the leader has not heard from for this long (or one removed from the cluster) is
  // gone: the leader drops its consumers, so their unacked messages go to live consumers. Longer
  // than an election timeout, so a pause or a leader change does not cost a member its consumers.
  // A member proven gone (gone_members) is dropped at once instead (MemberDropPolicy).
  int64_t member_timeout_ms = 3'000;
  // The Raft view of the node's log (the leader's progress of each member); empty: no member
  // checks (a test of one node).
  std::function<raft::NodeStatus()> raft_status;
  // Members whose process the log found gone (RaftLogStatus::gone); empty: none ever is.
  std::function<std::set<uint64_t>()> gone_members;
  // Where queues put the messages beyond their window (outlives the node); null: in memory.
  storage::SpillStore* spill = nullptr;
  // Commands proposed in one turn of the executor (every connection's publishes, acks, ...) go to
  // the log as one Batch entry, up to these bounds (then another one starts): one proposal to
  // replicate, store and apply instead of one per message. 1 proposes each on its own.
  size_t max_batch_commands = 512;
  size_t max_batch_bytes = size_t{1} << 20;
};

// What a connection on this node receives from the broker (on the executor).
struct BrokerConnectionSink {
  std::function<void(const mq::Delivery&)> deliver;
  std::function<void(const std::string& consumer_id)> cancelled;  // by the broker (queue deleted)
  // The owner was dropped (e.g. the leader decided this node was gone): close the connection.
  std::function<void()> dropped;
  // The state was replaced by a snapshot (this node caught up from the leader's; the entries it
  // skipped never reached the connection): `held` maps each of this owner's push consumers in the
  // new state to the messages it holds there. A consumer of the connection missing from it is
  // gone; a held message the connection never sent is to be delivered.
  std::function<void(const std::map<std::string, std::vector<mq::Delivery>>& held)> restored;
};

class BrokerNode {
 public:
  // Appends `data` (a serialized mq::pb::Command) to the node's log; DoneFn as ReplicatedLog's.
  using ProposeFn = std::function<void(std::string data, ReplicatedLog::DoneFn done)>;
  // The outcome of a proposal: an error Status when it was not applied (Unavailable: no leader or
  // outcome unknown; IoError), otherwise the ApplyResult (whose `error` may carry an AMQP error).
  using ProposeDone = std::function<void(Result<mq::ApplyResult>)>;

  BrokerNode(BrokerNodeOptions opts, net::IoRuntime& executor, ProposeFn propose,
             const Clock& clock);
  ~BrokerNode();

  // --- on the executor thread only ---
  // Stamps the time and proposes (with the other commands of this executor turn, in order, as one
  // entry); `done` runs once the command is applied here (or failed).
  void Propose(mq::pb::Command cmd, ProposeDone done);
  // A new owner id for a connection: "RAFT_ID:BOOT/SEQ", unique across restarts of this node.
  std::string NewOwnerId();
  // Routes deliveries and cancels of consumers "OWNER/..." to `sink` until Detach.
  void Attach(const std::string& owner, BrokerConnectionSink sink);
  // The connection closed: stops routing to it and proposes DropOwner (its consumers' unacked
  // messages go back to their queues, redelivered; its exclusive queues are deleted).
  void Detach(const std::string& owner);
  const mq::BrokerState& state() const { return state_; }

  // Hooks for the log's owner (on the executor):
  void Apply(uint64_t index, const std::string& data);       // a committed mq command
  uint64_t last_commands() const { return last_commands_; }  // in the entry applied last
  // A serialized mq::pb::Snapshot; syncs the spill first, since the log before it goes. With a
  // spill, the local form: the windows, and where each queue's spilled part is.
  std::string TakeSnapshot();
  // The spilled records the snapshot taken or restored last refers to, read from a view of the
  // spill pinned now (call right after TakeSnapshot or Restore): the streamed part of that
  // snapshot for a node that has none of them. Null without a spill or with nothing spilled.
  std::shared_ptr<raft::SnapshotSource> SnapshotStream();
  // Replaces the state, then reconciles the attached connections with it (`restored`).
  Status Restore(const std::string& snapshot);
  // The snapshot at `index` is on disk: spilled records no snapshot since needs may go.
  void OnSnapshotDurable(uint64_t index);
  // Leader: runs the TTL expiry timer and drops the owners of members that are gone.
  void OnLeadership(bool leader);
  // The log found member `id`'s process gone: the leader drops its consumers now.
  void OnMemberGone(uint64_t id);
  // At start, before taking connections: drops what earlier boots of this node left behind.
  void DropPreviousBoots();

 private:
  struct Queued {
    mq::pb::Command cmd;
    ProposeDone done;
  };
  // Proposes what Propose gathered: one command as itself, several as one Batch.
  void FlushBatch();
  void ProposeEntry(mq::pb::Command cmd, ProposeDone done);
  void ApplyCommand(const mq::pb::Command& cmd, const mq::ApplyResult& result);
  void Route(const mq::pb::Command& cmd, const mq::ApplyResult& result);
  // The attached owner hosting consumer "OWNER/channel/tag", or null.
  BrokerConnectionSink* SinkFor(const std::string& consumer_id);
  void NotifyDropped(const mq::pb::DropOwner& drop);
  void ProposeDetach(const std::string& owner, int attempt);
  void MaybeProposeDispatch();
  void ReconcileSinks();
  void ArmExpiryTimer();
  void OnExpiryTimer();
  void DropGoneMembers();
  void DropMember(uint64_t id, MemberDropPolicy::Reason why);

  BrokerNodeOptions opts_;
  net::IoRuntime& executor_;
  ProposeFn propose_;
  const Clock& clock_;
  std::string boot_;  // random 64-bit hex: tells this boot's owners from earlier ones
  uint64_t next_owner_seq_ = 1;
  std::map<std::string, BrokerConnectionSink> sinks_;  // by owner id
  std::vector<Queued> batch_;  // proposed this turn, not yet handed to the log
  size_t batch_bytes_ = 0;
  bool flush_posted_ = false;
  // The outcome of the entry applied last: the log calls a proposal's DoneFn right after applying
  // its entry (ReplicatedLog's contract), so one slot serves every proposal.
  uint64_t last_result_index_ = 0;
  uint64_t last_commands_ = 1;
  mq::ApplyResult last_result_;
  bool leader_ = false;
  bool dispatch_in_flight_ = false;
  bool expire_in_flight_ = false;
  // Leader: which members' owners to drop (silent too long, proven gone, removed).
  MemberDropPolicy member_drops_;
  std::shared_ptr<net::Timer> expiry_timer_;
  // Cleared by the destructor: proposal callbacks that outlive this object do nothing.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  // What the spill keeps for each snapshot taken and not yet known durable, by its broker index.
  std::map<uint64_t, mq::SpillKeep> spill_keeps_;
  // The spilled parts of the snapshot taken or restored last (for SnapshotStream).
  std::vector<SpillRange> snapshot_ranges_;
  mq::BrokerState state_;
};

}  // namespace haven::node
