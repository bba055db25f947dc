// MemLogStore: the in-memory twin of the RocksDB log for tests and the simulator, with crash
// semantics (Crash() drops what an fsync has not yet covered).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "storage/log_store.h"

namespace haven::storage {

class MemLogStore final : public LogStore {
 public:
  Status Append(const std::vector<LogEntry>& entries, bool sync) override;
  Result<std::vector<LogEntry>> Entries(uint64_t lo, uint64_t hi,
                                        uint64_t max_bytes) const override;
  uint64_t FirstIndex() const override;
  uint64_t LastIndex() const override;
  Result<uint64_t> Term(uint64_t index) const override;
  Status TruncateSuffix(uint64_t from) override;
  Status SaveHardState(const HardState& hs) override;
  // Kept by a Crash() too: a crash may or may not lose an unsynced write, and losing only the
  // commit index changes nothing Raft relies on.
  Status SaveHardStateUnsynced(const HardState& hs) override;
  HardState LoadHardState() const override;
  Status SaveSnapshot(const Snapshot& snap) override;
  std::optional<Snapshot> LoadSnapshot() const override;

  // Simulates a power loss: every append since the last synced operation is lost.
  void Crash();
  // How many fsyncs the store has done (tests use it to prove group commit).
  uint64_t sync_count() const;

 private:
  uint64_t FirstIndexLocked() const;
  uint64_t LastIndexLocked() const;
  void SyncLocked();

  mutable std::mutex mu_;
  std::map<uint64_t, LogEntry> entries_;
  HardState hard_state_;
  std::optional<Snapshot> snapshot_;
  // Only appends can be unsynced, and they only extend the tail: entries above this index are
  // what a crash loses.
  uint64_t synced_last_ = 0;
  uint64_t sync_count_ = 0;
};

}  // namespace haven::storage
