// Progress: the leader's view of one follower (match/next, probe/replicate/snapshot state) and the
// inflight window that bounds unacknowledged MsgApps per follower in messages and bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <utility>

namespace haven::raft {

// MsgApps sent but not acknowledged, as (last index, bytes), oldest first.
class Inflights {
 public:
  Inflights(size_t max_msgs, uint64_t max_bytes) : max_msgs_(max_msgs), max_bytes_(max_bytes) {}
  void Add(uint64_t last_index, uint64_t bytes);
  // Frees every message whose last index is <= index (acknowledged).
  void FreeLE(uint64_t index);
  void FreeFirstOne();
  bool Full() const { return q_.size() >= max_msgs_ || bytes_ >= max_bytes_; }
  size_t count() const { return q_.size(); }
  uint64_t bytes() const { return bytes_; }
  void Reset() {
    q_.clear();
    bytes_ = 0;
  }

 private:
  size_t max_msgs_;
  uint64_t max_bytes_;
  std::deque<std::pair<uint64_t, uint64_t>> q_;
  uint64_t bytes_ = 0;
};

enum class ProgressState { kProbe, kReplicate, kSnapshot };
const char* ProgressStateName(ProgressState s);

struct Progress {
  Progress(size_t max_msgs, uint64_t max_bytes) : inflights(max_msgs, max_bytes) {}

  uint64_t match = 0;
  uint64_t next = 1;
  ProgressState state = ProgressState::kProbe;
  bool probe_sent = false;  // probe: one MsgApp per heartbeat until the follower answers
  bool recent_active = false;
  uint64_t sent_commit = 0;  // highest commit index sent, so a lagging commit gets sent
  bool learner = false;
  // Snapshot state: which snapshot, how many bytes the follower confirmed, ticks since a chunk.
  uint64_t pending_snapshot = 0;
  uint64_t snap_acked = 0;
  int snap_ticks = 0;
  Inflights inflights;

  void BecomeProbe();
  void BecomeReplicate();
  void BecomeSnapshot(uint64_t snapshot_index);
  // An acknowledgement up to n; true if match moved.
  bool MaybeUpdate(uint64_t n);
  // A rejection of the append after `rejected`; true if next moved (send again).
  bool MaybeDecrTo(uint64_t rejected, uint64_t match_hint);
  bool IsPaused() const;
};

}  // namespace haven::raft
