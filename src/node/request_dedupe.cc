#include "node/request_dedupe.h"

#include <algorithm>

#include "node/node.pb.h"

namespace haven::node {

RequestDedupe::RequestDedupe(DedupeLimits limits) : limits_(limits) {}

std::string RequestDedupe::KeyOf(const ProposalIdentity& id) {
  if (!id.client_id.empty()) return "c" + id.client_id;
  std::string key = "p";
  for (uint64_t v : {id.origin, id.boot, id.seq}) {
    for (int shift = 0; shift < 64; shift += 8) key.push_back(static_cast<char>(v >> shift));
  }
  return key;
}

RequestDedupe::Decision RequestDedupe::Check(const ProposalIdentity& id) const {
  Decision d;
  if (id.boot == 0) return d;  // written before identities: nothing to tell it by
  if (id.client_id.empty()) return CheckWindow(id);
  auto it = by_key_.find(KeyOf(id));
  if (it != by_key_.end()) {
    d.verdict = Verdict::kDuplicate;
    d.first_index = it->second.index;
    d.result = it->second.result;
    return d;
  }
  // Its original (if any) committed above base_index; everything forgotten is at or below floor_.
  // So with base_index >= floor_, an original would still be here.
  if (id.base_index < floor_) d.verdict = Verdict::kTooOld;
  return d;
}

void RequestDedupe::Record(uint64_t index, const ProposalIdentity& id, std::string result) {
  if (id.boot == 0) return;
  if (id.client_id.empty()) {
    RecordWindow(index, id);
    return Advance(index);
  }
  std::string key = KeyOf(id);
  if (by_key_.count(key)) return;  // Check said it is a duplicate: keep the first
  by_index_.emplace(index, key);
  by_key_.emplace(std::move(key), Remembered{index, std::move(result)});
  while (by_key_.size() > limits_.max_entries) ForgetOldest();
  Advance(index);
}

void RequestDedupe::Advance(uint64_t index) {
  while (!by_index_.empty() && by_index_.begin()->first + limits_.max_age_entries < index) {
    ForgetOldest();
  }
  // Scanned every 256 indexes (windows are few): still a function of the log alone.
  if (index % 256 == 0) ForgetOldWindows(index);
}

// A proposer's copy is a duplicate when its seq's bit is set; below the window it may be a
// forgotten one (refused); a proposer not known is new unless forgotten proposers could have
// made it (its base below the highest index a forgotten window reached).
RequestDedupe::Decision RequestDedupe::CheckWindow(const ProposalIdentity& id) const {
  Decision d;
  auto it = windows_.find({id.origin, id.boot});
  if (it == windows_.end()) {
    if (id.base_index < window_floor_) d.verdict = Verdict::kTooOld;
    return d;
  }
  const Window& w = it->second;
  if (id.seq < w.base) {
    d.verdict = Verdict::kTooOld;
  } else if (uint64_t bit = id.seq - w.base;
             bit < kDedupeWindowSeqs && (w.bits[bit / 64] >> (bit % 64) & 1) != 0) {
    // Its proposer was answered when the first copy applied; no outcome is needed.
    d.verdict = Verdict::kDuplicate;
  }
  return d;
}

void RequestDedupe::RecordWindow(uint64_t index, const ProposalIdentity& id) {
  constexpr uint64_t kWords = kDedupeWindowSeqs / 64;
  auto [it, created] = windows_.try_emplace({id.origin, id.boot});
  Window& w = it->second;
  if (created) w.bits.assign(kWords, 0);
  if (id.seq < w.base) return;
  if (id.seq - w.base >= kDedupeWindowSeqs) {  // slide so that seq is the last one in
    uint64_t base = (id.seq + 1 - kDedupeWindowSeqs + 63) / 64 * 64;
    uint64_t shift = (base - w.base) / 64;
    if (shift >= kWords) {
      std::fill(w.bits.begin(), w.bits.end(), 0);
    } else {
      std::move(w.bits.begin() + static_cast<std::ptrdiff_t>(shift), w.bits.end(), w.bits.begin());
      std::fill(w.bits.end() - static_cast<std::ptrdiff_t>(shift), w.bits.end(), 0);
    }
    w.base = base;
  }
  uint64_t bit = id.seq - w.base;
  w.bits[bit / 64] |= uint64_t{1} << (bit % 64);
  w.last_index = index;
  if (windows_.size() > limits_.max_proposers) {
    auto oldest = windows_.end();
    for (auto i = windows_.begin(); i != windows_.end(); ++i) {
      if (i != it && (oldest == windows_.end() || i->second.last_index < oldest->second.last_index))
        oldest = i;
    }
    window_floor_ = std::max(window_floor_, oldest->second.last_index);
    windows_.erase(oldest);
  }
}

void RequestDedupe::ForgetOldWindows(uint64_t index) {
  for (auto it = windows_.begin(); it != windows_.end();) {
    if (it->second.last_index + limits_.max_age_entries < index) {
      window_floor_ = std::max(window_floor_, it->second.last_index);
      it = windows_.erase(it);
    } else {
      ++it;
    }
  }
}

void RequestDedupe::ForgetOldest() {
  auto it = by_index_.begin();
  floor_ = std::max(floor_, it->first);
  by_key_.erase(it->second);
  by_index_.erase(it);
}

std::string RequestDedupe::Serialize() const {
  pb::DedupeTable out;
  out.set_floor_index(floor_);
  for (const auto& [index, key] : by_index_) {
    auto* e = out.add_entries();
    e->set_key(key);
    e->set_index(index);
    e->set_result(by_key_.at(key).result);
  }
  out.set_window_floor_index(window_floor_);
  for (const auto& [key, w] : windows_) {
    auto* o = out.add_windows();
    o->set_origin(key.first);
    o->set_boot(key.second);
    o->set_base(w.base);
    o->set_last_index(w.last_index);
    size_t used = w.bits.size();
    while (used > 0 && w.bits[used - 1] == 0) --used;
    for (size_t i = 0; i < used; ++i) o->add_bits(w.bits[i]);
  }
  return out.SerializeAsString();
}

Status RequestDedupe::Parse(const std::string& bytes) {
  Clear();
  pb::DedupeTable table;
  if (!table.ParseFromString(bytes)) return Status::InvalidArgument("dedupe table does not parse");
  uint64_t prev = 0;
  for (const auto& e : table.entries()) {
    if (e.key().empty() || e.index() <= prev || e.index() <= table.floor_index() ||
        by_key_.count(e.key())) {
      // Forget it all, but as forgotten: a proposal from before it is refused, never re-applied.
      Clear();
      floor_ = table.floor_index();
      for (const auto& any : table.entries()) floor_ = std::max(floor_, any.index());
      return Status::InvalidArgument("dedupe table: entry at index " + std::to_string(e.index()) +
                                     " is out of order or repeated");
    }
    prev = e.index();
    by_index_.emplace(e.index(), e.key());
    by_key_.emplace(e.key(), Remembered{e.index(), e.result()});
  }
  floor_ = table.floor_index();
  window_floor_ = table.window_floor_index();
  for (const auto& o : table.windows()) {
    if (o.base() % 64 != 0 || o.bits_size() > static_cast<int>(kDedupeWindowSeqs / 64) ||
        windows_.count({o.origin(), o.boot()})) {
      // As above: forgotten, so that anything from before it is refused rather than re-applied.
      for (const auto& any : table.windows())
        window_floor_ = std::max(window_floor_, any.last_index());
      windows_.clear();
      return Status::InvalidArgument("dedupe table: a proposer window is malformed or repeated");
    }
    Window w{o.base(), o.last_index(), std::vector<uint64_t>(kDedupeWindowSeqs / 64, 0)};
    std::copy(o.bits().begin(), o.bits().end(), w.bits.begin());
    windows_.emplace(std::make_pair(o.origin(), o.boot()), std::move(w));
  }
  return Status::Ok();
}

void RequestDedupe::Clear() {
  by_key_.clear();
  by_index_.clear();
  floor_ = 0;
  windows_.clear();
  window_floor_ = 0;
}

}  // namespace haven::node
