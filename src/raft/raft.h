// Raft: the consensus state machine behind RawNode (elections with PreVote and CheckQuorum,
// replication with flow control, ReadIndex, leadership transfer, chunked snapshots, one-at-a-time
// membership). Pure: everything it wants done comes out through GetReady.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "raft/progress.h"
#include "raft/raft_log.h"
#include "raft/raw_node.h"

namespace haven::raft {

// Context of the MsgVotes of a campaign started by MSG_TIMEOUT_NOW: voters skip the leader lease.
inline constexpr const char* kTransferContext = "transfer";
// A follower assembles at most this much snapshot data; Compact refuses bigger snapshots.
inline constexpr uint64_t kMaxSnapshotBytes = uint64_t{1} << 30;
// ReadIndex requests waiting for a heartbeat quorum, and the size of one request's context.
inline constexpr size_t kMaxPendingReads = 4096;
inline constexpr size_t kMaxReadContextBytes = 4096;
// Committed entries handed out in one Ready (at least one entry).
inline constexpr uint64_t kMaxCommittedBytesPerReady = uint64_t{64} << 20;

class Raft final : public RawNode {
 public:
  static Status ValidateConfig(const Config& c);
  static Status ValidateState(const InitialState& s);
  Raft(const Config& config, const InitialState& state);
  static bool IsFresh(const InitialState& s);

  void Tick() override;
  void Step(const pb::Message& m) override;
  Result<ProposalId> Propose(std::string data) override;
  Result<ProposalId> ProposeConfChange(const pb::ConfChange& cc) override;
  void ReadIndex(std::string context) override;
  void TransferLeadership(uint64_t to) override;
  void Campaign() override;
  void LeaderUnreachable(uint64_t id) override;
  bool HasReady() const override;
  Ready GetReady() override;
  void Advance(const Ready& ready) override;
  using RawNode::Compact;
  Status Compact(pb::Snapshot snapshot, std::shared_ptr<SnapshotSource> stream) override;
  void SetSnapshotStream(uint64_t index, std::shared_ptr<SnapshotSource> stream) override;
  NodeStatus status() const override;

 private:
  enum class CampaignKind { kPreElection, kElection, kTransfer };
  enum class VoteResult { kPending, kWon, kLost };
  struct PendingRead {
    uint64_t index = 0;
    std::string context;
    uint64_t from = 0;  // who asked: this node or a follower
    std::set<uint64_t> acks;
  };

  void Bootstrap(const std::map<uint64_t, std::string>& contexts);

  // Roles.
  void BecomeFollower(uint64_t term, uint64_t lead);
  void BecomePreCandidate();
  void BecomeCandidate();
  void BecomeLeader();
  void ResetForTerm(uint64_t term);
  void ResetRandomizedTimeout();
  uint64_t NextRandom();

  // Ticks.
  void TickElection();
  void TickLeader();
  void TickSnapshots();

  // Elections.
  bool Promotable() const;
  bool HasUnappliedConfChange() const;
  bool HasPendingSelfRemoval() const;
  void StartCampaign(CampaignKind kind);
  VoteResult Poll(uint64_t from, bool granted);
  bool InLease() const;
  void HandleVoteRequest(const pb::Message& m);

  // Step dispatch.
  bool AcceptsSender(const pb::Message& m) const;
  bool StepTerm(const pb::Message& m);
  void StepLeader(const pb::Message& m);
  void StepCandidate(const pb::Message& m);
  void StepFollower(const pb::Message& m);

  // Replication (leader side).
  void AppendEntry(pb::EntryType type, std::string data);
  bool SendAppend(uint64_t to, bool send_if_empty);
  void SendAllAppends(uint64_t to);
  void BcastAppend(bool send_if_empty);
  void BcastHeartbeat();
  void SendHeartbeat(uint64_t to, const std::string& context);
  bool MaybeCommit();
  void HandleAppendResponse(const pb::Message& m);
  void HandleHeartbeatResponse(const pb::Message& m);
  uint64_t QuorumSize() const { return voters_.size() / 2 + 1; }
  bool QuorumActive() const;
  void UpdateSelfMatch();

  // Replication (follower side).
  static bool ValidAppend(const pb::Message& m);
  void HandleAppend(const pb::Message& m);
  void HandleHeartbeat(const pb::Message& m);

  // Snapshots.
  bool SendSnapshot(uint64_t to);
  void SendSnapshotChunk(uint64_t to, Progress& pr);
  bool FillSnapshotChunk(uint64_t offset, pb::Message& m);
  bool AcceptSnapChunk(const pb::Message& m);
  void AbortReceive();
  void HandleSnapResponse(const pb::Message& m);
  void HandleSnap(const pb::Message& m);
  uint64_t InstallSnapshot(const pb::SnapshotMeta& meta, std::string data, bool streamed);

  // Reads and transfer.
  bool CommittedInCurrentTerm() const;
  void HandleReadRequest(uint64_t from, std::string context);
  void ReleaseRead(const PendingRead& r);
  void AckRead(uint64_t from, const std::string& context);
  void DoTransfer(uint64_t to);
  void SendTimeoutNow(uint64_t to);

  // Membership.
  bool IsVoter(uint64_t id) const { return voters_.count(id) > 0; }
  bool IsMember(uint64_t id) const { return voters_.count(id) > 0 || learners_.count(id) > 0; }
  void ApplyConfChange(const pb::ConfChange& cc);
  void SetConf(const pb::ConfState& conf);
  pb::ConfState Conf() const;
  void ResetProgress();
  Progress* GetProgress(uint64_t id);

  void Send(pb::Message m);
  pb::HardState CurrentHardState() const;

  Config config_;
  RaftLog log_;
  uint64_t term_ = 0;
  uint64_t vote_ = 0;
  uint64_t lead_ = 0;
  Role role_ = Role::kFollower;
  std::set<uint64_t> voters_;
  std::set<uint64_t> learners_;
  uint64_t conf_index_ = 0;  // the conf reflects every conf change up to this index

  int election_elapsed_ = 0;
  int heartbeat_elapsed_ = 0;
  int randomized_timeout_ = 0;
  bool leader_lost_ = false;  // LeaderUnreachable: campaign soon until a leader is heard again
  uint64_t rng_state_ = 0;

  std::map<uint64_t, bool> votes_;
  std::map<uint64_t, Progress> progress_;
  uint64_t pending_conf_index_ = 0;
  uint64_t uncommitted_bytes_ = 0;
  uint64_t transferee_ = 0;
  bool leaving_ = false;  // this leader proposed its own removal: no more proposals
  std::deque<PendingRead> pending_reads_;

  // Snapshots: the latest one to send (from Compact), one being received, one to hand out.
  // A streamed one is snapshot_'s data followed by snapshot_stream_'s bytes; one installed from a
  // leader waits for its stream (SetSnapshotStream) before it can be sent.
  std::optional<pb::Snapshot> snapshot_;
  std::shared_ptr<SnapshotSource> snapshot_stream_;
  bool snapshot_needs_stream_ = false;
  std::optional<pb::SnapshotMeta> recv_meta_;
  uint64_t recv_from_ = 0;
  std::string recv_data_;  // the in-memory part
  bool recv_streamed_ = false;
  uint64_t recv_inline_bytes_ = 0;
  uint64_t recv_stream_bytes_ = 0;  // handed to the sink so far
  std::optional<pb::Snapshot> pending_snapshot_;

  // Outputs not yet handed out.
  std::vector<pb::Message> msgs_before_persist_;
  std::vector<pb::Message> msgs_;
  std::vector<ReadState> read_states_;
  pb::HardState prev_hard_state_;
  SoftState prev_soft_state_;
};

}  // namespace haven::raft
