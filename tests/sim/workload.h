// Workload: the replicated state machine a simulated cluster runs (one replica per node) and the
// clients that drive it and check it; Cluster: what a workload may see and do in the world.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <sstream>
#include <string>

#include "base/status.h"
#include "raft/raw_node.h"
#include "sim_rng.h"
#include "world.h"

namespace haven::sim {

// The world as a workload sees it. Node ids run from 1 to NodeCount(); every call is made on
// simulated time from inside an event.
class Cluster {
 public:
  virtual ~Cluster() = default;

  virtual const SimOptions& options() const = 0;
  virtual SimStats& stats() = 0;
  virtual Rng& rng() = 0;
  virtual int64_t Now() const = 0;
  virtual void At(int64_t t, std::function<void()> fn) = 0;
  virtual void Fail(const std::string& reason) = 0;
  virtual bool ok() const = 0;
  virtual bool Tracing() const = 0;
  virtual void TraceLine(const std::string& text) = 0;

  virtual size_t NodeCount() const = 0;
  virtual bool Up(uint64_t node) const = 0;
  virtual uint64_t Incarnation(uint64_t node) const = 0;  // bumped by every crash
  virtual uint64_t Applied(uint64_t node) const = 0;
  virtual uint64_t Leader() = 0;  // 0: none up
  // Proposes on `node` (which must be up); Pump then processes what follows.
  virtual Result<raft::ProposalId> Propose(uint64_t node, const std::string& data) = 0;
  virtual void Pump(uint64_t node) = 0;
  virtual void ReadIndex(uint64_t node, const std::string& context) = 0;  // and pumps

  template <typename... A>
  void Trace(const A&... parts) {
    if (!Tracing()) return;
    std::ostringstream line;
    (line << ... << parts);
    TraceLine(line.str());
  }
};

// The leader id in a "not leader; leader=N" refusal (0: none named).
uint64_t LeaderHint(const Status& refusal);

// Hooks the world calls, in this order for a committed entry: Apply, Fingerprint, OnCommitted
// (first time any node applies the index), OnApplied.
class Workload {
 public:
  virtual ~Workload() = default;

  // Starts the clients (after the nodes were created).
  virtual void Begin() = 0;

  // ---- replicas ----
  // The node (re)starts: its replica is emptied, then restored from `snapshot` when given.
  virtual Status ResetReplica(uint64_t node, const std::string* snapshot) = 0;
  virtual Status InstallSnapshot(uint64_t node, const std::string& snapshot) = 0;
  virtual std::string TakeSnapshot(uint64_t node) = 0;
  // A committed normal entry with data; an error text when it cannot be applied (unparseable).
  virtual std::string Apply(uint64_t node, uint64_t index, const std::string& data) = 0;
  // The replica's state in a form that must be equal on every node at the same index.
  virtual std::string Fingerprint(uint64_t node) = 0;

  // ---- events ----
  virtual void OnCommitted(uint64_t /*node*/, uint64_t /*index*/) {}
  virtual void OnApplied(uint64_t node, uint64_t index, uint64_t term) = 0;
  virtual void OnSnapshotInstalled(uint64_t node, uint64_t index) = 0;
  virtual void OnReadState(uint64_t /*node*/, const raft::ReadState& /*rs*/) {}
  // After a Ready's committed entries and read states were handled.
  virtual void OnReadyDone(uint64_t /*node*/) {}
  virtual void OnNodeStarted(uint64_t node) = 0;
  virtual void OnNodeLost(uint64_t node) = 0;  // crashed (or retired), before it goes down
  virtual void OnHeal() {}

  // ---- the end ----
  // The run is over: what is still in flight has an unknown outcome.
  virtual void Finish() = 0;
  // The workload's checkers, after the world's own passed.
  virtual void CheckEnd() = 0;
};

std::unique_ptr<Workload> MakeRegistryWorkload(Cluster& cluster);
std::unique_ptr<Workload> MakeQueueWorkload(Cluster& cluster);

}  // namespace haven::sim
