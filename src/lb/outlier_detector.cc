// Passive outlier detection: N consecutive failures eject an endpoint for a time that doubles with
// each ejection, capped, and never more than a set share of the endpoints at once.
#include "lb/outlier_detector.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

namespace haven::lb {
namespace {

constexpr int kMaxConsecutiveFailures = 1'000'000;
constexpr int64_t kMaxEjectionMs = 24LL * 3600 * 1000;  // a day: anything longer is a config error

OutlierOptions Clamp(OutlierOptions o) {
  o.consecutive_failures = std::clamp(o.consecutive_failures, 1, kMaxConsecutiveFailures);
  o.consecutive_connect_failures =
      std::clamp(o.consecutive_connect_failures, 1, kMaxConsecutiveFailures);
  o.base_ejection_ms = std::clamp<int64_t>(o.base_ejection_ms, 1, kMaxEjectionMs);
  o.max_ejection_ms = std::clamp<int64_t>(o.max_ejection_ms, o.base_ejection_ms, kMaxEjectionMs);
  if (!(o.max_ejected_fraction >= 0)) o.max_ejected_fraction = 0;  // also catches NaN
  o.max_ejected_fraction = std::min(o.max_ejected_fraction, 1.0);
  return o;
}

}  // namespace

std::string_view EjectionReasonName(EjectionReason r) {
  switch (r) {
    case EjectionReason::kConnect:
      return "connect";
    case EjectionReason::kTimeout:
      return "timeout";
    case EjectionReason::kFailures:
      return "failures";
    case EjectionReason::kNone:
      break;
  }
  return "none";
}

Status ValidateOutlierOptions(const OutlierOptions& o) {
  if (o.consecutive_failures < 1 || o.consecutive_failures > kMaxConsecutiveFailures) {
    return Status::InvalidArgument("outlier consecutive_failures must be in [1, 1000000]");
  }
  if (o.consecutive_connect_failures < 1 ||
      o.consecutive_connect_failures > kMaxConsecutiveFailures) {
    return Status::InvalidArgument("outlier consecutive_connect_failures must be in [1, 1000000]");
  }
  if (o.base_ejection_ms < 1 || o.base_ejection_ms > kMaxEjectionMs) {
    return Status::InvalidArgument("outlier base_ejection_ms must be in [1 ms, 24 h]");
  }
  if (o.max_ejection_ms < o.base_ejection_ms || o.max_ejection_ms > kMaxEjectionMs) {
    return Status::InvalidArgument("outlier max_ejection_ms must be in [base_ejection_ms, 24 h]");
  }
  if (!(o.max_ejected_fraction >= 0 && o.max_ejected_fraction <= 1)) {
    return Status::InvalidArgument("outlier max_ejected_fraction must be in [0, 1]");
  }
  return Status::Ok();
}

OutlierDetector::OutlierDetector(OutlierOptions opts) : opts_(Clamp(opts)) {}

void OutlierDetector::SetEndpoints(const std::vector<Endpoint>& eps) {
  std::unordered_set<std::string> ids;
  for (const auto& e : eps) ids.insert(e.id);
  std::erase_if(states_, [&](const auto& kv) { return !ids.contains(kv.first); });
  for (const auto& id : ids) states_.try_emplace(id);
}

EjectionReason OutlierDetector::OnOutcome(const std::string& id, Outcome outcome, MonoMs now) {
  auto it = states_.find(id);
  if (it == states_.end()) return EjectionReason::kNone;
  State& s = it->second;
  bool ejected = now < s.ejected_until;
  if (outcome == Outcome::kSuccess) {
    s.consecutive_failures = 0;
    s.consecutive_connect = 0;
    s.streak_has_failure = false;
    // A long healthy spell after the last ejection forgives earlier ones: back to base time.
    if (!ejected && s.ejections > 0 && now >= s.ejected_until + opts_.max_ejection_ms) {
      s.ejections = 0;
    }
    return EjectionReason::kNone;
  }
  if (ejected) return EjectionReason::kNone;  // late results of requests sent before the ejection
  EjectionReason reason = CountFailure(s, outcome);
  if (reason == EjectionReason::kNone || !CanEjectAnother(now)) return EjectionReason::kNone;
  Eject(s, reason, now);
  return reason;
}

EjectionReason OutlierDetector::CountFailure(State& s, Outcome outcome) const {
  s.consecutive_failures = std::min(s.consecutive_failures + 1, opts_.consecutive_failures);
  if (outcome == Outcome::kConnectFailure) {
    s.consecutive_connect = std::min(s.consecutive_connect + 1, opts_.consecutive_connect_failures);
    if (s.consecutive_connect >= opts_.consecutive_connect_failures)
      return EjectionReason::kConnect;
  } else {
    s.consecutive_connect = 0;
  }
  if (outcome == Outcome::kFailure) s.streak_has_failure = true;
  if (s.consecutive_failures < opts_.consecutive_failures) return EjectionReason::kNone;
  return s.streak_has_failure ? EjectionReason::kFailures : EjectionReason::kTimeout;
}

void OutlierDetector::Eject(State& s, EjectionReason reason, MonoMs now) {
  s.ejections = std::min(s.ejections + 1, 64);
  s.ejected_until = now + EjectionMs(s.ejections);
  s.consecutive_failures = 0;
  s.consecutive_connect = 0;
  s.streak_has_failure = false;
  s.reason = reason;
  ++ejections_total_;
}

bool OutlierDetector::WantsProbe(const std::string& id, MonoMs now) const {
  EjectionReason r = reason(id, now);
  return r == EjectionReason::kConnect || r == EjectionReason::kTimeout;
}

EjectionReason OutlierDetector::reason(const std::string& id, MonoMs now) const {
  auto it = states_.find(id);
  if (it == states_.end() || now >= it->second.ejected_until) return EjectionReason::kNone;
  return it->second.reason;
}

bool OutlierDetector::IsEjected(const std::string& id, MonoMs now) const {
  auto it = states_.find(id);
  return it != states_.end() && now < it->second.ejected_until;
}

void OutlierDetector::Forgive(const std::string& id, MonoMs now) {
  auto it = states_.find(id);
  if (it == states_.end()) return;
  State& s = it->second;
  s.consecutive_failures = 0;
  s.consecutive_connect = 0;
  s.streak_has_failure = false;
  s.ejected_until = std::min(s.ejected_until, now);
}

size_t OutlierDetector::ejected_count(MonoMs now) const {
  return static_cast<size_t>(std::count_if(states_.begin(), states_.end(), [now](const auto& kv) {
    return now < kv.second.ejected_until;
  }));
}

bool OutlierDetector::CanEjectAnother(MonoMs now) const {
  size_t n = states_.size();
  if (n <= 1) return false;
  auto by_fraction =
      static_cast<size_t>(std::floor(static_cast<double>(n) * opts_.max_ejected_fraction));
  size_t allowed = std::min(n - 1, by_fraction);
  return ejected_count(now) < allowed;
}

int64_t OutlierDetector::EjectionMs(int ejections) const {
  int64_t ms = opts_.base_ejection_ms;
  for (int i = 1; i < ejections && ms < opts_.max_ejection_ms; ++i) ms *= 2;
  return std::min(ms, opts_.max_ejection_ms);
}

}  // namespace haven::lb
