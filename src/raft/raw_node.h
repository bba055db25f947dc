// RawNode: one member of one Raft group as a pure state machine (etcd raft's shape). The shell
// feeds it time (Tick), messages (Step) and requests (Propose, ReadIndex, ...), and after each
// batch takes a Ready: what to persist, what to send, what to apply. No sockets, threads, clocks
// or disk: the same code runs in the server and, deterministically, in the simulator.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "raft/raft.pb.h"
#include "raft/snapshot_stream.h"

namespace haven::raft {

enum class Role { kFollower, kPreCandidate, kCandidate, kLeader };
const char* RoleName(Role r);

struct Config {
  uint64_t id = 0;     // this node, non-zero
  uint64_t group = 0;  // stamped on every message; messages of other groups are ignored
  // In ticks. A follower campaigns after a randomized timeout in [election, 2*election); a leader
  // heartbeats every heartbeat_tick.
  int election_tick = 10;
  int heartbeat_tick = 1;
  bool pre_vote = true;      // a node campaigns only after a pre-vote majority (no term inflation)
  bool check_quorum = true;  // a leader not heard from by a quorum within an election timeout
                             // steps down; followers ignore votes while they hear a leader
  // After LeaderUnreachable, a follower campaigns within [1, this] ticks (randomized, so that two
  // followers that saw the same death rarely split the vote) instead of an election timeout.
  int unreachable_campaign_ticks = 3;
  size_t max_inflight_msgs = 256;             // MsgApp per follower not yet acknowledged
  uint64_t max_inflight_bytes = 16 << 20;     // entry bytes per follower not yet acknowledged
  uint64_t max_msg_bytes = 1 << 20;           // entry bytes per MsgApp (at least one entry)
  uint64_t max_uncommitted_bytes = 64 << 20;  // proposals beyond it are refused (Busy)
  uint64_t snapshot_chunk_bytes = 1 << 20;    // InstallSnapshot chunk size
  uint64_t seed = 1;  // randomized election timeouts: deterministic per seed
  // Takes the streamed part of snapshots from the leader; null: streamed snapshots are refused.
  std::shared_ptr<SnapshotSink> snapshot_sink;

  // Test-only fault injection, so the simulator can show its checkers catch a real bug.
  // Commit entries of older terms by counting replicas (Raft paper Figure 8): unsafe.
  bool unsafe_commit_old_terms = false;
};

// Where a node restarts from: what its storage holds. A brand-new node of a new cluster has an
// empty log and `conf` = the initial voters; a node joining an existing cluster starts empty with
// an empty conf and learns it from the leader's snapshot or log.
struct InitialState {
  pb::HardState hard_state;
  pb::ConfState conf;                        // as of the snapshot, or the bootstrap voters
  std::optional<pb::SnapshotMeta> snapshot;  // the log is compacted up to snapshot->index
  std::vector<pb::Entry> entries;            // the log after the snapshot, contiguous
  uint64_t applied = 0;                      // the state machine has applied up to here
  // The snapshot's data, if the shell has it at hand: a restarted leader can then send it to
  // followers behind its log (otherwise only after the shell's next Compact). A streamed one's
  // stream comes with SetSnapshotStream.
  std::optional<std::string> snapshot_data;
  // A brand-new node's bootstrap conf-change entries carry these contexts (the shell's member
  // addresses), so that the log alone says where every member is, also after a restart.
  std::map<uint64_t, std::string> bootstrap_context;
};

// A linearizable read is safe at `index` once the state machine applied it.
struct ReadState {
  uint64_t index = 0;
  std::string context;  // as given to ReadIndex
};

struct SoftState {
  uint64_t leader = 0;  // 0 = unknown
  Role role = Role::kFollower;
};

// What the shell must do, in this order: (1) persist hard_state, snapshot and entries (entries may
// replace a suffix: everything at or after entries[0].index goes), syncing if must_sync; (2) send
// messages; (3) install snapshot (if any) in the state machine, then apply committed in order;
// (4) call Advance(ready). messages_before_persist may be sent at once, before step 1 (the
// leader's own appends: it persists in parallel with replication and counts itself in the commit
// only after Advance). Everything else waits for persistence: a follower acknowledges only what it
// has persisted.
struct Ready {
  std::optional<pb::HardState> hard_state;
  std::optional<pb::Snapshot> snapshot;  // received whole from the leader: install it
  std::vector<pb::Entry> entries;
  bool must_sync = false;
  std::vector<pb::Message> messages_before_persist;
  std::vector<pb::Message> messages;
  std::vector<pb::Entry> committed;  // to apply, in index order
  std::vector<ReadState> read_states;
  std::optional<SoftState> soft_state;  // when the leader or role changed
};

// The outcome of a proposal is known when an entry at `index` commits: if its term is `term`, the
// proposal committed; any other term there means it was lost (a new leader overwrote it).
struct ProposalId {
  uint64_t index = 0;
  uint64_t term = 0;
};

struct PeerProgress {
  uint64_t id = 0;
  bool learner = false;
  uint64_t match = 0;  // highest index known replicated
  uint64_t next = 0;
  bool active = false;  // heard from within the last election timeout
  std::string state;    // "probe", "replicate", "snapshot"
};

struct NodeStatus {
  uint64_t id = 0;
  uint64_t term = 0;
  uint64_t leader = 0;
  Role role = Role::kFollower;
  uint64_t commit = 0;
  uint64_t applied = 0;
  uint64_t first_index = 0;  // of the in-memory log (snapshot index + 1)
  uint64_t last_index = 0;
  pb::ConfState conf;
  std::vector<PeerProgress> progress;  // leader only
  uint64_t transferee = 0;             // leadership transfer in progress to
};

class RawNode {
 public:
  // InvalidArgument for a bad config (id 0, heartbeat >= election, ...) or inconsistent state
  // (entries not following the snapshot, commit beyond the log, ...).
  static Result<std::unique_ptr<RawNode>> Create(const Config& config, const InitialState& state);
  virtual ~RawNode() = default;

  // One logical clock tick: drives elections, heartbeats and check-quorum.
  virtual void Tick() = 0;
  // A message from the network (any group/term; stale and foreign ones are dropped).
  virtual void Step(const pb::Message& m) = 0;

  // Appends a command if this node is the leader. Otherwise Unavailable("not leader; leader=N")
  // (N = 0 when unknown). Unavailable("busy: ...") when max_uncommitted_bytes would be exceeded or
  // a leadership transfer is in progress.
  virtual Result<ProposalId> Propose(std::string data) = 0;
  // One membership change at a time; Conflict while one is uncommitted; Unavailable if not leader.
  virtual Result<ProposalId> ProposeConfChange(const pb::ConfChange& cc) = 0;
  // Linearizable read (ReadIndex, Raft dissertation 6.4): a ReadState with `context` appears in a
  // later Ready once the leader confirmed its leadership; on a follower the request goes to the
  // leader. Dropped (no ReadState) when there is no leader or it has not committed in its term yet:
  // the shell retries on a timeout.
  virtual void ReadIndex(std::string context) = 0;
  // Leadership transfer (TimeoutNow) to a caught-up voter; the leader stops taking proposals
  // until it completes or an election timeout passes. On a follower, asks the leader.
  virtual void TransferLeadership(uint64_t to) = 0;
  // Starts an election now (tests, and a single-node cluster's first leadership).
  virtual void Campaign() = 0;
  // The shell knows that leader `id` is gone (its process refuses connections): this follower
  // drops the leader's lease now, so it grants votes and campaigns within
  // unreachable_campaign_ticks instead of waiting out an election timeout. A node that still hears
  // the leader keeps refusing votes, so a wrong report cannot depose a live leader. Ignored unless
  // this node is a follower of `id`; cleared by the next message from a leader.
  virtual void LeaderUnreachable(uint64_t id) = 0;

  virtual bool HasReady() const = 0;
  virtual Ready GetReady() = 0;
  // The shell did everything `ready` asked (persisted, sent, applied).
  virtual void Advance(const Ready& ready) = 0;

  // The shell took a state-machine snapshot covering up to `snapshot.meta.index` (<= applied):
  // the in-memory log before it is dropped, and lagging followers get this snapshot: its data,
  // then `stream`'s bytes if given (the receiver needs a snapshot_sink for those).
  virtual Status Compact(pb::Snapshot snapshot, std::shared_ptr<SnapshotSource> stream) = 0;
  Status Compact(pb::Snapshot snapshot) { return Compact(std::move(snapshot), nullptr); }
  // The stream of the snapshot at `index` this node already holds (one installed from a leader
  // arrives without: its stream went to the sink). Until then the node cannot send it.
  virtual void SetSnapshotStream(uint64_t index, std::shared_ptr<SnapshotSource> stream) = 0;
  // Where this node stands (cluster status, metrics, the simulator's checkers).
  virtual NodeStatus status() const = 0;
};

}  // namespace haven::raft
