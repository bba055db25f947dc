#include "node/registry_node.h"

#include <algorithm>
#include <future>

#include "base/log.h"
#include "base/metrics.h"
#include "net/probe.h"
#include "node/node.pb.h"

namespace haven::node {

namespace rpb = registry::pb;  // (node::pb is the node's own protocol)
using registry::CheckKey;
using registry::HealthAction;

namespace {

constexpr const char* kSerfHealth = "serfHealth";

metrics::Counter& TransitionCounter(const std::string& status) {
  return metrics::Registry::Default().GetCounter("haven_health_check_transitions_total",
                                                 "Check status changes written to the log",
                                                 {{"status", status}});
}

metrics::Counter& HeartbeatCounter() {
  static auto& c = metrics::Registry::Default().GetCounter(
      "haven_health_heartbeats_total",
      "TTL updates and probe results received (most cost no write)");
  return c;
}

}  // namespace

RegistryNode::RegistryNode(RegistryNodeOptions opts, net::IoRuntime& executor, NodeLog& log,
                           const Clock& clock)
    : opts_(std::move(opts)), executor_(executor), clock_(clock), watches_(executor), log_(log) {
  MachineHooks hooks;
  hooks.apply = [this](uint64_t index, const std::string& d) { Apply(index, d); };
  hooks.take_snapshot = [this] { return sm_.TakeSnapshot().SerializeAsString(); };
  hooks.restore = [this](uint64_t index, const std::string& state) { Restore(index, state); };
  hooks.on_leadership = [this](bool leader) { OnLeadership(leader); };
  hooks.last_result = [this] { return LastOutcome(); };
  hooks.on_duplicate = [this](uint64_t index, const std::string& outcome) {
    OnDuplicate(index, outcome);
  };
  log_.Register(Machine::kRegistry, std::move(hooks));
  log_.SetLeaderRequestHandler([this](const std::string& request, RaftLogCallbacks::Reply reply) {
    OnLeaderRequest(request, std::move(reply));
  });
  auto& reg = metrics::Registry::Default();
  reg.SetCallbackGauge("haven_catalog_nodes", "Nodes in the catalog", {},
                       [this] { return static_cast<double>(sm_.NodeCount()); });
  reg.SetCallbackGauge("haven_catalog_services", "Service instances in the catalog", {},
                       [this] { return static_cast<double>(sm_.ServiceCount()); });
  reg.SetCallbackGauge("haven_catalog_checks", "Health checks in the catalog", {},
                       [this] { return static_cast<double>(sm_.CheckCount()); });
  reg.SetCallbackGauge("haven_kv_entries", "Keys in the KV store", {},
                       [this] { return static_cast<double>(sm_.KVCount()); });
  reg.SetCallbackGauge("haven_kv_tombstones", "Deleted keys remembered for blocking queries", {},
                       [this] { return static_cast<double>(sm_.TombstoneCount()); });
  reg.SetCallbackGauge("haven_raft_applied_index", "Index of the last applied log entry", {},
                       [this] { return static_cast<double>(sm_.last_applied()); });
  reg.SetCallbackGauge("haven_raft_is_leader", "1 while this node is the Raft leader", {}, [this] {
    return log_.raft().status().node.role == raft::Role::kLeader ? 1.0 : 0.0;
  });
  reg.SetCallbackGauge("haven_raft_term", "Current Raft term", {},
                       [this] { return static_cast<double>(log_.raft().status().node.term); });
  reg.SetCallbackGauge("haven_raft_commit_index", "Highest log index known committed", {},
                       [this] { return static_cast<double>(log_.raft().status().node.commit); });
  reg.SetCallbackGauge("haven_raft_leader_id", "Raft id of the leader this node follows (0: none)",
                       {},
                       [this] { return static_cast<double>(log_.raft().status().node.leader); });
}

RegistryNode::~RegistryNode() = default;

void RegistryNode::Start() {
  // Behind the re-applied log on the executor.
  executor_.Post([this] {
    HLOG_INFO("recovered", "snapshot_index={} applied_index={} services={} checks={} kv={}",
              log_.snapshot_index(), sm_.last_applied(), sm_.ServiceCount(), sm_.CheckCount(),
              sm_.KVCount());
    TrackEverything();
    RegisterSelf();
    ArmHealthTimer();
    reap_up_to_ = sm_.last_applied();
    ArmTombstoneReaper();
  });
}

void RegistryNode::Stop() {
  // Park nothing new and answer what is parked, on the executor, before the log stops.
  std::promise<void> done;
  executor_.Post([this, &done] {
    stopped_ = true;
    if (health_timer_) health_timer_->Cancel();
    if (reap_timer_) reap_timer_->Cancel();
    watches_.Shutdown();
    done.set_value();
  });
  done.get_future().wait();
}

void RegistryNode::TrackEverything() {
  MonoMs now = clock_.NowMono();
  // A restarted node gives every TTL one full period of grace (DESIGN.md: Health).
  for (const auto* c : sm_.ChecksInState("any")) {
    tracker_.OnCheckChanged({c->node(), c->id()}, c, now);
  }
  for (const auto* s : sm_.Sessions()) tracker_.OnSessionChanged(s->id(), s, now);
}

void RegistryNode::RegisterSelf() {
  const rpb::Node* node = sm_.GetNode(opts_.node_name);
  const rpb::Check* serf = sm_.GetCheck(opts_.node_name, kSerfHealth);
  if (node && node->address() == opts_.advertise_address && node->id() == opts_.node_id && serf &&
      serf->status() == "passing") {
    return;
  }
  rpb::Command cmd;
  auto* reg = cmd.mutable_register_node();
  reg->mutable_node()->set_name(opts_.node_name);
  reg->mutable_node()->set_address(opts_.advertise_address);
  reg->mutable_node()->set_id(opts_.node_id);
  auto* check = reg->add_checks();
  check->set_id(kSerfHealth);
  check->set_name("Serf Health Status");
  check->set_node(opts_.node_name);
  check->set_status("passing");
  check->set_output("Agent alive and reachable");
  Propose(std::move(cmd), [this](const Result<registry::ApplyResult>& r) {
    if (!r.ok()) {
      HLOG_ERROR("register_self_failed", "node={} error=\"{}\"", opts_.node_name,
                 r.status().ToString());
    }
  });
}

void RegistryNode::Propose(rpb::Command cmd, ProposeDone done) {
  Propose(std::move(cmd), std::string(), std::move(done));
}

void RegistryNode::Propose(rpb::Command cmd, std::string client_id, ProposeDone done) {
  if (stopped_) {
    done(Status::Unavailable("server is shutting down"));
    return;
  }
  cmd.set_now_unix_ms(clock_.NowUnixMs());
  std::string data = cmd.SerializeAsString();
  log_.raft().Propose(
      Machine::kRegistry, std::move(data), std::move(client_id),
      [this, done = std::move(done)](const Status& s, uint64_t index) {
        if (!s.ok()) {
          done(s);
          return;
        }
        if (index != last_result_index_) {
          done(Status::Internal("no apply result for index " + std::to_string(index)));
          return;
        }
        registry::ApplyResult r = std::move(last_result_);
        last_result_index_ = 0;
        if (!r.status.ok()) {
          done(r.status);
          return;
        }
        done(std::move(r));
      });
}

void RegistryNode::Apply(uint64_t index, const std::string& data) {
  rpb::Command cmd;
  registry::ApplyResult r;
  if (!cmd.ParseFromString(data)) {
    // Cannot happen for entries this binary wrote; keep going so one bad entry cannot stop a node.
    HLOG_ERROR("bad_log_entry", "index={} bytes={}", index, data.size());
    r.status = Status::Internal("log entry " + std::to_string(index) + " does not parse");
  } else {
    r = sm_.Apply(index, cmd);
    if (cmd.has_session_create() && r.status.ok())
      r.created_id = cmd.session_create().session().id();
  }
  if (cmd.has_set_check_status() && r.status.ok() && !r.checks_changed.empty()) {
    TransitionCounter(cmd.set_check_status().status()).Inc();
  }
  AfterApply(r);
  last_result_index_ = index;
  last_result_ = std::move(r);
}

std::string RegistryNode::LastOutcome() const {
  node::pb::RegistryOutcome o;
  o.set_code(static_cast<int32_t>(last_result_.status.code()));
  // Error messages can quote client input: a bounded prefix is enough to repeat the answer.
  constexpr size_t kMaxMessage = 512;
  o.set_message(last_result_.status.message().substr(0, kMaxMessage));
  o.set_success(last_result_.success);
  o.set_failed_op(last_result_.failed_op);
  o.set_created_id(last_result_.created_id);
  return o.SerializeAsString();
}

void RegistryNode::OnDuplicate(uint64_t index, const std::string& outcome) {
  node::pb::RegistryOutcome o;
  registry::ApplyResult r;
  bool known = o.ParseFromString(outcome) && o.code() >= 0 &&
               o.code() <= static_cast<int32_t>(Code::kInternal);
  if (!outcome.empty() && known) {
    if (o.code() != 0) r.status = Status(static_cast<Code>(o.code()), o.message());
    r.success = o.success();
    r.failed_op = o.failed_op();
    r.created_id = o.created_id();
  }
  last_result_index_ = index;
  last_result_ = std::move(r);
}

void RegistryNode::AfterApply(const registry::ApplyResult& r) {
  MonoMs now = clock_.NowMono();
  for (const auto& key : r.checks_changed) {
    tracker_.OnCheckChanged(key, sm_.GetCheck(key.node, key.check_id), now);
  }
  for (const auto& id : r.sessions_changed) tracker_.OnSessionChanged(id, sm_.GetSession(id), now);
  if (!r.changed.empty()) watches_.OnTablesChanged(r.changed);
  ArmHealthTimer();
}

void RegistryNode::Restore(uint64_t index, const std::string& state) {
  rpb::Snapshot snap;  // empty state: an empty registry
  if (!snap.ParseFromString(state)) {
    HLOG_ERROR("bad_snapshot", "index={} bytes={}", index, state.size());
    return;
  }
  sm_.Restore(snap);
  last_result_index_ = 0;
  TrackEverything();
  watches_.OnTablesChanged({registry::Table::kNodes, registry::Table::kServices,
                            registry::Table::kChecks, registry::Table::kKV,
                            registry::Table::kSessions});
  HLOG_INFO("snapshot_restored", "index={} services={} kv={}", index, sm_.ServiceCount(),
            sm_.KVCount());
}

void RegistryNode::ChangeMembership(raft::pb::ConfChange cc, std::function<void(Status)> done) {
  log_.raft().ChangeMembership(std::move(cc), std::move(done));
}

void RegistryNode::TransferLeadership(uint64_t to, int64_t timeout_ms,
                                      std::function<void(Status)> done) {
  log_.raft().TransferLeadershipAndWait(to, timeout_ms, std::move(done));
}

bool RegistryNode::IsLeader() const { return leader_; }

void RegistryNode::OnLeadership(bool leader) {
  leader_ = leader;
  // A new leader cannot know when the last heartbeats arrived: every TTL gets a full period of
  // grace from now (DESIGN.md: Health), and health actions the old role dropped are decided anew.
  if (leader) {
    TrackEverything();
    tracker_.RestartTtls(clock_.NowMono());
  }
  ArmHealthTimer();
}

void RegistryNode::UpdateTtl(const std::string& check_id, const std::string& status,
                             const std::string& output, std::function<void(Status)> done) {
  HeartbeatCounter().Inc();
  if (IsLeader()) return TrackTtlResult(opts_.node_name, check_id, status, output, std::move(done));
  rpb::SetCheckStatus report;
  report.set_node(opts_.node_name);
  report.set_check_id(check_id);
  report.set_status(status);
  report.set_output(output);
  log_.raft().AskLeader(report.SerializeAsString(),
                        [done = std::move(done)](const Result<std::string>& r) {
                          done(r.ok() ? Status::Ok() : r.status());
                        });
}

void RegistryNode::OnLeaderRequest(const std::string& request, RaftLogCallbacks::Reply reply) {
  rpb::SetCheckStatus report;
  if (!report.ParseFromString(request) || report.node().empty() || report.check_id().empty()) {
    return reply(Status::InvalidArgument("malformed TTL report"));
  }
  TrackTtlResult(report.node(), report.check_id(), report.status(), report.output(),
                 [reply = std::move(reply)](const Status& s) {
                   if (s.ok()) return reply(std::string());
                   reply(s);
                 });
}

void RegistryNode::TrackTtlResult(const std::string& node, const std::string& check_id,
                                  const std::string& status, const std::string& output,
                                  std::function<void(Status)> done) {
  const rpb::Check* check = sm_.GetCheck(node, check_id);
  if (!check) {
    done(Status::NotFound("Unknown check ID \"" + check_id +
                          "\". Ensure that the check ID is passed, not the check name."));
    return;
  }
  if (check->definition().ttl_ms() <= 0) {
    done(Status::InvalidArgument("CheckID \"" + check_id + "\" does not have associated TTL"));
    return;
  }
  auto action = tracker_.OnResult({node, check_id}, status, output, clock_.NowMono());
  if (!action.ok()) {
    done(action.status());
    return;
  }
  ArmHealthTimer();
  if (!action->has_value()) {
    done(Status::Ok());
    return;
  }
  rpb::Command cmd;
  auto* set = cmd.mutable_set_check_status();
  set->set_node(node);
  set->set_check_id(check_id);
  set->set_status((*action)->status);
  set->set_output((*action)->output);
  Propose(std::move(cmd), [done = std::move(done)](const Result<registry::ApplyResult>& r) {
    done(r.ok() ? Status::Ok() : r.status());
  });
}

void RegistryNode::ReadBarrier(std::function<void(Status)> done) {
  log_.raft().ReadBarrier(std::move(done));
}

Status RegistryNode::RenewSession(const std::string& id) {
  if (!sm_.GetSession(id)) return Status::NotFound("Session id '" + id + "' not found");
  tracker_.RenewSession(id, clock_.NowMono());
  ArmHealthTimer();
  return Status::Ok();
}

void RegistryNode::ArmHealthTimer() {
  if (stopped_) return;
  auto next = tracker_.NextDeadline();
  if (!next) return;
  if (health_timer_ && health_timer_at_ <= *next) return;  // the armed timer comes first
  if (health_timer_) health_timer_->Cancel();
  health_timer_at_ = *next;
  int64_t delay = std::max<int64_t>(0, *next - clock_.NowMono());
  health_timer_ = executor_.RunAfter(delay, [this] {
    health_timer_.reset();
    OnHealthTimer();
  });
}

void RegistryNode::ArmTombstoneReaper() {
  reap_timer_ = executor_.RunAfter(opts_.tombstone_ttl_ms, [this] {
    if (stopped_) return;
    if (reap_up_to_ > 0 && sm_.TombstoneCount() > 0) {
      rpb::Command cmd;
      cmd.mutable_reap_tombstones()->set_up_to_index(reap_up_to_);
      Propose(std::move(cmd), [](const Result<registry::ApplyResult>& r) {
        if (!r.ok()) HLOG_WARN("reap_tombstones_failed", "error=\"{}\"", r.status().ToString());
      });
    }
    reap_up_to_ = sm_.last_applied();
    ArmTombstoneReaper();
  });
}

void RegistryNode::OnHealthTimer() {
  if (stopped_) return;
  MonoMs now = clock_.NowMono();
  for (const auto& a : tracker_.Tick(now)) ProposeHealthAction(a);
  // Only the leader probes (its results are the ones written); the others keep the schedule.
  for (const auto& key : tracker_.DueProbes(now)) {
    if (IsLeader()) RunProbe(key);
  }
  ArmHealthTimer();
}

void RegistryNode::RunProbe(const CheckKey& key) {
  const rpb::CheckDefinition* def = tracker_.Definition(key);
  if (!def) return;
  int64_t timeout = def->timeout_ms() > 0 ? def->timeout_ms() : 10'000;
  timeout = std::min(timeout, opts_.probe_timeout_ceiling_ms);
  auto on_result = [this, key](net::ProbeResult r) {
    executor_.Post([this, key, r = std::move(r)] { OnProbeResult(key, r.status, r.output); });
  };
  if (!def->http().empty()) {
    std::vector<std::pair<std::string, std::string>> headers(def->header().begin(),
                                                             def->header().end());
    net::ProbeHttp(executor_, def->method().empty() ? "GET" : def->method(), def->http(), headers,
                   def->tls_skip_verify(), timeout, on_result);
  } else if (!def->tcp().empty()) {
    net::ProbeTcp(executor_, def->tcp(), timeout, on_result);
  }
}

void RegistryNode::OnProbeResult(const CheckKey& key, const std::string& status,
                                 const std::string& output) {
  if (stopped_) return;
  HeartbeatCounter().Inc();
  auto action = tracker_.OnResult(key, status, output, clock_.NowMono());
  if (action.ok() && action->has_value()) ProposeHealthAction(**action);
  ArmHealthTimer();
}

void RegistryNode::ProposeHealthAction(const HealthAction& a) {
  if (!IsLeader()) return;
  rpb::Command cmd;
  switch (a.kind) {
    case HealthAction::Kind::kSetStatus: {
      auto* set = cmd.mutable_set_check_status();
      set->set_node(a.node);
      set->set_check_id(a.check_id);
      set->set_status(a.status);
      set->set_output(a.output);
      HLOG_INFO("check_status", "node={} check={} status={}", a.node, a.check_id, a.status);
      break;
    }
    case HealthAction::Kind::kDeregisterService:
      cmd.mutable_deregister()->set_node(a.node);
      cmd.mutable_deregister()->set_service_id(a.service_id);
      HLOG_INFO("deregister_critical", "node={} service={}", a.node, a.service_id);
      break;
    case HealthAction::Kind::kDestroySession:
      cmd.mutable_session_destroy()->set_id(a.session_id);
      HLOG_INFO("session_expired", "session={}", a.session_id);
      break;
  }
  Propose(std::move(cmd), [](const Result<registry::ApplyResult>& r) {
    if (!r.ok() && r.status().code() != Code::kNotFound) {
      HLOG_WARN("health_action_failed", "error=\"{}\"", r.status().ToString());
    }
  });
}

}  // namespace haven::node
