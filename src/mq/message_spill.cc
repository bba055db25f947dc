#include "mq/message_spill.h"

#include <iterator>

namespace haven::mq {

void MemorySpill::Append(uint64_t queue_uid, uint64_t message_id, const std::string& record) {
  queues_[queue_uid][message_id] = record;
}

std::vector<MessageSpill::Record> MemorySpill::Read(uint64_t queue_uid, uint64_t from_id,
                                                    size_t max_count) const {
  std::vector<Record> out;
  auto q = queues_.find(queue_uid);
  if (q == queues_.end()) return out;
  for (auto it = q->second.lower_bound(from_id); it != q->second.end() && out.size() < max_count;
       ++it) {
    out.emplace_back(it->first, it->second);
  }
  return out;
}

void MemorySpill::Truncate(const SpillKeep& keep) {
  for (auto q = queues_.begin(); q != queues_.end();) {
    if (q->first >= keep.next_queue_uid) {
      ++q;
      continue;
    }
    auto live = keep.first_kept_id.find(q->first);
    if (live == keep.first_kept_id.end()) {
      q = queues_.erase(q);
      continue;
    }
    q->second.erase(q->second.begin(), q->second.lower_bound(live->second));
    q = q->second.empty() ? queues_.erase(q) : std::next(q);
  }
}

uint64_t MemorySpill::RecordCount() const {
  uint64_t n = 0;
  for (const auto& [uid, records] : queues_) n += records.size();
  return n;
}

}  // namespace haven::mq
