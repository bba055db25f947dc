// Offline repair of a Raft group that lost a majority of its voters for good: reads what a stopped
// node's store holds and rewrites its membership so that the survivors alone form the cluster.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "base/status.h"
#include "raft/raft.pb.h"
#include "storage/log_store.h"

namespace haven::node {

// Members a recovered cluster may keep: the voter limit `haven server --peers` accepts.
inline constexpr size_t kMaxRecoverMembers = 7;

// What a node's store holds, as an operator needs it to pick the most up-to-date survivor.
struct RaftStoreSummary {
  uint64_t first_index = 0;  // of the log (snapshot index + 1)
  uint64_t last_index = 0;
  uint64_t last_term = 0;       // of the entry at last_index (the snapshot's term when none follow)
  uint64_t snapshot_index = 0;  // 0: no snapshot
  uint64_t snapshot_term = 0;
  uint64_t term = 0;  // hard state
  uint64_t vote = 0;
  uint64_t commit = 0;
  // The membership after every conf change in the log (committed or not): id -> raft address, ""
  // when the store does not know it (the bootstrap voters' addresses come from --peers).
  std::map<uint64_t, std::string> voters;
  std::map<uint64_t, std::string> learners;
};

// What RecoverMembership found and did.
struct RecoverReport {
  bool dry_run = true;
  RaftStoreSummary before;
  RaftStoreSummary after;  // == before on a dry run
  uint64_t new_term = 0;   // the term of the appended entries (planned, on a dry run)
  std::vector<raft::pb::ConfChange> changes;  // appended (planned, on a dry run), in log order
};

// Reads the summary. IoError when an entry or the snapshot does not parse; NotFound when the store
// holds no Raft state at all (a wrong directory, or a node that never joined).
Result<RaftStoreSummary> SummarizeRaftStore(const storage::LogStore& store);

// Checks `members` (id -> raft address HOST:PORT) against what `summary` holds: `self` listed,
// 1..kMaxRecoverMembers entries, every id already a voter or learner, addresses well formed.
// InvalidArgument with a message naming the offending entry.
Status ValidateRecoverMembers(const RaftStoreSummary& summary, uint64_t self,
                              const std::map<uint64_t, std::string>& members);

// Makes `members` the voter set of the group on this (stopped) node's store: the whole local log
// is treated as committed, then one conf change per member to drop or (re)add as voter is appended
// at a new term T, and the hard state becomes {T, vote self, commit = new last index}, synced.
// With dry_run the store is not touched; `members` may then be empty (summary only). Errors:
// InvalidArgument (bad members, see ValidateRecoverMembers), NotFound/IoError (the store).
Result<RecoverReport> RecoverMembership(storage::LogStore& store, uint64_t self,
                                        const std::map<uint64_t, std::string>& members,
                                        bool dry_run);

}  // namespace haven::node
