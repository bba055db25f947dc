// Argument checks and limits shared by both LogStore implementations, so they reject the same input
// with the same error.
#pragma once

#include <cstdint>
#include <vector>

#include "storage/log_store.h"

namespace haven::storage::internal {

// One Append may carry at most this much entry data: far above any sane Raft batch, well below
// what a RocksDB WriteBatch can hold.
inline constexpr uint64_t kMaxAppendBytes = 1ull << 30;
inline constexpr uint64_t kMaxAppendEntries = 1'000'000;
// RocksDB values are limited to 32-bit lengths; leave headroom for the metadata.
inline constexpr uint64_t kMaxSnapshotBytes = 3ull << 30;

// entries[0].index == last + 1, contiguous, within the size limits.
Status CheckAppend(const std::vector<LogEntry>& entries, uint64_t last);
// lo <= hi, lo >= first, hi <= last + 1.
Status CheckRange(uint64_t lo, uint64_t hi, uint64_t first, uint64_t last);
// from is above the snapshot (compacted entries cannot be truncated).
Status CheckTruncate(uint64_t from, uint64_t snapshot_index);
// Not older than the current snapshot, data within the size limit.
Status CheckSnapshot(const Snapshot& snap, uint64_t current_snapshot_index);
// Whether an entry of `size` bytes still fits after `total` bytes (the first one always does).
inline bool FitsBudget(uint64_t total, uint64_t size, uint64_t max_bytes, bool first) {
  return first || total + size <= max_bytes;
}

}  // namespace haven::storage::internal
