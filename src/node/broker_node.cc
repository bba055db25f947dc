#include "node/broker_node.h"

#include <algorithm>
#include <cstdio>
#include <iterator>
#include <random>

#include "base/log.h"
#include "base/metrics.h"

namespace haven::node {

namespace {

std::string RandomHex64() {
  std::random_device rd;
  uint64_t v = (uint64_t{rd()} << 32) ^ rd();
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

bool HasPrefix(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// As BrokerState's: "a" owns "a" and "a/..." but not "ab".
bool OwnedBy(const std::string& owner, const std::string& prefix) {
  return owner == prefix ||
         (HasPrefix(owner, prefix) && owner.size() > prefix.size() && owner[prefix.size()] == '/');
}

bool Drops(const mq::pb::DropOwner& d, const std::string& owner) {
  bool match = d.raw_prefix() ? HasPrefix(owner, d.owner()) : OwnedBy(owner, d.owner());
  return match && (d.except().empty() || !OwnedBy(owner, d.except()));
}

void LogIfFailed(const char* what, const Result<mq::ApplyResult>& r) {
  if (!r.ok()) {
    HLOG_WARN("broker_propose_failed", "what={} error=\"{}\"", what, r.status().ToString());
  } else if (!r->error.ok()) {
    HLOG_WARN("broker_command_rejected", "what={} code={} text=\"{}\"", what, r->error.reply_code,
              r->error.reply_text);
  }
}

}  // namespace

BrokerNode::BrokerNode(BrokerNodeOptions opts, net::IoRuntime& executor, ProposeFn propose,
                       const Clock& clock)
    : opts_(std::move(opts)),
      executor_(executor),
      propose_(std::move(propose)),
      clock_(clock),
      boot_(RandomHex64()),
      member_drops_(opts_.member_timeout_ms),
      state_(opts_.broker, opts_.spill) {}

BrokerNode::~BrokerNode() {
  *alive_ = false;
  if (expiry_timer_) expiry_timer_->Cancel();
  std::vector<Queued> unsent = std::move(batch_);
  for (Queued& q : unsent) q.done(Status::Unavailable("broker stopped"));
}

void BrokerNode::Propose(mq::pb::Command cmd, ProposeDone done) {
  cmd.set_now_unix_ms(clock_.NowUnixMs());
  const size_t bytes = cmd.ByteSizeLong();
  if (!batch_.empty() &&
      (batch_.size() >= opts_.max_batch_commands || batch_bytes_ + bytes > opts_.max_batch_bytes)) {
    FlushBatch();
  }
  batch_.push_back({std::move(cmd), std::move(done)});
  batch_bytes_ += bytes;
  if (flush_posted_) return;
  // After the handlers already queued (other connections' reads, applies): their commands join.
  flush_posted_ = true;
  executor_.Post([this, alive = alive_] {
    if (!*alive) return;
    flush_posted_ = false;
    FlushBatch();
  });
}

void BrokerNode::FlushBatch() {
  if (batch_.empty()) return;
  std::vector<Queued> items = std::move(batch_);
  batch_.clear();
  batch_bytes_ = 0;
  if (items.size() == 1) return ProposeEntry(std::move(items[0].cmd), std::move(items[0].done));
  mq::pb::Command cmd;
  cmd.set_now_unix_ms(items.back().cmd.now_unix_ms());
  auto* batch = cmd.mutable_batch();
  batch->mutable_commands()->Reserve(static_cast<int>(items.size()));
  auto dones = std::make_shared<std::vector<ProposeDone>>();
  dones->reserve(items.size());
  for (Queued& q : items) {
    *batch->add_commands() = std::move(q.cmd);
    dones->push_back(std::move(q.done));
  }
  ProposeEntry(std::move(cmd), [dones](Result<mq::ApplyResult> r) {
    if (!r.ok()) {
      for (auto& done : *dones) done(r.status());
      return;
    }
    for (size_t i = 0; i < dones->size(); ++i) {
      if (i < r->batch.size()) {
        (*dones)[i](std::move(r->batch[i]));
      } else {  // the batch was refused as a whole
        mq::ApplyResult refused;
        refused.error = r->error;
        (*dones)[i](std::move(refused));
      }
    }
  });
}

void BrokerNode::ProposeEntry(mq::pb::Command cmd, ProposeDone done) {
  std::string data;
  if (!cmd.SerializeToString(&data)) {
    done(Status::Internal("cannot serialize mq command"));
    return;
  }
  propose_(std::move(data),
           [this, alive = alive_, done = std::move(done)](Status s, uint64_t index) {
             if (!*alive) return done(Status::Unavailable("broker stopped"));
             if (!s.ok()) return done(std::move(s));
             if (index != last_result_index_) {
               return done(Status::Unavailable("outcome unknown: entry " + std::to_string(index) +
                                               " was not the one applied last"));
             }
             done(std::move(last_result_));
           });
}

std::string BrokerNode::NewOwnerId() {
  return std::to_string(opts_.raft_id) + ":" + boot_ + "/" + std::to_string(next_owner_seq_++);
}

void BrokerNode::Attach(const std::string& owner, BrokerConnectionSink sink) {
  sinks_[owner] = std::move(sink);
}

void BrokerNode::Detach(const std::string& owner) {
  if (sinks_.erase(owner) == 0) return;
  ProposeDetach(owner, 0);
}

// DropOwner is idempotent, so a detach that failed (no leader, a leader change) is proposed again
// until it commits: otherwise the closed connection's consumers would keep their unacked messages
// while this node lives. Bounded; a node that dies is covered by the leader's member checks.
void BrokerNode::ProposeDetach(const std::string& owner, int attempt) {
  constexpr int kMaxAttempts = 100;  // about 3 minutes at the 2 s cap below
  mq::pb::Command cmd;
  cmd.mutable_drop_owner()->set_owner(owner);
  Propose(std::move(cmd), [this, alive = alive_, owner, attempt](const Result<mq::ApplyResult>& r) {
    if (r.ok() || !*alive) return LogIfFailed("detach", r);
    if (attempt + 1 >= kMaxAttempts) {
      HLOG_ERROR("broker_detach_gave_up", "owner={} attempts={} error=\"{}\"", owner, attempt + 1,
                 r.status().ToString());
      return;
    }
    HLOG_WARN("broker_detach_retry", "owner={} attempt={} error=\"{}\"", owner, attempt + 1,
              r.status().ToString());
    int64_t delay_ms = std::min<int64_t>(int64_t{100} << std::min(attempt, 5), 2'000);
    executor_.RunAfter(delay_ms, [this, alive, owner, attempt] {
      if (*alive) ProposeDetach(owner, attempt + 1);
    });
  });
}

void BrokerNode::Apply(uint64_t index, const std::string& data) {
  mq::pb::Command cmd;
  if (!cmd.ParseFromString(data)) {
    HLOG_ERROR("broker_bad_entry", "index={} bytes={}", index, data.size());
    last_commands_ = 1;
    last_result_index_ = index;
    last_result_ = {};
    last_result_.error = {mq::BrokerError::kInternalError, "INTERNAL_ERROR - unreadable command"};
    return;
  }
  mq::ApplyResult result = state_.Apply(index, cmd);
  last_commands_ = cmd.has_batch() ? std::max<uint64_t>(cmd.batch().commands_size(), 1) : 1;
  if (cmd.has_batch()) {
    for (int i = 0; i < cmd.batch().commands_size() && i < static_cast<int>(result.batch.size());
         ++i) {
      ApplyCommand(cmd.batch().commands(i), result.batch[i]);
    }
  } else {
    ApplyCommand(cmd, result);
  }
  bool pending = result.dispatch_pending;
  last_result_index_ = index;
  last_result_ = std::move(result);
  if (pending) MaybeProposeDispatch();
}

// What a command applied here means for this node: its deliveries and cancels go to the
// connections, and the leader's Dispatch and Expire may be proposed again.
void BrokerNode::ApplyCommand(const mq::pb::Command& cmd, const mq::ApplyResult& result) {
  if (cmd.has_dispatch()) dispatch_in_flight_ = false;
  if (cmd.has_expire()) expire_in_flight_ = false;
  Route(cmd, result);
}

BrokerConnectionSink* BrokerNode::SinkFor(const std::string& consumer_id) {
  // Owners are "RAFT_ID:BOOT/SEQ": the owner ends at the second '/'.
  size_t first = consumer_id.find('/');
  if (first == std::string::npos) return nullptr;
  size_t second = consumer_id.find('/', first + 1);
  auto it = sinks_.find(consumer_id.substr(0, second));
  return it == sinks_.end() ? nullptr : &it->second;
}

void BrokerNode::Route(const mq::pb::Command& cmd, const mq::ApplyResult& result) {
  for (const mq::Delivery& d : result.deliveries) {
    if (BrokerConnectionSink* sink = SinkFor(d.consumer_id); sink && sink->deliver) {
      sink->deliver(d);
    }
  }
  for (const std::string& id : result.cancelled_consumers) {
    if (BrokerConnectionSink* sink = SinkFor(id); sink && sink->cancelled) sink->cancelled(id);
  }
  if (cmd.has_drop_owner() && result.error.ok()) NotifyDropped(cmd.drop_owner());
}

void BrokerNode::NotifyDropped(const mq::pb::DropOwner& drop) {
  std::vector<std::function<void()>> calls;  // a callback may Detach: do not iterate sinks_
  for (const auto& [owner, sink] : sinks_) {
    if (Drops(drop, owner) && sink.dropped) calls.push_back(sink.dropped);
  }
  for (auto& call : calls) call();
}

void BrokerNode::MaybeProposeDispatch() {
  if (!leader_ || dispatch_in_flight_) return;
  dispatch_in_flight_ = true;
  mq::pb::Command cmd;
  cmd.mutable_dispatch();
  Propose(std::move(cmd), [this, alive = alive_](const Result<mq::ApplyResult>& r) {
    if (!*alive) return;
    LogIfFailed("dispatch", r);
    if (!r.ok()) dispatch_in_flight_ = false;
  });
}

std::string BrokerNode::TakeSnapshot() {
  mq::SnapshotForm form = mq::SnapshotForm::kFull;
  if (opts_.spill != nullptr) {
    if (Status s = opts_.spill->Sync(); s.ok()) {
      form = mq::SnapshotForm::kLocal;
    } else {
      // A local snapshot needs its records on disk; the full form reads them all back instead.
      HLOG_ERROR("mq_spill_sync_failed", "error=\"{}\" fallback=full_snapshot", s.ToString());
    }
    spill_keeps_[state_.last_applied()] = state_.SpillKeepNow();
  }
  mq::pb::Snapshot snap = state_.TakeSnapshot(form);
  snapshot_ranges_ = SpillRanges(snap);
  std::string out;
  snap.SerializeToString(&out);
  return out;
}

std::shared_ptr<raft::SnapshotSource> BrokerNode::SnapshotStream() {
  if (opts_.spill == nullptr || snapshot_ranges_.empty()) return nullptr;
  return std::make_shared<SpillSnapshotSource>(snapshot_ranges_, opts_.spill->Pin());
}

Status BrokerNode::Restore(const std::string& snapshot) {
  mq::pb::Snapshot snap;
  if (!snap.ParseFromString(snapshot)) return Status::InvalidArgument("unreadable mq snapshot");
  if (Status s = state_.Restore(snap); !s.ok()) return s;
  // The snapshot restored is durable (loaded at start, or installed from the leader).
  spill_keeps_.clear();
  if (opts_.spill != nullptr) opts_.spill->Truncate(state_.SpillKeepNow());
  snapshot_ranges_ = SpillRanges(snap);
  ReconcileSinks();
  return Status::Ok();
}

// The entries a snapshot replaced were never applied here, so their deliveries and cancels never
// reached this node's connections: tell each what its consumers hold now.
void BrokerNode::ReconcileSinks() {
  if (sinks_.empty()) return;
  std::map<std::string, std::map<std::string, std::vector<mq::Delivery>>> by_owner;
  for (const auto& [owner, sink] : sinks_) by_owner[owner];
  for (const std::string& queue : state_.QueueNames()) {
    for (const std::string& id : state_.ConsumerIds(queue)) {
      size_t first = id.find('/');
      size_t second = first == std::string::npos ? first : id.find('/', first + 1);
      auto it = by_owner.find(id.substr(0, second));
      if (it != by_owner.end()) it->second[id] = state_.Held(id);
    }
  }
  std::vector<
      std::pair<std::function<void(const std::map<std::string, std::vector<mq::Delivery>>&)>,
                std::map<std::string, std::vector<mq::Delivery>>>>
      calls;  // a callback may Detach: do not iterate sinks_
  for (auto& [owner, held] : by_owner) {
    if (const auto& restored = sinks_[owner].restored)
      calls.emplace_back(restored, std::move(held));
  }
  HLOG_INFO("broker_sinks_reconciled", "connections={} index={}", calls.size(),
            state_.last_applied());
  for (auto& [call, held] : calls) call(held);
}

void BrokerNode::OnSnapshotDurable(uint64_t index) {
  auto end = spill_keeps_.upper_bound(index);
  if (end == spill_keeps_.begin() || opts_.spill == nullptr) return;
  opts_.spill->Truncate(std::prev(end)->second);
  spill_keeps_.erase(spill_keeps_.begin(), end);
}

void BrokerNode::OnLeadership(bool leader) {
  leader_ = leader;
  member_drops_.Reset();  // a new leader gives every member a full timeout (unless proven gone)
  dispatch_in_flight_ = false;
  expire_in_flight_ = false;
  if (expiry_timer_) expiry_timer_->Cancel();
  expiry_timer_.reset();
  if (!leader) return;
  ArmExpiryTimer();
  if (state_.dispatch_pending()) MaybeProposeDispatch();
}

void BrokerNode::ArmExpiryTimer() {
  expiry_timer_ = executor_.RunAfter(opts_.expire_check_ms, [this, alive = alive_] {
    if (*alive) OnExpiryTimer();
  });
}

// Polls at most every expire_check_ms: an Expire is proposed only while a head is due, so an idle
// broker writes nothing.
void BrokerNode::OnExpiryTimer() {
  if (!leader_) return;
  std::optional<int64_t> next = state_.NextExpiryUnixMs();
  if (next && *next <= clock_.NowUnixMs() && !expire_in_flight_) {
    expire_in_flight_ = true;
    mq::pb::Command cmd;
    cmd.mutable_expire();
    Propose(std::move(cmd), [this, alive = alive_](const Result<mq::ApplyResult>& r) {
      if (!*alive) return;
      LogIfFailed("expire", r);
      if (!r.ok()) expire_in_flight_ = false;
    });
  }
  DropGoneMembers();
  ArmExpiryTimer();
}

void BrokerNode::OnMemberGone(uint64_t id) {
  if (!leader_) return;
  HLOG_DEBUG("broker_member_gone", "member={}", id);
  DropGoneMembers();
}

// Consumers live on the node their client is connected to; when that node dies nobody acks or
// cancels for them. The leader drops the owners of a member proven gone at once, of one silent
// for member_timeout_ms, and of raft ids no longer in the cluster, once each (again if it comes
// back and goes away again). Runs on the expiry timer and when the log finds a member gone.
void BrokerNode::DropGoneMembers() {
  if (!opts_.raft_status) return;
  const raft::NodeStatus st = opts_.raft_status();
  if (st.role != raft::Role::kLeader) return;
  const std::set<uint64_t> gone = opts_.gone_members ? opts_.gone_members() : std::set<uint64_t>{};
  std::vector<MemberDropPolicy::Member> members;
  for (const auto& p : st.progress) members.push_back({p.id, p.active, gone.count(p.id) > 0});
  std::set<uint64_t> holders;
  for (const auto& queue : state_.QueueNames()) {
    for (const auto& consumer : state_.ConsumerIds(queue)) {
      holders.insert(std::strtoull(consumer.c_str(), nullptr, 10));
    }
  }
  for (const auto& drop : member_drops_.Check(clock_.NowMono(), opts_.raft_id, members, holders)) {
    DropMember(drop.id, drop.reason);
  }
}

void BrokerNode::DropMember(uint64_t id, MemberDropPolicy::Reason why) {
  const char* reason = MemberDropPolicy::ReasonName(why);
  metrics::Registry::Default()
      .GetCounter("haven_mq_member_drops_total",
                  "Members whose consumers the queue leader dropped (their unacked messages go "
                  "back, redelivered), by reason: gone (process proven gone), silent (member "
                  "timeout), removed (left the cluster)",
                  {{"reason", reason}})
      .Inc();
  HLOG_INFO("broker_drop_member", "member={} reason={}", id, reason);
  mq::pb::Command cmd;
  auto* d = cmd.mutable_drop_owner();
  d->set_owner(std::to_string(id) + ":");
  d->set_raw_prefix(true);
  const int64_t started = clock_.NowMono();
  Propose(std::move(cmd),
          [this, alive = alive_, id, reason, started](const Result<mq::ApplyResult>& r) {
            if (!*alive) return;
            LogIfFailed("drop_member", r);
            if (!r.ok()) return member_drops_.DropFailed(id);  // decided again on the next check
            HLOG_INFO("broker_member_dropped", "member={} reason={} commit_ms={}", id, reason,
                      clock_.NowMono() - started);
          });
}

// Drops every owner "RAFT_ID:..." except this boot's ("RAFT_ID:BOOT" and under): safe to call
// whether or not connections are already attached.
void BrokerNode::DropPreviousBoots() {
  mq::pb::Command cmd;
  auto* d = cmd.mutable_drop_owner();
  d->set_owner(std::to_string(opts_.raft_id) + ":");
  d->set_raw_prefix(true);
  d->set_except(std::to_string(opts_.raft_id) + ":" + boot_);
  Propose(std::move(cmd),
          [](const Result<mq::ApplyResult>& r) { LogIfFailed("drop_previous_boots", r); });
}

}  // namespace haven::node
