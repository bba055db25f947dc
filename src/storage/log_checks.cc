#include "storage/log_checks.h"

#include <string>

namespace haven::storage::internal {

Status CheckAppend(const std::vector<LogEntry>& entries, uint64_t last) {
  if (entries.empty()) return Status::Ok();
  if (entries.size() > kMaxAppendEntries) {
    return Status::TooLarge("append of " + std::to_string(entries.size()) +
                            " entries exceeds the limit of " + std::to_string(kMaxAppendEntries));
  }
  if (entries[0].index != last + 1) {
    return Status::InvalidArgument("append starts at index " + std::to_string(entries[0].index) +
                                   ", expected " + std::to_string(last + 1));
  }
  uint64_t bytes = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].index != entries[0].index + i) {
      return Status::InvalidArgument("append indexes not contiguous at index " +
                                     std::to_string(entries[i].index));
    }
    bytes += entries[i].data.size();
  }
  if (bytes > kMaxAppendBytes) {
    return Status::TooLarge("append of " + std::to_string(bytes) + " bytes exceeds the limit of " +
                            std::to_string(kMaxAppendBytes));
  }
  return Status::Ok();
}

Status CheckRange(uint64_t lo, uint64_t hi, uint64_t first, uint64_t last) {
  if (lo > hi) {
    return Status::InvalidArgument("entries range [" + std::to_string(lo) + ", " +
                                   std::to_string(hi) + ") is inverted");
  }
  if (lo < first) {
    return Status::NotFound("entries from " + std::to_string(lo) +
                            " are compacted; first index is " + std::to_string(first));
  }
  if (hi > last + 1) {
    return Status::NotFound("entries up to " + std::to_string(hi) +
                            " not in the log; last index is " + std::to_string(last));
  }
  return Status::Ok();
}

Status CheckTruncate(uint64_t from, uint64_t snapshot_index) {
  if (from <= snapshot_index) {
    return Status::InvalidArgument("cannot truncate from " + std::to_string(from) +
                                   ": entries up to " + std::to_string(snapshot_index) +
                                   " are in the snapshot");
  }
  return Status::Ok();
}

Status CheckSnapshot(const Snapshot& snap, uint64_t current_snapshot_index) {
  if (snap.index < current_snapshot_index) {
    return Status::InvalidArgument("snapshot at " + std::to_string(snap.index) +
                                   " is older than the current one at " +
                                   std::to_string(current_snapshot_index));
  }
  if (snap.data.size() > kMaxSnapshotBytes) {
    return Status::TooLarge("snapshot of " + std::to_string(snap.data.size()) +
                            " bytes exceeds the limit of " + std::to_string(kMaxSnapshotBytes));
  }
  return Status::Ok();
}

}  // namespace haven::storage::internal
