#include "raft/raft.h"

#include <algorithm>
#include <cassert>

#include "base/log.h"

namespace haven::raft {

namespace {

bool IsLeaderMessage(pb::MessageType t) {
  return t == pb::MSG_APP || t == pb::MSG_HEARTBEAT || t == pb::MSG_SNAP;
}

bool IsVoteRequest(pb::MessageType t) { return t == pb::MSG_VOTE || t == pb::MSG_PRE_VOTE; }

pb::Message MakeMessage(pb::MessageType type, uint64_t to) {
  pb::Message m;
  m.set_type(type);
  m.set_to(to);
  return m;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Construction and validation.

Status Raft::ValidateConfig(const Config& c) {
  if (c.id == 0) return Status::InvalidArgument("raft config: id must be non-zero");
  if (c.heartbeat_tick <= 0) return Status::InvalidArgument("raft config: heartbeat_tick <= 0");
  if (c.election_tick <= c.heartbeat_tick) {
    return Status::InvalidArgument("raft config: election_tick must exceed heartbeat_tick");
  }
  if (c.election_tick > 1000000)
    return Status::InvalidArgument("raft config: election_tick too big");
  if (c.unreachable_campaign_ticks <= 0 || c.unreachable_campaign_ticks > c.election_tick) {
    return Status::InvalidArgument(
        "raft config: unreachable_campaign_ticks must be in [1, election_tick]");
  }
  if (c.max_inflight_msgs == 0 || c.max_inflight_bytes == 0 || c.max_msg_bytes == 0 ||
      c.max_uncommitted_bytes == 0 || c.snapshot_chunk_bytes == 0) {
    return Status::InvalidArgument("raft config: limits must be positive");
  }
  return Status::Ok();
}

Status Raft::ValidateState(const InitialState& s) {
  uint64_t snap_index = s.snapshot ? s.snapshot->index() : 0;
  uint64_t snap_term = s.snapshot ? s.snapshot->term() : 0;
  uint64_t prev_term = snap_term;
  for (size_t i = 0; i < s.entries.size(); ++i) {
    const pb::Entry& e = s.entries[i];
    if (e.index() != snap_index + 1 + i) {
      return Status::InvalidArgument("raft state: entries do not follow the snapshot contiguously");
    }
    if (e.term() < prev_term) return Status::InvalidArgument("raft state: entry terms decrease");
    prev_term = e.term();
  }
  if (s.snapshot_data && s.snapshot_data->size() > kMaxSnapshotBytes) {
    return Status::InvalidArgument("raft state: snapshot over 1 GiB");
  }
  uint64_t last = snap_index + s.entries.size();
  if (s.hard_state.commit() > last) {
    return Status::InvalidArgument("raft state: commit beyond the last log index");
  }
  if (s.hard_state.term() < prev_term) {
    return Status::InvalidArgument("raft state: hard state term below the last entry's term");
  }
  // A commit index that was not synced may lag what the state machine applied; not so the log.
  if (s.applied > last) return Status::InvalidArgument("raft state: applied beyond the log");
  return Status::Ok();
}

Raft::Raft(const Config& config, const InitialState& state) : config_(config) {
  rng_state_ = config.seed * 0x9E3779B97F4A7C15ULL ^ (config.id + 0x632BE59BD9B4E019ULL);
  uint64_t snap_index = state.snapshot ? state.snapshot->index() : 0;
  uint64_t snap_term = state.snapshot ? state.snapshot->term() : 0;
  log_.Reset(snap_index, snap_term, state.entries);
  log_.SetCommitted(std::max({state.hard_state.commit(), snap_index, state.applied}));
  log_.SetApplied(std::max(state.applied, snap_index));
  SetConf(state.conf);
  // `conf` is as of the snapshot (or empty: then the log holds it from the bootstrap entries).
  // The changes committed after it are replayed now, so the node restarts with the membership
  // it will have once it re-applies them. Each change assigns one node's role, so replaying is
  // harmless even if storage gave a later conf.
  conf_index_ = log_.committed();
  for (uint64_t i = snap_index + 1; i <= log_.committed(); ++i) {
    const pb::Entry* e = log_.At(i);
    pb::ConfChange cc;
    if (e->type() == pb::ENTRY_CONF_CHANGE && cc.ParseFromString(e->data())) ApplyConfChange(cc);
  }
  if (state.snapshot && state.snapshot_data) {
    snapshot_.emplace();
    *snapshot_->mutable_meta() = *state.snapshot;
    snapshot_->set_data(*state.snapshot_data);
  }
  term_ = state.hard_state.term();
  vote_ = state.hard_state.vote();
  prev_hard_state_ = state.hard_state;
  if (IsFresh(state)) Bootstrap(state.bootstrap_context);
  BecomeFollower(term_, 0);
  prev_soft_state_ = SoftState{lead_, role_};
}

bool Raft::IsFresh(const InitialState& s) {
  const pb::HardState& hs = s.hard_state;
  bool empty_conf = s.conf.voters_size() == 0 && s.conf.learners_size() == 0;
  return !s.snapshot && s.entries.empty() && hs.term() == 0 && hs.vote() == 0 && hs.commit() == 0 &&
         s.applied == 0 && !empty_conf;
}

// A brand-new cluster member writes the initial conf into the log as committed conf-change
// entries of term 1 (etcd's bootstrap), so a node joining later learns the voters from the log.
void Raft::Bootstrap(const std::map<uint64_t, std::string>& contexts) {
  auto add = [&](uint64_t id, pb::ConfChangeType type) {
    pb::ConfChange cc;
    cc.set_type(type);
    cc.set_node_id(id);
    if (auto it = contexts.find(id); it != contexts.end()) cc.set_context(it->second);
    pb::Entry e;
    e.set_term(1);
    e.set_index(log_.last_index() + 1);
    e.set_type(pb::ENTRY_CONF_CHANGE);
    e.set_data(cc.SerializeAsString());
    log_.Append(std::move(e));
  };
  for (uint64_t id : voters_) add(id, pb::CONF_ADD_VOTER);
  for (uint64_t id : learners_) add(id, pb::CONF_ADD_LEARNER);
  log_.CommitTo(log_.last_index());
  conf_index_ = log_.last_index();  // conf_ already reflects these entries
  term_ = 1;
}

// ---------------------------------------------------------------------------------------------
// Roles and timers.

uint64_t Raft::NextRandom() {
  // splitmix64: deterministic per (seed, id), good enough to spread election timeouts.
  uint64_t z = (rng_state_ += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

void Raft::ResetRandomizedTimeout() {
  if (leader_lost_) {
    // The leader is known dead: no lease to wait out. A split vote between two such followers
    // is retried as quickly, with a fresh random delay each.
    randomized_timeout_ =
        1 + static_cast<int>(NextRandom() % uint64_t(config_.unreachable_campaign_ticks));
    return;
  }
  randomized_timeout_ =
      config_.election_tick + static_cast<int>(NextRandom() % uint64_t(config_.election_tick));
}

void Raft::ResetForTerm(uint64_t term) {
  if (term_ != term) {
    term_ = term;
    vote_ = 0;
  }
  lead_ = 0;
  election_elapsed_ = 0;
  heartbeat_elapsed_ = 0;
  ResetRandomizedTimeout();
  votes_.clear();
  transferee_ = 0;
  leaving_ = false;
  pending_reads_.clear();
}

void Raft::BecomeFollower(uint64_t term, uint64_t lead) {
  if (lead != 0) leader_lost_ = false;
  ResetForTerm(term);
  lead_ = lead;
  role_ = Role::kFollower;
  progress_.clear();
}

void Raft::BecomePreCandidate() {
  // No term change and no vote: a pre-election that fails leaves no trace.
  votes_.clear();
  lead_ = 0;
  role_ = Role::kPreCandidate;
  progress_.clear();
  election_elapsed_ = 0;
  ResetRandomizedTimeout();
}

void Raft::BecomeCandidate() {
  ResetForTerm(term_ + 1);
  vote_ = config_.id;
  role_ = Role::kCandidate;
  progress_.clear();
}

void Raft::BecomeLeader() {
  leader_lost_ = false;
  ResetForTerm(term_);
  lead_ = config_.id;
  role_ = Role::kLeader;
  ResetProgress();
  uncommitted_bytes_ = 0;
  // Conservative: entries from earlier terms may hold an unapplied conf change.
  pending_conf_index_ = log_.last_index();
  leaving_ = HasPendingSelfRemoval();
  AppendEntry(pb::ENTRY_NOOP, "");
  HLOG_DEBUG("raft_leader", "group={} id={} term={}", config_.group, config_.id, term_);
}

bool Raft::HasPendingSelfRemoval() const {
  for (uint64_t i = std::max(log_.applied(), conf_index_) + 1; i <= log_.last_index(); ++i) {
    const pb::Entry* e = log_.At(i);
    pb::ConfChange cc;
    if (e && e->type() == pb::ENTRY_CONF_CHANGE && cc.ParseFromString(e->data()) &&
        cc.node_id() == config_.id && cc.type() != pb::CONF_ADD_VOTER) {
      return true;
    }
  }
  return false;
}

void Raft::ResetProgress() {
  progress_.clear();
  for (uint64_t id : voters_) GetProgress(id);
  for (uint64_t id : learners_) GetProgress(id);
}

Progress* Raft::GetProgress(uint64_t id) {
  if (!IsMember(id)) return nullptr;
  auto it = progress_.find(id);
  if (it == progress_.end()) {
    it = progress_.emplace(id, Progress(config_.max_inflight_msgs, config_.max_inflight_bytes))
             .first;
    it->second.next = log_.last_index() + 1;
    it->second.recent_active = true;
    if (id == config_.id) it->second.match = log_.stable();
  }
  it->second.learner = learners_.count(id) > 0;
  return &it->second;
}

void Raft::Tick() {
  if (role_ == Role::kLeader) {
    TickLeader();
  } else {
    TickElection();
  }
}

void Raft::TickElection() {
  ++election_elapsed_;
  if (Promotable() && election_elapsed_ >= randomized_timeout_) {
    election_elapsed_ = 0;
    Campaign();
  }
}

void Raft::TickLeader() {
  ++heartbeat_elapsed_;
  ++election_elapsed_;
  if (election_elapsed_ >= config_.election_tick) {
    election_elapsed_ = 0;
    if (config_.check_quorum && !QuorumActive()) {
      HLOG_INFO("raft_step_down", "group={} id={} term={} reason=check_quorum", config_.group,
                config_.id, term_);
      BecomeFollower(term_, 0);
      return;
    }
    for (auto& [id, pr] : progress_) pr.recent_active = id == config_.id;
    transferee_ = 0;  // a transfer that did not finish within an election timeout is aborted
  }
  TickSnapshots();
  if (heartbeat_elapsed_ >= config_.heartbeat_tick) {
    heartbeat_elapsed_ = 0;
    BcastHeartbeat();
  }
}

void Raft::TickSnapshots() {
  // A lost chunk (or answer) would stall the transfer: resend after an election timeout.
  for (auto& [id, pr] : progress_) {
    if (pr.state != ProgressState::kSnapshot) continue;
    if (++pr.snap_ticks >= config_.election_tick) SendSnapshotChunk(id, pr);
  }
}

bool Raft::QuorumActive() const {
  size_t active = 0;
  for (uint64_t id : voters_) {
    auto it = progress_.find(id);
    if (id == config_.id || (it != progress_.end() && it->second.recent_active)) ++active;
  }
  return active >= QuorumSize();
}

// ---------------------------------------------------------------------------------------------
// Elections.

bool Raft::Promotable() const { return IsVoter(config_.id); }

bool Raft::HasUnappliedConfChange() const {
  for (uint64_t i = std::max(log_.applied(), conf_index_) + 1; i <= log_.committed(); ++i) {
    const pb::Entry* e = log_.At(i);
    if (e && e->type() == pb::ENTRY_CONF_CHANGE) return true;
  }
  return false;
}

void Raft::Campaign() {
  if (role_ == Role::kLeader || !Promotable()) return;
  // Applying a committed conf change first keeps one-at-a-time changes safe.
  if (HasUnappliedConfChange()) return;
  StartCampaign(config_.pre_vote ? CampaignKind::kPreElection : CampaignKind::kElection);
}

void Raft::LeaderUnreachable(uint64_t id) {
  if (id == 0 || id != lead_ || role_ != Role::kFollower || id == config_.id) return;
  HLOG_DEBUG("raft_leader_unreachable", "group={} id={} term={} leader={}", config_.group,
             config_.id, term_, id);
  leader_lost_ = true;
  lead_ = 0;  // no lease any more: InLease() is false, votes are granted
  election_elapsed_ = 0;
  ResetRandomizedTimeout();
}

void Raft::StartCampaign(CampaignKind kind) {
  bool pre = kind == CampaignKind::kPreElection;
  uint64_t vote_term = term_ + 1;
  if (pre) {
    BecomePreCandidate();
  } else {
    BecomeCandidate();
    vote_term = term_;
  }
  if (Poll(config_.id, true) == VoteResult::kWon) {
    if (pre) {
      StartCampaign(CampaignKind::kElection);
    } else {
      BecomeLeader();
    }
    return;
  }
  for (uint64_t id : voters_) {
    if (id == config_.id) continue;
    pb::Message m = MakeMessage(pre ? pb::MSG_PRE_VOTE : pb::MSG_VOTE, id);
    m.set_term(vote_term);
    m.set_index(log_.last_index());
    m.set_log_term(log_.last_term());
    if (kind == CampaignKind::kTransfer) m.set_context(kTransferContext);
    Send(std::move(m));
  }
}

Raft::VoteResult Raft::Poll(uint64_t from, bool granted) {
  if (!IsVoter(from)) return VoteResult::kPending;
  votes_.emplace(from, granted);
  size_t yes = 0;
  size_t no = 0;
  for (auto& [id, g] : votes_) (g ? yes : no) += IsVoter(id) ? 1 : 0;
  if (yes >= QuorumSize()) return VoteResult::kWon;
  if (voters_.size() - no < QuorumSize()) return VoteResult::kLost;
  return VoteResult::kPending;
}

bool Raft::InLease() const { return lead_ != 0 && election_elapsed_ < config_.election_tick; }

void Raft::HandleVoteRequest(const pb::Message& m) {
  bool pre = m.type() == pb::MSG_PRE_VOTE;
  bool can_vote = vote_ == m.from() || (vote_ == 0 && lead_ == 0) || (pre && m.term() > term_);
  // A pre-vote is granted only if this node has not heard from a leader lately.
  if (pre && m.context() != kTransferContext && InLease()) can_vote = false;
  pb::Message resp = MakeMessage(pre ? pb::MSG_PRE_VOTE_RESP : pb::MSG_VOTE_RESP, m.from());
  if (can_vote && log_.IsUpToDate(m.index(), m.log_term())) {
    resp.set_term(m.term());
    if (!pre) {
      election_elapsed_ = 0;
      vote_ = m.from();
    }
  } else {
    resp.set_term(term_);
    resp.set_reject(true);
  }
  Send(std::move(resp));
}

// ---------------------------------------------------------------------------------------------
// Step.

bool Raft::AcceptsSender(const pb::Message& m) const {
  if (m.from() == 0 || m.from() == config_.id) return false;
  if (IsMember(m.from())) return true;
  // A leader this node does not know yet (it has not applied the leader's addition, or joins
  // with an empty conf) is still obeyed: its term proves it won an election.
  if (IsLeaderMessage(m.type())) return true;
  // So is a candidate: its conf may be newer than ours (we voted it in but have not applied
  // that yet), and ignoring it could leave no quorum (dissertation 4.2.3). The leader lease
  // keeps removed servers from disrupting a live cluster; a forced (transfer) campaign only
  // counts from a member.
  return IsVoteRequest(m.type()) && m.context() != kTransferContext;
}

void Raft::Step(const pb::Message& m) {
  if (m.group() != config_.group || m.to() != config_.id) return;
  if (!AcceptsSender(m)) return;
  if (!StepTerm(m)) return;
  switch (m.type()) {
    case pb::MSG_VOTE:
    case pb::MSG_PRE_VOTE:
      HandleVoteRequest(m);
      return;
    default:
      break;
  }
  switch (role_) {
    case Role::kLeader:
      StepLeader(m);
      break;
    case Role::kCandidate:
    case Role::kPreCandidate:
      StepCandidate(m);
      break;
    case Role::kFollower:
      StepFollower(m);
      break;
  }
}

// The term rules; false when the message is done with (stale, or ignored under the lease).
bool Raft::StepTerm(const pb::Message& m) {
  if (m.term() > term_) {
    if (IsVoteRequest(m.type())) {
      bool force = m.context() == kTransferContext;
      if (!force && config_.check_quorum && InLease()) return false;
    }
    if (m.type() == pb::MSG_PRE_VOTE) return true;
    if (m.type() == pb::MSG_PRE_VOTE_RESP && !m.reject()) return true;
    BecomeFollower(m.term(), IsLeaderMessage(m.type()) ? m.from() : 0);
    return true;
  }
  if (m.term() < term_) {
    if ((config_.check_quorum || config_.pre_vote) &&
        (m.type() == pb::MSG_APP || m.type() == pb::MSG_HEARTBEAT)) {
      // An old leader cut off by a partition learns the new term from this and steps down.
      Send(MakeMessage(pb::MSG_APP_RESP, m.from()));
    } else if (IsVoteRequest(m.type())) {
      // The candidate learns the newer term at once instead of trailing it election after
      // election (Raft paper: RequestVote replies carry currentTerm).
      pb::Message resp = MakeMessage(
          m.type() == pb::MSG_VOTE ? pb::MSG_VOTE_RESP : pb::MSG_PRE_VOTE_RESP, m.from());
      resp.set_term(term_);
      resp.set_reject(true);
      Send(std::move(resp));
    }
    return false;
  }
  return true;
}

void Raft::StepLeader(const pb::Message& m) {
  switch (m.type()) {
    case pb::MSG_APP_RESP:
      HandleAppendResponse(m);
      break;
    case pb::MSG_HEARTBEAT_RESP:
      HandleHeartbeatResponse(m);
      break;
    case pb::MSG_SNAP_RESP:
      HandleSnapResponse(m);
      break;
    case pb::MSG_READ_INDEX:
      if (m.context().size() <= kMaxReadContextBytes) HandleReadRequest(m.from(), m.context());
      break;
    case pb::MSG_TRANSFER_LEADER:
      // `index` names the transferee when a follower asks on another node's behalf.
      DoTransfer(m.index() != 0 ? m.index() : m.from());
      break;
    default:
      break;
  }
}

void Raft::StepCandidate(const pb::Message& m) {
  bool pre = role_ == Role::kPreCandidate;
  switch (m.type()) {
    case pb::MSG_APP:
    case pb::MSG_HEARTBEAT:
    case pb::MSG_SNAP:
      BecomeFollower(m.term(), m.from());
      StepFollower(m);
      return;
    case pb::MSG_PRE_VOTE_RESP:
    case pb::MSG_VOTE_RESP: {
      if ((m.type() == pb::MSG_PRE_VOTE_RESP) != pre) return;
      VoteResult r = Poll(m.from(), !m.reject());
      if (r == VoteResult::kWon) {
        if (pre) {
          StartCampaign(CampaignKind::kElection);
        } else {
          BecomeLeader();
        }
      } else if (r == VoteResult::kLost) {
        BecomeFollower(term_, 0);
      }
      return;
    }
    default:
      return;
  }
}

void Raft::StepFollower(const pb::Message& m) {
  if (IsLeaderMessage(m.type()) && leader_lost_) {
    leader_lost_ = false;  // a leader is heard again: back to the full election timeout
    ResetRandomizedTimeout();
  }
  switch (m.type()) {
    case pb::MSG_APP:
      election_elapsed_ = 0;
      lead_ = m.from();
      HandleAppend(m);
      break;
    case pb::MSG_HEARTBEAT:
      election_elapsed_ = 0;
      lead_ = m.from();
      HandleHeartbeat(m);
      break;
    case pb::MSG_SNAP:
      election_elapsed_ = 0;
      lead_ = m.from();
      HandleSnap(m);
      break;
    case pb::MSG_TIMEOUT_NOW:
      if (Promotable() && m.from() == lead_ && !HasUnappliedConfChange()) {
        StartCampaign(CampaignKind::kTransfer);
      }
      break;
    case pb::MSG_READ_INDEX_RESP:
      if (m.from() == lead_) read_states_.push_back(ReadState{m.index(), m.context()});
      break;
    default:
      break;
  }
}

// ---------------------------------------------------------------------------------------------
// Replication, leader side.

void Raft::AppendEntry(pb::EntryType type, std::string data) {
  pb::Entry e;
  e.set_term(term_);
  e.set_index(log_.last_index() + 1);
  e.set_type(type);
  uncommitted_bytes_ += data.size();
  e.set_data(std::move(data));
  log_.Append(std::move(e));
  // With a single voter the entry commits as soon as it is persisted (Advance).
  BcastAppend(false);
}

bool Raft::SendAppend(uint64_t to, bool send_if_empty) {
  if (to == config_.id) return false;
  Progress* pr = GetProgress(to);
  if (pr == nullptr || pr->IsPaused()) return false;
  uint64_t prev = pr->next - 1;
  std::optional<uint64_t> prev_term = log_.Term(prev);
  std::vector<pb::Entry> ents;
  if (!prev_term || !log_.Slice(pr->next, log_.last_index() + 1, config_.max_msg_bytes, &ents)) {
    return SendSnapshot(to);
  }
  // An empty append is still worth it when the follower has not heard the latest commit.
  bool bump_commit = pr->sent_commit < std::min(log_.committed(), pr->next - 1);
  if (ents.empty() && !send_if_empty && !bump_commit) return false;
  pb::Message m = MakeMessage(pb::MSG_APP, to);
  m.set_index(prev);
  m.set_log_term(*prev_term);
  m.set_commit(log_.committed());
  pr->sent_commit = std::max(pr->sent_commit, std::min(log_.committed(), prev + ents.size()));
  uint64_t bytes = 0;
  for (auto& e : ents) {
    bytes += EntryBytes(e);
    *m.add_entries() = std::move(e);
  }
  if (pr->state == ProgressState::kReplicate && m.entries_size() > 0) {
    uint64_t last = m.entries(m.entries_size() - 1).index();
    pr->next = last + 1;  // pipelining: optimistic, rolled back on a rejection
    pr->inflights.Add(last, bytes);
  } else if (pr->state == ProgressState::kProbe) {
    pr->probe_sent = true;
  }
  Send(std::move(m));
  return true;
}

void Raft::SendAllAppends(uint64_t to) {
  // Fill the follower's inflight window; bounded by the log size since each send advances next.
  while (SendAppend(to, false)) {
    Progress* pr = GetProgress(to);
    if (pr == nullptr || pr->state != ProgressState::kReplicate) break;
  }
}

void Raft::BcastAppend(bool send_if_empty) {
  for (auto& [id, pr] : progress_) {
    if (id == config_.id) continue;
    if (send_if_empty) {
      SendAppend(id, true);
    } else {
      SendAllAppends(id);
    }
  }
}

void Raft::SendHeartbeat(uint64_t to, const std::string& context) {
  Progress* pr = GetProgress(to);
  if (pr == nullptr) return;
  pb::Message m = MakeMessage(pb::MSG_HEARTBEAT, to);
  // The follower may not have the leader's later entries: it can commit only what it matched.
  m.set_commit(std::min(pr->match, log_.committed()));
  pr->sent_commit = std::max(pr->sent_commit, m.commit());
  m.set_context(context);
  Send(std::move(m));
}

void Raft::BcastHeartbeat() {
  const std::string ctx = pending_reads_.empty() ? std::string() : pending_reads_.back().context;
  for (auto& [id, pr] : progress_) {
    if (id != config_.id) SendHeartbeat(id, ctx);
  }
}

bool Raft::MaybeCommit() {
  std::vector<uint64_t> matches;
  for (uint64_t id : voters_) {
    Progress* pr = GetProgress(id);
    matches.push_back(pr ? pr->match : 0);
  }
  if (matches.empty()) return false;
  std::sort(matches.begin(), matches.end(), std::greater<>());
  uint64_t index = matches[QuorumSize() - 1];
  if (index <= log_.committed()) return false;
  // Raft paper 5.4.2 (Figure 8): only an entry of the current term commits by counting replicas.
  if (!config_.unsafe_commit_old_terms && log_.Term(index) != term_) return false;
  for (uint64_t i = log_.committed() + 1; i <= index; ++i) {
    // Only this term's entries were counted when appended.
    const pb::Entry* e = log_.At(i);
    uint64_t size = e && e->term() == term_ ? e->data().size() : 0;
    uncommitted_bytes_ -= std::min(uncommitted_bytes_, size);
  }
  log_.CommitTo(index);
  return true;
}

void Raft::UpdateSelfMatch() {
  if (role_ != Role::kLeader) return;
  Progress* self = GetProgress(config_.id);
  if (self == nullptr) return;
  self->MaybeUpdate(log_.stable());
  if (MaybeCommit()) BcastAppend(true);
}

void Raft::HandleAppendResponse(const pb::Message& m) {
  Progress* pr = GetProgress(m.from());
  if (pr == nullptr) return;
  pr->recent_active = true;
  if (m.reject()) {
    uint64_t hint = m.reject_hint();
    if (m.log_term() > 0) hint = log_.FindConflictByTerm(hint, m.log_term());
    if (pr->MaybeDecrTo(m.index(), hint)) {
      if (pr->state == ProgressState::kReplicate) pr->BecomeProbe();
      SendAppend(m.from(), true);
    }
    return;
  }
  bool probe_acked = pr->state == ProgressState::kProbe && m.index() == pr->match;
  if (!pr->MaybeUpdate(m.index()) && !probe_acked) return;
  if (pr->state == ProgressState::kProbe) {
    pr->BecomeReplicate();
  } else if (pr->state == ProgressState::kSnapshot && pr->match >= pr->pending_snapshot) {
    pr->BecomeReplicate();
  } else if (pr->state == ProgressState::kReplicate) {
    pr->inflights.FreeLE(m.index());
  }
  if (MaybeCommit()) BcastAppend(true);
  SendAllAppends(m.from());
  if (m.from() == transferee_ && pr->match == log_.last_index()) SendTimeoutNow(m.from());
}

void Raft::HandleHeartbeatResponse(const pb::Message& m) {
  Progress* pr = GetProgress(m.from());
  if (pr == nullptr) return;
  pr->recent_active = true;
  pr->probe_sent = false;
  // An unanswered MsgApp frees its slot here, so a lost message cannot stall the window.
  if (pr->state == ProgressState::kReplicate && pr->inflights.Full()) pr->inflights.FreeFirstOne();
  if (pr->match < log_.last_index()) SendAppend(m.from(), true);
  if (!m.context().empty()) AckRead(m.from(), m.context());
}

// ---------------------------------------------------------------------------------------------
// Replication, follower side.

bool Raft::ValidAppend(const pb::Message& m) {
  uint64_t prev_term = m.log_term();
  for (int i = 0; i < m.entries_size(); ++i) {
    const pb::Entry& e = m.entries(i);
    if (e.index() != m.index() + 1 + i || e.term() < prev_term || e.term() > m.term()) return false;
    prev_term = e.term();
  }
  return true;
}

void Raft::HandleAppend(const pb::Message& m) {
  if (!ValidAppend(m)) {
    HLOG_WARN("raft_bad_append", "group={} id={} from={}", config_.group, config_.id, m.from());
    return;
  }
  pb::Message resp = MakeMessage(pb::MSG_APP_RESP, m.from());
  if (m.index() < log_.committed()) {
    resp.set_index(log_.committed());  // already have it all: the leader continues from here
    Send(std::move(resp));
    return;
  }
  bool ok = true;
  std::optional<uint64_t> last = log_.MaybeAppend(m.index(), m.log_term(), m.entries(), &ok);
  if (!ok) {
    HLOG_ERROR("raft_append_below_commit", "group={} id={} from={} commit={}", config_.group,
               config_.id, m.from(), log_.committed());
    return;
  }
  if (last) {
    log_.CommitTo(std::min(m.commit(), *last));
    resp.set_index(*last);
  } else {
    uint64_t hint = log_.FindConflictByTerm(std::min(m.index(), log_.last_index()), m.log_term());
    resp.set_index(m.index());
    resp.set_reject(true);
    resp.set_reject_hint(hint);
    resp.set_log_term(log_.Term(hint).value_or(0));
  }
  Send(std::move(resp));
}

void Raft::HandleHeartbeat(const pb::Message& m) {
  log_.CommitTo(std::min(m.commit(), log_.last_index()));
  pb::Message resp = MakeMessage(pb::MSG_HEARTBEAT_RESP, m.from());
  resp.set_context(m.context());
  Send(std::move(resp));
}

// ---------------------------------------------------------------------------------------------
// Snapshots.

bool Raft::SendSnapshot(uint64_t to) {
  Progress* pr = GetProgress(to);
  if (pr == nullptr) return false;
  // Only a snapshot at or past the log's start helps a follower that needs compacted entries.
  if (!snapshot_ || snapshot_->meta().index() < log_.snap_index() ||
      (snapshot_needs_stream_ && !snapshot_stream_)) {
    HLOG_DEBUG("raft_no_snapshot", "group={} id={} to={} first_index={}", config_.group, config_.id,
               to, log_.first_index());
    return false;
  }
  pr->BecomeSnapshot(snapshot_->meta().index());
  SendSnapshotChunk(to, *pr);
  return true;
}

void Raft::SendSnapshotChunk(uint64_t to, Progress& pr) {
  if (!snapshot_ || (snapshot_needs_stream_ && !snapshot_stream_)) return;
  if (pr.pending_snapshot != snapshot_->meta().index())
    pr.BecomeSnapshot(snapshot_->meta().index());
  pb::Message m = MakeMessage(pb::MSG_SNAP, to);
  *m.mutable_snapshot_meta() = snapshot_->meta();
  if (!FillSnapshotChunk(pr.snap_acked, m)) {
    // The stream cannot be read: this transfer ends; the follower gets one again when it next
    // needs it (after a retry, or with the next snapshot).
    pr.BecomeProbe();
    return;
  }
  pr.snap_ticks = 0;
  Send(std::move(m));
}

// A streamed snapshot's data goes first (its own chunks), then the stream, whose last piece says
// when it is done: the core never needs the stream's length.
bool Raft::FillSnapshotChunk(uint64_t offset, pb::Message& m) {
  const std::string& data = snapshot_->data();
  if (!snapshot_stream_) offset = std::min<uint64_t>(offset, data.size());
  m.set_snapshot_offset(offset);
  if (offset < data.size() || !snapshot_stream_) {
    uint64_t len = std::min<uint64_t>(config_.snapshot_chunk_bytes, data.size() - offset);
    m.set_snapshot_chunk(data.substr(offset, len));
    m.set_snapshot_done(!snapshot_stream_ && offset + len == data.size());
  } else {
    auto piece = snapshot_stream_->ReadAt(offset - data.size(), config_.snapshot_chunk_bytes);
    if (!piece.ok() || (piece->data.empty() && !piece->last)) {
      HLOG_WARN("raft_snapshot_stream_failed", "group={} id={} index={} offset={} error=\"{}\"",
                config_.group, config_.id, snapshot_->meta().index(), offset,
                piece.ok() ? "empty piece" : piece.status().ToString());
      return false;
    }
    m.set_snapshot_chunk(std::move(piece->data));
    m.set_snapshot_done(piece->last);
  }
  if (snapshot_stream_) {
    m.set_snapshot_streamed(true);
    m.set_snapshot_inline_bytes(data.size());
  }
  return true;
}

void Raft::HandleSnapResponse(const pb::Message& m) {
  Progress* pr = GetProgress(m.from());
  if (pr == nullptr || pr->state != ProgressState::kSnapshot || !snapshot_) return;
  pr->recent_active = true;
  if (m.snapshot_done() && !m.reject()) {
    pr->MaybeUpdate(m.index());
    pr->BecomeProbe();
    SendAppend(m.from(), true);
    return;
  }
  if (m.snapshot_meta().index() != pr->pending_snapshot) return;  // about an older transfer
  if (m.reject()) {
    // The follower lost its partial copy (a restart) or refused the transfer (its sink): start
    // over at the next tick, not at once, so a follower that keeps refusing costs one try a tick.
    pr->snap_acked = 0;
    pr->snap_ticks = std::max(pr->snap_ticks, config_.election_tick - 1);
    return;
  }
  // Continue from what the follower holds; that may be less than it said before if a
  // duplicated first chunk restarted its copy. A stream's end is known only when read.
  bool within = snapshot_stream_ || m.index() < snapshot_->data().size();
  if (m.index() != pr->snap_acked && within) {
    pr->snap_acked = m.index();
    SendSnapshotChunk(m.from(), *pr);
  }
}

void Raft::HandleSnap(const pb::Message& m) {
  const pb::SnapshotMeta& meta = m.snapshot_meta();
  pb::Message resp = MakeMessage(pb::MSG_SNAP_RESP, m.from());
  *resp.mutable_snapshot_meta() = meta;
  if (!AcceptSnapChunk(m)) {
    AbortReceive();
    resp.set_reject(true);
    Send(std::move(resp));
    return;
  }
  const uint64_t have = recv_data_.size() + recv_stream_bytes_;
  if (m.snapshot_offset() + m.snapshot_chunk().size() != have || !m.snapshot_done()) {
    resp.set_index(have);  // a duplicate or a gap: tell the leader where we are
    Send(std::move(resp));
    return;
  }
  if (recv_streamed_) {
    if (Status s = config_.snapshot_sink->Finish(meta); !s.ok()) {
      HLOG_WARN("raft_snapshot_sink_failed", "group={} id={} index={} op=finish error=\"{}\"",
                config_.group, config_.id, meta.index(), s.ToString());
      AbortReceive();
      resp.set_reject(true);
      Send(std::move(resp));
      return;
    }
  }
  std::string data = std::move(recv_data_);
  const bool streamed = recv_streamed_;
  recv_data_.clear();
  recv_meta_.reset();
  recv_streamed_ = false;
  resp.set_snapshot_done(true);
  resp.set_index(InstallSnapshot(meta, std::move(data), streamed));
  Send(std::move(resp));
}

// False: the chunk ends the transfer (another one, too big, a sink that refused it).
bool Raft::AcceptSnapChunk(const pb::Message& m) {
  const pb::SnapshotMeta& meta = m.snapshot_meta();
  if (m.snapshot_offset() == 0) {
    AbortReceive();
    recv_meta_ = meta;
    recv_from_ = m.from();
    recv_streamed_ = m.snapshot_streamed();
    recv_inline_bytes_ = m.snapshot_inline_bytes();
    if (recv_streamed_) {
      Status s = config_.snapshot_sink == nullptr
                     ? Status::Unavailable("no snapshot sink: streamed snapshots refused")
                 : recv_inline_bytes_ > kMaxSnapshotBytes
                     ? Status::TooLarge("snapshot data over 1 GiB")
                     : config_.snapshot_sink->Begin(meta);
      if (!s.ok()) {
        HLOG_WARN("raft_snapshot_sink_failed", "group={} id={} index={} op=begin error=\"{}\"",
                  config_.group, config_.id, meta.index(), s.ToString());
        recv_streamed_ = false;  // nothing begun: nothing to abort
        return false;
      }
    }
  }
  bool same = recv_meta_ && recv_from_ == m.from() && recv_meta_->index() == meta.index() &&
              recv_meta_->term() == meta.term() && recv_streamed_ == m.snapshot_streamed() &&
              recv_inline_bytes_ == m.snapshot_inline_bytes();
  if (!same) return false;
  const uint64_t offset = m.snapshot_offset();
  const std::string& chunk = m.snapshot_chunk();
  if (offset != recv_data_.size() + recv_stream_bytes_) return true;  // answered with `have`
  if (!recv_streamed_) {
    if (recv_data_.size() + chunk.size() > kMaxSnapshotBytes) return false;
    recv_data_ += chunk;
    return true;
  }
  if (offset < recv_inline_bytes_) {
    if (offset + chunk.size() > recv_inline_bytes_) return false;  // chunks do not straddle
    recv_data_ += chunk;
    return true;
  }
  if (Status s = config_.snapshot_sink->Write(meta, offset - recv_inline_bytes_, chunk); !s.ok()) {
    HLOG_WARN("raft_snapshot_sink_failed", "group={} id={} index={} op=write error=\"{}\"",
              config_.group, config_.id, meta.index(), s.ToString());
    return false;
  }
  recv_stream_bytes_ += chunk.size();
  return true;
}

void Raft::AbortReceive() {
  if (recv_meta_ && recv_streamed_ && config_.snapshot_sink) config_.snapshot_sink->Abort();
  recv_meta_.reset();
  recv_data_.clear();
  recv_streamed_ = false;
  recv_inline_bytes_ = 0;
  recv_stream_bytes_ = 0;
}

uint64_t Raft::InstallSnapshot(const pb::SnapshotMeta& meta, std::string data, bool streamed) {
  if (meta.index() <= log_.committed()) return log_.committed();
  if (log_.MatchTerm(meta.index(), meta.term())) {
    // The log already has it: fast-forward the commit and keep the entries after it.
    log_.CommitTo(meta.index());
    return meta.index();
  }
  log_.Restore(meta.index(), meta.term());
  SetConf(meta.conf());
  conf_index_ = meta.index();
  pb::Snapshot snap;
  *snap.mutable_meta() = meta;
  snap.set_data(std::move(data));
  snapshot_ = snap;  // the newest snapshot this node has: the one to send if it leads
  snapshot_stream_.reset();
  snapshot_needs_stream_ = streamed;  // its stream went to the sink: the shell gives it back
  pending_snapshot_ = std::move(snap);
  HLOG_INFO("raft_snapshot_installed", "group={} id={} index={} term={} streamed={}", config_.group,
            config_.id, meta.index(), meta.term(), streamed);
  return meta.index();
}

Status Raft::Compact(pb::Snapshot snapshot, std::shared_ptr<SnapshotSource> stream) {
  uint64_t index = snapshot.meta().index();
  if (index > log_.applied()) {
    return Status::InvalidArgument("compact: snapshot index beyond applied");
  }
  // The log may already start later (a snapshot from the leader, not yet handed out): nothing
  // to drop then, and an older snapshot is of no use to send.
  if (index < log_.snap_index()) return Status::Ok();
  if (snapshot.data().size() > kMaxSnapshotBytes) {
    return Status::TooLarge("compact: snapshot over 1 GiB");
  }
  std::optional<uint64_t> term = log_.Term(index);
  if (!term) return Status::InvalidArgument("compact: snapshot index not in the log");
  if (snapshot.meta().term() != 0 && snapshot.meta().term() != *term) {
    return Status::InvalidArgument("compact: snapshot term does not match the log");
  }
  snapshot.mutable_meta()->set_term(*term);
  bool no_conf =
      snapshot.meta().conf().voters_size() == 0 && snapshot.meta().conf().learners_size() == 0;
  if (no_conf && index == log_.applied()) *snapshot.mutable_meta()->mutable_conf() = Conf();
  log_.CompactTo(index);
  snapshot_ = std::move(snapshot);
  snapshot_stream_ = std::move(stream);
  snapshot_needs_stream_ = false;
  return Status::Ok();
}

void Raft::SetSnapshotStream(uint64_t index, std::shared_ptr<SnapshotSource> stream) {
  if (!snapshot_ || snapshot_->meta().index() != index || stream == nullptr) return;
  snapshot_stream_ = std::move(stream);
  snapshot_needs_stream_ = false;
}

// ---------------------------------------------------------------------------------------------
// Proposals, reads, transfer.

Result<ProposalId> Raft::Propose(std::string data) {
  if (role_ != Role::kLeader) {
    return Status::Unavailable("not leader; leader=" + std::to_string(lead_));
  }
  if (transferee_ != 0) return Status::Unavailable("busy: leadership transfer in progress");
  if (leaving_) return Status::Unavailable("busy: leader is leaving the configuration");
  if (data.size() > config_.max_uncommitted_bytes) {
    return Status::TooLarge("proposal larger than max_uncommitted_bytes");
  }
  if (uncommitted_bytes_ + data.size() > config_.max_uncommitted_bytes) {
    return Status::Unavailable("busy: too many uncommitted bytes");
  }
  AppendEntry(pb::ENTRY_NORMAL, std::move(data));
  return ProposalId{log_.last_index(), term_};
}

Result<ProposalId> Raft::ProposeConfChange(const pb::ConfChange& cc) {
  if (role_ != Role::kLeader) {
    return Status::Unavailable("not leader; leader=" + std::to_string(lead_));
  }
  if (transferee_ != 0) return Status::Unavailable("busy: leadership transfer in progress");
  if (leaving_) return Status::Unavailable("busy: leader is leaving the configuration");
  if (cc.node_id() == 0) return Status::InvalidArgument("conf change: node_id 0");
  if (pending_conf_index_ > log_.applied()) {
    return Status::Conflict("conf change: another change is not applied yet");
  }
  bool removes_voter = cc.type() != pb::CONF_ADD_VOTER && IsVoter(cc.node_id());
  if (removes_voter && voters_.size() == 1) {
    return Status::InvalidArgument("conf change: would leave no voters");
  }
  std::string data = cc.SerializeAsString();
  if (uncommitted_bytes_ + data.size() > config_.max_uncommitted_bytes) {
    return Status::Unavailable("busy: too many uncommitted bytes");
  }
  AppendEntry(pb::ENTRY_CONF_CHANGE, std::move(data));
  pending_conf_index_ = log_.last_index();
  // Nothing may follow the leader's own removal: its log must end where the remaining voters'
  // can, or none of them could win its vote once it steps down.
  if (cc.node_id() == config_.id && cc.type() != pb::CONF_ADD_VOTER) leaving_ = true;
  return ProposalId{log_.last_index(), term_};
}

bool Raft::CommittedInCurrentTerm() const { return log_.Term(log_.committed()) == term_; }

void Raft::ReadIndex(std::string context) {
  if (context.size() > kMaxReadContextBytes) return;
  if (role_ == Role::kLeader) {
    HandleReadRequest(config_.id, std::move(context));
  } else if (lead_ != 0) {
    pb::Message m = MakeMessage(pb::MSG_READ_INDEX, lead_);
    m.set_context(std::move(context));
    Send(std::move(m));
  }
}

void Raft::HandleReadRequest(uint64_t from, std::string context) {
  // Until it commits in its term the leader may not know the latest commit index (6.4 step 1).
  if (!CommittedInCurrentTerm()) return;
  PendingRead r{log_.committed(), std::move(context), from, {config_.id}};
  if (QuorumSize() <= 1 && IsVoter(config_.id)) {
    ReleaseRead(r);
    return;
  }
  if (pending_reads_.size() >= kMaxPendingReads) return;
  for (const PendingRead& p : pending_reads_) {
    if (p.context == r.context) return;  // contexts identify requests
  }
  pending_reads_.push_back(std::move(r));
  const std::string& ctx = pending_reads_.back().context;
  for (auto& [id, pr] : progress_) {
    if (id != config_.id) SendHeartbeat(id, ctx);
  }
}

void Raft::ReleaseRead(const PendingRead& r) {
  if (r.from == config_.id) {
    read_states_.push_back(ReadState{r.index, r.context});
    return;
  }
  pb::Message m = MakeMessage(pb::MSG_READ_INDEX_RESP, r.from);
  m.set_index(r.index);
  m.set_context(r.context);
  Send(std::move(m));
}

void Raft::AckRead(uint64_t from, const std::string& context) {
  if (!IsVoter(from)) return;
  auto it = std::find_if(pending_reads_.begin(), pending_reads_.end(),
                         [&](const PendingRead& p) { return p.context == context; });
  if (it == pending_reads_.end()) return;
  it->acks.insert(from);
  size_t votes = 0;
  for (uint64_t id : it->acks) votes += IsVoter(id) ? 1 : 0;
  if (votes < QuorumSize()) return;
  // The quorum confirmed leadership after every earlier request was recorded: release them too.
  auto end = std::next(it);
  for (auto p = pending_reads_.begin(); p != end; ++p) ReleaseRead(*p);
  pending_reads_.erase(pending_reads_.begin(), end);
}

void Raft::TransferLeadership(uint64_t to) {
  if (to == 0) return;
  if (role_ != Role::kLeader) {
    if (lead_ == 0) return;
    pb::Message m = MakeMessage(pb::MSG_TRANSFER_LEADER, lead_);
    m.set_index(to);
    Send(std::move(m));
    return;
  }
  DoTransfer(to);
}

void Raft::DoTransfer(uint64_t to) {
  if (to == config_.id || !IsVoter(to) || transferee_ == to) return;
  Progress* pr = GetProgress(to);
  if (pr == nullptr) return;
  transferee_ = to;
  election_elapsed_ = 0;  // the transfer must finish within one election timeout
  if (pr->match == log_.last_index()) {
    SendTimeoutNow(to);
  } else {
    SendAppend(to, true);
  }
}

void Raft::SendTimeoutNow(uint64_t to) { Send(MakeMessage(pb::MSG_TIMEOUT_NOW, to)); }

// ---------------------------------------------------------------------------------------------
// Membership.

void Raft::SetConf(const pb::ConfState& conf) {
  voters_ = std::set<uint64_t>(conf.voters().begin(), conf.voters().end());
  learners_.clear();
  for (uint64_t id : conf.learners()) {
    if (!voters_.count(id)) learners_.insert(id);
  }
  voters_.erase(0);
  learners_.erase(0);
}

pb::ConfState Raft::Conf() const {
  pb::ConfState c;
  for (uint64_t id : voters_) c.add_voters(id);
  for (uint64_t id : learners_) c.add_learners(id);
  return c;
}

void Raft::ApplyConfChange(const pb::ConfChange& cc) {
  uint64_t id = cc.node_id();
  if (id == 0) return;
  voters_.erase(id);
  learners_.erase(id);
  if (cc.type() == pb::CONF_ADD_VOTER) voters_.insert(id);
  if (cc.type() == pb::CONF_ADD_LEARNER) learners_.insert(id);
  if (role_ != Role::kLeader) return;
  if (!IsVoter(config_.id)) {
    BcastAppend(true);  // tell the remaining voters the commit before going
    HLOG_INFO("raft_step_down", "group={} id={} term={} reason=removed", config_.group, config_.id,
              term_);
    BecomeFollower(term_, 0);
    return;
  }
  if (!IsMember(id)) progress_.erase(id);
  if (Progress* pr = GetProgress(id)) pr->learner = learners_.count(id) > 0;
  if (transferee_ != 0 && !IsVoter(transferee_)) transferee_ = 0;
  if (MaybeCommit()) {
    BcastAppend(true);
  } else {
    SendAppend(id, true);
  }
}

// ---------------------------------------------------------------------------------------------
// Ready / Advance / status.

void Raft::Send(pb::Message m) {
  m.set_group(config_.group);
  m.set_from(config_.id);
  if (m.term() == 0 && m.type() != pb::MSG_PRE_VOTE && m.type() != pb::MSG_PRE_VOTE_RESP) {
    m.set_term(term_);
  }
  if (role_ == Role::kLeader && IsLeaderMessage(m.type())) {
    msgs_before_persist_.push_back(std::move(m));
  } else {
    msgs_.push_back(std::move(m));
  }
}

pb::HardState Raft::CurrentHardState() const {
  pb::HardState hs;
  hs.set_term(term_);
  hs.set_vote(vote_);
  hs.set_commit(log_.committed());
  return hs;
}

bool Raft::HasReady() const {
  pb::HardState hs = CurrentHardState();
  if (hs.term() != prev_hard_state_.term() || hs.vote() != prev_hard_state_.vote() ||
      hs.commit() != prev_hard_state_.commit()) {
    return true;
  }
  if (lead_ != prev_soft_state_.leader || role_ != prev_soft_state_.role) return true;
  return pending_snapshot_.has_value() || log_.HasUnsent() || !msgs_before_persist_.empty() ||
         !msgs_.empty() || !read_states_.empty() || log_.committed() > log_.applying();
}

Ready Raft::GetReady() {
  Ready rd;
  if (lead_ != prev_soft_state_.leader || role_ != prev_soft_state_.role) {
    prev_soft_state_ = SoftState{lead_, role_};
    rd.soft_state = prev_soft_state_;
  }
  pb::HardState hs = CurrentHardState();
  if (hs.term() != prev_hard_state_.term() || hs.vote() != prev_hard_state_.vote()) {
    rd.must_sync = true;
  }
  if (rd.must_sync || hs.commit() != prev_hard_state_.commit()) {
    rd.hard_state = hs;
    prev_hard_state_ = hs;
  }
  if (pending_snapshot_) {
    rd.snapshot = std::move(pending_snapshot_);
    pending_snapshot_.reset();
    rd.must_sync = true;
  }
  rd.entries = log_.TakeUnsent();
  if (!rd.entries.empty()) rd.must_sync = true;
  rd.messages_before_persist = std::move(msgs_before_persist_);
  msgs_before_persist_.clear();
  rd.messages = std::move(msgs_);
  msgs_.clear();
  uint64_t bytes = 0;
  for (uint64_t i = log_.applying() + 1; i <= log_.committed(); ++i) {
    const pb::Entry* e = log_.At(i);
    if (e == nullptr) break;
    bytes += EntryBytes(*e);
    if (!rd.committed.empty() && bytes > kMaxCommittedBytesPerReady) break;
    rd.committed.push_back(*e);
  }
  if (!rd.committed.empty()) log_.ApplyingTo(rd.committed.back().index());
  rd.read_states = std::move(read_states_);
  read_states_.clear();
  return rd;
}

void Raft::Advance(const Ready& rd) {
  if (rd.snapshot) log_.AppliedTo(rd.snapshot->meta().index());
  if (!rd.entries.empty()) {
    log_.StableTo(rd.entries.back().index(), rd.entries.back().term());
    UpdateSelfMatch();
  }
  for (const pb::Entry& e : rd.committed) {
    // Entries covered by a snapshot installed meanwhile are already in its conf.
    if (e.index() <= log_.applied() || e.index() <= log_.snap_index()) continue;
    log_.AppliedTo(e.index());
    pb::ConfChange cc;
    if (e.type() != pb::ENTRY_CONF_CHANGE || e.index() <= conf_index_) continue;
    conf_index_ = e.index();
    if (cc.ParseFromString(e.data())) ApplyConfChange(cc);
  }
  assert(log_.applied() <= log_.committed());
  assert(log_.committed() <= log_.last_index());
}

NodeStatus Raft::status() const {
  NodeStatus s;
  s.id = config_.id;
  s.term = term_;
  s.leader = lead_;
  s.role = role_;
  s.commit = log_.committed();
  s.applied = log_.applied();
  s.first_index = log_.first_index();
  s.last_index = log_.last_index();
  s.conf = Conf();
  s.transferee = transferee_;
  if (role_ != Role::kLeader) return s;
  for (const auto& [id, pr] : progress_) {
    PeerProgress p;
    p.id = id;
    p.learner = pr.learner;
    p.match = pr.match;
    p.next = pr.next;
    p.active = pr.recent_active || id == config_.id;
    p.state = ProgressStateName(pr.state);
    s.progress.push_back(std::move(p));
  }
  return s;
}

}  // namespace haven::raft
