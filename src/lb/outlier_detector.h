// OutlierDetector: passive outlier detection (Envoy-style consecutive errors) that ejects failing
// endpoints.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/clock.h"
#include "base/status.h"
#include "lb/endpoint.h"

namespace haven::lb {

struct OutlierOptions {
  int consecutive_failures = 5;  // connect errors, resets, timeouts, 5xx in a row
  // Connection refused or reset before any answer, in a row: a definite sign that the instance
  // is dead, so one is enough by default (no need to wait for five).
  int consecutive_connect_failures = 1;
  int64_t base_ejection_ms = 30'000;  // doubles with each ejection of the same endpoint
  int64_t max_ejection_ms = 300'000;
  double max_ejected_fraction =
      0.5;  // never eject more than this share (at least 1 endpoint stays)
};

// What one attempt says about an instance.
enum class Outcome {
  kSuccess,
  kFailure,         // 5xx, garbage: the instance answers, badly
  kTimeout,         // no answer within the per-try timeout: hung or overloaded
  kConnectFailure,  // refused, or reset/closed before any answer: dead
};

// Why an instance was ejected; connect and timeout ejections can be ended early by an active
// probe that gets an answer (a probe cannot see why an instance answers 5xx).
enum class EjectionReason { kNone, kConnect, kTimeout, kFailures };
std::string_view EjectionReasonName(EjectionReason r);

// Checks the options are within sane limits (for flag and config parsing).
Status ValidateOutlierOptions(const OutlierOptions& opts);

class OutlierDetector {
 public:
  // Out-of-range options are clamped to the nearest valid value.
  explicit OutlierDetector(OutlierOptions opts);
  void SetEndpoints(const std::vector<Endpoint>& eps);  // forget removed ids
  // Returns why this outcome ejected the endpoint, kNone when it did not. Unknown ids are ignored.
  EjectionReason OnOutcome(const std::string& id, Outcome outcome, MonoMs now);
  // Shorthand: failed = kFailure. True when this result ejected the endpoint.
  bool OnResult(const std::string& id, bool failed, MonoMs now) {
    return OnOutcome(id, failed ? Outcome::kFailure : Outcome::kSuccess, now) !=
           EjectionReason::kNone;
  }
  // True while the endpoint is ejected for a reason an active probe can disprove (connect
  // failures, timeouts): the shell probes it and Forgive()s it when it answers.
  bool WantsProbe(const std::string& id, MonoMs now) const;
  EjectionReason reason(const std::string& id, MonoMs now) const;
  bool IsEjected(const std::string& id, MonoMs now) const;  // ejections end automatically
  // An active health check saw the endpoint healthy again: ends a current ejection at `now` and
  // resets the failure streak. The ejection count (the doubling) is kept. Unknown ids are ignored.
  void Forgive(const std::string& id, MonoMs now);
  size_t ejected_count(MonoMs now) const;
  uint64_t ejections_total() const { return ejections_total_; }
  const OutlierOptions& options() const { return opts_; }

 private:
  struct State {
    int consecutive_failures = 0;
    int consecutive_connect = 0;
    bool streak_has_failure = false;  // the streak holds a 5xx/garbage, not only timeouts
    EjectionReason reason = EjectionReason::kNone;
    int ejections =
        0;  // how many times ejected (drives the doubling); reset by a long healthy spell
    MonoMs ejected_until = 0;  // ejected while now < ejected_until
  };
  bool CanEjectAnother(MonoMs now) const;
  void Eject(State& s, EjectionReason reason, MonoMs now);
  // Counts a failure into the streaks; returns the reason to eject for, or kNone.
  EjectionReason CountFailure(State& s, Outcome outcome) const;
  int64_t EjectionMs(int ejections) const;

  OutlierOptions opts_;
  std::unordered_map<std::string, State> states_;
  uint64_t ejections_total_ = 0;
};

}  // namespace haven::lb
