// HealthTracker: the time side of health, held in memory on the leader. It turns heartbeats, probe
// results and the passing of time into the few writes (status changes, deregistrations, session
// expiries) that must go through Raft. Pure: time comes in as MonoMs values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <queue>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/status.h"
#include "registry/registry.pb.h"
#include "registry/state_machine.h"

namespace haven::registry {

// Probe intervals are clamped to these so a bad definition cannot spin or starve the prober.
inline constexpr int64_t kDefaultProbeIntervalMs = 10'000;
inline constexpr int64_t kMinProbeIntervalMs = 100;
inline constexpr int64_t kMaxProbeIntervalMs = 24LL * 3600 * 1000;
// A change of a check's output alone (same status) is written at most this often per check, as
// Consul's check_update_interval does; the first output of a newly tracked check is written at
// once.
inline constexpr int64_t kOutputSyncIntervalMs = 60'000;

struct HealthAction {
  enum class Kind { kSetStatus, kDeregisterService, kDestroySession };
  Kind kind;
  std::string node, check_id, status, output;  // kSetStatus
  std::string service_id;                      // kDeregisterService (node too)
  std::string session_id;                      // kDestroySession
};

class HealthTracker {
 public:
  // Reconcile one check with the committed state: `check` is the state machine's current check, or
  // nullptr if it was removed. Starts/updates/stops tracking. A newly tracked TTL check gets a full
  // TTL from `now` before it can expire (also after restart: grace).
  void OnCheckChanged(const CheckKey& key, const pb::Check* check, MonoMs now);
  void OnSessionChanged(const std::string& id, const pb::Session* session, MonoMs now);
  // This node just became the leader. Its tracker followed the committed state without seeing a
  // heartbeat, so its TTL and session deadlines are stale (long expired, or set by a
  // registration long ago): every TTL check and session gets one full TTL from `now`, as a new
  // Consul leader gives; a deregistration of a critical service the follower's timer dropped is
  // due again. Call after reconciling every check and session with OnCheckChanged /
  // OnSessionChanged.
  void RestartTtls(MonoMs now);
  // A TTL update (pass/warn/fail/update; status in passing|warning|critical) or a probe result for
  // an HTTP/TCP check. Flap damping (success_before_passing / failures_before_critical) applies to
  // transitions to passing and to critical; warning is immediate. Resets the TTL deadline for TTL
  // checks. Returns a kSetStatus action when the resulting status differs from the last
  // committed-or-proposed status, or when only the output changed and the last output write is
  // kOutputSyncIntervalMs old (a heartbeat that repeats itself costs no write). NotFound if the
  // check is not tracked, InvalidArgument for an unknown status.
  Result<std::optional<HealthAction>> OnResult(const CheckKey& key, const std::string& status,
                                               const std::string& output, MonoMs now);
  bool RenewSession(const std::string& id, MonoMs now);  // false if unknown (or already expired)
  // Time-driven actions due at `now`: TTL expired -> kSetStatus critical ("TTL expired"); a service
  // check critical for >= deregister_critical_after_ms -> kDeregisterService (once); session TTL
  // expired -> kDestroySession (once).
  std::vector<HealthAction> Tick(MonoMs now);
  // HTTP/TCP checks whose interval has elapsed: the shell runs these probes and calls OnResult.
  // Each returned check is not returned again until its next interval.
  std::vector<CheckKey> DueProbes(MonoMs now);
  // Earliest time at which Tick or DueProbes would return something (for the shell's timer).
  std::optional<MonoMs> NextDeadline() const;
  size_t tracked_checks() const;
  // How to run the probe of a tracked check; nullptr if not tracked.
  const pb::CheckDefinition* Definition(const CheckKey& key) const;

 private:
  enum class TimerKind { kTtl, kDeregister, kSession, kProbe };
  struct Timer {
    MonoMs when;
    TimerKind kind;
    CheckKey check;          // check timers
    std::string session_id;  // session timers
    bool operator>(const Timer& o) const { return when > o.when; }
  };
  using TimerHeap = std::priority_queue<Timer, std::vector<Timer>, std::greater<>>;

  struct TrackedCheck {
    pb::CheckDefinition def;
    std::string service_id;
    std::string status;  // last committed-or-proposed
    std::string output;  // last committed-or-proposed
    std::optional<MonoMs> output_written_at;
    int successes = 0;  // consecutive, for damping
    int failures = 0;
    std::optional<MonoMs> ttl_deadline;
    std::optional<MonoMs> next_probe;
    std::optional<MonoMs> critical_since;
    std::optional<MonoMs> deregister_at;  // cleared once the action was returned
  };
  struct TrackedSession {
    int64_t ttl_ms = 0;
    std::optional<MonoMs> expires_at;
    bool expired = false;  // destroy proposed: renewals fail from then on
  };

  static bool NeedsTracking(const pb::Check& check);
  static bool IsProbe(const pb::CheckDefinition& def);
  static int64_t ProbeInterval(const pb::CheckDefinition& def);
  void StartTracking(const CheckKey& key, const pb::Check& check, MonoMs now);
  void UpdateTracking(const CheckKey& key, TrackedCheck& t, const pb::Check& check, MonoMs now);
  // Records a new last-known status and (re)arms the deregister timer.
  void NoteStatus(const CheckKey& key, TrackedCheck& t, const std::string& status, MonoMs now);
  std::optional<std::string> DampedStatus(TrackedCheck& t, const std::string& status) const;
  bool TimerValid(const Timer& timer) const;
  std::optional<HealthAction> FireTimer(const Timer& timer, MonoMs now);
  void Push(TimerHeap& heap, MonoMs when, TimerKind kind, const CheckKey& key,
            const std::string& session_id = {});
  void DropStale(TimerHeap& heap) const;
  void Compact(TimerHeap& heap) const;

  std::map<CheckKey, TrackedCheck> checks_;
  std::map<std::string, TrackedSession> sessions_;
  // Min-heaps of deadlines with lazy deletion: an entry counts only if it still matches the
  // tracked object's current deadline, so rescheduling never needs a search.
  mutable TimerHeap timers_;  // TTL, deregister, session
  mutable TimerHeap probes_;
};

}  // namespace haven::registry
