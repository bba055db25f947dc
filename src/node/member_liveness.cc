#include "node/member_liveness.h"

#include <algorithm>

namespace haven::node {

PeerProbeSchedule::Peer& PeerProbeSchedule::At(uint64_t id, int64_t now_ms) {
  auto [it, fresh] = peers_.try_emplace(id);
  if (fresh) it->second.heard_ms = now_ms;  // a member first seen now gets the grace
  return it->second;
}

void PeerProbeSchedule::Heard(uint64_t id, int64_t now_ms) {
  // Frames name their sender: a follower (which never prunes) tracks a bounded number of them.
  if (!peers_.count(id) && peers_.size() >= kMaxPeers) return;
  Peer& p = At(id, now_ms);
  p.heard_ms = now_ms;
  ++p.heard_seq;
  p.gone = false;
  p.backoff_ms = 0;
  p.next_probe_ms = 0;
}

// Being gone was true when the probe ran; this leader checks again before acting on it, so a
// member restarted meanwhile is not taken for its dead predecessor.
void PeerProbeSchedule::BecomeLeader(int64_t now_ms) {
  for (auto& [id, p] : peers_) {
    p.heard_ms = p.gone ? now_ms - opts_.silence_ms : now_ms;
    p.gone = false;
    p.backoff_ms = 0;
    p.next_probe_ms = 0;
  }
}

std::vector<uint64_t> PeerProbeSchedule::DueProbes(int64_t now_ms,
                                                   const std::vector<uint64_t>& others) {
  std::erase_if(peers_, [&](const auto& kv) {
    return std::find(others.begin(), others.end(), kv.first) == others.end();
  });
  std::vector<uint64_t> due;
  for (uint64_t id : others) {
    Peer& p = At(id, now_ms);
    if (p.in_flight || p.gone) continue;
    if (now_ms - p.heard_ms < opts_.silence_ms || now_ms < p.next_probe_ms) continue;
    p.in_flight = true;
    p.probe_seq = p.heard_seq;
    due.push_back(id);
  }
  return due;
}

void PeerProbeSchedule::Started(uint64_t id) {
  if (!peers_.count(id) && peers_.size() >= kMaxPeers) return;
  Peer& p = peers_[id];
  p.in_flight = true;
  p.probe_seq = p.heard_seq;
}

bool PeerProbeSchedule::ProbeDone(uint64_t id, bool refused, int64_t now_ms) {
  auto it = peers_.find(id);
  if (it == peers_.end()) return false;  // no longer a member
  Peer& p = it->second;
  p.in_flight = false;
  if (refused && p.heard_seq == p.probe_seq) {
    const bool newly = !p.gone;
    p.gone = true;
    return newly;
  }
  // Accepted, timed out, or heard meanwhile: alive or unknown. Probe again later, less often.
  p.backoff_ms =
      p.backoff_ms == 0 ? opts_.silence_ms : std::min(2 * p.backoff_ms, opts_.max_backoff_ms);
  p.next_probe_ms = now_ms + p.backoff_ms;
  return false;
}

std::set<uint64_t> PeerProbeSchedule::gone() const {
  std::set<uint64_t> out;
  for (const auto& [id, p] : peers_) {
    if (p.gone) out.insert(id);
  }
  return out;
}

const char* MemberDropPolicy::ReasonName(Reason r) {
  switch (r) {
    case Reason::kGone:
      return "gone";
    case Reason::kSilent:
      return "silent";
    case Reason::kRemoved:
      return "removed";
  }
  return "unknown";
}

void MemberDropPolicy::Reset() {
  silent_since_ms_.clear();
  dropped_.clear();
}

std::vector<MemberDropPolicy::Drop> MemberDropPolicy::Check(int64_t now_ms, uint64_t self,
                                                            const std::vector<Member>& members,
                                                            const std::set<uint64_t>& holders) {
  std::vector<Drop> drops;
  std::set<uint64_t> ids;
  for (const Member& m : members) {
    ids.insert(m.id);
    if (m.id == self) continue;
    if (m.gone) {
      if (dropped_.insert(m.id).second) drops.push_back({m.id, Reason::kGone});
      continue;
    }
    if (m.active) {  // back (or never away): a later death is dropped again
      silent_since_ms_.erase(m.id);
      dropped_.erase(m.id);
      continue;
    }
    auto [it, fresh] = silent_since_ms_.try_emplace(m.id, now_ms);
    if (!fresh && now_ms - it->second >= timeout_ms_ && dropped_.insert(m.id).second) {
      drops.push_back({m.id, Reason::kSilent});
    }
  }
  for (uint64_t id : holders) {
    if (id != 0 && !ids.count(id) && dropped_.insert(id).second) {
      drops.push_back({id, Reason::kRemoved});
    }
  }
  return drops;
}

}  // namespace haven::node
