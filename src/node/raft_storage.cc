#include "node/raft_storage.h"

#include "node/node.pb.h"

namespace haven::node {

namespace {

constexpr uint64_t kReadChunkBytes = 16 << 20;

storage::LogEntry ToStored(const raft::pb::Entry& e) {
  return {e.index(), e.term(), e.SerializeAsString()};
}

}  // namespace

Result<LoadedRaftState> LoadRaftState(const storage::LogStore& store,
                                      const raft::pb::ConfState& bootstrap) {
  LoadedRaftState out;
  raft::InitialState& init = out.initial;
  storage::HardState hs = store.LoadHardState();
  init.hard_state.set_term(hs.term);
  init.hard_state.set_vote(hs.vote);
  init.hard_state.set_commit(hs.commit);
  std::optional<storage::Snapshot> snap = store.LoadSnapshot();
  if (snap) {
    pb::StoredSnapshot stored;
    if (!stored.ParseFromString(snap->data) || !init.conf.ParseFromString(stored.conf())) {
      return Status::IoError("snapshot at index " + std::to_string(snap->index) + " is corrupt");
    }
    raft::pb::SnapshotMeta meta;
    meta.set_index(snap->index);
    meta.set_term(snap->term);
    *meta.mutable_conf() = init.conf;
    init.snapshot = meta;
    init.applied = snap->index;
    out.data = stored.data();
    init.snapshot_data = stored.data();  // a restarted leader can send it to lagging followers
  } else if (hs.term == 0 && store.LastIndex() == 0) {
    init.conf = bootstrap;
  }
  uint64_t next = store.FirstIndex();
  const uint64_t last = store.LastIndex();
  while (next <= last) {
    auto entries = store.Entries(next, last + 1, kReadChunkBytes);
    if (!entries.ok()) return entries.status();
    for (const storage::LogEntry& le : *entries) {
      raft::pb::Entry e;
      if (!e.ParseFromString(le.data) || e.index() != le.index) {
        return Status::IoError("log entry " + std::to_string(le.index) + " is corrupt");
      }
      init.entries.push_back(std::move(e));
    }
    next = entries->back().index + 1;
  }
  // Membership changes after the snapshot are in the log: the core replays them from the entries.
  return out;
}

Status PersistReady(storage::LogStore& store, const raft::Ready& ready) {
  if (ready.snapshot) {
    pb::StoredSnapshot stored;
    stored.set_conf(ready.snapshot->meta().conf().SerializeAsString());
    stored.set_data(ready.snapshot->data());
    const auto& meta = ready.snapshot->meta();
    if (Status s = store.SaveSnapshot({meta.index(), meta.term(), stored.SerializeAsString()});
        !s.ok()) {
      return s;
    }
  }
  // One fsync per Ready: the hard state's synced write also makes the entries appended just before
  // it durable (one write-ahead log), so the entries themselves are written unsynced then. A Ready
  // that only moves the commit index (must_sync false) costs no fsync: under load every batch of
  // entries was followed by such a Ready, which doubled the fsyncs a confirm waited for.
  const bool hs_follows = ready.hard_state.has_value();
  if (!ready.entries.empty()) {
    uint64_t first = ready.entries.front().index();
    if (first <= store.LastIndex()) {
      if (Status s = store.TruncateSuffix(first); !s.ok()) return s;
    }
    std::vector<storage::LogEntry> batch;
    batch.reserve(ready.entries.size());
    for (const auto& e : ready.entries) batch.push_back(ToStored(e));
    if (Status s = store.Append(batch, ready.must_sync && !hs_follows); !s.ok()) return s;
  }
  if (hs_follows) {
    const auto& h = *ready.hard_state;
    const storage::HardState hs{h.term(), h.vote(), h.commit()};
    Status s = ready.must_sync ? store.SaveHardState(hs) : store.SaveHardStateUnsynced(hs);
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

storage::Snapshot MakeStoredSnapshot(const raft::pb::Snapshot& snap) {
  pb::StoredSnapshot stored;
  stored.set_conf(snap.meta().conf().SerializeAsString());
  stored.set_data(snap.data());
  return {snap.meta().index(), snap.meta().term(), stored.SerializeAsString()};
}

}  // namespace haven::node
