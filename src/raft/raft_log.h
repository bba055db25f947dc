// RaftLog: the in-memory Raft log since the last snapshot, with the persisted (stable), committed
// and applied marks; the shell persists what TakeUnsent hands out.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <vector>

#include "raft/raft.pb.h"

namespace haven::raft {

// Bytes an entry counts for in flow control and batching (payload plus a fixed header estimate).
uint64_t EntryBytes(const pb::Entry& e);

class RaftLog {
 public:
  // Replaces everything: the log is compacted up to (snap_index, snap_term) and holds `entries`
  // (contiguous, starting at snap_index + 1), all of them already persisted.
  void Reset(uint64_t snap_index, uint64_t snap_term, std::vector<pb::Entry> entries);

  uint64_t snap_index() const { return snap_index_; }
  uint64_t snap_term() const { return snap_term_; }
  uint64_t first_index() const { return snap_index_ + 1; }
  uint64_t last_index() const { return snap_index_ + entries_.size(); }
  uint64_t last_term() const;
  // The term at `index`; nullopt when compacted away or beyond the end.
  std::optional<uint64_t> Term(uint64_t index) const;
  bool MatchTerm(uint64_t index, uint64_t term) const;
  // Whether a candidate with this last entry is at least as up to date as this log (paper 5.4.1).
  bool IsUpToDate(uint64_t last_index, uint64_t last_term) const;
  // nullptr when the entry is not in memory.
  const pb::Entry* At(uint64_t index) const;

  // Leader: appends at last_index() + 1 (the caller sets index and term).
  void Append(pb::Entry e);
  // Follower: the consistency check and append of a MsgApp. Returns the last index the append
  // vouches for, or nullopt when (index, log_term) does not match. `ok` is false when the entries
  // would replace a committed entry (a buggy or malicious leader): nothing changes.
  std::optional<uint64_t> MaybeAppend(uint64_t index, uint64_t log_term,
                                      const google::protobuf::RepeatedPtrField<pb::Entry>& ents,
                                      bool* ok);
  // The largest index <= `index` whose term is <= `term` (fast backtracking of rejected appends).
  uint64_t FindConflictByTerm(uint64_t index, uint64_t term) const;
  // Entries [lo, hi), at most max_bytes but always at least one. False if lo is compacted.
  bool Slice(uint64_t lo, uint64_t hi, uint64_t max_bytes, std::vector<pb::Entry>* out) const;

  uint64_t committed() const { return committed_; }
  uint64_t applied() const { return applied_; }
  uint64_t applying() const { return applying_; }
  void CommitTo(uint64_t index);
  void AppliedTo(uint64_t index);
  void ApplyingTo(uint64_t index) { applying_ = index; }
  void SetCommitted(uint64_t index) { committed_ = index; }
  void SetApplied(uint64_t index) { applied_ = applying_ = index; }

  // Persistence tracking: entries after `sent` have not been handed out yet; `stable` is what the
  // shell confirmed persisted (Advance).
  uint64_t stable() const { return stable_; }
  bool HasUnsent() const { return sent_ < last_index(); }
  std::vector<pb::Entry> TakeUnsent();
  // The shell persisted up to (index, term); ignored if that entry was replaced meanwhile.
  void StableTo(uint64_t index, uint64_t term);

  // Drops entries up to `index` (a snapshot covers them); index in [snap_index, last_index].
  void CompactTo(uint64_t index);
  // Replaces the log with a snapshot (the follower installs one from the leader).
  void Restore(uint64_t index, uint64_t term);

 private:
  void TruncateFrom(uint64_t index);

  uint64_t snap_index_ = 0;
  uint64_t snap_term_ = 0;
  std::deque<pb::Entry> entries_;
  uint64_t committed_ = 0;
  uint64_t applied_ = 0;
  uint64_t applying_ = 0;  // handed out in a Ready as committed, maybe not applied yet
  uint64_t stable_ = 0;
  uint64_t sent_ = 0;
};

}  // namespace haven::raft
