// SnapshotSource / SnapshotSink: the part of a snapshot too big to hold in memory (a queue backlog
// on disk), produced and consumed in pieces by the shell. The core only moves bytes by offset: a
// streamed snapshot is its in-memory data followed by the source's bytes, and the receiver's core
// keeps the in-memory part and hands the rest to its sink as it arrives.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "base/status.h"
#include "raft/raft.pb.h"

namespace haven::raft {

// A piece of a stream; `last` when the stream ends with it (an empty last piece is fine).
struct SnapshotPiece {
  std::string data;
  bool last = false;
};

// The leader's side: bytes of one snapshot's stream, as of when that snapshot was taken, for as
// long as the core holds it (a newer snapshot replaces it). Mostly read forward; a restarted
// transfer reads from an earlier offset again.
class SnapshotSource {
 public:
  virtual ~SnapshotSource() = default;
  // Up to max_bytes (> 0) from `offset`; an error ends this transfer (the core starts another).
  virtual Result<SnapshotPiece> ReadAt(uint64_t offset, uint64_t max_bytes) = 0;
};

// The follower's side: where a streamed snapshot's bytes go as they arrive, staged until Finish;
// nothing the state machine reads changes before the snapshot is installed.
class SnapshotSink {
 public:
  virtual ~SnapshotSink() = default;
  // A transfer of `meta` starts (an unfinished earlier one is abandoned). Error: refused.
  virtual Status Begin(const pb::SnapshotMeta& meta) = 0;
  // The next `bytes` of the stream (offsets arrive contiguous, from 0). Error: the transfer ends.
  virtual Status Write(const pb::SnapshotMeta& meta, uint64_t offset, std::string_view bytes) = 0;
  // Every byte arrived: make them durable (the snapshot is persisted and installed right after).
  virtual Status Finish(const pb::SnapshotMeta& meta) = 0;
  // The transfer was abandoned (another leader, a rejected chunk).
  virtual void Abort() = 0;
};

}  // namespace haven::raft
