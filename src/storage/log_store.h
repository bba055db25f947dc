// LogStore: the durable Raft log of one group (entries, hard state, latest snapshot) and its
// RocksDB implementation's factory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"

namespace haven::storage {

struct LogEntry {
  uint64_t index = 0;
  uint64_t term = 0;
  std::string data;
};
struct HardState {
  uint64_t term = 0;
  uint64_t vote = 0;
  uint64_t commit = 0;
};
struct Snapshot {
  uint64_t index = 0;
  uint64_t term = 0;
  std::string data;
};

// The durable log under a state machine (the Raft log of one group): entries, hard state, and the
// latest snapshot, which compacts the log prefix it covers.
class LogStore {
 public:
  virtual ~LogStore() = default;
  // Appends entries; entries[0].index must be LastIndex()+1 (InvalidArgument otherwise) and indexes
  // contiguous. With sync=true the entries (and everything appended before) are on disk (fsync)
  // when this returns OK: one call = one fsync, however many entries (group commit).
  virtual Status Append(const std::vector<LogEntry>& entries, bool sync) = 0;
  // Entries in [lo, hi), stopping early once max_bytes of data is reached (at least one entry is
  // returned). NotFound if lo < FirstIndex() (compacted) or hi > LastIndex()+1.
  virtual Result<std::vector<LogEntry>> Entries(uint64_t lo, uint64_t hi,
                                                uint64_t max_bytes) const = 0;
  virtual uint64_t FirstIndex() const = 0;  // snapshot.index + 1 (1 for an empty store)
  virtual uint64_t LastIndex() const = 0;   // snapshot.index when no entries follow it
  virtual Result<uint64_t> Term(
      uint64_t index) const = 0;  // the snapshot's term for snapshot.index
  // Removes entries >= from (a Raft follower's conflict resolution). Synced.
  virtual Status TruncateSuffix(uint64_t from) = 0;
  // Synced, and the sync covers every entry appended before it (one write-ahead log): Raft writes
  // a Ready's entries unsynced, then its hard state, for one fsync in all.
  virtual Status SaveHardState(const HardState& hs) = 0;
  // The same write without the fsync, for a hard state whose term and vote are unchanged (only the
  // commit index moved): Raft recomputes the commit index after a crash, so losing it costs
  // nothing, while syncing it cost an fsync per commit. A later synced write covers it.
  virtual Status SaveHardStateUnsynced(const HardState& hs) { return SaveHardState(hs); }
  virtual HardState LoadHardState() const = 0;
  // Stores a snapshot at (index, term) and deletes the log entries <= index (entries after it stay;
  // if index > LastIndex() the log becomes empty and LastIndex() == index). Synced.
  virtual Status SaveSnapshot(const Snapshot& snap) = 0;
  virtual std::optional<Snapshot> LoadSnapshot() const = 0;
};

struct RocksOptions {
  size_t write_buffer_bytes = 64 << 20;
  size_t max_open_files = 512;
};
// Opens (creating) a RocksDB-backed store in `dir`. IoError with RocksDB's message on failure
// (e.g. the directory is locked by another process: say so clearly).
Result<std::unique_ptr<LogStore>> OpenRocksLogStore(const std::string& dir,
                                                    const RocksOptions& opts = {});

}  // namespace haven::storage
