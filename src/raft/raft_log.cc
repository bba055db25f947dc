#include "raft/raft_log.h"

#include <algorithm>
#include <cassert>

namespace haven::raft {

namespace {
constexpr uint64_t kEntryOverheadBytes = 16;
}

uint64_t EntryBytes(const pb::Entry& e) { return e.data().size() + kEntryOverheadBytes; }

void RaftLog::Reset(uint64_t snap_index, uint64_t snap_term, std::vector<pb::Entry> entries) {
  snap_index_ = snap_index;
  snap_term_ = snap_term;
  entries_.assign(std::make_move_iterator(entries.begin()), std::make_move_iterator(entries.end()));
  stable_ = sent_ = last_index();
  committed_ = applied_ = applying_ = snap_index;
}

uint64_t RaftLog::last_term() const {
  return entries_.empty() ? snap_term_ : entries_.back().term();
}

std::optional<uint64_t> RaftLog::Term(uint64_t index) const {
  if (index == snap_index_) return snap_term_;
  if (index < snap_index_ || index > last_index()) return std::nullopt;
  return entries_[index - snap_index_ - 1].term();
}

bool RaftLog::MatchTerm(uint64_t index, uint64_t term) const {
  auto t = Term(index);
  return t && *t == term;
}

bool RaftLog::IsUpToDate(uint64_t index, uint64_t term) const {
  return term > last_term() || (term == last_term() && index >= last_index());
}

const pb::Entry* RaftLog::At(uint64_t index) const {
  if (index <= snap_index_ || index > last_index()) return nullptr;
  return &entries_[index - snap_index_ - 1];
}

void RaftLog::Append(pb::Entry e) {
  assert(e.index() == last_index() + 1);
  entries_.push_back(std::move(e));
}

void RaftLog::TruncateFrom(uint64_t index) {
  assert(index > committed_ && index > snap_index_);
  while (last_index() >= index) entries_.pop_back();
  stable_ = std::min(stable_, index - 1);
  sent_ = std::min(sent_, index - 1);
}

std::optional<uint64_t> RaftLog::MaybeAppend(
    uint64_t index, uint64_t log_term, const google::protobuf::RepeatedPtrField<pb::Entry>& ents,
    bool* ok) {
  *ok = true;
  if (!MatchTerm(index, log_term)) return std::nullopt;
  uint64_t last_new = index + ents.size();
  // The first entry that is new or differs; everything before it is already here.
  int first_new = 0;
  while (first_new < ents.size() && MatchTerm(ents[first_new].index(), ents[first_new].term())) {
    ++first_new;
  }
  if (first_new == ents.size()) return last_new;
  uint64_t conflict = ents[first_new].index();
  if (conflict <= committed_) {
    *ok = false;
    return std::nullopt;
  }
  if (conflict <= last_index()) TruncateFrom(conflict);
  for (int i = first_new; i < ents.size(); ++i) entries_.push_back(ents[i]);
  return last_new;
}

uint64_t RaftLog::FindConflictByTerm(uint64_t index, uint64_t term) const {
  index = std::min(index, last_index());
  while (index > snap_index_) {
    auto t = Term(index);
    if (!t || *t <= term) break;
    --index;
  }
  return index;
}

bool RaftLog::Slice(uint64_t lo, uint64_t hi, uint64_t max_bytes,
                    std::vector<pb::Entry>* out) const {
  out->clear();
  if (lo <= snap_index_) return false;
  hi = std::min(hi, last_index() + 1);
  uint64_t bytes = 0;
  for (uint64_t i = lo; i < hi; ++i) {
    const pb::Entry& e = entries_[i - snap_index_ - 1];
    bytes += EntryBytes(e);
    if (!out->empty() && bytes > max_bytes) break;
    out->push_back(e);
  }
  return true;
}

void RaftLog::CommitTo(uint64_t index) {
  index = std::min(index, last_index());
  if (index > committed_) committed_ = index;
}

void RaftLog::AppliedTo(uint64_t index) {
  index = std::min(index, committed_);
  if (index > applied_) applied_ = index;
  applying_ = std::max(applying_, applied_);
}

std::vector<pb::Entry> RaftLog::TakeUnsent() {
  std::vector<pb::Entry> out;
  for (uint64_t i = std::max(sent_, snap_index_) + 1; i <= last_index(); ++i) {
    out.push_back(entries_[i - snap_index_ - 1]);
  }
  sent_ = last_index();
  return out;
}

void RaftLog::StableTo(uint64_t index, uint64_t term) {
  if (MatchTerm(index, term) && index > stable_) stable_ = std::min(index, sent_);
}

void RaftLog::CompactTo(uint64_t index) {
  assert(index >= snap_index_ && index <= last_index());
  uint64_t term = *Term(index);
  while (snap_index_ < index) {
    entries_.pop_front();
    ++snap_index_;
  }
  snap_term_ = term;
  stable_ = std::max(stable_, snap_index_);
  sent_ = std::max(sent_, snap_index_);
}

void RaftLog::Restore(uint64_t index, uint64_t term) {
  entries_.clear();
  snap_index_ = index;
  snap_term_ = term;
  committed_ = index;
  applying_ = index;
  stable_ = sent_ = index;
}

}  // namespace haven::raft
