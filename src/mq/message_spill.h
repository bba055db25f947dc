// MessageSpill: where a queue's messages beyond its in-memory window live (the shell keeps them in
// RocksDB; MemorySpill is the twin for tests and the simulator). BrokerState writes and reads it
// deterministically, so every replica's spill holds the same records for the same applied log.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace haven::mq {

// What a spill must keep once a snapshot is durable: every record of a queue in `first_kept_id`
// with id >= that value, and every record of a queue uid >= next_queue_uid (declared after the
// snapshot). Everything else (consumed records, deleted and purged queues) may go.
struct SpillKeep {
  uint64_t next_queue_uid = 1;
  std::map<uint64_t, uint64_t> first_kept_id;  // queue uid -> lowest message id still needed
};

class MessageSpill {
 public:
  using Record = std::pair<uint64_t, std::string>;  // (message id, serialized mq::pb::Message)

  virtual ~MessageSpill() = default;
  // Stores `record` under (queue_uid, message_id). Writing a key again (a replay after a restart,
  // a snapshot installed over records this node already had) replaces it.
  virtual void Append(uint64_t queue_uid, uint64_t message_id, const std::string& record) = 0;
  // Up to max_count records of `queue_uid` with id >= from_id, ascending id.
  virtual std::vector<Record> Read(uint64_t queue_uid, uint64_t from_id,
                                   size_t max_count) const = 0;
  // Drops what `keep` does not keep. The shell calls it once the snapshot `keep` was taken at is
  // durable: before that, a restart replays the log from an older snapshot and reads older records.
  virtual void Truncate(const SpillKeep& keep) = 0;
  virtual uint64_t RecordCount() const = 0;  // for tests and metrics; may be an estimate on disk
};

// A spill in memory: what BrokerState uses when the shell gives it none (tests, the simulator).
class MemorySpill final : public MessageSpill {
 public:
  void Append(uint64_t queue_uid, uint64_t message_id, const std::string& record) override;
  std::vector<Record> Read(uint64_t queue_uid, uint64_t from_id, size_t max_count) const override;
  void Truncate(const SpillKeep& keep) override;
  uint64_t RecordCount() const override;

 private:
  std::map<uint64_t, std::map<uint64_t, std::string>> queues_;  // uid -> id -> record
};

}  // namespace haven::mq
