// DataDir: the layout of a server's --data-dir, in one place: the Raft store, the node's UUID
// (Consul's node-id file) and the raft id the directory belongs to.
#pragma once

#include <cstdint>
#include <string>

#include "base/status.h"

namespace haven::node {

// The RocksDB store of the Raft log, hard state and snapshots.
std::string RaftStoreDir(const std::string& data_dir);

// The node's UUID, made on first start and kept, so that it survives restarts.
Result<std::string> LoadOrCreateNodeId(const std::string& data_dir);

// The raft id this data dir was first started with (NotFound for a directory that never ran a
// server). A member is its id: its log and votes belong to that id only.
Result<uint64_t> ReadRaftId(const std::string& data_dir);

// Records `id` on the first start; afterwards refuses another id (InvalidArgument naming both), so
// that a directory is never brought up as a different member (a double vote, a forked log).
Status ClaimRaftId(const std::string& data_dir, uint64_t id);

}  // namespace haven::node
