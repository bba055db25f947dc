// SpillSnapshotSource / SpillSnapshotSink: the queues' spilled messages as the streamed part of a
// Raft snapshot. The snapshot's own data holds the queues in their local form (windows, and where
// each spilled part starts and how long it is); the source reads those spilled records from a
// pinned view of the leader's spill in bounded pieces, and the sink writes them into the
// follower's spill as they arrive, so neither end holds the backlog in memory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/clock.h"
#include "mq/mq.pb.h"
#include "raft/snapshot_stream.h"
#include "storage/spill_store.h"

namespace haven::node {

// One queue's spilled part in a local-form snapshot: `count` records of `uid` from id `from_id`.
struct SpillRange {
  uint64_t uid = 0;
  uint64_t from_id = 0;
  uint64_t count = 0;
};

// The spilled parts a local-form mq snapshot refers to (empty for a full one).
std::vector<SpillRange> SpillRanges(const mq::pb::Snapshot& snap);

// Stream layout: the 8-byte magic, then one frame per record, in the ranges' order:
// uid (8 bytes, big-endian), message id (8), record length (4), the record (a serialized
// mq::pb::Message, as the spill stores it).
inline constexpr char kSpillStreamMagic[] = "hvnspl01";
inline constexpr size_t kSpillStreamMagicBytes = 8;
inline constexpr size_t kSpillFrameHeaderBytes = 20;

class SpillSnapshotSource final : public raft::SnapshotSource {
 public:
  SpillSnapshotSource(std::vector<SpillRange> ranges,
                      std::shared_ptr<const storage::SpillView> view);
  // Reads forward from the last position; an earlier offset starts over from the beginning (a
  // restarted transfer). Memory: about max_bytes plus one read batch (1 MiB, or one record).
  Result<raft::SnapshotPiece> ReadAt(uint64_t offset, uint64_t max_bytes) override;

 private:
  void Reset();
  // Encodes frames until the buffer reaches `end` or the stream ends, dropping what is before
  // `from` as it goes.
  Status Fill(uint64_t from, uint64_t end);
  void Drop(uint64_t from);

  std::vector<SpillRange> ranges_;
  std::shared_ptr<const storage::SpillView> view_;
  size_t range_ = 0;      // the range being encoded
  uint64_t next_id_ = 0;  // in it
  uint64_t left_ = 0;     // records of it not yet encoded
  std::string buf_;       // encoded bytes from buf_offset_
  uint64_t buf_offset_ = 0;
  bool ended_ = false;
};

struct SpillSinkOptions {
  uint64_t max_stream_bytes = uint64_t{64} << 30;   // one snapshot's spilled records and framing
  uint64_t max_record_bytes = uint64_t{129} << 20;  // a 128 MiB message and its properties
  int64_t max_transfer_ms = 30 * 60 * 1000;         // a transfer older than this is refused
};

// Writes the records straight into the follower's spill, under their own keys: a record's key
// (queue uid, message id) holds the same message on every replica of one committed history, and a
// node's state reads only the ids of its own spilled ranges, which a newer snapshot's records never
// fall inside (docs/queues.md), so the old state keeps working until the new one is installed, and
// a transfer that stops half way leaves only records a later snapshot or apply truncates. Finish
// syncs them to disk before Raft persists the snapshot that needs them. Called on the Raft thread.
class SpillSnapshotSink final : public raft::SnapshotSink {
 public:
  SpillSnapshotSink(storage::SpillStore& spill, const Clock& clock, SpillSinkOptions opts = {});
  Status Begin(const raft::pb::SnapshotMeta& meta) override;
  Status Write(const raft::pb::SnapshotMeta& meta, uint64_t offset,
               std::string_view bytes) override;
  Status Finish(const raft::pb::SnapshotMeta& meta) override;
  void Abort() override;

 private:
  Status Check(const raft::pb::SnapshotMeta& meta) const;
  Status Parse();  // appends every whole frame in carry_ to the spill
  Status Fail(Status s);

  storage::SpillStore& spill_;
  const Clock& clock_;
  SpillSinkOptions opts_;
  bool active_ = false;
  uint64_t index_ = 0;
  MonoMs started_ms_ = 0;
  uint64_t received_ = 0;  // stream bytes so far
  uint64_t records_ = 0;
  bool magic_seen_ = false;
  std::string carry_;  // an incomplete frame (at most one record)
};

}  // namespace haven::node
