// Member liveness: how the leader tells a member whose process is gone (drop its consumers now)
// from one that is only slow, paused or cut off (wait the full member timeout). Pure: the Raft log
// and the broker feed it times, frames heard and probe results; it does no I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <vector>

namespace haven::node {

// PeerProbeSchedule: on the Raft leader, when to try a TCP connect to a silent member's raft
// port, and what the answer proves. Only a refused connect with nothing heard from the member
// since the probe began marks it gone: the kernel refuses only when no process listens there. A
// paused process still accepts (its backlog does) and a partition lets the connect time out, so
// neither is ever reported gone.
class PeerProbeSchedule {
 public:
  struct Options {
    int64_t silence_ms = 100;       // a member silent this long is probed (2 heartbeat intervals)
    int64_t max_backoff_ms = 1000;  // probes of a member that keeps answering back off to this
  };
  explicit PeerProbeSchedule(Options opts) : opts_(opts) {}

  // A frame came from `id`: it is alive, whatever a probe said before.
  void Heard(uint64_t id, int64_t now_ms);
  // This node became the leader: every member gets `silence_ms` of grace from now, except those
  // already found gone (a follower's probe of the old leader), which are probed at once again.
  void BecomeLeader(int64_t now_ms);
  // The members to probe now, out of `others` (the membership but this node); each is in flight
  // until ProbeDone. Members no longer among `others` are forgotten.
  std::vector<uint64_t> DueProbes(int64_t now_ms, const std::vector<uint64_t>& others);
  // The probe of `id` started by DueProbes (or Started) ended. Returns true when this made the
  // member gone: refused, and no frame from it since the probe began.
  bool ProbeDone(uint64_t id, bool refused, int64_t now_ms);
  // A probe made outside DueProbes (the follower's probe of its leader) began.
  void Started(uint64_t id);
  // Members found gone and not heard from since.
  std::set<uint64_t> gone() const;

 private:
  struct Peer {
    int64_t heard_ms = 0;    // last frame (or grace start)
    uint64_t heard_seq = 0;  // bumped on every frame: tells a frame during a probe
    uint64_t probe_seq = 0;  // heard_seq when the probe in flight began
    bool in_flight = false;
    bool gone = false;
    int64_t next_probe_ms = 0;  // no probe before this
    int64_t backoff_ms = 0;     // the wait after the last probe that did not prove anything
  };
  Peer& At(uint64_t id, int64_t now_ms);
  static constexpr size_t kMaxPeers = 64;  // far above Raft's members; bounds unknown senders

  Options opts_;
  std::map<uint64_t, Peer> peers_;
};

// MemberDropPolicy: on the queue leader, which members' consumers to drop, and why. A member's
// consumers live on its process; when it dies nobody acks or cancels for them, so the leader
// drops them and their unacked messages go back to the queue, redelivered. A wrong drop costs
// duplicate deliveries and the member's connections, so only proof shortcuts the timeout.
class MemberDropPolicy {
 public:
  enum class Reason {
    kGone,     // its raft port refused a connect: the process is gone
    kSilent,   // inactive in Raft for member_timeout_ms (slow, paused, partitioned or dead)
    kRemoved,  // no longer in the cluster but still holding consumers
  };
  static const char* ReasonName(Reason r);

  struct Member {
    uint64_t id = 0;
    bool active = false;  // Raft's view: heard within the last election timeout
    bool gone = false;    // PeerProbeSchedule's verdict
  };
  struct Drop {
    uint64_t id = 0;
    Reason reason = Reason::kSilent;
  };

  explicit MemberDropPolicy(int64_t member_timeout_ms) : timeout_ms_(member_timeout_ms) {}

  // Leadership changed: every member gets a full timeout again (a gone one is still dropped at
  // once: that verdict does not depend on how long this leader has watched).
  void Reset();
  // The members to drop now, each once until it comes back (active and not gone). `members` is
  // the membership (self included, skipped); `holders` the raft ids owning consumers.
  std::vector<Drop> Check(int64_t now_ms, uint64_t self, const std::vector<Member>& members,
                          const std::set<uint64_t>& holders);
  // The drop of `id` was not committed: the next Check may decide it again.
  void DropFailed(uint64_t id) { dropped_.erase(id); }

 private:
  int64_t timeout_ms_;
  std::map<uint64_t, int64_t> silent_since_ms_;  // inactive members, since when
  std::set<uint64_t> dropped_;
};

}  // namespace haven::node
