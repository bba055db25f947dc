// NodeLog: the node's one Raft log and the state machines that share it (the registry, the
// queues). It routes each committed entry to the machine it is tagged for, snapshots every machine
// at one index (so the log before it can be compacted) and restores them together. One log means
// one fsync carries registry and queue writes alike, and membership is administered once. Before
// a machine sees an entry, the replicated RequestDedupe says whether it is a duplicate (a copy
// re-forwarded to a new leader, a client's retry): those are not applied again.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "net/io_runtime.h"
#include "node/raft_log.h"
#include "node/request_dedupe.h"
#include "storage/log_store.h"

namespace haven::node {

// What a state machine gives the log (all called on the executor).
struct MachineHooks {
  std::function<void(uint64_t index, const std::string& data)> apply;
  std::function<std::string()> take_snapshot;
  // `state` is empty for a snapshot taken before this machine existed: start empty.
  std::function<void(uint64_t index, const std::string& state)> restore;
  std::function<void(bool leader)> on_leadership;  // may be empty
  // May be empty. The small outcome of the entry apply() just took, remembered for duplicates.
  std::function<std::string()> last_result;
  // May be empty (1). How many commands the entry apply() just took held: a machine that puts
  // many in one entry (the queues' batches) counts them all toward the snapshot cadence, so a
  // snapshot still comes every snapshot_every commands and the log between two stays as long.
  std::function<uint64_t()> last_commands;
  // May be empty. A duplicate of an entry applied before committed at `index`: not applied; its
  // proposer (answered right after) gets the first outcome, `result` (from last_result).
  std::function<void(uint64_t index, const std::string& result)> on_duplicate;
  // The snapshot taken at `index` is on disk (a restart starts from it or a later one); may be
  // empty. Called on a later apply, in index order.
  std::function<void(uint64_t index)> snapshot_durable;
  // On the leader: member `id`'s process was found gone (RaftLogCallbacks::on_member_gone). May
  // be empty.
  std::function<void(uint64_t id)> on_member_gone;
  // May be empty (or return null). Called right after take_snapshot or restore: the part of that
  // snapshot streamed after its data to a node that needs it (one machine at most has one).
  std::function<std::shared_ptr<raft::SnapshotSource>()> snapshot_stream;
};

class NodeLog {
 public:
  NodeLog(storage::LogStore& store, net::IoRuntime& executor, RaftLogOptions opts,
          uint64_t snapshot_every_entries, DedupeLimits dedupe = {});
  ~NodeLog();
  NodeLog(const NodeLog&) = delete;
  NodeLog& operator=(const NodeLog&) = delete;

  // Before Start. The registry also answers the leader requests (followers' TTL heartbeats).
  void Register(Machine machine, MachineHooks hooks);
  void SetLeaderRequestHandler(
      std::function<void(const std::string&, RaftLogCallbacks::Reply)> handler);
  // Starts the Raft log: restores the latest snapshot into every machine and re-applies the log.
  Status Start();
  void Stop();

  RaftLog& raft() { return *raft_; }
  // The index of the latest snapshot restored or taken (on the executor).
  uint64_t snapshot_index() const { return last_snapshot_index_; }
  const RaftLog& raft() const { return *raft_; }

 private:
  Status Apply(const CommittedEntry& e);
  void Restore(uint64_t index, const std::string& state);
  void MaybeSnapshot(uint64_t index);
  void NoteDurableSnapshots();
  std::shared_ptr<raft::SnapshotSource> StreamOf(Machine machine);

  storage::LogStore& store_;
  net::IoRuntime& executor_;
  uint64_t snapshot_every_;
  std::vector<uint64_t> saving_;  // snapshots handed to the log, not yet seen on disk
  std::map<Machine, MachineHooks> machines_;
  std::function<void(const std::string&, RaftLogCallbacks::Reply)> leader_requests_;
  std::unique_ptr<RaftLog> raft_;
  uint64_t last_snapshot_index_ = 0;      // on the executor
  uint64_t commands_since_snapshot_ = 0;  // on the executor
  RequestDedupe dedupe_;                  // on the executor
};

}  // namespace haven::node
