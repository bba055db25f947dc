#include "node/node_log.h"

#include "base/log.h"
#include "node/node.pb.h"

namespace haven::node {

NodeLog::NodeLog(storage::LogStore& store, net::IoRuntime& executor, RaftLogOptions opts,
                 uint64_t snapshot_every_entries)
    : store_(store), executor_(executor), snapshot_every_(snapshot_every_entries) {
  RaftLogCallbacks cb;
  cb.on_commit = [this](uint64_t index, Machine m, const std::string& d) { Apply(index, m, d); };
  cb.on_restore = [this](uint64_t index, const std::string& state) { Restore(index, state); };
  cb.on_leadership = [this](bool leader) {
    for (auto& [m, hooks] : machines_) {
      if (hooks.on_leadership) hooks.on_leadership(leader);
    }
  };
  cb.on_leader_request = [this](const std::string& request, RaftLogCallbacks::Reply reply) {
    if (!leader_requests_) return reply(Status::Unavailable("no handler for leader requests"));
    leader_requests_(request, std::move(reply));
  };
  raft_ = std::make_unique<RaftLog>(store, executor, std::move(cb), std::move(opts));
}

NodeLog::~NodeLog() = default;

void NodeLog::Register(Machine machine, MachineHooks hooks) {
  machines_[machine] = std::move(hooks);
}

void NodeLog::SetLeaderRequestHandler(
    std::function<void(const std::string&, RaftLogCallbacks::Reply)> handler) {
  leader_requests_ = std::move(handler);
}

Status NodeLog::Start() { return raft_->Start(); }

void NodeLog::Stop() { raft_->Stop(); }

void NodeLog::Apply(uint64_t index, Machine machine, const std::string& data) {
  auto it = machines_.find(machine);
  if (it == machines_.end()) {
    // Written by a newer binary, or corrupt: skipping keeps this node serving the others.
    HLOG_ERROR("unknown_machine", "index={} machine={}", index, static_cast<uint32_t>(machine));
  } else {
    it->second.apply(index, data);
  }
  MaybeSnapshot(index);
  NoteDurableSnapshots();
}

// The log saves a snapshot on its own thread and compacts the log up to it in the same synced
// write: the store's first index passing a snapshot's index says it is on disk.
void NodeLog::NoteDurableSnapshots() {
  if (saving_.empty()) return;
  const uint64_t first = store_.FirstIndex();
  size_t done = 0;
  while (done < saving_.size() && saving_[done] < first) ++done;
  if (done == 0) return;
  const uint64_t index = saving_[done - 1];
  saving_.erase(saving_.begin(), saving_.begin() + static_cast<std::ptrdiff_t>(done));
  for (auto& [m, hooks] : machines_) {
    if (hooks.snapshot_durable) hooks.snapshot_durable(index);
  }
}

void NodeLog::MaybeSnapshot(uint64_t index) {
  if (index < last_snapshot_index_ + snapshot_every_) return;
  last_snapshot_index_ = index;
  pb::MachineStates states;
  for (auto& [m, hooks] : machines_) {
    if (m == Machine::kRegistry) states.set_registry(hooks.take_snapshot());
    if (m == Machine::kQueues) states.set_queues(hooks.take_snapshot());
  }
  raft_->SaveSnapshotAsync(index, states.SerializeAsString());
  // Bounded: a snapshot the log never saved (compacted past it) is dropped with the oldest.
  if (saving_.size() >= 16) saving_.erase(saving_.begin());
  saving_.push_back(index);
}

void NodeLog::Restore(uint64_t index, const std::string& state) {
  pb::MachineStates states;
  if (!states.ParseFromString(state)) {
    HLOG_ERROR("bad_snapshot", "index={} bytes={}", index, state.size());
    return;
  }
  last_snapshot_index_ = index;
  for (auto& [m, hooks] : machines_) {
    hooks.restore(index, m == Machine::kRegistry ? states.registry() : states.queues());
  }
}

}  // namespace haven::node
