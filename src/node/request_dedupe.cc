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
  return Status::Ok();
}

void RequestDedupe::Clear() {
  by_key_.clear();
  by_index_.clear();
  floor_ = 0;
}

}  // namespace haven::node
