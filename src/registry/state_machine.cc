#include "registry/state_machine.h"

#include <algorithm>
#include <string_view>

#include <google/protobuf/util/message_differencer.h>

namespace haven::registry {
namespace {

constexpr const char* kTableNames[] = {"nodes", "services", "checks", "kv", "sessions"};
constexpr int64_t kMaxLockDelayMs = 60'000;  // Consul caps lock delay at 60 s
constexpr int64_t kMaxSessionTtlMs = 24LL * 3600 * 1000;

bool Same(const google::protobuf::Message& a, const google::protobuf::Message& b) {
  return google::protobuf::util::MessageDifferencer::Equals(a, b);
}

bool ValidStatus(const std::string& s) {
  return s == "passing" || s == "warning" || s == "critical";
}

bool HasPrefix(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

std::string Quote(const std::string& s) { return "\"" + s + "\""; }

std::string UnknownCheck(const std::string& id) {
  return "Unknown check ID " + Quote(id) +
         ". Ensure that the check ID is passed, not the check name.";
}

std::string UnknownService(const std::string& id) {
  return "Unknown service ID " + Quote(id) +
         ". Ensure that the service ID is passed, not the service name.";
}

Status CheckSize(const std::string& what, const std::string& v, size_t max) {
  if (v.size() > max) {
    return Status::InvalidArgument(what + " is longer than " + std::to_string(max) + " bytes");
  }
  return Status::Ok();
}

Status CheckMeta(const google::protobuf::Map<std::string, std::string>& meta) {
  if (meta.size() > kMaxMetaPairs) {
    return Status::InvalidArgument("Meta has more than " + std::to_string(kMaxMetaPairs) +
                                   " pairs");
  }
  for (const auto& [k, v] : meta) {
    if (k.empty()) return Status::InvalidArgument("Meta key must not be empty");
    if (Status s = CheckSize("Meta key", k, kMaxNameBytes); !s.ok()) return s;
    if (Status s = CheckSize("Meta value", v, kMaxNameBytes); !s.ok()) return s;
  }
  return Status::Ok();
}

void TruncateOutput(std::string* output) {
  if (output->size() > kMaxCheckOutputBytes) output->resize(kMaxCheckOutputBytes);
}

}  // namespace

// What one Apply call changed; turned into the ApplyResult and table indices at the end.
struct StateMachine::ApplyCtx {
  uint64_t index = 0;
  int64_t now_unix_ms = 0;
  Status status;
  bool success = true;
  int failed_op = -1;
  std::set<Table> tables;
  std::set<CheckKey> checks;
  std::set<std::string> sessions;
  std::set<std::string> keys;

  void Touch(Table t) { tables.insert(t); }
  void Fail(Status s) {
    status = std::move(s);
    success = false;
  }
};

// The state of one key before a txn op touched it, so that a failed txn can be undone.
struct StateMachine::KVUndo {
  std::string key;
  std::optional<pb::KVEntry> entry;
  std::optional<uint64_t> tombstone;
};

// ---- Apply ----

ApplyResult StateMachine::Apply(uint64_t index, const pb::Command& cmd) {
  ApplyResult result;
  if (index <= last_applied_) {
    result.status = Status::Internal("apply index " + std::to_string(index) +
                                     " is not after last applied " + std::to_string(last_applied_));
    result.success = false;
    return result;
  }
  ApplyCtx ctx;
  ctx.index = index;
  applying_index_ = index;
  ctx.now_unix_ms = cmd.now_unix_ms();
  std::erase_if(lock_delay_until_, [&](const auto& kv) { return kv.second <= ctx.now_unix_ms; });
  switch (cmd.op_case()) {
    case pb::Command::kRegisterService:
      ApplyRegisterService(cmd.register_service(), ctx);
      break;
    case pb::Command::kRegisterNode:
      ApplyRegisterNode(cmd.register_node(), ctx);
      break;
    case pb::Command::kDeregister:
      ApplyDeregister(cmd.deregister(), ctx);
      break;
    case pb::Command::kSetCheckStatus:
      ApplySetCheckStatus(cmd.set_check_status(), ctx);
      break;
    case pb::Command::kKv:
      ApplyKV(cmd.kv(), ctx);
      break;
    case pb::Command::kSessionCreate:
      ApplySessionCreate(cmd.session_create(), ctx);
      break;
    case pb::Command::kSessionDestroy:
      ApplySessionDestroy(cmd.session_destroy(), ctx);
      break;
    case pb::Command::kTxn:
      ApplyTxn(cmd.txn(), ctx);
      break;
    case pb::Command::kReapTombstones:
      ApplyReapTombstones(cmd.reap_tombstones());
      break;
    case pb::Command::OP_NOT_SET:
      ctx.Fail(Status::InvalidArgument("empty command"));
      break;
  }
  if (ctx.status.ok()) InvalidateSessionsOnChecks(ctx);
  last_applied_ = index;
  for (Table t : ctx.tables) {
    table_index_[static_cast<size_t>(t)] = index;
    result.changed.push_back(t);
  }
  result.status = std::move(ctx.status);
  result.success = ctx.success;
  result.failed_op = ctx.failed_op;
  result.checks_changed.assign(ctx.checks.begin(), ctx.checks.end());
  result.sessions_changed.assign(ctx.sessions.begin(), ctx.sessions.end());
  result.kv_keys_changed.assign(ctx.keys.begin(), ctx.keys.end());
  return result;
}

uint64_t StateMachine::last_applied() const { return last_applied_; }

// ---- commands ----

void StateMachine::ApplyRegisterService(const pb::RegisterService& c, ApplyCtx& ctx) {
  if (Status s = ValidateNode(c.node()); !s.ok()) return ctx.Fail(s);
  pb::Service svc = c.service();
  if (svc.name().empty()) return ctx.Fail(Status::InvalidArgument("Missing service name"));
  if (svc.id().empty()) svc.set_id(svc.name());
  for (const auto& [what, v] : std::initializer_list<std::pair<std::string, const std::string*>>{
           {"Service name", &svc.name()},
           {"Service ID", &svc.id()},
           {"Service address", &svc.address()}}) {
    if (Status s = CheckSize(what, *v, kMaxNameBytes); !s.ok()) return ctx.Fail(s);
  }
  if (svc.port() < 0 || svc.port() > 65535) {
    return ctx.Fail(Status::InvalidArgument("Invalid service port " + std::to_string(svc.port())));
  }
  if (static_cast<size_t>(svc.tags_size()) > kMaxTags) {
    return ctx.Fail(Status::InvalidArgument("too many service tags"));
  }
  for (const auto& tag : svc.tags()) {
    if (Status s = CheckSize("Service tag", tag, kMaxNameBytes); !s.ok()) return ctx.Fail(s);
  }
  if (Status s = CheckMeta(svc.meta()); !s.ok()) return ctx.Fail(s);
  if (static_cast<size_t>(c.checks_size()) > kMaxChecksPerCommand) {
    return ctx.Fail(Status::InvalidArgument("too many checks"));
  }
  svc.set_node(c.node().name());
  std::vector<pb::Check> checks;
  std::set<std::string> ids;
  for (int i = 0; i < c.checks_size(); ++i) {
    auto chk = PrepareCheck(c.checks(i), c.node().name(), &svc, i, c.checks_size());
    if (!chk.ok()) return ctx.Fail(chk.status());
    if (!ids.insert(chk->id()).second) {
      return ctx.Fail(Status::InvalidArgument("duplicate check ID " + Quote(chk->id())));
    }
    checks.push_back(std::move(chk).value());
  }

  const std::string& node = c.node().name();
  UpsertNode(c.node(), ctx);
  UpsertService(svc, ctx);
  std::vector<CheckKey> stale;
  for (auto it = checks_.lower_bound({node, ""}); it != checks_.end() && it->first.node == node;
       ++it) {
    if (it->second.service_id() == svc.id() && !ids.contains(it->first.check_id)) {
      stale.push_back(it->first);
    }
  }
  for (const auto& key : stale) RemoveCheck(key, ctx);
  for (auto& chk : checks) UpsertCheck(std::move(chk), ctx);
}

void StateMachine::ApplyRegisterNode(const pb::RegisterNode& c, ApplyCtx& ctx) {
  if (Status s = ValidateNode(c.node()); !s.ok()) return ctx.Fail(s);
  if (static_cast<size_t>(c.checks_size()) > kMaxChecksPerCommand) {
    return ctx.Fail(Status::InvalidArgument("too many checks"));
  }
  std::vector<pb::Check> checks;
  std::set<std::string> ids;
  for (int i = 0; i < c.checks_size(); ++i) {
    auto chk = PrepareCheck(c.checks(i), c.node().name(), nullptr, i, c.checks_size());
    if (!chk.ok()) return ctx.Fail(chk.status());
    if (!ids.insert(chk->id()).second) {
      return ctx.Fail(Status::InvalidArgument("duplicate check ID " + Quote(chk->id())));
    }
    checks.push_back(std::move(chk).value());
  }
  UpsertNode(c.node(), ctx);
  for (auto& chk : checks) UpsertCheck(std::move(chk), ctx);
}

void StateMachine::ApplyDeregister(const pb::Deregister& c, ApplyCtx& ctx) {
  if (c.node().empty()) return ctx.Fail(Status::InvalidArgument("Missing node name"));
  CheckKey check_key{c.node(), c.check_id()};
  ServiceKey service_key{c.node(), c.service_id()};
  if (!c.check_id().empty() && !checks_.contains(check_key)) {
    return ctx.Fail(Status::NotFound(UnknownCheck(c.check_id())));
  }
  if (!c.service_id().empty() && !services_.contains(service_key)) {
    return ctx.Fail(Status::NotFound(UnknownService(c.service_id())));
  }
  if (!c.check_id().empty()) RemoveCheck(check_key, ctx);
  if (!c.service_id().empty()) RemoveService(service_key, ctx);
  if (c.check_id().empty() && c.service_id().empty() && nodes_.contains(c.node())) {
    RemoveNode(c.node(), ctx);
  }
}

void StateMachine::ApplySetCheckStatus(const pb::SetCheckStatus& c, ApplyCtx& ctx) {
  if (!ValidStatus(c.status())) {
    return ctx.Fail(Status::InvalidArgument("Invalid check status " + Quote(c.status())));
  }
  auto it = checks_.find({c.node(), c.check_id()});
  if (it == checks_.end()) return ctx.Fail(Status::NotFound(UnknownCheck(c.check_id())));
  std::string output = c.output();
  TruncateOutput(&output);
  if (it->second.status() == c.status() && it->second.output() == output) return;
  CheckKey key = it->first;  // copy: PutCheck replaces the map node `it` points at
  pb::Check chk = it->second;
  chk.set_status(c.status());
  chk.set_output(output);
  chk.set_modify_index(ctx.index);
  PutCheck(std::move(chk));
  ctx.Touch(Table::kChecks);
  ctx.checks.insert(std::move(key));
}

void StateMachine::ApplyKV(const pb::KVOp& op, ApplyCtx& ctx) {
  if (Status s = ValidateKVOp(op); !s.ok()) return ctx.Fail(s);
  auto applied = DoKVOp(op, ctx, nullptr);
  if (!applied.ok()) return ctx.Fail(applied.status());
  ctx.success = *applied;
}

void StateMachine::ApplySessionCreate(const pb::SessionCreate& c, ApplyCtx& ctx) {
  pb::Session s = c.session();
  if (s.id().empty()) return ctx.Fail(Status::InvalidArgument("Missing session ID"));
  if (Status st = CheckSize("Session ID", s.id(), kMaxNameBytes); !st.ok()) return ctx.Fail(st);
  if (Status st = CheckSize("Session name", s.name(), kMaxNameBytes); !st.ok()) return ctx.Fail(st);
  if (sessions_.contains(s.id())) {
    return ctx.Fail(Status::InvalidArgument("Session ID " + Quote(s.id()) + " already exists"));
  }
  if (!nodes_.contains(s.node())) {
    return ctx.Fail(Status::InvalidArgument("Missing node registration"));
  }
  if (s.behavior() != "" && s.behavior() != "release" && s.behavior() != "delete") {
    return ctx.Fail(Status::InvalidArgument("Invalid Behavior setting " + Quote(s.behavior())));
  }
  if (s.ttl_ms() < 0 || s.ttl_ms() > kMaxSessionTtlMs) {
    return ctx.Fail(Status::InvalidArgument("Invalid session TTL"));
  }
  if (s.lock_delay_ms() < 0 || s.lock_delay_ms() > kMaxLockDelayMs) {
    return ctx.Fail(Status::InvalidArgument("Invalid lock delay"));
  }
  if (static_cast<size_t>(s.node_checks_size()) > kMaxNodeChecksPerSession) {
    return ctx.Fail(Status::InvalidArgument("too many session checks"));
  }
  for (const auto& id : s.node_checks()) {
    auto it = checks_.find({s.node(), id});
    if (it == checks_.end()) {
      return ctx.Fail(Status::InvalidArgument("Missing check '" + id + "' registration"));
    }
    if (it->second.status() == "critical") {
      return ctx.Fail(Status::InvalidArgument("Check '" + id + "' is in critical state"));
    }
  }
  s.set_create_index(ctx.index);
  s.set_modify_index(ctx.index);
  ctx.sessions.insert(s.id());
  PutSession(std::move(s));
  ctx.Touch(Table::kSessions);
}

void StateMachine::ApplySessionDestroy(const pb::SessionDestroy& c, ApplyCtx& ctx) {
  if (sessions_.contains(c.id())) InvalidateSession(c.id(), ctx);
}

void StateMachine::ApplyTxn(const pb::Txn& c, ApplyCtx& ctx) {
  if (static_cast<size_t>(c.ops_size()) > kMaxTxnOps) {
    return ctx.Fail(Status::InvalidArgument("Transaction contains too many operations (" +
                                            std::to_string(c.ops_size()) + " > " +
                                            std::to_string(kMaxTxnOps) + ")"));
  }
  for (const auto& op : c.ops()) {
    if (Status s = ValidateKVOp(op); !s.ok()) return ctx.Fail(s);
  }
  // Ops run against the live maps with an undo log: cheaper than copying the whole KV store.
  ApplyCtx scratch;
  scratch.index = ctx.index;
  scratch.now_unix_ms = ctx.now_unix_ms;
  std::vector<KVUndo> undo;
  for (int i = 0; i < c.ops_size(); ++i) {
    auto applied = DoKVOp(c.ops(i), scratch, &undo);
    if (!applied.ok() || !*applied) {
      RollBack(undo);
      ctx.failed_op = i;
      if (!applied.ok()) return ctx.Fail(applied.status());
      ctx.success = false;
      return;
    }
  }
  ctx.tables.insert(scratch.tables.begin(), scratch.tables.end());
  ctx.keys.insert(scratch.keys.begin(), scratch.keys.end());
}

void StateMachine::ApplyReapTombstones(const pb::ReapTombstones& c) {
  std::erase_if(tombstones_, [&](const auto& kv) {
    if (kv.second > c.up_to_index()) return false;
    kv_reaped_index_ = std::max(kv_reaped_index_, kv.second);
    return true;
  });
}

// ---- validation ----

Status StateMachine::ValidateNode(const pb::Node& n) const {
  if (n.name().empty()) return Status::InvalidArgument("Missing node name");
  if (Status s = CheckSize("Node name", n.name(), kMaxNameBytes); !s.ok()) return s;
  if (Status s = CheckSize("Node address", n.address(), kMaxNameBytes); !s.ok()) return s;
  if (Status s = CheckMeta(n.meta()); !s.ok()) return s;
  return CheckMeta(n.tagged_addresses());
}

Result<pb::Check> StateMachine::PrepareCheck(const pb::Check& in, const std::string& node,
                                             const pb::Service* svc, size_t ordinal,
                                             size_t count) const {
  pb::Check chk = in;
  chk.set_node(node);
  chk.clear_create_index();
  chk.clear_modify_index();
  if (svc == nullptr && !chk.service_id().empty()) {
    auto it = services_.find({node, chk.service_id()});
    if (it == services_.end()) return Status::InvalidArgument(UnknownService(chk.service_id()));
    svc = &it->second;
  }
  if (svc != nullptr) {
    chk.set_service_id(svc->id());
    chk.set_service_name(svc->name());
    *chk.mutable_service_tags() = svc->tags();
  } else {
    chk.clear_service_name();
    chk.clear_service_tags();
  }
  if (chk.id().empty()) {
    if (svc == nullptr) return Status::InvalidArgument("Missing check ID");
    // Consul's agent naming: "service:<id>", numbered when a service has several checks.
    chk.set_id("service:" + svc->id() + (count > 1 ? ":" + std::to_string(ordinal + 1) : ""));
  }
  if (chk.name().empty()) {
    chk.set_name(svc != nullptr ? "Service '" + svc->name() + "' check" : chk.id());
  }
  if (!chk.status().empty() && !ValidStatus(chk.status())) {
    return Status::InvalidArgument("Invalid check status " + Quote(chk.status()));
  }
  for (const auto& [what, v] : std::initializer_list<std::pair<std::string, const std::string*>>{
           {"Check ID", &chk.id()},
           {"Check name", &chk.name()},
           {"Check notes", &chk.notes()},
           {"Check HTTP", &chk.definition().http()},
           {"Check TCP", &chk.definition().tcp()}}) {
    if (Status s = CheckSize(what, *v, kMaxKeyBytes); !s.ok()) return s;
  }
  const pb::CheckDefinition& d = chk.definition();
  if (d.ttl_ms() < 0 || d.interval_ms() < 0 || d.timeout_ms() < 0 ||
      d.deregister_critical_after_ms() < 0 || d.success_before_passing() < 0 ||
      d.failures_before_critical() < 0) {
    return Status::InvalidArgument("Check " + Quote(chk.id()) +
                                   " has a negative duration or count");
  }
  if (Status s = CheckMeta(d.header()); !s.ok()) return s;
  TruncateOutput(chk.mutable_output());
  return chk;
}

Status StateMachine::ValidateKVOp(const pb::KVOp& op) const {
  if (!pb::KVOp::Verb_IsValid(op.verb())) return Status::InvalidArgument("Invalid KV operation");
  if (op.key().empty() && op.verb() != pb::KVOp::DELETE_TREE) {
    return Status::InvalidArgument("Missing key name");
  }
  if (Status s = CheckSize("Key", op.key(), kMaxKeyBytes); !s.ok()) return s;
  if (op.value().size() > kMaxValueBytes) {
    return Status::TooLarge("Value exceeds " + std::to_string(kMaxValueBytes) + " byte limit");
  }
  if ((op.verb() == pb::KVOp::LOCK || op.verb() == pb::KVOp::UNLOCK) && op.session().empty()) {
    return Status::InvalidArgument("Missing session");
  }
  return Status::Ok();
}

// ---- catalog mutations ----

void StateMachine::UpsertNode(const pb::Node& in, ApplyCtx& ctx) {
  auto it = nodes_.find(in.name());
  if (it == nodes_.end()) {
    pb::Node n = in;
    n.set_create_index(ctx.index);
    n.set_modify_index(ctx.index);
    nodes_.emplace(n.name(), std::move(n));
    ctx.Touch(Table::kNodes);
    return;
  }
  pb::Node merged = it->second;
  if (!in.address().empty()) merged.set_address(in.address());
  if (!in.id().empty()) merged.set_id(in.id());
  if (!in.meta().empty()) *merged.mutable_meta() = in.meta();
  if (!in.tagged_addresses().empty()) *merged.mutable_tagged_addresses() = in.tagged_addresses();
  if (Same(merged, it->second)) return;
  merged.set_modify_index(ctx.index);
  it->second = std::move(merged);
  TouchServicesOnNode(it->first);
  ctx.Touch(Table::kNodes);
}

void StateMachine::UpsertService(pb::Service svc, ApplyCtx& ctx) {
  auto it = services_.find({svc.node(), svc.id()});
  if (it != services_.end()) {
    svc.set_create_index(it->second.create_index());
    svc.set_modify_index(it->second.modify_index());
    if (Same(svc, it->second)) return;
  } else {
    svc.set_create_index(ctx.index);
  }
  svc.set_modify_index(ctx.index);
  PutService(std::move(svc));
  ctx.Touch(Table::kServices);
}

void StateMachine::UpsertCheck(pb::Check chk, ApplyCtx& ctx) {
  CheckKey key{chk.node(), chk.id()};
  auto it = checks_.find(key);
  if (it != checks_.end()) {
    // Re-registration keeps the live status unless the command states one.
    if (chk.status().empty()) chk.set_status(it->second.status());
    if (chk.output().empty()) chk.set_output(it->second.output());
    chk.set_create_index(it->second.create_index());
    chk.set_modify_index(it->second.modify_index());
    if (Same(chk, it->second)) return;
  } else {
    if (chk.status().empty()) chk.set_status("critical");
    chk.set_create_index(ctx.index);
  }
  chk.set_modify_index(ctx.index);
  PutCheck(std::move(chk));
  ctx.Touch(Table::kChecks);
  ctx.checks.insert(key);
}

void StateMachine::RemoveCheck(const CheckKey& key, ApplyCtx& ctx) {
  if (!checks_.contains(key)) return;
  EraseCheck(key);
  ctx.Touch(Table::kChecks);
  ctx.checks.insert(key);
}

void StateMachine::RemoveService(const ServiceKey& key, ApplyCtx& ctx) {
  std::vector<CheckKey> owned;
  for (auto it = checks_.lower_bound({key.first, ""});
       it != checks_.end() && it->first.node == key.first; ++it) {
    if (it->second.service_id() == key.second) owned.push_back(it->first);
  }
  for (const auto& ck : owned) RemoveCheck(ck, ctx);
  if (!services_.contains(key)) return;
  EraseService(key);
  ctx.Touch(Table::kServices);
}

void StateMachine::RemoveNode(const std::string& name, ApplyCtx& ctx) {
  if (auto it = sessions_by_node_.find(name); it != sessions_by_node_.end()) {
    std::set<std::string> ids = it->second;  // copy: invalidation edits the index
    for (const auto& id : ids) InvalidateSession(id, ctx);
  }
  std::vector<ServiceKey> services;
  for (auto it = services_.lower_bound({name, ""});
       it != services_.end() && it->first.first == name; ++it) {
    services.push_back(it->first);
  }
  for (const auto& key : services) RemoveService(key, ctx);
  std::vector<CheckKey> checks;
  for (auto it = checks_.lower_bound({name, ""}); it != checks_.end() && it->first.node == name;
       ++it) {
    checks.push_back(it->first);
  }
  for (const auto& key : checks) RemoveCheck(key, ctx);
  nodes_.erase(name);
  ctx.Touch(Table::kNodes);
}

// ---- sessions ----

void StateMachine::InvalidateSession(const std::string& id, ApplyCtx& ctx) {
  auto sit = sessions_.find(id);
  if (sit == sessions_.end()) return;
  const pb::Session& s = sit->second;
  std::set<std::string> held;
  if (auto it = locks_by_session_.find(id); it != locks_by_session_.end()) held = it->second;
  for (const auto& key : held) {
    if (s.lock_delay_ms() > 0) lock_delay_until_[key] = ctx.now_unix_ms + s.lock_delay_ms();
    if (s.behavior() == "delete") {
      EraseKV(key);
      tombstones_[key] = ctx.index;
    } else {
      pb::KVEntry e = kv_.at(key);
      e.clear_session();
      e.set_modify_index(ctx.index);
      PutKV(std::move(e));
    }
    ctx.keys.insert(key);
    ctx.Touch(Table::kKV);
  }
  EraseSession(id);
  ctx.sessions.insert(id);
  ctx.Touch(Table::kSessions);
}

void StateMachine::InvalidateSessionsOnChecks(ApplyCtx& ctx) {
  std::set<std::string> doomed;
  for (const auto& key : ctx.checks) {
    auto cit = checks_.find(key);
    if (cit != checks_.end() && cit->second.status() != "critical") continue;
    auto nit = sessions_by_node_.find(key.node);
    if (nit == sessions_by_node_.end()) continue;
    for (const auto& sid : nit->second) {
      const auto& ids = sessions_.at(sid).node_checks();
      if (std::find(ids.begin(), ids.end(), key.check_id) != ids.end()) doomed.insert(sid);
    }
  }
  for (const auto& sid : doomed) InvalidateSession(sid, ctx);
}

// ---- KV ----

Result<bool> StateMachine::DoKVOp(const pb::KVOp& op, ApplyCtx& ctx, std::vector<KVUndo>* undo) {
  auto it = kv_.find(op.key());
  const pb::KVEntry* existing = it == kv_.end() ? nullptr : &it->second;
  auto write = [&](pb::KVEntry e) {
    SaveUndo(op.key(), undo);
    e.set_modify_index(ctx.index);
    tombstones_.erase(e.key());
    PutKV(std::move(e));
    ctx.keys.insert(op.key());
    ctx.Touch(Table::kKV);
  };
  auto base = [&]() {
    if (existing != nullptr) return *existing;
    pb::KVEntry e;
    e.set_key(op.key());
    e.set_create_index(ctx.index);
    return e;
  };
  auto remove = [&](const std::string& key) {
    SaveUndo(key, undo);
    EraseKV(key);
    tombstones_[key] = ctx.index;
    ctx.keys.insert(key);
    ctx.Touch(Table::kKV);
  };
  switch (op.verb()) {
    case pb::KVOp::CAS:
      if (op.cas_index() == 0
              ? existing != nullptr
              : (existing == nullptr || existing->modify_index() != op.cas_index())) {
        return false;
      }
      [[fallthrough]];
    case pb::KVOp::SET: {
      pb::KVEntry e = base();
      e.set_value(op.value());
      e.set_flags(op.flags());
      write(std::move(e));
      return true;
    }
    case pb::KVOp::DELETE:
      if (existing != nullptr) remove(op.key());
      return true;
    case pb::KVOp::DELETE_CAS:
      if (existing == nullptr || existing->modify_index() != op.cas_index()) return false;
      remove(op.key());
      return true;
    case pb::KVOp::DELETE_TREE: {
      std::vector<std::string> keys;
      for (auto t = kv_.lower_bound(op.key()); t != kv_.end() && HasPrefix(t->first, op.key());
           ++t) {
        keys.push_back(t->first);
      }
      for (const auto& key : keys) remove(key);
      return true;
    }
    case pb::KVOp::LOCK: {
      if (!sessions_.contains(op.session())) {
        return Status::InvalidArgument("invalid session " + Quote(op.session()));
      }
      if (existing != nullptr && !existing->session().empty() &&
          existing->session() != op.session()) {
        return false;
      }
      bool held = existing != nullptr && existing->session() == op.session();
      if (!held) {
        auto d = lock_delay_until_.find(op.key());
        if (d != lock_delay_until_.end() && ctx.now_unix_ms < d->second) return false;
      }
      pb::KVEntry e = base();
      e.set_value(op.value());
      e.set_flags(op.flags());
      if (!held) {
        e.set_session(op.session());
        e.set_lock_index(e.lock_index() + 1);
      }
      write(std::move(e));
      return true;
    }
    case pb::KVOp::UNLOCK: {
      if (existing == nullptr || existing->session() != op.session()) return false;
      pb::KVEntry e = *existing;
      e.clear_session();
      e.set_value(op.value());
      e.set_flags(op.flags());
      write(std::move(e));
      return true;
    }
    default:
      return Status::InvalidArgument("Invalid KV operation");
  }
}

void StateMachine::SaveUndo(const std::string& key, std::vector<KVUndo>* undo) const {
  if (undo == nullptr) return;
  KVUndo u{key, std::nullopt, std::nullopt};
  if (auto it = kv_.find(key); it != kv_.end()) u.entry = it->second;
  if (auto it = tombstones_.find(key); it != tombstones_.end()) u.tombstone = it->second;
  undo->push_back(std::move(u));
}

void StateMachine::RollBack(std::vector<KVUndo>& undo) {
  for (auto it = undo.rbegin(); it != undo.rend(); ++it) {
    if (it->entry) {
      PutKV(std::move(*it->entry));
    } else {
      EraseKV(it->key);
    }
    if (it->tombstone) {
      tombstones_[it->key] = *it->tombstone;
    } else {
      tombstones_.erase(it->key);
    }
  }
}

void StateMachine::PutKV(pb::KVEntry e) {
  EraseKV(e.key());
  if (!e.session().empty()) locks_by_session_[e.session()].insert(e.key());
  std::string key = e.key();
  kv_.emplace(std::move(key), std::move(e));
}

void StateMachine::EraseKV(const std::string& key) {
  auto it = kv_.find(key);
  if (it == kv_.end()) return;
  if (!it->second.session().empty()) {
    auto lit = locks_by_session_.find(it->second.session());
    if (lit != locks_by_session_.end()) {
      lit->second.erase(key);
      if (lit->second.empty()) locks_by_session_.erase(lit);
    }
  }
  kv_.erase(it);
}

// ---- index-maintaining setters ----

void StateMachine::TouchServiceName(const std::string& name) {
  if (applying_index_ > 0) service_name_index_[name] = applying_index_;
}

void StateMachine::TouchServicesOnNode(const std::string& node) {
  for (auto it = services_.lower_bound({node, ""});
       it != services_.end() && it->first.first == node; ++it) {
    TouchServiceName(it->second.name());
  }
}

uint64_t StateMachine::ServiceNameIndex(const std::string& name) const {
  auto it = service_name_index_.find(name);
  return it == service_name_index_.end() ? 0 : it->second;
}

void StateMachine::PutService(pb::Service svc) {
  ServiceKey key{svc.node(), svc.id()};
  EraseService(key);
  TouchServiceName(svc.name());
  services_by_name_[svc.name()].insert(key);
  services_.emplace(std::move(key), std::move(svc));
}

void StateMachine::EraseService(const ServiceKey& key) {
  auto it = services_.find(key);
  if (it == services_.end()) return;
  TouchServiceName(it->second.name());
  auto nit = services_by_name_.find(it->second.name());
  if (nit != services_by_name_.end()) {
    nit->second.erase(key);
    if (nit->second.empty()) services_by_name_.erase(nit);
  }
  services_.erase(it);
}

void StateMachine::PutCheck(pb::Check chk) {
  CheckKey key{chk.node(), chk.id()};
  EraseCheck(key);
  if (chk.service_name().empty()) {
    TouchServicesOnNode(chk.node());
  } else {
    TouchServiceName(chk.service_name());
  }
  checks_by_status_[chk.status()].insert(key);
  checks_.emplace(std::move(key), std::move(chk));
}

void StateMachine::EraseCheck(const CheckKey& key) {
  auto it = checks_.find(key);
  if (it == checks_.end()) return;
  if (it->second.service_name().empty()) {
    TouchServicesOnNode(it->second.node());
  } else {
    TouchServiceName(it->second.service_name());
  }
  auto sit = checks_by_status_.find(it->second.status());
  if (sit != checks_by_status_.end()) {
    sit->second.erase(key);
    if (sit->second.empty()) checks_by_status_.erase(sit);
  }
  checks_.erase(it);
}

void StateMachine::PutSession(pb::Session s) {
  EraseSession(s.id());
  sessions_by_node_[s.node()].insert(s.id());
  std::string id = s.id();
  sessions_.emplace(std::move(id), std::move(s));
}

void StateMachine::EraseSession(const std::string& id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  auto nit = sessions_by_node_.find(it->second.node());
  if (nit != sessions_by_node_.end()) {
    nit->second.erase(id);
    if (nit->second.empty()) sessions_by_node_.erase(nit);
  }
  sessions_.erase(it);
}

void StateMachine::Clear() { *this = StateMachine(); }

// ---- snapshots ----

pb::Snapshot StateMachine::TakeSnapshot() const {
  pb::Snapshot snap;
  snap.set_index(last_applied_);
  for (const auto& [_, n] : nodes_) *snap.add_nodes() = n;
  for (const auto& [_, s] : services_) *snap.add_services() = s;
  for (const auto& [_, c] : checks_) *snap.add_checks() = c;
  for (const auto& [_, e] : kv_) *snap.add_kv() = e;
  for (const auto& [_, s] : sessions_) *snap.add_sessions() = s;
  for (size_t i = 0; i < table_index_.size(); ++i) {
    (*snap.mutable_table_index())[kTableNames[i]] = table_index_[i];
  }
  for (const auto& [k, v] : tombstones_) (*snap.mutable_kv_tombstones())[k] = v;
  for (const auto& [k, v] : lock_delay_until_) (*snap.mutable_lock_delay_until_unix_ms())[k] = v;
  for (const auto& [k, v] : service_name_index_) (*snap.mutable_service_name_index())[k] = v;
  snap.set_kv_reaped_index(kv_reaped_index_);
  return snap;
}

void StateMachine::Restore(const pb::Snapshot& snap) {
  Clear();
  last_applied_ = snap.index();
  for (const auto& n : snap.nodes()) nodes_[n.name()] = n;
  for (const auto& s : snap.services()) PutService(s);
  for (const auto& c : snap.checks()) PutCheck(c);
  for (const auto& e : snap.kv()) PutKV(e);
  for (const auto& s : snap.sessions()) PutSession(s);
  for (size_t i = 0; i < table_index_.size(); ++i) {
    auto it = snap.table_index().find(kTableNames[i]);
    table_index_[i] = it == snap.table_index().end() ? 0 : it->second;
  }
  tombstones_.insert(snap.kv_tombstones().begin(), snap.kv_tombstones().end());
  lock_delay_until_.insert(snap.lock_delay_until_unix_ms().begin(),
                           snap.lock_delay_until_unix_ms().end());
  service_name_index_.insert(snap.service_name_index().begin(), snap.service_name_index().end());
  kv_reaped_index_ = snap.kv_reaped_index();
}

// ---- queries ----

uint64_t StateMachine::TableIndex(Table t) const { return table_index_[static_cast<size_t>(t)]; }

uint64_t StateMachine::MaxIndex() const {
  return *std::max_element(table_index_.begin(), table_index_.end());
}

std::vector<const pb::Node*> StateMachine::Nodes() const {
  std::vector<const pb::Node*> out;
  out.reserve(nodes_.size());
  for (const auto& [_, n] : nodes_) out.push_back(&n);
  return out;
}

const pb::Node* StateMachine::GetNode(const std::string& name) const {
  auto it = nodes_.find(name);
  return it == nodes_.end() ? nullptr : &it->second;
}

std::map<std::string, std::vector<std::string>> StateMachine::ServiceNames() const {
  std::map<std::string, std::vector<std::string>> out;
  for (const auto& [name, keys] : services_by_name_) {
    std::set<std::string> tags;
    for (const auto& key : keys) {
      const auto& t = services_.at(key).tags();
      tags.insert(t.begin(), t.end());
    }
    out[name].assign(tags.begin(), tags.end());
  }
  return out;
}

std::vector<const pb::Service*> StateMachine::ServiceInstances(
    const std::string& name, const std::vector<std::string>& tags) const {
  std::vector<const pb::Service*> out;
  auto it = services_by_name_.find(name);
  if (it == services_by_name_.end()) return out;
  for (const auto& key : it->second) {
    const pb::Service& svc = services_.at(key);
    bool all = std::all_of(tags.begin(), tags.end(), [&](const std::string& tag) {
      return std::find(svc.tags().begin(), svc.tags().end(), tag) != svc.tags().end();
    });
    if (all) out.push_back(&svc);
  }
  return out;
}

std::vector<const pb::Service*> StateMachine::NodeServices(const std::string& node) const {
  std::vector<const pb::Service*> out;
  for (auto it = services_.lower_bound({node, ""});
       it != services_.end() && it->first.first == node; ++it) {
    out.push_back(&it->second);
  }
  return out;
}

const pb::Service* StateMachine::GetService(const std::string& node,
                                            const std::string& service_id) const {
  auto it = services_.find({node, service_id});
  return it == services_.end() ? nullptr : &it->second;
}

const pb::Check* StateMachine::GetCheck(const std::string& node,
                                        const std::string& check_id) const {
  auto it = checks_.find({node, check_id});
  return it == checks_.end() ? nullptr : &it->second;
}

std::vector<const pb::Check*> StateMachine::NodeChecks(const std::string& node) const {
  std::vector<const pb::Check*> out;
  for (auto it = checks_.lower_bound({node, ""}); it != checks_.end() && it->first.node == node;
       ++it) {
    out.push_back(&it->second);
  }
  return out;
}

std::vector<const pb::Check*> StateMachine::ServiceChecks(const std::string& node,
                                                          const std::string& service_id) const {
  std::vector<const pb::Check*> out;
  for (const pb::Check* c : NodeChecks(node)) {
    if (c->service_id() == service_id) out.push_back(c);
  }
  return out;
}

std::vector<const pb::Check*> StateMachine::ChecksOfServiceName(const std::string& name) const {
  std::vector<const pb::Check*> out;
  for (const pb::Service* svc : ServiceInstances(name)) {
    for (const pb::Check* c : ServiceChecks(svc->node(), svc->id())) out.push_back(c);
  }
  return out;
}

std::vector<const pb::Check*> StateMachine::ChecksInState(const std::string& state) const {
  std::vector<const pb::Check*> out;
  if (state == "any") {
    for (const auto& [_, c] : checks_) out.push_back(&c);
    return out;
  }
  auto it = checks_by_status_.find(state);
  if (it == checks_by_status_.end()) return out;
  for (const auto& key : it->second) out.push_back(&checks_.at(key));
  return out;
}

const pb::KVEntry* StateMachine::GetKV(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

std::vector<const pb::KVEntry*> StateMachine::ListKV(const std::string& prefix) const {
  std::vector<const pb::KVEntry*> out;
  for (auto it = kv_.lower_bound(prefix); it != kv_.end() && HasPrefix(it->first, prefix); ++it) {
    out.push_back(&it->second);
  }
  return out;
}

std::vector<std::string> StateMachine::KeysKV(const std::string& prefix,
                                              const std::string& separator) const {
  std::vector<std::string> out;
  for (auto it = kv_.lower_bound(prefix); it != kv_.end() && HasPrefix(it->first, prefix); ++it) {
    const std::string& key = it->first;
    size_t pos = separator.empty() ? std::string::npos : key.find(separator, prefix.size());
    std::string rolled = pos == std::string::npos ? key : key.substr(0, pos + separator.size());
    if (out.empty() || out.back() != rolled) out.push_back(std::move(rolled));
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

uint64_t StateMachine::KVQueryIndex(const std::string& prefix, bool recurse) const {
  uint64_t max = 0;
  if (!recurse) {
    if (auto it = kv_.find(prefix); it != kv_.end()) max = it->second.modify_index();
    if (auto it = tombstones_.find(prefix); it != tombstones_.end())
      max = std::max(max, it->second);
  } else {
    for (const pb::KVEntry* e : ListKV(prefix)) max = std::max(max, e->modify_index());
    for (auto it = tombstones_.lower_bound(prefix);
         it != tombstones_.end() && HasPrefix(it->first, prefix); ++it) {
      max = std::max(max, it->second);
    }
  }
  if (max == 0) return TableIndex(Table::kKV);
  return std::max(max, kv_reaped_index_);
}

int64_t StateMachine::LockDelayUntilUnixMs(const std::string& key) const {
  auto it = lock_delay_until_.find(key);
  return it == lock_delay_until_.end() ? 0 : it->second;
}

const pb::Session* StateMachine::GetSession(const std::string& id) const {
  auto it = sessions_.find(id);
  return it == sessions_.end() ? nullptr : &it->second;
}

std::vector<const pb::Session*> StateMachine::Sessions() const {
  std::vector<const pb::Session*> out;
  out.reserve(sessions_.size());
  for (const auto& [_, s] : sessions_) out.push_back(&s);
  std::sort(out.begin(), out.end(), [](const pb::Session* a, const pb::Session* b) {
    return std::make_pair(a->create_index(), a->id()) < std::make_pair(b->create_index(), b->id());
  });
  return out;
}

std::vector<const pb::Session*> StateMachine::NodeSessions(const std::string& node) const {
  std::vector<const pb::Session*> out;
  auto it = sessions_by_node_.find(node);
  if (it == sessions_by_node_.end()) return out;
  for (const auto& id : it->second) out.push_back(&sessions_.at(id));
  std::sort(out.begin(), out.end(), [](const pb::Session* a, const pb::Session* b) {
    return a->create_index() < b->create_index();
  });
  return out;
}

size_t StateMachine::ServiceCount() const { return services_.size(); }
size_t StateMachine::CheckCount() const { return checks_.size(); }
size_t StateMachine::KVCount() const { return kv_.size(); }
size_t StateMachine::TombstoneCount() const { return tombstones_.size(); }
size_t StateMachine::NodeCount() const { return nodes_.size(); }

}  // namespace haven::registry
