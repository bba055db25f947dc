#include "node/node_log.h"

#include "base/log.h"
#include "base/metrics.h"
#include "node/node.pb.h"

namespace haven::node {

namespace {

metrics::Counter& DedupeCounter(const char* verdict) {
  return metrics::Registry::Default().GetCounter(
      "haven_raft_dedupe_entries_total",
      "Committed entries not applied: duplicates of applied ones, or too old to tell",
      {{"verdict", verdict}});
}

}  // namespace

NodeLog::NodeLog(storage::LogStore& store, net::IoRuntime& executor, RaftLogOptions opts,
                 uint64_t snapshot_every_entries, DedupeLimits dedupe)
    : store_(store), executor_(executor), snapshot_every_(snapshot_every_entries), dedupe_(dedupe) {
  RaftLogCallbacks cb;
  cb.on_commit = [this](const CommittedEntry& e) { return Apply(e); };
  cb.on_restore = [this](uint64_t index, const std::string& state) { Restore(index, state); };
  cb.on_leadership = [this](bool leader) {
    for (auto& [m, hooks] : machines_) {
      if (hooks.on_leadership) hooks.on_leadership(leader);
    }
  };
  cb.on_member_gone = [this](uint64_t id) {
    for (auto& [m, hooks] : machines_) {
      if (hooks.on_member_gone) hooks.on_member_gone(id);
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

Status NodeLog::Apply(const CommittedEntry& e) {
  Status out;
  uint64_t commands = 1;
  auto it = machines_.find(e.machine);
  RequestDedupe::Decision d = dedupe_.Check(e.id);
  if (d.verdict == RequestDedupe::Verdict::kDuplicate) {
    DedupeCounter("duplicate").Inc();
    HLOG_DEBUG("duplicate_entry", "index={} first_index={} origin={} seq={}", e.index,
               d.first_index, e.id.origin, e.id.seq);
    if (it != machines_.end() && it->second.on_duplicate)
      it->second.on_duplicate(e.index, d.result);
  } else if (d.verdict == RequestDedupe::Verdict::kTooOld) {
    DedupeCounter("too_old").Inc();
    out = Status::Unavailable("not applied: proposed at index " + std::to_string(e.id.base_index) +
                              ", before the window of remembered requests (from index " +
                              std::to_string(dedupe_.floor_index()) + "); send it again");
  } else if (it == machines_.end()) {
    // Written by a newer binary, or corrupt: skipping keeps this node serving the others.
    HLOG_ERROR("unknown_machine", "index={} machine={}", e.index, static_cast<uint32_t>(e.machine));
    dedupe_.Record(e.index, e.id, std::string());
  } else {
    it->second.apply(e.index, e.data);
    dedupe_.Record(e.index, e.id,
                   it->second.last_result ? it->second.last_result() : std::string());
    if (it->second.last_commands) commands += it->second.last_commands() - 1;
  }
  dedupe_.Advance(e.index);
  commands_since_snapshot_ += commands;
  MaybeSnapshot(e.index);
  NoteDurableSnapshots();
  return out;
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
  if (commands_since_snapshot_ < snapshot_every_) return;
  commands_since_snapshot_ = 0;
  last_snapshot_index_ = index;
  pb::MachineStates states;
  for (auto& [m, hooks] : machines_) {
    if (m == Machine::kRegistry) states.set_registry(hooks.take_snapshot());
    if (m == Machine::kQueues) states.set_queues(hooks.take_snapshot());
  }
  states.set_dedupe(dedupe_.Serialize());
  raft_->SaveSnapshotAsync(index, states.SerializeAsString(), StreamOf(Machine::kQueues));
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
  commands_since_snapshot_ = 0;
  if (Status s = dedupe_.Parse(states.dedupe()); !s.ok()) {
    HLOG_ERROR("bad_snapshot", "index={} error=\"{}\"", index, s.ToString());
  }
  for (auto& [m, hooks] : machines_) {
    hooks.restore(index, m == Machine::kRegistry ? states.registry() : states.queues());
  }
  if (auto stream = StreamOf(Machine::kQueues)) raft_->SetSnapshotStream(index, std::move(stream));
}

std::shared_ptr<raft::SnapshotSource> NodeLog::StreamOf(Machine machine) {
  auto it = machines_.find(machine);
  if (it == machines_.end() || !it->second.snapshot_stream) return nullptr;
  return it->second.snapshot_stream();
}

}  // namespace haven::node
