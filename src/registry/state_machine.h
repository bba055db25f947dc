// StateMachine: the registry's replicated state (catalog, health, KV, sessions), changed only by
// applying committed commands. Pure and deterministic so every replica ends in the same state.
#pragma once

#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "base/status.h"
#include "registry/registry.pb.h"

namespace haven::registry {

enum class Table { kNodes, kServices, kChecks, kKV, kSessions };
struct CheckKey {
  std::string node, check_id;
  auto operator<=>(const CheckKey&) const = default;
};

// Limits on what one command may carry; bigger input is rejected with InvalidArgument so that a
// bad client cannot bloat the replicated state.
inline constexpr size_t kMaxNameBytes = 512;
inline constexpr size_t kMaxKeyBytes = 2048;
inline constexpr size_t kMaxValueBytes = size_t{512} * 1024;  // Consul's default kv_max_value_size
inline constexpr size_t kMaxTags = 64;
inline constexpr size_t kMaxMetaPairs = 64;  // Consul's limit on node/service meta
inline constexpr size_t kMaxChecksPerCommand = 64;
inline constexpr size_t kMaxTxnOps = 64;                          // Consul's txn op limit
inline constexpr size_t kMaxCheckOutputBytes = size_t{4} * 1024;  // longer outputs are truncated
inline constexpr size_t kMaxNodeChecksPerSession = 64;

struct ApplyResult {
  Status status;        // not ok: the command was rejected (nothing changed). e.g. InvalidArgument
                        // "invalid session \"x\"", NotFound "Unknown check ID \"x\"..."
  bool success = true;  // CAS / lock / unlock / txn precondition: false = not applied (Consul
                        // answers `false`)
  std::vector<Table> changed;                 // tables whose index moved to this command's index
  std::vector<CheckKey> checks_changed;       // checks added, removed or modified (health tracker
                                              // reconciles these)
  std::vector<std::string> sessions_changed;  // sessions created or destroyed
  std::vector<std::string> kv_keys_changed;   // keys set or deleted
  int failed_op = -1;      // txn: the position of the op that failed (Consul's Errors[].OpIndex)
  std::string created_id;  // session create: the new session's id (a retry is answered with it)
};

class StateMachine {
 public:
  // Applies a committed command at log index `index` (strictly increasing). Deterministic: depends
  // only on the current state, index and cmd (time comes from cmd.now_unix_ms()).
  ApplyResult Apply(uint64_t index, const pb::Command& cmd);
  uint64_t last_applied() const;

  pb::Snapshot TakeSnapshot() const;       // whole state at last_applied()
  void Restore(const pb::Snapshot& snap);  // replaces the state

  uint64_t TableIndex(Table t) const;  // index of the last command that changed t (0: never)
  uint64_t MaxIndex() const;           // max over tables (Consul's index for mixed queries)

  // Nodes
  std::vector<const pb::Node*> Nodes() const;  // sorted by name
  const pb::Node* GetNode(const std::string& name) const;
  // Services
  std::map<std::string, std::vector<std::string>> ServiceNames() const;  // name -> sorted unique
                                                                         // tags
  // Every tag must match; sorted by (node, id).
  std::vector<const pb::Service*> ServiceInstances(const std::string& name,
                                                   const std::vector<std::string>& tags = {}) const;
  std::vector<const pb::Service*> NodeServices(const std::string& node) const;
  const pb::Service* GetService(const std::string& node, const std::string& service_id) const;
  // Checks
  const pb::Check* GetCheck(const std::string& node, const std::string& check_id) const;
  // All checks on a node (node- and service-level).
  std::vector<const pb::Check*> NodeChecks(const std::string& node) const;
  std::vector<const pb::Check*> ServiceChecks(const std::string& node,
                                              const std::string& service_id) const;
  // /v1/health/checks/:name
  std::vector<const pb::Check*> ChecksOfServiceName(const std::string& name) const;
  // "any"|"passing"|"warning"|"critical"
  std::vector<const pb::Check*> ChecksInState(const std::string& state) const;
  // KV
  const pb::KVEntry* GetKV(const std::string& key) const;
  std::vector<const pb::KVEntry*> ListKV(const std::string& prefix) const;  // sorted by key
  // Consul ?keys semantics: with a separator, keys are rolled up to the first separator after the
  // prefix (e.g. "foo/" for "foo/bar/baz" under prefix ""), deduplicated, sorted.
  std::vector<std::string> KeysKV(const std::string& prefix, const std::string& separator) const;
  // Index for a blocking query on KV `prefix` (exact key when !recurse): the max ModifyIndex of the
  // matching entries and of tombstones (deleted keys) matching; if none, TableIndex(kKV).
  uint64_t KVQueryIndex(const std::string& prefix, bool recurse) const;
  int64_t LockDelayUntilUnixMs(const std::string& key) const;
  // Index of the last change to anything a health or catalog query on service `name` reads: its
  // instances, their checks, their nodes and those nodes' checks (0: never existed). It stays after
  // the last instance goes, so a blocking query sees the removal.
  uint64_t ServiceNameIndex(const std::string& name) const;  // 0: none
  // Sessions
  const pb::Session* GetSession(const std::string& id) const;
  std::vector<const pb::Session*> Sessions() const;  // sorted by CreateIndex
  std::vector<const pb::Session*> NodeSessions(const std::string& node) const;
  size_t ServiceCount() const;
  size_t CheckCount() const;
  size_t KVCount() const;
  size_t TombstoneCount() const;
  size_t NodeCount() const;

 private:
  using ServiceKey = std::pair<std::string, std::string>;  // (node, service id)
  struct ApplyCtx;
  struct KVUndo;

  // Commands.
  void ApplyRegisterService(const pb::RegisterService& c, ApplyCtx& ctx);
  void ApplyRegisterNode(const pb::RegisterNode& c, ApplyCtx& ctx);
  void ApplyDeregister(const pb::Deregister& c, ApplyCtx& ctx);
  void ApplySetCheckStatus(const pb::SetCheckStatus& c, ApplyCtx& ctx);
  void ApplyKV(const pb::KVOp& op, ApplyCtx& ctx);
  void ApplySessionCreate(const pb::SessionCreate& c, ApplyCtx& ctx);
  void ApplySessionDestroy(const pb::SessionDestroy& c, ApplyCtx& ctx);
  void ApplyTxn(const pb::Txn& c, ApplyCtx& ctx);
  void ApplyReapTombstones(const pb::ReapTombstones& c);

  // Validation (no state change).
  Status ValidateNode(const pb::Node& n) const;
  Result<pb::Check> PrepareCheck(const pb::Check& in, const std::string& node,
                                 const pb::Service* svc, size_t ordinal, size_t count) const;
  Status ValidateKVOp(const pb::KVOp& op) const;

  // Mutations shared by commands; each keeps the secondary indexes in step and records changes.
  void UpsertNode(const pb::Node& in, ApplyCtx& ctx);
  void UpsertService(pb::Service svc, ApplyCtx& ctx);
  void UpsertCheck(pb::Check chk, ApplyCtx& ctx);
  void RemoveCheck(const CheckKey& key, ApplyCtx& ctx);
  void RemoveService(const ServiceKey& key, ApplyCtx& ctx);
  void RemoveNode(const std::string& name, ApplyCtx& ctx);
  void InvalidateSession(const std::string& id, ApplyCtx& ctx);
  void InvalidateSessionsOnChecks(ApplyCtx& ctx);
  // One KV op: returns false when a precondition fails; records undo steps when `undo` is set.
  Result<bool> DoKVOp(const pb::KVOp& op, ApplyCtx& ctx, std::vector<KVUndo>* undo);
  void PutKV(pb::KVEntry e);
  void EraseKV(const std::string& key);
  void SaveUndo(const std::string& key, std::vector<KVUndo>* undo) const;
  void RollBack(std::vector<KVUndo>& undo);

  // Raw index-maintaining setters.
  void PutService(pb::Service svc);
  void EraseService(const ServiceKey& key);
  void PutCheck(pb::Check chk);
  void EraseCheck(const CheckKey& key);
  void PutSession(pb::Session s);
  void EraseSession(const std::string& id);
  void Clear();
  void TouchServiceName(const std::string& name);
  void TouchServicesOnNode(const std::string& node);

  uint64_t last_applied_ = 0;
  std::array<uint64_t, 5> table_index_{};

  std::map<std::string, pb::Node> nodes_;
  std::map<ServiceKey, pb::Service> services_;
  std::map<CheckKey, pb::Check> checks_;
  std::map<std::string, pb::KVEntry> kv_;
  std::map<std::string, pb::Session> sessions_;
  std::map<std::string, uint64_t> tombstones_;
  std::map<std::string, int64_t> lock_delay_until_;
  std::map<std::string, uint64_t> service_name_index_;
  // Blocking KV queries take at least this index, so that reaping a tombstone never makes a
  // query's index go back (which clients read as "reset").
  uint64_t kv_reaped_index_ = 0;
  uint64_t applying_index_ = 0;  // the index of the command being applied (for the setters)

  // Secondary indexes, rebuilt by Restore.
  std::map<std::string, std::set<ServiceKey>> services_by_name_;
  std::map<std::string, std::set<CheckKey>> checks_by_status_;
  std::map<std::string, std::set<std::string>> sessions_by_node_;
  std::map<std::string, std::set<std::string>> locks_by_session_;  // session -> held keys
};

}  // namespace haven::registry
