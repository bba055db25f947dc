#include "storage/mem_log_store.h"

#include <string>

#include "storage/log_checks.h"

namespace haven::storage {

uint64_t MemLogStore::FirstIndexLocked() const { return snapshot_ ? snapshot_->index + 1 : 1; }

uint64_t MemLogStore::LastIndexLocked() const {
  if (!entries_.empty()) return entries_.rbegin()->first;
  return snapshot_ ? snapshot_->index : 0;
}

void MemLogStore::SyncLocked() {
  synced_last_ = LastIndexLocked();
  ++sync_count_;
}

Status MemLogStore::Append(const std::vector<LogEntry>& entries, bool sync) {
  std::lock_guard lock(mu_);
  if (Status s = internal::CheckAppend(entries, LastIndexLocked()); !s.ok()) return s;
  for (const LogEntry& e : entries) entries_.emplace(e.index, e);
  if (sync) SyncLocked();
  return Status::Ok();
}

Result<std::vector<LogEntry>> MemLogStore::Entries(uint64_t lo, uint64_t hi,
                                                   uint64_t max_bytes) const {
  std::lock_guard lock(mu_);
  if (Status s = internal::CheckRange(lo, hi, FirstIndexLocked(), LastIndexLocked()); !s.ok()) {
    return s;
  }
  std::vector<LogEntry> out;
  uint64_t total = 0;
  for (auto it = entries_.lower_bound(lo); it != entries_.end() && it->first < hi; ++it) {
    const uint64_t size = it->second.data.size();
    if (!internal::FitsBudget(total, size, max_bytes, out.empty())) break;
    total += size;
    out.push_back(it->second);
  }
  return out;
}

uint64_t MemLogStore::FirstIndex() const {
  std::lock_guard lock(mu_);
  return FirstIndexLocked();
}

uint64_t MemLogStore::LastIndex() const {
  std::lock_guard lock(mu_);
  return LastIndexLocked();
}

Result<uint64_t> MemLogStore::Term(uint64_t index) const {
  std::lock_guard lock(mu_);
  const uint64_t snap_index = snapshot_ ? snapshot_->index : 0;
  if (index == snap_index) return snapshot_ ? snapshot_->term : 0;
  auto it = entries_.find(index);
  if (it == entries_.end()) {
    return Status::NotFound("no term for index " + std::to_string(index) + "; log holds [" +
                            std::to_string(FirstIndexLocked()) + ", " +
                            std::to_string(LastIndexLocked()) + "]");
  }
  return it->second.term;
}

Status MemLogStore::TruncateSuffix(uint64_t from) {
  std::lock_guard lock(mu_);
  if (Status s = internal::CheckTruncate(from, snapshot_ ? snapshot_->index : 0); !s.ok()) return s;
  entries_.erase(entries_.lower_bound(from), entries_.end());
  SyncLocked();
  return Status::Ok();
}

Status MemLogStore::SaveHardState(const HardState& hs) {
  std::lock_guard lock(mu_);
  hard_state_ = hs;
  SyncLocked();
  return Status::Ok();
}

Status MemLogStore::SaveHardStateUnsynced(const HardState& hs) {
  std::lock_guard lock(mu_);
  hard_state_ = hs;
  return Status::Ok();
}

HardState MemLogStore::LoadHardState() const {
  std::lock_guard lock(mu_);
  return hard_state_;
}

Status MemLogStore::SaveSnapshot(const Snapshot& snap) {
  std::lock_guard lock(mu_);
  if (Status s = internal::CheckSnapshot(snap, snapshot_ ? snapshot_->index : 0); !s.ok()) return s;
  entries_.erase(entries_.begin(), entries_.upper_bound(snap.index));
  snapshot_ = snap;
  SyncLocked();
  return Status::Ok();
}

std::optional<Snapshot> MemLogStore::LoadSnapshot() const {
  std::lock_guard lock(mu_);
  return snapshot_;
}

void MemLogStore::Crash() {
  std::lock_guard lock(mu_);
  entries_.erase(entries_.upper_bound(synced_last_), entries_.end());
}

uint64_t MemLogStore::sync_count() const {
  std::lock_guard lock(mu_);
  return sync_count_;
}

}  // namespace haven::storage
