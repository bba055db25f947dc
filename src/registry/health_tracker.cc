#include "registry/health_tracker.h"

#include <algorithm>

#include <google/protobuf/util/message_differencer.h>

namespace haven::registry {
namespace {

constexpr const char* kPassing = "passing";
constexpr const char* kWarning = "warning";
constexpr const char* kCritical = "critical";
constexpr size_t kMinHeapForCompaction = 1024;

bool SameDefinition(const pb::CheckDefinition& a, const pb::CheckDefinition& b) {
  return google::protobuf::util::MessageDifferencer::Equals(a, b);
}

}  // namespace

// ---- checks ----

bool HealthTracker::IsProbe(const pb::CheckDefinition& def) {
  return !def.http().empty() || !def.tcp().empty();
}

bool HealthTracker::NeedsTracking(const pb::Check& check) {
  const auto& def = check.definition();
  return def.ttl_ms() > 0 || IsProbe(def) ||
         (!check.service_id().empty() && def.deregister_critical_after_ms() > 0);
}

int64_t HealthTracker::ProbeInterval(const pb::CheckDefinition& def) {
  if (def.interval_ms() <= 0) return kDefaultProbeIntervalMs;
  return std::clamp(def.interval_ms(), kMinProbeIntervalMs, kMaxProbeIntervalMs);
}

void HealthTracker::OnCheckChanged(const CheckKey& key, const pb::Check* check, MonoMs now) {
  if (check == nullptr || !NeedsTracking(*check)) {
    checks_.erase(key);  // its heap entries go stale and are dropped lazily
    return;
  }
  auto it = checks_.find(key);
  if (it == checks_.end()) {
    StartTracking(key, *check, now);
  } else {
    UpdateTracking(key, it->second, *check, now);
  }
}

void HealthTracker::StartTracking(const CheckKey& key, const pb::Check& check, MonoMs now) {
  TrackedCheck& t = checks_[key];
  t.def = check.definition();
  t.service_id = check.service_id();
  if (t.def.ttl_ms() > 0) {
    t.ttl_deadline = now + t.def.ttl_ms();
    Push(timers_, *t.ttl_deadline, TimerKind::kTtl, key);
  }
  if (IsProbe(t.def)) {
    t.next_probe = now;  // probe at once so a new instance need not wait a whole interval
    Push(probes_, now, TimerKind::kProbe, key);
  }
  NoteStatus(key, t, check.status(), now);
  t.output = check.output();
}

void HealthTracker::UpdateTracking(const CheckKey& key, TrackedCheck& t, const pb::Check& check,
                                   MonoMs now) {
  if (!SameDefinition(t.def, check.definition())) {
    const pb::CheckDefinition& def = check.definition();
    if (def.ttl_ms() != t.def.ttl_ms()) {
      t.ttl_deadline.reset();
      if (def.ttl_ms() > 0) {
        t.ttl_deadline = now + def.ttl_ms();
        Push(timers_, *t.ttl_deadline, TimerKind::kTtl, key);
      }
    }
    t.next_probe.reset();
    if (IsProbe(def)) {
      t.next_probe = now;
      Push(probes_, now, TimerKind::kProbe, key);
    }
    t.def = def;
  }
  t.service_id = check.service_id();
  NoteStatus(key, t, check.status(), now);
  t.output = check.output();
}

void HealthTracker::NoteStatus(const CheckKey& key, TrackedCheck& t, const std::string& status,
                               MonoMs now) {
  if (status == t.status) return;
  t.status = status;
  if (status != kCritical) {
    t.critical_since.reset();
    t.deregister_at.reset();
    return;
  }
  if (!t.critical_since) t.critical_since = now;
  int64_t after = t.def.deregister_critical_after_ms();
  if (!t.service_id.empty() && after > 0) {
    t.deregister_at = *t.critical_since + after;
    Push(timers_, *t.deregister_at, TimerKind::kDeregister, key);
  }
}

std::optional<std::string> HealthTracker::DampedStatus(TrackedCheck& t,
                                                       const std::string& status) const {
  if (status == kWarning) {
    t.successes = 0;
    t.failures = 0;
    return status;
  }
  if (status == kPassing) {
    t.failures = 0;
    ++t.successes;
    if (t.successes >= std::max(1, t.def.success_before_passing())) return status;
    return std::nullopt;
  }
  t.successes = 0;
  ++t.failures;
  if (t.failures >= std::max(1, t.def.failures_before_critical())) return status;
  return std::nullopt;
}

Result<std::optional<HealthAction>> HealthTracker::OnResult(const CheckKey& key,
                                                            const std::string& status,
                                                            const std::string& output, MonoMs now) {
  if (status != kPassing && status != kWarning && status != kCritical) {
    return Status::InvalidArgument("Invalid check status \"" + status + "\"");
  }
  auto it = checks_.find(key);
  if (it == checks_.end()) {
    return Status::NotFound("check \"" + key.check_id + "\" on node \"" + key.node +
                            "\" is not tracked");
  }
  TrackedCheck& t = it->second;
  if (t.def.ttl_ms() > 0) {
    t.ttl_deadline = now + t.def.ttl_ms();
    Push(timers_, *t.ttl_deadline, TimerKind::kTtl, key);
  }
  std::string out = output.substr(0, kMaxCheckOutputBytes);
  std::optional<std::string> target = DampedStatus(t, status);
  bool status_changes = target && *target != t.status;
  bool output_due = out != t.output &&
                    (!t.output_written_at || now - *t.output_written_at >= kOutputSyncIntervalMs);
  if (!status_changes && !output_due) return std::optional<HealthAction>();
  std::string new_status = status_changes ? *target : t.status;
  NoteStatus(key, t, new_status, now);
  t.output = out;
  t.output_written_at = now;
  return std::optional<HealthAction>(HealthAction{
      HealthAction::Kind::kSetStatus, key.node, key.check_id, new_status, out, {}, {}});
}

size_t HealthTracker::tracked_checks() const { return checks_.size(); }

const pb::CheckDefinition* HealthTracker::Definition(const CheckKey& key) const {
  auto it = checks_.find(key);
  return it == checks_.end() ? nullptr : &it->second.def;
}

void HealthTracker::RestartTtls(MonoMs now) {
  for (auto& [key, t] : checks_) {
    // A deregistration a follower's timer fired was dropped too: due again (not before now).
    int64_t after = t.def.deregister_critical_after_ms();
    if (t.status == kCritical && t.critical_since && !t.service_id.empty() && after > 0 &&
        !t.deregister_at) {
      t.deregister_at = std::max(now, *t.critical_since + after);
      Push(timers_, *t.deregister_at, TimerKind::kDeregister, key);
    }
    if (t.def.ttl_ms() <= 0) continue;
    t.ttl_deadline = now + t.def.ttl_ms();
    Push(timers_, *t.ttl_deadline, TimerKind::kTtl, key);
  }
  for (auto& [id, s] : sessions_) {
    // A session a follower saw expire was never destroyed (only a leader proposes that).
    s.expired = false;
    s.expires_at.reset();
    if (s.ttl_ms <= 0) continue;
    s.expires_at = now + s.ttl_ms;
    Push(timers_, *s.expires_at, TimerKind::kSession, {}, id);
  }
}

// ---- sessions ----

void HealthTracker::OnSessionChanged(const std::string& id, const pb::Session* session,
                                     MonoMs now) {
  if (session == nullptr) {
    sessions_.erase(id);
    return;
  }
  auto [it, inserted] = sessions_.try_emplace(id);
  TrackedSession& s = it->second;
  if (!inserted && s.ttl_ms == session->ttl_ms()) return;
  s.ttl_ms = session->ttl_ms();
  s.expires_at.reset();
  if (s.ttl_ms > 0 && !s.expired) {
    s.expires_at = now + s.ttl_ms;
    Push(timers_, *s.expires_at, TimerKind::kSession, {}, id);
  }
}

bool HealthTracker::RenewSession(const std::string& id, MonoMs now) {
  auto it = sessions_.find(id);
  if (it == sessions_.end() || it->second.expired) return false;
  TrackedSession& s = it->second;
  if (s.ttl_ms > 0) {
    s.expires_at = now + s.ttl_ms;
    Push(timers_, *s.expires_at, TimerKind::kSession, {}, id);
  }
  return true;
}

// ---- time ----

bool HealthTracker::TimerValid(const Timer& timer) const {
  if (timer.kind == TimerKind::kSession) {
    auto it = sessions_.find(timer.session_id);
    return it != sessions_.end() && !it->second.expired && it->second.expires_at == timer.when;
  }
  auto it = checks_.find(timer.check);
  if (it == checks_.end()) return false;
  const TrackedCheck& t = it->second;
  switch (timer.kind) {
    case TimerKind::kTtl:
      return t.ttl_deadline == timer.when;
    case TimerKind::kDeregister:
      return t.deregister_at == timer.when;
    case TimerKind::kProbe:
      return t.next_probe == timer.when;
    case TimerKind::kSession:
      break;
  }
  return false;
}

std::optional<HealthAction> HealthTracker::FireTimer(const Timer& timer, MonoMs now) {
  using Kind = HealthAction::Kind;
  if (timer.kind == TimerKind::kSession) {
    TrackedSession& s = sessions_.at(timer.session_id);
    s.expired = true;
    s.expires_at.reset();
    return HealthAction{Kind::kDestroySession, {}, {}, {}, {}, {}, timer.session_id};
  }
  TrackedCheck& t = checks_.at(timer.check);
  const CheckKey& key = timer.check;
  if (timer.kind == TimerKind::kDeregister) {
    t.deregister_at.reset();
    return HealthAction{Kind::kDeregisterService, key.node, key.check_id, {}, {}, t.service_id, {}};
  }
  // TTL expired.
  t.ttl_deadline.reset();
  t.successes = 0;
  if (t.status == kCritical) return std::nullopt;
  NoteStatus(key, t, kCritical, now);
  t.output = "TTL expired";
  t.output_written_at = now;
  return HealthAction{Kind::kSetStatus, key.node, key.check_id, kCritical, t.output, {}, {}};
}

std::vector<HealthAction> HealthTracker::Tick(MonoMs now) {
  std::vector<HealthAction> out;
  while (!timers_.empty() && timers_.top().when <= now) {
    Timer timer = timers_.top();
    timers_.pop();
    if (!TimerValid(timer)) continue;
    if (auto action = FireTimer(timer, now)) out.push_back(std::move(*action));
  }
  return out;
}

std::vector<CheckKey> HealthTracker::DueProbes(MonoMs now) {
  std::vector<CheckKey> out;
  std::vector<CheckKey> due;
  while (!probes_.empty() && probes_.top().when <= now) {
    Timer timer = probes_.top();
    probes_.pop();
    if (TimerValid(timer)) due.push_back(std::move(timer.check));
  }
  for (auto& key : due) {
    TrackedCheck& t = checks_.at(key);
    t.next_probe = now + ProbeInterval(t.def);
    Push(probes_, *t.next_probe, TimerKind::kProbe, key);
    out.push_back(std::move(key));
  }
  return out;
}

std::optional<MonoMs> HealthTracker::NextDeadline() const {
  DropStale(timers_);
  DropStale(probes_);
  std::optional<MonoMs> next;
  if (!timers_.empty()) next = timers_.top().when;
  if (!probes_.empty() && (!next || probes_.top().when < *next)) next = probes_.top().when;
  return next;
}

void HealthTracker::DropStale(TimerHeap& heap) const {
  while (!heap.empty() && !TimerValid(heap.top())) heap.pop();
}

void HealthTracker::Push(TimerHeap& heap, MonoMs when, TimerKind kind, const CheckKey& key,
                         const std::string& session_id) {
  heap.push(Timer{when, kind, key, session_id});
  // Heartbeats leave stale entries behind; rebuild when they dominate so memory stays bounded.
  size_t live = checks_.size() * 2 + sessions_.size();
  if (heap.size() > std::max(kMinHeapForCompaction, 4 * live)) Compact(heap);
}

void HealthTracker::Compact(TimerHeap& heap) const {
  std::vector<Timer> keep;
  while (!heap.empty()) {
    if (TimerValid(heap.top())) keep.push_back(heap.top());
    heap.pop();
  }
  heap = TimerHeap(std::greater<>(), std::move(keep));
}

}  // namespace haven::registry
