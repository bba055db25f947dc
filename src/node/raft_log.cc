#include "node/raft_log.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <optional>
#include <random>
#include <vector>

#include "base/log.h"
#include "net/framed_transport.h"
#include "net/probe.h"
#include "node/member_liveness.h"
#include "node/node.pb.h"
#include "node/raft_storage.h"

namespace haven::node {

namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMaxClientIdBytes = 128;  // every entry and the dedupe table carry it

int64_t MonoMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
      .count();
}

// Only a refused connect proves the process gone; a timeout or any other error proves nothing.
bool Refused(const net::ProbeResult& r) {
  return r.status != "passing" && r.output.find("refused") != std::string::npos;
}

// The membership as of each conf change, so a snapshot at any applied index gets the right one.
class ConfHistory {
 public:
  void Reset(uint64_t index, raft::pb::ConfState conf) {
    changes_.clear();
    changes_.emplace_back(index, std::move(conf));
  }
  void Apply(uint64_t index, const raft::pb::ConfChange& cc) {
    raft::pb::ConfState next = changes_.back().second;
    auto erase = [](auto* list, uint64_t id) {
      list->erase(std::remove(list->begin(), list->end(), id), list->end());
    };
    erase(next.mutable_voters(), cc.node_id());
    erase(next.mutable_learners(), cc.node_id());
    if (cc.type() == raft::pb::CONF_ADD_VOTER) next.add_voters(cc.node_id());
    if (cc.type() == raft::pb::CONF_ADD_LEARNER) next.add_learners(cc.node_id());
    changes_.emplace_back(index, std::move(next));
  }
  // The conf in force at `index`; changes before it are forgotten (they cannot be asked again).
  raft::pb::ConfState At(uint64_t index) {
    auto it = std::upper_bound(changes_.begin(), changes_.end(), index,
                               [](uint64_t i, const auto& c) { return i < c.first; });
    if (it != changes_.begin()) --it;
    raft::pb::ConfState conf = it->second;
    changes_.erase(changes_.begin(), it);
    return conf;
  }

 private:
  std::vector<std::pair<uint64_t, raft::pb::ConfState>> changes_;  // by index
};

}  // namespace

struct RaftLog::Impl : std::enable_shared_from_this<RaftLog::Impl> {
  Impl(storage::LogStore& s, net::IoRuntime& e, RaftLogCallbacks c, RaftLogOptions o)
      : store(s), executor(e), cb(std::move(c)), opts(std::move(o)) {}

  storage::LogStore& store;
  net::IoRuntime& executor;
  RaftLogCallbacks cb;
  RaftLogOptions opts;

  // --- the raft thread's state (touched only on `loop`) ---
  net::IoRuntime loop{1};
  std::unique_ptr<net::FramedTransport> transport;
  std::unique_ptr<raft::RawNode> node;
  std::map<uint64_t, std::string> peers;
  ConfHistory confs;
  std::vector<pb::Proposal> waiting_for_leader;  // others' proposals while no leader was known
  // This node's own proposals not committed yet, by seq: sent again to each new leader (they keep
  // their identity, so a copy the old leader also commits is applied once), answered early when
  // the leader they went to falls silent.
  struct InFlight {
    pb::Proposal p;
    uint64_t sent_leader = 0;  // the leader it was last sent to (0: none known then)
    uint64_t sent_term = 0;
    bool ever_sent = false;
    Clock::time_point deadline;
  };
  std::map<uint64_t, InFlight> own_in_flight;
  std::pair<uint64_t, uint64_t> routed_for{0, 0};  // (leader, term) of the last re-forward pass
  bool own_unsent = false;  // some own proposal waits for a leader (made while none was known)
  Clock::time_point leader_heard_at = Clock::now();  // a frame from the leader, or leading
  std::shared_ptr<net::Timer> tick_timer;
  bool ready_scheduled = false;
  bool failed = false;  // a disk write failed: nothing more is persisted or acknowledged
  bool is_leader = false;
  uint64_t last_leader = 0;
  std::string self_address;  // as bound

  // Admin requests awaiting their outcome (on `loop`).
  struct PendingConf {
    raft::ProposalId id;
    std::function<void(Status)> done;
    Clock::time_point deadline;
  };
  struct PendingTransfer {
    uint64_t to = 0;
    std::function<void(Status)> done;
    Clock::time_point deadline;
    int64_t timeout_ms = 0;
  };
  std::vector<PendingConf> pending_confs;
  // Changes refused with Conflict, tried again on the next ticks: a new leader refuses changes
  // until its first entry applies, and the previous change may be committed but not applied yet.
  struct RetryConf {
    raft::pb::ConfChange cc;
    std::function<void(Status)> done;
    Clock::time_point give_up;
  };
  std::vector<RetryConf> conf_retries;
  static constexpr int64_t kConflictRetryMs = 2'000;
  std::vector<PendingTransfer> pending_transfers;
  static constexpr size_t kMaxPendingAdmin = 64;
  static constexpr int64_t kMaxTransferWaitMs = 60'000;

  // Read barriers (on `loop`): the batch not asked yet, the batch whose ReadIndex is in flight,
  // and confirmed batches waiting for their index to be handed to the executor.
  struct ReadWaiter {
    std::function<void(Status)> done;
    Clock::time_point deadline;
  };
  struct ReadBatch {
    uint64_t context = 0;
    int ticks = 0;  // ticks since asked: asked again after kReadRetryTicks (a drop is silent)
    std::vector<ReadWaiter> waiters;
  };
  std::vector<ReadWaiter> reads_unasked;
  std::optional<ReadBatch> read_in_flight;
  std::vector<std::pair<uint64_t, std::vector<ReadWaiter>>> reads_confirmed;  // by index
  uint64_t next_read_context = 1;
  uint64_t handed_out = 0;  // the last index whose entry (or snapshot) went to the executor
  static constexpr int kReadRetryTicks = 2;

  // Requests to the leader awaiting its reply (on `loop`), by id.
  struct PendingAsk {
    RaftLogCallbacks::Reply done;
    Clock::time_point deadline;
  };
  std::map<uint64_t, PendingAsk> asks;
  uint64_t next_ask_id = 1;
  static constexpr size_t kMaxAskBytes = size_t{64} * 1024;
  Clock::time_point last_leader_contact{};  // when a frame from the leader last arrived
  bool leader_probe_in_flight = false;      // one TCP probe of a silent leader at a time
  Clock::time_point tick_due{};             // when the pending tick should run
  static constexpr int64_t kLeaderProbeTimeoutMs = 500;
  // The leader's probes of silent members (and what the follower's leader probe found).
  PeerProbeSchedule member_probes{{2 * opts.tick_ms * opts.heartbeat_ticks, 1'000}};

  // --- the executor's state ---
  struct Pending {
    DoneFn done;
    Clock::time_point deadline;
  };
  std::map<uint64_t, Pending> pending;  // by seq (so by deadline too)
  uint64_t applied_index = 0;           // the last entry handed to on_commit (or snapshot)

  std::atomic<uint64_t> next_seq{1};
  // Tells this start's proposals from an earlier one's (whose seqs start at 1 again).
  const uint64_t boot = [] {
    std::random_device rd;
    uint64_t b = (uint64_t{rd()} << 32) ^ rd();
    return b == 0 ? 1 : b;
  }();
  std::atomic<bool> stopped{false};
  mutable std::mutex status_mu;
  RaftLogStatus status_cache;
  std::optional<Clock::time_point> status_contact;  // max(): this node leads

  // ---------------------------------------------------------------------------------------------

  void Send(const raft::pb::Message& m) {
    auto it = peers.find(m.to());
    if (it == peers.end()) return;  // an unknown member: raft retries once it is known
    pb::PeerFrame f;
    f.set_raft_message(m.SerializeAsString());
    SendFrame(it->second, f);
  }

  void SendFrame(const std::string& address, pb::PeerFrame& f) {
    f.set_from_id(opts.node_id);
    f.set_from_address(self_address);
    transport->Send(address, f.SerializeAsString());
  }

  void ScheduleReady() {
    if (ready_scheduled) return;
    ready_scheduled = true;
    loop.Post([this] { ProcessReady(); });
  }

  void OnFrame(const std::string& bytes) {
    pb::PeerFrame f;
    if (!f.ParseFromString(bytes)) return;
    if (f.from_id() != 0 && f.from_id() != opts.node_id && !f.from_address().empty() &&
        f.from_address().size() <= 256) {
      peers[f.from_id()] = f.from_address();
    }
    if (f.from_id() != 0 && f.from_id() != opts.node_id) member_probes.Heard(f.from_id(), MonoMs());
    if (f.from_id() != 0 && f.from_id() == node->status().leader) {
      last_leader_contact = Clock::now();
      leader_heard_at = last_leader_contact;
    }
    if (f.has_forward()) {
      ProposeHere(f.forward());
    } else if (f.has_leader_request()) {
      OnLeaderRequest(f.from_address(), f.leader_request());
    } else if (f.has_leader_reply()) {
      OnLeaderReply(f.leader_reply());
    } else if (f.kind_case() == pb::PeerFrame::kRaftMessage) {
      raft::pb::Message m;
      if (!m.ParseFromString(f.raft_message())) return;
      node->Step(m);
    }
    ScheduleReady();
  }

  // Appends on the leader, forwards to a known leader, or waits for one (until the next ticks).
  void ProposeHere(const pb::Proposal& p) {
    if (failed) return;  // the proposer times out
    auto r = node->Propose(p.SerializeAsString());
    if (r.ok()) {
      ScheduleReady();
      return;
    }
    uint64_t leader = node->status().leader;
    if (leader != 0 && leader != opts.node_id && peers.count(leader)) {
      pb::PeerFrame f;
      *f.mutable_forward() = p;
      SendFrame(peers[leader], f);
      return;
    }
    if (waiting_for_leader.size() < opts.max_pending_proposals) waiting_for_leader.push_back(p);
  }

  // ---- this node's own proposals (on `loop`)

  void TrackOwn(pb::Proposal p, Clock::time_point deadline) {
    if (failed) return;  // the proposer times out
    InFlight& f = own_in_flight[p.seq()];
    f.p = std::move(p);
    f.deadline = deadline;
    SendOwn(f);
  }

  void SendOwn(InFlight& f) {
    const raft::NodeStatus st = node->status();
    f.sent_leader = st.leader;
    f.sent_term = st.term;
    if (st.leader == 0) {
      own_unsent = true;  // sent by RouteOwn once a leader is known
      return;
    }
    f.ever_sent = true;
    ProposeHere(f.p);
  }

  // A new leader (or term): every own proposal not committed yet goes to it, as section 6.3 of the
  // Raft dissertation allows once duplicates are filtered at apply time.
  void RouteOwn() {
    const raft::NodeStatus st = node->status();
    if (st.leader == 0 || (routed_for == std::pair(st.leader, st.term) && !own_unsent)) return;
    routed_for = {st.leader, st.term};
    own_unsent = false;
    size_t resent = 0;
    for (auto& [seq, f] : own_in_flight) {
      if (f.sent_leader == st.leader && f.sent_term == st.term) continue;
      SendOwn(f);
      ++resent;
    }
    if (resent > 0) {
      HLOG_INFO("raft_reforward", "node={} leader={} term={} proposals={}", opts.node_id, st.leader,
                st.term, resent);
    }
  }

  // Own proposals committed (told by the executor) or past their deadline are no longer sent.
  void ForgetOwn(const std::vector<uint64_t>& seqs) {
    for (uint64_t seq : seqs) own_in_flight.erase(seq);
  }

  // Proposals that went to a leader nobody has heard from for leaderless_answer_ms get their
  // answer now: outcome unknown, safe to retry with the same request id.
  void AnswerSilentOwn() {
    auto now = Clock::now();
    if (is_leader) leader_heard_at = now;
    // By seq is nearly by deadline (both follow the order of Propose calls): the executor answers
    // an expired proposal anyway; this only stops sending it.
    while (!own_in_flight.empty() && now >= own_in_flight.begin()->second.deadline) {
      own_in_flight.erase(own_in_flight.begin());
    }
    auto silent_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(now - leader_heard_at).count();
    if (silent_ms < opts.leaderless_answer_ms) return;
    std::vector<uint64_t> seqs;
    for (auto it = own_in_flight.begin(); it != own_in_flight.end();) {
      if (!it->second.ever_sent) {
        ++it;
        continue;
      }
      seqs.push_back(it->first);
      it = own_in_flight.erase(it);
    }
    if (seqs.empty()) return;
    HLOG_WARN("raft_leader_silent", "node={} silent_ms={} answered={}", opts.node_id, silent_ms,
              seqs.size());
    Status why = Status::Unavailable(
        "no leader heard from for " + std::to_string(silent_ms) +
        " ms: this write may or may not be applied; retrying it with the same request id "
        "(X-Haven-Request-Id) applies it at most once");
    executor.Post(
        [self = shared_from_this(), seqs = std::move(seqs), why] { self->FailOwn(seqs, why); });
  }

  void OnTick() {
    const int64_t late_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - tick_due).count();
    WarnIfTickLate(late_ms);
    DiscountOwnStall(late_ms);
    node->Tick();
    MaybeProbeLeader();
    MaybeProbeMembers();
    if (!waiting_for_leader.empty() && node->status().leader != 0) {
      std::vector<pb::Proposal> retry;
      retry.swap(waiting_for_leader);
      for (const auto& p : retry) ProposeHere(p);
    }
    RouteOwn();
    AnswerSilentOwn();
    CheckAdminRequests();
    RetryReads();
    ExpireAsks();
    ScheduleReady();
    executor.Post([self = shared_from_this()] { self->ExpireProposals(); });
    ScheduleTick();
  }

  void ScheduleTick() {
    tick_due = Clock::now() + std::chrono::milliseconds(opts.tick_ms);
    tick_timer = loop.RunAfter(opts.tick_ms, [this] { OnTick(); });
  }

  // A raft thread held up for a good part of an election timeout (a slow fsync, CPU starvation)
  // is what makes followers elect without a fault: said in the log, so an election can be
  // explained.
  void WarnIfTickLate(int64_t late_ms) {
    if (late_ms >= opts.tick_ms * opts.election_ticks / 4) {
      HLOG_WARN("raft_tick_late", "node={} late_ms={} election_timeout_ms={}", opts.node_id,
                late_ms, opts.tick_ms * opts.election_ticks);
    }
  }

  // While this thread did not run (the process paused by SIGSTOP, a starved thread) it could not
  // hear the leader: that time is not the leader's silence. Without this, a node resumed after a
  // pause longer than leaderless_answer_ms answered the proposals it made right after resuming
  // ("no leader heard from", so its AMQP connections closed with 541) before reading the
  // leader's frames already waiting in its socket.
  void DiscountOwnStall(int64_t late_ms) {
    if (late_ms <= opts.tick_ms) return;
    const auto now = Clock::now();
    const auto stall = std::chrono::milliseconds(late_ms);
    leader_heard_at = std::min(now, leader_heard_at + stall);
    last_leader_contact = std::min(now, last_leader_contact + stall);
  }

  // A follower whose leader fell silent asks the kernel whether the leader's process is still
  // there: SIGKILL or a crash closes its listening socket, so a connect to its raft port is
  // refused at once, while a leader that is only slow (a long fsync, a starved thread) still
  // accepts. Only a refusal counts, so a slow leader keeps its lease.
  void MaybeProbeLeader() {
    if (!opts.probe_leader || leader_probe_in_flight || failed) return;
    const raft::NodeStatus st = node->status();
    if (st.role != raft::Role::kFollower || st.leader == 0 || st.leader == opts.node_id) return;
    const auto silence = std::chrono::milliseconds(2 * opts.tick_ms * opts.heartbeat_ticks);
    if (Clock::now() - last_leader_contact < silence) return;
    auto it = peers.find(st.leader);
    if (it == peers.end()) return;
    leader_probe_in_flight = true;
    const uint64_t leader = st.leader;
    member_probes.Started(leader);
    // The callback runs on `loop` (the probe's strand is on its context) and dies with it.
    net::ProbeTcp(loop, it->second, kLeaderProbeTimeoutMs,
                  [this, leader](const net::ProbeResult& r) { OnLeaderProbed(leader, r); });
  }

  void OnLeaderProbed(uint64_t leader, const net::ProbeResult& r) {
    leader_probe_in_flight = false;
    // Remembered: should this node win the election, it checks the old leader again at once.
    member_probes.ProbeDone(leader, Refused(r), MonoMs());
    if (!Refused(r)) return;
    if (node->status().leader != leader) return;  // another leader was heard meanwhile
    HLOG_INFO("raft_leader_gone", "node={} leader={} probe=\"{}\"", opts.node_id, leader, r.output);
    node->LeaderUnreachable(leader);
    ScheduleReady();
  }

  // The leader asks the same of a member that fell silent: a refused connect means its process
  // is gone, and the queues drop its consumers at once instead of after their member timeout.
  void MaybeProbeMembers() {
    if (!opts.probe_members || !is_leader || failed) return;
    const raft::NodeStatus st = node->status();
    std::vector<uint64_t> others;
    for (uint64_t id : st.conf.voters()) others.push_back(id);
    for (uint64_t id : st.conf.learners()) others.push_back(id);
    std::erase(others, opts.node_id);
    for (uint64_t id : member_probes.DueProbes(MonoMs(), others)) {
      auto it = peers.find(id);
      if (it == peers.end()) {
        member_probes.ProbeDone(id, false, MonoMs());  // no address yet: nothing to prove
        continue;
      }
      const int64_t started = MonoMs();
      net::ProbeTcp(
          loop, it->second, kLeaderProbeTimeoutMs,
          [this, id, started](const net::ProbeResult& r) { OnMemberProbed(id, started, r); });
    }
  }

  void OnMemberProbed(uint64_t id, int64_t started, const net::ProbeResult& r) {
    if (!member_probes.ProbeDone(id, Refused(r), MonoMs()) || !is_leader) return;
    HLOG_INFO("raft_member_gone", "node={} member={} probe_ms={} probe=\"{}\"", opts.node_id, id,
              MonoMs() - started, r.output);
    UpdateStatus();  // before the callback, which reads it
    if (cb.on_member_gone) {
      executor.Post([self = shared_from_this(), id] { self->cb.on_member_gone(id); });
    }
  }

  // Step 1-4 of the Ready contract, for every Ready the node has.
  void ProcessReady() {
    ready_scheduled = false;
    std::vector<std::pair<std::function<void(Status)>, Status>> answers;
    while (!failed && node->HasReady()) {
      raft::Ready rd = node->GetReady();
      for (const auto& m : rd.messages_before_persist) Send(m);
      if (Status s = PersistReady(store, rd); !s.ok()) {
        failed = true;
        HLOG_ERROR("raft_persist_failed", "error=\"{}\"", s.ToString());
        break;
      }
      for (const auto& m : rd.messages) Send(m);
      if (rd.soft_state) {
        NoteRole(rd.soft_state->role == raft::Role::kLeader);
        NoteLeader(rd.soft_state->leader);
        RouteOwn();
      }
      if (rd.snapshot) InstallSnapshot(*rd.snapshot);
      TrackConfChanges(rd.committed);
      for (auto& a : ResolveConfChanges(rd.committed)) answers.push_back(std::move(a));
      // A copy: Advance needs the committed entries too (it marks them applied and applies conf
      // changes in the core; without them the leader refused every later conf change).
      if (!rd.committed.empty()) {
        handed_out = std::max(handed_out, rd.committed.back().index());
        executor.Post(
            [self = shared_from_this(), entries = rd.committed] { self->Apply(entries); });
      }
      for (const auto& rs : rd.read_states) OnReadState(rs);
      ReleaseReads();
      node->Advance(rd);
    }
    UpdateStatus();
    // After Advance (the core applied the change), after status() shows it, and after the Apply
    // posted above, so the answer follows every earlier entry's effects.
    for (auto& [done, st] : answers) Answer(std::move(done), std::move(st));
  }

  void Answer(std::function<void(Status)> done, Status s) {
    executor.Post([done = std::move(done), s = std::move(s)] { done(s); });
  }

  // "not leader; leader is 2 at 127.0.0.1:8301" (or "no leader is known"), for admin calls that
  // do not forward: the caller retries on the leader.
  Status NotLeader() {
    uint64_t leader = node->status().leader;
    if (leader == 0) return Status::Unavailable("not leader; no leader is known yet");
    auto it = peers.find(leader);
    return Status::Unavailable("not leader; leader is " + std::to_string(leader) + " at " +
                               (it == peers.end() ? std::string("?") : it->second));
  }

  // Conf changes proposed here whose index committed: with our term, applied; otherwise lost.
  std::vector<std::pair<std::function<void(Status)>, Status>> ResolveConfChanges(
      const std::vector<raft::pb::Entry>& committed) {
    std::vector<std::pair<std::function<void(Status)>, Status>> out;
    for (const auto& e : committed) {
      for (auto it = pending_confs.begin(); it != pending_confs.end();) {
        if (it->id.index != e.index()) {
          ++it;
          continue;
        }
        Status st = e.term() == it->id.term && e.type() == raft::pb::ENTRY_CONF_CHANGE
                        ? Status::Ok()
                        : Status::Unavailable("conf change lost: leadership changed; retry");
        out.emplace_back(std::move(it->done), std::move(st));
        it = pending_confs.erase(it);
      }
    }
    return out;
  }

  void ChangeMembershipHere(raft::pb::ConfChange cc, std::function<void(Status)> done,
                            std::optional<Clock::time_point> give_up = std::nullopt) {
    if (failed) return Answer(std::move(done), Status::IoError("raft storage failed"));
    if (pending_confs.size() + conf_retries.size() >= kMaxPendingAdmin) {
      return Answer(std::move(done), Status::Unavailable("too many membership changes pending"));
    }
    if (node->status().role != raft::Role::kLeader) return Answer(std::move(done), NotLeader());
    auto r = node->ProposeConfChange(cc);
    if (!r.ok() && r.status().code() == Code::kConflict) {
      if (!give_up) give_up = Clock::now() + std::chrono::milliseconds(kConflictRetryMs);
      if (Clock::now() < *give_up) {
        conf_retries.push_back({std::move(cc), std::move(done), *give_up});
        return;
      }
    }
    if (!r.ok()) return Answer(std::move(done), r.status());
    if (cc.type() != raft::pb::CONF_REMOVE && !cc.context().empty()) {
      peers[cc.node_id()] = cc.context();  // so the leader can reach it before the commit
    }
    auto deadline = Clock::now() + std::chrono::milliseconds(opts.proposal_timeout_ms);
    pending_confs.push_back({*r, std::move(done), deadline});
    ScheduleReady();
  }

  // The other voter with the highest match (the most caught-up), 0 if there is none.
  uint64_t MostCaughtUpVoter(const raft::NodeStatus& st) const {
    uint64_t best = 0, best_match = 0;
    for (const auto& p : st.progress) {
      bool voter = std::find(st.conf.voters().begin(), st.conf.voters().end(), p.id) !=
                   st.conf.voters().end();
      if (p.id == opts.node_id || p.learner || !voter) continue;
      if (best == 0 || p.match > best_match) {
        best = p.id;
        best_match = p.match;
      }
    }
    return best;
  }

  void TransferHere(uint64_t to, int64_t timeout_ms, std::function<void(Status)> done) {
    const raft::NodeStatus st = node->status();
    if (st.role != raft::Role::kLeader) return Answer(std::move(done), NotLeader());
    if (pending_transfers.size() >= kMaxPendingAdmin) {
      return Answer(std::move(done), Status::Unavailable("too many leadership transfers pending"));
    }
    if (to == 0) to = MostCaughtUpVoter(st);
    if (to == 0) return Answer(std::move(done), Status::InvalidArgument("no other voter to lead"));
    if (to == opts.node_id) return Answer(std::move(done), Status::Ok());  // already leads
    if (std::find(st.conf.voters().begin(), st.conf.voters().end(), to) == st.conf.voters().end()) {
      return Answer(std::move(done),
                    Status::InvalidArgument("node " + std::to_string(to) + " is not a voter"));
    }
    node->TransferLeadership(to);
    auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    pending_transfers.push_back({to, std::move(done), deadline, timeout_ms});
    ScheduleReady();
  }

  // On each tick: answers transfers that completed or timed out (the core aborts a transfer after
  // an election timeout, so one still wanted is asked again), and expires lost conf changes.
  void CheckAdminRequests() {
    std::vector<RetryConf> retries;
    retries.swap(conf_retries);
    for (auto& r : retries) ChangeMembershipHere(std::move(r.cc), std::move(r.done), r.give_up);
    auto now = Clock::now();
    const raft::NodeStatus st = node->status();
    for (auto it = pending_transfers.begin(); it != pending_transfers.end();) {
      if (st.leader != 0 && st.leader != opts.node_id) {
        Answer(std::move(it->done), Status::Ok());
      } else if (now >= it->deadline) {
        Answer(std::move(it->done),
               Status::Unavailable("leadership did not move to " + std::to_string(it->to) +
                                   " within " + std::to_string(it->timeout_ms) + " ms"));
      } else {
        if (st.role == raft::Role::kLeader && st.transferee == 0) node->TransferLeadership(it->to);
        ++it;
        continue;
      }
      it = pending_transfers.erase(it);
    }
    for (auto it = pending_confs.begin(); it != pending_confs.end();) {
      if (now < it->deadline) {
        ++it;
        continue;
      }
      Answer(std::move(it->done), Status::Unavailable("conf change not committed within " +
                                                      std::to_string(opts.proposal_timeout_ms) +
                                                      " ms; it may or may not take effect"));
      it = pending_confs.erase(it);
    }
  }

  // After the loop stopped: nothing will answer these any more.
  void FailAdminRequests() {
    for (auto& p : pending_confs) Answer(std::move(p.done), Status::Unavailable("shutting down"));
    for (auto& p : pending_transfers) {
      Answer(std::move(p.done), Status::Unavailable("shutting down"));
    }
    for (auto& p : conf_retries) Answer(std::move(p.done), Status::Unavailable("shutting down"));
    pending_confs.clear();
    pending_transfers.clear();
    conf_retries.clear();
    FailAsks("shutting down");
    auto fail_reads = [&](std::vector<ReadWaiter>& ws) {
      for (auto& w : ws) Answer(std::move(w.done), Status::Unavailable("shutting down"));
      ws.clear();
    };
    fail_reads(reads_unasked);
    if (read_in_flight) fail_reads(read_in_flight->waiters);
    for (auto& [index, ws] : reads_confirmed) fail_reads(ws);
    read_in_flight.reset();
    reads_confirmed.clear();
  }

  void NoteRole(bool leader) {
    if (leader == is_leader) return;
    is_leader = leader;
    HLOG_INFO("raft_role", "node={} leader={} term={}", opts.node_id, leader, node->status().term);
    if (cb.on_leadership) {
      executor.Post([self = shared_from_this(), leader] { self->cb.on_leadership(leader); });
    }
    if (leader) {
      member_probes.BecomeLeader(MonoMs());
      MaybeProbeMembers();  // a member already found gone is checked again now, not in 2 ticks
    }
  }

  void InstallSnapshot(const raft::pb::Snapshot& snap) {
    handed_out = std::max(handed_out, snap.meta().index());
    pb::SnapshotData data;
    data.ParseFromString(snap.data());
    for (const auto& [id, addr] : data.peers()) peers[id] = addr;
    confs.Reset(snap.meta().index(), snap.meta().conf());
    executor.Post([self = shared_from_this(), index = snap.meta().index(), state = data.state()] {
      self->applied_index = std::max(self->applied_index, index);
      self->cb.on_restore(index, state);
    });
  }

  void TrackConfChanges(const std::vector<raft::pb::Entry>& committed) {
    for (const auto& e : committed) {
      if (e.type() != raft::pb::ENTRY_CONF_CHANGE) continue;
      raft::pb::ConfChange cc;
      if (!cc.ParseFromString(e.data())) continue;
      confs.Apply(e.index(), cc);
      if (cc.type() == raft::pb::CONF_REMOVE) {
        if (cc.node_id() != opts.node_id) peers.erase(cc.node_id());
      } else if (!cc.context().empty()) {
        peers[cc.node_id()] = cc.context();
      }
      HLOG_INFO("raft_conf_change", "index={} type={} node={} address={}", e.index(),
                raft::pb::ConfChangeType_Name(cc.type()), cc.node_id(), cc.context());
    }
  }

  // On the executor: hands commands to the state machine and answers their proposers.
  void Apply(const std::vector<raft::pb::Entry>& entries) {
    std::vector<uint64_t> committed_own;
    for (const auto& e : entries) {
      applied_index = std::max(applied_index, e.index());
      if (e.type() != raft::pb::ENTRY_NORMAL) continue;
      pb::Proposal p;
      if (!p.ParseFromString(e.data())) {
        HLOG_ERROR("bad_log_entry", "index={} bytes={}", e.index(), e.data().size());
        continue;
      }
      CommittedEntry c{
          e.index(), static_cast<Machine>(p.machine()), p.data(),
          ProposalIdentity{p.origin(), p.boot(), p.seq(), p.client_id(), p.base_index()}};
      Status st = cb.on_commit(c);
      if (p.origin() != opts.node_id || p.boot() != boot) continue;
      committed_own.push_back(p.seq());
      auto it = pending.find(p.seq());
      if (it == pending.end()) continue;  // answered already (timed out, or another copy)
      DoneFn done = std::move(it->second.done);
      pending.erase(it);
      done(st, st.ok() ? e.index() : 0);
    }
    if (!committed_own.empty() && !stopped) {
      loop.Post([raw = this, seqs = std::move(committed_own)] { raw->ForgetOwn(seqs); });
    }
  }

  // On the executor: own proposals answered early (their leader fell silent).
  void FailOwn(const std::vector<uint64_t>& seqs, const Status& why) {
    for (uint64_t seq : seqs) {
      auto it = pending.find(seq);
      if (it == pending.end()) continue;
      DoneFn done = std::move(it->second.done);
      pending.erase(it);
      done(why, 0);
    }
  }

  // The leader changed: requests to the old one are failed (they are reads and heartbeats, safe to
  // retry); own proposals are re-forwarded by RouteOwn, not failed.
  void NoteLeader(uint64_t leader) {
    uint64_t old = last_leader;
    last_leader = leader;
    if (leader != old) last_leader_contact = Clock::now();
    if (leader != old && leader != 0) leader_heard_at = last_leader_contact;
    if (old == 0 || old == leader) return;
    FailAsks("the leader changed before it answered; retry");
  }

  // On the executor: fails proposals past their deadline (their outcome is unknown).
  void ExpireProposals() {
    auto now = Clock::now();
    while (!pending.empty() && pending.begin()->second.deadline <= now) {
      DoneFn done = std::move(pending.begin()->second.done);
      pending.erase(pending.begin());
      done(Status::Unavailable("not committed within " + std::to_string(opts.proposal_timeout_ms) +
                               " ms (no leader?): this write may or may not be applied; retrying "
                               "it with the same request id (X-Haven-Request-Id) applies it at "
                               "most once"),
           0);
    }
  }

  // ---- read barriers (on `loop`)

  void AskReadIndex() {
    if (read_in_flight || reads_unasked.empty()) return;
    ReadBatch batch;
    batch.context = next_read_context++;
    batch.waiters.swap(reads_unasked);
    node->ReadIndex(std::to_string(batch.context));
    read_in_flight = std::move(batch);
    ScheduleReady();
  }

  void OnReadState(const raft::ReadState& rs) {
    if (!read_in_flight || rs.context != std::to_string(read_in_flight->context)) return;
    reads_confirmed.emplace_back(rs.index, std::move(read_in_flight->waiters));
    read_in_flight.reset();
    AskReadIndex();
  }

  // Confirmed reads whose index the executor has been handed: answered behind those entries.
  void ReleaseReads() {
    auto ready = std::stable_partition(reads_confirmed.begin(), reads_confirmed.end(),
                                       [&](const auto& r) { return r.first <= handed_out; });
    for (auto it = reads_confirmed.begin(); it != ready; ++it) {
      for (auto& w : it->second) Answer(std::move(w.done), Status::Ok());
    }
    reads_confirmed.erase(reads_confirmed.begin(), ready);
  }

  // The core drops a ReadIndex silently (no leader yet, or one that has not committed in its
  // term): ask again with a fresh context; and fail reads past their deadline.
  void RetryReads() {
    if (read_in_flight && ++read_in_flight->ticks >= kReadRetryTicks) {
      for (auto& w : read_in_flight->waiters) reads_unasked.push_back(std::move(w));
      read_in_flight.reset();
    }
    auto now = Clock::now();
    auto expire = [&](std::vector<ReadWaiter>& ws) {
      auto keep = std::stable_partition(ws.begin(), ws.end(),
                                        [&](const ReadWaiter& w) { return w.deadline > now; });
      for (auto it = keep; it != ws.end(); ++it) {
        Answer(std::move(it->done),
               Status::Unavailable("no leader confirmed this read within " +
                                   std::to_string(opts.proposal_timeout_ms) + " ms"));
      }
      ws.erase(keep, ws.end());
    };
    expire(reads_unasked);
    if (read_in_flight) expire(read_in_flight->waiters);
    for (auto& [index, ws] : reads_confirmed) expire(ws);
    FailReadsOfSilentLeader(now);
    AskReadIndex();
  }

  // Reads asked of a leader nobody has heard from for leaderless_answer_ms are answered now (a
  // read is safe to retry), as proposals are; reads made while no leader is known wait for one.
  void FailReadsOfSilentLeader(Clock::time_point now) {
    auto silent_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(now - leader_heard_at).count();
    if (is_leader || node->status().leader == 0 || silent_ms < opts.leaderless_answer_ms) return;
    Status why = Status::Unavailable("no leader heard from for " + std::to_string(silent_ms) +
                                     " ms to confirm this read; retry it");
    for (auto& w : reads_unasked) Answer(std::move(w.done), why);
    reads_unasked.clear();
    if (read_in_flight) {
      for (auto& w : read_in_flight->waiters) Answer(std::move(w.done), why);
      read_in_flight.reset();
    }
  }

  size_t ReadsWaiting() const {
    size_t n = reads_unasked.size() + (read_in_flight ? read_in_flight->waiters.size() : 0);
    for (const auto& [index, ws] : reads_confirmed) n += ws.size();
    return n;
  }

  // ---- requests to the leader (on `loop`)

  void AskLeaderHere(std::string request, RaftLogCallbacks::Reply done) {
    const raft::NodeStatus st = node->status();
    if (st.leader == 0) return AnswerAsk(std::move(done), NotLeader());
    if (st.leader == opts.node_id) {
      return executor.Post([self = shared_from_this(), request = std::move(request),
                            done = std::move(done)]() mutable {
        self->ServeLeaderRequest(request, std::move(done));
      });
    }
    auto to = peers.find(st.leader);
    if (to == peers.end()) return AnswerAsk(std::move(done), NotLeader());
    if (asks.size() >= opts.max_pending_proposals) {
      return AnswerAsk(std::move(done), Status::Unavailable("too many requests to the leader"));
    }
    uint64_t id = next_ask_id++;
    asks[id] = {std::move(done),
                Clock::now() + std::chrono::milliseconds(opts.proposal_timeout_ms)};
    pb::PeerFrame f;
    f.mutable_leader_request()->set_id(id);
    f.mutable_leader_request()->set_data(std::move(request));
    SendFrame(to->second, f);
  }

  // On the executor.
  void ServeLeaderRequest(const std::string& request, RaftLogCallbacks::Reply reply) {
    if (!cb.on_leader_request) {
      return reply(Status::Unavailable("this node takes no requests as leader"));
    }
    cb.on_leader_request(request, std::move(reply));
  }

  void OnLeaderRequest(const std::string& from_address, const pb::LeaderRequest& req) {
    if (from_address.empty()) return;
    auto send_reply = [self = shared_from_this(), from_address,
                       id = req.id()](Result<std::string> r) {
      self->loop.Post([self, from_address, id, r = std::move(r)] {
        pb::PeerFrame f;
        auto* rep = f.mutable_leader_reply();
        rep->set_id(id);
        rep->set_code(static_cast<int32_t>(r.ok() ? Code::kOk : r.status().code()));
        if (r.ok()) rep->set_data(*r);
        if (!r.ok()) rep->set_message(r.status().message());
        self->SendFrame(from_address, f);
      });
    };
    if (!is_leader) return send_reply(NotLeader());
    executor.Post([self = shared_from_this(), data = req.data(), send_reply]() mutable {
      self->ServeLeaderRequest(data, std::move(send_reply));
    });
  }

  void OnLeaderReply(const pb::LeaderReply& rep) {
    auto it = asks.find(rep.id());
    if (it == asks.end()) return;  // expired
    RaftLogCallbacks::Reply done = std::move(it->second.done);
    asks.erase(it);
    if (rep.code() == 0) return AnswerAsk(std::move(done), rep.data());
    bool known = rep.code() > 0 && rep.code() <= static_cast<int32_t>(Code::kInternal);
    AnswerAsk(std::move(done),
              Status(known ? static_cast<Code>(rep.code()) : Code::kInternal, rep.message()));
  }

  void AnswerAsk(RaftLogCallbacks::Reply done, Result<std::string> r) {
    executor.Post([done = std::move(done), r = std::move(r)] { done(r); });
  }

  void ExpireAsks() {
    auto now = Clock::now();
    for (auto it = asks.begin(); it != asks.end();) {
      if (it->second.deadline > now) {
        ++it;
        continue;
      }
      AnswerAsk(std::move(it->second.done),
                Status::Unavailable("the leader did not answer within " +
                                    std::to_string(opts.proposal_timeout_ms) + " ms"));
      it = asks.erase(it);
    }
  }

  void FailAsks(const std::string& why) {
    for (auto& [id, a] : asks) AnswerAsk(std::move(a.done), Status::Unavailable(why));
    asks.clear();
  }

  void UpdateStatus() {
    std::lock_guard lock(status_mu);
    status_cache.node = node->status();
    status_cache.peers = peers;
    status_cache.gone = member_probes.gone();
    status_contact = status_cache.node.leader == 0 ? std::optional<Clock::time_point>()
                     : is_leader                   ? std::optional(Clock::time_point::max())
                                                   : std::optional(last_leader_contact);
  }
};

RaftLog::RaftLog(storage::LogStore& store, net::IoRuntime& executor, RaftLogCallbacks callbacks,
                 RaftLogOptions opts)
    : impl_(std::make_shared<Impl>(store, executor, std::move(callbacks), std::move(opts))) {}

RaftLog::~RaftLog() { Stop(); }

Status RaftLog::Start() {
  Impl& im = *impl_;
  raft::pb::ConfState bootstrap;
  for (const auto& [id, addr] : im.opts.peers) bootstrap.add_voters(id);
  auto loaded = LoadRaftState(im.store, bootstrap);
  if (!loaded.ok()) return loaded.status();
  // Ephemeral ports (":0") are not addresses anyone can use; those are learned from frames.
  for (const auto& [id, addr] : im.opts.peers) {
    if (!addr.ends_with(":0")) loaded->initial.bootstrap_context[id] = addr;
  }
  im.peers = im.opts.peers;
  uint64_t snap_index = loaded->initial.snapshot ? loaded->initial.snapshot->index() : 0;
  im.confs.Reset(snap_index, loaded->initial.conf);
  im.handed_out = snap_index;
  if (loaded->data) {
    pb::SnapshotData data;
    if (!data.ParseFromString(*loaded->data)) return Status::IoError("snapshot data is corrupt");
    for (const auto& [id, addr] : data.peers()) im.peers.emplace(id, addr);
    std::promise<void> restored;
    im.executor.Post([&] {
      im.applied_index = snap_index;
      im.cb.on_restore(snap_index, data.state());
      restored.set_value();
    });
    restored.get_future().wait();
  }
  raft::Config cfg;
  cfg.id = im.opts.node_id;
  cfg.group = im.opts.group;
  cfg.election_tick = im.opts.election_ticks;
  cfg.heartbeat_tick = im.opts.heartbeat_ticks;
  cfg.snapshot_sink = im.opts.snapshot_sink;
  cfg.unreachable_campaign_ticks = std::min(im.opts.unreachable_campaign_ticks, cfg.election_tick);
  // Real randomness here (the simulator seeds its own): otherwise the same node wins every first
  // election of a fresh cluster.
  cfg.seed = (im.opts.node_id * 0x9e3779b97f4a7c15ULL) ^ std::random_device{}();
  auto node = raft::RawNode::Create(cfg, loaded->initial);
  if (!node.ok()) return node.status();
  im.node = std::move(node.value());
  net::FramedTransportOptions to;
  to.listen = im.opts.listen;
  im.transport = std::make_unique<net::FramedTransport>(to, [impl = impl_.get()](std::string f) {
    impl->loop.Post([impl, f = std::move(f)] { impl->OnFrame(f); });
  });
  if (Status s = im.transport->Start(); !s.ok()) return s;
  // An ephemeral --raft port (a cluster of one) is known only now.
  if (auto self = im.peers.find(im.opts.node_id);
      self == im.peers.end() || self->second.ends_with(":0")) {
    im.peers[im.opts.node_id] = im.transport->address();
  }
  im.self_address = im.peers[im.opts.node_id];
  im.loop.Start();
  std::promise<void> started;
  im.loop.Post([&] {
    // A cluster of one elects itself at once (also on restart: its conf comes from the log).
    const raft::NodeStatus st = im.node->status();
    if (st.conf.voters_size() == 1 && st.conf.voters(0) == im.opts.node_id) im.node->Campaign();
    im.ProcessReady();
    im.ScheduleTick();
    started.set_value();
  });
  started.get_future().wait();
  HLOG_INFO("raft_started", "node={} group={} raft={} peers={} first_index={} last_index={}",
            im.opts.node_id, im.opts.group, raft_address(), im.peers.size(), im.store.FirstIndex(),
            im.store.LastIndex());
  return Status::Ok();
}

void RaftLog::Stop() {
  Impl& im = *impl_;
  if (im.stopped.exchange(true)) return;
  im.loop.Stop();
  if (im.transport) im.transport->Stop();
  im.FailAdminRequests();  // the loop thread is joined: its state is ours now
  im.executor.Post([impl = impl_] {
    for (auto& [seq, p] : impl->pending) p.done(Status::Unavailable("server is shutting down"), 0);
    impl->pending.clear();
  });
}

void RaftLog::Propose(Machine machine, std::string data, DoneFn done) {
  Propose(machine, std::move(data), std::string(), std::move(done));
}

void RaftLog::Propose(Machine machine, std::string data, std::string client_id, DoneFn done) {
  Impl& im = *impl_;
  if (im.stopped) {
    done(Status::Unavailable("server is shutting down"), 0);
    return;
  }
  if (client_id.size() > kMaxClientIdBytes) {
    done(Status::InvalidArgument("a client request id is limited to " +
                                 std::to_string(kMaxClientIdBytes) + " bytes"),
         0);
    return;
  }
  pb::Proposal p;
  p.set_origin(im.opts.node_id);
  p.set_boot(im.boot);
  p.set_seq(im.next_seq++);
  p.set_data(std::move(data));
  p.set_machine(static_cast<uint32_t>(machine));
  p.set_client_id(std::move(client_id));
  // Registered on the executor first, so its commit (also on the executor) always finds it.
  // Handlers posted to `loop` hold a raw Impl*: the loop belongs to Impl and is joined in Stop,
  // while a shared_ptr queued in a stopped loop would keep Impl (and the loop) alive forever.
  im.executor.Post([impl = impl_, p = std::move(p), done = std::move(done)]() mutable {
    if (impl->stopped) {
      done(Status::Unavailable("server is shutting down"), 0);
      return;
    }
    if (impl->pending.size() >= impl->opts.max_pending_proposals) {
      done(Status::Unavailable("too many proposals in flight"), 0);
      return;
    }
    auto deadline = Clock::now() + std::chrono::milliseconds(impl->opts.proposal_timeout_ms);
    impl->pending[p.seq()] = {std::move(done), deadline};
    p.set_base_index(impl->applied_index);
    impl->loop.Post([raw = impl.get(), p = std::move(p), deadline]() mutable {
      raw->TrackOwn(std::move(p), deadline);
    });
  });
}

void RaftLog::ReadBarrier(std::function<void(Status)> done) {
  Impl& im = *impl_;
  if (im.stopped) return im.executor.Post([done] { done(Status::Unavailable("shutting down")); });
  auto deadline = Clock::now() + std::chrono::milliseconds(im.opts.proposal_timeout_ms);
  im.loop.Post([impl = impl_.get(), done = std::move(done), deadline]() mutable {
    if (impl->failed) return impl->Answer(std::move(done), Status::IoError("raft storage failed"));
    if (impl->ReadsWaiting() >= impl->opts.max_pending_proposals) {
      return impl->Answer(std::move(done), Status::Unavailable("too many reads waiting"));
    }
    impl->reads_unasked.push_back({std::move(done), deadline});
    impl->AskReadIndex();
  });
}

void RaftLog::AskLeader(std::string request, RaftLogCallbacks::Reply done) {
  Impl& im = *impl_;
  if (im.stopped) return im.executor.Post([done] { done(Status::Unavailable("shutting down")); });
  if (request.size() > Impl::kMaxAskBytes) {
    return im.executor.Post(
        [done] { done(Status::TooLarge("a request to the leader is limited to 64 KiB")); });
  }
  im.loop.Post(
      [impl = impl_.get(), request = std::move(request), done = std::move(done)]() mutable {
        impl->AskLeaderHere(std::move(request), std::move(done));
      });
}

void RaftLog::SaveSnapshotAsync(uint64_t index, std::string state,
                                std::shared_ptr<raft::SnapshotSource> stream) {
  impl_->loop.Post(
      [impl = impl_.get(), index, state = std::move(state), stream = std::move(stream)]() mutable {
        auto term = impl->store.Term(index);
        if (!term.ok()) return;  // already compacted past it
        raft::pb::Snapshot snap;
        snap.mutable_meta()->set_index(index);
        snap.mutable_meta()->set_term(*term);
        *snap.mutable_meta()->mutable_conf() = impl->confs.At(index);
        pb::SnapshotData data;
        for (const auto& [id, addr] : impl->peers) (*data.mutable_peers())[id] = addr;
        data.set_state(std::move(state));
        snap.set_data(data.SerializeAsString());
        if (Status s = impl->store.SaveSnapshot(MakeStoredSnapshot(snap)); !s.ok()) {
          HLOG_ERROR("raft_snapshot_failed", "index={} error=\"{}\"", index, s.ToString());
          return;
        }
        if (Status s = impl->node->Compact(std::move(snap), std::move(stream)); !s.ok()) {
          HLOG_WARN("raft_compact_failed", "index={} error=\"{}\"", index, s.ToString());
        }
      });
}

void RaftLog::SetSnapshotStream(uint64_t index, std::shared_ptr<raft::SnapshotSource> stream) {
  // Posted before the loop starts (a restore at Start), it runs first when it does.
  impl_->loop.Post([impl = impl_.get(), index, stream = std::move(stream)]() mutable {
    if (impl->node) impl->node->SetSnapshotStream(index, std::move(stream));
  });
}

void RaftLog::TransferLeadership(uint64_t to) {
  impl_->loop.Post([impl = impl_.get(), to] {
    impl->node->TransferLeadership(to);
    impl->ScheduleReady();
  });
}

void RaftLog::ChangeMembership(raft::pb::ConfChange cc, std::function<void(Status)> done) {
  Impl& im = *impl_;
  if (im.stopped) return im.executor.Post([done] { done(Status::Unavailable("shutting down")); });
  if (cc.context().size() > 256) {
    return im.executor.Post(
        [done] { done(Status::InvalidArgument("member address longer than 256 bytes")); });
  }
  im.loop.Post([impl = impl_.get(), cc = std::move(cc), done = std::move(done)]() mutable {
    impl->ChangeMembershipHere(std::move(cc), std::move(done));
  });
}

void RaftLog::TransferLeadershipAndWait(uint64_t to, int64_t timeout_ms,
                                        std::function<void(Status)> done) {
  Impl& im = *impl_;
  if (im.stopped) return im.executor.Post([done] { done(Status::Unavailable("shutting down")); });
  if (timeout_ms <= 0 || timeout_ms > Impl::kMaxTransferWaitMs) {
    return im.executor.Post(
        [done] { done(Status::InvalidArgument("transfer timeout must be 1 to 60000 ms")); });
  }
  im.loop.Post([impl = impl_.get(), to, timeout_ms, done = std::move(done)]() mutable {
    impl->TransferHere(to, timeout_ms, std::move(done));
  });
}

std::string RaftLog::raft_address() const {
  return impl_->transport ? impl_->transport->address() : "";
}

RaftLogStatus RaftLog::status() const {
  std::lock_guard lock(impl_->status_mu);
  RaftLogStatus s = impl_->status_cache;
  if (const auto& at = impl_->status_contact; at) {
    s.last_leader_contact_ms =
        *at == Clock::time_point::max()
            ? 0
            : std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - *at).count();
  }
  return s;
}

}  // namespace haven::node
