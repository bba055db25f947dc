// SpillStore: the node's MessageSpill on disk, a RocksDB of its own under DATA_DIR/mq-spill, where
// the messages beyond each queue's in-memory window live. Small write buffers and block cache, so
// a backlog of millions costs disk, not memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "mq/message_spill.h"

namespace haven::storage {

struct SpillStoreOptions {
  size_t write_buffer_bytes = size_t{8} << 20;  // per memtable; at most 2 in memory
  size_t block_cache_bytes = size_t{8} << 20;   // index and filter blocks included
  int max_open_files = 256;
};

// The spill as it was at one moment (a RocksDB snapshot): what a queue snapshot being sent to
// another node reads, whatever is appended or truncated meanwhile. Holding it keeps the records it
// sees on disk; it must not outlive its store. Thread-safe.
class SpillView {
 public:
  virtual ~SpillView() = default;
  // Records of `queue_uid` with id >= from_id, ascending: up to max_count, and no more once
  // max_bytes of records are read (at least one record when there is one). IoError on a read error.
  virtual Result<std::vector<mq::MessageSpill::Record>> Read(uint64_t queue_uid, uint64_t from_id,
                                                             size_t max_count,
                                                             size_t max_bytes) const = 0;
};

class SpillStore : public mq::MessageSpill {
 public:
  // Opens (creating) the spill in `dir`; IoError with RocksDB's message on failure.
  static Result<std::unique_ptr<SpillStore>> Open(const std::string& dir,
                                                  const SpillStoreOptions& opts = {});
  // Makes every record appended so far durable. Appends skip RocksDB's write-ahead log (the Raft
  // log replays them after a crash), so a snapshot, after which that log is gone, calls this first.
  virtual Status Sync() = 0;
  // A consistent view of every record appended so far.
  virtual std::shared_ptr<const SpillView> Pin() = 0;
};

// DATA_DIR/mq-spill.
std::string SpillDir(const std::string& data_dir);

}  // namespace haven::storage
