// The Raft core's durable state in a storage::LogStore: each log entry stored as a serialized
// raft::pb::Entry (its type travels with it), the hard state, and snapshots that carry the
// membership they were taken under next to the state machine's bytes.
#pragma once

#include <optional>
#include <string>

#include "base/status.h"
#include "raft/raw_node.h"
#include "storage/log_store.h"

namespace haven::node {

struct LoadedRaftState {
  raft::InitialState initial;       // for RawNode::Create; applied = the snapshot's index
  std::optional<std::string> data;  // the snapshot's data (a serialized pb::SnapshotData), if any
};

// Reads what a restarting node needs. A store with no hard state and no snapshot is a new node:
// its conf is `bootstrap` (the initial voters; empty for a node joining an existing cluster).
Result<LoadedRaftState> LoadRaftState(const storage::LogStore& store,
                                      const raft::pb::ConfState& bootstrap);

// Persists what a Ready asks (step 1 of the Ready contract): the received snapshot, the entries
// (replacing any suffix they overlap), then the hard state. Synced when ready.must_sync.
Status PersistReady(storage::LogStore& store, const raft::Ready& ready);

// A snapshot taken locally, for the store and for the core (Compact).
storage::Snapshot MakeStoredSnapshot(const raft::pb::Snapshot& snap);

}  // namespace haven::node
