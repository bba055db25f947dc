// RegistryNode: the registry as a running service. It joins the pure state machine, the replicated
// log, the health tracker (TTLs, probes, session expiry) and the blocking-query hub. Everything it
// does runs on one executor thread, so the state needs no locks; the HTTP API calls it from there.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "base/clock.h"
#include "net/io_runtime.h"
#include "node/node_log.h"
#include "node/watch_hub.h"
#include "registry/health_tracker.h"
#include "registry/state_machine.h"

namespace haven::node {

struct RegistryNodeOptions {
  std::string node_name;
  std::string node_id;  // a UUID kept in the data dir (Consul's node ID)
  std::string advertise_address = "127.0.0.1";
  int64_t probe_timeout_ceiling_ms = 60'000;
  // Tombstones of deleted keys (for blocking queries) are reaped after this long (1 to 2 periods).
  int64_t tombstone_ttl_ms = int64_t{15} * 60 * 1000;
};

class RegistryNode {
 public:
  using ProposeDone = std::function<void(Result<registry::ApplyResult>)>;

  // Registers itself on `log` (as Machine::kRegistry); construct before log.Start().
  RegistryNode(RegistryNodeOptions opts, net::IoRuntime& executor, NodeLog& log,
               const Clock& clock);
  ~RegistryNode();

  // After log.Start() (which restored the latest snapshot and re-applied the log): registers this
  // node (with its serfHealth check) and arms health timers. The executor must be running.
  void Start();
  // Answers parked queries and stops timers, before the log stops. Call from outside the
  // executor.
  void Stop();

  // --- on the executor thread only ---
  // Stamps the time, appends the command to the log and answers once it is applied (or failed).
  // A rejected command (ApplyResult::status not ok) is reported as an error Result.
  void Propose(registry::pb::Command cmd, ProposeDone done);
  // The same for a client request with an id (X-Haven-Request-Id, "" for none): applied at most
  // once across retries on any node within the dedupe window; a retry gets the first outcome.
  void Propose(registry::pb::Command cmd, std::string client_id, ProposeDone done);
  // A TTL heartbeat (/v1/agent/check/pass|warn|fail|update) for a check of this node. The leader
  // tracks TTLs, so a follower passes it on to the leader (no log write); the leader writes only
  // when the status changes.
  void UpdateTtl(const std::string& check_id, const std::string& status, const std::string& output,
                 std::function<void(Status)> done);
  // Runs `done` once this node has applied everything committed before the call (a linearizable
  // read point), or with Unavailable when no leader confirms it in time.
  void ReadBarrier(std::function<void(Status)> done);
  // Session renewal: resets its TTL. NotFound if the session does not exist.
  Status RenewSession(const std::string& id);

  // Cluster administration: pass-throughs to RaftLog (`done` runs on the executor).
  void ChangeMembership(raft::pb::ConfChange cc, std::function<void(Status)> done);
  void TransferLeadership(uint64_t to, int64_t timeout_ms, std::function<void(Status)> done);

  const registry::StateMachine& state() const { return sm_; }
  RaftLogStatus raft_status() const { return log_.raft().status(); }
  WatchHub& watches() { return watches_; }
  const std::string& node_name() const { return opts_.node_name; }
  const std::string& advertise_address() const { return opts_.advertise_address; }
  int64_t NowUnixMs() const { return clock_.NowUnixMs(); }

 private:
  // A snapshot from the log (at start, or sent by the leader): replaces the whole state.
  void Restore(uint64_t index, const std::string& state);
  // Health actions (TTL expiry, probe results) are written by the leader only: every node tracks,
  // one decides.
  bool IsLeader() const;
  void OnLeadership(bool leader);
  // A follower's TTL heartbeat (a serialized SetCheckStatus), on the leader.
  void OnLeaderRequest(const std::string& request, RaftLogCallbacks::Reply reply);
  void TrackTtlResult(const std::string& node, const std::string& check_id,
                      const std::string& status, const std::string& output,
                      std::function<void(Status)> done);
  void Apply(uint64_t index, const std::string& data);
  // The outcome of the entry applied last, as remembered for its duplicates, and a duplicate's.
  std::string LastOutcome() const;
  void OnDuplicate(uint64_t index, const std::string& outcome);
  void AfterApply(const registry::ApplyResult& r);
  void TrackEverything();
  void RegisterSelf();
  void ArmHealthTimer();
  void OnHealthTimer();
  void RunProbe(const registry::CheckKey& key);
  void OnProbeResult(const registry::CheckKey& key, const std::string& status,
                     const std::string& output);
  void ProposeHealthAction(const registry::HealthAction& a);
  // Every tombstone_ttl: reap the tombstones that were already there at the previous tick.
  void ArmTombstoneReaper();

  RegistryNodeOptions opts_;
  net::IoRuntime& executor_;
  const Clock& clock_;
  registry::StateMachine sm_;
  registry::HealthTracker tracker_;
  WatchHub watches_;
  NodeLog& log_;
  bool leader_ = false;  // as the log last said (on the executor)
  // The outcome of the entry applied last. The log calls a proposal's DoneFn right after applying
  // its entry (ReplicatedLog's contract), so one slot serves every proposal, and entries nobody
  // here awaits (replay, other nodes' proposals) leave nothing behind.
  uint64_t last_result_index_ = 0;
  registry::ApplyResult last_result_;
  std::shared_ptr<net::Timer> health_timer_;
  MonoMs health_timer_at_ = 0;
  std::shared_ptr<net::Timer> reap_timer_;
  uint64_t reap_up_to_ = 0;  // last_applied at the previous reaper tick
  bool stopped_ = false;
};

}  // namespace haven::node
