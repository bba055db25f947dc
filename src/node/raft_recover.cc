#include "node/raft_recover.h"

#include <algorithm>
#include <optional>

#include "node/node.pb.h"

// Why the repair is safe (docs/cluster.md, "Recovering from the loss of a quorum"):
// - An entry acknowledged to a client was committed: a majority had it, and every later leader
//   has it. Among the survivors, the one with the greatest (last log term, last index) has every
//   entry any survivor knew to be committed (Raft's election restriction compares logs the same
//   way), so the operator recovers that one.
// - Its whole log is treated as committed, not only up to its commit index: entries past it may
//   have been acknowledged by the dead leader, and keeping an entry that was never acknowledged
//   only applies a write whose client saw no answer (outcome unknown), which is allowed.
// - The conf changes go at a term above every term the store has seen, so no old leader's entries
//   can sit at those indexes elsewhere with the same term (Log Matching holds), and the other
//   survivors, restarted unchanged, accept this node's log and truncate any diverging suffix.
// - Each change assigns one node's role, so applying them together (the core replays every
//   committed conf change at start) gives exactly the listed voters, whatever the order.
// What it cannot save: entries committed only on the lost nodes. And the lost nodes must never
// come back with their old data: they would still form the old majority (split brain).

namespace haven::node {

namespace {

constexpr uint64_t kReadChunkBytes = 16 << 20;
constexpr size_t kMaxAddressBytes = 256;  // what RaftLog accepts for a member's address

void ApplyConfChange(const raft::pb::ConfChange& cc, RaftStoreSummary& s) {
  // Removing keeps no address; re-adding without one (a bootstrap entry) keeps the known one.
  std::string address;
  if (auto it = s.voters.find(cc.node_id()); it != s.voters.end()) address = it->second;
  if (auto it = s.learners.find(cc.node_id()); it != s.learners.end()) address = it->second;
  s.voters.erase(cc.node_id());
  s.learners.erase(cc.node_id());
  if (!cc.context().empty()) address = cc.context();
  if (cc.type() == raft::pb::CONF_ADD_VOTER) s.voters[cc.node_id()] = address;
  if (cc.type() == raft::pb::CONF_ADD_LEARNER) s.learners[cc.node_id()] = address;
}

Status ReadSnapshotConf(const storage::Snapshot& snap, RaftStoreSummary& s) {
  pb::StoredSnapshot stored;
  raft::pb::ConfState conf;
  pb::SnapshotData data;
  if (!stored.ParseFromString(snap.data) || !conf.ParseFromString(stored.conf()) ||
      !data.ParseFromString(stored.data())) {
    return Status::IoError("snapshot at index " + std::to_string(snap.index) + " is corrupt");
  }
  auto address = [&](uint64_t id) {
    auto it = data.peers().find(id);
    return it == data.peers().end() ? std::string() : it->second;
  };
  for (uint64_t id : conf.voters()) s.voters[id] = address(id);
  for (uint64_t id : conf.learners()) s.learners[id] = address(id);
  return Status::Ok();
}

// Replays the conf changes of every entry after the snapshot, in bounded chunks.
Status ReplayLog(const storage::LogStore& store, RaftStoreSummary& s) {
  uint64_t next = store.FirstIndex();
  while (next <= s.last_index) {
    auto entries = store.Entries(next, s.last_index + 1, kReadChunkBytes);
    if (!entries.ok()) return entries.status();
    if (entries->empty())
      return Status::IoError("log read returned nothing at " + std::to_string(next));
    for (const storage::LogEntry& le : *entries) {
      raft::pb::Entry e;
      if (!e.ParseFromString(le.data) || e.index() != le.index) {
        return Status::IoError("log entry " + std::to_string(le.index) + " is corrupt");
      }
      if (e.type() != raft::pb::ENTRY_CONF_CHANGE) continue;
      raft::pb::ConfChange cc;
      if (!cc.ParseFromString(e.data())) {
        return Status::IoError("conf change at index " + std::to_string(le.index) + " is corrupt");
      }
      ApplyConfChange(cc, s);
    }
    next = entries->back().index + 1;
  }
  return Status::Ok();
}

bool IsMember(const RaftStoreSummary& s, uint64_t id) {
  return s.voters.count(id) > 0 || s.learners.count(id) > 0;
}

// HOST:PORT with a non-empty host and a port in 1..65535.
bool ValidAddress(const std::string& a) {
  size_t colon = a.rfind(':');
  if (a.size() > kMaxAddressBytes || colon == std::string::npos || colon == 0) return false;
  std::string port = a.substr(colon + 1);
  if (port.empty() || port.size() > 5) return false;
  if (!std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return false;
  }
  long p = std::stol(port);
  return p >= 1 && p <= 65535 &&
         std::none_of(a.begin(), a.end(), [](char c) { return c == ',' || c == '=' || c <= ' '; });
}

// Adds and updates first, removals last: a node applying them one at a time never sees the
// listed members out of the voter set.
std::vector<raft::pb::ConfChange> PlanChanges(const RaftStoreSummary& s,
                                              const std::map<uint64_t, std::string>& members) {
  std::vector<raft::pb::ConfChange> out;
  for (const auto& [id, address] : members) {
    raft::pb::ConfChange& cc = out.emplace_back();
    cc.set_type(raft::pb::CONF_ADD_VOTER);
    cc.set_node_id(id);
    cc.set_context(address);
  }
  auto remove_unlisted = [&](const std::map<uint64_t, std::string>& from) {
    for (const auto& [id, address] : from) {
      if (members.count(id)) continue;
      raft::pb::ConfChange& cc = out.emplace_back();
      cc.set_type(raft::pb::CONF_REMOVE);
      cc.set_node_id(id);
    }
  };
  remove_unlisted(s.voters);
  remove_unlisted(s.learners);
  return out;
}

std::vector<storage::LogEntry> ToEntries(const std::vector<raft::pb::ConfChange>& changes,
                                         uint64_t first_index, uint64_t term) {
  std::vector<storage::LogEntry> out;
  uint64_t index = first_index;
  for (const auto& cc : changes) {
    raft::pb::Entry e;
    e.set_term(term);
    e.set_index(index);
    e.set_type(raft::pb::ENTRY_CONF_CHANGE);
    e.set_data(cc.SerializeAsString());
    out.push_back({index, term, e.SerializeAsString()});  // as raft_storage.cc stores entries
    ++index;
  }
  return out;
}

// Three synced steps, each leaving a store a server starts from (and recover can be run on
// again): the new term first (so no entry ever has a term above the hard state's), then the
// entries, then the commit that makes them (and the whole log) committed.
Status WriteRecovery(storage::LogStore& store, const RecoverReport& r, uint64_t self) {
  const RaftStoreSummary& b = r.before;
  if (Status s = store.SaveHardState({r.new_term, self, b.commit}); !s.ok()) return s;
  auto entries = ToEntries(r.changes, b.last_index + 1, r.new_term);
  if (Status s = store.Append(entries, /*sync=*/true); !s.ok()) return s;
  return store.SaveHardState({r.new_term, self, store.LastIndex()});
}

}  // namespace

Result<RaftStoreSummary> SummarizeRaftStore(const storage::LogStore& store) {
  RaftStoreSummary s;
  storage::HardState hs = store.LoadHardState();
  s.term = hs.term;
  s.vote = hs.vote;
  s.commit = hs.commit;
  s.first_index = store.FirstIndex();
  s.last_index = store.LastIndex();
  std::optional<storage::Snapshot> snap = store.LoadSnapshot();
  if (!snap && s.last_index == 0 && hs.term == 0) {
    return Status::NotFound(
        "the store holds no Raft state (wrong --data-dir, or a node that never "
        "joined a cluster?)");
  }
  if (snap) {
    s.snapshot_index = snap->index;
    s.snapshot_term = snap->term;
    if (Status st = ReadSnapshotConf(*snap, s); !st.ok()) return st;
  }
  if (s.last_index > 0) {
    auto term = store.Term(s.last_index);
    if (!term.ok()) return term.status();
    s.last_term = *term;
  }
  if (Status st = ReplayLog(store, s); !st.ok()) return st;
  return s;
}

Status ValidateRecoverMembers(const RaftStoreSummary& summary, uint64_t self,
                              const std::map<uint64_t, std::string>& members) {
  if (members.empty()) return Status::InvalidArgument("--members: at least one member is needed");
  if (members.size() > kMaxRecoverMembers) {
    return Status::InvalidArgument("--members: at most " + std::to_string(kMaxRecoverMembers) +
                                   " members");
  }
  if (self == 0) return Status::InvalidArgument("--node-id: ids are 1, 2, ...");
  if (!members.count(self)) {
    return Status::InvalidArgument("--members must include this node's --node-id " +
                                   std::to_string(self));
  }
  for (const auto& [id, address] : members) {
    if (!IsMember(summary, id)) {
      return Status::InvalidArgument(
          "--members: " + std::to_string(id) +
          " is not a member of the cluster this store knows; recover with current members only, "
          "then add new ones with `haven cluster add`");
    }
    if (!ValidAddress(address)) {
      return Status::InvalidArgument("--members: bad address \"" + address + "\" for " +
                                     std::to_string(id) + " (HOST:PORT, port 1..65535)");
    }
  }
  return Status::Ok();
}

Result<RecoverReport> RecoverMembership(storage::LogStore& store, uint64_t self,
                                        const std::map<uint64_t, std::string>& members,
                                        bool dry_run) {
  auto before = SummarizeRaftStore(store);
  if (!before.ok()) return before.status();
  RecoverReport r;
  r.dry_run = dry_run;
  r.before = *before;
  r.after = *before;
  if (dry_run && members.empty()) return r;
  if (Status s = ValidateRecoverMembers(r.before, self, members); !s.ok()) return s;
  r.new_term = std::max(r.before.term, r.before.last_term) + 1;
  r.changes = PlanChanges(r.before, members);
  if (dry_run) return r;
  if (Status s = WriteRecovery(store, r, self); !s.ok()) return s;
  auto after = SummarizeRaftStore(store);
  if (!after.ok()) return after.status();
  r.after = *after;
  return r;
}

}  // namespace haven::node
