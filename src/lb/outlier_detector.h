// OutlierDetector: passive outlier detection (Envoy-style consecutive errors) that ejects failing
// endpoints.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/clock.h"
#include "base/status.h"
#include "lb/endpoint.h"

namespace haven::lb {

struct OutlierOptions {
  int consecutive_failures = 5;       // connect errors, resets, timeouts, 5xx in a row
  int64_t base_ejection_ms = 30'000;  // doubles with each ejection of the same endpoint
  int64_t max_ejection_ms = 300'000;
  double max_ejected_fraction =
      0.5;  // never eject more than this share (at least 1 endpoint stays)
};

// Checks the options are within sane limits (for flag and config parsing).
Status ValidateOutlierOptions(const OutlierOptions& opts);

class OutlierDetector {
 public:
  // Out-of-range options are clamped to the nearest valid value.
  explicit OutlierDetector(OutlierOptions opts);
  void SetEndpoints(const std::vector<Endpoint>& eps);  // forget removed ids
  // Returns true when this result ejected the endpoint (for metrics/logs). Unknown ids are ignored.
  bool OnResult(const std::string& id, bool failed, MonoMs now);
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
    int ejections =
        0;  // how many times ejected (drives the doubling); reset by a long healthy spell
    MonoMs ejected_until = 0;  // ejected while now < ejected_until
  };
  bool CanEjectAnother(MonoMs now) const;
  int64_t EjectionMs(int ejections) const;

  OutlierOptions opts_;
  std::unordered_map<std::string, State> states_;
  uint64_t ejections_total_ = 0;
};

}  // namespace haven::lb
